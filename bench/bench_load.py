"""Issue 11's class budgets as bench rows: runs ``bench/load_test.py --json`` (30 sessions against a
fresh server, about a minute on a quiet 2-core machine) and reports each budget and whether it holds.

    python bench/bench_load.py                 # the three heavy pages
    python bench/run.py load                   # the same, inside the table of every benchmark

``python bench/load_test.py --all-pages`` is the same class visiting every page; it takes several
minutes, so it is not part of bench/run.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import row  # noqa: E402

UNITS = {"wall_s": "s", "errors": "", "peak_rss_gb": "GB", "blind_sessions": ""}


def rows(sessions: int = 30) -> list[dict]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "load_test.py"), "--json", "--sessions", str(sessions)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench/load_test.py printed no report (exit {done.returncode}):\n{done.stderr[-2000:]}")
    report = json.loads(lines[-1])
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
