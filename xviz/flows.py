"""Inside the flows: what one forward pass records for the feature-map, separable-convolution and
architecture views, and the arithmetic those views show.

The capture plan
    :func:`capture_views` runs ONE hooked forward pass and keeps, for display, every layer the views
    need; picking another layer, channel or sort order afterwards never reruns the network. Kept
    ("stored") per image:

    * ``block1_conv1_act``, ``block1_conv2_act`` (the stem),
    * the depthwise output (``blockN_sepconvK_depthwise``) and the pointwise output
      (``blockN_sepconvK``) of all 34 separable convolutions,
    * ``blockN_pool``, ``blockN_residual_bn`` and ``blockN_add`` of every residual block.

    Every other layer the views show is *derived* exactly as the network computes it, on demand and
    without the network: ``blockN_sepconvK_bn`` is a per-channel affine map of the stored pointwise
    output (BatchNorm in inference mode), and ``..._act`` is ReLU of the layer before it. Storing
    the BN and ReLU outputs as well would cost ~40% more memory for no new information.

    Maps are stored as **float16** (2 bytes a value): enough for pictures and statistics (about
    3 significant digits), and it keeps a 299-px image at ~82 MB (see :attr:`FlowCapture.nbytes`).
    Checks that compare stored numbers (pointwise reconstruction, residual sum) therefore use a
    tolerance that follows from float16 rounding; pass ``dtype=np.float32`` for exact numbers.

Structure
    :func:`view_plan` reads the network's units (:meth:`xviz.model.Xception.units`) and lists, in
    forward order, each shown layer with its flow, block and kind; :func:`layer_table` adds the
    shapes at a given input size by a shape-only forward pass; :func:`architecture` sums up each
    block (input/output shape, parameters, residual type).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .activations import capture, io_shapes
from .model import FLOWS, SeparableConv2d, Xception

STORE_DTYPE = np.float16  # display precision of the cached maps (see the module docstring)

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


# -- the capture --------------------------------------------------------------------------------

@dataclass
class FlowCapture:
    """Everything the views show for one image, from one forward pass (read-only once built).

    Attributes:
        input_size: side of the network input in pixels.
        image: (S, S, 3) uint8, the picture the network saw (preprocessing undone).
        maps: {stored layer: (C, H, W) tensor of ``dtype``} (float16 unless asked otherwise), on the
            model's device (a GPU capture stays on the GPU: only what a view shows is copied
            back), in the network's memory layout. Read-only: shared by every session.
        plan: {layer: PlanEntry} of every layer that :meth:`map` can return, in forward order.
        bn: {BN layer: (scale, shift, terms)} float32 per channel; ``bn(y) = scale * y + shift``;
            ``terms`` = |beta| + |scale * mean|, the size of the intermediate terms of the network's
            own formula, which bounds how far the two ways of computing BN can differ.
        logits: (num_classes,) float32 of the same forward pass (empty for a backbone without head).
        conv_roundoff: unit roundoff of the network's own convolutions (2^-24 in float32; 2^-11
            where CUDA ran them in TF32), used by the checks' tolerances.
    """

    input_size: int
    image: np.ndarray
    maps: dict[str, torch.Tensor]
    plan: dict[str, PlanEntry]
    bn: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    logits: np.ndarray
    dtype: np.dtype = field(default=np.dtype(STORE_DTYPE))
    conv_roundoff: float = 2.0 ** -24

    @property
    def names(self) -> list[str]:
        return list(self.plan)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored maps (the BN vectors and the image add well under 1 MB)."""
        return sum(t.numel() * t.element_size() for t in self.maps.values()) + sum(
            sum(v.nbytes for v in vectors) for vectors in self.bn.values()) + self.image.nbytes

    def shape(self, name: str) -> tuple[int, int, int]:
        entry = self._entry(name)
        return tuple(self.maps[_root(self.plan, entry)].shape)

    def map(self, name: str) -> np.ndarray:
        """(C, H, W) float32 values of layer ``name``, stored or derived (BN or ReLU)."""
        entry = self._entry(name)
        if entry.stored:
            return self.maps[name].cpu().numpy().astype(np.float32)  # a copy: the cache stays intact
        src = self.map(entry.source)
        if entry.derive == "relu":
            return np.maximum(src, 0.0, out=src)
        scale, shift, _ = self.bn[name]
        src *= scale[:, None, None]
        src += shift[:, None, None]
        return src

    def channel(self, name: str, c: int) -> np.ndarray:
        """(H, W) float32 values of one channel of ``name``: cheaper than ``map(name)[c]``."""
        entry = self._entry(name)
        channels = self.shape(name)[0]
        if not 0 <= c < channels:
            raise IndexError(f"{name} has {channels} channels (0 to {channels - 1}); got {c}")
        if entry.stored:
            return self.maps[name][c].cpu().numpy().astype(np.float32)
        src = self.channel(entry.source, c)
        if entry.derive == "relu":
            return np.maximum(src, 0.0)
        scale, shift, _ = self.bn[name]
        return src * scale[c] + shift[c]

    def _entry(self, name: str) -> PlanEntry:
        entry = self.plan.get(name)
        if entry is None:
            raise KeyError(f"{name!r} is not among the captured layers; see FlowCapture.names")
        return entry


