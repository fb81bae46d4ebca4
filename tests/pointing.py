"""Composites for the pointing game (tests/test_attributions.py): kitchenware photos pasted on
plain or noise canvases, and whether a map's peak lands inside the paste."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive


def plain_canvas(size: int, color: tuple[int, int, int] = (236, 236, 236)) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def noise_canvas(size: int, rng: np.random.Generator) -> Image.Image:
    """Uniform RGB noise: a background with no object and no structure."""
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def paste(canvas: Image.Image, obj: Image.Image, side: int, left: int, top: int, *,
          feather: float = 0.0) -> tuple[Image.Image, Box]:
    """``obj`` resized so its longer side is ``side`` px, pasted with its corner at (left, top).

    ``feather`` > 0 fades the pasted border into the canvas over that share of the paste's
    shorter side. A hard rectangular seam is a long straight edge, and the kitchenware model
    reads it as a knife blade often enough to matter: soften it to test localisation, keep it
    to show students what a classifier does with a collage.
    """
    scale = side / max(obj.size)
    w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
    if left + w > canvas.width or top + h > canvas.height or left < 0 or top < 0:
        raise ValueError(f"a {w}x{h} paste at ({left}, {top}) does not fit a {canvas.width}x{canvas.height} canvas")
    out = canvas.convert("RGB")  # a copy, so the caller's canvas is never changed
    mask = None
    if feather > 0:
        ramp = max(1.0, feather * min(w, h))
        rows = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]  # distance to the nearest edge
        cols = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
        alpha = np.clip((np.minimum(rows, cols) + 0.5) / ramp, 0.0, 1.0)  # (h, w) in [0, 1]
        mask = Image.fromarray((alpha * 255.0 + 0.5).astype(np.uint8), "L")
    out.paste(obj.convert("RGB").resize((w, h), Image.BILINEAR), (left, top), mask)
    return out, (left, top, left + w, top + h)


def random_paste(canvas: Image.Image, obj: Image.Image, rng: np.random.Generator,
                 min_share: float = 1 / 3, max_share: float = 1 / 2, *,
                 feather: float = 0.0) -> tuple[Image.Image, Box]:
    """Paste ``obj`` at a random place, its longer side a random share of the canvas side."""
    side = int(rng.integers(round(min_share * canvas.width), round(max_share * canvas.width) + 1))
    scale = side / max(obj.size)
    w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
    left = int(rng.integers(0, canvas.width - w + 1))
    top = int(rng.integers(0, canvas.height - h + 1))
    return paste(canvas, obj, side, left, top, feather=feather)


def peak(heat: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum."""
    arr = np.asarray(heat)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))


def peak_in_box(heat: torch.Tensor | np.ndarray, box: Box) -> bool:
    """The pointing game's hit: the map's maximum lies inside ``box``."""
    row, col = peak(heat)
    left, top, right, bottom = box
    return left <= col < right and top <= row < bottom
