"""The networks Xception is compared with, built layer for layer like ``keras.applications``.

MobileNet (V1, alpha = 1), MobileNetV2 (alpha = 1), EfficientNet-B0, Inception V3, ResNet-50 and
VGG16, each following its Keras application (keras/src/applications/<name>.py) in layers, widths,
strides, padding, biases and BatchNorm placement, so trainable parameter counts equal Keras' exactly
(``weights=None``, default heads). Xception is :class:`xviz.model.Xception`.

No weights: these exist to be counted and timed. Build them on the ``meta`` device to count (shapes
without arithmetic or memory), on the CPU to time (random init: the time of a dense fp32 forward does
not depend on the values).

Module names are Keras layer names. The repeated units sit in ``net.blocks`` (an ``nn.Sequential``
of Keras-named blocks) and nest the rest of the name: MobileNetV2's ``blocks.block_3.expand`` is
Keras' ``block_3_expand``, EfficientNet's ``blocks.block2a.se_reduce`` is ``block2a_se_reduce``,
ResNet's ``blocks.conv2_block1.1_conv`` is ``conv2_block1_1_conv``. Keras leaves Inception V3's
convs anonymous (``conv2d_57``); here they are named by module and branch (``mixed5.branch7x7_2``)
with TF-slim's stem names (``Conv2d_2a_3x3``).

Example:
    >>> from xviz import zoo
    >>> net = zoo.build("mobilenet_v2", device="meta")
    >>> sum(p.numel() for p in net.parameters())
    3504872
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model import BN_MOMENTUM, Add, GlobalAvgPool, Xception, XceptionConfig, tf_same_padding


@dataclass(frozen=True)
class Spec:
    """What the comparison needs to know about a network besides its modules."""

    title: str  # as Keras applications' table writes it
    input_size: int  # native (ImageNet training) side of the square input
    separable: bool  # built from depthwise separable convolutions
    top1: float  # published ImageNet top-1 (TOP1_SOURCE), single centre crop
    paper: str  # where the architecture comes from


TOP1_SOURCE = ("Keras Applications, “Available models” table (keras.io/api/applications): "
               "ImageNet validation top-1 of the Keras weights")

SPECS: dict[str, Spec] = {
    "xception": Spec("Xception", 299, True, 0.790, "Chollet, CVPR 2017"),
    "inception_v3": Spec("InceptionV3", 299, False, 0.779, "Szegedy et al., CVPR 2016"),
    "resnet50": Spec("ResNet50", 224, False, 0.749, "He et al., CVPR 2016"),
    "vgg16": Spec("VGG16", 224, False, 0.713, "Simonyan & Zisserman, ICLR 2015"),
    "mobilenet": Spec("MobileNet", 224, True, 0.704, "Howard et al., 2017"),
    "mobilenet_v2": Spec("MobileNetV2", 224, True, 0.713, "Sandler et al., CVPR 2018"),
    "efficientnet_b0": Spec("EfficientNetB0", 224, True, 0.771, "Tan & Le, ICML 2019"),
}
NAMES = tuple(SPECS)


def build(name: str, num_classes: int = 1000, device: str | torch.device | None = None) -> nn.Module:
    """The network ``name`` (one of :data:`NAMES`) with a ``num_classes`` head, in eval mode.

    Args:
        name: e.g. ``"mobilenet_v2"``; see :data:`NAMES` and :data:`SPECS` for titles and input sizes.
        num_classes: outputs of the classifier (Keras' ``classes``).
        device: ``"meta"`` to count (no memory, no init), ``None``/``"cpu"`` for real random init.

    Raises:
        ValueError: an unknown name.
    """
    builders = {"xception": lambda n: Xception(XceptionConfig(num_classes=n)), "inception_v3": InceptionV3,
                "resnet50": ResNet50, "vgg16": VGG16, "mobilenet": MobileNet, "mobilenet_v2": MobileNetV2,
                "efficientnet_b0": EfficientNet}
    if name not in builders:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NAMES)}")
    with torch.device(device or "cpu"):
        return builders[name](num_classes).eval()


# -- shared pieces -----------------------------------------------------------------------------

class Conv2dSame(nn.Conv2d):
    """Keras ``Conv2D(padding='same')`` at any stride: TF pads ``total // 2`` before, the rest after.

    Keras also writes ``ZeroPadding2D(imagenet_utils.correct_pad(x, k))`` + a 'valid' conv for the
    stride-2 convs of MobileNetV2 and EfficientNet; ``correct_pad`` is exactly TF's 'same' padding at
    stride 2 ((k//2 - 1, k//2) on even sizes, (k//2, k//2) on odd), so this class stands for both.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = tf_same_padding(x.shape[-2], kh, sh)
        left, right = tf_same_padding(x.shape[-1], kw, sw)
        if (top, left) == (bottom, right):  # symmetric: let the conv pad, no copy of the input
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, padding: str = "same",
         groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """Keras ``Conv2D``/``DepthwiseConv2D`` with ``use_bias=bias``; 'valid' means no padding."""
    if padding == "same":
        return Conv2dSame(cin, cout, k, stride, groups=groups, bias=bias)
    return nn.Conv2d(cin, cout, k, stride, groups=groups, bias=bias)


def depthwise(channels: int, k: int, stride: int = 1, padding: str = "same") -> nn.Conv2d:
    """Keras ``DepthwiseConv2D(k, use_bias=False)``: one k x k filter per channel."""
    return conv(channels, channels, k, stride, padding, groups=channels)


def bn(channels: int, eps: float = 1e-3) -> nn.BatchNorm2d:
    """Keras ``BatchNormalization`` (epsilon 1e-3 unless the application says otherwise)."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=BN_MOMENTUM)


class BatchNorm2dNoScale(nn.BatchNorm2d):
    """Keras ``BatchNormalization(scale=False)``: a learned shift (beta) but no learned scale (gamma).

    Inception V3 uses it after every conv (the ReLU that follows makes a scale redundant), which is why
    it has 23,817,352 trainable parameters and not 23,834,568.
    """

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__(channels, eps=eps, momentum=BN_MOMENTUM, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, self.training,
                            self.momentum, self.eps)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``v``.

    From the TF-slim MobileNet code, as ``_make_divisible`` in Keras' mobilenet_v2.py and torchvision.
    """
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# -- VGG16 (keras/src/applications/vgg16.py) ---------------------------------------------------

# convs per block and their width (Simonyan & Zisserman 2015, Table 1, configuration D)
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(nn.Module):
    """Five blocks of 3x3 'same' convs with bias and ReLU, each closed by a 2x2 max-pool, then
    Flatten -> fc1 4096 -> fc2 4096 -> predictions. The head fixes the input at 224 x 224."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.blocks = nn.Sequential()
        cin = 3
        for b, (n, width) in enumerate(VGG16_BLOCKS, start=1):
            block = nn.Sequential()
            for i in range(1, n + 1):
                block.add_module(f"conv{i}", conv(cin, width, 3, bias=True))
                block.add_module(f"conv{i}_relu", nn.ReLU())  # Keras: Conv2D(activation="relu")
                cin = width
            block.add_module("pool", nn.MaxPool2d(2, 2))
            self.blocks.add_module(f"block{b}", block)
        self.flatten = nn.Flatten()  # Keras flattens (H, W, C); the order only matters for weights
        self.fc1, self.fc1_relu = nn.Linear(7 * 7 * 512, 4096), nn.ReLU()
        self.fc2, self.fc2_relu = nn.Linear(4096, 4096), nn.ReLU()
        self.predictions = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.blocks(x))
        x = self.fc2_relu(self.fc2(self.fc1_relu(self.fc1(x))))
        return self.predictions(x)


# -- ResNet-50 (keras/src/applications/resnet.py, v1) --------------------------------------------

RESNET_EPS = 1.001e-5
# (bottleneck width, blocks, stride of the first block) per stage conv2..conv5 (He et al. 2016, Table 1)
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


class Bottleneck(nn.Module):
    """Keras ``residual_block_v1``: 1x1 (carries the stride) -> 3x3 -> 1x1 to 4x width, every conv
    with bias, BN after each; the first block of a stage projects its shortcut with ``0_conv``."""

    def __init__(self, cin: int, width: int, stride: int, project: bool):
        super().__init__()
        if project:
            self.add_module("0_conv", conv(cin, 4 * width, 1, stride, bias=True))
            self.add_module("0_bn", bn(4 * width, RESNET_EPS))
        for i, (a, b, k, s) in enumerate(((cin, width, 1, stride), (width, width, 3, 1), (width, 4 * width, 1, 1)),
                                         start=1):
            self.add_module(f"{i}_conv", conv(a, b, k, s, bias=True))
            self.add_module(f"{i}_bn", bn(b, RESNET_EPS))
            if i < 3:
                self.add_module(f"{i}_relu", nn.ReLU())
        self.add = Add()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._modules
        shortcut = m["0_bn"](m["0_conv"](x)) if "0_conv" in m else x
        y = m["1_relu"](m["1_bn"](m["1_conv"](x)))
        y = m["2_relu"](m["2_bn"](m["2_conv"](y)))
        y = m["3_bn"](m["3_conv"](y))
        return self.out(self.add(y, shortcut))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1_conv = nn.Conv2d(3, 64, 7, 2, padding=3)  # Keras: ZeroPadding2D(3) + 'valid', with bias
        self.conv1_bn, self.conv1_relu = bn(64, RESNET_EPS), nn.ReLU()
        self.pool1_pool = nn.MaxPool2d(3, 2, padding=1)  # ZeroPadding2D(1): zeros, fine after a ReLU
        self.blocks = nn.Sequential()
        cin = 64
        for s, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=2):
            for b in range(1, blocks + 1):
                self.blocks.add_module(f"conv{s}_block{b}", Bottleneck(cin, width, stride if b == 1 else 1, b == 1))
                cin = 4 * width
        self.avg_pool = GlobalAvgPool()
        self.predictions = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_pool(self.conv1_relu(self.conv1_bn(self.conv1_conv(x))))
        return self.predictions(self.avg_pool(self.blocks(x)))


# -- Inception V3 (keras/src/applications/inception_v3.py) ---------------------------------------

class ConvBN(nn.Module):
    """Keras' ``conv2d_bn``: a bias-free conv, BN without scale, ReLU."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, padding: str = "same"):
        super().__init__()
        self.conv = conv(cin, cout, k, stride, padding)
        self.bn = BatchNorm2dNoScale(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class AvgPoolSame(nn.Module):
    """``AveragePooling2D(3, strides=1, padding='same')``: TF averages over the window's real pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class Mixed(nn.Module):
    """One Inception module: parallel branches of ``ConvBN`` chains (and a pool), concatenated.

    Each branch is (name, source, layers, output): ``source`` None reads the module's input, else the
    end of an earlier branch (mixed9/10 split a branch into a 1x3 and a 3x1 conv); ``output`` says
    whether the branch's end is concatenated. A layer is (out channels, kernel[, stride, padding]) or
    "avg" / "max" for a pool. A chain of n layers is named ``name_1`` .. ``name_n``, one layer ``name``.
    """

    def __init__(self, cin: int, branches: tuple):
        super().__init__()
        self.branches = branches
        self.out_channels = 0
        ends = {}
        for name, source, layers, output in branches:
            channels = cin if source is None else ends[source]
            for key, layer in zip(self._keys(name, layers), layers):
                if layer == "avg":
                    self.add_module(key, AvgPoolSame())
                elif layer == "max":
                    self.add_module(key, nn.MaxPool2d(3, 2))  # passes its input's channels through
                else:
                    cout, k, stride, padding = (*layer, 1, "same") if len(layer) == 2 else layer
                    self.add_module(key, ConvBN(channels, cout, k, stride, padding))
                    channels = cout
            ends[name] = channels
            self.out_channels += channels if output else 0

    @staticmethod
    def _keys(name: str, layers: tuple) -> list[str]:
        return [name] if len(layers) == 1 else [f"{name}_{i}" for i in range(1, len(layers) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ends, outs = {}, []
        for name, source, layers, output in self.branches:
            y = x if source is None else ends[source]
            for key in self._keys(name, layers):
                y = self._modules[key](y)
            ends[name] = y
            if output:
                outs.append(y)
        return torch.cat(outs, dim=1)  # along channels, in Keras' order


def _branch(name: str, *layers, source: str | None = None, output: bool = True) -> tuple:
    return name, source, layers, output


def _mixed_35(pool: int) -> tuple:  # mixed0-2, 35x35
    return (_branch("branch1x1", (64, 1)), _branch("branch5x5", (48, 1), (64, 5)),
            _branch("branch3x3dbl", (64, 1), (96, 3), (96, 3)), _branch("branch_pool", "avg", (pool, 1)))


def _mixed_17(c7: int) -> tuple:  # mixed4-7, 17x17: 7x7 factorized into 1x7 and 7x1
    return (_branch("branch1x1", (192, 1)), _branch("branch7x7", (c7, 1), (c7, (1, 7)), (192, (7, 1))),
            _branch("branch7x7dbl", (c7, 1), (c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))),
            _branch("branch_pool", "avg", (192, 1)))


_MIXED_8 = (  # mixed9-10, 8x8: each 3x3 ends in a parallel 1x3 and 3x1 pair
    _branch("branch1x1", (320, 1)),
    _branch("branch3x3", (384, 1), output=False),
    _branch("branch3x3_a", (384, (1, 3)), source="branch3x3"),
    _branch("branch3x3_b", (384, (3, 1)), source="branch3x3"),
    _branch("branch3x3dbl", (448, 1), (384, 3), output=False),
    _branch("branch3x3dbl_a", (384, (1, 3)), source="branch3x3dbl"),
    _branch("branch3x3dbl_b", (384, (3, 1)), source="branch3x3dbl"),
    _branch("branch_pool", "avg", (192, 1)))

INCEPTION_V3_MIXED = (
    ("mixed0", _mixed_35(32)), ("mixed1", _mixed_35(64)), ("mixed2", _mixed_35(64)),
    ("mixed3", (_branch("branch3x3", (384, 3, 2, "valid")),  # grid reduction 35 -> 17
                _branch("branch3x3dbl", (64, 1), (96, 3), (96, 3, 2, "valid")), _branch("branch_pool", "max"))),
    ("mixed4", _mixed_17(128)), ("mixed5", _mixed_17(160)), ("mixed6", _mixed_17(160)), ("mixed7", _mixed_17(192)),
    ("mixed8", (_branch("branch3x3", (192, 1), (320, 3, 2, "valid")),  # grid reduction 17 -> 8
                _branch("branch7x7x3", (192, 1), (192, (1, 7)), (192, (7, 1)), (192, 3, 2, "valid")),
                _branch("branch_pool", "max"))),
    ("mixed9", _MIXED_8), ("mixed10", _MIXED_8),
)


class InceptionV3(nn.Module):
    """Szegedy et al. 2016 as Keras builds it: a 5-conv stem with two max-pools, 11 Inception modules
    (three 35x35, a grid reduction, four 17x17 with factorized 7x7s, a reduction, two 8x8), avg_pool,
    predictions. Stem names are TF-slim's."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, 2, "valid")
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3, 1, "valid")
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3)
        self.MaxPool_3a_3x3 = nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1, 1, "valid")
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3, 1, "valid")
        self.MaxPool_5a_3x3 = nn.MaxPool2d(3, 2)
        self.blocks = nn.Sequential()
        cin = 192
        for name, branches in INCEPTION_V3_MIXED:
            block = Mixed(cin, branches)
            self.blocks.add_module(name, block)
            cin = block.out_channels
        self.avg_pool = GlobalAvgPool()
        self.predictions = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.MaxPool_3a_3x3(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.MaxPool_5a_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        return self.predictions(self.avg_pool(self.blocks(x)))


# -- MobileNet V1 (keras/src/applications/mobilenet.py, alpha = 1, depth_multiplier = 1) ----------

# (pointwise width, depthwise stride) of the 13 depthwise separable blocks (Howard et al. 2017, Table 1)
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNet(nn.Module):
    """conv1 3x3/2 -> 13 x (depthwise 3x3 -> BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6) -> pool ->
    dropout -> ``conv_preds`` (a 1x1 conv with bias on the pooled 1x1 map: Keras' classifier)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 1e-3):
        super().__init__()
        self.conv1, self.conv1_bn, self.conv1_relu = conv(3, 32, 3, 2), bn(32), nn.ReLU6()
        cin = 32
        self.blocks = []
        for i, (cout, stride) in enumerate(MOBILENET_BLOCKS, start=1):
            if stride == 2:  # Keras pads (0, 1) on both axes, whatever the size, then a 'valid' conv
                self.add_module(f"conv_pad_{i}", nn.ZeroPad2d((0, 1, 0, 1)))
            self.add_module(f"conv_dw_{i}", depthwise(cin, 3, stride, "same" if stride == 1 else "valid"))
            self.add_module(f"conv_dw_{i}_bn", bn(cin))
            self.add_module(f"conv_dw_{i}_relu", nn.ReLU6())
            self.add_module(f"conv_pw_{i}", conv(cin, cout, 1))
            self.add_module(f"conv_pw_{i}_bn", bn(cout))
            self.add_module(f"conv_pw_{i}_relu", nn.ReLU6())
            self.blocks.append(i)
            cin = cout
        self.avg_pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.conv_preds = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_relu(self.conv1_bn(self.conv1(x)))
        m = self._modules
        for i in self.blocks:
            if f"conv_pad_{i}" in m:
                x = m[f"conv_pad_{i}"](x)
            x = m[f"conv_dw_{i}_relu"](m[f"conv_dw_{i}_bn"](m[f"conv_dw_{i}"](x)))
            x = m[f"conv_pw_{i}_relu"](m[f"conv_pw_{i}_bn"](m[f"conv_pw_{i}"](x)))
        x = self.dropout(self.avg_pool(x))[:, :, None, None]  # (N, C) -> (N, C, 1, 1), Keras' keepdims
        return self.conv_preds(x).flatten(1)  # Keras' reshape_2: (N, classes, 1, 1) -> (N, classes)


# -- MobileNetV2 (keras/src/applications/mobilenet_v2.py, alpha = 1) ------------------------------

# t (expansion), c (output channels), n (repeats), s (stride of the first): Sandler et al. 2018, Table 2
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """expand 1x1 (t x wider) -> depthwise 3x3 -> project 1x1 back down, linear (no ReLU after
    ``project``: the "linear bottleneck"); the input is added when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, eps: float = 1e-3):
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:  # Keras: block 0 (named expanded_conv) has no expand conv
            self.expand, self.expand_BN, self.expand_relu = conv(cin, hidden, 1), bn(hidden, eps), nn.ReLU6()
        self.depthwise = depthwise(hidden, 3, stride)
        self.depthwise_BN, self.depthwise_relu = bn(hidden, eps), nn.ReLU6()
        self.project, self.project_BN = conv(hidden, cout, 1), bn(cout, eps)
        self.residual = cin == cout and stride == 1
        if self.residual:
            self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand_relu(self.expand_BN(self.expand(x))) if hasattr(self, "expand") else x
        y = self.depthwise_relu(self.depthwise_BN(self.depthwise(y)))
        y = self.project_BN(self.project(y))
        return self.add(y, x) if self.residual else y


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.Conv1, self.bn_Conv1, self.Conv1_relu = conv(3, 32, 3, 2), bn(32), nn.ReLU6()
        self.blocks = nn.Sequential()
        cin, block_id = 32, 0
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            cout = make_divisible(c)
            for i in range(n):
                name = f"block_{block_id}" if block_id else "expanded_conv"
                self.blocks.add_module(name, InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin, block_id = cout, block_id + 1
        self.Conv_1, self.Conv_1_bn, self.out_relu = conv(cin, 1280, 1), bn(1280), nn.ReLU6()
        self.avg_pool = GlobalAvgPool()
        self.predictions = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.Conv1_relu(self.bn_Conv1(self.Conv1(x))))
        x = self.out_relu(self.Conv_1_bn(self.Conv_1(x)))
        return self.predictions(self.avg_pool(x))


