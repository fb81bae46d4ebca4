"""A corpus of hostile and awkward uploads, generated in memory from one real photo.

Importable by tests (``from hostile import corpus``) and by bench/load_test.py. Nothing is written
to disk. ``corpus()`` is cached: building it once costs well under a second (the over-limit file is
the only big one, 26 MB).

Each :class:`Case` says whether ``xviz.load_image`` must accept it (``valid``) and, for the rest,
a word the error message must contain (``says``), so a test can tell "refused for the right reason"
from "refused by accident".
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from xviz.images import MAX_BYTES, MAX_PIXELS

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "xviz" / "data" / "examples" / "coffee.jpg"  # a real 600x400 photo; the kitchenware model calls it a cup


@dataclass(frozen=True)
class Case:
    name: str  # short id, used as the pytest id
    filename: str  # what the browser would send as the file's name
    data: bytes = b""
    mime: str = "application/octet-stream"
    valid: bool = False
    size: tuple[int, int] | None = None  # (width, height) load_image must return, for valid cases
    says: str = ""  # a word the ImageError message must contain, for invalid cases

    def __repr__(self) -> str:  # pytest and failure messages: never dump 26 MB of bytes
        return f"Case({self.name!r}, {self.filename!r}, {len(self.data)} bytes, valid={self.valid})"


def photo_bytes() -> bytes:
    return PHOTO.read_bytes()


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 8-bit RGB but carries one tiny IDAT chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _one_bit_png(width: int, height: int) -> bytes:
    """A real, complete, all-black 1-bit PNG: tiny on disk, ``width * height`` pixels once decoded.

    Written chunk by chunk (not through PIL) so building a 400-megapixel bomb takes milliseconds.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _valid(photo: Image.Image) -> list[Case]:
    w, h = photo.size
    gradient16 = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    floats = np.linspace(0.0, 1.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display, what phones write for portrait shots
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return [
        Case("photo", "coffee.jpg", photo_bytes(), "image/jpeg", True, (w, h)),
        Case("cmyk_jpeg", "print-ready.jpg", _save(photo.convert("CMYK"), "JPEG", quality=90), "image/jpeg",
             True, (w, h)),
        Case("png_16bit", "scan-16bit.png", _save(Image.fromarray(gradient16), "PNG"), "image/png", True, (64, 48)),
        Case("float_tiff", "microscope.tif", _save(Image.fromarray(floats, "F"), "TIFF"), "image/tiff",
             True, (64, 48)),
        Case("exif_rotated", "portrait.jpg", _save(photo, "JPEG", quality=90, exif=exif), "image/jpeg", True, (h, w)),
        Case("one_pixel", "dot.png", _save(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "image/png", True, (1, 1)),
        Case("strip_4000x3", "strip.png", _save(photo.resize((4000, 3)), "PNG"), "image/png", True, (4000, 3)),
        Case("animated_gif", "blink.gif", gif.getvalue(), "image/gif", True, (32, 24)),
    ]


def _invalid(photo_data: bytes) -> list[Case]:
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("holiday1.jpg", photo_data)
        z.writestr("holiday2.jpg", photo_data)
    svg = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000">'
           b'<script>alert(1)</script><circle cx="50" cy="50" r="40"/></svg>')
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)><h1>not a photo</h1></body></html>"
    side = int((MAX_PIXELS * 1.25) ** 0.5)  # over xviz's pixel limit, under PIL's own bomb warning
    # a valid JPEG start so a sniffer would call it an image; only the size is wrong
    over = photo_data + b"\x00" * (MAX_BYTES + 2**20 - len(photo_data))
    return [
        Case("empty", "empty.jpg", b"", "image/jpeg", says="empty"),
        Case("truncated_jpeg", "cut-short.jpg", photo_data[: len(photo_data) // 2], "image/jpeg",
             says="damaged"),
        Case("text_as_jpg", "notes.jpg", b"Dear diary, today I uploaded a text file.\n" * 20, "image/jpeg",
             says="not an image"),
        Case("html_as_png", "page.png", html, "image/png", says="not an image"),
        Case("svg_as_jpg", "drawing.jpg", svg, "image/jpeg", says="not an image"),
        Case("zip_as_jpg", "holiday-photos.jpg", zipped.getvalue(), "image/jpeg", says="not an image"),
        Case("bomb_png", "bomb.png", _one_bit_png(20_000, 20_000), "image/png", says="too large"),
        Case("header_bomb_png", "liar.png", _header_only_png(100_000, 100_000), "image/png", says="too large"),
        Case("over_pixel_limit", "huge-scan.png", _one_bit_png(side, side), "image/png", says="too large"),
        Case("over_byte_limit", "raw-export.jpg", over, "image/jpeg", says="MB"),
    ]


@lru_cache(maxsize=1)
def corpus() -> tuple[Case, ...]:
    """Every case, valid ones first."""
    photo_data = photo_bytes()
    photo = Image.open(io.BytesIO(photo_data)).convert("RGB")
    return tuple(_valid(photo) + _invalid(photo_data))


def valid_cases() -> list[Case]:
    return [c for c in corpus() if c.valid]


def invalid_cases() -> list[Case]:
    return [c for c in corpus() if not c.valid]


def case(name: str) -> Case:
    return next(c for c in corpus() if c.name == name)
