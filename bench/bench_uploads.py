"""What huge and hostile uploads cost the server (issue 17), against `streamlit run app.py`.

    python bench/bench_uploads.py          # or: python bench/run.py uploads

Four parts, each on a fresh server (bench/appserver.py), RSS of the server's process tree sampled
every 50 ms:

- **drop**: four Chromium tabs drop a 300 MB file on "Your photo" at the same moment (a video or a
  disk image by mistake). Budget: every tab shows the refusal; RSS peak <= +400 MB over idle (the
  four tabs open, before the drop) and <= +100 MB once the messages are shown.
- **direct**: a script skips the browser and PUTs 1 MB more than the server's limit straight to
  ``/_stcore/upload_file``, with a Content-Length and chunked (no length). Budget: refused, RSS
  growth <= 50 MB.
- **release**: a script puts a 100 MB file (under the server's limit, over the photo limit) into the
  photo uploader. It is refused with the sidebar's message, the uploader is emptied and the file's
  bytes are let go: RSS once the message is shown <= +50 MB over before the upload.
- **weights**: five practitioners upload a different 92 MB Xception checkpoint at the same moment.
  The server reads one weights file at a time; the others see the waiting message. Reported: peak
  and settled RSS over idle, how many waited, how many models loaded.

The tests in tests/e2e/test_upload_limits.py run the same functions (the weights part excepted: ~1
min of model loading) and assert the same budgets.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.appserver import RssSampler, rss_bytes, streamlit_server  # noqa: E402
from bench.common import row  # noqa: E402

MB = 2**20
DROP_PEAK_BUDGET = 400 * MB
DROP_AFTER_BUDGET = 100 * MB
DIRECT_BUDGET = 50 * MB
RELEASE_BUDGET = 50 * MB
PHOTO_UPLOADER = "[data-testid='stSidebar'] [class*='st-key-image_uploader']"  # re-keyed: image_uploader_<n>


def server_limit_bytes() -> int:
    """``server.maxUploadSize`` as the server reads it from .streamlit/config.toml (MB = 2**20 bytes)."""
    with open(ROOT / ".streamlit" / "config.toml", "rb") as f:
        return tomllib.load(f)["server"]["maxUploadSize"] * MB


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after ``seconds`` of quiet, the lowest of a few samples (a thread finishing a reply is not
    memory the upload cost)."""
    samples = []
    for _ in range(5):
        time.sleep(seconds / 5)
        samples.append(rss_bytes(pid))
    return min(samples)


def sparse_file(path: Path, size: int) -> Path:
    """A ``size``-byte file that takes no disk space: the browser only needs its size to refuse it."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- drop: four students, one huge file each, in real browsers -----------------------------------

def drop_at_once(server, browser, tabs: int = 4, size: int = 300 * MB) -> dict:
    """``tabs`` browser tabs each drop a ``size``-byte file on the photo uploader at the same moment.

    Returns the RSS figures (bytes), how many tabs show the refusal on the page, and whether each
    still shows its previous photo.
    """
    from playwright.sync_api import expect

    from bench.browser import IDLE, TIMEOUT_MS, AppTab

    contexts, apps = [], []
    with tempfile.TemporaryDirectory(prefix="xviz-drop-") as tmp:
        big = sparse_file(Path(tmp) / "holiday-video.mp4", size)
        try:
            for _ in range(tabs):  # the students open the app together ...
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                contexts.append(context)
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                apps.append(AppTab(page, server.url).start())
            for app in apps:  # ... ready once the sidebar is there: their pages needn't finish drawing
                app.wait_ready("[data-testid='stSidebar'] .st-key-image_source")
            for app in apps:  # ... and all choose "Upload"
                app.sidebar.locator(".st-key-image_source").get_by_text("Upload", exact=True).click()
            for app in apps:
                app.page.locator(f"{PHOTO_UPLOADER} [data-testid='stFileUploaderDropzoneInput']").wait_for(state="attached")
                app.page.wait_for_selector(IDLE)
            captions = [app.main.get_by_test_id("stImageCaption").first.inner_text() for app in apps]
            idle = settled_rss(server.proc.pid)
            with RssSampler(server.proc.pid, interval=0.05) as rss:
                for app in apps:  # a few ms apart: the server sees them together
                    app.page.locator(f"{PHOTO_UPLOADER} [data-testid='stFileUploaderDropzoneInput']").set_input_files(big)
                told = 0
                for app in apps:
                    refused = app.page.locator(f"{PHOTO_UPLOADER} [data-testid='stFileChip'][aria-invalid='true']")
                    expect(refused).to_be_visible()
                    expect(refused.get_by_role("alert")).to_contain_text("must be 25.0MB or smaller")
                    limit_line = app.sidebar.get_by_text("Photos up to 25 MB")
                    told += limit_line.is_visible()
                after = settled_rss(server.proc.pid)
            kept = [app.main.get_by_test_id("stImageCaption").first.inner_text() == c for app, c in zip(apps, captions)]
        finally:
            for context in contexts:
                context.close()
    return {"tabs": tabs, "size": size, "idle": idle, "peak": rss.peak, "after": after, "told": told,
            "kept_previous": all(kept)}


# -- direct: a script skips the browser ----------------------------------------------------------

async def _direct(url: str, size: int, chunked: bool, pid: int) -> dict:
    from bench.wsclient import StreamlitSession

    session = StreamlitSession(url)
    await session.connect()
    try:
        await session.rerun()  # a live session (the endpoint wants one), its page drawn: the model is loaded
        urls = await session.file_urls("big.bin")
        before = settled_rss(pid)
        with RssSampler(pid, interval=0.05) as rss:
            status = await asyncio.to_thread(session.put_raw, urls.upload_url, size, chunked=chunked)
        return {"status": status, "before": before, "peak": rss.peak}
    finally:
        await session.close()


def _run(coroutine):
    """``asyncio.run`` in a thread of its own: callers may already run an event loop (Playwright's
    sync API keeps one in the main thread)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def direct_over_limit(server, chunked: bool, over: int = MB) -> dict:
    """PUT ``over`` bytes more than the server's limit to the upload endpoint, as a script would."""
    size = server_limit_bytes() + over
    out = _run(_direct(server.url, size, chunked, server.proc.pid))
    out.update(size=size, chunked=chunked, after=settled_rss(server.proc.pid))
    return out


