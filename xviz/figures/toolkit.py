"""The one figure toolkit: colour maps, colorize, resize, overlay and image encoding.

Pure functions, numpy in, uint8 RGB / bytes out; every picture xviz draws (feature maps, separable
convs, attribution heatmaps, photos) goes through these, so a colour scale means the same everywhere.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image, PngImagePlugin

COLORMAPS = ("viridis", "magma", "inferno", "cividis", "jet", "turbo", "gray")  # what the colour pickers offer
SIGNED_COLORMAP = "RdBu_r"  # diverging, white at 0: red positive (evidence for), blue negative
PHOTO_QUALITY = 88  # JPEG quality of photos and overlays on photos: no visible loss at a fraction of PNG's bytes


# -- colour -------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def lut(cmap: str = "viridis") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap (matplotlib only samples it once)."""
    from matplotlib import colormaps  # imported here: matplotlib is slow to import, lookups are rare

    try:
        colours = colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; try one of {', '.join(COLORMAPS)}") from None
    table = (colours * 255.0 + 0.5).astype(np.uint8)
    table.flags.writeable = False
    return table


def plotly_colorscale(cmap: str = "viridis", steps: int = 11) -> list[list]:
    """The same colormap as a plotly colorscale, for colour bars."""
    table = lut(cmap)
    idx = np.linspace(0, 255, steps).round().astype(int)
    return [[i / (steps - 1), f"rgb({table[j, 0]},{table[j, 1]},{table[j, 2]})"] for i, j in enumerate(idx)]


def to_unit(a: np.ndarray, vmin, vmax) -> np.ndarray:
    """Scale to [0, 1] (``vmin``/``vmax`` scalars or broadcastable arrays); a flat map becomes 0."""
    span = np.asarray(vmax, dtype=np.float32) - np.asarray(vmin, dtype=np.float32)
    span = np.where(span > 0, span, 1.0)
    return np.clip((a - vmin) / span, 0.0, 1.0)


def colorize(a: np.ndarray, vmin: float | None = None, vmax: float | None = None,
             cmap: str = "viridis") -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through the colormap; default range: the map's own."""
    a = np.asarray(a, dtype=np.float32)
    vmin = float(a.min()) if vmin is None else vmin
    vmax = float(a.max()) if vmax is None else vmax
    return lut(cmap)[(to_unit(a, vmin, vmax) * 255.0 + 0.5).astype(np.uint8)]


# -- resampling and blending --------------------------------------------------------------------

def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) float map resampled bilinearly to ``size`` = (height, width)."""
    a = np.asarray(a, dtype=np.float32)
    if a.shape == tuple(size):
        return a
    return np.asarray(Image.fromarray(a, "F").resize((size[1], size[0]), Image.BILINEAR))


def rgb_array(image) -> np.ndarray:
    """A PIL image or an (H, W, 3) array as (H, W, 3) uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    return arr.astype(np.uint8)


def overlay(image, values: np.ndarray, *, cmap: str = "viridis", alpha: float = 0.55,
            vmin: float | None = None, vmax: float | None = None, weight: np.ndarray | None = None) -> np.ndarray:
    """``values`` resized (bilinear) to ``image``, coloured and blended over it: ``(1 - a) image + a colour``.

    ``a`` is ``alpha``, or ``alpha * weight`` per pixel when ``weight`` (in [0, 1], the shape of
    ``values``) is given, so a map can leave the photo untouched where it says nothing. The colour
    range defaults to the map's own. Spatial alignment is approximate: a map pixel stands for the
    centre of its receptive field.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    rgb = rgb_array(image)
    values = np.asarray(values, dtype=np.float32)
    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    colour = colorize(resize(values, rgb.shape[:2]), vmin, vmax, cmap).astype(np.float32)
    a = alpha if weight is None else alpha * resize(weight, rgb.shape[:2])[..., None]  # scalar or (H, W, 1)
    return np.clip((1.0 - a) * rgb.astype(np.float32) + a * colour + 0.5, 0, 255).astype(np.uint8)


# -- encodings ----------------------------------------------------------------------------------

def _uint8(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    return rgb


def png_bytes(rgb: np.ndarray, settings: dict | None = None, palette: np.ndarray | None = None) -> bytes:
    """PNG file bytes of an (H, W, 3) or (H, W) uint8 array; ``settings`` go in as PNG text chunks.

    With ``palette`` ((N <= 256, 3) uint8), ``rgb`` is an (H, W) array of indices into it and the PNG
    is indexed: one byte a pixel to compress instead of three.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (settings or {}).items():
        info.add_text(f"xviz:{key}", str(value))
    pixels = _uint8(rgb)
    if palette is None:
        img = Image.fromarray(pixels)
    else:
        if pixels.ndim != 2 or len(palette) > 256:
            raise ValueError(f"an indexed PNG needs (H, W) indices and at most 256 colours, got "
                             f"{pixels.shape} and {len(palette)}")
        img = Image.frombytes("P", pixels.shape[::-1], np.ascontiguousarray(pixels).tobytes())
        img.putpalette(_uint8(palette).tobytes())
    buf = io.BytesIO()
    # compress_level 3: on these maps the smallest files, and ~2x faster than the default 6
    img.save(buf, format="PNG", compress_level=3, pnginfo=info)
    return buf.getvalue()


def jpeg_bytes(picture, quality: int = PHOTO_QUALITY, max_side: int | None = None) -> bytes:
    """JPEG file bytes of a photo-like picture (an (H, W, 3) uint8 array or a PIL image), shrunk to
    ``max_side`` pixels if larger.

    For photos and heatmaps over photos, where PNG is ~8x larger for no visible gain. Sent as bytes,
    ``st.image`` passes them through; given an array or a PIL image it would encode a JPEG at
    quality 100 on every rerun (Streamlit's default: ~2.5x the bytes of quality 88).
    """
    if isinstance(picture, np.ndarray):
        img = Image.fromarray(_uint8(picture))
    else:  # convert() copies even an RGB image: a 12 MP photo is 48 MB
        img = picture if picture.mode == "RGB" else picture.convert("RGB")
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_uri(rgb: np.ndarray, photo: bool = False) -> str:
    """Inline image for a plotly Image trace: PNG (exact colours), or JPEG for photo-like
    overlays, where PNG would be ~8x larger for no visible gain."""
    if not photo:
        return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(rgb)).decode("ascii")
