"""AppTest of the Parameters page: the real demo model, the untrained ImageNet-head network at 299 px
(the paper's numbers), the calculator's widgets and the timing button."""

import pytest
from streamlit.testing.v1 import AppTest

from helpers import mentions
from xviz import accounting as A


@pytest.fixture
def page(open_app):
    return open_app("pages/parameters.py")  # an empty hub cache: "auto" is the demo model


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def widget(elements, label: str):
    return next(e for e in elements if e.label == label)


def test_totals_shown_are_the_loaded_models(page, kitchenware):
    assert not page.exception
    ledger = A.ledger(kitchenware)
    shown = metrics(page)
    assert shown["parameters"] == f"{sum(p.numel() for p in kitchenware.net.parameters()):,}" == "21,012,458"
    assert shown["multiply-adds per image"] == f"{A.totals(ledger).macs / 1e9:.2f} G"
    assert shown["with standard convs: parameters"] == f"{A.totals(A.counterfactual(ledger)).params:,}"
    assert mentions([h.value for h in page.header], "150×150")
    calculator, table, twin, paper = (d.value for d in page.dataframe)
    assert len(table) == len(ledger) and table["params"].sum() == A.totals(ledger).params
    assert twin["params"].sum() == A.totals(A.counterfactual(ledger)).params
    assert list(paper["parameters"][:2]) == [22_855_952, 23_626_728]
    # the calculator starts on block 5's real shape at this input size: 728 -> 728 at 9x9
    assert "4{,}769{,}856" in page.latex[0].value and r"\times 9\cdot 9" in page.latex[0].value
    assert len(page.get("plotly_chart")) == 4
    assert mentions([c.value for c in page.caption], "PNG")
    assert mentions([m.value for m in page.markdown], "54,528", "40 BN")


def test_untrained_imagenet_network_gives_the_papers_numbers(page):
    at = page.sidebar.selectbox(key="model_source").set_value("untrained").run()
    assert not at.exception
    shown = metrics(at)
    assert shown["parameters"] == "22,855,952"
    assert shown["multiply-adds per image"] == "8.36 G"
    assert shown["with standard convs: parameters"] == "179,071,688"
    assert shown["with standard convs: multiply-adds"] == "68.82 G"
    assert mentions([m.value for m in at.markdown], "Keras", "22,910,480")


def test_input_size_changes_compute_not_parameters(page):
    before = metrics(page)
    at = page.sidebar.select_slider(key="input_size").set_value(299).run()
    assert not at.exception
    after = metrics(at)
    assert after["parameters"] == before["parameters"]
    assert float(after["multiply-adds per image"].split()[0]) > float(before["multiply-adds per image"].split()[0])
    assert r"\times 19\cdot 19" in at.latex[0].value  # the block-5 preset follows the network's shapes


def test_calculator_widgets(page):
    widget(page.select_slider, "groups g of a grouped conv (1 = standard … Cin = depthwise)").set_value(8)
    at = page.run()
    layer = at.dataframe[0].value.set_index("conv")
    assert layer.loc["grouped 3×3, g = 8", "params"] == 9 * 728 * 728 // 8
    # a kernel larger than the input with 'valid' padding: a message, and the rest of the page still works
    widget(at.radio, "padding").set_value("valid")
    widget(at.number_input, "H").set_value(2)
    at = at.run()
    assert not at.exception
    assert any("at least 3 pixels" in e.value for e in at.error)
    assert metrics(at)["parameters"] == "21,012,458"


def test_timing_runs_only_when_asked(page):
    assert "FLOP saving" not in metrics(page)
    at = page.button[0].click().run()
    assert not at.exception
    shown = metrics(at)
    assert shown["FLOP saving"] == f"×{A.standard_conv(3, 728, 728, 9, 9).macs / A.separable_conv(3, 728, 728, 9, 9).macs:.2f}"
    assert shown["standard"].endswith(" ms") and shown["wall-time saving"].startswith("×")
    assert mentions([c.value for c in at.caption], "CPU")  # says where it was measured
