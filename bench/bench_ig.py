"""Integrated Gradients that add up (issue 19): steps, completeness error and cost per photo.

The default IG refines its path integral until the attributions add up to f(image) - f(baseline)
within 1% (or its point limit is spent). Budget, on the demo model at its native 150 px, for every
photo in xviz/data/examples and the demo package: completeness error <= 1%, in <= 40x a naive eager
forward of the same network measured in the same run (each photo's IG between naive forwards).

    python bench/bench_ig.py          # table
    python bench/run.py ig            # through the shared runner
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import xviz  # noqa: E402
import xviz.weights  # noqa: E402
from bench.common import bench_model, median_seconds, naive_net, row  # noqa: E402
from xviz import attributions as A  # noqa: E402

SIZE = 150
ERROR_BUDGET = A.IG_TOLERANCE
COST_BUDGET = 40.0


def photos() -> list[Path]:
    """xviz/data/examples, then the demo package's photos where it is installed."""
    paths = sorted((ROOT / "xviz" / "data" / "examples").glob("*.jpg"))
    demo = xviz.weights.kitchenware_dir()
    if demo is not None:
        paths += sorted((demo / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))
    return paths


def rows() -> list[dict]:
    model = bench_model(SIZE)
    naive = naive_net(model)
    xn = torch.randn(1, 3, SIZE, SIZE)

    def naive_forward():
        with torch.no_grad():
            naive(xn)

    out, ratios, errors, steps = [], [], [], []
    for path in photos():
        x = model.preprocess(xviz.load_image(path.read_bytes()))
        before = median_seconds(naive_forward, repeat=5, warmup=1)
        start = time.perf_counter()
        result = A.integrated_gradients(model, x)
        took = time.perf_counter() - start
        forward = min(before, median_seconds(naive_forward, repeat=5, warmup=0))
        ratios.append(took / forward)
        errors.append(result.completeness_error)
        steps.append(result.steps)
        label = model.labels[result.target]
        out.append(row(f"IG {SIZE}px {path.name} ({label}): completeness error", result.completeness_error * 100,
                       "%", budget=ERROR_BUDGET * 100, note=f"{result.steps} steps, {took:.2f} s, "
                       f"{took / forward:.0f}x a naive forward"))
    out.append(row(f"IG {SIZE}px: worst completeness error over {len(errors)} photos", max(errors) * 100, "%",
                   budget=ERROR_BUDGET * 100))
    out.append(row(f"IG {SIZE}px: median cost / naive forward", sorted(ratios)[len(ratios) // 2], "x",
                   budget=COST_BUDGET, note=f"worst {max(ratios):.0f}x; steps {min(steps)}-{max(steps)}, "
                   f"median {sorted(steps)[len(steps) // 2]}"))
    out.append(row(f"IG {SIZE}px: worst cost / naive forward", max(ratios), "x", budget=COST_BUDGET))
    return out


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
