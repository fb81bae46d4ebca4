"""Presenter mode: a classroom projector (larger type, projector-safe colours, fewer controls)."""

from __future__ import annotations

import streamlit as st

from xviz.ui.state import PRESENTER

# (screen, projector) colour scales per kind of picture, from xviz.figures.toolkit.COLORMAPS. A
# projector washes out contrast and shifts hues; scales whose lightness rises steadily keep their
# order when that happens. jet's brightest colours sit mid-scale, so a washed-out jet no longer says
# which end is high; cividis also reads the same to red-green colour-blind viewers (about 1 boy in 12).
DEFAULT_COLORMAPS = {"maps": ("viridis", "cividis"), "heat": ("jet", "inferno")}

# Streamlit sizes its text in rem of the root font (16 px): raising the root scales all of it, and
# body text gets a further step, for the back row.
PRESENTER_CSS = """<style>
html { font-size: 20px !important; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] :is(p, li) { font-size: 1.2rem; line-height: 1.5; }
[data-testid="stMain"] [data-testid="stCaptionContainer"] { font-size: 0.95rem; }
</style>"""


def projected(fig, text: int = 18):
    """``fig`` with type a projector's back row can read, in presenter mode (plotly sizes text in px,
    so the page's larger root font doesn't reach it); unchanged otherwise. ``text``: the traces' own
    labels, smaller where they sit side by side."""
    if presenter():
        fig.update_layout(font=dict(size=20))
        fig.update_traces(textfont_size=text)
        if fig.layout.height:
            fig.update_layout(height=int(fig.layout.height * 1.4))
    return fig


def presenter() -> bool:
    """Is presenter mode on? Views then show fewer controls and projector-safe colours."""
    return bool(st.session_state.get(PRESENTER, False))


def colormap(kind: str = "maps") -> str:
    """The colour scale views use for ``kind`` ("maps": activations, "heat": attribution heatmaps)."""
    if kind not in DEFAULT_COLORMAPS:
        raise ValueError(f"unknown colour-scale kind {kind!r}; use one of {', '.join(DEFAULT_COLORMAPS)}")
    return DEFAULT_COLORMAPS[kind][presenter()]


def presenter_sidebar():
    on = st.sidebar.toggle("Presenter mode", key=PRESENTER,
                           help="For a projector: larger type, colour scales that survive a projector, fewer "
                                "controls, and the sidebar closes (» at the top left opens it again).")
    # A second st.set_page_config is allowed mid-session, and Streamlit 1.67 applies a *changed*
    # initial_sidebar_state at once. But once the user has opened or closed the sidebar by hand, the
    # browser stores that choice and it wins over the app's: then the sidebar stays as the user left it.
    st.set_page_config(initial_sidebar_state="collapsed" if on else "auto")
    if on:
        st.html(PRESENTER_CSS)
        st.sidebar.caption("Sidebar still open? Close it with « at its top: this browser remembers your "
                           "own choice over the app's.")

