"""Where the model runs: CUDA, then Apple's MPS, then the CPU, unless told otherwise."""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "XVIZ_DEVICE"  # "cpu", "cuda", "cuda:1", "mps": overrides the automatic choice
THREADS_ENV = "XVIZ_THREADS"  # CPU threads for torch; default: the cores this process may use


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


def describe(device: torch.device) -> str:
    """A one-line description for the status bar: 'CPU (2 threads)', 'CUDA: NVIDIA H100 ...'."""
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads)"
