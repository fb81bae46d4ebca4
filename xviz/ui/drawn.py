"""Figures and encoded pictures, drawn once per content and shared read-only by every session.

A rerun that changes nothing a view shows (another widget moved, the student came back to the page)
would otherwise build its plotly figures again (plotly checks every property in Python: 10 to 30 ms
for a bar chart on a quiet core) and encode its pictures again; with a class of 30 those reruns are
most of what the server does. Not ``st.cache_data``: it pickles the value, and unpickling a plotly
figure checks every property all over again. The key names everything the drawing depends on
(content ids, settings, presenter mode), never a tensor or an image.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, TypeVar

from xviz.ui.waiting import Results

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

T = TypeVar("T")

# By count: the largest entries (a channel enlarged as a 420 px PNG inside its figure, a photo
# overlay) are a few hundred kB, so 256 of them stay under ~60 MB.
_drawn = Results(maxsize=256)
_drawing: dict[tuple, threading.Lock] = {}  # key -> held while one session draws it
_drawing_guard = threading.Lock()


def drawn(key: tuple, draw: Callable[[], T]) -> T:
    """``draw()`` for ``key``, drawn once per server; the result must not be changed afterwards.

    ``st.plotly_chart`` and ``st.image`` only read what they are given, so one figure can be shown
    to many sessions at once. A class opening a page together asks for the same figure at the same
    moment: one session draws it, the others wait for that drawing instead of each making their own.
    ``draw`` must not wait for the inference queue (a session waiting here sees no place in line):
    fetch the results first, then draw them.
    """
    hit = _drawn.get(key)
    if hit is not None:
        return hit
    with _drawing_guard:
        lock = _drawing.setdefault(key, threading.Lock())
    try:
        with lock:
            hit = _drawn.get(key)
            return hit if hit is not None else _drawn.put(key, _frozen(draw()))
    finally:
        with _drawing_guard:
            if _drawing.get(key) is lock and not lock.locked():
                del _drawing[key]


def drawn_table(key: tuple, make: Callable[[], "pd.DataFrame | list[dict]"]) -> "pa.Table":
    """The table ``make()`` returns (a pandas frame or a list of row dicts), as Arrow, made once per
    ``key``: ``st.dataframe`` converts a frame or a list to Arrow on every rerun (5% of the GIL's time
    in a class visiting every page), and shows an Arrow table as it is. The index is dropped, as
    ``hide_index=True`` hides it."""
    import pandas as pd
    import pyarrow as pa

    def table() -> pa.Table:
        rows = make()
        return (pa.Table.from_pandas(rows, preserve_index=False) if isinstance(rows, pd.DataFrame)
                else pa.Table.from_pylist(rows))

    return drawn(key, table)


def _frozen(value: T) -> T:
    """A plotly figure (alone or in a tuple, as (figure, text)) whose ``to_dict()`` returns the dict
    made once: ``st.plotly_chart`` asks every rerun for it (plotly.tools.return_figure_from_figure_or_data),
    and each call deep-copied the whole figure (5% of the GIL's time in a class visiting every page).
    Nothing changes a drawn figure."""
    from plotly.basedatatypes import BaseFigure

    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, BaseFigure):
            spec = item.to_dict()
            item.to_dict = lambda spec=spec: spec  # an instance attribute: plotly allows names the figure has
    return value

