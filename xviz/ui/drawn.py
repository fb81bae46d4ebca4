"""Figures and encoded pictures, drawn once per content and shared read-only by every session.

A rerun that changes nothing a view shows (another widget moved, the student came back to the page)
would otherwise build its plotly figures again (plotly checks every property in Python: 10 to 30 ms
for a bar chart on a quiet core) and encode its pictures again; with a class of 30 those reruns are
most of what the server does. Not ``st.cache_data``: it pickles the value, and unpickling a plotly
figure checks every property all over again. The key names everything the drawing depends on
(content ids, settings, presenter mode), never a tensor or an image.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from xviz.ui.waiting import Results

T = TypeVar("T")

# By count: the largest entries (a channel enlarged as a 420 px PNG inside its figure, a photo
# overlay) are a few hundred kB, so 256 of them stay under ~60 MB.
_drawn = Results(maxsize=256)


def drawn(key: tuple, draw: Callable[[], T]) -> T:
    """``draw()`` for ``key``, drawn once per server; the result must not be changed afterwards.

    ``st.plotly_chart`` and ``st.image`` only read what they are given, so one figure can be shown
    to many sessions at once.
    """
    hit = _drawn.get(key)
    return hit if hit is not None else _drawn.put(key, draw())
