"""Xception among other architectures: the comparison table, EfficientNet's scaling, measured latency
and the sentences the Across architectures page states, all computed from :mod:`xviz.zoo` networks
with :func:`xviz.accounting.network_ledger`.

Example:
    >>> from xviz import across
    >>> ledgers = across.zoo_ledgers()                 # every network, counted on the meta device
    >>> across.compare_networks(ledgers)[["network", "params", "macs", "pointwise_share"]]
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import zoo
from .accounting import network_ledger, totals
from .accounting.layer import _positive
from .device import describe

if TYPE_CHECKING:
    import pandas as pd


def zoo_ledgers(names: tuple[str, ...] | None = None, progress=None) -> "dict[str, pd.DataFrame]":
    """{name: :func:`~xviz.accounting.network_ledger`} of :mod:`xviz.zoo` networks (default all) at their
    native input sizes, with ImageNet heads, counted on the meta device.

    ``progress(done, total)`` is called after each network (the seven take ~5 s of CPU on 2 cores: the
    meta device's shape functions are Python)."""
    names = tuple(names or zoo.NAMES)
    ledgers = {}
    for n in names:
        ledgers[n] = network_ledger(zoo.build(n, device="meta"), zoo.SPECS[n].input_size)
        if progress is not None:
            progress(len(ledgers), len(names))
    return ledgers


def compare_networks(ledgers: "dict[str, pd.DataFrame]") -> "pd.DataFrame":
    """One row per network: title, native input, params, MACs, published top-1 (``zoo.TOP1_SOURCE``),
    whether it is built from separable convs, and the share of MACs in 1x1 pointwise and depthwise convs."""
    import pandas as pd

    rows = []
    for name, table in ledgers.items():
        spec, t = zoo.SPECS[name], totals(table)
        kinds = table.groupby("kind")["macs"].sum() / t.macs
        rows.append({"name": name, "network": spec.title, "input": spec.input_size, "separable": spec.separable,
                     "params": t.params, "macs": t.macs, "top1": spec.top1,
                     "pointwise_share": float(kinds.get("pointwise 1×1", 0.0)),
                     "depthwise_share": float(kinds.get("depthwise", 0.0))})
    return pd.DataFrame(rows)


def ledgers_csv(ledgers: "dict[str, pd.DataFrame]") -> bytes:
    """Every network's ledger in one CSV, a ``network`` column first."""
    import pandas as pd

    frames = [t.assign(network=zoo.SPECS[n].title) for n, t in ledgers.items()]
    table = pd.concat(frames, ignore_index=True)
    return table[["network", *frames[0].columns[:-1]]].to_csv(index=False).encode()


def efficientnet_scaling(progress=None) -> "pd.DataFrame":
    """EfficientNet-B0..B7 as Keras scales them, counted: one row per variant with its width, depth
    and resolution multipliers, blocks, params, MACs, and the MACs compound scaling predicts from B0's.

    Tan & Le 2019, eq. 3: depth d, width w and resolution r grow together, and a conv's FLOPs grow with
    d * w^2 * r^2, so ``predicted_macs`` = MACs(B0) * d * w^2 * (r / 224)^2. Keras rounds each stage's
    repeats *up* (ceil(d * n)) and channels to multiples of 8, so the real depth (``blocks`` / 16) is
    larger than d; ``predicted_by_blocks`` uses it instead of d. ``progress(done, total)`` is called
    after each variant.
    """
    import pandas as pd

    rows, base = [], None
    for variant, (width, depth, size, dropout) in zoo.EFFICIENTNET_SCALING.items():
        with torch.device("meta"):
            net = zoo.EfficientNet(1000, width, depth, dropout).eval()
        t = totals(network_ledger(net, size))
        blocks = len(net.blocks)
        base = base or (t.macs, blocks)
        growth = width ** 2 * (size / 224) ** 2
        rows.append({"variant": f"EfficientNet{variant}", "width": width, "depth": depth, "resolution": size,
                     "blocks": blocks, "params": t.params, "macs": t.macs,
                     "predicted_macs": round(base[0] * depth * growth),
                     "predicted_by_blocks": round(base[0] * blocks / base[1] * growth)})
        if progress is not None:
            progress(len(rows), len(zoo.EFFICIENTNET_SCALING))
    return pd.DataFrame(rows)


# -- the page's sentences ------------------------------------------------------------------------

def _convs(rows: "pd.DataFrame") -> "pd.DataFrame":
    return rows[rows["kind"] != "BN"]


def block_lesson(blocks: "list[tuple[str, pd.DataFrame]]") -> str:
    """Markdown: how each block's channel count runs through it (from its ledger rows), what it costs,
    and what the depthwise part of it costs."""
    lines = []
    for title, rows in blocks:
        convs = _convs(rows)
        widths = [int(convs["in_channels"].iloc[0])] + [int(c) for c in convs["out_channels"]]
        macs, params = int(convs["macs"].sum()), int(convs["params"].sum())
        dw = convs[convs["kind"] == "depthwise"]
        runs = [w for w, _ in itertools.groupby(widths)]  # 160, 960, 960, 160 -> 160, 960, 160
        path = " → ".join(map(str, runs)) if len(runs) > 1 else f"{runs[0]} throughout"
        where = f", {dw['macs'].sum() / macs:.1%} of it in the depthwise convs" if len(dw) else ""
        lines.append(f"- **{title}**: channels {path}; {params:,} parameters, "
                     f"{macs / 1e6:,.1f} M multiply-adds{where}.")
    return "\n".join(lines) + (
        "\n\nA ResNet bottleneck narrows, filters, and widens again: its shortcut joins the wide ends. MobileNetV2's "
        "inverted residual does the opposite: a 1×1 conv *expands* the thin input, a cheap depthwise 3×3 filters the "
        "wide tensor, and a 1×1 *projects* back down with no ReLU after it (the linear bottleneck: a ReLU on so few "
        "channels would zero information the block can't recover); its shortcut joins the thin ends. Xception's block "
        "keeps one width and puts a ReLU before each separable conv.")


def se_lesson(ledger: "pd.DataFrame") -> str:
    """Markdown: what squeeze-and-excitation costs in an EfficientNet ledger, counted."""
    se = ledger[ledger["kind"] == "squeeze-excite"]
    t = totals(ledger)
    first = se.iloc[0]
    return (f"EfficientNet's MBConv is MobileNetV2's inverted residual (with swish) plus a **squeeze-and-excitation** "
            f"unit after the depthwise conv: average each channel to one number, a 1×1 conv squeezes them "
            f"({first['in_channels']} → {first['out_channels']} in {first['block']}, a quarter of the block's "
            f"input width), another expands them back, and a sigmoid gives one weight per channel. In EfficientNetB0 "
            f"the squeeze-excite convs of its {se['block'].nunique()} blocks hold {int(se['params'].sum()):,} "
            f"parameters "
            f"({se['params'].sum() / t.params:.1%} of the network) but cost only {se['macs'].sum() / t.macs:.2%} of "
            "the multiply-adds: they run on 1×1 maps. Scaling B0 up is one formula:")


# -- measured speed ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkLatency:
    """Batch-1 forward time of several networks measured in one interleaved run."""

    device: str  # "CPU (2 threads)"
    rounds: int  # timed forwards per network, after one warm-up each
    load: tuple[float, float]  # the machine's 1-minute load average before and after: others' work slows us
    ms: dict[str, float]  # name -> median ms per image
    iqr_ms: dict[str, float]  # name -> interquartile range of the rounds


def time_networks(names: tuple[str, ...] | None = None, rounds: int = 5, progress=None,
                  seed: int = 0) -> NetworkLatency:
    """Time a batch-1 fp32 forward of each :mod:`xviz.zoo` network at its native size on the CPU.

    Random weights (``seed``): a dense forward's time doesn't depend on the values. The networks run
    in turns, one forward each per round, so a load that comes and goes hits them all alike; we keep
    each one's median. Channels-last, no autograd, as xviz runs Xception; denormal floats are flushed
    to zero while timing (random weights through 50+ layers can shrink activations into the denormal
    range, which trained networks don't live in and which the CPU computes many times slower).

    ``progress(done, total)`` is called after each forward. Needs ~1 GB (VGG16 alone is 553 MB).
    """
    names = tuple(names or zoo.NAMES)
    _positive(rounds=rounds)
    torch.manual_seed(seed)
    fmt = torch.channels_last
    nets = {n: zoo.build(n).to(memory_format=fmt) for n in names}
    inputs = {n: torch.randn(1, 3, zoo.SPECS[n].input_size, zoo.SPECS[n].input_size).contiguous(memory_format=fmt)
              for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    total, done = len(names) * (rounds + 1), 0
    before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.set_flush_denormal(True)
    try:
        with torch.no_grad():
            for r in range(rounds + 1):  # round 0 warms up: oneDNN picks its kernels on the first call
                for n in names:
                    start = time.perf_counter()
                    nets[n](inputs[n])
                    if r:
                        times[n].append((time.perf_counter() - start) * 1e3)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    finally:
        torch.set_flush_denormal(False)  # torch's default
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return NetworkLatency(describe(torch.device("cpu")), rounds, (before, after),
                          {n: statistics.median(t) for n, t in times.items()},
                          {n: float(np.subtract(*np.percentile(t, [75, 25]))) for n, t in times.items()})
