"""Grad-CAM and attributions: where the network looks, and whether to believe the heatmap."""

import dataclasses

import streamlit as st

from xviz import attributions as A
from xviz import ui
from xviz.figures import attribution as F

ui.page_header("Where is the network looking?",
               "A heatmap over the photo shows which places raised the score of one class. Pick the "
               "class, the layer and the method; then ask whether the map can be trusted.")
sel = ui.current()
if sel is None:
    st.stop()
model, size = sel.model, sel.model.input_size
if not model.has_head:
    st.warning("This model has no classifier head, so there is no class score to explain. "
               "Choose weights with a head in the sidebar.")
    st.stop()

# -- what to explain ----------------------------------------------------------------------------
left, right = st.columns(2)
target = ui.pick_attribution_target(sel, left, key="gc")
names = list(A.METHODS)
method = right.selectbox("Method", names, format_func=lambda n: A.METHODS[n].title, key="gc_method")
compare = right.multiselect("Side by side with", [n for n in names if n != method], key="gc_compare",
                            format_func=lambda n: A.METHODS[n].title)
spec = A.METHODS[method]
right.caption(spec.summary)

blocks = A.block_outputs(model.net)
flow_of = dict((name, flow.replace("_", " ")) for flow, name in blocks)
layer = st.select_slider("Layer (Grad-CAM family): entry flow → middle flow → exit flow", list(flow_of),
                         value=A.DEFAULT_LAYER, key="gc_layer",
                         format_func=lambda n: f"{flow_of[n]} · {n}",
                         disabled=not any(A.METHODS[n].uses_layer for n in [method, *compare]))
shapes = {r.name: r for r in ui.layer_table(model.key, size, model)}
if layer in shapes:
    r = shapes[layer]
    st.caption(f"**{layer}** ({flow_of[layer]}): a {r.height}×{r.width} grid of {r.channels:,} channels, one cell "
               f"per {size / r.height:.0f} px of the input. Early layers are sharp but answer *edge? texture?* "
               "for any class; late layers are coarse but about this class. Slide and watch the trade-off.")

options = ui.attribution_options(method, size, key="gc")

# -- the maps -------------------------------------------------------------------------------------
c0, c1, c2 = st.columns([2, 3, 2])
view = c0.radio("View", ["Overlay", "Heatmap only"], horizontal=True, key="gc_view")
alpha = c1.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="gc_alpha", disabled=view != "Overlay")
cmap = ui.colormap("heat") if ui.presenter() else c2.selectbox("Colours", F.COLORMAPS, key="gc_cmap")
# the picture the model saw, cropped the same way but drawn at a readable size (not upscaled pixels)
shown_size = max(size, 448)
seen = dataclasses.replace(model.preprocessing, size=shown_size, resize="bilinear").resized(sel.image)


def picture(name):
    opts = tuple(sorted(options.items())) if name == method else ()
    heat = ui.attribution_map(sel, name, layer, target, opts)
    m = A.METHODS[name]
    look = dict(cmap=cmap, signed=m.signed, percentile=100.0 if m.uses_layer else 99.5)
    # pixel-level maps are sparse: let their near-zero pixels show the photo (fade)
    return (F.overlay(seen, heat, alpha=alpha, fade=m.signed or not m.uses_layer, **look) if view == "Overlay"
            else F.heatmap_image(heat, size=shown_size, **look))


label = model.labels[target]
chosen = [method, *compare]
shown = [(A.METHODS[n].title, picture(n)) for n in chosen]
image = F.side_by_side([p for _, p in shown], [t for t, _ in shown], font_size=24) if compare else shown[0][1]
caption = (f"{' · '.join(t for t, _ in shown)} for **{label}**"
           + (f" at {layer}" if any(A.METHODS[n].uses_layer for n in chosen) else "")
           + (". Red: evidence for the class, blue: against." if any(A.METHODS[n].signed for n in chosen) else "."))
pic, note = (st.container(), st.container()) if compare else st.columns([3, 2])
pic.image(image, width="stretch", caption=caption)
if spec.uses_layer and layer in shapes:
    note.markdown(f"**How to read it.** Warm colours: places that raised the score of **{label}**; cold: "
                  f"little or nothing. {spec.title} is computed on the {shapes[layer].height}×"
                  f"{shapes[layer].width} grid of `{layer}` and stretched over the photo: that is why it "
                  "is smooth. Slide to an earlier layer for a sharper, less class-specific map.")
else:
    note.markdown(f"**How to read it.** {spec.summary} The map has one value per input pixel "
                  f"({size}×{size}); the colours are scaled to its 99.5th percentile so a few extreme "
                  "pixels don't wash out the rest.")
if not ui.presenter():
    settings = {"method": "+".join(chosen), "layer": layer, "class": label, "view": view.split()[0],
                "alpha": alpha, "cmap": cmap, "size": size, "image": sel.image_key[:8]}
    note.download_button("Download this picture (PNG)", F.png_bytes(image, settings), F.png_filename(settings),
                         "image/png", key="gc_png")

# -- trust ----------------------------------------------------------------------------------------
st.subheader("Can this map be trusted?")
st.markdown("Two checks. **Deletion**: grey out the patches the map calls important first; if the map is "
            "faithful the class probability falls faster than when patches go in random order. "
            "**Randomisation** (Adebayo et al., 2018): scramble the network's weights from the top down; a "
            "map that explains the model must change, a map that just traces edges will not.")
trust_key = (model.key, sel.image_key, method, layer, target, tuple(sorted(options.items())))
# a callback, not the button's return value: it survives a rerun between the click and the page
st.button("Run the trust checks", key="gc_trust_run", on_click=st.session_state.__setitem__,
          args=("gc_trust", trust_key))
if st.session_state.get("gc_trust") == trust_key:
    ui.view_attribution_trust(sel, method, layer, target, tuple(sorted(options.items())))
