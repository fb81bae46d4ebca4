"""Xception (Chollet, CVPR 2017) as the paper draws it: entry flow, middle flow, exit flow.

Numerically this is ``keras.applications.Xception``: TensorFlow 'same' padding (the extra pixel goes
after, which matters for the stride-2 max-pools on even sizes), BatchNorm eps 1e-3, no bias in any
conv, no non-linearity between depthwise and pointwise (paper, section 4.7).

Every module that Keras names carries that name's suffix as its attribute, so the Keras name
``block5_sepconv2_act`` is the module ``middle_flow.block5.sepconv2_act``. ``LAYERS``-style lookups
go through :meth:`Xception.layer` and :meth:`Xception.layer_names`. Names Keras leaves anonymous get
documented ones: ``blockN_residual`` / ``blockN_residual_bn`` (the 1x1 shortcut conv and its BN),
``blockN_add`` (the block's output after the residual add) and ``blockN_sepconvK_depthwise`` (the
depthwise half of a separable conv; the pointwise half's output is ``blockN_sepconvK`` itself).

ReLUs are never in-place and never shared, and the residual add is an out-of-place module: backward
hooks (captum, Grad-CAM) break on in-place ops, and per-layer capture needs one module per use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # Keras BatchNormalization default; PyTorch's 1e-5 drifts from the published numbers
BN_MOMENTUM = 0.01  # Keras momentum 0.99 expressed the PyTorch way; only matters when fine-tuning
MIN_INPUT_SIZE = 71  # smallest input for which every stride-2 stage still has a pixel (Keras says the same)


@dataclass(frozen=True)
class HeadLayer:
    """One layer of the classifier head that follows global average pooling."""

    kind: str  # "dense" or "dropout"
    name: str  # Keras name of the layer, shown to users ("predictions", "dense_1", ...)
    out_features: int = 0  # dense only: number of outputs
    activation: str = "linear"  # dense only: "linear", "relu", ... (a final softmax is dropped: we keep logits)
    rate: float = 0.0  # dropout only: drop probability (inactive in eval mode)


@dataclass(frozen=True)
class XceptionConfig:
    """Everything that varies between Xception checkpoints; the backbone itself never does."""

    num_classes: int = 1000  # outputs of the last head layer (0: no head, features only)
    head: tuple[HeadLayer, ...] = field(default=())  # layers after avg_pool; empty: one Dense "predictions"
    pool_name: str = "avg_pool"  # Keras name of the global average pooling layer
    bn_eps: float = BN_EPS  # BatchNorm epsilon; the Keras weights were trained with 1e-3

    def head_layers(self) -> tuple[HeadLayer, ...]:
        if self.head:
            return self.head
        if self.num_classes == 0:
            return ()
        return (HeadLayer("dense", "predictions", self.num_classes),)


@dataclass(frozen=True)
class Unit:
    """One layer of the network, named as Keras names it: the one description of the structure.

    :meth:`Xception.units` lists them once, in forward order; the Keras-name map, the capture plan
    and the separable-conv list (xviz.flows), the attribution stages, the parameter ledger and the
    architecture summary all read this list instead of walking the modules.
    """

    name: str  # Keras name ("block5_sepconv1_depthwise")
    kind: str  # a key of UNIT_KINDS
    flow: str  # "entry_flow", "middle_flow", "exit_flow" or "head"
    block: str  # "block1" ... "block14", or "head"
    path: str  # dotted module path ("middle_flow.block5.sepconv1.depthwise")
    inputs: tuple[str, ...]  # the units whose outputs it reads; ("",) for the input image
    stride: int  # total downsampling from the input image to this unit's output


UNIT_KINDS = {
    "conv": "regular convolution",
    "bn": "batch normalisation",
    "relu": "ReLU",
    "depthwise": "depthwise half of a separable convolution",
    "pointwise": "pointwise half of a separable convolution (its output is the Keras layer's)",
    "maxpool": "3x3 max-pool, stride 2",
    "shortcut": "1x1 convolution on the residual shortcut",
    "shortcut_bn": "batch normalisation on the residual shortcut",
    "add": "residual sum",
    "avgpool": "global average pooling",
    "dense": "fully connected layer",
    "dropout": "dropout (inactive in eval mode)",
}
IN = ""  # in a block's unit specs: the block's input (the previous block's output)


# Widths of the separable convs per block (paper, Figure 5) and whether the block downsamples.
ENTRY_BLOCKS = {2: (128, 128), 3: (256, 256), 4: (728, 728)}
MIDDLE_BLOCKS = tuple(range(5, 13))  # eight identical residual blocks of three 728-channel sepconvs
MIDDLE_WIDTH = 728
EXIT_BLOCK13 = (728, 1024)
EXIT_BLOCK14 = (1536, 2048)
FLOWS = ("entry_flow", "middle_flow", "exit_flow")


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' mode for one spatial axis.

    TF computes ``total = max((ceil(size / stride) - 1) * stride + kernel - size, 0)`` and puts
    ``total // 2`` before, the rest after; PyTorch's symmetric ``padding=`` can't express the odd
    total that a stride-2 3x3 window gets on an even size (tensorflow/python/ops/nn_ops.py).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPool2dSame(nn.Module):
    """``MaxPooling2D(3, strides=2, padding='same')``: padding computed per input size, counted as -inf."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class Add(nn.Module):
    """Residual sum as a module, so a hook can observe each block's output."""

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return x + shortcut


