"""Huge uploads against the real server: what they cost it (RSS) and what the student is told.

The scenarios and budgets are bench/bench_uploads.py's (issue 17); its README rows come from there.
Memory is the server's process tree, so these tests run against their own `streamlit run app.py`
rather than the shared one the other browser tests have loaded pages into.
"""

from __future__ import annotations

import pytest

from bench import bench_uploads as U
from bench.browser import browser_missing_reason

MB = U.MB


@pytest.fixture(scope="module")
def server():
    from bench.appserver import streamlit_server

    with streamlit_server(fresh_offline=True) as srv:
        yield srv


@pytest.mark.skipif(browser_missing_reason() is not None, reason=str(browser_missing_reason()))
def test_four_students_drop_300_mb_on_the_photo_uploader_at_once(server, browser):
    """The browser refuses each file before sending a byte (the uploader's own 25 MB limit), says so
    on the page, and the server doesn't notice: 4 × 300 MB used to take it from 543 MB to 2.3 GB."""
    d = U.drop_at_once(server, browser, tabs=4, size=300 * MB)
    figures = f"idle {d['idle'] / MB:.0f} MB, peak {d['peak'] / MB:.0f} MB, after {d['after'] / MB:.0f} MB"
    assert d["told"] == 4, figures
    assert d["kept_previous"]
    assert d["peak"] - d["idle"] <= U.DROP_PEAK_BUDGET, figures
    assert d["after"] - d["idle"] <= U.DROP_AFTER_BUDGET, figures


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_direct_request_over_the_server_limit_is_refused_unread(server, chunked):
    """A script PUTs 1 MB more than the server's limit straight to /_stcore/upload_file: 413, and
    the body is never held (refused from its Content-Length, or at the streaming cap when chunked)."""
    r = U.direct_over_limit(server, chunked=chunked, over=MB)
    assert r["status"] == 413
    assert r["peak"] - r["before"] <= U.DIRECT_BUDGET, f"peak +{(r['peak'] - r['before']) / MB:.0f} MB"


def test_oversized_photo_from_a_script_is_refused_and_let_go(server):
    """100 MB sent as a photo by a client that skips the browser: under the server's limit, so it
    arrives; the sidebar refuses it, the uploader is emptied and the bytes are let go at once."""
    r = U.oversized_photo_released(server, size=100 * MB)
    assert r["message"], r["alerts"]
    assert r["kept_previous"] and r["rekeyed"]
    assert r["after"] - r["before"] <= U.RELEASE_BUDGET, \
        f"+{(r['after'] - r['before']) / MB:.0f} MB still held after the refusal"
