"""The model zoo (xviz.zoo) and its ledger (xviz.accounting.network_ledger).

Trainable parameter counts are Keras 3's (``keras.applications.<Name>(weights=None)``, default heads),
as the issue lists them; EfficientNet-B1..B7 are checked against the "total params" of Keras'
applications table (trainable + BatchNorm statistics + 7 for the Normalization input layer).
Everything is built on the meta device: shapes without arithmetic, so the whole file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xviz import accounting as A
from xviz import zoo

KERAS_TRAINABLE = {"xception": 22_855_952, "inception_v3": 23_817_352, "resnet50": 25_583_592,
                   "vgg16": 138_357_544, "mobilenet": 4_231_976, "mobilenet_v2": 3_504_872,
                   "efficientnet_b0": 5_288_548}
KERAS_TOTAL_EFFICIENTNET = {"B0": 5_330_571, "B1": 7_856_239, "B2": 9_177_569, "B3": 12_320_535,
                            "B4": 19_466_823, "B5": 30_562_527, "B6": 43_265_143, "B7": 66_658_687}


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {name: zoo.build(name, device="meta") for name in zoo.NAMES}


@pytest.fixture(scope="module")
def ledgers(nets):
    return {name: A.network_ledger(net, zoo.SPECS[name].input_size) for name, net in nets.items()}


def test_names_and_specs():
    assert set(zoo.NAMES) == set(KERAS_TRAINABLE)
    assert zoo.NAMES[0] == "xception"
    assert {n: zoo.SPECS[n].input_size for n in zoo.NAMES if zoo.SPECS[n].input_size != 224} == \
        {"xception": 299, "inception_v3": 299}
    assert [n for n in zoo.NAMES if zoo.SPECS[n].separable] == ["xception", "mobilenet", "mobilenet_v2",
                                                                "efficientnet_b0"]
    with pytest.raises(ValueError, match="'resnet18'.*mobilenet_v2"):
        zoo.build("resnet18")


@pytest.mark.parametrize("name", KERAS_TRAINABLE)
def test_parameters_equal_keras(nets, name):
    assert sum(p.numel() for p in nets[name].parameters()) == KERAS_TRAINABLE[name]


@pytest.mark.parametrize("name", KERAS_TRAINABLE)
def test_ledger_sums_to_the_network_and_agrees_with_flop_counter(nets, ledgers, name):
    net, table, size = nets[name], ledgers[name], zoo.SPECS[name].input_size
    assert list(table.columns) == list(A.NETWORK_LEDGER_COLUMNS)
    assert A.totals(table).params == KERAS_TRAINABLE[name]
    assert set(table["kind"]) <= set(A.NETWORK_KINDS)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = net(torch.zeros(1, 3, size, size, device="meta"))
    assert tuple(out.shape) == (1, 1000)
    assert counter.get_total_flops() == 2 * A.totals(table).macs  # convs and linears, nothing else
    assert all(not m._forward_hooks for m in net.modules())


def test_multiply_adds_at_native_size(ledgers):
    # the figures the papers quote: MobileNet 569M, MobileNetV2 300M, EfficientNet-B0 0.39B, VGG16 15.5G;
    # ResNet-50 is 3.86G in Keras' v1 (stride on the first 1x1; torchvision's v1.5 strides the 3x3: 4.1G)
    macs = {n: A.totals(t).macs for n, t in ledgers.items()}
    assert macs == {"xception": 8_357_403_496, "inception_v3": 5_713_216_096, "resnet50": 3_857_973_248,
                    "vgg16": 15_470_264_320, "mobilenet": 568_740_352, "mobilenet_v2": 300_774_272,
                    "efficientnet_b0": 385_814_752}


def test_pointwise_convs_carry_most_multiply_adds_in_every_separable_net(ledgers):
    pointwise = {n: A.shares(t, "kind")["macs_share"].get("pointwise 1×1", 0.0) for n, t in ledgers.items()}
    assert pointwise["xception"] == pytest.approx(0.906, abs=5e-4)  # as on the Parameters page
    for name in zoo.NAMES:
        if zoo.SPECS[name].separable:
            assert pointwise[name] > 0.85, name
            assert A.shares(ledgers[name], "kind").loc["depthwise", "macs_share"] < 0.1
    assert "depthwise" not in set(ledgers["resnet50"]["kind"]) | set(ledgers["vgg16"]["kind"])
    assert pointwise["vgg16"] == 0 and pointwise["inception_v3"] < 0.25 and pointwise["resnet50"] < 0.4


def test_ledger_kinds_and_names(ledgers):
    x = ledgers["xception"].set_index("layer")
    assert x.loc["block5_sepconv1_pointwise", "kind"] == "pointwise 1×1"
    assert x.loc["block2_residual", "kind"] == "shortcut 1×1"
    assert x.loc["block5_sepconv1_depthwise", "block"] == "block5"
    # Xception's ledger for its own page and this one cost every layer alike
    page = A.ledger(zoo.build("xception", device="meta"), 299)
    assert page["macs"].tolist() == ledgers["xception"]["macs"].tolist()
    assert page["params"].tolist() == ledgers["xception"]["params"].tolist()

    v2 = ledgers["mobilenet_v2"].set_index("layer")
    assert v2.loc["block_14_expand", ["kind", "in_channels", "out_channels", "output_shape"]].tolist() == \
        ["pointwise 1×1", 160, 960, "960 × 7 × 7"]
    assert v2.loc["block_14_depthwise", "kind"] == "depthwise"
    assert "expanded_conv_depthwise" in v2.index and "expanded_conv_expand" not in v2.index
    assert v2.loc["block_1_depthwise", ["stride", "in_h", "out_h"]].tolist() == [2, 112, 56]

    eff = ledgers["efficientnet_b0"].set_index("layer")
    assert eff.loc["block2a_se_reduce", ["kind", "out_channels"]].tolist() == ["squeeze-excite", 4]  # 16 / 4
    assert eff.loc["block6a_dwconv", ["kernel", "stride"]].tolist() == ["5×5", 2]
    assert len({b for b in ledgers["efficientnet_b0"]["block"] if b}) == 16

    resnet = ledgers["resnet50"].set_index("layer")
    assert resnet.loc["conv3_block1_0_conv", ["kind", "stride"]].tolist() == ["shortcut 1×1", 2]
    assert resnet.loc["conv3_block1_1_conv", "stride"] == 2  # Keras v1 strides the first 1x1
    assert ledgers["inception_v3"].set_index("layer").loc["mixed5_branch7x7_2_conv", "kernel"] == "1×7"
    assert ledgers["mobilenet"].iloc[-1][["layer", "kind"]].tolist() == ["conv_preds", "dense"]
    assert ledgers["vgg16"]["layer"].iloc[0] == "block1_conv1"


def test_network_kind_of_a_grouped_conv():
    grouped = nn.Conv2d(64, 128, 3, groups=8)
    assert A.network_kind(grouped, "blocks.b.conv", (64, 14, 14)) == "grouped"
    assert A.network_kind(nn.Conv2d(64, 64, 3, groups=64), "x", (64, 14, 14)) == "depthwise"
    assert A.network_kind(nn.Conv2d(64, 64, 3), "x", (64, 14, 14)) == "standard conv"


def test_efficientnet_scaling_matches_keras_b0_to_b7():
    for variant, (width, depth, size, dropout) in zoo.EFFICIENTNET_SCALING.items():
        with torch.device("meta"):
            net = zoo.EfficientNet(1000, width, depth, dropout)
        params = sum(p.numel() for p in net.parameters())
        stats = sum(2 * m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
        assert params + stats + 7 == KERAS_TOTAL_EFFICIENTNET[variant], variant


def test_tf_same_padding_matches_keras_explicit_padding():
    # Keras' ZeroPadding2D(correct_pad) + 'valid' stride-2 conv == Conv2dSame, on even and odd sizes
    torch.manual_seed(0)
    same = zoo.conv(4, 4, 5, 2, groups=4)
    for size in (14, 15):
        x = torch.randn(1, 4, size, size)
        before, after = (1, 2) if size % 2 == 0 else (2, 2)  # correct_pad: (k//2 - 1 + size % 2, k//2)
        valid = nn.functional.conv2d(nn.functional.pad(x, (before, after, before, after)), same.weight, None, 2,
                                     groups=4)
        torch.testing.assert_close(same(x), valid)


def test_real_forward_on_cpu():
    torch.manual_seed(0)
    net = zoo.build("mobilenet_v2", num_classes=10)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not any(p.is_meta for p in net.parameters()) and not net.training
