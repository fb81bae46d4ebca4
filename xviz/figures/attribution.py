"""Figures of attribution maps: overlays, raw heatmaps, the trust curves, grids and PNG files.

Pure functions: arrays in, numpy RGB / plotly figures / bytes out; colours, blending and encoding
come from :mod:`xviz.figures.toolkit`. Heatmaps go out as images, never as per-pixel plotly JSON (a
299x299 heatmap trace is 89k numbers on every rerun).
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from .toolkit import SIGNED_COLORMAP, colorize, overlay, resize, rgb_array


def _array(heat) -> np.ndarray:
    if hasattr(heat, "detach"):
        heat = heat.detach().float().cpu().numpy()
    arr = np.asarray(heat, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {arr.shape}")
    return np.nan_to_num(arr)


def normalise(heat, *, signed: bool = False, percentile: float = 100.0) -> np.ndarray:
    """Map to [0, 1] (or [-1, 1] if ``signed``), dividing by the ``percentile`` of its magnitude.

    A percentile below 100 keeps a few extreme pixels (common in gradient maps) from washing
    out the rest; Grad-CAM is conventionally divided by its maximum (100).
    """
    arr = _array(heat)
    mag = np.abs(arr) if signed else np.clip(arr, 0, None)
    scale = float(np.percentile(mag, percentile)) if mag.size else 0.0
    if scale <= 0:
        scale = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    return np.clip(arr / scale, -1.0 if signed else 0.0, 1.0)


def heatmap_image(heat, *, cmap: str = "jet", signed: bool = False, percentile: float = 100.0,
                  size: int | None = None) -> np.ndarray:
    """The raw map as an RGB picture, optionally resized to ``size`` x ``size`` (bilinear)."""
    norm = normalise(heat, signed=signed, percentile=percentile)
    if size is not None:
        norm = resize(norm, (size, size))
    return colorize(norm, -1.0 if signed else 0.0, 1.0, SIGNED_COLORMAP if signed else cmap)


def heatmap_overlay(image, heat, *, alpha: float = 0.5, cmap: str = "jet", signed: bool = False,
                    percentile: float = 100.0, fade: bool | None = None) -> np.ndarray:
    """The map coloured and blended over the picture: ``(1 - a) * image + a * colour``.

    ``image`` is the picture the model saw (PIL or (H, W, 3) uint8); the map is resized to it.
    Without ``fade`` ``a = alpha`` everywhere (the classic Grad-CAM look); with it
    ``a = alpha * |value|``, so pixels the map calls irrelevant show the photo untouched. ``fade``
    defaults to ``signed``: a diverging scale is white at zero and would bleach the whole photo.
    """
    fade = signed if fade is None else fade
    rgb = rgb_array(image)
    norm = resize(normalise(heat, signed=signed, percentile=percentile), rgb.shape[:2])
    return overlay(rgb, norm, cmap=SIGNED_COLORMAP if signed else cmap, alpha=alpha, vmin=-1.0 if signed else 0.0,
                   vmax=1.0, weight=np.abs(norm) if fade else None)


def side_by_side(images: list[np.ndarray], titles: list[str] | None = None, *, columns: int | None = None,
         pad: int = 8, font_size: int = 14) -> np.ndarray:
    """Pictures side by side (same size each), a caption above each: one (H, W, 3) uint8 image."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    arrays = [rgb_array(im) for im in images]
    h, w = arrays[0].shape[:2]
    arrays = [a if a.shape[:2] == (h, w) else np.asarray(Image.fromarray(a).resize((w, h))) for a in arrays]
    titles = list(titles or [""] * len(arrays))
    columns = columns or len(arrays)
    rows = -(-len(arrays) // columns)
    caption = font_size + 8 if any(titles) else 0
    canvas = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size)
    for i, (arr, title) in enumerate(zip(arrays, titles)):
        left = pad + (i % columns) * (w + pad)
        top = pad + (i // columns) * (h + caption + pad)
        if title:
            draw.text((left, top), _fit(draw, title, font, w), fill=(20, 20, 20), font=font)
        canvas.paste(Image.fromarray(arr), (left, top + caption))
    return np.asarray(canvas)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def png_filename(settings: dict) -> str:
    """``xviz_<key>-<value>_...png`` from the settings, in their order, safe on every file system."""
    parts = ["xviz"]
    for key, value in settings.items():
        if isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}-{value}")
    name = "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", str(p)).strip("-") for p in parts)
    return name[:200] + ".png"


def deletion_figure(curve, title: str = "") -> go.Figure:
    """Class probability vs share of pixels removed: the map's order against random order.

    ``curve`` is a :class:`xviz.attributions.DeletionCurve`.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve.fractions, y=curve.relevant, mode="lines+markers",
                             name=f"most relevant first (area {curve.area_relevant:.2f})",
                             line=dict(color="#d62728", width=3)))
    fig.add_trace(go.Scatter(x=curve.fractions, y=curve.random, mode="lines",
                             name=f"random order (area {curve.area_random:.2f})",
                             line=dict(color="#7f7f7f", width=2, dash="dash")))
    fig.update_layout(title=title or None, height=380, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis=dict(title="share of pixels replaced by grey", tickformat=".0%", range=[0, 1]),
                      yaxis=dict(title="probability of the class", tickformat=".0%", range=[0, 1.02]),
                      legend=dict(orientation="h", y=-0.25, yanchor="top", x=0))
    return fig


def randomisation_figure(check, title: str = "") -> go.Figure:
    """Rank correlation with the original map as more and more layers are randomised (top down).

    ``check`` is a :class:`xviz.attributions.RandomisationCheck`.
    """
    labels = [f"…{s}" if i else s for i, s in enumerate(check.stages)]
    rho = [None if r != r else r for r in check.spearman]  # nan (a blank map) -> a gap
    fig = go.Figure(go.Scatter(x=labels, y=rho, mode="lines+markers", line=dict(color="#1f77b4", width=3),
                               name="Spearman rank correlation"))
    blank = [label for label, r in zip(labels, check.spearman) if r != r]
    if blank:  # a map of all zeros has no ranking: mark it instead of leaving a silent gap
        fig.add_trace(go.Scatter(x=blank, y=[0] * len(blank), mode="markers+text", text=["blank map"] * len(blank),
                                 textposition="top center", marker=dict(symbol="x", size=10, color="#7f7f7f"),
                                 name="map went blank (all zero)"))
    fig.add_hline(y=0, line=dict(color="#7f7f7f", dash="dot"))
    fig.update_layout(title=title or None, height=380, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis=dict(title="randomised from the head down to"),
                      yaxis=dict(title="similarity to the trained map", range=[-1.02, 1.02]),
                      showlegend=False)
    return fig
