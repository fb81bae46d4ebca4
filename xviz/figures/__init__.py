"""Pure figure builders: arrays and tables in, plotly figures or images out. No Streamlit here."""

from .predict import topk_bar  # noqa: F401
