"""Figures of the feature-map, separable-convolution and architecture views. Pure: arrays in,
uint8 RGB arrays / plotly figures / PNG bytes out; no Streamlit.

Colours and encodings come from :mod:`xviz.figures.toolkit`. Pictures of activations go to the
browser as encoded images (PNG), never as per-pixel plotly JSON: a 147×147×64 layer as a heatmap
would be 1.4 M numbers. Hover values come from a coarse, invisible grid of at most ``hover_cells``²
numbers laid over the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from PIL import Image

from .toolkit import colorize, data_uri, lut, overlay, plotly_colorscale, to_unit

NORMALISATIONS = {
    "channel": "per channel: each map stretched from its own minimum to its own maximum",
    "shared": ("shared: one scale for all the channels shown (their 0.5th to 99.5th percentile, so a "
               "few extreme pixels don't wash the rest out): bright means strong, in every tile"),
}
GAP_COLOUR = 255  # white gaps between the tiles of a grid


# -- colour ranges --------------------------------------------------------------------------------

def robust_range(a: np.ndarray, q: float = 0.5) -> tuple[float, float]:
    """(q-th, (100-q)-th) percentile of the values, from at most ~1 M of them (an even subsample)."""
    flat = np.asarray(a).ravel()
    flat = flat[:: max(1, flat.size // 1_000_000)]
    lo, hi = np.percentile(flat, [q, 100.0 - q])
    return (float(lo), float(hi)) if hi > lo else (float(flat.min()), float(flat.max()))


def symmetric_range(*arrays: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m the largest magnitude: zero sits in the middle of a diverging colormap."""
    m = max(float(np.abs(a).max()) for a in arrays) if arrays else 0.0
    m = m if m > 0 else 1.0
    return -m, m


# -- resampling ---------------------------------------------------------------------------------

def downsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) -> (N, height, width) by area averaging: each output pixel is the mean of its box
    (torch's adaptive average pooling: for a non-integer ratio neighbouring boxes share an edge pixel)."""
    n, h, w = maps.shape
    if (h, w) == (height, width):
        return maps.astype(np.float32, copy=False)
    if height > h or width > w:
        raise ValueError(f"downsample can only shrink: {h}×{w} -> {height}×{width}")
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    return F.adaptive_avg_pool2d(x, (height, width)).numpy()


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, 3) image: each pixel becomes a factor×factor block."""
    if factor <= 1:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


# -- the channel grid ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GridLayout:
    """Where each channel sits in a grid image."""

    rows: int
    cols: int
    tile: int  # tile side in pixels (after any downsampling or enlargement)
    gap: int
    channels: tuple[int, ...]  # channel index of cell 0, 1, ... (row-major)
    downsampled: bool  # tiles are smaller than the maps: each pixel is the mean of a box

    def cell_of(self, channel: int) -> tuple[int, int] | None:
        """(row, col) of ``channel`` in the grid, or None if it isn't shown."""
        try:
            i = self.channels.index(channel)
        except ValueError:
            return None
        return divmod(i, self.cols)


def grid_shape(n: int, aspect: float = 16 / 10) -> tuple[int, int]:
    """(rows, cols) for n square tiles in a block about ``aspect`` times wider than tall."""
    cols = max(1, min(n, math.ceil(math.sqrt(n * aspect))))
    return math.ceil(n / cols), cols


def channel_grid(maps: np.ndarray, channels: Sequence[int] | None = None, *, normalise: str = "channel",
                 cmap: str = "viridis", max_width: int = 960, max_tile: int = 96, min_tile: int = 24,
                 gap: int = 2, vrange: tuple[float, float] | None = None,
                 gap_colour: int = GAP_COLOUR) -> tuple[np.ndarray, GridLayout]:
    """The channels of a (C, H, W) layer as ONE uint8 RGB image of tiles (arguments and layout as
    :func:`channel_grid_indexed`, whose picture this is)."""
    indices, palette, layout = channel_grid_indexed(
        maps, channels, normalise=normalise, cmap=cmap, max_width=max_width, max_tile=max_tile,
        min_tile=min_tile, gap=gap, vrange=vrange, gap_colour=gap_colour)
    return palette[indices], layout


