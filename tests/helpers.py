"""Small pure helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def rel_err(ours, reference) -> float:
    """Largest absolute difference relative to the reference's largest magnitude.

    The issue's fidelity budget (<= 1e-4 vs Keras) is stated in this unit: element-wise relative
    error is meaningless for activations near zero, which post-ReLU maps are full of.
    """
    a, b = as_numpy(ours), as_numpy(reference)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    scale = float(np.abs(b).max())
    assert scale > 0, "reference is all zeros: relative error undefined"
    return float(np.abs(a - b).max()) / scale