class SeparableConv2d(nn.Module):
    """Depthwise separable convolution: a 3x3 filter per input channel, then a 1x1 mix of channels.

    No bias and no activation between the two steps, as in Keras ``SeparableConv2D`` and the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        # stride 1 with an odd kernel: TF 'same' padding is symmetric, so plain padding= is exact
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=BN_MOMENTUM)


class Stem(nn.Module):
    """Keras block1: two plain 3x3 convs (the first with stride 2), each followed by BN and ReLU."""

    def __init__(self, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2, bias=False)  # 'valid' padding, as in Keras
        self.conv1_bn = _bn(32, eps)
        self.conv1_act = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.conv2_bn = _bn(64, eps)
        self.conv2_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_act(self.conv1_bn(self.conv1(x)))
        return self.conv2_act(self.conv2_bn(self.conv2(x)))

    def unit_specs(self) -> list[tuple[str, str, tuple[str, ...], int]]:
        """(attribute, kind, inputs, stride) in forward order; see :meth:`Xception.units`."""
        return [("conv1", "conv", (IN,), self.conv1.stride[0]), ("conv1_bn", "bn", ("conv1",), 1),
                ("conv1_act", "relu", ("conv1_bn",), 1), ("conv2", "conv", ("conv1_act",), self.conv2.stride[0]),
                ("conv2_bn", "bn", ("conv2",), 1), ("conv2_act", "relu", ("conv2_bn",), 1)]


class Block(nn.Module):
    """A residual block of the entry, middle or exit flow (Keras blocks 2 to 13).

    Each unit is ReLU -> SeparableConv2d -> BN; the first ReLU is skipped in block 2, which follows
    the stem's own ReLU. Downsampling blocks end in a 3x3/2 max-pool and take a strided 1x1 conv +
    BN as shortcut; the middle-flow blocks add their input unchanged.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], *, downsample: bool,
                 relu_first: bool = True, eps: float = BN_EPS):
        super().__init__()
        self.num_units = len(widths)
        channels = in_channels
        for k, width in enumerate(widths, start=1):
            if k > 1 or relu_first:
                setattr(self, f"sepconv{k}_act", nn.ReLU())
            setattr(self, f"sepconv{k}", SeparableConv2d(channels, width))
            setattr(self, f"sepconv{k}_bn", _bn(width, eps))
            channels = width
        if downsample:
            self.pool = MaxPool2dSame(3, 2)
            # 1x1/2 needs no padding in TF 'same' mode, and its taps line up with the pool windows
            self.residual = nn.Conv2d(in_channels, channels, 1, stride=2, bias=False)
            self.residual_bn = _bn(channels, eps)
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for k in range(1, self.num_units + 1):
            act = getattr(self, f"sepconv{k}_act", None)
            if act is not None:
                y = act(y)
            y = getattr(self, f"sepconv{k}_bn")(getattr(self, f"sepconv{k}")(y))
        if hasattr(self, "pool"):
            return self.add(self.pool(y), self.residual_bn(self.residual(x)))
        return self.add(y, x)

    def unit_specs(self) -> list[tuple[str, str, tuple[str, ...], int]]:
        """(attribute, kind, inputs, stride) in forward order; see :meth:`Xception.units`."""
        specs, y = [], IN
        for k in range(1, self.num_units + 1):
            if hasattr(self, f"sepconv{k}_act"):
                specs.append((f"sepconv{k}_act", "relu", (y,), 1))
                y = f"sepconv{k}_act"
            specs += [(f"sepconv{k}_depthwise", "depthwise", (y,), 1),
                      (f"sepconv{k}", "pointwise", (f"sepconv{k}_depthwise",), 1),
                      (f"sepconv{k}_bn", "bn", (f"sepconv{k}",), 1)]
            y = f"sepconv{k}_bn"
        if hasattr(self, "pool"):
            return specs + [("pool", "maxpool", (y,), self.pool.stride),
                            ("residual", "shortcut", (IN,), self.residual.stride[0]),
                            ("residual_bn", "shortcut_bn", ("residual",), 1),
                            ("add", "add", ("pool", "residual_bn"), 1)]
        return specs + [("add", "add", (y, IN), 1)]


