"""The flow views (issue 4): one capture of everything they show, the busiest view's render time,
the cache size per image and the bytes that view sends, all at 299 px.

Budgets: capture <= 1.0x a naive eager fp32 NCHW forward (same run), cache <= 100 MB per image,
payload <= 2 MB per view. The render time has no budget in the issue; it is also shown as a ratio.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import xviz
from bench.common import bench_model, naive_net, row
from xviz import flows
from xviz.figures import maps as M
from xviz.figures.toolkit import png_bytes

SIZE = 299
PHOTO = Path(__file__).resolve().parent.parent / "xviz" / "data" / "examples" / "coffee.jpg"
BUSIEST_LAYER = "block2_sepconv2_act"  # 128 channels of 147×147: the largest grid the app draws


def busiest_view(cap, stages) -> tuple[float, int]:
    """What the Feature maps page computes on first showing block2_sepconv2_act, once the capture
    and the layer table (both cached per image / model) exist: stats, sort orders, the grid as PNG,
    the enlarged channel with overlay, the residual view and the size strip. (seconds, bytes sent)."""
    start = time.perf_counter()
    values = cap.map(BUSIEST_LAYER)
    flows.layer_stats(values)
    order = {by: flows.channel_order(values, by) for by in flows.SORTS}["mean"]
    grid = png_bytes(M.channel_grid(values, order, normalise="channel")[0])
    fig = M.channel_figure(cap.channel(BUSIEST_LAYER, int(order[0])), image=cap.image)
    rv = flows.residual_view(cap, "block2")
    tiles = [png_bytes(t) for t in M.tiles([rv.input[0], rv.branch[0], rv.shortcut[0], rv.total[0]], side=200)]
    strip = M.size_strip(stages)
    fig_json, strip_json = fig.to_json(), strip.to_json()
    seconds = time.perf_counter() - start
    return seconds, len(grid) + len(fig_json) + len(strip_json) + sum(len(t) for t in tiles)


def rows(repeat: int = 9) -> list[dict]:
    model = bench_model(SIZE)
    x = model.preprocess(xviz.load_image(PHOTO.read_bytes()))
    naive = naive_net(model)
    x_naive = x.contiguous()
    with torch.no_grad():
        for _ in range(2):  # warm-up: allocator, oneDNN kernels
            naive(x_naive), flows.capture_views(model, x)
        # alternate the two so that load from other processes hits both alike; the ratio is the
        # median of the per-pair ratios
        pairs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            naive(x_naive)
            t1 = time.perf_counter()
            flows.capture_views(model, x)
            pairs.append((t1 - t0, time.perf_counter() - t1))
    t_naive = float(np.median([a for a, _ in pairs]))
    t_capture = float(np.median([b for _, b in pairs]))
    ratio = float(np.median([b / a for a, b in pairs]))
    cap = flows.capture_views(model, x)
    stages = flows.size_stages(flows.layer_table(model, SIZE), SIZE)
    render = []
    for _ in range(3):
        seconds, payload = busiest_view(cap, stages)
        render.append(seconds)
    t_render = float(np.median(render))
    return [
        row("capture 299px naive eager fp32 NCHW forward", t_naive * 1e3, "ms"),
        row("capture 299px capture_views (all maps the views use)", t_capture * 1e3, "ms"),
        row("capture 299px capture / naive forward", ratio, "x", budget=1.0, note="median of paired runs"),
        row("capture 299px cache per image (float16)", cap.nbytes / 1e6, "MB", budget=100.0),
        row(f"render busiest view ({BUSIEST_LAYER})", t_render * 1e3, "ms",
            note=f"{t_render / t_naive:.2f}x the naive forward; capture cached"),
        row("payload busiest view (grid + channel + residual + strip)", payload / 1e6, "MB", budget=2.0),
    ]


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
