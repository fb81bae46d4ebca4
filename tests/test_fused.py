"""The fused prediction copy (xviz.fused): same numbers as the eager network, and when it is used.

Real trained weights (the kitchenware model) on real photos: folding BN into near-zero-variance
channels is where a prediction copy would drift, and random weights don't have those.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import xviz
from xviz import device
from xviz import fused
from xviz.model import MaxPool2dSame

pytestmark = pytest.mark.skipif(not fused.supported(torch.device("cpu")),
                                reason="this torch build has no oneDNN (mkldnn) CPU ops: predictions run eagerly")

TOLERANCE = 1e-5  # relative to the largest logit, as the issue asks


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model(kitchenware_dir) -> xviz.LoadedModel:
    # a model of its own: these tests watch its predictor get ready, which the shared fixture's may already be
    return xviz.load_model("kitchenware", device="cpu")


def copy_and_photos(model, images, size: int):
    """The model at ``size`` px, a fresh fused copy of it, and two real photos preprocessed for it."""
    m = model.with_input_size(size)
    return m, fused.FusedXception(m.net), torch.cat([m.preprocess(xviz.load_image(p.read_bytes())) for p in images[:2]])


@pytest.mark.parametrize("size", [150, 299])
def test_fused_copy_equals_the_eager_network(model, kitchenware_images, size):
    m, copy_, x = copy_and_photos(model, kitchenware_images, size)
    with torch.no_grad():
        eager = m.net(x)
        assert rel_err(copy_(x[:1]), eager[:1]) <= TOLERANCE
        assert rel_err(copy_(x), eager) <= TOLERANCE  # a batch, on weights packed for batch 1
    assert copy_.sizes() == {(size, size)}


@pytest.mark.parametrize("size", [150, 299])
def test_the_traced_forward_is_the_op_by_op_forward_bit_for_bit(model, kitchenware_images, size):
    """What predictions run once the copy is ready: one graph per input size, traced at batch 1."""
    _, copy_, x = copy_and_photos(model, kitchenware_images, size)
    with torch.no_grad():
        by_op = copy_.forward_features(x)
        copy_.trace(x[:1].shape)
        assert list(copy_.graphs) == [(size, size)]
        assert torch.equal(copy_.forward_features(x), by_op)
        assert torch.equal(copy_.forward_features(x[1:]), by_op[1:])


@pytest.mark.parametrize("shape", [(74, 74), (147, 147), (10, 9), (9, 10)])
def test_one_call_max_pool_is_tf_same(shape):
    torch.manual_seed(0)
    x = torch.randn(1, 4, *shape) - 3  # mostly negative: a zero-padded pool would show
    assert torch.equal(fused.max_pool_same(x), MaxPool2dSame(3, 2)(x))


def test_predictions_start_eager_and_switch_to_the_copy(model, photo):
    m = model.with_input_size(160)  # a size no other test prepares
    x = m.preprocess(photo)
    assert not m.predictor.ready(160)
    first = m.logits(x)  # answered eagerly; schedules the copy for 160 px
    m.predictor.prepare(x.shape, wait=True)
    assert m.predictor.ready(160) and (160, 160) in m.predictor._copies[torch.float32].graphs
    with torch.no_grad():
        eager = m.net(x)
    assert torch.equal(first, eager)
    assert rel_err(m.logits(x), eager) <= TOLERANCE
    # the capture path keeps the eager, hookable network and agrees with the predictions
    last = m.net.layer_names()[-1]  # the kitchenware head's "dense_1": the logits
    with torch.no_grad(), xviz.capture(m.net, [last]) as out:
        m.net(x)
    assert rel_err(m.logits(x), out[last]) <= TOLERANCE


@pytest.mark.parametrize("size", [150, 299])
def test_embeddings_run_the_fused_copy_and_equal_the_eager_ones(model, kitchenware_images, size):
    """What a taught head is trained on: the copy's pooled features once it is ready, so embedding a
    sample costs a prediction, not an eager forward (issue 13's budget)."""
    m = model.with_input_size(size)
    x = torch.cat([m.preprocess(xviz.load_image(p.read_bytes())) for p in kitchenware_images[:2]])
    m.predictor.prepare(x.shape, wait=True)
    assert m.predictor.ready(size)
    with torch.no_grad():
        eager = m.net.forward_head(m.net.forward_features(x), pre_logits=True)
    got = m.embedding(x)
    assert got.shape == (2, 2048)
    assert rel_err(got, eager) <= TOLERANCE
    assert not torch.equal(got, eager)  # BN folded: the copy's rounding, so it was the copy that ran
    assert rel_err(m.embed(xviz.load_image(kitchenware_images[0].read_bytes())), eager[0]) <= TOLERANCE


def test_a_copy_with_other_weights_never_uses_the_originals_fused_copy(model, photo):
    m = model.with_input_size(150)
    x = m.preprocess(photo)
    m.predictor.prepare(x.shape, wait=True)
    twin = copy.deepcopy(m.net)
    with torch.no_grad():
        twin.head.dense_1.linear.bias.add_(1.0)  # as the randomisation check re-initialises its copy
    twin_model = dataclasses.replace(m, net=twin)
    assert rel_err(twin_model.logits(x), m.logits(x) + 1.0) <= TOLERANCE


def test_at_most_max_sizes_are_packed(kitchenware_dir):
    m = xviz.load_model("kitchenware", device="cpu")
    sizes = [71 + k for k in range(fused.MAX_SIZES + 1)]  # small sizes: cheap forwards
    for size in sizes:
        m.predictor.prepare((1, 3, size, size))
    m.predictor.prepare((1, 3, 71, 71), wait=True)
    assert [m.predictor.ready(s) for s in sizes] == [True] * fused.MAX_SIZES + [False]


# -- fast mode ------------------------------------------------------------------------------------

def test_fast_mode_is_off_unless_asked_for(model, monkeypatch, kitchenware_dir):
    assert not model.fast and model.precision == "fp32"
    monkeypatch.setenv("XVIZ_FAST", "1")
    m = xviz.load_model("untrained", device="cpu")
    if m.fast_precision is None:
        assert not m.fast  # asked for, but nothing faster here: stays fp32 (with a warning)
    else:
        assert m.fast and m.precision == m.fast_precision and m.key.endswith(f"+{m.fast_precision}")
        assert not m.with_fast_mode(False).fast and m.with_fast_mode(False).key == "untrained"


def test_fast_mode_is_refused_where_nothing_is_faster(model, monkeypatch):
    monkeypatch.setattr(device, "native_bf16", lambda: False)
    m = dataclasses.replace(model, predictor=fused.Predictor(model.net, torch.device("cpu")))
    assert m.fast_precision is None
    with pytest.raises(ValueError, match="native bf16"):
        m.with_fast_mode(True)


@pytest.mark.skipif(not device.native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX): "
                                                          "fast mode is not offered here")
def test_fast_mode_predicts_the_same_classes(model, kitchenware_images):
    m = model.with_fast_mode(True)
    assert m.precision == "bf16" and m.key != model.key and m.with_input_size(299).fast
    xs = [m.preprocess(xviz.load_image(p.read_bytes())) for p in kitchenware_images[:6]]
    m.logits(xs[0])
    m.predictor.prepare(xs[0].shape, fast=True, wait=True)
    assert m.predictor.ready(m.input_size, fast=True)
    for x in xs:
        fast, exact = m.logits(x).softmax(-1), model.logits(x).softmax(-1)
        assert fast.argmax() == exact.argmax()
        assert 0 < (fast - exact).abs().max() < 0.05  # bf16: close, but not the fp32 numbers
