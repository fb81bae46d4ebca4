"""Parameters and compute of convolutions, for one layer and for the whole loaded network.

Units, everywhere in this module:
    params  learnable weights (conv kernels, BN gamma/beta, dense weights and biases) -- the
            paper's count. BatchNorm running mean/variance are buffers, counted apart as
            ``bn_statistics`` (Keras adds them to its "total params": 22,855,952 + 54,528 = 22,910,480).
    MACs    multiply-accumulates per image: one multiply and one add. A k x k conv costs
            k^2 * Cin/groups MACs per output value. FLOPs ~= 2 x MACs.
    Counted: Conv2d and Linear multiply-adds. Not counted: biases, BatchNorm (folded into the
            conv at inference), ReLU, pooling, residual adds -- together well under 1% of the MACs.

The separable-vs-standard ratio (MobileNets, Howard et al. 2017, eq. 5) is exact for both params
and MACs of a bias-free conv: (k^2*Cin + Cin*Cout) / (k^2*Cin*Cout) = 1/Cout + 1/k^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .activations import io_shapes
from .device import describe
from .model import Xception

if TYPE_CHECKING:
    import pandas as pd

PADDINGS = ("same", "valid")


# -- one layer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvCost:
    """Cost of one convolution on one image."""

    params: int  # learnable weights
    macs: int  # multiply-accumulates per image
    out_h: int  # output height
    out_w: int  # output width

    @property
    def flops(self) -> int:
        """Floating-point operations, counting a multiply-add as two."""
        return 2 * self.macs


@dataclass(frozen=True)
class SeparableCost:
    """Depthwise k x k (carries the stride) then pointwise 1 x 1, as Keras ``SeparableConv2D``."""

    depthwise: ConvCost
    pointwise: ConvCost

    @property
    def params(self) -> int:
        return self.depthwise.params + self.pointwise.params

    @property
    def macs(self) -> int:
        return self.depthwise.macs + self.pointwise.macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def out_h(self) -> int:
        return self.pointwise.out_h

    @property
    def out_w(self) -> int:
        return self.pointwise.out_w


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def output_size(size: int, kernel: int, stride: int = 1, padding: str = "same") -> int:
    """Output length along one axis (TensorFlow/Keras conventions).

    'same': ceil(size / stride), the input is padded as needed. 'valid': no padding,
    floor((size - kernel) / stride) + 1, which needs size >= kernel.
    """
    _positive(size=size, kernel=kernel, stride=stride)
    if padding == "same":
        return math.ceil(size / stride)
    if padding == "valid":
        if kernel > size:
            raise ValueError(f"a {kernel}x{kernel} kernel with 'valid' padding needs an input of at least "
                             f"{kernel} pixels, got {size}; use 'same' padding or a smaller kernel")
        return (size - kernel) // stride + 1
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


def valid_groups(cin: int, cout: int) -> list[int]:
    """Every group count g a grouped conv Cin -> Cout allows: the divisors of gcd(Cin, Cout)."""
    _positive(cin=cin, cout=cout)
    d = math.gcd(cin, cout)
    return [g for g in range(1, d + 1) if d % g == 0]


def grouped_conv(k: int, cin: int, cout: int, h: int, w: int, groups: int = 1, stride: int = 1,
                 padding: str = "same", bias: bool = False) -> ConvCost:
    """A k x k conv in ``groups`` independent channel segments: each output sees Cin/groups inputs.

    params = k^2 * (Cin/g) * Cout (+ Cout bias); MACs = k^2 * (Cin/g) * Cout * H_out * W_out.
    g = 1 is a standard conv; g = Cin = Cout is a depthwise conv (paper, section 2: the spectrum
    from regular convolution to depthwise separable).

    Raises:
        ValueError: a non-positive size, an unknown padding, or g that doesn't divide Cin and Cout.
    """
    _positive(k=k, cin=cin, cout=cout, h=h, w=w, groups=groups, stride=stride)
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide both Cin={cin} and Cout={cout}; "
                         f"valid choices: {_short_list(valid_groups(cin, cout))}")
    oh, ow = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    weights = k * k * (cin // groups) * cout
    return ConvCost(weights + (cout if bias else 0), weights * oh * ow, oh, ow)


def standard_conv(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                  padding: str = "same", bias: bool = False) -> ConvCost:
    """params = k^2 * Cin * Cout; MACs = k^2 * Cin * Cout * H_out * W_out."""
    return grouped_conv(k, cin, cout, h, w, 1, stride, padding, bias)


def depthwise_conv(k: int, cin: int, h: int, w: int, stride: int = 1, padding: str = "same") -> ConvCost:
    """One k x k filter per input channel: params = k^2 * Cin; MACs = k^2 * Cin * H_out * W_out."""
    return grouped_conv(k, cin, cin, h, w, cin, stride, padding)


def pointwise_conv(cin: int, cout: int, h: int, w: int) -> ConvCost:
    """A 1 x 1 conv mixing channels: params = Cin * Cout; MACs = Cin * Cout * H * W."""
    return grouped_conv(1, cin, cout, h, w, 1, 1, "same")


def separable_conv(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                   padding: str = "same") -> SeparableCost:
    """Depthwise k x k (with the stride) then pointwise 1 x 1 at the output size."""
    dw = depthwise_conv(k, cin, h, w, stride, padding)
    return SeparableCost(dw, pointwise_conv(cin, cout, dw.out_h, dw.out_w))


def separable_ratio(k: int, cout: int) -> float:
    """Separable / standard cost, for params and for MACs: 1/Cout + 1/k^2.

    Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", eq. 5.
    """
    _positive(k=k, cout=cout)
    return 1 / cout + 1 / (k * k)


def group_spectrum(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1,
                   padding: str = "same") -> list[tuple[int, ConvCost]]:
    """(g, cost) of the grouped k x k conv for every valid g, from 1 (standard) upwards."""
    return [(g, grouped_conv(k, cin, cout, h, w, g, stride, padding)) for g in valid_groups(cin, cout)]


def compare_layer(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1, padding: str = "same",
                  groups: int = 1) -> "pd.DataFrame":
    """One table for the calculator: standard, depthwise, pointwise, separable and grouped conv.

    Columns: conv, params, macs, vs_standard (cost relative to the standard conv, params and MACs alike).
    """
    import pandas as pd

    std = standard_conv(k, cin, cout, h, w, stride, padding)
    sep = separable_conv(k, cin, cout, h, w, stride, padding)
    grp = grouped_conv(k, cin, cout, h, w, groups, stride, padding)
    rows = [(f"standard {k}×{k}", std), (f"depthwise {k}×{k}", sep.depthwise), ("pointwise 1×1", sep.pointwise),
            ("separable = depthwise + pointwise", sep), (f"grouped {k}×{k}, g = {groups}", grp)]
    return pd.DataFrame([(name, c.params, c.macs, c.params / std.params) for name, c in rows],
                        columns=["conv", "params", "macs", "vs_standard"])


def formulas_latex(k: int, cin: int, cout: int, h: int, w: int, stride: int = 1, padding: str = "same",
                   groups: int = 1) -> str:
    """The calculator's formulas with the numbers filled in, as one LaTeX ``aligned`` block."""
    std = standard_conv(k, cin, cout, h, w, stride, padding)
    sep = separable_conv(k, cin, cout, h, w, stride, padding)
    grp = grouped_conv(k, cin, cout, h, w, groups, stride, padding)

    def n(x: int) -> str:
        return f"{x:,}".replace(",", "{,}")  # braces stop LaTeX from spacing the comma like punctuation

    return (r"\begin{aligned}"
            rf"\text{{standard:}} &\; k^2 C_{{in}} C_{{out}} = {k}^2\cdot {cin}\cdot {cout} = {n(std.params)}\\"
            rf"\text{{separable:}} &\; k^2 C_{{in}} + C_{{in}} C_{{out}} = {k}^2\cdot {cin} + {cin}\cdot {cout}"
            rf" = {n(sep.params)}\\"
            rf"\text{{grouped:}} &\; k^2 \tfrac{{C_{{in}}}}{{g}} C_{{out}} = {k}^2\cdot \tfrac{{{cin}}}{{{groups}}}"
            rf"\cdot {cout} = {n(grp.params)}\\"
            rf"\text{{MACs}} &= \text{{params}} \times H_{{out}} W_{{out}} = \text{{params}} \times {std.out_h}"
            rf"\cdot {std.out_w}\\"
            rf"\frac{{\text{{separable}}}}{{\text{{standard}}}} &= \frac{{1}}{{C_{{out}}}} + \frac{{1}}{{k^2}}"
            rf" = \frac{{1}}{{{cout}}} + \frac{{1}}{{{k * k}}} = {separable_ratio(k, cout):.4f}"
            r"\end{aligned}")


