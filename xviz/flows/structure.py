"""The structure the flow views show: which layers (the plan, read off the network's units), the
34 separable convolutions, each layer's shape at an input size, and a per-block summary."""

from __future__ import annotations

from dataclasses import dataclass

from ..activations import io_shapes
from ..model import FLOWS, Xception

FLOW_TITLES = {"entry_flow": "Entry flow", "middle_flow": "Middle flow", "exit_flow": "Exit flow"}

KIND_TEXT = {
    "relu": "ReLU: negative values set to zero",
    "depthwise": "depthwise 3×3: one filter per input channel, channels never mix",
    "pointwise": "pointwise 1×1: each output channel a weighted sum of all depthwise maps",
    "batchnorm": "batch normalisation: a per-channel scale and shift",
    "maxpool": "3×3 max-pool, stride 2: halves height and width",
    "residual": "shortcut: 1×1 convolution with stride 2, then batch normalisation",
    "add": "residual sum: the block's branch plus its shortcut",
}


# -- the plan: which layers the views show, and where each one's numbers come from ---------------

@dataclass(frozen=True)
class PlanEntry:
    """One layer the views show.

    ``source`` is empty for a stored layer; for a derived one it names the layer it is computed from
    (``derive`` says how: ``"bn"`` = that layer's BatchNorm, ``"relu"`` = ReLU of it).
    """

    name: str  # Keras name ("block5_sepconv1_depthwise")
    flow: str  # "entry_flow" | "middle_flow" | "exit_flow"
    block: str  # "block1" ... "block14"
    kind: str  # a key of KIND_TEXT
    stride: int  # total downsampling from the input to this layer (2, 4, 8, 16, 32)
    source: str = ""  # derived layers: the layer they are computed from
    derive: str = ""  # derived layers: "bn" or "relu"

    @property
    def stored(self) -> bool:
        return not self.source


@dataclass(frozen=True)
class SeparableInfo:
    """One of the 34 separable convolutions, with the names of the maps around it."""

    name: str  # Keras name of the separable conv = its pointwise output ("block5_sepconv1")
    flow: str
    block: str
    input: str  # the layer it reads ("block5_sepconv1_act", "block1_conv2_act", "block13_add")
    depthwise: str  # "block5_sepconv1_depthwise"
    bn: str  # the BatchNorm after it ("block5_sepconv1_bn")


# a unit kind (xviz.model.UNIT_KINDS) -> how the views show it; the stem's convs and BNs and the
# shortcut's 1x1 conv are not shown (its BN is, as "residual")
_SHOWN = {"relu": "relu", "depthwise": "depthwise", "pointwise": "pointwise", "bn": "batchnorm",
          "maxpool": "maxpool", "shortcut_bn": "residual", "add": "add"}


def view_plan(net: Xception) -> list[PlanEntry]:
    """The layers the views show, in forward order, read off the network's units.

    A separable conv's BatchNorm is derived from its pointwise output; a ReLU is derived from its
    input when that is shown too (the stem's ReLUs follow BNs that are not, so they are stored).
    """
    kinds = {u.name: u.kind for u in net.units()}
    entries: list[PlanEntry] = []
    shown: set[str] = set()
    for u in net.units():
        if u.flow == "head" or u.kind not in _SHOWN or (u.kind == "bn" and kinds[u.inputs[0]] != "pointwise"):
            continue
        source, derive = "", ""
        if u.kind == "bn":
            source, derive = u.inputs[0], "bn"
        elif u.kind == "relu" and u.inputs[0] in shown:
            source, derive = u.inputs[0], "relu"
        entries.append(PlanEntry(u.name, u.flow, u.block, _SHOWN[u.kind], u.stride, source, derive))
        shown.add(u.name)
    return entries


def stored_names(net: Xception) -> list[str]:
    """Layers :func:`capture_views` keeps from the forward pass."""
    return [e.name for e in view_plan(net) if e.stored]


def separable_convs(net: Xception) -> list[SeparableInfo]:
    """The 34 separable convolutions in forward order, each with the layer it reads."""
    units = {u.name: u for u in net.units()}
    bn_of = {u.inputs[0]: u.name for u in units.values() if u.kind == "bn"}
    return [SeparableInfo(u.name, u.flow, u.block, units[u.inputs[0]].inputs[0], u.inputs[0], bn_of[u.name])
            for u in units.values() if u.kind == "pointwise"]


def block_names(net: Xception) -> dict[str, list[str]]:
    """{flow: [block names in order]}, e.g. ``{"entry_flow": ["block1", ..., "block4"], ...}``."""
    out: dict[str, list[str]] = {flow: [] for flow in FLOWS}
    for block, path in net.block_paths().items():
        if block != "head":
            out[path.partition(".")[0]].append(block)
    return out


# -- shapes at an input size ------------------------------------------------------------------

@dataclass(frozen=True)
class LayerInfo:
    """A row of the layer table: a shown layer with its shape at one input size."""

    name: str
    flow: str
    block: str
    kind: str
    channels: int
    height: int
    width: int
    stride: int  # total downsampling from the input
    stored: bool  # kept from the forward pass; False: derived on demand (BN or ReLU of a stored map)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    @property
    def shape_text(self) -> str:
        return f"{self.height}×{self.width}×{self.channels}"


