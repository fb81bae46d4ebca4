"""Fidelity to Keras: the kitchenware model's logits, inputs and activations against TensorFlow's.

The reference arrays were computed once with TensorFlow (tests/data/make_keras_reference.py, whose
header documents every key). The budget is the issue's: <= 1e-4 relative error (helpers.rel_err).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xviz
from helpers import rel_err

TOLERANCE = 1e-4


def _inputs(u8: np.ndarray) -> torch.Tensor:
    """Stored NHWC uint8 -> the NCHW model input Keras saw (x / 127.5 - 1, as in the reference script)."""
    x = torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0)
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.permute(2, 0, 1)[None]  # NHWC -> NCHW


def _layers(reference: dict, size: int) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in reference if k.startswith(f"act{size}/"))


def _capture(model, u8: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
    # the reference calls the pooled features avg_pool; the kitchenware file keeps Keras' name for
    # the pooling layer it added (global_average_pooling2d), which xviz preserves
    pool = model.net.config.pool_name
    acts = xviz.activations(model, _inputs(u8), [pool if n == "avg_pool" else n for n in names])
    return {("avg_pool" if n == pool else n): a for n, a in acts.items()}


@pytest.fixture(scope="module")
def activations_150(kitchenware, keras_reference):
    return _capture(kitchenware, keras_reference["input_150"], _layers(keras_reference, 150))


@pytest.fixture(scope="module")
def activations_299(kitchenware, keras_reference):
    # the same weights at another size: every pool pads differently at 299 (odd sizes) than at 150
    return _capture(kitchenware.with_input_size(299), keras_reference["input_299"], _layers(keras_reference, 299))


def test_reference_covers_what_the_issue_asks(keras_reference):
    assert len(keras_reference["files"]) == 18
    for size in (150, 299):
        layers = _layers(keras_reference, size)
        assert {"block1_conv1_act", "block14_sepconv2_act", "avg_pool"} <= set(layers)
        assert {f"block{n}_add" for n in range(2, 14)} <= set(layers)


def test_logits_match_keras_on_all_18_photos(kitchenware, keras_reference):
    ours = kitchenware.logits(_inputs(keras_reference["inputs_150"]))
    reference = keras_reference["logits_150"]
    assert ours.shape == reference.shape == (18, 6)
    assert rel_err(ours, reference) <= TOLERANCE
    assert ours.argmax(1).tolist() == reference.argmax(1).tolist()


def test_logits_match_keras_photo_by_photo(kitchenware, keras_reference):
    # batch of one, as the app runs it: batching must not be what makes the numbers agree
    worst = max(rel_err(kitchenware.logits(_inputs(u8))[0], ref)
                for u8, ref in zip(keras_reference["inputs_150"][:4], keras_reference["logits_150"][:4]))
    assert worst <= TOLERANCE


def test_preprocessing_reproduces_the_stored_inputs(kitchenware, kitchenware_images, keras_reference):
    assert [p.name for p in kitchenware_images] == keras_reference["files"].tolist()
    for i, path in enumerate(kitchenware_images):
        img = xviz.load_image(path.read_bytes())
        u8 = np.asarray(kitchenware.preprocessing.resized(img))
        assert u8.shape == (150, 150, 3) and u8.dtype == np.uint8
        assert np.array_equal(u8, keras_reference["inputs_150"][i]), f"{path.name}: pixels differ"


def test_preprocess_tensor_is_keras_scaling(kitchenware, kitchenware_images, keras_reference):
    x = kitchenware.preprocess(xviz.load_image(kitchenware_images[0].read_bytes()))
    assert x.shape == (1, 3, 150, 150) and x.dtype == torch.float32
    assert torch.allclose(x.cpu(), _inputs(keras_reference["input_150"]), atol=1e-6, rtol=0)
    assert "127.5" in kitchenware.preprocessing.describe()


def test_preprocessing_at_299_reproduces_the_stored_input(kitchenware, kitchenware_images, keras_reference):
    model = kitchenware.with_input_size(299)
    assert model.input_size == 299
    img = xviz.load_image(kitchenware_images[0].read_bytes())
    assert np.array_equal(np.asarray(model.preprocessing.resized(img)), keras_reference["input_299"])


@pytest.mark.parametrize("size", [150, 299])
def test_activations_match_keras(size, keras_reference, request):
    ours = request.getfixturevalue(f"activations_{size}")
    failures = {}
    for name, act in ours.items():
        idx = torch.from_numpy(keras_reference[f"chidx{size}/{name}"])
        if name == "avg_pool":
            kept, means = act[0], act[0]  # (1, 2048): the pooled features are their own means
        else:
            kept, means = act[0, idx], act[0].mean(dim=(1, 2))  # (C, H, W) -> (k, H, W) and (C,)
        errors = (rel_err(kept, keras_reference[f"act{size}/{name}"]),
                  rel_err(means, keras_reference[f"chmean{size}/{name}"]))
        if max(errors) > TOLERANCE:
            failures[name] = errors
    assert failures == {}, f"relative errors (channels, channel means) above {TOLERANCE}"
    assert len(ours) >= 26


def test_labelled_photos_are_classified_right(kitchenware, kitchenware_labelled):
    assert kitchenware.labels == ["cup", "fork", "glass", "knife", "plate", "spoon"]
    wrong = {}
    for path, label in kitchenware_labelled:
        (predicted, probability), *_ = kitchenware.predict(xviz.load_image(path.read_bytes()), k=3)
        if predicted != label:
            wrong[path.name] = (label, predicted, round(probability, 3))
    assert wrong == {}, "photo: (train.csv label, predicted, probability)"


def test_predict_returns_sorted_probabilities(kitchenware, photo):
    top = kitchenware.predict(photo, k=10)
    assert len(top) == 6  # k is capped at the number of classes
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1.0) < 1e-5
    assert {label for label, _ in top} == set(kitchenware.labels)
