"""Work that is the same for every student, done once per server process in a background thread.

Some pages show numbers that depend on no photo and no model: the Across architectures page counts
seven networks layer by layer (~7 s of CPU on 2 cores). Computed inside a session's script (an
``st.cache_data`` with a spinner), the first students to open the page all waited on that one spinner
with nothing else to see. A :class:`Task` does such work once, in its own thread, started when the
server starts; a page that needs it before it is done shows its progress live (:func:`result`), then
draws itself. If the work fails, the page says so in a sentence, with what to do, and a later visit
starts it again.

Cost to the other students: the work is mostly pure Python (the meta device's shape functions), so it
shares the GIL with every session's script. Python hands the GIL over every 5 ms
(``sys.getswitchinterval``), so no session waits on it longer than that at a time; what remains is
one core's worth of CPU for a few seconds. The thread is not niced (unlike the fused copy's
warm-up in :mod:`xviz.fused`, which spends its time inside torch ops with the GIL released): a niced
thread preempted while it holds the GIL would stall every session until the scheduler gave it a turn
again. Instead it steps aside after each step while students' model requests wait in the inference
queue, unless a student is watching its progress. Measured with ``bench/load_test.py --all-pages
--sessions 10`` (2 cores; see issue 11's notes): without stepping aside, Grad-CAM and Feature maps p95
were 9-10 s and 10-11 s; with it 6.7 s and 7.3 s, as without the counting, while those who reached the
Across architectures page before it was done watched its progress for a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable

import streamlit as st

from xviz import inference
from xviz.ui.waiting import POLL_S, REFRESH_S, SILENT_S

log = logging.getLogger(__name__)

STEP_ASIDE_S = 2.0  # at most this long after each step while the queue is busy (so the work does finish)


def students_waiting() -> bool:
    """Are students' model requests waiting in the inference queue? (A remote backend's queue is
    on other machines: nothing to step aside for here.)"""
    pending = getattr(inference.backend(), "pending", None)
    return bool(pending and pending())


class Task:
    """Work done once per server process in a background thread, watched by any number of sessions.

    Args:
        work: ``work(progress) -> value``; calls ``progress(done, total)`` after each step.
        describe: ``describe(done, total) -> str``, the sentence shown with the progress bar.
        failed: what the page says if ``work`` raised, before the error itself: "The seven networks
            could not be counted".
        busy: ``busy() -> bool``, whether to step aside after a step (default: :func:`students_waiting`).

    Example:
        >>> task = Task(lambda progress: sum(progress(i + 1, 3) or i for i in range(3)),
        ...             lambda done, total: f"Adding: {done} of {total}…", "The sum failed").start()
        >>> task.outcome(timeout=10)
        (3, None)
    """

    def __init__(self, work: Callable[[Callable[[int, int], None]], Any], describe: Callable[[int, int], str],
                 failed: str, busy: Callable[[], bool] = students_waiting):
        self._work, self.describe, self.failed, self._busy = work, describe, failed, busy
        self._lock = threading.Lock()  # guards everything below
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None  # (value, error) once finished
        self._progress = (0, 1)
        self._watchers = 0  # sessions showing the progress right now

    def start(self) -> Task:
        """Start the work in its own thread, unless it is running or has succeeded (a failed run
        starts again: the page tells the student to reload)."""
        with self._lock:
            running = self._thread is not None and not self._finished.is_set()
            if running or (self._outcome is not None and self._outcome[1] is None):
                return self
            self._outcome, self._progress = None, (0, 1)
            self._finished.clear()
            # not a daemon (Streamlit's script threads are, and a thread inherits its creator's flag):
            # a daemon thread still inside a torch op when the interpreter exits aborts the process;
            # this one stops at its next step once the main thread has ended
            self._thread = threading.Thread(target=self._run, name="xviz-background", daemon=False)
            self._thread.start()
        return self

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) steps so far."""
        with self._lock:
            return self._progress

    def outcome(self, timeout: float | None = 0) -> tuple[Any, BaseException | None] | None:
        """(value, None) or (None, error) once finished; None if still running after ``timeout`` s."""
        self._finished.wait(timeout)
        with self._lock:
            return self._outcome

    @contextlib.contextmanager
    def watched(self):
        """While a session shows the progress, the work doesn't step aside: a student is waiting for it."""
        with self._lock:
            self._watchers += 1
        try:
            yield
        finally:
            with self._lock:
                self._watchers -= 1

    def _run(self) -> None:
        try:
            outcome = (self._work(self._step), None)
        except BaseException as exc:  # noqa: BLE001 -- whatever it was, the page must say it, not hang
            log.exception("xviz: background work failed: %s", self.failed)
            outcome = (None, exc)
        with self._lock:
            self._outcome = outcome
        self._finished.set()

    def _step(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (done, total)
        if not threading.main_thread().is_alive():
            raise RuntimeError("the server is shutting down")
        deadline = time.monotonic() + STEP_ASIDE_S
        while time.monotonic() < deadline and not self._watchers and self._busy():
            time.sleep(0.05)


def result(task: Task):
    """``task``'s value (started if it isn't). Until it is done, a progress bar with the task's
    sentence, updated live, then nothing; if it failed, the sentence and what to do, and the page
    stops there."""
    outcome = task.start().outcome(SILENT_S)
    if outcome is None:
        slot = st.empty()
        shown, sent = None, 0.0
        try:
            with task.watched():
                while (outcome := task.outcome(POLL_S if shown else 0)) is None:
                    done, total = task.progress
                    text = task.describe(done, total)
                    now = time.monotonic()
                    # re-sent unchanged now and then: each st call is where Streamlit stops or reruns
                    # this script (a closed tab, a click elsewhere); the work goes on regardless
                    if text != shown or now - sent > REFRESH_S:
                        slot.progress(min(done / max(total, 1), 1.0), text=text)
                        shown, sent = text, now
        finally:
            slot.empty()
    value, error = outcome
    if error is not None:
        st.error(f"{task.failed} ({type(error).__name__}: {error}). Reload the page to try again; if it "
                 "fails again, the server's log has the details for whoever runs it. The other pages don't "
                 "need this.")
        st.stop()
    return value
