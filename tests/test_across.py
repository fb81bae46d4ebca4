"""The comparison behind the Across architectures page (xviz.across) and its figures."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from xviz import across, zoo
from xviz import figures as F


@pytest.fixture(scope="module")
def ledgers():
    return across.zoo_ledgers()


@pytest.fixture(scope="module")
def table(ledgers):
    return across.compare_networks(ledgers)


def test_comparison_table(table):
    assert list(table["name"]) == list(zoo.NAMES)
    row = table.set_index("name").loc["mobilenet_v2"]
    assert (row["network"], row["input"], row["params"], row["macs"], row["top1"]) == \
        ("MobileNetV2", 224, 3_504_872, 300_774_272, 0.713)
    assert table.set_index("name").loc["xception", "pointwise_share"] == pytest.approx(0.906, abs=5e-4)
    assert table.set_index("name").loc["vgg16", ["pointwise_share", "depthwise_share"]].tolist() == [0, 0]
    # the lesson the page draws from it: every separable net spends most of its compute in 1x1 convs
    assert (table[table["separable"]]["pointwise_share"] > 0.85).all()
    assert (table[~table["separable"]]["pointwise_share"] < 0.4).all()


def test_ledgers_csv_holds_every_layer_of_every_network(ledgers):
    back = pd.read_csv(io.BytesIO(across.ledgers_csv(ledgers)))
    assert back.columns[0] == "network" and len(back) == sum(len(t) for t in ledgers.values())
    assert back.groupby("network", sort=False)["params"].sum().to_dict()["EfficientNetB0"] == 5_288_548


def test_efficientnet_scaling_counts_every_variant():
    s = across.efficientnet_scaling().set_index("variant")
    assert list(s.index) == [f"EfficientNet{v}" for v in zoo.EFFICIENTNET_SCALING]
    assert s.loc["EfficientNetB0", ["blocks", "params", "macs", "predicted_macs"]].tolist() == \
        [16, 5_288_548, 385_814_752, 385_814_752]
    # Tan & Le 2019, Table 2 quotes 0.70B and 37B "FLOPs" (multiply-adds) for B1 and B7
    assert round(s.loc["EfficientNetB1", "macs"] / 1e9, 2) == 0.69
    assert round(s.loc["EfficientNetB7", "macs"] / 1e9) == 38
    # repeats are rounded up (B1: d = 1.1 but 23 blocks, not 17.6): the block count predicts better than d
    assert s.loc["EfficientNetB1", "blocks"] == 23
    error = (s["predicted_macs"] / s["macs"] - 1).abs()
    error_by_blocks = (s["predicted_by_blocks"] / s["macs"] - 1).abs()
    assert (error_by_blocks.iloc[1:] < error.iloc[1:]).all()


def test_block_and_se_lessons_are_computed(ledgers):
    v2 = ledgers["mobilenet_v2"]
    text = across.block_lesson([("MobileNetV2 block_14", v2[v2["block"] == "block_14"]),
                                ("Xception block5", ledgers["xception"][ledgers["xception"]["block"] == "block5"])])
    assert "channels 160 → 960 → 160" in text
    assert "channels 728 throughout" in text
    block14 = v2[(v2["block"] == "block_14") & (v2["kind"] != "BN")]
    assert f"{int(block14['params'].sum()):,} parameters" in text
    se = across.se_lesson(ledgers["efficientnet_b0"])
    assert "the squeeze-excite convs of its 16 blocks hold 636,540 parameters (12.0% of the network)" in se
    assert "(32 → 8 in block1a, a quarter of the block's input width)" in se


def test_time_networks_interleaves_and_reports_the_load():
    calls = []
    run = across.time_networks(("mobilenet_v2", "mobilenet"), rounds=2, progress=lambda d, t: calls.append((d, t)))
    assert set(run.ms) == {"mobilenet_v2", "mobilenet"} and all(v > 0 for v in run.ms.values())
    assert run.rounds == 2 and run.device.startswith("CPU") and len(run.load) == 2
    assert calls[-1] == (6, 6) and len(calls) == 6  # a warm-up round, then two timed ones
    with pytest.raises(ValueError, match="rounds"):
        across.time_networks(("mobilenet",), rounds=0)


# -- figures ---------------------------------------------------------------------------------------

def test_accuracy_vs_compute(table):
    fig = F.accuracy_vs_compute(table)
    separable, standard = fig.data
    assert list(separable.text) == ["Xception", "MobileNet", "MobileNetV2", "EfficientNetB0"]
    assert list(standard.y) == pytest.approx([77.9, 74.9, 71.3])
    assert fig.layout.xaxis.type == "log"
    timed = F.accuracy_vs_compute(table.assign(ms=range(7)))
    assert "ms on this CPU" in timed.data[0].customdata[0][1]


def test_kind_shares_and_latency_bars(ledgers, table):
    titles = dict(zip(table["name"], table["network"]))
    fig = F.kind_shares(ledgers, titles)
    pointwise = next(t for t in fig.data if t.name == "pointwise 1×1")
    assert dict(zip(pointwise.y, pointwise.x))["Xception"] == pytest.approx(0.906, abs=5e-4)
    assert sum(t.x[list(t.y).index("VGG16")] for t in fig.data) == pytest.approx(1.0)
    bars = F.latency_bars(table.assign(ms=[10.0] * 7))
    assert len(bars.data) == 2
    assert dict(zip(bars.data[1].y, bars.data[1].x))["VGG16"] == pytest.approx(10 / 15.470264320)


def test_blocks_side_by_side(ledgers):
    v2, x = ledgers["mobilenet_v2"], ledgers["xception"]
    fig = F.blocks_side_by_side([("V2", v2[v2["block"] == "block_14"]), ("X", x[x["block"] == "block5"])])
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == (1 + 3) + (1 + 6)  # input + expand/depthwise/project; input + 3 x (depthwise, pointwise)
    widths = [r.x1 - r.x0 for r in rects]
    assert widths[1] == pytest.approx(widths[0] * 6)  # the expand conv is 6x wider than the block's input
    labels = " ".join(a.text for a in fig.layout.annotations)
    assert "pointwise 1×1: 160→960, 7×7" in labels and "input: 728 × 19 × 19" in labels