def _shape_pass(model, size: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[tuple, tuple]]]:
    """One forward on a blank image recording only shapes: {layer: (C, H, W)}, {block: (in, out)}."""
    net = getattr(model, "net", model)
    layers = {name: net.layer(name) for name in net.layer_names()}
    blocks = {name: net.get_submodule(path) for name, path in net.block_paths().items()}  # with "head"
    shapes = io_shapes(model, {**layers, **blocks}, size)  # layer and block names never collide
    return ({name: shapes[name][1] for name in layers if name in shapes},
            {name: shapes[name] for name in blocks if name in shapes})


def layer_table(model, size: int | None = None) -> list[LayerInfo]:
    """Every shown layer with flow, block, kind, channels, spatial size and stride at ``size`` px.

    ``model`` is a :class:`xviz.LoadedModel` (``size`` defaults to its input size) or a bare
    :class:`xviz.model.Xception` (then ``size`` is required).
    """
    size = size or model.input_size
    net = getattr(model, "net", model)
    shapes, _ = _shape_pass(model, size)
    return [LayerInfo(e.name, e.flow, e.block, e.kind, *shapes[e.name], e.stride, e.stored)
            for e in view_plan(net)]


# -- the architecture summary -------------------------------------------------------------------

@dataclass(frozen=True)
class BlockSummary:
    """One block of the network at one input size (``flow == "head"`` for the classifier)."""

    flow: str
    name: str
    input_shape: tuple[int, ...]  # (C, H, W) or (features,)
    output_shape: tuple[int, ...]
    params: int  # learnable weights of the block's modules (BN gamma/beta counted, running stats not)
    residual: str  # "1×1 conv /2 + BN", "identity" or "none"
    description: str  # what the block does, in one line

    @property
    def output_text(self) -> str:
        return _shape_text(self.output_shape)

    @property
    def input_text(self) -> str:
        return _shape_text(self.input_shape)


def _shape_text(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return f"{shape[1]}×{shape[2]}×{shape[0]}"
    return "×".join(str(s) for s in shape)


def _describe(net: Xception, units: list) -> tuple[str, str]:
    """(residual type, what the block does) of one block, read off its units in forward order."""
    shortcut = next((u for u in units if u.kind == "shortcut"), None)
    if shortcut is not None:
        r = net.get_submodule(shortcut.path)
        residual = f"{r.kernel_size[0]}×{r.kernel_size[1]} conv /{r.stride[0]} + BN"
    else:
        residual = "identity" if any(u.kind == "add" for u in units) else "none"
    steps: dict[str, list[str]] = {}  # Keras groups a conv with its BN and ReLU by name: blockN_sepconvK[_bn|_act]
    for u in units:
        module = net.get_submodule(u.path)
        if u.kind == "conv":
            stride = f" /{module.stride[0]}" if module.stride[0] > 1 else ""
            text = f"{module.kernel_size[0]}×{module.kernel_size[1]} conv{stride} → {module.out_channels}"
        elif u.kind == "pointwise":
            text = f"sepconv → {module.pointwise.out_channels}"
        elif u.kind == "maxpool":
            text = f"{module.kernel_size}×{module.kernel_size} max-pool /{module.stride}"
        else:
            text = {"bn": "BN", "relu": "ReLU"}.get(u.kind)
        if text is not None:
            steps.setdefault(u.name.removesuffix("_bn").removesuffix("_act"), []).append(text)
    return residual, " ; ".join(", ".join(step) for step in steps.values())


def architecture(model, size: int | None = None) -> list[BlockSummary]:
    """Per block: flow, name, input/output shape at ``size`` px, parameter count, residual type.

    The last row is the classifier head (global average pooling and the dense layers). The params
    column sums to :func:`xviz.count_parameters` of the whole network.
    """
    size = size or model.input_size
    net: Xception = getattr(model, "net", model)
    _, io = _shape_pass(model, size)
    rows = []
    for block, path in net.block_paths().items():
        module = net.get_submodule(path)
        params = sum(p.numel() for p in module.parameters())
        units = [u for u in net.units() if u.block == block]
        if block == "head":
            rows.append(BlockSummary("head", "head", *io["head"], params, "none", "global average pooling, then "
                                     + (", ".join(u.name for u in units[1:]) or "no classifier (features only)")))
        else:
            rows.append(BlockSummary(units[0].flow, block, *io[block], params, *_describe(net, units)))
    return rows


def size_stages(table: list[LayerInfo], input_size: int) -> list[tuple[str, int, int]]:
    """(label, spatial size, channels) where the size changes or a flow ends: input → 10×10×2048.

    The eight middle-flow blocks keep one shape, so they appear as one stage.
    """
    by_name = {r.name: r for r in table}
    stages = [("input", input_size, 3)]
    for r in table:
        if r.block == "block1":
            stages.append((r.name.replace("_act", ""), r.height, r.channels))
    for block in [f"block{i}" for i in range(2, 15)]:
        out = by_name.get(f"{block}_add") or by_name.get(f"{block}_sepconv2_act")
        if out is None:
            continue
        if out.flow == "middle_flow":
            if stages[-1][0].startswith("middle"):
                continue
            stages.append(("middle flow ×8", out.height, out.channels))
        else:
            stages.append((block, out.height, out.channels))
    return stages


