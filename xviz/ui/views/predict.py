"""Views of the Predict page: the photo next to what the network reads, and the top-k chart."""

from __future__ import annotations

import streamlit as st

from xviz.preprocess import to_display
from xviz.ui.cache import model_input, photo_jpeg, predictions
from xviz.ui.drawn import drawn
from xviz.ui.presenter import presenter, projected
from xviz.ui.state import Selection


def view_input(sel: Selection) -> None:
    """The photo and the picture the network reads (resized as its preprocessing says)."""
    from xviz.figures.toolkit import png_bytes

    model = sel.model
    left, right = st.columns(2)
    left.image(photo_jpeg(sel), caption=f"Your image ({sel.image_name}), {sel.image.width}×{sel.image.height} px",
               width="stretch", output_format="JPEG")
    # lossless, and from the very tensor the requests start from: exactly the pixels the network reads
    seen = drawn(("input", sel.key), lambda: png_bytes(to_display(model_input(sel), model.preprocessing.mean,
                                                                  model.preprocessing.std)))
    right.image(seen, caption=f"What the model sees: {model.preprocessing.describe()}", width="stretch",
                output_format="PNG")


def view_predictions(sel: Selection, k: int) -> list[tuple[str, float]]:
    """The top-``k`` bar chart; returns the predictions shown."""
    from xviz.figures import topk_bar

    preds = predictions(sel, k)
    st.plotly_chart(drawn(("topk", sel.key, k, presenter()), lambda: projected(topk_bar(preds))), width="stretch")
    return preds
