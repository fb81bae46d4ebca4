"""Feature maps: the image travelling through the entry, middle and exit flows."""

import streamlit as st

from xviz import flows, ui
from xviz.figures import maps as M
from xviz.figures.toolkit import png_bytes

ui.page_header("Inside the flows: feature maps",
               "Every layer turns the image into a stack of **channels**: small pictures, each "
               "answering one question about every place in the image (*an edge here? a texture? "
               "a handle?*). Early layers are large and few, later ones small and many.")
sel = ui.current()
model, size = sel.model, sel.model.input_size
cap = ui.flow_capture(sel)
table = ui.layer_table(model)
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
ui.view_layer_numbers(sel, layer)
order, cmap = ui.view_channel_grid(sel, layer)

st.subheader("One channel, enlarged")
left, right = st.columns([3, 2])
channel = right.selectbox("Channel", [int(c) for c in order], key="fm_channel",
                          help="Listed in the grid's order: the first is the grid's top-left tile.")
show_overlay = right.toggle("Overlay on the image", key="fm_overlay")
alpha = right.slider("Opacity", 0.1, 1.0, 0.6, disabled=not show_overlay, key="fm_alpha")
values = cap.channel(layer, channel)
picture = dict(cmap=cmap, image=cap.image if show_overlay else None, alpha=alpha)
enlarged = ui.drawn(("channel", sel.key, layer, channel, cmap, show_overlay, alpha),
                   lambda: M.channel_figure(values, title=f"{layer}, channel {channel} ({info.height}×{info.width})",
                                            **picture))
left.plotly_chart(enlarged, width="stretch")
right.caption(f"Channel {channel}: values {values.min():.3g} … {values.max():.3g}, mean {values.mean():.3g}, "
              f"{(values <= 0).mean():.0%} zero after ReLU. Hover over the map for values. The overlay is "
              "approximate: a map pixel stands for the centre of the image patch it sees.")
if not ui.presenter():
    right.download_button("Download this channel (PNG)", lambda: png_bytes(M.channel_picture(values, **picture)),
                          f"{layer}_ch{channel}.png", "image/png")  # encoded on click, not every rerun

if f"{block}_add" in cap.plan:
    ui.view_residual(sel, block, channel=channel)
