"""xviz.tour: the guided tour's numbers come from the loaded model, follow the input size and the head,
and agree with what the network itself does (a real forward pass, its own parameter tensors)."""

from __future__ import annotations

import pytest
import torch

import xviz
from xviz import tour
from xviz.model import count_parameters


@pytest.fixture(scope="module")
def kw150(kitchenware):
    return tour.facts_for(kitchenware)


@pytest.fixture(scope="module")
def kw299(kitchenware):
    return tour.facts_for(kitchenware.with_input_size(299))


@pytest.fixture(scope="module")
def imagenet_head():
    return tour.facts_for(xviz.load_model("untrained", device="cpu"), 150)


def test_shapes_match_a_real_forward_pass(kitchenware, kw150):
    names = [kw150.stem[0].name, kw150.stem[1].name, kw150.entry_out.name, kw150.middle_out.name,
             kw150.exit_in.name, kw150.exit_out.name]
    x = torch.zeros(1, 3, 150, 150)
    with kitchenware.lock, xviz.capture(kitchenware.net, names) as out, torch.no_grad():
        kitchenware.net(x)
    shapes = [kw150.stem[0], kw150.stem[1], kw150.entry_out, kw150.middle_out, kw150.exit_in, kw150.exit_out]
    for shape in shapes:
        assert tuple(out[shape.name].shape[1:]) == (shape.channels, shape.height, shape.width), shape.name
    assert kw150.entry_out.text == "9×9×728" and kw150.exit_out.text == "5×5×2048"


def test_parameter_counts_are_the_networks_own(kitchenware, kw150):
    net = kitchenware.net
    assert kw150.total_params == count_parameters(net)
    assert kw150.head_params == sum(p.numel() for p in net.head.parameters())
    conv = net.layer("block5_sepconv1")
    assert kw150.separable.depthwise_params == conv.depthwise.weight.numel() == 3 * 3 * 728
    assert kw150.separable.pointwise_params == conv.pointwise.weight.numel() == 728 * 728
    assert kw150.separable.standard_params == 3 * 3 * 728 * 728
    middle = sum(p.numel() for p in net.middle_flow.parameters())
    assert kw150.middle_params == middle and kw150.middle_share == pytest.approx(middle / count_parameters(net))


def test_numbers_follow_the_input_size(kw150, kw299):
    assert (kw150.input_values, kw299.input_values) == (150 * 150 * 3, 299 * 299 * 3)
    assert kw150.stem[1].text == "72×72×64" and kw299.stem[1].text == "147×147×64"
    assert kw150.separable.standard_macs == 3 * 3 * 728 * 728 * 9 * 9
    assert kw299.separable.standard_macs == 3 * 3 * 728 * 728 * 19 * 19
    assert (kw150.gradcam.height, kw299.gradcam.height) == (5, 10)
    assert kw150.total_params == kw299.total_params  # weights don't depend on the input size
    assert "67,500" in tour.narrative(kw150, "input") and "268,203" in tour.narrative(kw299, "input")
    assert "1,721,918,016" in tour.question(kw299, "separable").answer


def test_numbers_follow_the_model(kw150, imagenet_head):
    # same backbone, different head: 2048 -> 100 -> 6 against ImageNet's 2048 -> 1000
    assert kw150.separable == imagenet_head.separable
    assert kw150.head_params == 2048 * 100 + 100 + 100 * 6 + 6
    assert imagenet_head.head_params == 2048 * 1000 + 1000
    assert imagenet_head.classes == 1000 and kw150.classes == 6
    assert "2,049,000" in tour.question(imagenet_head, "prediction").answer
    assert "205,506" in tour.question(kw150, "prediction").answer
    assert not imagenet_head.trained


@pytest.mark.parametrize("step", [s.slug for s in tour.STEPS])
def test_every_step_has_text_and_a_computed_question(kw150, step):
    text = tour.narrative(kw150, step)
    q = tour.question(kw150, step)
    assert len(text) > 200
    assert q is not None and q.text.endswith("?") and "**" in q.answer


def test_parse_step():
    assert tour.parse_step(None) == (0, None)
    assert tour.parse_step("3") == (2, None)
    assert tour.parse_step("separable") == (2, None)
    assert tour.parse_step(["1", "7"]) == (6, None)
    for bad in ("0", "8", "-1", "two", "3.5"):
        index, message = tour.parse_step(bad)
        assert index == 0 and f"“{bad}”" in message and "steps 1 to 7" in message


def test_unknown_step_is_refused(kw150):
    with pytest.raises(ValueError, match="unknown step"):
        tour.narrative(kw150, "softmax")
