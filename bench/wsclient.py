"""A headless Streamlit client: what a browser tab does, over the app's own protocol.

A browser talks to `streamlit run` through one websocket (``/_stcore/stream``) carrying protobufs:
it sends ``BackMsg.rerun_script`` with every widget's value and the page it is on, and the server
streams ``ForwardMsg`` deltas back until ``script_finished``. Files go separately: the client asks
for upload URLs (``file_urls_request``), PUTs the file there with the XSRF token, then reruns with
the file uploader's widget state pointing at it. This module does exactly that, with Streamlit's
own protobuf classes, so 30 sessions cost the server what 30 students cost it, and the client side
costs almost nothing (30 Chromium tabs on 2 cores would measure the browsers, not the server).

Widget ids are learnt from the deltas: a widget made with ``key=k`` has an id ending in ``-k``; an
uploader the app re-keyed to empty it (``k_1``, ``k_2``, ...) is still found as ``k``. As in a
browser, a finished run drops the values of widgets it no longer showed. Images are fetched from
their ``/media`` URLs as a browser would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

XSRF_COOKIE = "_streamlit_xsrf"


def own_connections(sessions: int) -> None:
    """Give each of ``sessions`` clients in this event loop its own HTTP connections, as each student's
    browser has: uploads and image fetches run in threads, and asyncio's default pool (cores + 4
    threads) would queue 30 students' requests behind each other in the client, not in the server."""
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=2 * sessions + 4, thread_name_prefix="browser"))


class ClientError(RuntimeError):
    """The app or the server did something a student would see as broken."""


def is_place(kind: str, element) -> bool:
    """Does this element tell a waiting student where they stand (ui's place in line, or a progress
    bar of long work)?"""
    if kind == "progress":
        return True
    return kind == "alert" and "ahead of you" in getattr(element, "body", "")


@dataclass
class RunResult:
    seconds: float
    elements: list[tuple[str, object]]  # (element type, element proto) of this run, in order
    exceptions: list[str] = field(default_factory=list)
    media: int = 0  # /media files fetched
    blind_s: float = 0.0  # longest stretch of the run with nothing new on screen and no place in line shown
    place_seen: bool = False  # a place-in-line message or progress bar was shown during the run

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.elements if k == kind)

    def texts(self, kind: str) -> list[str]:
        return [getattr(el, "body", "") for k, el in self.elements if k == kind]