# -- release: an over-limit photo that skipped the browser ---------------------------------------

async def _oversized_photo(url: str, size: int, on_ready) -> dict:
    from bench.wsclient import StreamlitSession

    session = StreamlitSession(url)
    await session.connect()
    try:
        await session.rerun()
        session.set_string("image_source", "Upload")
        first = await session.rerun()
        captions = [img.caption for kind, el in first.elements if kind == "imgs" for img in el.imgs]
        before = on_ready()
        await session.upload("image_uploader", "disk-image.jpg", bytes(size))
        result = await session.rerun()
        alerts = result.texts("alert")
        shown = [img.caption for kind, el in result.elements if kind == "imgs" for img in el.imgs]
        return {"before": before, "alerts": alerts,
                "message": any("disk-image.jpg" in a and "images up to 25 MB" in a
                               and "previous image is still in use" in a for a in alerts),
                "kept_previous": bool(shown) and shown[:1] == captions[:1],
                "rekeyed": session.widget_id("image_uploader") != session.widget_ids.get("image_uploader")}
    finally:
        await session.close()


def oversized_photo_released(server, size: int = 100 * MB) -> dict:
    """A script uploads ``size`` bytes as a photo; the app refuses and releases it."""
    with RssSampler(server.proc.pid, interval=0.05) as rss:
        out = _run(_oversized_photo(server.url, size, lambda: settled_rss(server.proc.pid)))
    out.update(size=size, peak=rss.peak, after=settled_rss(server.proc.pid))  # peak: since before the page
    return out


# -- weights: five checkpoints at once -----------------------------------------------------------

def checkpoints(folder: Path, n: int) -> list[Path]:
    """``n`` different 1000-class Xception checkpoints (.safetensors, ~92 MB, the size of the real
    ImageNet one), each with its own random weights so no two are the same file."""
    import torch
    from safetensors.torch import save_file

    import xviz

    paths = []
    for i in range(n):
        torch.manual_seed(i)
        net = xviz.load_model("untrained", device="cpu").net
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        path = folder / f"finetuned-{i}.safetensors"
        save_file(state, str(path))
        paths.append(path)
    return paths


async def _weights(url: str, files: list[Path], on_ready) -> list[dict]:
    from bench.wsclient import StreamlitSession
    from xviz.ui import uploads
    from xviz.ui.sidebar import MODEL_CHOICES

    sessions = [StreamlitSession(url) for _ in files]
    for s in sessions:
        await s.connect()
        await s.rerun()
        s.set_string("model_source", MODEL_CHOICES["upload"])
        await s.rerun()
    on_ready()

    async def one(session, path: Path) -> dict:
        t0 = time.perf_counter()
        await session.upload("weights_uploader", path.name, path.read_bytes(), "application/octet-stream")
        result = await session.rerun()
        return {"seconds": time.perf_counter() - t0,
                "waited": any(uploads.WAITING_FOR_WEIGHTS in a for a in result.texts("alert")),
                "loaded": any(path.name in m for m in result.texts("markdown")),
                "exceptions": result.exceptions}

    try:
        return await asyncio.gather(*(one(s, p) for s, p in zip(sessions, files)))
    finally:
        for s in sessions:
            await s.close()


