"""The Streamlit glue package (xviz/ui/) itself: where it may be imported, and its one workaround that
touches a private Streamlit class (legacy_pages). The pages that use it have their own AppTests."""

from __future__ import annotations

import importlib
import subprocess
import sys

from streamlit.runtime.pages_manager import PagesManager

from helpers import ROOT
from xviz.ui import legacy_pages


def test_importing_xviz_never_imports_streamlit():
    code = ("import sys, xviz, xviz.flows, xviz.attributions, xviz.accounting, xviz.tour, xviz.figures; "
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_private_flag_legacy_pages_relies_on_still_exists():
    # a Streamlit upgrade that renames or drops it must fail here, not silently break deep links
    assert "uses_pages_directory" in vars(PagesManager)
    assert PagesManager.uses_pages_directory in (None, True, False)


def test_leave_switches_legacy_mode_off(monkeypatch):
    monkeypatch.setattr(PagesManager, "uses_pages_directory", True)
    assert legacy_pages.active()
    legacy_pages.leave()
    assert not legacy_pages.active() and PagesManager.uses_pages_directory is False


def test_navigation_mode_only_holds_for_managers_made_inside_and_is_undone(monkeypatch):
    # a main script with a pages/ folder beside it: the flag would be switched on
    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)
    init = PagesManager.__init__
    with legacy_pages.navigation_mode_only():
        PagesManager(str(ROOT / "app.py"))
        assert not legacy_pages.active()
    assert PagesManager.__init__ is init  # (tests/conftest.py keeps its own block open all session)


def test_a_drawn_figure_makes_its_plotly_dict_once():
    """st.plotly_chart asks a figure for its dict on every rerun: a drawn figure answers with the
    one it made when drawn, equal to plotly's own."""
    import plotly.graph_objects as go

    drawn = importlib.import_module("xviz.ui.drawn")  # the module: xviz.ui.drawn is also its function

    made = []

    def draw():
        fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
        made.append(fig.to_dict())
        return fig

    fig = drawn.drawn(("test figure", id(made)), draw)
    assert drawn.drawn(("test figure", id(made)), draw) is fig and len(made) == 1
    assert fig.to_dict() is fig.to_dict() and fig.to_dict() == made[0]
    pair = drawn.drawn(("test pair", id(made)), lambda: (draw(), "its lesson"))  # as (figure, text)
    assert pair[0].to_dict() is pair[0].to_dict() and pair[0].to_dict() == made[-1] and pair[1] == "its lesson"
    assert drawn.drawn(("test text", id(made)), lambda: "text") == "text"  # anything else as it is


def test_a_drawn_table_is_arrow_without_the_index():
    import pandas as pd
    import pyarrow as pa

    drawn = importlib.import_module("xviz.ui.drawn")  # the module: xviz.ui.drawn is also its function

    frame = pd.DataFrame({"layer": ["block1_conv1", "block1_conv2"], "params": [864, 18432]}, index=[7, 9])
    table = drawn.drawn_table(("test table", id(frame)), lambda: frame)
    assert isinstance(table, pa.Table) and table.column_names == ["layer", "params"]
    assert table.to_pydict() == {"layer": ["block1_conv1", "block1_conv2"], "params": [864, 18432]}
    assert drawn.drawn_table(("test table", id(frame)), lambda: 1 / 0) is table  # made once
    rows = drawn.drawn_table(("test rows", id(frame)), lambda: [{"model": "Xception", "top-1": 0.79},
                                                                {"model": "VGG", "top-1": None}])
    assert rows.to_pylist() == [{"model": "Xception", "top-1": 0.79}, {"model": "VGG", "top-1": None}]
