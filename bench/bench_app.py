"""The app as a teacher meets it (issue 3): cold start and page switches, in Debian's chromium.

Cold start: from spawning `streamlit run app.py` (fresh and offline, see bench/appserver.py) to the
Predict page's bar chart drawn in the browser: Python imports, the demo model's load and first
forward, and the first render. The browser is already open, as the teacher's would be.
Warm page switch: a click in the navigation to the target page's rerun finished and rendered, for
pages whose results are already cached (the second visit), median over a few round trips between
Predict and every other page. The first visit of each page is reported too: that one computes.

No budgets are named for these; they are printed with the naive eager forward at the app's input
size, measured in the same run, for scale (bench conventions).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.appserver import streamlit_server  # noqa: E402
from bench.browser import (  # noqa: E402
    CHART_DRAWN, TIMEOUT_MS, AppTab, browser_missing_reason, launch, registered_pages)
from bench.common import bench_model, naive_forward_seconds, row  # noqa: E402

ROUND_TRIPS = 3


def measure() -> dict:
    from playwright.sync_api import sync_playwright

    pages = registered_pages(ROOT)
    out = {"first_visit": {}, "warm_switch": []}
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            with streamlit_server() as srv:
                out["server_ready_s"] = time.perf_counter() - srv.started
                tab = AppTab(page, srv.url).open(ready=CHART_DRAWN)
                out["cold_start_s"] = time.perf_counter() - srv.started
                home = pages[0].title
                for entry in pages[1:]:
                    t0 = time.perf_counter()
                    tab.go_to(entry.title)
                    out["first_visit"][entry.title] = time.perf_counter() - t0
                    tab.go_to(home)
                for _ in range(ROUND_TRIPS):
                    for entry in pages[1:]:
                        t0 = time.perf_counter()
                        tab.go_to(entry.title)
                        out["warm_switch"].append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        tab.go_to(home)
                        out["warm_switch"].append(time.perf_counter() - t0)
                if tab.errors:
                    raise RuntimeError(f"browser console errors during the bench: {tab.errors}")
        finally:
            browser.close()
    return out


def rows() -> list[dict]:
    missing = browser_missing_reason()
    if missing:
        raise RuntimeError(f"bench_app needs the browser: {missing}")
    m = measure()
    naive_ms = naive_forward_seconds(bench_model(150), 150) * 1e3  # the demo model's native size
    warm = m["warm_switch"]
    result = [
        row("app server healthy after spawn", m["server_ready_s"], "s"),
        row("app cold start: spawn to first prediction drawn", m["cold_start_s"], "s"),
        row("app warm page switch (cached), median", statistics.median(warm), "s",
            note=f"{len(warm)} switches, max {max(warm):.2f} s"),
        row("app warm page switch / naive forward 150px", statistics.median(warm) * 1e3 / naive_ms, "x"),
    ]
    for title, seconds in m["first_visit"].items():
        result.append(row(f"app first visit: {title}", seconds, "s"))
    result.append(row("naive eager fp32 forward 150px (scale)", naive_ms, "ms"))
    return result


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