class StreamlitSession:
    """One browser tab's worth of session, driven from asyncio."""

    def __init__(self, url: str, timeout: float = 600.0, cookies: dict | None = None,
                 previous_session: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        # the browser's cookie jar (pass the same dict to a reconnecting session): the XSRF cookie, and
        # a load balancer's stickiness cookie, sent with every request as a browser does
        self.cookies = cookies if cookies is not None else {}
        # a reconnecting tab names its previous session (the third websocket subprotocol entry)
        self.previous_session = previous_session
        self.session_id = ""
        self.pages: dict[str, str] = {}  # url_pathname -> page_script_hash
        self.page_hash = ""
        self.widgets: dict[str, WidgetState] = {}  # widget id -> the value we hold for it
        self.widget_ids: dict[str, str] = {}  # user key -> widget id, the most recently shown last
        self._run_widgets: set[str] = set()  # widget ids shown by the run in progress
        self._xsrf = ""
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._run_elements: list[tuple[str, object]] = []
        self._run_exceptions: list[str] = []
        self._finished: asyncio.Queue[int] = asyncio.Queue()
        self._file_urls: dict[str, asyncio.Future] = {}
        self._closed_reason: str | None = None
        # the blind-wait clock of the current run: when the screen last changed, what shows a place
        self._last_change: float | None = None
        self._blind = 0.0
        self._place_paths: set[tuple[int, ...]] = set()
        self._place_seen = False

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        self._xsrf = await asyncio.to_thread(self._xsrf_cookie)
        host = self.url.split("://", 1)[1]
        self._ws = await websockets.connect(
            f"ws://{host}/_stcore/stream",
            subprotocols=["streamlit", self._xsrf, *([self.previous_session] if self.previous_session else [])],
            additional_headers={"Origin": self.url, "Cookie": self.cookie_header()},
            max_size=None, open_timeout=self.timeout, ping_interval=None)
        self._reader = asyncio.create_task(self._read())

    def _xsrf_cookie(self) -> str:
        req = urllib.request.Request(f"{self.url}/_stcore/health", headers={"Cookie": self.cookie_header()})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            for header in r.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        if XSRF_COOKIE not in self.cookies:
            raise ClientError("the server set no XSRF cookie")
        return self.cookies[XSRF_COOKIE]

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                msg = ForwardMsg()
                msg.ParseFromString(frame)
                self._handle(msg)
        except websockets.ConnectionClosed as exc:
            self._closed_reason = f"websocket closed ({exc})"
        finally:
            self._closed_reason = self._closed_reason or "websocket closed"
            self._finished.put_nowait(-1)

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if self._last_change is not None and kind in ("delta", "script_finished"):
            now = time.perf_counter()
            if not self._place_paths:  # a student who sees their place in line isn't waiting blind
                self._blind = max(self._blind, now - self._last_change)
            self._last_change = now
            if kind == "script_finished" and msg.script_finished in (
                    ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY):
                self._last_change = None
        if kind == "new_session":  # sent at the start of every run
            self._run_widgets = set()
            self.session_id = msg.new_session.initialize.session_id or self.session_id
        elif kind == "navigation":
            # a run can send several; the last one of the run is st.navigation's final page list
            self.pages = self._page_map(msg.navigation.app_pages)
            if msg.navigation.page_script_hash:
                self.page_hash = msg.navigation.page_script_hash
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            el_kind = msg.delta.new_element.WhichOneof("type")
            el = getattr(msg.delta.new_element, el_kind)
            self._run_elements.append((el_kind, el))
            path = tuple(msg.metadata.delta_path)
            if is_place(el_kind, el):
                self._place_paths.add(path)
                self._place_seen = True
            else:
                self._place_paths.discard(path)
            widget_id = getattr(el, "id", "")
            if widget_id and isinstance(widget_id, str):
                key = widget_id.rsplit("-", 1)[-1]
                self.widget_ids.pop(key, None)
                self.widget_ids[key] = widget_id
                self._run_widgets.add(widget_id)
            if el_kind == "exception":
                self._run_exceptions.append(f"{el.type}: {el.message}")
        elif kind == "file_urls_response":
            fut = self._file_urls.pop(msg.file_urls_response.response_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.file_urls_response)
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                # the browser forgets the widgets a complete run no longer shows (e.g. a re-keyed uploader)
                self.widgets = {i: w for i, w in self.widgets.items() if i in self._run_widgets}
            self._finished.put_nowait(msg.script_finished)
        elif kind == "ref_hash":
            # we never announce cached messages, so the server must not refer to one
            raise ClientError("server sent a cached-message reference the client never had")

    @staticmethod
    def _page_map(app_pages) -> dict[str, str]:
        pages = {}
        for page in app_pages:
            if page.url_pathname:
                pages[page.url_pathname] = page.page_script_hash
            if page.is_default:
                pages[""] = page.page_script_hash
        return pages

    # -- actions ---------------------------------------------------------------------------

    async def rerun(self, page: str | None = None, fetch_media: bool = True) -> RunResult:
        """Rerun with our widget values (on ``page``, a url_pathname, if given); wait until finished."""
        if self._closed_reason:
            raise ClientError(self._closed_reason)
        if page is not None:
            if page not in self.pages:
                raise ClientError(f"the app has no page {page!r} (pages: {sorted(self.pages)})")
            self.page_hash = self.pages[page]
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = ""
        state.page_script_hash = self.page_hash
        state.widget_states.widgets.extend(self.widgets.values())
        # a button's click is sent once, as the browser does: the next rerun must not click it again
        self.widgets = {i: w for i, w in self.widgets.items() if w.WhichOneof("value") != "trigger_value"}
        self._run_elements, self._run_exceptions = [], []
        while not self._finished.empty():
            self._finished.get_nowait()
        start = time.perf_counter()
        self._last_change, self._blind, self._place_paths, self._place_seen = start, 0.0, set(), False
        await self._ws.send(msg.SerializeToString())
        while True:
            status = await asyncio.wait_for(self._finished.get(), self.timeout)
            if status == -1:
                raise ClientError(self._closed_reason or "websocket closed mid-run")
            if status in (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY):
                break
            if status == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                raise ClientError("the script failed to compile")
            # FINISHED_EARLY_FOR_RERUN: superseded by our own request; keep waiting
        result = RunResult(0.0, self._run_elements, self._run_exceptions, blind_s=self._blind,
                           place_seen=self._place_seen)
        if fetch_media:
            result.media = await asyncio.to_thread(self._fetch_media, result.elements)
        result.seconds = time.perf_counter() - start
        return result

    def _fetch_media(self, elements) -> int:
        urls = [img.url for kind, el in elements if kind == "imgs" for img in el.imgs if img.url.startswith("/")]
        for url in urls:
            req = urllib.request.Request(f"{self.url}{url}", headers={"Cookie": self.cookie_header()})
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        return len(urls)

    def widget_id(self, key: str) -> str:
        """The id of the widget with ``key``, or of its latest re-keyed copy (``key_<n>``)."""
        same = [k for k in self.widget_ids if k == key or re.fullmatch(rf"{re.escape(key)}_\d+", k)]
        if not same:
            raise ClientError(f"no widget with key {key!r} has been shown yet")
        return self.widget_ids[same[-1]]

    def set_string(self, key: str, value: str) -> None:
        ws = WidgetState(id=self.widget_id(key), string_value=value)
        self.widgets[ws.id] = ws

    def click(self, key: str) -> None:
        """Click the button with ``key``: the next rerun sends the click (once)."""
        ws = WidgetState(id=self.widget_id(key), trigger_value=True)
        self.widgets[ws.id] = ws

    async def file_urls(self, name: str):
        """Where to PUT (and DELETE) a file: what the browser asks before every upload."""
        request_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._file_urls[request_id] = fut
        msg = BackMsg()
        msg.file_urls_request.request_id = request_id
        msg.file_urls_request.session_id = self.session_id
        msg.file_urls_request.file_names.append(name)
        await self._ws.send(msg.SerializeToString())
        response = await asyncio.wait_for(fut, self.timeout)
        if response.error_msg:
            raise ClientError(f"upload refused: {response.error_msg}")
        return response.file_urls[0]

    async def upload(self, key: str, name: str, data: bytes, mime: str = "image/jpeg") -> None:
        """Put a file into the uploader with ``key`` (the next rerun sees it), replacing its last file."""
        await self.upload_files(key, [(name, data)], mime)

    async def upload_files(self, key: str, files: list[tuple[str, bytes]], mime: str = "image/jpeg") -> None:
        """Put several files (name, bytes) into the uploader with ``key`` at once, as a drop of several
        files on an ``accept_multiple_files`` uploader does, replacing what it held."""
        widget = self.widget_id(key)
        state = WidgetState(id=widget)
        for name, data in files:
            urls = await self.file_urls(name)
            await asyncio.to_thread(self._put, urls.upload_url, name, data, mime)
            info = state.file_uploader_state_value.uploaded_file_info.add()
            info.file_id, info.name, info.size = urls.file_id, name, len(data)
            info.file_urls.CopyFrom(urls)
        previous = self.widgets.get(widget)
        self.widgets[widget] = state
        if previous is not None:  # the browser deletes the file it replaced
            for old in previous.file_uploader_state_value.uploaded_file_info:
                await asyncio.to_thread(self._request, "DELETE", old.file_urls.delete_url, None, {})

    def _put(self, path: str, name: str, data: bytes, mime: str) -> None:
        boundary = f"----xviz{uuid.uuid4().hex}"
        safe_name = name.replace('"', "_")
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        self._request("PUT", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def put_raw(self, path: str, size: int, *, chunked: bool = False) -> int:
        """PUT a ``size``-byte file of zeros to ``path`` as a script that skips the browser would, and
        return the HTTP status. The body is streamed, never built in memory, and sent whole however
        early the server answers; ``chunked``: without a Content-Length (the server can't know the size
        before reading). The answer is read in a thread while sending, so an early refusal is seen."""
        boundary = f"----xviz{uuid.uuid4().hex}"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        host, port = self.url.split("://", 1)[1].split(":")
        request = (f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {self.url}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                   f"X-Xsrftoken: {self._xsrf}\r\nCookie: {self.cookie_header()}\r\n"
                   + ("Transfer-Encoding: chunked\r\n\r\n" if chunked
                      else f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n")).encode()
        answer: list[bytes] = []
        with socket.create_connection((host, int(port)), timeout=self.timeout) as sock:
            reader = threading.Thread(target=lambda: answer.append(sock.recv(4096)), daemon=True)
            reader.start()

            def send(data: bytes) -> None:
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)

            try:
                sock.sendall(request)
                send(head)
                block = bytes(2**20)
                for start in range(0, size, len(block)):
                    send(block[: min(len(block), size - start)])
                send(tail)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:  # the server closed the connection after answering: that answer counts
                pass
            reader.join(self.timeout)
        if not answer or not answer[0].startswith(b"HTTP/1.1 "):
            raise ClientError(f"PUT {path}: no HTTP answer ({answer!r})")
        return int(answer[0].split()[1])

    def _request(self, method: str, path: str, body: bytes | None, headers: dict) -> None:
        url = path if path.startswith("http") else f"{self.url}{path if path.startswith('/') else '/' + path}"
        req = urllib.request.Request(url, data=body, method=method, headers={
            **headers, "X-Xsrftoken": self._xsrf, "Cookie": self.cookie_header(), "Origin": self.url})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                if r.status >= 300:
                    raise ClientError(f"{method} {path}: HTTP {r.status}")
        except urllib.error.HTTPError as exc:
            raise ClientError(f"{method} {path}: HTTP {exc.code} {exc.reason}") from None