# -- EfficientNet (keras/src/applications/efficientnet.py) ----------------------------------------

# kernel, repeats, in, out, expansion, stride of the first repeat; every block has SE ratio 0.25
# (Tan & Le 2019, Table 1: EfficientNet-B0's stages 2-8)
EFFICIENTNET_B0_BLOCKS = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
                          (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
# width coefficient, depth coefficient, input size, dropout of B0..B7 (Keras' EfficientNetB0..B7)
EFFICIENTNET_SCALING = {"B0": (1.0, 1.0, 224, 0.2), "B1": (1.0, 1.1, 240, 0.2), "B2": (1.1, 1.2, 260, 0.3),
                        "B3": (1.2, 1.4, 300, 0.3), "B4": (1.4, 1.8, 380, 0.4), "B5": (1.6, 2.2, 456, 0.4),
                        "B6": (1.8, 2.6, 528, 0.5), "B7": (2.0, 3.1, 600, 0.5)}
SE_RATIO = 0.25


class MBConv(nn.Module):
    """MobileNetV2's inverted residual with swish and squeeze-and-excitation (Hu et al. 2018) between
    the depthwise and the project conv: pool to 1x1, ``se_reduce`` 1x1 to a quarter of the block's
    *input* width (swish), ``se_expand`` back (sigmoid), and rescale every channel by its gate."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:
            self.expand_conv, self.expand_bn, self.expand_activation = conv(cin, hidden, 1), bn(hidden), nn.SiLU()
        self.dwconv = depthwise(hidden, k, stride)  # Keras: dwconv_pad (correct_pad) + 'valid' at stride 2
        self.bn, self.activation = bn(hidden), nn.SiLU()
        squeezed = max(1, int(cin * SE_RATIO))
        self.se_squeeze = GlobalAvgPool()
        self.se_reduce, self.se_reduce_act = conv(hidden, squeezed, 1, bias=True), nn.SiLU()
        self.se_expand, self.se_expand_act = conv(squeezed, hidden, 1, bias=True), nn.Sigmoid()
        self.project_conv, self.project_bn = conv(hidden, cout, 1), bn(cout)
        self.residual = cin == cout and stride == 1
        if self.residual:  # Keras adds a stochastic-depth Dropout here: identity at inference
            self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand_activation(self.expand_bn(self.expand_conv(x))) if hasattr(self, "expand_conv") else x
        y = self.activation(self.bn(self.dwconv(y)))
        se = self.se_squeeze(y)[:, :, None, None]  # (N, C) -> (N, C, 1, 1): Keras' se_reshape
        se = self.se_expand_act(self.se_expand(self.se_reduce_act(self.se_reduce(se))))
        y = self.project_bn(self.project_conv(y * se))  # se_excite: (N, C, H, W) * (N, C, 1, 1)
        return self.add(y, x) if self.residual else y


class EfficientNet(nn.Module):
    """EfficientNet-B0 by default; ``width``/``depth`` scale it as Keras' B1..B7 do (see
    :data:`EFFICIENTNET_SCALING`). Keras' Rescaling/Normalization input layers hold no trainable
    weights and are preprocessing, left out here."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2):
        super().__init__()

        def filters(c: int) -> int:  # Keras' round_filters: the width coefficient, to a multiple of 8
            return make_divisible(c * width)

        def repeats(n: int) -> int:  # Keras' round_repeats: the depth coefficient, rounded up
            return int(math.ceil(depth * n))

        stem = filters(32)
        self.stem_conv, self.stem_bn, self.stem_activation = conv(3, stem, 3, 2), bn(stem), nn.SiLU()
        self.blocks = nn.Sequential()
        for i, (k, n, cin, cout, t, s) in enumerate(EFFICIENTNET_B0_BLOCKS, start=1):
            cin, cout = filters(cin), filters(cout)
            for j in range(repeats(n)):
                self.blocks.add_module(f"block{i}{chr(ord('a') + j)}",
                                       MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, t))
        top = filters(1280)
        self.top_conv, self.top_bn, self.top_activation = conv(filters(320), top, 1), bn(top), nn.SiLU()
        self.avg_pool = GlobalAvgPool()
        self.top_dropout = nn.Dropout(dropout)
        self.predictions = nn.Linear(top, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_activation(self.stem_bn(self.stem_conv(x))))
        x = self.top_activation(self.top_bn(self.top_conv(x)))
        return self.predictions(self.top_dropout(self.avg_pool(x)))
