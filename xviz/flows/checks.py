"""The on-screen checks: a residual block's sum and a separable convolution taken apart, each
verified on the stored maps within the rounding their storage precision allows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model import SeparableConv2d, Xception
from .capture import FlowCapture
from .structure import SeparableInfo, separable_convs

# -- residual connections -----------------------------------------------------------------------

U16 = 2.0 ** -11  # unit roundoff of float16 (10 stored mantissa bits, round to nearest)
U32 = 2.0 ** -24
TINY16 = 2.0 ** -25  # largest rounding error of a float16 subnormal


def _unit_roundoff(dtype) -> tuple[float, float]:
    return (U16, TINY16) if np.dtype(dtype) == np.float16 else (U32, 2.0 ** -150)


@dataclass(frozen=True)
class ResidualView:
    """A block's residual sum laid bare: ``total = branch + shortcut``, checked on the stored maps."""

    block: str
    input_name: str  # what enters the block
    branch_name: str  # the block's branch just before the add
    shortcut_name: str  # what is added to it (the input itself for an identity shortcut)
    total_name: str  # blockN_add
    identity: bool  # True in the middle flow
    input: np.ndarray  # (C, H, W) float32
    branch: np.ndarray
    shortcut: np.ndarray
    total: np.ndarray
    max_error: float  # max |branch + shortcut - total|
    tolerance_ok: bool  # every pixel within the rounding bound of the stored numbers
    scale: float  # max |total|, to read max_error against


def residual_view(cap: FlowCapture, block: str) -> ResidualView:
    """Input, branch before the add, shortcut and their sum for residual block ``block`` (2 to 13)."""
    add = f"{block}_add"
    if add not in cap.plan:
        raise ValueError(f"{block} has no residual connection; blocks 2 to 13 have one")
    entries = [e for e in cap.plan.values() if e.block == block]
    identity = not any(e.kind == "maxpool" for e in entries)
    order = list(cap.plan)
    first = order.index(entries[0].name)
    input_name = order[first - 1]
    # the input of a block is the previous block's output; an act layer is derived from it
    if cap.plan[entries[0].name].derive == "relu":
        input_name = cap.plan[entries[0].name].source
    if identity:
        units = [e for e in entries if e.kind == "batchnorm"]
        branch_name, shortcut_name = units[-1].name, input_name
    else:
        branch_name, shortcut_name = f"{block}_pool", f"{block}_residual_bn"
    branch, shortcut, total = cap.map(branch_name), cap.map(shortcut_name), cap.map(add)
    err = np.abs(branch + shortcut - total)
    u, tiny = _unit_roundoff(cap.dtype)
    # each stored number carries one rounding; a derived BN inherits its source's, scaled, and
    # rounds its own intermediate terms differently from the network's formula
    magnitude = np.abs(shortcut) + np.abs(total) + np.abs(branch)
    if identity:
        scale_vec, _, terms = cap.bn[branch_name]
        magnitude = magnitude + terms[:, None, None] + np.abs(scale_vec)[:, None, None] * np.abs(
            cap.map(cap.plan[branch_name].source))
    bound = 2 * u * magnitude + 4 * tiny + 8 * U32 * magnitude
    return ResidualView(block, input_name, branch_name, shortcut_name, add, identity,
                        cap.map(input_name), branch, shortcut, total, float(err.max()),
                        bool(np.all(err <= bound)), float(np.abs(total).max()))


# -- the separable convolution, opened up -------------------------------------------------------

@dataclass(frozen=True)
class BatchNormParams:
    gamma: np.ndarray  # (C,) learnt scale
    beta: np.ndarray  # (C,) learnt shift
    mean: np.ndarray  # (C,) running mean of the training data
    var: np.ndarray  # (C,) running variance
    eps: float


@dataclass(frozen=True)
class SeparableAnatomy:
    """One separable conv on one image: input → depthwise maps (+ kernels) → pointwise output."""

    info: SeparableInfo
    inputs: np.ndarray  # (C_in, H, W) float32: the layer the conv reads
    depthwise: np.ndarray  # (C_in, H, W): map c = input c filtered by kernel c, nothing else
    kernels: np.ndarray  # (C_in, 3, 3) depthwise kernels
    pointwise: np.ndarray  # (C_out, H, W): the separable conv's output (before BN)
    weights: np.ndarray  # (C_out, C_in) pointwise weights: output o = sum_c weights[o, c] * depthwise[c]
    bn: BatchNormParams
    dtype: np.dtype  # storage precision of the maps
    conv_roundoff: float = 2.0 ** -24  # the network's own convolution arithmetic (TF32 on CUDA: 2^-11)

    @property
    def in_channels(self) -> int:
        return self.inputs.shape[0]

    @property
    def out_channels(self) -> int:
        return self.pointwise.shape[0]