class ExitTail(nn.Module):
    """Keras block14: SeparableConv2d -> BN -> ReLU, twice, widening to 2048 channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int], eps: float):
        super().__init__()
        self.sepconv1 = SeparableConv2d(in_channels, widths[0])
        self.sepconv1_bn = _bn(widths[0], eps)
        self.sepconv1_act = nn.ReLU()
        self.sepconv2 = SeparableConv2d(widths[0], widths[1])
        self.sepconv2_bn = _bn(widths[1], eps)
        self.sepconv2_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sepconv1_act(self.sepconv1_bn(self.sepconv1(x)))
        return self.sepconv2_act(self.sepconv2_bn(self.sepconv2(x)))

    def unit_specs(self) -> list[tuple[str, str, tuple[str, ...], int]]:
        """(attribute, kind, inputs, stride) in forward order; see :meth:`Xception.units`."""
        specs, y = [], IN
        for k in (1, 2):
            specs += [(f"sepconv{k}_depthwise", "depthwise", (y,), 1),
                      (f"sepconv{k}", "pointwise", (f"sepconv{k}_depthwise",), 1),
                      (f"sepconv{k}_bn", "bn", (f"sepconv{k}",), 1),
                      (f"sepconv{k}_act", "relu", (f"sepconv{k}_bn",), 1)]
            y = f"sepconv{k}_act"
        return specs


class Dense(nn.Module):
    """Keras ``Dense(units, activation)``: one module so its output matches the Keras layer's."""

    ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                   "sigmoid": nn.Sigmoid, "elu": nn.ELU, "selu": nn.SELU, "swish": nn.SiLU,
                   "silu": nn.SiLU}

    def __init__(self, in_features: int, out_features: int, activation: str = "linear"):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"unsupported Dense activation {activation!r}; "
                             f"supported: {', '.join(sorted(self.ACTIVATIONS))}")
        self.linear = nn.Linear(in_features, out_features)
        self.act = self.ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)


