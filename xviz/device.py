"""Where the model runs: CUDA, then Apple's MPS, then the CPU, unless told otherwise."""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "XVIZ_DEVICE"  # "cpu", "cuda", "cuda:1", "mps": overrides the automatic choice
THREADS_ENV = "XVIZ_THREADS"  # CPU threads for torch; default: the cores this process may use
FAST_ENV = "XVIZ_FAST"  # "1": predictions in fast mode (bf16 on CPUs with native bf16, fp16 on CUDA)
TF32_ENV = "XVIZ_ALLOW_TF32"  # "1": let CUDA convolutions use TF32 (faster, ~5e-4 relative error)


def pick_device(requested: str | None = None) -> torch.device:
    """The device to use: ``requested``, else ``$XVIZ_DEVICE``, else the best one present."""
    name = requested or os.environ.get(DEVICE_ENV) or ""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but CUDA is not available here; "
                             f"use 'cpu' or unset {DEVICE_ENV}")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} was requested but MPS is not available here; "
                             f"use 'cpu' or unset {DEVICE_ENV}")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_threads() -> int:
    """Use one torch thread per core this process may run on (cgroup/affinity aware).

    ``os.cpu_count()`` reports the host's cores inside containers, and oversubscribing a 2-core
    machine makes every forward slower, so the affinity mask is the better default.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        threads = int(env)
    elif hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    else:
        threads = os.cpu_count() or 1
    threads = max(1, threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def configure_precision(device: torch.device) -> None:
    """Keep CUDA convolutions in true fp32 unless ``$XVIZ_ALLOW_TF32=1``.

    PyTorch lets cuDNN use TF32 by default; at 299 px that moves logits by ~5e-4 relative (measured
    on an H100), five times what xviz promises against Keras' fp32 outputs. The numbers a class
    reads off the screen must not depend on which GPU served them.
    """
    if device.type == "cuda" and os.environ.get(TF32_ENV) != "1":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def configure(device: torch.device | None = None) -> None:
    """Torch's process-wide settings, set once at start by the app (app.py) and the benches, and by
    you in a notebook if you want the app's numbers: :func:`configure_threads` and, for ``device``
    (default :func:`pick_device`), :func:`configure_precision`. ``load_model`` changes neither."""
    configure_threads()
    configure_precision(device or pick_device())


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout Xception runs fastest in on ``device``, measured at batch 1, fp32, 299 px.

    CPU (oneDNN): channels_last, ~0.74x the NCHW latency. CUDA without TF32 (H200): NCHW;
    channels_last was 1.17x slower there.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def describe(device: torch.device) -> str:
    """A one-line description for the status bar: 'CPU (2 threads)', 'CUDA: NVIDIA H100 ...'."""
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads)"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX), read from /proc/cpuinfo.

    oneDNN runs bf16 convolutions elsewhere too, emulated, and then slower than fp32, so fast mode
    is offered only where this is True. Linux only; other systems report False.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_precision(device: torch.device) -> str | None:
    """The reduced precision fast mode uses on ``device``: "bf16" (CPU with native bf16), "fp16" (CUDA),
    or None where none is faster than fp32 (CPUs without bf16 hardware, Apple's MPS: not measured)."""
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and native_bf16():
        return "bf16"
    return None
