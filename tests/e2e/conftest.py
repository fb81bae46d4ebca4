"""Real-browser fixtures: `streamlit run app.py` once per test session, Debian's chromium via Playwright.

Every test gets a fresh browser context (a new Streamlit session) against the one server, so tests
don't share widget state while the model stays loaded in the server between them. How actions are
waited for is in bench/browser.py (shared with the cold-start bench).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a package at the repo root; pytest may not have put it on the path
    sys.path.insert(0, str(ROOT))

from bench.browser import TIMEOUT_MS, AppTab, launch  # noqa: E402

SCREENSHOTS = ROOT / "screenshots"  # git-ignored; look at them after a run

# Console messages that are not the app's fault, matched by exact text. Keep this empty unless a
# message is proven benign, and say why next to it.
BENIGN_CONSOLE = frozenset()


@pytest.fixture(scope="session")
def server():
    from bench.appserver import streamlit_server

    # fresh and offline: "Best available" is the installed demo model on every machine, CI included
    with streamlit_server(fresh_offline=True) as srv:
        yield srv


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


class App(AppTab):
    def assert_clean(self) -> None:
        """No Python exception shown anywhere and nothing logged as an error in the console."""
        shown = self.page.locator("[data-testid='stException']")
        assert shown.count() == 0, shown.first.inner_text()
        assert not self.errors, self.errors

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"e2e_{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def open_tab(server, browser):
    """``open_tab()`` opens the app in a new browser context (a new student); all closed at the end."""
    contexts = []

    def open_tab() -> App:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return App(page, server.url, benign=BENIGN_CONSOLE).open()

    try:
        yield open_tab
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def app(open_tab):
    return open_tab()
