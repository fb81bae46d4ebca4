"""Issue 11's class budgets as bench rows: runs ``bench/load_test.py --json`` (30 sessions against a
fresh server, about a minute on a quiet 2-core machine) and reports each budget and whether it holds.

    python bench/bench_load.py                 # the three heavy pages
    python bench/run.py load                   # the same, inside the table of every benchmark

``python bench/load_test.py --all-pages`` is the same class visiting every page; it takes several
minutes, so it is not part of bench/run.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import json_report, row  # noqa: E402

UNITS = {"wall_s": "s", "errors": "", "peak_rss_gb": "GB", "blind_sessions": ""}


def rows(sessions: int = 30) -> list[dict]:
    report = json_report("load_test.py", "--sessions", str(sessions))
    out = []
    for b in report["budgets"]:
        name = {"wall_s": "whole class", "blind_sessions": "sessions that waited > 1 s without their place"}.get(
            b["name"], b["name"])
        unit = UNITS.get(b["name"], "s")
        value = b["value"] if b["value"] is not None else float("nan")
        out.append(row(f"load, {sessions} sessions: {name}", value, unit, b["budget"], b["holds"]))
    return out


if __name__ == "__main__":
    from bench.run import print_table

    print_table(rows())
