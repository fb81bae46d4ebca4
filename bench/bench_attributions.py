"""Cost of the attribution methods (issue 6), as ratios to a naive eager forward in the same run.

Budgets: Grad-CAM at each flow's last layer <= 1.3x the naive forward; Integrated Gradients at 16
fixed steps <= 40x (bench_ig.py times the default, refined to 1% completeness, on real photos). Guided Grad-CAM and Occlusion (default window) are reported without one.

Peak memory: each method runs once in a fresh Python process. After the model is loaded and the
input prepared, the process's peak-RSS mark is reset (Linux: ``/proc/self/clear_refs``, "5") and
the row is how far the peak (``VmHWM``) rose above the resident set at that moment, in MiB. It
counts everything the method makes the process hold at its worst moment (activations kept for
backward, captum's expanded batches, allocator caches, thread buffers) and nothing the model
already held. tracemalloc can't see torch's CPU allocations, and ``ru_maxrss`` can't be reset
(loading the 86 MB .keras file peaks higher than any method), hence this. The naive forward gets
the same treatment as a yardstick.

    python bench/bench_attributions.py            # table
    python bench/run.py attributions              # through the shared runner
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import bench_model, naive_net, row  # noqa: E402
from xviz import attributions as A  # noqa: E402

SIZE = 299
TARGET = 0  # class index; the cost does not depend on which
FLOW_ENDS = {"entry": "block4_add", "middle": "block12_add", "exit": "block14_sepconv2_act"}
GRADCAM_BUDGET = 1.3
IG_BUDGET = 40.0
IG_STEPS = 16


def _jobs(model, x) -> dict[str, callable]:
    jobs = {f"Grad-CAM at {layer} ({flow} flow's last layer)":
            (lambda layer=layer: A.gradcam(model, x, TARGET, layer=layer))
            for flow, layer in FLOW_ENDS.items()}
    jobs["Guided Grad-CAM at block14_sepconv2_act"] = lambda: A.guided_gradcam(model, x, TARGET)
    # fixed steps, as issue 6 budgeted it; the default (refined to 1% completeness) is bench_ig's
    jobs[f"Integrated Gradients, {IG_STEPS} fixed steps, batch {A.DEFAULT_BATCH}"] = (
        lambda: A.integrated_gradients(model, x, TARGET, steps=IG_STEPS))
    window, stride = A.occlusion_window(SIZE)
    jobs[f"Occlusion, window {window} px, stride {stride} px"] = lambda: A.occlusion(model, x, TARGET)
    return jobs


def _input(model) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; return the current RSS in KiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed loader buffers back first
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _peak_child(name: str) -> None:
    """Run one job in this (fresh) process and print its peak-RSS growth in MiB as JSON."""
    model = bench_model(SIZE)
    x = _input(model)
    if name == "naive":
        net, xn = naive_net(model), x.contiguous()

        def job():
            with torch.no_grad():
                net(xn)
    else:
        job = _jobs(model, x)[name]
    before = _reset_peak()
    job()
    print(json.dumps({"mib": (_status_kib("VmHWM") - before) / 1024.0}))


def _peak_mib(name: str) -> float:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peak", name], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rows(repeat: int = 7, memory: bool = True) -> list[dict]:
    """Timings are best-of-``repeat``, each method interleaved with the naive forward.

    On a shared 2-core VM other processes only ever add time, so the minimum is the least
    disturbed estimate of both sides of a ratio; interleaving keeps them under the same drift.
    The slow methods (Integrated Gradients, Occlusion) run twice, each between naive forwards.
    """
    model = bench_model(SIZE)
    x = _input(model)
    naive, xn = naive_net(model), x.contiguous()

    def naive_forward():
        with torch.no_grad():
            naive(xn)

    naive_forward()
    out, naive_best = [], float("inf")
    for name, job in _jobs(model, x).items():
        slow = name.startswith(("Integrated", "Occlusion"))
        job()  # warm-up: first-call allocations, captum imports
        t = float("inf")
        for _ in range(2 if slow else repeat):
            naive_best = min(naive_best, _best(naive_forward, 3 if slow else 1))
            t = min(t, _best(job, 1))
        naive_best = min(naive_best, _best(naive_forward, 3))
        budget = (GRADCAM_BUDGET if name.startswith("Grad-CAM")
                  else IG_BUDGET if name.startswith("Integrated") else None)
        out.append((name, t, budget))
    rows_ = [row(f"attributions {SIZE}px: naive eager fp32 NCHW forward (best of all runs)", naive_best * 1e3, "ms")]
    rows_ += [row(f"attributions {SIZE}px: {name} / naive forward", t / naive_best, "x", budget=budget,
                  note=f"{t * 1e3:.0f} ms") for name, t, budget in out]
    if memory:
        rows_.append(row(f"attributions {SIZE}px: peak RSS growth, naive forward", _peak_mib("naive"), "MiB"))
        for name in _jobs(model, x):
            rows_.append(row(f"attributions {SIZE}px: peak RSS growth, {name}", _peak_mib(name), "MiB"))
    return rows_


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak":
        _peak_child(sys.argv[2])
    else:
        from bench.run import print_table
        print_table(rows())
