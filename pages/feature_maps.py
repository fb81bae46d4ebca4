"""Feature maps: the image travelling through the entry, middle and exit flows."""

import streamlit as st

from xviz import flows, ui
from xviz.figures import maps as M

ui.page_header("Inside the flows: feature maps",
               "Every layer turns the image into a stack of **channels**: small pictures, each "
               "answering one question about every place in the image (*an edge here? a texture? "
               "a handle?*). Early layers are large and few, later ones small and many.")
sel = ui.current()
if sel is None:
    st.stop()
model, size = sel.model, sel.model.input_size
cap = ui.flow_capture(model.key, sel.image_key, size, model, sel.image)
table = ui.layer_table(model.key, size, model)
blocks = flows.block_names(model.net)
rows_by_block = {b: [r for r in table if r.block == b] for bl in blocks.values() for b in bl}

goto = st.session_state.pop(ui.GOTO_BLOCK, None)  # a block chosen on the Architecture page
if goto in rows_by_block:
    st.session_state["fm_flow"] = next(f for f, bl in blocks.items() if goto in bl)
    st.session_state["fm_block"] = goto
    st.session_state.pop("fm_layer", None)
c1, c2, c3 = st.columns([3, 1, 3])
flow = c1.radio("Flow", list(blocks), format_func=flows.FLOW_TITLES.get, horizontal=True, key="fm_flow")
if st.session_state.get("fm_block") not in blocks[flow]:
    st.session_state["fm_block"] = blocks[flow][0]
block = c2.selectbox("Block", blocks[flow], key="fm_block")
names = [r.name for r in rows_by_block[block]]
if st.session_state.get("fm_layer") not in names:
    st.session_state["fm_layer"] = names[-1]  # the block's output
layer = c3.selectbox("Layer (Keras name)", names, key="fm_layer",
                     format_func=lambda n: f"{n}  ·  {cap.plan[n].kind}")
info = next(r for r in rows_by_block[block] if r.name == layer)
stats, orders = ui.layer_summary(model.key, sel.image_key, size, layer, cap)
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
st.plotly_chart(M.size_strip(flows.size_stages(table, size),
                             highlight="middle flow ×8" if flow == "middle_flow" else
                             (layer.replace("_act", "") if block == "block1" else block)),
                width="stretch", config={"displayModeBar": False})
st.caption(f"Each square is a block's output, its side the map's size (square-root scale). `{layer}` is "
           f"{info.shape_text}: {info.height * info.width * info.channels:,} numbers for "
           f"{size * size * 3:,} in the input.")

st.subheader(f"The {info.channels:,} channels of {layer}")
g = st.columns([2, 2, 1, 2])
sort = g[0].selectbox("Order", list(flows.SORTS), format_func=flows.SORTS.get, key="fm_sort")
normalise = g[1].radio("Colour scale", list(M.NORMALISATIONS), horizontal=True, key="fm_norm",
                       format_func=lambda k: {"channel": "per channel", "shared": "shared"}[k],
                       help=" · ".join(M.NORMALISATIONS.values()))
cmap = g[2].selectbox("Colours", M.COLORMAPS, key="fm_cmap")
count = g[3].slider("Channels shown", 1, info.channels, min(info.channels, 128), key="fm_count")
grid, layout = ui.channel_grid(model.key, sel.image_key, size, layer, sort, normalise, cmap, count, cap,
                               orders[sort])
st.image(grid,
         caption=f"{count} of {info.channels} channels, {flows.SORTS[sort]}, read left to right; "
                 f"{M.NORMALISATIONS[normalise]}"
                 + (f". Tiles are shrunk to {layout.tile} px (each pixel the mean of a box)."
                    if layout.downsampled else "."))
st.download_button("Download the grid (PNG)", grid, f"{layer}_grid.png", "image/png")

st.subheader("One channel, enlarged")
left, right = st.columns([3, 2])
channel = right.selectbox("Channel", [int(c) for c in orders[sort]], key="fm_channel",
                          help="Listed in the grid's order: the first is the grid's top-left tile.")
show_overlay = right.toggle("Overlay on the image", key="fm_overlay")
alpha = right.slider("Opacity", 0.1, 1.0, 0.6, disabled=not show_overlay, key="fm_alpha")
values = cap.channel(layer, channel)
picture = dict(cmap=cmap, image=cap.image if show_overlay else None, alpha=alpha)
left.plotly_chart(M.channel_figure(values, title=f"{layer}, channel {channel} ({info.height}×{info.width})",
                                   **picture), width="stretch")
right.caption(f"Channel {channel}: values {values.min():.3g} … {values.max():.3g}, mean {values.mean():.3g}, "
              f"{(values <= 0).mean():.0%} zero after ReLU. Hover over the map for values. The overlay is "
              "approximate: a map pixel stands for the centre of the image patch it sees.")
right.download_button("Download this channel (PNG)", M.png_bytes(M.channel_picture(values, **picture)),
                      f"{layer}_ch{channel}.png", "image/png")

if f"{block}_add" in cap.plan:
    rv = flows.residual_view(cap, block)
    st.subheader(f"The residual connection of {block}")
    st.markdown(
        "The block's branch computes a *correction*; the shortcut carries "
        + ("**the block's input, unchanged** (identity)" if rv.identity else
           "**the input through a 1×1 convolution with stride 2 and BN** (to match the new size)")
        + f", and `{rv.total_name}` is their sum. Channel by channel: sum = branch + shortcut.")
    rc = st.number_input("Channel", 0, rv.total.shape[0] - 1, min(channel, rv.total.shape[0] - 1),
                         key="fm_res_channel")
    shortcut = "+ shortcut (the input itself)" if rv.identity else f"+ shortcut (1×1 conv of {rv.input_name})"
    parts = [("branch", rv.branch_name, rv.branch), (shortcut, rv.shortcut_name, rv.shortcut),
             ("= sum", rv.total_name, rv.total)]
    st.image(M.tiles([a[rc] for _, _, a in parts], side=200), width=200, output_format="PNG",
             caption=[f"{role}: {name}, ch {rc}" for role, name, _ in parts])
    st.caption("Blue negative, red positive, one shared scale. Check on the stored maps: "
               f"max |branch + shortcut − sum| = {rv.max_error:.2g} for values up to {rv.scale:.3g} — "
               + ("equal within float16 rounding ✓" if rv.tolerance_ok else "LARGER than float16 rounding allows ✗"))
