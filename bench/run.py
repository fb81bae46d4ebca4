"""Run every benchmark and print one table (or JSON lines with --json).

    python bench/run.py            # table
    python bench/run.py --json     # {"name", "value", "unit", "budget", "holds"} per line
    python bench/run.py forward    # only the modules whose name contains 'forward'
    python bench/run.py --keras-python /path/to/tf-venv/bin/python   # adds bench_peer (xviz vs Keras)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

# every module here exposes rows() -> list of bench.common.row dicts
MODULES = ["bench.bench_forward", "bench.bench_fast", "bench.bench_capture", "bench.bench_attributions",
           "bench.bench_ig", "bench.bench_queue", "bench.bench_pictures", "bench.bench_zoo", "bench.bench_teach",
           "bench.bench_app", "bench.bench_uploads", "bench.bench_load", "bench.bench_crafted", "bench.bench_remote"]


def print_table(rows: list[dict]) -> None:
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"{'benchmark':<{width}}  {'value':>12}  {'unit':<5} {'budget':>10}  holds")
    for r in rows:
        budget = "" if r["budget"] is None else f"{r['budget']:g}"
        holds = "" if r["holds"] is None else ("yes" if r["holds"] else "NO")
        value = f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"])
        print(f"{r['name']:<{width}}  {value:>12}  {r['unit']:<5} {budget:>10}  {holds}"
              + (f"  ({r['note']})" if r.get("note") else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="run only modules whose name contains one of these")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--keras-python", help="a Python with tensorflow-cpu: also time Keras's Xception "
                                               "side by side (bench/bench_peer.py)")
    args = parser.parse_args(argv)
    selected = [m for m in MODULES if not args.only or any(o in m for o in args.only)]
    if args.keras_python and (not args.only or any(o in "bench.bench_peer" for o in args.only)):
        selected.append("bench.bench_peer")
    all_rows = []
    if not args.json:
        print(f"machine: {machine()}")
    for name in selected:
        module = importlib.import_module(name)
        rows = module.rows(args.keras_python) if name == "bench.bench_peer" else module.rows()
        all_rows += rows
        if args.json:
            for r in rows:
                print(json.dumps({k: r[k] for k in ("name", "value", "unit", "budget", "holds")}), flush=True)
    if not args.json:
        print_table(all_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