def _short_list(values: list[int], n: int = 12) -> str:
    shown = ", ".join(map(str, values[:n]))
    return shown + (f", … ({len(values)} in all)" if len(values) > n else "")


# -- the whole network ---------------------------------------------------------------------------

KINDS = ("regular conv", "depthwise", "pointwise", "residual 1×1", "BN", "fc")
STANDARD_KIND = "standard (replaces separable)"
LEDGER_COLUMNS = ("layer", "keras_layer", "kind", "flow", "block", "kernel", "stride", "groups",
                  "in_channels", "out_channels", "in_h", "in_w", "out_h", "out_w", "output_shape",
                  "params", "bn_statistics", "macs")


_LEDGER_KINDS = {"conv": "regular conv", "depthwise": "depthwise", "pointwise": "pointwise",
                 "shortcut": "residual 1×1", "bn": "BN", "shortcut_bn": "BN", "dense": "fc"}


def _module_names(net: Xception) -> dict[str, tuple[str, str, str]]:
    """Module path -> (row name, Keras layer name, kind) for every Conv2d, Linear and BatchNorm2d,
    read off the network's units (:meth:`xviz.model.Xception.units`)."""
    rows = {}
    for u in net.units():
        if u.kind not in _LEDGER_KINDS:
            continue
        if u.kind == "pointwise":  # Keras' SeparableConv2D is one layer; its 1x1 half gets a name of its own
            rows[f"{u.path}.pointwise"] = (f"{u.name}_pointwise", u.name, "pointwise")
        elif u.kind == "depthwise":  # ... and its depthwise half is booked under the Keras layer
            rows[u.path] = (u.name, u.name.removesuffix("_depthwise"), "depthwise")
        elif u.kind == "dense":
            rows[f"{u.path}.linear"] = (u.name, u.name, "fc")
        else:
            rows[u.path] = (u.name, u.name, _LEDGER_KINDS[u.kind])
    return rows


