"""Can this heatmap be trusted? The deletion curve (remove the most relevant pixels first) and the
model-randomisation sanity check (Adebayo et al., 2018). See xviz.attributions."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..activations import locked
from ..model import Xception
from .methods import DEFAULT_BATCH, DEFAULT_LAYER, ProgressFn, _net, _seeded, as_input, resolve_target
from .registry import METHODS, attribute

# -- trust: deletion curve ------------------------------------------------------------------------

@dataclass(frozen=True)
class DeletionCurve:
    """Class probability as pixels are replaced by the baseline, most relevant first vs random.

    Areas are the mean probability over the removed share (trapezoid rule on [0, 1]): the faster
    the curve falls, the smaller its area.
    """

    fractions: np.ndarray  # (S,) share of pixels removed, 0 to 1
    relevant: np.ndarray  # (S,) probability of target, most relevant pixels removed first
    random: np.ndarray  # (S,) the same for random order, averaged over the random orders
    area_relevant: float
    area_random: float
    target: int

    @property
    def faithful(self) -> bool:
        """The map's order removes evidence faster than chance."""
        return self.area_relevant < self.area_random


def deletion_curve(m, x, heat: torch.Tensor, target: int | str | None = None, *, steps: int = 20,
                   patch: int | None = None, baseline: float = 0.0, random_orders: int = 3,
                   batch_size: int = DEFAULT_BATCH, seed: int = 0,
                   progress: ProgressFn | None = None) -> DeletionCurve:
    """Deletion metric (Petsiuk et al., 2018, RISE): remove the most relevant patches first.

    The image is cut into square patches ranked by their mean relevance. Removing single pixels
    would be unfair to the random reference: grey pixels sprinkled at random are noise that wrecks
    a CNN's features long before any evidence is gone, so random order would always "win".

    Args:
        m, x, target: as in :func:`gradcam`.
        heat: (H, W) map of ``x`` from any method; larger = more relevant. Ties are broken at random.
        steps: removal steps after the intact image (shares 0, 1/steps, ..., 1 of the patches).
        patch: patch side in pixels; default a sixteenth of the image side.
        baseline: value of a removed pixel in model space (0.0 = mid-grey for [-1, 1] inputs).
        random_orders: random removal orders averaged for the reference curve.
        batch_size: images per forward (bounds memory).
        seed: seed of the random orders and of tie-breaking.
        progress: called with (images evaluated, (steps + 1) * (1 + random_orders)).

    Returns:
        :class:`DeletionCurve`.

    Example:
        >>> x = m.preprocess(img)
        >>> curve = xviz.attributions.deletion_curve(m, x, xviz.gradcam(m, x))
        >>> curve.area_relevant < curve.area_random
        True
    """
    x = as_input(m, x)
    h, w = x.shape[-2:]
    heat = (heat.detach().float().cpu() if isinstance(heat, torch.Tensor)
            else torch.from_numpy(np.array(heat, dtype=np.float32)))  # a copy: cached maps are read-only
    if heat.shape != (h, w):
        raise ValueError(f"the map is {tuple(heat.shape)} but the image is {(h, w)}; pass the map of this image")
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
    patch = patch or max(1, round(min(h, w) / 16))
    # (H, W) -> (gh, gw) mean relevance per patch; edge patches are partial (ceil_mode)
    relevance = F.avg_pool2d(heat[None, None], patch, patch, ceil_mode=True)[0, 0]
    gh, gw = relevance.shape
    n = gh * gw
    gen = torch.Generator().manual_seed(seed)
    # descending relevance; a random permutation first makes the stable sort break ties at random
    jitter = torch.randperm(n, generator=gen)
    order = jitter[torch.argsort(relevance.flatten()[jitter], descending=True, stable=True)]
    orders = [order] + [torch.randperm(n, generator=gen) for _ in range(random_orders)]
    counts = [round(n * k / steps) for k in range(steps + 1)]
    total = len(orders) * len(counts)
    done = 0
    probs, shares = [], []
    for order in orders:
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)  # rank[p]: when patch p gets removed
        # (gh, gw) patch ranks -> (h, w) pixel ranks
        pixel_rank = rank.reshape(gh, gw).repeat_interleave(patch, 0).repeat_interleave(patch, 1)[:h, :w]
        pixel_rank = pixel_rank.to(x.device)
        curve, removed_share = [], []
        for start in range(0, len(counts), batch_size):
            chunk = counts[start:start + batch_size]
            removed = torch.stack([pixel_rank < c for c in chunk])[:, None]  # (B, 1, h, w)
            batch = torch.where(removed, torch.full_like(x, baseline), x.expand(len(chunk), -1, -1, -1))
            with locked(m), torch.no_grad():
                p = net(batch.contiguous(memory_format=torch.channels_last)).softmax(dim=1)[:, t]
            curve += p.float().cpu().tolist()
            removed_share += removed.float().mean(dim=(1, 2, 3)).cpu().tolist()
            done += len(chunk)
            if progress:
                progress(done, total)
        probs.append(np.asarray(curve))
        shares.append(np.asarray(removed_share))
    fractions = shares[0]  # pixel shares; random orders differ slightly where edge patches are partial
    relevant = probs[0]
    rand = np.mean(probs[1:], axis=0) if random_orders else np.full_like(relevant, np.nan)
    area_random = float(np.mean([np.trapezoid(c, f) for c, f in zip(probs[1:], shares[1:])])) \
        if random_orders else float("nan")
    return DeletionCurve(fractions, relevant, rand, float(np.trapezoid(relevant, fractions)), area_random, t)


