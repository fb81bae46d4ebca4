"""The networks built from depthwise separable convolutions: MobileNet V1, MobileNetV2 and EfficientNet,
as Keras builds them."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model import Add, GlobalAvgPool
from .layers import bn, conv, depthwise, make_divisible

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
