"""Integrated Gradients must add up (completeness), and say how well they do.

Sundararajan et al. (2017), proposition 1: the attributions sum to f(image) - f(baseline). Every
result carries its completeness error; these tests recompute it from the map and two plain forwards,
check that the default refinement reaches 1% on real photos, and that fixed steps report their own
(larger) error instead of hiding it.
"""

import math

import pytest
import torch

import xviz
from xviz import attributions as A


@pytest.fixture(scope="module")
def model(kitchenware):
    return kitchenware


@pytest.fixture(scope="module")
def coffee(model, example_photos):
    path = next(p for p in example_photos if p.stem == "coffee")
    return model.preprocess(xviz.load_image(path.read_bytes()))


def score(model, x, target):
    with torch.no_grad():
        return float(model.net(x)[0, target])


def independent_error(model, x, result, baseline):
    gap = score(model, x, result.target) - score(model, A.ig_baseline(model, x, baseline), result.target)
    return abs(float(result.map.sum()) - gap) / abs(gap), gap


def test_reported_error_is_the_error_of_the_map(model, coffee):
    cup = model.labels.index("cup")
    result = A.integrated_gradients(model, coffee, cup, steps=5)
    error, gap = independent_error(model, coffee, result, "grey")
    assert result.score_difference == pytest.approx(gap, rel=1e-5)
    assert result.attribution_sum == pytest.approx(float(result.map.sum()), rel=1e-5)
    assert result.completeness_error == pytest.approx(error, abs=1e-5)
    assert result.steps == 5 and result.tolerance is None and not result.met


def test_few_fixed_steps_report_their_larger_error(model, coffee):
    cup = model.labels.index("cup")
    coarse = A.integrated_gradients(model, coffee, cup, steps=3)
    fine = A.integrated_gradients(model, coffee, cup)
    assert coarse.completeness_error > 0.01  # three points can't follow the path's kinks
    assert fine.completeness_error <= 0.01 < coarse.completeness_error


@pytest.mark.parametrize("baseline", ["black", "blurred"])
def test_each_baseline_has_its_own_completeness(model, coffee, baseline):
    result = A.integrated_gradients(model, coffee, "cup", baseline=baseline)
    error, gap = independent_error(model, coffee, result, baseline)
    assert result.baseline == baseline
    assert result.completeness_error == pytest.approx(error, abs=1e-5)
    assert result.met and result.completeness_error <= 0.01
    grey = A.integrated_gradients(model, coffee, "cup", steps=2)
    assert not math.isclose(gap, grey.score_difference, rel_tol=1e-3)  # a different reference image


def test_baselines_are_what_their_names_say(model, coffee):
    black = A.ig_baseline(model, coffee, "black")
    assert torch.allclose(black, torch.full_like(coffee, -1.0))  # x / 127.5 - 1 of a black photo
    assert torch.equal(A.ig_baseline(model, coffee, "grey"), torch.zeros_like(coffee))
    blurred = A.ig_baseline(model, coffee, "blurred")
    assert blurred.shape == coffee.shape
    assert blurred.mean().item() == pytest.approx(coffee.mean().item(), abs=0.02)  # colours stay
    detail = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean().item()  # noqa: E731
    assert detail(blurred) < 0.3 * detail(coffee)  # detail goes
    with pytest.raises(ValueError, match="baseline"):
        A.ig_baseline(model, coffee, "white noise")


def test_default_meets_one_percent_on_every_example_photo(model, example_photos):
    for path in example_photos:
        x = model.preprocess(xviz.load_image(path.read_bytes()))
        result = A.integrated_gradients(model, x)
        assert result.met, (path.name, result.completeness_error, result.steps)
        assert result.steps <= A.IG_MAX_STEPS
        assert independent_error(model, x, result, "grey")[0] == pytest.approx(result.completeness_error, abs=1e-5)


def test_smoothgrad_variant_reports_the_error_of_the_mean(model, coffee):
    result = A.integrated_gradients(model, coffee, "cup", smooth_samples=2, steps=4)
    assert result.completeness_error == pytest.approx(
        abs(float(result.map.sum()) - result.score_difference) / abs(result.score_difference), rel=1e-5)
    plain = A.integrated_gradients(model, coffee, "cup", steps=4)
    assert result.score_difference != pytest.approx(plain.score_difference, rel=1e-4)  # noisy ends differ
    again = A.integrated_gradients(model, coffee, "cup", smooth_samples=2, steps=4)
    assert torch.equal(result.map, again.map)  # seeded


def test_time_budget_stops_refinement_and_says_so(model, coffee):
    result = A.integrated_gradients(model, coffee, "cup", time_budget=0.0)
    assert result.steps == A.IG_FIRST_STEPS  # the first pass, then the budget was spent
    assert result.tolerance == A.IG_TOLERANCE
    assert result.met == (result.completeness_error <= A.IG_TOLERANCE)


def test_bad_settings_are_refused(model, coffee):
    with pytest.raises(ValueError, match="at least 2"):
        A.integrated_gradients(model, coffee, steps=1)
    with pytest.raises(ValueError, match="tolerance"):
        A.integrated_gradients(model, coffee, tolerance=0)