def _root(plan: dict[str, PlanEntry], entry: PlanEntry) -> str:
    while not entry.stored:
        entry = plan[entry.source]
    return entry.name


def _bn_affines(bns: dict[str, nn.BatchNorm2d]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inference-mode BatchNorm as ``scale * y + shift`` per channel (float32), and |beta| + |scale * mean|.

    Computed where the weights live and copied to the host in one transfer (one GPU sync, not 100).
    """
    parts = []
    for bn in bns.values():
        scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
        mean, beta = bn.running_mean.float(), bn.bias.detach().float()
        parts += [scale, beta - mean * scale, beta.abs() + (mean * scale).abs()]
    if not parts:
        return {}
    flat = torch.cat(parts).cpu().numpy()
    out, offset = {}, 0
    for name, bn in bns.items():
        c = bn.num_features
        out[name] = tuple(flat[offset + i * c: offset + (i + 1) * c] for i in range(3))
        offset += 3 * c
    return out


def _display(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """(1, 3, S, S) preprocessed input -> (S, S, 3) uint8 picture (as xviz.to_display, but cheap)."""
    pixels = ((x[0].detach().float() * std + mean).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().cpu().numpy()  # (3, S, S) -> (S, S, 3)


def capture_views(model, x: torch.Tensor, *, dtype=STORE_DTYPE) -> FlowCapture:
    """Run ONE forward pass of ``x`` and keep every map the flow views use (see the module docstring).

    Args:
        model: a :class:`xviz.LoadedModel`; its lock is held while the hooks are attached.
        x: (1, 3, S, S) preprocessed image (``model.preprocess(img)``).
        dtype: storage type of the maps; float16 (default) for display, float32 for exact numbers.

    Returns:
        a :class:`FlowCapture`; ~82 MB at 299 px in float16, ~19 MB at 150 px.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one preprocessed image of shape (1, 3, S, S), got {tuple(x.shape)}")
    net: Xception = model.net
    plan = view_plan(net)
    names = [e.name for e in plan if e.stored]
    torch_dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]
    # each output is converted inside its hook, while it is still in cache, in the network's memory
    # layout (channels-last): a (C, H, W) array whose memory runs channel-fastest. Converting after
    # the forward costs ~0.2x of a forward pass more, and to C order more still (bench/bench_capture.py).
    with model.lock, capture(net, names, keep=lambda t: t[0].to(torch_dtype, copy=True)) as store, torch.no_grad():
        logits = net(x.to(next(net.parameters()).device))
    maps = {name: store.pop(name) for name in names}
    device = next(net.parameters()).device
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    bn = _bn_affines({e.name: net.layer(e.name) for e in plan if e.derive == "bn"})
    pre = getattr(model, "preprocessing", None)
    image = _display(x, pre.mean, pre.std) if pre is not None else _display(x, 0.5, 0.5)
    return FlowCapture(int(x.shape[-1]), image, maps, {e.name: e for e in plan}, bn,
                       logits[0].float().cpu().numpy() if logits.dim() == 2 else np.zeros(0, np.float32),
                       np.dtype(dtype), 2.0 ** -11 if tf32 else 2.0 ** -24)


# -- per-layer statistics and channel order -----------------------------------------------------

@dataclass(frozen=True)
class LayerStats:
    """Numbers that describe one layer's output for one image."""

    shape: tuple[int, int, int]  # (C, H, W)
    zero_after_relu: float  # share of values <= 0: exactly the zeros for a ReLU layer, else what a ReLU would zero
    exact_zeros: float  # share of values that are exactly 0
    vmin: float
    vmax: float
    mean: float

    @property
    def spatial(self) -> str:
        return f"{self.shape[1]}×{self.shape[2]}"


def layer_stats(maps: np.ndarray) -> LayerStats:
    """Shape, sparsity and value range of a (C, H, W) map."""
    if maps.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {maps.shape}")
    n = maps.size
    return LayerStats(tuple(maps.shape), float(np.count_nonzero(maps <= 0) / n),
                      float(np.count_nonzero(maps == 0) / n), float(maps.min()), float(maps.max()),
                      float(maps.mean(dtype=np.float64)))


SORTS = {
    "index": "channel number",
    "mean": "mean activation, highest first",
    "sparsity": "sparsity, fewest zeros first",
    "sparsity_desc": "sparsity, most zeros first",
}


def channel_order(maps: np.ndarray, by: str = "index") -> np.ndarray:
    """Channel indices of a (C, H, W) map in the order ``by`` (a key of :data:`SORTS`).

    Sparsity counts values <= 0, i.e. what is zero after a ReLU. Ties keep channel order.
    """
    c = maps.shape[0]
    flat = maps.reshape(c, -1)
    if by == "index":
        return np.arange(c)
    if by == "mean":
        return np.argsort(-flat.mean(axis=1, dtype=np.float64), kind="stable")
    if by in ("sparsity", "sparsity_desc"):
        zeros = np.count_nonzero(flat <= 0, axis=1)
        return np.argsort(zeros if by == "sparsity" else -zeros, kind="stable")
    raise ValueError(f"unknown channel order {by!r}; choose one of {', '.join(SORTS)}")


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