class Xception(nn.Module):
    """Xception: ``forward_features`` (the three flows) then ``forward_head`` (pool + classifier)."""

    def __init__(self, config: XceptionConfig = XceptionConfig()):
        super().__init__()
        self.config = config
        eps = config.bn_eps

        self.entry_flow = nn.Sequential()
        self.entry_flow.add_module("block1", Stem(eps))
        channels = 64
        for index, widths in ENTRY_BLOCKS.items():
            self.entry_flow.add_module(
                f"block{index}", Block(channels, widths, downsample=True, relu_first=index != 2, eps=eps))
            channels = widths[-1]

        self.middle_flow = nn.Sequential()
        for index in MIDDLE_BLOCKS:
            self.middle_flow.add_module(
                f"block{index}", Block(MIDDLE_WIDTH, (MIDDLE_WIDTH,) * 3, downsample=False, eps=eps))

        self.exit_flow = nn.Sequential()
        self.exit_flow.add_module("block13", Block(MIDDLE_WIDTH, EXIT_BLOCK13, downsample=True, eps=eps))
        self.exit_flow.add_module("block14", ExitTail(EXIT_BLOCK13[-1], EXIT_BLOCK14, eps))
        self.num_features = EXIT_BLOCK14[-1]

        self.head = nn.Sequential()
        self.head.add_module(config.pool_name, GlobalAvgPool())
        features = self.num_features
        for layer in config.head_layers():
            if layer.kind == "dense":
                self.head.add_module(layer.name, Dense(features, layer.out_features, layer.activation))
                features = layer.out_features
            elif layer.kind == "dropout":
                self.head.add_module(layer.name, nn.Dropout(layer.rate))
            else:
                raise ValueError(f"unknown head layer kind {layer.kind!r} (expected 'dense' or 'dropout')")
        self.num_classes = features if config.head_layers() else 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed image -> (N, 2048, h, w) output of ``block14_sepconv2_act``."""
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"Xception needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                             f"pixels, got {tuple(x.shape[-2:])}")
        return self.exit_flow(self.middle_flow(self.entry_flow(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits; ``pre_logits=True`` stops after global average pooling."""
        if pre_logits:
            return self.head[0](x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- the structure as data, and Keras names ---------------------------------------------------

    def units(self) -> list[Unit]:
        """Every layer as a :class:`Unit`, in forward order (built once: the structure is fixed
        after ``__init__``, and a hooked capture looks up ~90 names)."""
        units = self.__dict__.get("_units")
        if units is None:
            units = self.__dict__["_units"] = _build_units(self)
        return units

    def _names(self) -> dict[str, str]:
        names = self.__dict__.get("_keras_name_map")
        if names is None:
            names = self.__dict__["_keras_name_map"] = {u.name: u.path for u in self.units()}
        return names

    def layer_names(self) -> list[str]:
        """Every addressable layer, in forward order, by its Keras (or documented) name."""
        return list(self._names())

    def layer(self, name: str) -> nn.Module:
        """The module whose output is the Keras layer ``name`` (e.g. ``block14_sepconv2_act``)."""
        return self.get_submodule(self.module_path(name))

    def module_path(self, name: str) -> str:
        """Dotted module path of a Keras layer name (``block5_sepconv1`` -> ``middle_flow.block5.sepconv1``)."""
        path = self._names().get(name)
        if path is None:
            raise KeyError(f"no layer named {name!r}; see Xception.layer_names()")
        return path

    def block_paths(self) -> dict[str, str]:
        """{block: module path} in forward order: ``{"block1": "entry_flow.block1", ..., "head": "head"}``."""
        return {u.block: "head" if u.flow == "head" else f"{u.flow}.{u.block}" for u in self.units()}


def _build_units(net: Xception) -> list[Unit]:
    """The units of every block (each block lists its own, :meth:`Block.unit_specs`), then the head."""
    units: list[Unit] = []
    last, stride = IN, 1  # the previous block's output, and its total stride
    for flow in FLOWS:
        for block_name, block in getattr(net, flow).named_children():
            strides = {IN: stride}
            for attr, kind, inputs, own_stride in block.unit_specs():
                # a separable conv's depthwise half is a submodule: blockN_sepconvK_depthwise -> sepconvK.depthwise
                module = attr[:-len("_depthwise")] + ".depthwise" if kind == "depthwise" else attr
                strides[attr] = strides[inputs[0]] * own_stride
                units.append(Unit(f"{block_name}_{attr}", kind, flow, block_name, f"{flow}.{block_name}.{module}",
                                  tuple(f"{block_name}_{i}" if i else last for i in inputs), strides[attr]))
            last, stride = units[-1].name, strides[attr]
    layers = [(net.config.pool_name, "avgpool")] + [(h.name, h.kind) for h in net.config.head_layers()]
    for name, kind in layers:
        units.append(Unit(name, kind, "head", "head", f"head.{name}", (last,), stride))
        last = name
    return units


def count_parameters(net: nn.Module) -> int:
    """Learnable weights: the paper's (and Keras' "trainable") count.

    BatchNorm running statistics are buffers, not counted. ``requires_grad`` is ignored on purpose:
    ``load_model`` freezes the weights for inference, which doesn't make them any less the model's.
    """
    return sum(p.numel() for p in net.parameters())
