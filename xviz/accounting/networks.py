"""The ledger of any network (an :mod:`xviz.zoo` build, Xception included), costed by the same code
as Xception's, each layer sorted into a kind. Units: see xviz.accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..activations import io_shapes
from ..model import Xception
from .layer import _positive
from .ledger import _layer_cost, _module_names

if TYPE_CHECKING:
    import pandas as pd

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