def weights_at_once(server, n: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="xviz-ckpt-") as tmp:
        files = checkpoints(Path(tmp), n)
        idle = {}
        with RssSampler(server.proc.pid, interval=0.05) as rss:
            results = _run(_weights(server.url, files, lambda: idle.setdefault("rss", settled_rss(server.proc.pid))))
        size = files[0].stat().st_size
    return {"n": n, "file_size": size, "idle": idle["rss"], "peak": rss.peak, "after": settled_rss(server.proc.pid),
            "waited": sum(r["waited"] for r in results), "loaded": sum(r["loaded"] for r in results),
            "exceptions": [e for r in results for e in r["exceptions"]],
            "max_seconds": max(r["seconds"] for r in results)}


# -- report ---------------------------------------------------------------------------------------

@contextmanager
def _server():
    with streamlit_server() as srv:
        yield srv


def rows() -> list[dict]:
    from playwright.sync_api import sync_playwright

    from bench.browser import browser_missing_reason, launch

    out = []
    missing = browser_missing_reason()
    if missing:
        out.append(row("uploads: 4 tabs drop 300 MB on the photo uploader", float("nan"), "MB", note=missing))
    else:
        with _server() as srv, sync_playwright() as p:
            browser = launch(p)
            try:
                d = drop_at_once(srv, browser)
            finally:
                browser.close()
        out += [row("uploads: 4 × 300 MB dropped at once, tabs told on the page", d["told"], "tabs",
                    note=f"of {d['tabs']}; previous photo kept: {d['kept_previous']}",
                    holds=d["told"] == d["tabs"] and d["kept_previous"]),
                row("uploads: 4 × 300 MB dropped at once, RSS peak over idle", (d["peak"] - d["idle"]) / MB, "MB",
                    DROP_PEAK_BUDGET / MB, note=f"idle {d['idle'] / MB:.0f} MB with the 4 tabs open"),
                row("uploads: 4 × 300 MB dropped at once, RSS once told", (d["after"] - d["idle"]) / MB, "MB",
                    DROP_AFTER_BUDGET / MB)]
    with _server() as srv:
        for chunked in (False, True):
            r = direct_over_limit(srv, chunked)
            how = "chunked" if chunked else "Content-Length"
            out.append(row(f"uploads: direct PUT limit + 1 MB ({how}), RSS peak growth", (r["peak"] - r["before"]) / MB,
                           "MB", DIRECT_BUDGET / MB, holds=r["status"] == 413 and r["peak"] - r["before"] <= DIRECT_BUDGET,
                           note=f"HTTP {r['status']}"))
        r = oversized_photo_released(srv)
        out.append(row("uploads: 100 MB photo from a script, RSS once refused", (r["after"] - r["before"]) / MB, "MB",
                       RELEASE_BUDGET / MB, holds=r["message"] and r["rekeyed"] and r["kept_previous"]
                       and r["after"] - r["before"] <= RELEASE_BUDGET,
                       note=f"peak +{(r['peak'] - r['before']) / MB:.0f} MB; message {r['message']}, "
                            f"uploader emptied {r['rekeyed']}, previous photo kept {r['kept_previous']}"))
    with _server() as srv:
        w = weights_at_once(srv)
        out += [row(f"uploads: {w['n']} × {w['file_size'] / 1e6:.0f} MB checkpoints at once, RSS peak over idle",
                    (w["peak"] - w["idle"]) / MB, "MB",
                    note=f"{w['waited']} waited with the message, {w['loaded']} of {w['n']} loaded, "
                         f"last done after {w['max_seconds']:.0f} s; settled +{(w['after'] - w['idle']) / MB:.0f} MB"
                         + (f"; EXCEPTIONS {w['exceptions']}" if w["exceptions"] else ""),
                    holds=w["loaded"] == w["n"] and not w["exceptions"] and w["waited"] >= 1)]
    return out


def main() -> int:
    from bench.common import machine
    from bench.run import print_table

    print(f"machine: {machine()}")
    table = rows()
    print_table(table)
    return 0 if all(r["holds"] is not False for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
