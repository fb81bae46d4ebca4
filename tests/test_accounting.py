"""Parameter and multiply-add accounting: one-layer formulas, the whole-network ledger, its figures.

The 299-px reference numbers (paper Table 3 and our own count in shared/reference/XCEPTION.md) are
properties of the architecture, so they're checked on an ImageNet-head Xception built on the meta
device (shapes without arithmetic: the hooked forward costs nothing); the trained kitchenware model
checks the ledger of a real loaded model at its own 150 px.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from xviz import accounting as A
from xviz import figures as F
from xviz.model import Xception, XceptionConfig


@pytest.fixture(scope="module")
def imagenet_net() -> Xception:
    with torch.device("meta"):
        return Xception(XceptionConfig(num_classes=1000)).eval()


@pytest.fixture(scope="module")
def ledger299(imagenet_net):
    return A.ledger(imagenet_net, 299)


@pytest.fixture(scope="module")
def counterfactual299(ledger299):
    return A.counterfactual(ledger299)


@pytest.fixture(scope="module")
def kitchenware_ledger(kitchenware):
    return A.ledger(kitchenware)


# -- one layer, by hand ------------------------------------------------------------------------

def test_standard_conv_block5_shape_by_hand():
    # 3x3, 728 -> 728 on 19x19, 'same', stride 1: 9 * 728 * 728 weights, each used 19 * 19 times
    c = A.standard_conv(3, 728, 728, 19, 19)
    assert (c.params, c.out_h, c.out_w) == (4_769_856, 19, 19)
    assert c.macs == 4_769_856 * 361 == 1_721_918_016
    assert c.flops == 2 * c.macs


def test_separable_conv_block5_shape_by_hand():
    s = A.separable_conv(3, 728, 728, 19, 19)
    assert (s.depthwise.params, s.depthwise.macs) == (9 * 728, 9 * 728 * 361) == (6_552, 2_365_272)
    assert (s.pointwise.params, s.pointwise.macs) == (728 * 728, 728 * 728 * 361) == (529_984, 191_324_224)
    assert (s.params, s.macs) == (536_536, 193_689_496)


def test_ratio_is_mobilenets_eq5_exactly():
    std, sep = A.standard_conv(3, 728, 728, 19, 19), A.separable_conv(3, 728, 728, 19, 19)
    assert sep.params / std.params == pytest.approx(1 / 728 + 1 / 9, rel=1e-12)
    assert sep.macs / std.macs == pytest.approx(A.separable_ratio(3, 728), rel=1e-12)
    # with a stride both halves run at the output size, so the ratio still holds
    std2, sep2 = A.standard_conv(5, 64, 96, 37, 37, stride=2), A.separable_conv(5, 64, 96, 37, 37, stride=2)
    assert sep2.macs / std2.macs == pytest.approx(1 / 96 + 1 / 25, rel=1e-12)


def test_stride_and_padding():
    # block1_conv1: 3x3/2 'valid' on 299 -> 149 (Keras summary), 3*32*9 = 864 weights
    c = A.standard_conv(3, 3, 32, 299, 299, stride=2, padding="valid")
    assert (c.out_h, c.params, c.macs) == (149, 864, 864 * 149 * 149)
    assert A.output_size(147, 3, 1, "valid") == 145
    assert A.output_size(74, 3, 2, "same") == 37
    assert A.output_size(19, 3, 2, "same") == 10
    assert A.standard_conv(3, 8, 16, 10, 10, bias=True).params == 3 * 3 * 8 * 16 + 16


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(size=2, kernel=3, padding="valid"), "at least 3 pixels"),
    (dict(size=10, kernel=3, padding="full"), "'full'"),
    (dict(size=0, kernel=3), "size must be"),
])
def test_output_size_rejects_bad_input(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        A.output_size(**kwargs)


def test_grouped_conv_spans_standard_to_depthwise():
    assert A.grouped_conv(3, 728, 728, 19, 19, groups=1) == A.standard_conv(3, 728, 728, 19, 19)
    assert A.grouped_conv(3, 728, 728, 19, 19, groups=728) == A.separable_conv(3, 728, 728, 19, 19).depthwise
    g8 = A.grouped_conv(3, 728, 728, 19, 19, groups=8)
    assert g8.params == 9 * (728 // 8) * 728
    assert g8.params * 8 == A.standard_conv(3, 728, 728, 19, 19).params


def test_invalid_groups_raise_naming_the_value():
    with pytest.raises(ValueError, match=r"groups=5 .*Cin=728.*1, 2, 4, 7"):
        A.grouped_conv(3, 728, 728, 19, 19, groups=5)
    with pytest.raises(ValueError, match="groups=3"):
        A.grouped_conv(3, 3, 32, 19, 19, groups=3)  # divides Cin, not Cout
    with pytest.raises(ValueError, match="groups must be"):
        A.grouped_conv(3, 8, 8, 19, 19, groups=0)


def test_valid_groups():
    assert A.valid_groups(728, 728) == [1, 2, 4, 7, 8, 13, 14, 26, 28, 52, 56, 91, 104, 182, 364, 728]
    assert A.valid_groups(64, 128) == [1, 2, 4, 8, 16, 32, 64]
    assert A.valid_groups(3, 32) == [1]
    spectrum = A.group_spectrum(3, 64, 128, 16, 16)
    assert [g for g, _ in spectrum] == A.valid_groups(64, 128)
    assert [c.params for _, c in spectrum] == sorted((c.params for _, c in spectrum), reverse=True)


# -- the whole network at 299 px (the paper's and Keras' numbers) ----------------------------------

def test_ledger_sums_to_the_model(imagenet_net, ledger299):
    t = A.totals(ledger299)
    assert t.params == sum(p.numel() for p in imagenet_net.parameters()) == 22_855_952
    assert t.macs == 8_357_403_496
    assert t.bn_statistics == 54_528
    assert t.keras_total == 22_910_480


def test_ledger_macs_agree_with_torch_flop_counter(imagenet_net, ledger299):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        imagenet_net(torch.zeros(1, 3, 299, 299, device="meta"))
    assert counter.get_total_flops() == 2 * A.totals(ledger299).macs


def test_ledger_rows_and_names(imagenet_net, ledger299):
    assert list(ledger299.columns) == list(A.LEDGER_COLUMNS)
    assert set(ledger299["kind"]) == set(A.KINDS)
    counts = ledger299["kind"].value_counts()
    assert (counts["depthwise"], counts["pointwise"], counts["BN"]) == (34, 34, 40)
    assert (counts["regular conv"], counts["residual 1×1"], counts["fc"]) == (2, 4, 1)
    row = ledger299.set_index("layer").loc["block5_sepconv1_pointwise"]
    assert (row["keras_layer"], row["flow"], row["block"], row["output_shape"]) == \
        ("block5_sepconv1", "middle_flow", "block5", "728 × 19 × 19")
    dw = ledger299.set_index("layer").loc["block5_sepconv1_depthwise"]
    assert (dw["params"], dw["macs"]) == (6_552, 2_365_272)
    assert ledger299.iloc[-1]["layer"] == "predictions"
    # every named row is a real layer: depthwise and BN rows by their own name, pointwise via Keras'
    names = set(imagenet_net.layer_names())
    assert set(ledger299["keras_layer"]) <= names
    # the hooked forward left nothing behind on the network
    assert all(not m._forward_hooks for m in imagenet_net.modules())


def test_counterfactual_totals(ledger299, counterfactual299):
    t = A.totals(counterfactual299)
    assert t.params == 179_071_688
    assert round(t.macs / 1e9, 2) == 68.82
    separable = ledger299[ledger299["kind"].isin(["depthwise", "pointwise"])]
    standard = counterfactual299[counterfactual299["kind"] == A.STANDARD_KIND]
    assert len(standard) == 34
    assert (separable["params"].sum(), standard["params"].sum()) == (19_760_328, 175_976_064)
    # everything that isn't a separable conv is untouched
    rest = ledger299[~ledger299["kind"].isin(["depthwise", "pointwise"])].reset_index(drop=True)
    kept = counterfactual299[counterfactual299["kind"] != A.STANDARD_KIND].reset_index(drop=True)
    assert rest.equals(kept)
    row = standard.set_index("layer").loc["block5_sepconv1"]
    assert (row["params"], row["macs"]) == (4_769_856, 1_721_918_016)


def test_shares_by_kind_and_flow(ledger299):
    kinds = A.shares(ledger299, "kind")
    assert kinds.loc["pointwise", "macs_share"] == pytest.approx(0.906, abs=5e-4)
    assert kinds.loc["pointwise", "params_share"] == pytest.approx(0.855, abs=5e-4)
    assert kinds.loc["depthwise", "macs_share"] == pytest.approx(0.016, abs=5e-4)
    assert kinds["macs_share"].sum() == pytest.approx(1.0)
    flows = A.shares(ledger299, "flow")
    assert list(flows.index) == ["entry_flow", "middle_flow", "exit_flow"]
    assert flows["macs_share"].round(3).tolist() == [0.322, 0.556, 0.122]
    with pytest.raises(ValueError, match="'colour'"):
        A.shares(ledger299, "colour")


def test_presets_come_from_the_network(ledger299):
    presets = A.separable_presets(ledger299)
    assert len(presets) == 10
    middle = next(p for p in presets if "block5_sepconv1" in p["layers"])
    assert (middle["k"], middle["cin"], middle["cout"], middle["h"], middle["w"], middle["stride"]) == \
        (3, 728, 728, 19, 19, 1)
    assert len(middle["layers"]) == 25  # 24 middle-flow sepconvs + block13_sepconv1
    assert sum(len(p["layers"]) for p in presets) == 34


# -- the real loaded model --------------------------------------------------------------------------

def test_kitchenware_ledger_at_its_own_size(kitchenware, kitchenware_ledger):
    t = A.totals(kitchenware_ledger)
    assert t.params == sum(p.numel() for p in kitchenware.net.parameters())
    assert kitchenware_ledger.set_index("layer").loc["block1_conv1", "out_h"] == 74  # (150 - 3) // 2 + 1
    assert list(kitchenware_ledger["layer"].iloc[-2:]) == ["dense", "dense_1"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        kitchenware.net(kitchenware.preprocess(_blank()))
    assert counter.get_total_flops() == 2 * t.macs


def test_input_size_changes_macs_not_params(kitchenware, kitchenware_ledger):
    at224 = A.ledger(kitchenware, 224)
    at150 = A.totals(kitchenware_ledger)
    assert A.totals(at224).params == at150.params
    assert at150.macs < A.totals(at224).macs
    assert at224.set_index("layer").loc["block14_sepconv2_pointwise", "out_h"] == 7
    # a LoadedModel's own input size is the default
    assert A.ledger(kitchenware.with_input_size(224)).equals(at224)


def _blank():
    from PIL import Image
    return Image.new("RGB", (150, 150))


# -- measured speed (values are the machine's; only their consistency is checked) --------------------

def test_timing_reports_medians_ratios_and_device():
    r = A.time_standard_vs_separable(3, 32, 48, 16, 16, min_run_time=0.02)
    assert r.standard_ms > 0 and r.separable_ms > 0 and r.rounds >= 5
    assert r.standard_iqr_ms >= 0 and r.separable_iqr_ms >= 0
    assert r.time_ratio == pytest.approx(r.standard_ms / r.separable_ms)
    expected = A.standard_conv(3, 32, 48, 16, 16).macs / A.separable_conv(3, 32, 48, 16, 16).macs
    assert r.flop_ratio == pytest.approx(expected)
    assert r.device.startswith("CPU")
    assert "32→48" in r.shape
    with pytest.raises(ValueError, match="MiB"):
        A.time_standard_vs_separable(3, 4096, 4096, 1024, 1024)  # ~48 GiB of activations: refused, not tried


def test_formulas_latex_fill_in_the_numbers():
    tex = A.formulas_latex(3, 728, 728, 19, 19, groups=8)
    assert "4{,}769{,}856" in tex and "536{,}536" in tex and "596{,}232" in tex  # 9 * 91 * 728
    assert r"\frac{1}{728} + \frac{1}{9} = 0.1125" in tex
    layer = A.compare_layer(3, 728, 728, 19, 19, groups=8).set_index("conv")
    assert layer.loc["separable = depthwise + pointwise", "vs_standard"] == pytest.approx(1 / 728 + 1 / 9)
    assert layer.loc["grouped 3×3, g = 8", "macs"] == 596_232 * 361


def test_paper_facts():
    facts = {f.model: f for f in A.PAPER_FACTS}
    assert facts["Xception"].params == 22_855_952 and facts["Xception"].top1 == 0.790
    assert facts["Inception V3"].params == 23_626_728 and facts["Inception V3"].top1 == 0.782


# -- figures ---------------------------------------------------------------------------------------

def test_shares_bar(ledger299):
    fig = F.shares_bar(A.shares(ledger299, "kind"), "by kind")
    assert [t.name for t in fig.data] == ["parameters", "multiply-adds"]
    macs = fig.data[1]
    assert dict(zip(macs.y, macs.x))["pointwise"] == pytest.approx(0.906, abs=5e-4)


def test_standard_vs_separable_bar(ledger299, counterfactual299):
    fig = F.standard_vs_separable_bar(ledger299, counterfactual299)
    assert [t.name for t in fig.data] == ["Xception (separable convs)"] * 2 + ["same network, standard convs"] * 2
    assert sum(fig.data[0].y) == pytest.approx(22.855952)
    assert sum(fig.data[3].y) == pytest.approx(68.818, abs=1e-3)
    assert list(fig.data[0].x) == ["entry_flow", "middle_flow", "exit_flow"]


def test_group_spectrum_plot():
    spectrum = A.group_spectrum(3, 728, 728, 19, 19)
    fig = F.group_spectrum_plot(spectrum, A.separable_conv(3, 728, 728, 19, 19), selected=8)
    assert len(fig.data) == 3
    line, separable, marker = fig.data
    assert list(line.x) == A.valid_groups(728, 728)
    assert line.y[0] == 4_769_856 and line.y[-1] == 6_552
    assert separable.y[0] == 536_536
    assert list(marker.x) == [8] and marker.y[0] == 4_769_856 // 8
    assert len(F.group_spectrum_plot(spectrum, A.separable_conv(3, 728, 728, 19, 19)).data) == 2
