"""The Streamlit glue package (xviz/ui/) itself: where it may be imported, and its one workaround that
touches a private Streamlit class (legacy_pages). The pages that use it have their own AppTests."""

from __future__ import annotations

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
