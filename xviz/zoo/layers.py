"""The pieces every network of :mod:`xviz.zoo` is built from: Keras' 'same' convolutions, BatchNorm
as Keras configures it, and the channel rounding of the MobileNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import BN_MOMENTUM, tf_same_padding


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
