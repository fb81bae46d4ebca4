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

Modules: ``layers`` (Keras' 'same' convs, BatchNorm, channel rounding), ``classic`` (VGG16, ResNet-50,
Inception V3), ``mobile`` (MobileNet V1/V2, EfficientNet: the separable ones).

Example:
    >>> from xviz import zoo
    >>> net = zoo.build("mobilenet_v2", device="meta")
    >>> sum(p.numel() for p in net.parameters())
    3504872
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model import Xception, XceptionConfig
from .classic import (INCEPTION_V3_MIXED, RESNET50_STAGES, RESNET_EPS, VGG16, VGG16_BLOCKS, AvgPoolSame,  # noqa: F401
                      Bottleneck, ConvBN, InceptionV3, Mixed, ResNet50)
from .layers import BatchNorm2dNoScale, Conv2dSame, bn, conv, depthwise, make_divisible  # noqa: F401
from .mobile import (EFFICIENTNET_B0_BLOCKS, EFFICIENTNET_SCALING, MOBILENET_BLOCKS, MOBILENET_V2_SETTINGS,  # noqa: F401
                     SE_RATIO, EfficientNet, InvertedResidual, MBConv, MobileNet, MobileNetV2)


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
