"""The inference queue: does micro-batching pay, and what does a class of predictions cost through it?

    python bench/bench_queue.py

Rows (ratios measured side by side in one run, so a busy machine shifts both sides alike):
* per-image cost of a batch of 8 forwards against batch 1, at 150 px and at 299 px: the evidence
  behind ``xviz.inference.batch_limit`` (batch where it pays, not where it doesn't);
* 30 predictions submitted at once through the queue against the same 30 run one after another,
  as 30 script threads taking turns on the model's lock did before the queue.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import bench_model, row  # noqa: E402
from xviz import inference  # noqa: E402


def batch_ratio(size: int, batch: int = 8, repeat: int = 5) -> float:
    """Median over interleaved pairs of (seconds per image at ``batch``) / (seconds at batch 1)."""
    m = bench_model(size)
    xs = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    m.logits(xs[:1])
    m.predictor.prepare(xs[:1].shape, wait=True)  # what a server runs once the first answer is out: the fused copy
    m.logits(xs[:1]), m.logits(xs)  # warm-up
    ratios = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(batch):
            m.logits(xs[i:i + 1])
        one = (time.perf_counter() - t0) / batch
        t0 = time.perf_counter()
        m.logits(xs)
        many = (time.perf_counter() - t0) / batch
        ratios.append(many / one)
    return statistics.median(ratios)


def class_ratio(size: int = 150, students: int = 30, repeat: int = 3) -> tuple[float, int]:
    """(queue seconds / sequential seconds) for ``students`` predictions at once, largest batch seen."""
    m = bench_model(size)
    xs = [torch.randn(1, 3, size, size) for _ in range(students)]
    q = inference.InferenceQueue()
    try:
        [t.result() for t in [q.submit(m, "logits", x + 1) for x in xs[:8]]]  # warm-up
        ratios = []
        for r in range(repeat):
            t0 = time.perf_counter()
            for x in xs:
                m.logits(x)
            sequential = time.perf_counter() - t0
            t0 = time.perf_counter()
            [t.result() for t in [q.submit(m, "logits", x + r + 2) for x in xs]]
            queued = time.perf_counter() - t0
            ratios.append(queued / sequential)
        return statistics.median(ratios), q.served["largest_batch"]
    finally:
        q.close()


def rows() -> list[dict]:
    r150, r299 = batch_ratio(150), batch_ratio(299, repeat=3)
    cls, largest = class_ratio()
    return [
        row("queue: batch 8 / batch 1 per image, 150 px", r150, "x", 1.0,
            note="batched at this size: xviz.inference.batch_limit(150) = 8"),
        row("queue: batch 8 / batch 1 per image, 299 px", r299, "x",
            note=f"not batched at this size (batch_limit(299) = {inference.batch_limit(299)})"),
        row("queue: 30 predictions at once / one after another, 150 px", cls, "x", 1.0,
            note=f"largest batch {largest}"),
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(rows())
