"""Forward latency of ``m.net`` at 299 px against a naive eager fp32 NCHW forward (issue 2).

Budget: <= 0.85x the naive forward, with outputs unchanged (<= 1e-4 relative).
"""

from __future__ import annotations

import torch

from bench.common import bench_model, median_seconds, naive_net, row

SIZE = 299


def rows(repeat: int = 9) -> list[dict]:
    model = bench_model(SIZE)
    naive = naive_net(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    x_fast = x.contiguous(memory_format=torch.channels_last)  # what LoadedModel.preprocess returns
    with torch.no_grad():
        ref = naive(x)
        out = model.net(x_fast)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        # interleave the two so drift hits both alike
        t_naive = median_seconds(lambda: naive(x), repeat=repeat)
        t_fast = median_seconds(lambda: model.net(x_fast), repeat=repeat)
        t_naive = min(t_naive, median_seconds(lambda: naive(x), repeat=repeat))
    return [
        row("forward 299px naive eager fp32 NCHW", t_naive * 1e3, "ms"),
        row("forward 299px m.net (channels_last fp32)", t_fast * 1e3, "ms"),
        row("forward 299px m.net / naive", t_fast / t_naive, "x", budget=0.85),
        row("forward 299px output rel. error vs naive", err, "rel", budget=1e-4),
    ]


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
