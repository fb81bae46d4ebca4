"""Real-browser fixtures: `streamlit run app.py` once per test session, Debian's chromium via Playwright.

Every test gets a fresh browser context (a new Streamlit session) against the one server, so tests
don't share widget state while the model stays loaded in the server between them.

Waiting: after an action, :meth:`App.act` waits for the server's ``script_finished`` message on the
app's own websocket (read from the driver's network events and parsed with Streamlit's protobufs),
then until the page's own JavaScript has received that message (a counter on the page's WebSocket),
then for ``[data-testid='stApp'][data-test-script-state='notRunning']``. The attribute alone is
racy: it still reads "notRunning" between a click and the rerun the click causes, and the network
event reaches the driver before the page has handled the frame.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a package at the repo root; pytest may not have put it on the path
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
SCREENSHOTS = ROOT / "screenshots"  # git-ignored; look at them after a run
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

# Console messages that are not the app's fault, matched by exact text. Keep this empty unless a
# message is proven benign, and say why next to it.
BENIGN_CONSOLE = frozenset()


def browser_missing_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -r requirements-dev.txt"
    if not Path(CHROMIUM).exists():
        return f"no browser at {CHROMIUM}: apt-get install chromium (CI's .ci/run does)"
    return None


@dataclass(frozen=True)
class PageEntry:
    path: str  # "pages/predict.py"
    title: str  # "Predict", as the navigation shows it


def registered_pages() -> list[PageEntry]:
    """Every ``st.Page("pages/x.py", title=...)`` in app.py, in order: read at test time so new
    pages are covered as they land."""
    tree = ast.parse((ROOT / "app.py").read_text())
    pages = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Page"
                and node.args and isinstance(node.args[0], ast.Constant)):
            path = node.args[0].value
            kw = {k.arg: k.value for k in node.keywords}
            title = kw["title"].value if isinstance(kw.get("title"), ast.Constant) else Path(path).stem
            pages.append(PageEntry(path, title))
    return sorted(pages, key=lambda p: p.path != "pages/predict.py")  # landing page first, rest as listed


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    from bench.appserver import streamlit_server

    # an empty hub cache: "Best available" is then the installed demo model, as on a fresh machine
    torch_home = tmp_path_factory.mktemp("torch_home")
    with streamlit_server(env={"TORCH_HOME": str(torch_home)}) as srv:
        yield srv


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class App:
    """One browser tab on the app, with its console errors and the app's websocket."""

    page: object  # playwright Page
    url: str
    errors: list[str] = field(default_factory=list)
    stream: object = None  # the /_stcore/stream WebSocket
    frames: int = 0  # frames the driver has seen arrive on it

    @property
    def sidebar(self):
        return self.page.locator("[data-testid='stSidebar']")

    @property
    def main(self):
        return self.page.locator("[data-testid='stMain']")

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

    def open(self) -> "App":
        def count(_payload):
            self.frames += 1

        def on_socket(ws):
            if ws.url.endswith("/_stcore/stream"):
                self.stream = ws
                ws.on("framereceived", count)  # registered before any expect_event waiter: counts first

        self.page.add_init_script(COUNT_FRAMES)
        self.page.on("websocket", on_socket)
        self.page.goto(self.url)
        self.page.wait_for_selector("[data-testid='stPlotlyChart']", timeout=TIMEOUT_MS)
        self.page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
        assert self.stream is not None, "the app never opened its websocket"
        return self

    def assert_clean(self) -> None:
        """No Python exception shown anywhere and nothing logged as an error in the console."""
        assert self.page.locator("[data-testid='stException']").count() == 0, \
            self.page.locator("[data-testid='stException']").first.inner_text()
        assert not self.errors, self.errors

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"e2e_{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def finished_successfully(payload) -> bool:
    """Is this websocket frame the server's "script finished without being interrupted"?"""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    if not isinstance(payload, (bytes, bytearray)):
        return False
    msg = ForwardMsg()
    try:
        msg.ParseFromString(bytes(payload))
    except Exception:  # not every frame needs to parse for this check; a bad one just isn't the signal
        return False
    return (msg.WhichOneof("type") == "script_finished"
            and msg.script_finished in (ForwardMsg.FINISHED_SUCCESSFULLY,
                                        ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))


@pytest.fixture
def app(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    state = App(page, server.url)

    def on_console(msg):
        if msg.type == "error" and msg.text not in BENIGN_CONSOLE:
            where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
            state.errors.append(f"{msg.text} ({where})" if where else msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: state.errors.append(f"uncaught: {exc}"))
    try:
        yield state.open()
    finally:
        context.close()

