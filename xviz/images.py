"""Decoding user images: whatever a browser or a phone produces, checked before it costs memory."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens phones' multi-picture (MPO) files
MAX_BYTES = 25 * 1024 * 1024  # images only; the server's upload limit is higher because weights files are ~90 MB
MAX_PIXELS = 40_000_000  # 40 MP: any phone photo fits; a decompression bomb doesn't
MIN_SIDE = 1

_FRIENDLY_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"


def load_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes into an upright RGB ``PIL.Image``.

    Accepts JPEG (also CMYK and EXIF-rotated), PNG (also 16-bit, alpha, palette), WebP, GIF (first
    frame), BMP and TIFF (also 16-bit and float). Transparent pixels are flattened onto white.
    The pixel count is checked from the header before anything is decoded.

    Raises:
        ImageError: empty, too large, not an image, an unsupported format, or truncated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"Expected the image as bytes, got {type(data).__name__}.")
    check_size(len(data))
    try:
        # PIL only warns between 89 and 179 MP; our own, lower limit below applies before decoding.
        # (No warnings.catch_warnings here: it isn't thread-safe, and Streamlit sessions are threads.)
        img = Image.open(io.BytesIO(bytes(data)), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("This file is not an image xviz can read. "
                         f"Upload a {_FRIENDLY_FORMATS} file.") from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except Exception as exc:  # PIL raises many kinds on malformed headers
        raise ImageError(f"This image file is damaged and can't be opened ({exc}). "
                         "Try another file or re-save it.") from None

    width, height = img.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError("This image has no pixels. Upload a real photo.")
    if width * height > max_pixels:
        raise _too_many_pixels((width, height), max_pixels)

    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of an animated GIF/WebP
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: a 12 MP photo is 36 MB to copy
        return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"This image is incomplete or damaged ({exc}). "
                         "Upload it again, or try another file.") from None


def check_size(nbytes: int) -> None:
    """Refuse an image of ``nbytes`` bytes before anything reads it (``load_image`` does this first;
    the app does it before hashing an upload).

    Raises:
        ImageError: empty, or more than ``MAX_BYTES``.
    """
    if nbytes == 0:
        raise ImageError("The file is empty. Choose a photo (JPEG or PNG) and upload it again.")
    if nbytes > MAX_BYTES:
        raise ImageError(f"The file is {nbytes / 2**20:.1f} MB; images up to {MAX_BYTES // 2**20} MB "
                         "are accepted. Save a smaller copy of the photo and upload that.")


def shown_as_uploaded(data: bytes, max_side: int, max_bytes: int) -> bool:
    """Whether image file ``data`` can go back to the browser as it came, instead of a re-encoded copy:
    a JPEG, RGB or grey, at most ``max_side`` pixels a side and ``max_bytes`` long, without EXIF (no
    rotation the browser might apply differently, and no camera or place data to send back) and
    without an ICC profile (the browser would colour-manage what the network reads as it is).
    Reads the header only; ``data`` is a file :func:`load_image` has accepted."""
    if len(data) > max_bytes or data[:3] != b"\xff\xd8\xff":
        return False
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            return (img.format == "JPEG" and img.mode in ("RGB", "L") and max(img.size) <= max_side
                    and "exif" not in img.info and "icc_profile" not in img.info)
    except Exception:  # noqa: BLE001 - any header PIL can't read is simply re-encoded
        return False


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> ImageError:
    shown = f" ({size[0]}x{size[1]})" if size else ""
    return ImageError(f"This image is too large{shown}: at most {max_pixels / 1e6:.0f} megapixels are "
                      "accepted. Resize it and upload it again.")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, scaling high bit depths instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # I;16 is 16-bit by definition (a dark scan must stay dark); 32-bit "I" carries no depth: guess
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 1.0 if arr.max(initial=0) <= 1.0 else arr.max()
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")
