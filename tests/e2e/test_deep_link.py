"""A link to a page, opened as a fresh server's very first request, still gets the whole app.

Until st.navigation has run once, Streamlit treats the pages/ folder as a legacy multipage app and
runs the page file alone; ui.ensure_frame hands that run over to app.py. Needs its own server:
the shared one has long left that state.
"""

from __future__ import annotations

import pytest

from bench.browser import IDLE, TIMEOUT_MS, AppTab, browser_missing_reason

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(browser_missing_reason() is not None, reason=browser_missing_reason() or "")]


def test_deep_link_as_first_request_gets_sidebar_and_page(browser):
    from bench.appserver import streamlit_server

    with streamlit_server(fresh_offline=True) as server:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            tab = AppTab(page, f"{server.url}/parameters").open(ready="h1")
            page.wait_for_selector("[data-testid='stSidebar'] >> text=Weights:", timeout=TIMEOUT_MS)
            page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
            assert page.get_by_role("heading", name="Parameters and compute").count() == 1
            assert page.locator("[data-testid='stException']").count() == 0
            # Streamlit's frontend first looks for the server under the link's path
            # (/parameters/_stcore/health, .../host-config), gets 404s, then uses the root: that
            # happens for any deep link to a Streamlit app. Anything else is an error.
            unexpected = [e for e in tab.errors if "404" not in e or "/parameters/_stcore/" not in e]
            assert not unexpected, unexpected
        finally:
            context.close()