def ledger(model, input_size: int | None = None) -> "pd.DataFrame":
    """One row per Conv2d / BatchNorm2d / Linear of the network, in forward order, for one image.

    The shapes come from one forward pass of a blank image at ``input_size`` with hooks on those
    modules (removed in ``finally``); params are the modules' own tensors, so the ledger always
    sums to the network it was computed from.

    Args:
        model: a :class:`xviz.LoadedModel` (its lock serialises the hooked forward) or an
            :class:`xviz.model.Xception`.
        input_size: side of the square input; default the model's own (299 for a bare network).

    Returns:
        DataFrame with ``LEDGER_COLUMNS``. ``flow`` follows the paper's Figure 5, which draws the
        pooling and fully-connected head inside the exit flow (``block`` says "head").
    """
    import pandas as pd

    net: Xception = getattr(model, "net", model)
    size = input_size or getattr(model, "input_size", 299)
    _positive(input_size=size)
    names = _module_names(net)
    modules = {path: net.get_submodule(path) for path in names}
    shapes = io_shapes(model, modules, size)

    rows = []
    for path in shapes:  # dicts keep insertion order: the order the forward visited the modules
        module = modules[path]
        name, keras, kind = names[path]
        (in_shape, out_shape) = shapes[path]
        parts = path.split(".")
        flow, block = (parts[0], parts[1]) if parts[0] != "head" else ("exit_flow", "head")
        (kernel, _), stride, groups, cin, cout, ih, iw, oh, ow, params, stats, macs = _layer_cost(module, in_shape,
                                                                                                 out_shape)
        shape = f"{cout} × {oh} × {ow}" if len(out_shape) == 3 else f"{cout}"
        rows.append((name, keras, kind, flow, block, kernel, stride, groups,
                     cin, cout, ih, iw, oh, ow, shape, params, stats, macs))
    return pd.DataFrame(rows, columns=list(LEDGER_COLUMNS))


