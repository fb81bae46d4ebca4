"""Grad-CAM and attributions: where the network looks, and whether to believe the heatmap."""

import streamlit as st

from xviz import attributions as A
from xviz import ui
from xviz.ui import teach

ui.page_header("Where is the network looking?",
               "A heatmap over the photo shows which places raised the score of one class. Pick the "
               "class, the layer and the method; then ask whether the map can be trusted.")
sel = ui.current()
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
shapes = {r.name: r for r in ui.layer_table(model)}
if layer in shapes:
    r = shapes[layer]
    st.caption(f"**{layer}** ({flow_of[layer]}): a {r.height}×{r.width} grid of {r.channels:,} channels, one cell "
               f"per {size / r.height:.0f} px of the input. Early layers are sharp but answer *edge? texture?* "
               "for any class; late layers are coarse but about this class. Slide and watch the trade-off.")

options = ui.attribution_options(method, size, key="gc")
if model.kind == "taught" and method == "gradcam" and layer == A.DEFAULT_LAYER:
    teach.view_cam_identity(sel, target)

# -- the maps -------------------------------------------------------------------------------------
ui.view_attribution(sel, target, method=method, layer=layer, compare=compare, options=options)

# -- trust ----------------------------------------------------------------------------------------
st.subheader("Can this map be trusted?")
st.markdown(("Three checks for Integrated Gradients, two for the others. " if method == "integrated_gradients"
             else "Two checks. ")
            + "**Deletion**: grey out the patches the map calls important first; if the map is "
            "faithful the class probability falls faster than when patches go in random order. "
            "**Randomisation** (Adebayo et al., 2018): scramble the network's weights from the top down; a "
            "map that explains the model must change, a map that just traces edges will not."
            + (" **Completeness**: IG's colours must add up to the change in the class score."
               if method == "integrated_gradients" else ""))
trust_key = (model.key, sel.image_key, method, layer, target, tuple(sorted(options.items())))
# a callback, not the button's return value: it survives a rerun between the click and the page
st.button("Run the trust checks", key="gc_trust_run", on_click=st.session_state.__setitem__,
          args=("gc_trust", trust_key))
if st.session_state.get("gc_trust") == trust_key:
    ui.view_attribution_trust(sel, method, layer, target, tuple(sorted(options.items())))
