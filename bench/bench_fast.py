"""Fast mode (issue 12): its speed against fp32 predictions, and how far its answers move.

Speed: ``m.with_fast_mode(True).logits`` / ``m.logits`` (both with their fused copies ready), paired
and interleaved, at 299 and 150 px. Agreement with fp32 on every photo of the demo package and of
xviz/data/examples, at the demo model's own 150 px: top-1 agreement, top-5 agreement (the same five
classes in the same order), largest probability difference. No budget in the issue.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

import xviz
from bench.common import bench_model, median_seconds, row
from xviz import weights as W

SIZES = (299, 150)
EXAMPLES = Path(__file__).resolve().parent.parent / "xviz" / "data" / "examples"


def photos() -> list[Path]:
    root = W.kitchenware_dir()
    demo = sorted((root / "datasets" / "kitchenware-data" / "images").glob("*.jpg")) if root else []
    return demo + sorted(EXAMPLES.glob("*.jpg"))


def ready(m: xviz.LoadedModel, x: torch.Tensor) -> None:
    m.logits(x)
    m.predictor.prepare(x.shape, fast=m.fast, wait=True)


def rows(pairs: int = 15) -> list[dict]:
    exact = bench_model(150)
    if exact.fast_precision is None:
        return [row("fast mode", "not offered", "", note=f"{exact.device_name}: no native bf16 (AVX512-BF16/AMX) "
                                                         "and no CUDA, so nothing is faster than fp32 here")]
    out = []
    for size in SIZES:
        m = exact.with_input_size(size)
        fast = m.with_fast_mode(True)
        x = m.preprocess(xviz.load_image((EXAMPLES / "coffee.jpg").read_bytes()))
        ready(m, x), ready(fast, x)
        t_exact, t_fast = [], []
        for _ in range(pairs):
            t_exact.append(median_seconds(lambda: m.logits(x), repeat=1, warmup=0))
            t_fast.append(median_seconds(lambda: fast.logits(x), repeat=1, warmup=0))
        out += [
            row(f"fast mode {size}px ({fast.precision}) predictions", statistics.median(t_fast) * 1e3, "ms"),
            row(f"fast mode {size}px / fp32 predictions", statistics.median(f / e for f, e in zip(t_fast, t_exact)),
                "x", note=f"median of {pairs} paired runs, both fused"),
        ]
    fast = exact.with_fast_mode(True)
    paths = photos()
    top1 = top5 = 0
    worst = 0.0
    for path in paths:
        x = exact.preprocess(xviz.load_image(path.read_bytes()))
        ready(exact, x), ready(fast, x)
        p, q = exact.logits(x).softmax(-1)[0], fast.logits(x).softmax(-1)[0]
        top1 += int(p.argmax() == q.argmax())
        k = min(5, p.numel())
        top5 += int(torch.equal(p.topk(k).indices, q.topk(k).indices))
        worst = max(worst, (p - q).abs().max().item())
    note = f"{len(paths)} photos (demo package + xviz/data/examples), {exact.kind} model at {exact.input_size} px"
    return out + [
        row("fast mode top-1 agreement with fp32", top1 / len(paths), "frac", note=note),
        row("fast mode top-5 agreement with fp32 (same order)", top5 / len(paths), "frac"),
        row("fast mode largest probability difference", worst, "prob"),
    ]


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
