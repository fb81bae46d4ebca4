"""A standard convolution and its separable twin, timed on this machine. Units: see xviz.accounting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..device import describe
from .layer import _positive, output_size, separable_conv, standard_conv

# -- measured speed --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpeedComparison:
    """Median wall time of one standard conv and its separable twin on one device."""

    device: str  # e.g. "CPU (2 threads)", "CUDA: NVIDIA H100 80GB HBM3"
    shape: str  # "k=3, 728→728, 19×19, stride 1, batch 1"
    standard_ms: float  # median over the timed rounds of the per-call time
    separable_ms: float
    standard_iqr_ms: float  # interquartile range of those rounds: how noisy the machine was
    separable_iqr_ms: float
    rounds: int  # timed rounds behind each median
    flop_ratio: float  # standard MACs / separable MACs
    memory_format: str

    @property
    def time_ratio(self) -> float:
        """How many times faster the separable conv ran (standard time / separable time)."""
        return self.standard_ms / self.separable_ms


def time_standard_vs_separable(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                               device: str | torch.device | None = None, batch: int = 1,
                               min_run_time: float = 0.4, channels_last: bool = True,
                               seed: int = 0, max_bytes: int = 1 << 30) -> SpeedComparison:
    """Time a standard k x k conv against depthwise + pointwise for one shape, fp32, no autograd.

    Each conv is warmed up (cuDNN/oneDNN pick their algorithms, caches fill), then the two are timed
    in alternating rounds of ``torch.utils.benchmark.Timer.timeit`` (which synchronises CUDA and
    pins the thread count) until ``min_run_time`` seconds have passed; we keep each one's median.
    Alternating matters on shared machines: a load that comes and goes hits both convs alike, where
    timing one after the other would charge it to whichever ran second.
    Uses the model's memory format (channels_last) by default: the layout xviz runs Xception in.

    Raises:
        ValueError: a non-positive size, or tensors and weights over ``max_bytes`` (a calculator
            can ask for shapes that would exhaust the machine's memory).
    """
    import statistics
    import time

    from torch.utils import benchmark

    _positive(k=k, cin=cin, cout=cout, h=h, w=w, stride=stride, batch=batch)
    oh, ow = output_size(h, k, stride), output_size(w, k, stride)
    needed = 4 * (batch * (cin * h * w + (cin + cout) * oh * ow) + k * k * cin * cout + k * k * cin + cin * cout)
    if needed > max_bytes:
        raise ValueError(f"timing this shape needs about {needed / 2**20:,.0f} MiB of fp32 tensors, more than the "
                         f"{max_bytes / 2**20:,.0f} MiB allowed; choose fewer channels or a smaller H×W")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)
    pad = k // 2  # symmetric padding: both convs see the same shape, which is all timing needs
    standard = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
    separable = nn.Sequential(nn.Conv2d(cin, cin, k, stride, pad, groups=cin, bias=False),
                              nn.Conv2d(cin, cout, 1, bias=False))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, cin, h, w, device=dev).contiguous(memory_format=fmt)
    timers, calls = [], []
    for module in (standard, separable):
        module = module.to(dev, memory_format=fmt).eval().requires_grad_(False)
        timer = benchmark.Timer(stmt="m(x)", globals={"m": module, "x": x},
                                num_threads=torch.get_num_threads())
        timer.timeit(3)  # warm-up
        once = timer.timeit(1).median
        # enough calls per round that a round lasts ~5 ms, above timer and launch overheads
        calls.append(max(1, int(0.005 / max(once, 1e-7))))
        timers.append(timer)
    times: list[list[float]] = [[], []]
    deadline = time.perf_counter() + min_run_time
    while len(times[0]) < 5 or time.perf_counter() < deadline:
        for i in (0, 1):
            times[i].append(timers[i].timeit(calls[i]).median * 1e3)
    medians = [statistics.median(t) for t in times]
    iqrs = [float(np.subtract(*np.percentile(t, [75, 25]))) for t in times]
    flop_ratio = standard_conv(k, cin, cout, h, w, stride).macs / separable_conv(k, cin, cout, h, w, stride).macs
    return SpeedComparison(describe(dev), f"k={k}, {cin}→{cout}, {h}×{w}, stride {stride}, batch {batch}",
                           medians[0], medians[1], iqrs[0], iqrs[1], len(times[0]), flop_ratio,
                           "channels_last" if channels_last else "contiguous (NCHW)")
