"""`xviz app` from an installed wheel, started from a folder outside the checkout, is the real app:
the landing page draws its prediction for the first photo shipped with the package, with no error."""

from __future__ import annotations

import pytest

from pathlib import Path

from bench.browser import TIMEOUT_MS, AppTab, browser_missing_reason, registered_pages

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(browser_missing_reason() is not None, reason=browser_missing_reason() or "")]


def test_xviz_app_from_the_installed_wheel(installed_wheel, browser):
    from bench.appserver import streamlit_server

    command = (str(installed_wheel.scripts / "xviz"), "app")
    with streamlit_server(command=command, cwd=installed_wheel.outside, fresh_offline=True) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            tab = AppTab(context.new_page(), server.url).open()  # waits for the prediction chart
            tab.page.wait_for_selector("[data-testid='stSidebar'] >> text=Weights:", timeout=TIMEOUT_MS)
            nav = tab.page.get_by_test_id("stSidebarNav")
            for page in registered_pages(ROOT):  # app.py's page list, run from the installed copy
                assert nav.get_by_text(page.title, exact=True).count() == 1, (page.title, nav.inner_text())
            # the photos shipped with the package (the first is the coffee cup), not only the demo
            # model package's own
            assert tab.main.get_by_text("(example: coffee)").count() == 1, tab.main.inner_text()[:2000]
            assert tab.page.locator("[data-testid='stException']").count() == 0
            assert not tab.errors, tab.errors
        finally:
            context.close()
