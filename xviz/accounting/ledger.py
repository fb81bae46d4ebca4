"""The whole loaded Xception, layer by layer (the ledger), its standard-conv counterfactual, totals
and shares, and the paper's own numbers. Units: see xviz.accounting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from ..activations import io_shapes
from ..model import Xception
from .layer import _positive

if TYPE_CHECKING:
    import pandas as pd

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
