"""Architecture: the whole network at a glance, read from the loaded model at its input size."""

import streamlit as st

from xviz import flows, ui
from xviz.figures import maps as M
from xviz.model import count_parameters

ui.page_header("The architecture of Xception",
               "Three flows: the **entry flow** shrinks the image and widens the channels, the "
               "**middle flow** repeats one block eight times at a fixed size, the **exit flow** "
               "widens to 2048 channels for the classifier. Almost every block is *residual*: its "
               "input skips around it and is added to its output.")
model = ui.required_model()
size = model.input_size
arch = ui.architecture(model)
PICKED = "_arch_picked"


def _picked():
    points = st.session_state["arch_diagram"].selection.points
    if points:
        data = points[0].get("customdata")
        st.session_state[PICKED] = data[0] if isinstance(data, (list, tuple)) else data


diagram = ui.drawn(("architecture", model.key), lambda: M.architecture_diagram(arch))  # the same for everyone
st.plotly_chart(diagram, key="arch_diagram", on_select=_picked, selection_mode="points", width="stretch",
                config={"displayModeBar": True, "displaylogo": False})
st.caption(f"Shapes are height×width×channels at {size}×{size} px input. Click a block's dot to open its "
           "feature maps. Side paths are residual connections: solid = identity (the input itself), "
           "dotted = 1×1 convolution with stride 2 + BN. The camera icon of the figure saves it as PNG.")
if PICKED in st.session_state:
    st.session_state[ui.GOTO_BLOCK] = st.session_state.pop(PICKED)
    st.switch_page("pages/feature_maps.py")

c1, c2 = st.columns([2, 1])
choice = c1.selectbox("Or pick a block", [b.name for b in arch if b.flow != "head"], key="arch_block")
if c2.button("Open its feature maps", width="stretch"):
    st.session_state[ui.GOTO_BLOCK] = choice
    st.switch_page("pages/feature_maps.py")

st.dataframe(ui.drawn_table(("architecture table", model.key), lambda: [
    {"flow": flows.FLOW_TITLES.get(b.flow, "Classifier head"), "block": b.name, "input": b.input_text,
     "output": b.output_text, "params": b.params, "residual": b.residual, "what it does": b.description}
    for b in arch]), hide_index=True, width="stretch",
             column_config={"params": st.column_config.NumberColumn(format="localized")})
total = count_parameters(model.net)
head = arch[-1].params
st.markdown(f"**{total:,} learnable parameters** in all (BatchNorm running statistics are not parameters): "
            f"{total - head:,} in the three flows and {head:,} in this model's classifier head. "
            "The paper's Xception has 22,855,952 with its 1000-class ImageNet head (2048×1000 weights + "
            "1000 biases = 2,049,000), i.e. 20,806,952 in the flows"
            + (" — the same as here." if total - head == 20_806_952 else "."))