def separable_anatomy(model, cap: FlowCapture, name: str) -> SeparableAnatomy:
    """Open separable conv ``name`` (e.g. ``"block5_sepconv1"``) with the maps of ``cap``.

    Maps come from the capture; kernels, weights and BN parameters from ``model`` (no forward pass).
    """
    net: Xception = getattr(model, "net", model)
    infos = {s.name: s for s in separable_convs(net)}
    if name not in infos:
        raise ValueError(f"{name!r} is not a separable convolution; choose one of "
                         f"{', '.join(list(infos)[:3])} … {list(infos)[-1]} (34 in all)")
    info = infos[name]
    conv: SeparableConv2d = net.layer(name)
    bn: nn.BatchNorm2d = net.layer(info.bn)
    kernels = conv.depthwise.weight.detach().float().cpu()[:, 0].numpy()  # (C_in, 1, 3, 3) -> (C_in, 3, 3)
    weights = conv.pointwise.weight.detach().float().cpu()[:, :, 0, 0].numpy()  # (C_out, C_in, 1, 1) -> (C_out, C_in)
    params = BatchNormParams(bn.weight.detach().float().cpu().numpy(), bn.bias.detach().float().cpu().numpy(),
                             bn.running_mean.float().cpu().numpy(), bn.running_var.float().cpu().numpy(),
                             float(bn.eps))
    return SeparableAnatomy(info, cap.map(info.input), cap.map(info.depthwise), kernels, cap.map(name),
                            weights, params, cap.dtype, cap.conv_roundoff)


@dataclass(frozen=True)
class Contributions:
    """Output channel ``o`` of a pointwise conv as the sum of ``weights[o, c] * depthwise[c]``."""

    channel: int
    order: np.ndarray  # input channels, largest mean |contribution| first (all C_in of them)
    share: np.ndarray  # (C_in,) in ``order``: that channel's share of the total mean |contribution|
    top: np.ndarray  # (k,) the first k of ``order``
    top_weights: np.ndarray  # (k,) weights[o, top]
    top_maps: np.ndarray  # (k, H, W) weights[o, c] * depthwise[c] for c in top
    rest: np.ndarray  # (H, W) sum of all the other contributions
    reconstruction: np.ndarray  # (H, W) sum of ALL C_in contributions (float64 accumulation)
    output: np.ndarray  # (H, W) the pointwise output channel the network computed
    max_error: float  # max |reconstruction - output|
    scale: float  # max |output|
    tolerance_ok: bool  # every pixel within the rounding bound of the stored numbers
    bn_output: np.ndarray  # (H, W) BN(reconstruction): what the next layer receives before ReLU

    @property
    def relative_error(self) -> float:
        return self.max_error / self.scale if self.scale > 0 else self.max_error


def pointwise_contributions(anat: SeparableAnatomy, o: int, k: int = 8) -> Contributions:
    """Break pointwise output channel ``o`` into its per-input-channel contributions and check the sum.

    The check: ``sum_c weights[o, c] * depthwise[c]`` (accumulated in float64) must equal the output
    channel the network computed, pixel by pixel, within what the storage precision allows: each
    stored value carries one rounding (relative 2^-11 in float16, 2^-24 in float32), and the
    network's own float32 sum rounds once per input channel.
    """
    c_out, c_in = anat.weights.shape
    if not 0 <= o < c_out:
        raise IndexError(f"{anat.info.name} has {c_out} output channels (0 to {c_out - 1}); got {o}")
    w = anat.weights[o].astype(np.float64)  # (C_in,)
    dw = anat.depthwise
    strength = np.abs(w) * np.abs(dw).reshape(c_in, -1).mean(axis=1)  # mean |w_c * dw_c| per channel
    order = np.argsort(-strength, kind="stable")
    total_strength = strength.sum()
    share = strength[order] / total_strength if total_strength > 0 else np.zeros(c_in)
    top = order[:k]
    recon = np.tensordot(w, dw, axes=(0, 0))  # (C_in,) . (C_in, H, W) -> (H, W) in float64
    top_maps = (w[top, None, None] * dw[top]).astype(np.float32)
    rest = recon - top_maps.sum(axis=0, dtype=np.float64)
    output = anat.pointwise[o]
    err = np.abs(recon - output)
    u, tiny = _unit_roundoff(anat.dtype)
    mass = np.tensordot(np.abs(w), np.abs(dw), axes=(0, 0))  # sum_c |w_c| |dw_c|
    conv_u = anat.conv_roundoff if anat.conv_roundoff > U32 else 0.0  # TF32 rounds every input once
    bound = (u + conv_u) * mass + u * np.abs(output) + c_in * U32 * mass + (c_in + 1) * tiny + 1e-12
    p = anat.bn
    bn_out = p.gamma[o] * (recon - p.mean[o]) / np.sqrt(p.var[o] + p.eps) + p.beta[o]
    return Contributions(o, order, share, top, w[top].astype(np.float32), top_maps, rest.astype(np.float32),
                         recon.astype(np.float32), output, float(err.max()), float(np.abs(output).max()),
                         bool(np.all(err <= bound)), bn_out.astype(np.float32))


def depthwise_check(anat: SeparableAnatomy, c: int) -> float:
    """Max |conv3x3(input[c], kernel[c]) - depthwise[c]|: depthwise map c uses only input channel c."""
    x = torch.from_numpy(anat.inputs[c][None, None].copy())  # (H, W) -> (1, 1, H, W)
    k = torch.from_numpy(anat.kernels[c][None, None].copy())  # (3, 3) -> (1, 1, 3, 3)
    y = torch.nn.functional.conv2d(x, k, padding=1)[0, 0].numpy()
    return float(np.abs(y - anat.depthwise[c]).max())