def _layer_cost(module: nn.Module, in_shape: tuple, out_shape: tuple) -> tuple:
    """(kernel (kh, kw), stride, groups, Cin, Cout, H_in, W_in, H_out, W_out, params, bn_statistics,
    MACs) of one Conv2d / BatchNorm2d / Linear, from the shapes (without batch) one forward showed it.

    A conv costs kh * kw * Cin/groups MACs per output value; a dense layer Cin per output. Params are
    the module's own tensors, so a ledger always sums to the network it was computed from.
    """
    params = sum(p.numel() for p in module.parameters())
    if isinstance(module, nn.Conv2d):
        (kh, kw), groups = module.kernel_size, module.groups
        cin, cout = module.in_channels, module.out_channels
        (_, ih, iw), (_, oh, ow) = in_shape, out_shape
        return ((kh, kw), module.stride[0], groups, cin, cout, ih, iw, oh, ow, params, 0,
                kh * kw * (cin // groups) * cout * oh * ow)
    if isinstance(module, nn.BatchNorm2d):
        (c, ih, iw), (_, oh, ow) = in_shape, out_shape
        stats = module.running_mean.numel() + module.running_var.numel()
        return (1, 1), 1, 1, c, c, ih, iw, oh, ow, params, stats, 0
    return (1, 1), 1, 1, module.in_features, module.out_features, 1, 1, 1, 1, params, 0, \
        module.in_features * module.out_features


def counterfactual(ledger_df: "pd.DataFrame") -> "pd.DataFrame":
    """The same network with every separable conv replaced by one standard k x k conv (Cin -> Cout).

    Each depthwise + pointwise pair (same ``keras_layer``) becomes one row named after the Keras
    layer, kind ``STANDARD_KIND``, with the depthwise's kernel and stride; every other row is kept.
    """
    import pandas as pd

    rows = []
    records = ledger_df.to_dict("records")
    pointwise = {r["keras_layer"]: r for r in records if r["kind"] == "pointwise"}
    for r in records:
        if r["kind"] == "pointwise":
            continue
        if r["kind"] != "depthwise":
            rows.append(r)
            continue
        pw = pointwise[r["keras_layer"]]
        k, cin, cout = r["kernel"], r["in_channels"], pw["out_channels"]
        params = k * k * cin * cout
        rows.append({**pw, "layer": r["keras_layer"], "kind": STANDARD_KIND, "kernel": k,
                     "stride": r["stride"], "groups": 1, "in_channels": cin, "in_h": r["in_h"],
                     "in_w": r["in_w"], "params": params, "macs": params * pw["out_h"] * pw["out_w"]})
    return pd.DataFrame(rows, columns=list(LEDGER_COLUMNS))


@dataclass(frozen=True)
class Totals:
    params: int  # learnable weights (the paper's count)
    bn_statistics: int  # BatchNorm running mean + variance (non-trainable buffers)
    macs: int  # conv + linear multiply-accumulates per image

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def keras_total(self) -> int:
        """What Keras' ``model.summary()`` calls "Total params"."""
        return self.params + self.bn_statistics


def totals(ledger_df: "pd.DataFrame") -> Totals:
    return Totals(int(ledger_df["params"].sum()), int(ledger_df["bn_statistics"].sum()),
                  int(ledger_df["macs"].sum()))


def shares(ledger_df: "pd.DataFrame", by: str) -> "pd.DataFrame":
    """Params and MACs summed per ``by`` ("flow", "kind", "block"), with each group's share (0..1).

    Groups keep the order in which they first appear in the network.
    """
    if by not in ledger_df.columns:
        raise ValueError(f"can't group the ledger by {by!r}; use one of its columns, e.g. 'flow' or 'kind'")
    out = ledger_df.groupby(by, sort=False)[["params", "macs"]].sum()
    out["params_share"] = out["params"] / out["params"].sum()
    out["macs_share"] = out["macs"] / out["macs"].sum()
    return out


def separable_presets(ledger_df: "pd.DataFrame") -> list[dict]:
    """The distinct separable-conv shapes of the network, for the calculator's presets.

    Each: {"label", "layers" (Keras names), "k", "cin", "cout", "h", "w", "stride"}, where h x w is the
    depthwise input; in network order.
    """
    presets: dict[tuple, dict] = {}
    records = ledger_df.to_dict("records")
    pointwise = {r["keras_layer"]: r for r in records if r["kind"] == "pointwise"}
    for r in records:
        if r["kind"] != "depthwise":
            continue
        pw = pointwise[r["keras_layer"]]
        key = (r["kernel"], r["in_channels"], pw["out_channels"], r["in_h"], r["in_w"], r["stride"])
        presets.setdefault(key, {"layers": [], "k": key[0], "cin": key[1], "cout": key[2], "h": key[3],
                                 "w": key[4], "stride": key[5]})["layers"].append(r["keras_layer"])
    for p in presets.values():
        more = f" and {len(p['layers']) - 1} more" if len(p["layers"]) > 1 else ""
        p["label"] = f"{p['layers'][0]}{more}: {p['cin']}→{p['cout']} at {p['h']}×{p['w']}"
    return list(presets.values())


# -- any network: the architectures compared (xviz.zoo) ----------------------------------------------

NETWORK_KINDS = ("standard conv", "depthwise", "pointwise 1×1", "grouped", "shortcut 1×1", "squeeze-excite",
                 "dense", "BN")
NETWORK_LEDGER_COLUMNS = ("layer", "module", "block", "kind", "kernel", "stride", "groups", "in_channels",
                          "out_channels", "in_h", "in_w", "out_h", "out_w", "output_shape", "params",
                          "bn_statistics", "macs")
SHORTCUT_LEAVES = ("residual", "0_conv")  # the 1x1 projection shortcuts: Xception's blockN_residual, ResNet's _0_conv


def network_kind(module: nn.Module, path: str, in_shape: tuple) -> str:
    """What a Conv2d / BatchNorm2d / Linear does, in one vocabulary for every architecture.

    By shape: groups = Cin is depthwise, 1 < groups < Cin grouped, a 1x1 with groups = 1 pointwise
    (or a projection shortcut, by its Keras name), a conv on a pooled 1x1 map is a dense layer
    (MobileNet's ``conv_preds``) unless it sits in a squeeze-and-excitation unit (Keras' ``se_*``).
    """
    if isinstance(module, nn.BatchNorm2d):
        return "BN"
    if isinstance(module, nn.Linear):
        return "dense"
    leaf = path.rpartition(".")[2]
    if leaf.startswith("se_"):
        return "squeeze-excite"
    if tuple(in_shape[1:]) == (1, 1):
        return "dense"
    if module.groups > 1:
        return "depthwise" if module.groups == module.in_channels else "grouped"
    if module.kernel_size == (1, 1):
        return "shortcut 1×1" if leaf in SHORTCUT_LEAVES else "pointwise 1×1"
    return "standard conv"


def network_ledger(net: nn.Module, input_size: int) -> "pd.DataFrame":
    """:func:`ledger` for any network (an :mod:`xviz.zoo` build, Xception included): one row per
    Conv2d / BatchNorm2d / Linear in forward order, costed by the same code, kinds from
    :func:`network_kind`.

    Build the network on the ``meta`` device to count: the hooked forward then costs nothing.

    Returns:
        DataFrame with ``NETWORK_LEDGER_COLUMNS``: ``layer`` is the Keras name (Xception's own
        names; elsewhere the module path below ``blocks`` joined with "_"), ``module`` the module
        path, ``block`` the Keras block (empty for the stem and head), ``kernel`` "kh×kw".
    """
    import pandas as pd

    _positive(input_size=input_size)
    keras = {path: name for path, (name, *_) in _module_names(net).items()} if isinstance(net, Xception) else {}
    modules = {path: m for path, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}
    shapes = io_shapes(net, modules, input_size)
    rows = []
    for path, (in_shape, out_shape) in shapes.items():
        module = modules[path]
        parts = path.split(".")
        nested = len(parts) >= 3  # container.block.layer...: the block names the layer's prefix
        name = keras.get(path) or "_".join(parts[1:] if nested else parts)
        (kh, kw), stride, groups, cin, cout, ih, iw, oh, ow, params, stats, macs = _layer_cost(module, in_shape,
                                                                                               out_shape)
        shape = f"{cout} × {oh} × {ow}" if len(out_shape) == 3 else f"{cout}"
        rows.append((name, path, parts[1] if nested else "", network_kind(module, path, in_shape), f"{kh}×{kw}",
                     stride, groups, cin, cout, ih, iw, oh, ow, shape, params, stats, macs))
    return pd.DataFrame(rows, columns=list(NETWORK_LEDGER_COLUMNS))


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


# -- the paper's numbers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperFact:
    model: str
    params: int | None  # None: the paper doesn't give it
    top1: float  # ImageNet single-crop top-1 accuracy
    top5: float
    source: str


PAPER = "Chollet, “Xception: Deep Learning with Depthwise Separable Convolutions”, CVPR 2017"
PAPER_FACTS = (
    PaperFact("Xception", 22_855_952, 0.790, 0.945, "Table 1 (accuracy), Table 3 (parameters)"),
    PaperFact("Inception V3", 23_626_728, 0.782, 0.941, "Table 1 (accuracy), Table 3 (parameters)"),
    PaperFact("ResNet-152", None, 0.770, 0.933, "Table 1"),
    PaperFact("VGG-16", None, 0.715, 0.901, "Table 1"),
)
