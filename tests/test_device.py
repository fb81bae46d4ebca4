"""Torch's process-wide settings: loading a model leaves them alone; xviz.device.configure sets them."""

from __future__ import annotations

import torch

import xviz
from xviz import device


def test_load_model_leaves_the_thread_count_alone():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)  # not what configure_threads would choose
        xviz.load_model("untrained", device="cpu")
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_configure_sets_threads_from_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(device.THREADS_ENV, str(before + 1))
    try:
        device.configure(torch.device("cpu"))
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
