"""``load_image``: one test per kind of file a browser or phone produces, one per kind it must refuse.

Every input is generated here with PIL/numpy (or by hand, for what PIL won't write), in memory.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, features

import xviz
from xviz.errors import ImageError
from xviz.images import MAX_BYTES, MAX_PIXELS


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (PIL can't write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def assert_rgb(img: Image.Image, size: tuple[int, int]):
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == size


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    """64x48 RGB: red left half, blue right half, a green bar at the top (orientation is visible)."""
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32] = (220, 20, 20)
    arr[:, 32:] = (20, 20, 220)
    arr[:8] = (20, 200, 20)
    return Image.fromarray(arr)


# -- accepted -------------------------------------------------------------------------------------

def test_jpeg(scene):
    img = xviz.load_image(encode(scene, "JPEG", quality=95))
    assert_rgb(img, (64, 48))
    assert np.abs(pixels(img) - pixels(scene)).mean() < 6


def test_real_photo(kitchenware_images):
    data = kitchenware_images[0].read_bytes()
    img = xviz.load_image(data)
    assert img.mode == "RGB" and min(img.size) > 71
    assert xviz.load_image(bytearray(data)).size == img.size == xviz.load_image(memoryview(data)).size


def test_cmyk_jpeg(scene):
    data = encode(scene.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = xviz.load_image(data)
    assert_rgb(img, (64, 48))
    red = pixels(img)[30, 10]
    assert red[0] > 150 and red[1] < 90 and red[2] < 90, f"colours lost in CMYK conversion: {red}"


def test_exif_rotated_jpeg(scene):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": what phones write for portrait shots
    img = xviz.load_image(encode(scene, "JPEG", quality=95, exif=exif))
    assert_rgb(img, (48, 64))  # width and height swapped
    arr = pixels(img)
    # clockwise: the top (green) bar ends up on the right, the left (red) half on top
    assert arr[32, 44][1] > 150 and arr[32, 4][1] < 90
    assert arr[10, 20][0] > 150 and arr[54, 20][2] > 150


def test_png_16bit_grey_is_not_washed_out():
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = xviz.load_image(data)
    assert_rgb(img, (64, 48))
    arr = pixels(img)
    assert abs(arr.mean() - ramp.mean() / 257) < 2  # clipping at 255 would make it nearly white
    assert arr.min() <= 1 and arr.max() >= 254
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_png_16bit_dark_grey_stays_dark():
    dark = np.full((8, 8), 200, np.uint16)  # 200 / 65535: nearly black, not 200 / 255
    img = xviz.load_image(encode(Image.fromarray(dark), "PNG"))
    assert pixels(img).max() <= 2


def test_png_16bit_rgb():
    rgb = np.zeros((4, 6, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter byte 0 per row
    img = xviz.load_image(raw_png(6, 4, 16, 2, rows))
    assert_rgb(img, (6, 4))
    assert tuple(pixels(img)[2, 3]) == (255, 128, 0)


def test_png_alpha_is_flattened_onto_white():
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[:, :5] = (0, 0, 0, 0)  # transparent black
    arr[:, 5:] = (255, 0, 0, 128)  # half-transparent red
    img = xviz.load_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert_rgb(img, (10, 10))
    assert tuple(pixels(img)[5, 2]) == (255, 255, 255)
    r, g, b = pixels(img)[5, 7]
    assert r == 255 and 120 <= g <= 135 and g == b


def test_grey_png_with_alpha():
    arr = np.zeros((6, 6, 2), np.uint8)  # LA: black, fully transparent
    img = xviz.load_image(encode(Image.fromarray(arr, "LA"), "PNG"))
    assert_rgb(img, (6, 6))
    assert (pixels(img) == 255).all()


def test_palette_png_with_transparency():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.paste(1, (4, 0, 8, 8))
    data = encode(pal, "PNG", transparency=0)  # index 0 (black) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    img = xviz.load_image(data)
    assert_rgb(img, (8, 8))
    assert tuple(pixels(img)[3, 1]) == (255, 255, 255)
    assert tuple(pixels(img)[3, 6]) == (0, 0, 255)


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow was built without WebP support")
def test_webp(scene):
    img = xviz.load_image(encode(scene, "WEBP", quality=95))
    assert_rgb(img, (64, 48))
    assert np.abs(pixels(img) - pixels(scene)).mean() < 10


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = xviz.load_image(data)
    assert_rgb(img, (20, 10))
    assert tuple(pixels(img)[5, 10]) == (255, 0, 0)


def test_bmp(scene):
    img = xviz.load_image(encode(scene, "BMP"))
    assert_rgb(img, (64, 48))
    assert np.array_equal(pixels(img), pixels(scene))


def test_tiff(scene):
    img = xviz.load_image(encode(scene, "TIFF"))
    assert_rgb(img, (64, 48))
    assert np.array_equal(pixels(img), pixels(scene))


def test_float_tiff():
    values = np.linspace(0.0, 1.0, 32 * 16, dtype=np.float32).reshape(16, 32)
    data = encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    img = xviz.load_image(data)
    assert_rgb(img, (32, 16))
    assert abs(pixels(img).mean() - 127.5) < 2
    assert pixels(img).min() == 0 and pixels(img).max() == 255


def test_one_pixel():
    img = xviz.load_image(encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"))
    assert_rgb(img, (1, 1))
    assert tuple(pixels(img)[0, 0]) == (200, 30, 30)


def test_long_thin_strip():
    img = xviz.load_image(encode(Image.new("RGB", (4000, 3), (10, 20, 30)), "PNG"))
    assert_rgb(img, (4000, 3))


# -- refused --------------------------------------------------------------------------------------

def refused(data) -> str:
    with pytest.raises(ImageError) as info:
        xviz.load_image(data)
    assert isinstance(info.value, ValueError)  # callers may catch ValueError
    message = str(info.value)
    assert message.endswith(".") and len(message) > 30  # a sentence, with what to do
    return message


def test_empty_bytes():
    assert "empty" in refused(b"")


def test_not_bytes():
    assert "bytes" in refused("photo.jpg")


def test_truncated_jpeg(scene):
    data = encode(scene.resize((256, 192)), "JPEG", quality=95)
    assert "damaged" in refused(data[: len(data) // 2])


def test_text():
    assert "not an image" in refused(b"Dear diary, today I uploaded a text file.\n" * 20)


def test_html():
    assert "not an image" in refused(b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>")


def test_svg():
    svg = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
           b'<circle cx="50" cy="50" r="40"/></svg>')
    assert "not an image" in refused(svg)


def test_zip(scene):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.jpg", encode(scene, "JPEG"))
    assert "not an image" in refused(buf.getvalue())


def test_pdf():
    assert "not an image" in refused(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")


@pytest.mark.parametrize("width, height", [
    (20_000, 20_000),  # 400 MP: past PIL's own bomb limit
    (12_000, 10_000),  # 120 MP: where PIL only warns
    (8_000, 6_000),    # 48 MP: under PIL's limits, over xviz's 40 MP
])
def test_decompression_bomb_header(width, height):
    # a few hundred bytes whose header claims a huge picture: refused from the header, before decoding
    assert width * height > MAX_PIXELS
    data = raw_png(width, height, 8, 2, b"\x00" * 64)
    assert len(data) < 1000
    message = refused(data)
    assert "megapixels" in message and "too large" in message


def test_real_bomb_png():
    # a complete, valid 1-bit PNG of 15000x15000 (225 MP) that compresses to ~30 kB
    data = encode(Image.new("1", (15_000, 15_000), 0), "PNG")
    assert len(data) < 200_000
    assert "megapixels" in refused(data)


def test_pixel_limit_is_adjustable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert "megapixels" in refused_with(data, max_pixels=5_000)
    assert xviz.load_image(data, max_pixels=10_000).size == (100, 100)


def refused_with(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        xviz.load_image(data, **kwargs)
    return str(info.value)


def test_over_max_bytes(scene):
    jpeg = encode(scene, "JPEG")
    data = jpeg + b"\x00" * (MAX_BYTES + 1 - len(jpeg))  # a real JPEG, padded past the limit
    assert len(data) == MAX_BYTES + 1
    assert "MB" in refused(data)


# -- what goes back to the browser as it came ---------------------------------------------------------

def test_a_plain_jpeg_goes_back_as_uploaded(scene):
    data = encode(scene, "JPEG", quality=90)
    assert xviz.images.shown_as_uploaded(data, max_side=1024, max_bytes=len(data))


@pytest.mark.parametrize("why", ["too wide", "too many bytes", "exif", "icc profile", "cmyk", "png"])
def test_other_images_are_re_encoded(scene, why):
    img, kwargs, fmt, max_side = scene, {}, "JPEG", 1024
    if why == "too wide":
        max_side = max(scene.size) - 1
    elif why == "exif":
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"  # Make: nothing to rotate, still camera data
        kwargs["exif"] = exif.tobytes()
    elif why == "icc profile":
        kwargs["icc_profile"] = b"\0" * 128
    elif why == "cmyk":
        img = scene.convert("CMYK")
    elif why == "png":
        fmt = "PNG"
    data = encode(img, fmt, **kwargs)
    max_bytes = len(data) - 1 if why == "too many bytes" else len(data)
    assert not xviz.images.shown_as_uploaded(data, max_side=max_side, max_bytes=max_bytes)
