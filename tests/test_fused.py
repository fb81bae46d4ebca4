"""The fused prediction copy (xviz.fused): same numbers as the eager network, and when it is used.

Real trained weights (the kitchenware model) on real photos: folding BN into near-zero-variance
channels is where a prediction copy would drift, and random weights don't have those.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

import xviz
from xviz import device
from xviz import fused
from xviz import inference
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
        assert rel_err(copy_(x), eager) <= TOLERANCE  # a batch: weights packed for two images
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


def test_each_batch_size_runs_on_weights_packed_for_it_and_equal_layouts_are_kept_once(model, kitchenware_images):
    """oneDNN picks a weight's layout for the whole input shape, batch size included (on an AVX2 CPU,
    26 of the 74 convs at 150 px take another layout for one image than for two)."""
    _, copy_, x = copy_and_photos(model, kitchenware_images, 150)
    md = torch.ops.mkldnn._get_mkldnn_serialized_md
    with torch.no_grad():
        copy_.trace(x[:1].shape)
        copy_.pack(x[:1].shape, range(1, 5))
        convs = copy_.graphs[(150, 150)][1]
        for n in range(1, 5):
            weights = copy_.weights_for((n, 3, 150, 150))
            assert [w is conv.packed[(n, *rest)] for w, (conv, rest) in zip(weights, convs)] == [True] * len(convs)
        three = torch.cat([x, x[:1]])
        by_graph = copy_.forward_features(three)  # packed ahead for three
        assert torch.equal(by_graph, copy_._forward_features(three))
        assert (5, 3, 150, 150) not in copy_.stem[0].packed
        copy_.forward_features(torch.cat([three, x]))  # a batch not packed ahead is packed in the call
        assert (5, 3, 150, 150) in copy_.stem[0].packed
    for conv in copy_.convs():  # two batch sizes share a tensor exactly when their layouts are equal
        packs = list(conv.packed.values())
        for i, a in enumerate(packs):
            for b in packs[i + 1:]:
                assert (a is b) == torch.equal(md(a), md(b))


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
    copy_ = m.predictor._copies[torch.float32]
    assert m.predictor.ready(160) and (160, 160) in copy_.graphs
    # every batch the queue may send at this size is packed ahead, not in a student's request
    assert {s[0] for s in copy_.stem[0].packed} == set(range(1, inference.batch_limit(160) + 1))
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


def test_packing_never_runs_the_shared_head(kitchenware_dir):
    """The packing thread holds no model lock: an attribution's hooks may sit on the network meanwhile
    (Guided Grad-CAM's register gradient hooks on what passes), and a pass through them turned the
    fused forward off for good. Packing runs the convolutions only."""
    m = xviz.load_model("kitchenware", device="cpu")

    def hook(module, inputs, output):
        raise RuntimeError("an attribution's hook met the packing pass")

    handle = m.net.head.register_forward_hook(hook)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m.predictor.prepare((1, 3, 71, 71), wait=True)
    finally:
        handle.remove()
    assert not [w for w in caught if "fused" in str(w.message)]
    assert m.predictor.enabled and m.predictor.ready(71)
    x = torch.randn(1, 3, 71, 71)
    assert rel_err(m.logits(x), m.net(x)) <= TOLERANCE


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
