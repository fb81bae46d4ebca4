"""The one place xviz touches a private Streamlit class: the legacy ``pages/`` switch.

Streamlit keeps a process-wide flag, ``PagesManager.uses_pages_directory``, set on the first run
if a ``pages/`` folder sits next to the main script. While it is on, a URL such as ``/parameters``
runs ``pages/parameters.py`` alone (the pre-``st.navigation`` multipage mode), so a deep link opened
as the server's first request gets a page without app.py's sidebar. ``st.navigation`` turns the
flag off, but only once app.py has run. No public API does this (Streamlit 1.67, pinned in
requirements.txt); tests/test_ui_legacy_pages.py fails if the attribute moves.
"""

from __future__ import annotations

from contextlib import contextmanager

from streamlit.runtime.pages_manager import PagesManager


def active() -> bool:
    """Is Streamlit running page files on their own (legacy ``pages/`` mode)?"""
    return bool(PagesManager.uses_pages_directory)


def leave() -> None:
    """Switch legacy mode off for the whole process, as ``st.navigation`` does once app.py runs."""
    PagesManager.uses_pages_directory = False


@contextmanager
def navigation_mode_only():
    """Keep every ``PagesManager`` made inside this block in ``st.navigation`` mode.

    For AppTest (tests/conftest.py): it resets the flag before every run, so without this every
    run would start as a page-only run that ``ensure_frame`` hands over with a rerun, and a rerun
    drops one-shot values (button clicks, ``st.switch_page`` targets).
    """
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init
    try:
        yield
    finally:
        PagesManager.__init__ = original
