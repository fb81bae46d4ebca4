"""Predict: what the network sees and what it thinks it is."""

import streamlit as st

from xviz import ui

ui.page_header("What does Xception see?",
               "The photo is resized and rescaled into the numbers the network was trained on, then "
               "passes through 36 convolution layers. Here is what came out.")
sel = ui.current()
model = sel.model
if model.has_head:
    ui.start_prediction(sel)  # the network reads the photo while the page draws it

ui.view_input(sel)

if not model.has_head:
    st.warning("This model has no classifier head (a 'notop' backbone): it can't name classes. "
               "Its feature maps are on the other pages.")
    st.stop()

k = st.slider("How many guesses to show", 1, min(10, len(model.labels)), min(5, len(model.labels)))
preds = ui.view_predictions(sel, k)

label, prob = preds[0]
size = model.input_size
st.markdown(
    f"**How to read this.** The network turned {size}×{size}×3 = {size * size * 3:,} pixel values into "
    f"{model.net.num_features:,} features (the average of each channel of `block14_sepconv2_act`), "
    f"then its classifier gave each of its {len(model.labels):,} classes a score. Softmax turned the "
    f"scores into probabilities that sum to 1: it is **{prob:.0%}** sure this is **{label}**. "
    "A high probability means the model is confident, not that it is right — it can only choose "
    "among the classes it was trained on.")
if not model.trained:
    st.error("These predictions come from random weights and mean nothing.")
