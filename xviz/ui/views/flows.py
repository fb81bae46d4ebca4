"""Views inside the flows (xviz.flows): a layer's numbers, the size strip, the channel grid, a residual
block's sum."""

from __future__ import annotations

import streamlit as st

from xviz.figures.toolkit import COLORMAPS
from xviz.ui.cache import channel_grid, flow_capture, layer_summary, layer_table
from xviz.ui.drawn import drawn
from xviz.ui.presenter import colormap, presenter, projected
from xviz.ui.state import Selection


def _flow_rows(sel: Selection):
    return flow_capture(sel), {r.name: r for r in layer_table(sel.model)}


def view_layer_numbers(sel: Selection, layer: str) -> None:
    """What ``layer`` is, its shape, stride, sparsity and range, and where it sits in the size strip."""
    from xviz import flows

    cap, rows = _flow_rows(sel)
    info = rows[layer]
    stats, _ = layer_summary(sel, layer)
    st.caption(f"**{layer}** — {flows.KIND_TEXT[info.kind]}. "
               + ("Kept from the forward pass." if info.stored else
                  f"Computed from `{cap.plan[layer].source}` exactly as the network does (no rerun).")
               + " Maps are stored as float16 for display (about 3 significant digits).")
    m = st.columns(4)
    m[0].metric("Shape (H×W×C)", info.shape_text)
    m[1].metric("Stride from the input", f"{info.stride}× smaller")
    m[2].metric("Zeros after ReLU", f"{stats.zero_after_relu:.0%}",
                help="For a ReLU layer: the share of values that are exactly 0. For any other layer: the "
                     "share the next ReLU would set to 0 (values ≤ 0).")
    m[3].metric("Value range", f"{stats.vmin:.3g} … {stats.vmax:.3g}")
    view_size_strip(sel, layer)


def view_size_strip(sel: Selection, layer: str) -> None:
    """The input-to-exit strip of map sizes, ``layer``'s stage highlighted."""
    from xviz import flows
    from xviz.figures import maps as M

    size = sel.model.input_size
    table = layer_table(sel.model)
    info = next(r for r in table if r.name == layer)
    highlight = ("middle flow ×8" if info.flow == "middle_flow" else
                 (layer.replace("_act", "") if info.block == "block1" else info.block))
    strip = drawn(("size_strip", sel.model.key, highlight, presenter()),
                  lambda: projected(M.size_strip(flows.size_stages(table, size), highlight=highlight), text=13))
    st.plotly_chart(strip, width="stretch", config={"displayModeBar": False})
    st.caption(f"Each square is a block's output, its side the map's size (square-root scale). `{layer}` is "
               f"{info.shape_text}: {info.height * info.width * info.channels:,} numbers for "
               f"{size * size * 3:,} in the input.")


def view_channel_grid(sel: Selection, layer: str, *, key: str = "fm", controls: bool = True,
                      sort: str = "index", count: int = 128, title: str | None = None):
    """The channels of ``layer`` as one grid image. Returns (channel order shown, colour scale).

    With ``controls`` the order, colour scale, colours and count are widgets (``{key}_sort``,
    ``{key}_norm``, ``{key}_cmap``, ``{key}_count``); without, ``sort`` and ``count`` are used.
    """
    from xviz import flows
    from xviz.figures import maps as M

    _, rows = _flow_rows(sel)
    info = rows[layer]
    _, orders = layer_summary(sel, layer)
    st.subheader(f"The {info.channels:,} channels of {layer}" if title is None else title)
    normalise, cmap, count = "channel", colormap("maps"), min(count, info.channels)
    if controls:
        g = st.columns([2, 2, 1, 2])
        sort = g[0].selectbox("Order", list(flows.SORTS), format_func=flows.SORTS.get, key=f"{key}_sort")
        normalise = g[1].radio("Colour scale", list(M.NORMALISATIONS), horizontal=True, key=f"{key}_norm",
                               format_func=lambda k: {"channel": "per channel", "shared": "shared"}[k],
                               help=" · ".join(M.NORMALISATIONS.values()))
        if not presenter():
            cmap = g[2].selectbox("Colours", COLORMAPS, COLORMAPS.index(cmap), key=f"{key}_cmap")
        count = g[3].slider("Channels shown", 1, info.channels, min(info.channels, 128), key=f"{key}_count")
    # small maps (9×9) are enlarged by whole pixels here, crisply: left to the browser they'd be
    # stretched to the caption's width and blurred
    grid, layout = channel_grid(sel, layer, sort, normalise, cmap, count, min_tile=64)
    st.image(grid, width=grid_width(layout), output_format="PNG",
             caption=f"{count} of {info.channels} channels, {flows.SORTS[sort]}, read left to right; "
                     f"{M.NORMALISATIONS[normalise]}"
                     + (f". Tiles are shrunk to {layout.tile} px (each pixel the mean of a box)."
                        if layout.downsampled else "."))
    if controls and not presenter():
        st.download_button("Download the grid (PNG)", grid, f"{layer}_grid.png", "image/png", key=f"{key}_grid_png")
    return orders[sort], cmap


def grid_width(layout) -> int:
    """Pixel width of a channel-grid image: show it at that size, not the caption's."""
    return layout.cols * (layout.tile + layout.gap) - layout.gap


def view_residual(sel: Selection, block: str, *, key: str = "fm", channel: int = 0, controls: bool = True) -> None:
    """Branch + shortcut = sum for one channel of residual block ``block``, checked on the stored maps."""
    from xviz import flows
    from xviz.figures import maps as M

    cap, _ = _flow_rows(sel)
    rv = flows.residual_view(cap, block)
    st.subheader(f"The residual connection of {block}")
    st.markdown(
        "The block's branch computes a *correction*; the shortcut carries "
        + ("**the block's input, unchanged** (identity)" if rv.identity else
           "**the input through a 1×1 convolution with stride 2 and BN** (to match the new size)")
        + f", and `{rv.total_name}` is their sum. Channel by channel: sum = branch + shortcut.")
    rc = min(channel, rv.total.shape[0] - 1)
    if controls:
        rc = st.number_input("Channel", 0, rv.total.shape[0] - 1, rc, key=f"{key}_res_channel")
    shortcut = "+ shortcut (the input itself)" if rv.identity else f"+ shortcut (1×1 conv of {rv.input_name})"
    parts = [("branch", rv.branch_name, rv.branch), (shortcut, rv.shortcut_name, rv.shortcut),
             ("= sum", rv.total_name, rv.total)]
    st.image(M.tiles([a[rc] for _, _, a in parts], side=200), width=200, output_format="PNG",
             caption=[f"{role}: {name}, ch {rc}" for role, name, _ in parts])
    st.caption("Blue negative, red positive, one shared scale. Check on the stored maps: "
               f"max |branch + shortcut − sum| = {rv.max_error:.2g} for values up to {rv.scale:.3g} — "
               + ("equal within float16 rounding ✓" if rv.tolerance_ok else "LARGER than float16 rounding allows ✗"))