# A grid has 255 colour levels (the colormap's ends included), so that the gaps can take the 256th
# entry of a PNG palette: the grid then goes to the browser as an indexed PNG, exact, in about half
# the bytes and a quarter of the encoding time of the same picture in RGB (bench/bench_pictures.py).
LEVELS = 255
GAP_INDEX = LEVELS


def channel_grid_indexed(maps: np.ndarray, channels: Sequence[int] | None = None, *, normalise: str = "channel",
                         cmap: str = "viridis", max_width: int = 960, max_tile: int = 96, min_tile: int = 24,
                         gap: int = 2, vrange: tuple[float, float] | None = None,
                         gap_colour: int = GAP_COLOUR) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """The channels of a (C, H, W) layer as ONE image of tiles, in palette form.

    Args:
        maps: (C, H, W) values of a layer.
        channels: which channels, in which order (default: all, by index).
        normalise: ``"channel"`` (each tile its own min..max) or ``"shared"`` (one range for all
            tiles shown, ``vrange`` if given), see :data:`NORMALISATIONS`.
        max_width: the grid is at most this wide; tiles shrink (area-averaged) to fit.
        max_tile, min_tile: tile side limits in pixels; maps smaller than ``min_tile`` are enlarged
            by whole pixels so a 10×10 map stays visible.
        gap_colour: grey level of the gaps (white by default; use grey where white means zero).

    Returns:
        (indices, palette, layout): (rows·(tile+gap)−gap, cols·(tile+gap)−gap) uint8 indices into the
        (256, 3) uint8 ``palette`` (:data:`LEVELS` steps of the colormap, then the gap colour), and the
        cell → channel map. ``palette[indices]`` is the RGB picture.
    """
    if maps.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {maps.shape}")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    chosen = np.arange(maps.shape[0]) if channels is None else np.asarray(channels, dtype=int)
    if chosen.size == 0:
        raise ValueError("no channels to draw")
    sel = maps[chosen].astype(np.float32)  # (n, H, W)
    n, h, w = sel.shape
    rows, cols = grid_shape(n)
    room = max(1, (max_width + gap) // cols - gap)  # widest tile that keeps the grid within max_width
    tile = min(max(h, w), max_tile, room)
    downsampled = tile < max(h, w)
    th, tw = (max(1, round(h * tile / max(h, w))), max(1, round(w * tile / max(h, w))))
    small = downsample(sel, th, tw) if downsampled else sel
    if normalise == "channel":
        lo = small.reshape(n, -1).min(axis=1)[:, None, None]
        hi = small.reshape(n, -1).max(axis=1)[:, None, None]
    else:
        lo, hi = vrange if vrange is not None else robust_range(sel)
    idx = (to_unit(small, lo, hi) * (LEVELS - 1) + 0.5).astype(np.uint8)  # (n, th, tw)
    factor = max(1, min(min_tile, room) // max(th, tw)) if not downsampled else 1
    th, tw = th * factor, tw * factor
    canvas = np.full((rows * (th + gap) - gap, cols * (tw + gap) - gap), GAP_INDEX, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (th + gap), c * (tw + gap)
        block = np.repeat(np.repeat(idx[i], factor, axis=0), factor, axis=1) if factor > 1 else idx[i]
        canvas[y:y + th, x:x + tw] = block
    steps = lut(cmap)[np.round(np.linspace(0, 255, LEVELS)).astype(int)]
    palette = np.vstack([steps, np.full((1, 3), gap_colour, np.uint8)])
    return canvas, palette, GridLayout(rows, cols, max(th, tw), gap, tuple(int(c) for c in chosen), downsampled)


def tiles(maps: Sequence[np.ndarray], *, side: int = 96, cmap: str = "RdBu_r",
          vrange: tuple[float, float] | None = None) -> list[np.ndarray]:
    """A row of (H, W) maps as separate RGB tiles on ONE shared colour range (symmetric by default),
    so tiles that add up can be compared by eye; small maps are enlarged by whole pixels."""
    lo, hi = vrange if vrange is not None else symmetric_range(*maps)
    out = []
    for m in maps:
        m = np.asarray(m, dtype=np.float32)
        if max(m.shape) > side:
            m = downsample(m[None], *_fit(m.shape, side))[0]
        rgb = colorize(m, lo, hi, cmap)
        out.append(upscale(rgb, max(1, side // max(rgb.shape[:2]))))
    return out


def _fit(shape: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = shape
    s = side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


# -- one channel, enlarged ----------------------------------------------------------------------

def channel_picture(values: np.ndarray, *, cmap: str = "viridis", side: int = 420,
                    image: np.ndarray | None = None, alpha: float = 0.55,
                    vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """What :func:`channel_figure` shows, as a plain RGB array (for downloads)."""
    h, w = values.shape
    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    if image is not None:
        base = np.asarray(Image.fromarray(image).resize(_fit((h, w), side)[::-1], Image.BILINEAR))
        return overlay(base, values, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    return upscale(colorize(values, vmin, vmax, cmap), max(1, side // max(h, w)))


def channel_figure(values: np.ndarray, *, title: str = "", cmap: str = "viridis", side: int = 420,
                   image: np.ndarray | None = None, alpha: float = 0.55, hover_cells: int = 48,
                   vmin: float | None = None, vmax: float | None = None, height: int = 460) -> go.Figure:
    """One channel enlarged, sent as a PNG, with hover values and a colour bar.

    Args:
        values: (H, W) map.
        image: (S, S, 3) uint8 input picture: when given, the map is overlaid on it.
        hover_cells: the hover grid has at most this many cells a side; a cell of a larger map
            reports the mean of the pixels it covers (the hover text says so).

    Axes are in map pixels (column, row), whatever the display size.
    """
    values = np.asarray(values, dtype=np.float32)
    h, w = values.shape
    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    rgb = channel_picture(values, cmap=cmap, side=side, image=image, alpha=alpha, vmin=vmin, vmax=vmax)
    dx, dy = w / rgb.shape[1], h / rgb.shape[0]  # map pixels per picture pixel
    ch, cw = min(h, hover_cells), min(w, hover_cells)
    cells = downsample(values[None], ch, cw)[0] if (ch, cw) != (h, w) else values
    ys = (np.arange(ch) + 0.5) * h / ch - 0.5
    xs = (np.arange(cw) + 0.5) * w / cw - 0.5
    what = "value" if (ch, cw) == (h, w) else f"mean of ~{h / ch:.1f}×{w / cw:.1f} px"
    return go.Figure(
        data=[go.Image(source=data_uri(rgb, photo=image is not None), x0=-0.5 + dx / 2, dx=dx,
                       y0=-0.5 + dy / 2, dy=dy, hoverinfo="skip"),
              go.Heatmap(z=np.round(cells, 4), x=np.round(xs, 2), y=np.round(ys, 2), showscale=False,
                         hoverongaps=False, colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]],
                         hovertemplate=f"x %{{x:.0f}}, y %{{y:.0f}}<br>{what}: %{{z:.4g}}<extra></extra>"),
              go.Scatter(  # a colour bar for the picture: one invisible point carries the scale
                  x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                  marker=dict(colorscale=plotly_colorscale(cmap), cmin=vmin, cmax=vmax, color=[vmin],
                              showscale=True, colorbar=dict(thickness=12, len=0.9)))],
        layout=dict(title=dict(text=title) if title else None, height=height,
                    margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                    xaxis=dict(showgrid=False, zeroline=False, range=[-0.5, w - 0.5], constrain="domain"),
                    yaxis=dict(showgrid=False, zeroline=False, range=[h - 0.5, -0.5], scaleanchor="x"),
                    plot_bgcolor="white"))


# -- what a figure costs to send -------------------------------------------------------------------

def figure_bytes(fig: go.Figure) -> int:
    """Size of a figure as sent to the browser (its JSON), in bytes."""
    return len(fig.to_json().encode("utf-8"))


# -- how big the maps are, flow by flow ---------------------------------------------------------

def size_strip(stages: Sequence[tuple[str, int, int]], highlight: str | None = None,
               height: int = 210) -> go.Figure:
    """Squares whose side is the map's spatial size, labelled with size and channel count.

    ``stages``: (label, spatial size, channels) from the input to the last block
    (:func:`xviz.flows.size_stages`); the stage named ``highlight`` is drawn in orange.
    """
    if not stages:
        raise ValueError("no stages to draw")
    biggest = max(s for _, s, _ in stages)
    x = 0.0
    xs, labels, hover, shapes = [], [], [], []
    for label, size, channels in stages:
        side = max(0.08, (size / biggest) ** 0.5)  # sqrt: 10×10 stays visible next to 299×299
        colour = "#ff7f0e" if label == highlight else "#1f77b4"
        shapes.append(dict(type="rect", x0=x, x1=x + side, y0=0, y1=side, line=dict(color=colour, width=1),
                           fillcolor=colour, opacity=0.85 if label == highlight else 0.35))
        xs.append(x + side / 2)
        labels.append(f"<b>{label}</b><br>{size}×{size}<br>{channels:,} ch")
        hover.append(f"{label}: {size}×{size} pixels, {channels:,} channels "
                     f"({size * size * channels:,} values)")
        x += side + 0.25
    # shapes in one go: add_shape one at a time checks the whole list again each time
    return go.Figure(
        data=[go.Scatter(x=xs, y=[-0.05] * len(xs), mode="text", text=labels, textposition="bottom center",
                         hovertext=hover, hoverinfo="text", showlegend=False, textfont=dict(size=11))],
        layout=dict(shapes=shapes, height=height, margin=dict(l=5, r=5, t=5, b=5), plot_bgcolor="white",
                    xaxis=dict(visible=False, range=[-0.2, x]), yaxis=dict(visible=False, range=[-0.75, 1.05])))


# -- the architecture diagram -------------------------------------------------------------------

FLOW_COLUMNS = {"entry_flow": 0, "middle_flow": 1, "exit_flow": 2, "head": 2}
FLOW_COLOURS = {"entry_flow": "#4c78a8", "middle_flow": "#54a24b", "exit_flow": "#e45756", "head": "#9d755d"}
FLOW_TITLES = {"entry_flow": "Entry flow", "middle_flow": "Middle flow (8× the same block)",
               "exit_flow": "Exit flow"}


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def architecture_diagram(blocks: Sequence, highlight: str | None = None, height: int = 640) -> go.Figure:
    """Flows as columns, blocks as boxes (output shape, parameters), residual paths as side arcs.

    ``blocks``: objects with ``flow``, ``name``, ``output_text``, ``params``, ``residual`` and
    ``description`` (:func:`xviz.flows.architecture`). Each box carries a clickable marker whose
    ``customdata`` is the block name, so a page can react to a selection.
    """
    # shapes and annotations are collected and set in one go: add_shape/add_annotation one at a time
    # re-check the whole list each time
    shapes: list[dict] = []
    notes: list[dict] = []
    columns: dict[int, list] = {}
    for b in blocks:
        columns.setdefault(FLOW_COLUMNS[b.flow], []).append(b)
    rows = max(len(v) for v in columns.values())
    box_w, box_h, dy = 0.74, 0.66, 1.0
    gap = dy - box_h
    centres = {}
    for col, items in columns.items():
        for i, b in enumerate(items):
            centres[b.name] = (col * 1.25, -i * dy)
    marker_x, marker_y, names, hover = [], [], [], []
    sums = []  # the + of each residual sum, drawn last so the arrows pass under it
    text_x, text_y, texts = [], [], []
    for b in blocks:
        cx, cy = centres[b.name]
        colour = FLOW_COLOURS[b.flow]
        shapes.append(dict(type="rect", x0=cx - box_w / 2, x1=cx + box_w / 2, y0=cy - box_h / 2, y1=cy + box_h / 2,
                           line=dict(color=colour, width=3 if b.name == highlight else 1),
                           fillcolor=colour, opacity=0.35 if b.name == highlight else 0.14, layer="below"))
        text_x.append(cx + 0.03)
        text_y.append(cy)
        extra = "" if b.residual == "none" else f" · res: {b.residual}"
        texts.append(f"<b>{b.name}</b>{extra}<br>{b.output_text} · {_params(b.params)} params")
        if b.flow != "head":
            marker_x.append(cx - box_w / 2 + 0.05)
            marker_y.append(cy)
            names.append(b.name)
            hover.append(f"<b>{b.name}</b> ({FLOW_TITLES[b.flow]})<br>{b.description}<br>"
                         f"in {b.input_text} → out {b.output_text}<br>{b.params:,} parameters"
                         f"<br><i>select to see its feature maps</i>")
        # residual path: from the junction above the box (the block's input) around its left side
        # to the sum (+) on the main path below it, where the next block's junction is
        if b.residual != "none":
            x_side = cx - box_w / 2 - 0.08
            top, bottom = cy + box_h / 2 + gap / 2, cy - box_h / 2 - gap / 2
            shapes.append(dict(type="path", line=dict(color=colour, width=2,
                                                      dash="solid" if b.residual == "identity" else "dot"),
                               path=f"M {cx},{top} L {x_side},{top} L {x_side},{bottom} L {cx - 0.05},{bottom}"))
            sums.append(dict(x=cx, y=bottom, text="+", showarrow=False, bgcolor="white", bordercolor=colour,
                             borderwidth=1.5, borderpad=0, font=dict(size=12, color=colour), width=14, height=14))
    # the main path: down each column, then from the last block's output to the next column's top
    for col, items in columns.items():
        for a, b in zip(items, items[1:]):
            (ax_, ay_), (bx, by) = centres[a.name], centres[b.name]
            # a line (under the + of the sum) and a short arrow into the next box
            shapes.append(dict(type="line", x0=ax_, x1=bx, y0=ay_ - box_h / 2, y1=by + box_h / 2,
                               line=dict(color="#555", width=1.2)))
            notes.append(dict(x=bx, y=by + box_h / 2, ax=bx, ay=by + box_h / 2 + 0.05, xref="x", yref="y",
                              axref="x", ayref="y", text="", showarrow=True, arrowhead=2, arrowwidth=1.2,
                              arrowcolor="#555", standoff=0))
    ordered = [columns[c] for c in sorted(columns)]
    for left, right in zip(ordered, ordered[1:]):
        (ax_, ay_), (bx, by) = centres[left[-1].name], centres[right[0].name]
        start_y = ay_ - box_h / 2 - (gap / 2 if left[-1].residual != "none" else 0)
        shapes.append(dict(type="path", line=dict(color="#999", width=1),
                           path=f"M {ax_},{start_y} L {ax_},{start_y - gap / 2} L {(ax_ + bx) / 2},{start_y - gap / 2} "
                                f"L {(ax_ + bx) / 2},{by + box_h / 2 + 0.8 * gap} L {bx},{by + box_h / 2 + 0.8 * gap}"))
        notes.append(dict(x=bx, y=by + box_h / 2, ax=bx, ay=by + box_h / 2 + 0.8 * gap, xref="x", yref="y",
                          axref="x", ayref="y", text="", showarrow=True, arrowhead=2, arrowwidth=1.2,
                          arrowcolor="#555", standoff=0))
    notes += sums
    for flow, col in FLOW_COLUMNS.items():
        if flow in FLOW_TITLES and col in columns:
            notes.append(dict(x=col * 1.25, y=box_h / 2 + 0.55, text=f"<b>{FLOW_TITLES[flow]}</b>",
                              showarrow=False, font=dict(size=13, color=FLOW_COLOURS[flow])))
    return go.Figure(
        data=[go.Scatter(x=text_x, y=text_y, mode="text", text=texts, hoverinfo="skip",
                         textfont=dict(size=11), showlegend=False),
              go.Scatter(x=marker_x, y=marker_y, mode="markers", customdata=names, hovertext=hover, hoverinfo="text",
                         marker=dict(size=16, symbol="circle",
                                     color=[FLOW_COLOURS[b.flow] for b in blocks if b.flow != "head"],
                                     line=dict(color="white", width=1)), showlegend=False, name="blocks")],
        layout=dict(shapes=shapes, annotations=notes, height=height, margin=dict(l=5, r=5, t=5, b=5),
                    plot_bgcolor="white", clickmode="event+select", dragmode=False,
                    xaxis=dict(visible=False, range=[-0.6, 2 * 1.25 + 0.5], fixedrange=True),
                    yaxis=dict(visible=False, range=[-(rows - 1) * dy - 0.95, box_h / 2 + 0.75], fixedrange=True)))
