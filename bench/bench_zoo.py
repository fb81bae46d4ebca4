"""CPU batch-1 latency of the compared architectures (issue 14), all from one interleaved run.

    python bench/bench_zoo.py              # the README's table (markdown)
    python bench/run.py zoo                # the same numbers as bench rows

Random weights: a dense forward's time doesn't depend on them. ms per GMAC is the measured time over
the counted multiply-adds: depthwise convs do little arithmetic per byte they move, so separable
networks get less done per millisecond and a 7x smaller net is not 7x faster.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, row  # noqa: E402
from xviz import across  # noqa: E402


def measure(rounds: int = 5):
    table = across.compare_networks(across.zoo_ledgers())
    run = across.time_networks(tuple(table["name"]), rounds=rounds)
    table["ms"] = table["name"].map(run.ms)
    table["ms_per_gmac"] = table["ms"] / (table["macs"] / 1e9)
    return table, run


def rows(rounds: int = 5) -> list[dict]:
    table, run = measure(rounds)
    note = f"median of {run.rounds} interleaved rounds, load {run.load[0]:.1f}→{run.load[1]:.1f}"
    out = []
    for r in table.itertuples():
        out.append(row(f"zoo {r.network} {r.input}px batch 1 (random weights)", r.ms, "ms", note=note))
        out.append(row(f"zoo {r.network} ms per GMAC", r.ms_per_gmac, "ms"))
    return out


def markdown(table, run) -> str:
    lines = [f"{machine()}; {run.device}; median of {run.rounds} interleaved rounds; 1-minute load average "
             f"{run.load[0]:.1f} before, {run.load[1]:.1f} after", "",
             "| network | input | parameters | multiply-adds | ImageNet top-1 (Keras) | CPU batch 1 | ms per GMAC |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.network} | {r.input} | {r.params / 1e6:.1f} M | {r.macs / 1e9:.2f} G | {r.top1:.1%} | "
                     f"{r.ms:.0f} ms | {r.ms_per_gmac:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(*measure()))
