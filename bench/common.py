"""Shared pieces of the benchmarks: the naive baseline, timing, and the row format.

Every budget is a ratio to a naive eager fp32 NCHW forward of the same network with the same
weights, measured in the same process: absolute times drift 10-20% between runs on shared VMs,
ratios measured side by side don't.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import xviz


def json_report(script: str, *args: str, timeout: float = 1800) -> dict:
    """Run ``bench/<script> --json *args`` in its own process; the JSON line it printed last."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "bench" / script), "--json", *args],
                          cwd=root, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench/{script} printed no report (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def median_seconds(fn: Callable[[], object], repeat: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_net(model: xviz.LoadedModel) -> torch.nn.Module:
    """The same weights in the plainest form: a deep copy, fp32, NCHW (contiguous) on the CPU."""
    net = copy.deepcopy(model.net).float().to("cpu", memory_format=torch.contiguous_format)
    return net.eval()


def naive_forward_seconds(model: xviz.LoadedModel, size: int, repeat: int = 7) -> float:
    """Median latency of a batch-1 eager fp32 NCHW forward at ``size`` px: the baseline of every ratio."""
    net = naive_net(model)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        return median_seconds(lambda: net(x), repeat=repeat)


def row(name: str, value: float, unit: str, budget: float | None = None, holds: bool | None = None,
        note: str = "") -> dict:
    """One line of the benchmark table; ``holds`` is None where the issue names no budget."""
    if budget is not None and holds is None:
        holds = value <= budget
    return {"name": name, "value": value, "unit": unit, "budget": budget, "holds": holds, "note": note}


def bench_model(size: int = 299) -> xviz.LoadedModel:
    """The trained model available here (kitchenware backbone = the Keras ImageNet backbone) at ``size``."""
    xviz.device.configure(torch.device("cpu"))  # the app's torch settings (load_model leaves them alone)
    return xviz.load_model("kitchenware", device="cpu").with_input_size(size)