# -- trust: model-randomisation sanity check ------------------------------------------------------

def cascade_stages(net: Xception) -> list[str]:
    """The randomisation cascade, head first: "head", "block14", "block13", ..., "block1"."""
    return list(net.block_paths())[::-1]


def _stage_module(net: Xception, stage: str) -> torch.nn.Module:
    path = net.block_paths().get(stage)
    if path is None:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(cascade_stages(net))}")
    return net.get_submodule(path)


def _reinitialise(module: torch.nn.Module) -> None:
    """PyTorch's default init for every conv, dense and BN (BN back to identity statistics).

    The new values are drawn on the CPU and copied over, so a seed gives the same random network
    on every device (CUDA draws from its own generator).
    """
    for sub in module.modules():
        if isinstance(sub, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
            fresh = copy.deepcopy(sub).to("cpu")
            fresh.reset_parameters()
            tensors = dict(sub.named_parameters()) | dict(sub.named_buffers())
            with torch.no_grad():
                for name, value in fresh.state_dict().items():
                    tensors[name].copy_(value)


def spearman(a, b) -> float:
    """Spearman rank correlation with average ranks for ties; nan when either map is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


@dataclass(frozen=True)
class RandomisationCheck:
    """Maps after cumulatively randomising the network from the head down (Adebayo et al., 2018).

    ``spearman[i]`` compares the map after randomising ``stages[: i + 1]`` with the original map
    (absolute values for signed methods, as in the paper). Near 1: the map ignores the weights
    (an edge detector); falling towards 0: the map depends on what the network learned.
    """

    method: str
    stages: list[str]  # cumulative: stages[i] is the lowest block randomised at step i
    spearman: list[float]
    original: np.ndarray  # (H, W)
    maps: list[np.ndarray]  # (H, W) per stage


def randomisation_check(m, x, target: int | str | None = None, method: str = "gradcam", *,
                        layer: str = DEFAULT_LAYER, stages: Sequence[str] | None = None, seed: int = 0,
                        progress: ProgressFn | None = None, **options) -> RandomisationCheck:
    """Model-randomisation sanity check on a copy of the network; the shared model is never touched.

    Args:
        m, x, target: as in :func:`gradcam`; the target is fixed from the trained model.
        method, layer, options: the attribution to test, as in :func:`attribute`.
        stages: where to record a map along :func:`cascade_stages` (each randomises every stage
            above it too); default: all of them.
        seed: seed of the re-initialisation.
        progress: called with (maps done, 1 + len(stages)).

    Returns:
        :class:`RandomisationCheck`.

    Example:
        >>> check = xviz.attributions.randomisation_check(m, m.preprocess(img))
        >>> check.spearman[-1] < 0.5
        True
    """
    x = as_input(m, x)
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
        original = attribute(m, x, t, method, layer=layer, **options)
        twin = copy.deepcopy(net)  # under the lock: a deep copy would also copy any live captum hook
    signed = METHODS[method].signed
    cascade = cascade_stages(net)
    wanted = list(stages) if stages is not None else cascade
    unknown = [s for s in wanted if s not in cascade]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {', '.join(cascade)}")
    wanted = sorted(set(wanted), key=cascade.index)
    twin_model = dataclasses.replace(m, net=twin, lock=threading.RLock()) if hasattr(m, "net") else twin
    total = 1 + len(wanted)
    if progress:
        progress(1, total)
    maps, rhos = [], []
    with _seeded(seed, x.device):
        for stage in cascade[: cascade.index(wanted[-1]) + 1]:
            _reinitialise(_stage_module(twin, stage))
            if stage not in wanted:
                continue
            heat = attribute(twin_model, x, t, method, layer=layer, **options)
            maps.append(heat.numpy())
            a, b = (original.abs(), heat.abs()) if signed else (original, heat)
            rhos.append(spearman(a.numpy(), b.numpy()))
            if progress:
                progress(1 + len(maps), total)
    return RandomisationCheck(method, wanted, rhos, original.numpy(), maps)
