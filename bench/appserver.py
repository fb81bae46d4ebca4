"""`streamlit run app.py` as a child process: start on a free port, wait for health, stop; its memory.

Shared by the browser tests (tests/e2e), the load and soak scripts and the cold-start bench, so they
all measure the same server the way a teacher starts it. The file watcher is off: the server must not
rerun sessions because a file in the checkout changed while it was being measured.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>
    port: int
    proc: subprocess.Popen
    started: float  # time.perf_counter() just before the process was spawned
    log: Path  # the server's stdout+stderr

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: every outbound HTTP(S) request fails at once


@contextmanager
def streamlit_server(app: str = "app.py", timeout: float = 120.0, env: dict | None = None,
                     args: tuple[str, ...] = (), fresh_offline: bool = True,
                     command: tuple[str, ...] | None = None, cwd: Path = ROOT) -> Iterator[Server]:
    """Run ``streamlit run <app>`` from the repo root until the block exits.

    ``command``/``cwd``: start it another way instead (``xviz app`` from an installed wheel, run
    from a folder outside the checkout); the server options below are appended to ``command``.

    ``fresh_offline``: run it as on a classroom laptop that has never downloaded anything and has no
    internet: an empty torch.hub cache and a proxy that refuses every outbound request, so "Best
    available" is the installed demo model on every machine (no 90 MB ImageNet download mid-test).

    Raises:
        RuntimeError: the server exited or wasn't healthy within ``timeout`` s (with its log's tail).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logdir = tempfile.mkdtemp(prefix="xviz-server-")
    log = Path(logdir) / "streamlit.log"
    child_env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    if fresh_offline:
        (Path(logdir) / "torch_home").mkdir()
        child_env["TORCH_HOME"] = str(Path(logdir) / "torch_home")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            child_env[name] = DEAD_PROXY
        child_env["NO_PROXY"] = child_env["no_proxy"] = "127.0.0.1,localhost"
    child_env.update(env or {})
    cmd = [*(command or (sys.executable, "-m", "streamlit", "run", app)), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.fileWatcherType", "none", "--server.runOnSave", "false", *args]
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url, port, proc, started, log)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit was not healthy after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


# -- memory -----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in task.read_text().split()]
        except OSError:
            pass
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    out, stack, seen = [], [pid], set()
    while stack:
        p = stack.pop()
        if p in seen or not Path(f"/proc/{p}").exists():
            continue
        seen.add(p)
        out.append(p)
        stack += _children(p)
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (from /proc; 0 where unreadable)."""
    return sum(_rss(p) for p in tree(pid))


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def threads(pid: int) -> tuple[int, int]:
    """(threads, threads running or runnable right now) over the process tree of ``pid``."""
    total = running = 0
    for p in tree(pid):
        for stat in Path(f"/proc/{p}/task").glob("*/stat"):
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            total += 1
            running += state == "R"
    return total, running


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants so far."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def wait_idle(pid: int, window: float = 1.0, busy: float = 0.05, timeout: float = 60.0) -> float:
    """Wait until the process tree of ``pid`` used less than ``busy`` of a core over ``window``
    seconds (or ``timeout`` passed); returns the seconds waited."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last < busy * window:
            break
        last = now
    return time.monotonic() - start


class RssSampler:
    """Samples a process tree in a thread: memory (``peak``, ``samples``) and how many of its
    threads are on a CPU or waiting for one (``running``), which shows oversubscription."""

    # Walking the tree and reading every thread's state costs the sampler ~0.1 s of CPU per second
    # with a class of 30 (70 threads): CPU the measured server would not get. Memory is read every
    # ``interval``; the tree and the thread states only every ``slow_every`` samples.
    def __init__(self, pid: int, interval: float = 0.1, slow_every: int = 5):
        self.pid, self.interval, self.slow_every = pid, interval, slow_every
        self.peak = 0
        self.samples: list[int] = []
        self.running: list[int] = []
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n, pids = 0, [self.pid]
        while not self._stop.is_set():
            if n % self.slow_every == 0:
                pids = tree(self.pid)
                total, running = threads(self.pid)
                self.max_threads = max(self.max_threads, total)
                self.running.append(running)
            value = sum(_rss(p) for p in pids)
            self.samples.append(value)
            self.peak = max(self.peak, value)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))
