"""Driving the app in Debian's chromium with Playwright: shared by tests/e2e and bench/bench_app.py.

Waiting: after an action, :meth:`AppTab.act` waits for the server's ``script_finished`` message on
the app's own websocket (read from the driver's network events and parsed with Streamlit's
protobufs), then until the page's own JavaScript has received that message (a counter on the
page's WebSocket), then for ``[data-testid='stApp'][data-test-script-state='notRunning']``. The
attribute alone is racy: it still reads "notRunning" between a click and the rerun the click
causes, and the network event reaches the driver before the page has handled the frame.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CHART_DRAWN = "[data-testid='stPlotlyChart'] svg.main-svg"
TIMEOUT_MS = 120_000  # a page's first visit computes its maps on 2 busy cores

# counts the frames the page's JavaScript receives on Streamlit's websocket; our listener is added
# in the constructor, so it runs before Streamlit's onmessage for the same frame
COUNT_FRAMES = """
(() => {
  const Native = window.WebSocket;
  window.__xvizFrames = 0;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      if (String(args[0]).endsWith('/_stcore/stream')) {
        this.addEventListener('message', () => { window.__xvizFrames += 1; });
      }
    }
  };
})();
"""
SETTLE = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 0))))"


def browser_missing_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    if not Path(CHROMIUM).exists():
        return f"no browser at {CHROMIUM}: apt-get install chromium (CI's .ci/run does)"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def finished_successfully(payload) -> bool:
    """Is this websocket frame the server's "script finished without being interrupted"?"""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    if not isinstance(payload, (bytes, bytearray)):
        return False
    msg = ForwardMsg()
    try:
        msg.ParseFromString(bytes(payload))
    except Exception:  # a frame that doesn't parse is simply not the signal we wait for
        return False
    return (msg.WhichOneof("type") == "script_finished"
            and msg.script_finished in (ForwardMsg.FINISHED_SUCCESSFULLY,
                                        ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))


@dataclass
class AppTab:
    """One browser tab on the app, with its console errors and the app's websocket."""

    page: object  # playwright Page
    url: str
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    benign: frozenset = frozenset()  # console texts not to record (say why where you pass them)
    stream: object = None  # the /_stcore/stream WebSocket
    frames: int = 0  # frames the driver has seen arrive on it

    @property
    def sidebar(self):
        return self.page.locator("[data-testid='stSidebar']")

    @property
    def main(self):
        return self.page.locator("[data-testid='stMain']")

    def open(self, ready: str = CHART_DRAWN, timeout: float = TIMEOUT_MS) -> "AppTab":
        """Load the app and wait until ``ready`` (a selector) is shown and the first run is over."""
        return self.start().wait_ready(ready, timeout)

    def start(self) -> "AppTab":
        """Start loading the app without waiting for it (open several tabs at once, then
        :meth:`wait_ready` on each)."""

        def count(_payload):
            self.frames += 1

        def on_socket(ws):
            if ws.url.endswith("/_stcore/stream"):
                self.stream = ws
                ws.on("framereceived", count)  # registered before any expect_event waiter: counts first

        def on_console(msg):
            if msg.type == "error" and msg.text not in self.benign:
                where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
                self.errors.append(f"{msg.text} ({where})" if where else msg.text)

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.add_init_script(COUNT_FRAMES)
        self.page.on("websocket", on_socket)
        self.page.goto(self.url)
        return self

    def wait_ready(self, ready: str = CHART_DRAWN, timeout: float = TIMEOUT_MS) -> "AppTab":
        """Wait until ``ready`` (a selector) is shown and the first run is over."""
        self.page.wait_for_selector(ready, timeout=timeout)
        self.page.wait_for_selector(IDLE, timeout=timeout)
        if self.stream is None:
            raise RuntimeError("the app never opened its websocket")
        return self

    def act(self, action, timeout: float = TIMEOUT_MS) -> None:
        """Do ``action`` (a callable) and wait until the rerun it causes has finished and rendered."""
        with self.stream.expect_event("framereceived", predicate=finished_successfully, timeout=timeout):
            action()
        self.settle(self.frames, timeout)

    def settle(self, frames: int, timeout: float = TIMEOUT_MS) -> None:
        """Wait until the page has handled ``frames`` websocket frames, rendered, and is idle."""
        self.page.wait_for_function("n => window.__xvizFrames >= n", arg=frames, timeout=timeout)
        self.page.evaluate(SETTLE)
        self.page.wait_for_selector(IDLE, timeout=timeout)

    def wait_pictures_drawn(self) -> int:
        """Scroll every chart and image of the main area into view and wait until each chart has
        drawn and each image has decoded; returns how many there are."""
        charts = self.main.get_by_test_id("stPlotlyChart")
        for i in range(charts.count()):
            charts.nth(i).scroll_into_view_if_needed()
            charts.nth(i).locator("svg.main-svg").first.wait_for(state="attached")
        images = self.main.locator("img")
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
        self.page.wait_for_function(
            "() => [...document.querySelectorAll(\"[data-testid='stMain'] img\")]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        return charts.count() + images.count()

    def nav_link(self, title: str):
        more = self.sidebar.get_by_test_id("stSidebarNavViewButton")
        if more.count() and "more" in more.inner_text().lower():
            more.click()
        links = self.sidebar.get_by_test_id("stSidebarNavLink")
        return links.filter(has=self.page.get_by_text(title, exact=True))

    def go_to(self, title: str) -> None:
        link = self.nav_link(title)
        if link.count() != 1:
            raise AssertionError(f"navigation shows {link.count()} links titled {title!r}")
        self.act(link.click)


@dataclass(frozen=True)
class PageEntry:
    path: str  # "pages/predict.py"
    title: str  # "Predict", as the navigation shows it


def registered_pages(root: Path) -> list[PageEntry]:
    """Every ``st.Page("pages/x.py", title=...)`` in app.py, in order: read at test time so new
    pages are covered as they land."""
    tree = ast.parse((root / "app.py").read_text())
    pages = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Page"
                and node.args and isinstance(node.args[0], ast.Constant)):
            path = node.args[0].value
            kw = {k.arg: k.value for k in node.keywords}
            title = kw["title"].value if isinstance(kw.get("title"), ast.Constant) else Path(path).stem
            pages.append(PageEntry(path, title))
    return sorted(pages, key=lambda p: p.path != "pages/predict.py")  # landing page first, rest as listed
