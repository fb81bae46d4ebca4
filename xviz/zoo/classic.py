"""The networks without separable convolutions: VGG16, ResNet-50 and Inception V3, as Keras builds them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Add, GlobalAvgPool
from .layers import BatchNorm2dNoScale, bn, conv

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
