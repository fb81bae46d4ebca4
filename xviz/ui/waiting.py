"""Waiting in line, visibly: the app's model requests go through :mod:`xviz.inference`, and a student
whose request waits sees their place and an estimate ("3 requests ahead of you in line · about 2 s"),
updated live and replaced by the result; a long method shows its progress instead.

Results are kept in process-wide LRUs (:class:`Results`, small keys: model key, image sha256,
settings), not in ``st.cache_*``: a cached function would record the waiting messages and replay
them. Identical requests from several sessions share one computation in the queue. A script that is
stopped or rerun while waiting cancels its ticket, and so does a session whose tab was closed: the
queue drops a request nobody waits for (a rerun that asks again for the same thing keeps its place).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import cachetools
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from xviz import inference

SILENT_S = 0.15  # a request done this fast shows nothing (no flash of a message)
POLL_S = 0.25  # how often a waiting message is refreshed
# An unchanged message is still re-sent this often: every st call is where Streamlit stops a script
# whose tab closed (StopException) or reruns it (RerunException); both cancel the ticket below.
REFRESH_S = 0.9


class Results:
    """A thread-safe LRU shared by every session (every session's script is a thread).

    Args:
        maxsize: entries, or the total of ``getsizeof`` over the entries.
        getsizeof: size of one value (e.g. bytes); default 1 per entry.
    """

    def __init__(self, maxsize: int, getsizeof: Callable | None = None):
        self._data = cachetools.LRUCache(maxsize, getsizeof=getsizeof)
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            return self._data.get(key)

    def put(self, key, value):
        with self._lock:
            try:
                self._data[key] = value
            except ValueError:  # larger than the whole store: hand it out without keeping it
                pass
        return value


def session_id() -> str | None:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def seconds_text(s: float) -> str:
    return "under a second" if s < 1 else f"about {s:.0f} s" if s < 90 else f"about {s / 60:.0f} min"


def place_text(what: str, place: inference.Place) -> str:
    """One line for a waiting student: "Predicting: 3 ahead of you in line · about 2 s"."""
    if place.state == inference.QUEUED:
        return f"⏳ {what}: {place.ahead} ahead of you in line · {seconds_text(place.eta_s)}"
    steps = f" ({place.progress[0]} of {place.progress[1]})" if place.progress else ""
    return f"{what}{steps} · your turn, {seconds_text(place.eta_s)} left"


def wait(ticket: inference.Ticket, what: str, where=None):
    """The ticket's result; meanwhile its place in line (or its progress) in a placeholder.

    Cancels the ticket when the script is stopped or rerun while waiting, or the session is gone:
    the queue then drops the request unless someone else still waits for it (a rerun asking again
    for the same thing keeps its place).
    """
    if ticket.wait(SILENT_S):
        return ticket.result()
    slot = (where or st).empty()
    shown, sent = None, 0.0
    try:
        while not ticket.wait(POLL_S if shown else 0):
            place = ticket.place()
            text = place_text(what, place)
            now = time.monotonic()
            if text != shown or now - sent > REFRESH_S:
                if place.state == inference.QUEUED:
                    slot.info(text)
                else:  # its turn: how far it got (long methods report their passes)
                    done, total = place.progress or (0, 1)
                    slot.progress(min(done / max(total, 1), 1.0), text=text)
                shown, sent = text, now
        return ticket.result()
    except BaseException:
        ticket.cancel()
        raise
    finally:
        slot.empty()


def computed(store: Results, key: tuple, submit: Callable[[], inference.Ticket], what: str,
             finish: Callable = lambda v: v, where=None):
    """``store[key]``, or the result of ``submit()``'s ticket (waited for visibly), finished and stored."""
    hit = store.get(key)
    if hit is not None:
        return hit
    value = finish(wait(submit(), what, where))
    return store.put(key, value)
