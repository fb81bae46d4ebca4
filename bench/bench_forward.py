"""Forward latency at 299 px against a naive eager fp32 NCHW forward: ``m.net`` (issue 2) and the
prediction path ``m.logits`` once its fused copy is ready (issue 12).

Budgets: ``m.net`` <= 0.85x the naive forward, outputs unchanged (<= 1e-4 relative); predictions
equal to the eager network to 1e-5 relative. bench/bench_peer.py compares with Keras.
"""

from __future__ import annotations

import statistics

import torch

from bench.common import bench_model, median_seconds, naive_net, row
from xviz.device import memory_format

SIZE = 299


def rows(pairs: int = 15) -> list[dict]:
    model = bench_model(SIZE)
    naive = naive_net(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    x_fast = x.contiguous(memory_format=memory_format(model.device))  # what LoadedModel.preprocess returns
    model.logits(x_fast)  # the first prediction runs eagerly and schedules the fused copy
    model.predictor.prepare(x_fast.shape, wait=True)
    with torch.no_grad():
        ref = naive(x)
        out = model.net(x_fast)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        fused_err = ((model.logits(x_fast) - out).abs().max() / out.abs().max()).item()
        for _ in range(2):  # warm-up: oneDNN picks and caches its kernels on the first calls
            naive(x), model.net(x_fast), model.logits(x_fast)
        # paired, interleaved runs: drift on a shared VM hits both sides of each ratio alike
        t_naive, t_fast, t_pred = [], [], []
        for _ in range(pairs):
            t_naive.append(median_seconds(lambda: naive(x), repeat=1, warmup=0))
            t_fast.append(median_seconds(lambda: model.net(x_fast), repeat=1, warmup=0))
            t_pred.append(median_seconds(lambda: model.logits(x_fast), repeat=1, warmup=0))
    ratio = statistics.median(f / n for f, n in zip(t_fast, t_naive))
    pred_ratio = statistics.median(p / f for p, f in zip(t_pred, t_fast))
    return [
        row("forward 299px naive eager fp32 NCHW", statistics.median(t_naive) * 1e3, "ms"),
        row("forward 299px m.net (channels_last fp32)", statistics.median(t_fast) * 1e3, "ms"),
        row("forward 299px m.net / naive", ratio, "x", budget=0.85, note=f"median of {pairs} paired runs"),
        row("forward 299px output rel. error vs naive", err, "rel", budget=1e-4),
        row("forward 299px predictions m.logits (fused copy) / m.net", pred_ratio, "x",
            note=f"median of {pairs} paired runs"),
        row("forward 299px predictions rel. error vs m.net", fused_err, "rel", budget=1e-5),
    ]


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
