"""xviz.flows: the one-pass capture plan, shapes, the separable-conv anatomy and the residual sums,
on the real demo model and a real kitchenware photo."""

import importlib
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

import xviz
from xviz import flows

# (C, H, W) at 150 px (the demo model's size) and at 299 px (ImageNet Xception's)
SHAPES = {
    150: {"block1_conv1_act": (32, 74, 74), "block1_conv2_act": (64, 72, 72),
          "block2_sepconv1_depthwise": (64, 72, 72), "block2_sepconv1": (128, 72, 72),
          "block2_add": (128, 36, 36), "block3_add": (256, 18, 18), "block4_add": (728, 9, 9),
          "block8_sepconv2_bn": (728, 9, 9), "block13_sepconv2": (1024, 9, 9), "block13_add": (1024, 5, 5),
          "block14_sepconv2_act": (2048, 5, 5)},
    299: {"block1_conv1_act": (32, 149, 149), "block1_conv2_act": (64, 147, 147),
          "block2_sepconv1_depthwise": (64, 147, 147), "block2_sepconv1": (128, 147, 147),
          "block2_add": (128, 74, 74), "block3_add": (256, 37, 37), "block4_add": (728, 19, 19),
          "block8_sepconv2_bn": (728, 19, 19), "block13_sepconv2": (1024, 19, 19), "block13_add": (1024, 10, 10),
          "block14_sepconv2_act": (2048, 10, 10)},
}


@pytest.fixture(scope="module")
def model(kitchenware):
    return kitchenware


@pytest.fixture(scope="module")
def captures(model, photo):
    """float16 captures (what the app caches) at 150 and 299 px, and a float32 one at 150 px."""
    out = {}
    for size in (150, 299):
        m = model.with_input_size(size)
        out[size] = flows.capture_views(m, m.preprocess(photo))
    out["fp32"] = flows.capture_views(model, model.preprocess(photo), dtype=np.float32)
    return out


def test_plan_uses_keras_names_and_covers_every_block(model):
    plan = flows.view_plan(model.net)
    names = model.net.layer_names()
    assert all(e.name in names for e in plan)
    assert [f"block{i}" for i in range(1, 15)] == list(dict.fromkeys(e.block for e in plan))
    assert all(e.source in names for e in plan if not e.stored)
    stored = flows.stored_names(model.net)
    assert len(stored) == 2 + 2 * 34 + 4 * 3 + 8  # stem, dw + pw of 34 sepconvs, pool/res/add x4, 8 adds
    assert {"block5_sepconv1_depthwise", "block5_sepconv1", "block5_add", "block2_residual_bn"} <= set(stored)
    seps = flows.separable_convs(model.net)
    assert len(seps) == 34
    assert seps[0].input == "block1_conv2_act"  # block 2 has no ReLU before its first sepconv
    assert seps[2].input == "block3_sepconv1_act"
    assert [s.input for s in seps[-2:]] == ["block13_add", "block14_sepconv1_act"]


@pytest.mark.parametrize("size", [150, 299])
def test_capture_shapes(captures, model, size):
    cap = captures[size]
    for name, shape in SHAPES[size].items():
        assert cap.shape(name) == shape, name
        assert cap.map(name).shape == shape and cap.map(name).dtype == np.float32
    assert all(t.dtype == torch.float16 for t in cap.maps.values())
    table = {r.name: r for r in flows.layer_table(model, size)}
    assert list(table) == cap.names
    for name in cap.names:
        assert table[name].shape == cap.shape(name), name
    assert table["block1_conv1_act"].stride == 2 and table["block2_add"].stride == 4
    assert table["block4_add"].stride == 16 and table["block14_sepconv2_act"].stride == 32
    assert cap.image.shape == (size, size, 3) and cap.image.dtype == np.uint8


def test_shapes_never_wait_for_the_models_lock(model):
    """A page asking for the layer table while the queue's worker holds the model (a capture) gets
    it at once, and leaves no hook on the shared network."""
    import threading

    expected = flows.layer_table(model.net, 150)  # a bare network runs itself
    got = []
    with model.lock:  # as the worker holds it through a capture
        asker = threading.Thread(target=lambda: got.append(flows.layer_table(model, 150)))
        asker.start()
        asker.join(timeout=60)
        assert not asker.is_alive(), "layer_table waited for the model's lock"
    assert got[0] == expected
    assert not any(m._forward_hooks for m in model.net.modules())


@pytest.mark.parametrize("size", [150, 299])
def test_depthwise_has_one_map_per_input_channel(captures, model, size):
    for sep in flows.separable_convs(model.net):
        anat = flows.separable_anatomy(model, captures[size], sep.name)
        assert anat.depthwise.shape == anat.inputs.shape, sep.name
        assert anat.kernels.shape == (anat.in_channels, 3, 3)
        assert anat.weights.shape == (anat.out_channels, anat.in_channels)


def test_derived_layers_equal_the_networks_own_outputs(captures, model, photo):
    """BN and ReLU outputs are computed from the stored maps; compare with a plain capture of them."""
    cap = captures["fp32"]
    derived = [n for n in cap.names if not cap.plan[n].stored]
    reference = xviz.activations(model, model.preprocess(photo), derived)
    for name in derived:
        ref = reference[name][0].numpy()
        assert np.abs(cap.map(name) - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6, name
        assert np.array_equal(cap.channel(name, 3), cap.map(name)[3])


def test_capture_runs_exactly_one_forward(model, photo):
    calls = []
    handle = model.net.entry_flow.block1.register_forward_hook(lambda *a: calls.append(1))
    try:
        cap = flows.capture_views(model, model.preprocess(photo))
    finally:
        handle.remove()
    assert len(calls) == 1
    # every view reads the capture alone: no network involved any more
    for name in cap.names:
        cap.channel(name, 0)


def _eager(model, x, dtype):
    """The capture run op by op: any hook on the network keeps it off the recorded graph."""
    handle = model.net.entry_flow.block1.register_forward_hook(lambda *a: None)
    try:
        return flows.capture_views_batch(model, x, dtype=dtype)
    finally:
        handle.remove()


def _assert_same_bits(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.maps.keys() == b.maps.keys()
        for name in b.maps:
            assert a.maps[name].stride() == b.maps[name].stride(), name  # the network's layout
            assert torch.equal(a.maps[name], b.maps[name]), name
            # each image owns its maps: the store evicts captures one at a time
            t = a.maps[name]
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
        assert np.array_equal(a.logits, b.logits) and torch.equal(a.features, b.features)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_recorded_capture_equals_the_eager_one_bit_for_bit(model, photo, dtype, monkeypatch):
    """On the CPU the hooked forward runs as one recorded graph per input size: the same ops on the
    same kernels, so the same bits, at any batch size, and no op-by-op pass once recorded."""
    module = importlib.import_module("xviz.flows.capture")
    module._graphs.pop(model.net, None)
    x1 = model.preprocess(photo)
    x3 = torch.cat([x1, model.preprocess(photo.rotate(90)), x1.flip(-1)])
    eager1, eager3 = _eager(model, x1, dtype), _eager(model, x3, dtype)
    passes = []
    hooked = module._hooked
    monkeypatch.setattr(module, "_hooked", lambda *a: passes.append(1) or hooked(*a))

    _assert_same_bits(flows.capture_views_batch(model, x3, dtype=dtype), eager3)  # recorded from x3[:1]
    assert passes == [1]
    key = (150, 150, {np.float16: torch.float16, np.float32: torch.float32}[dtype])
    assert isinstance(module._graphs[model.net][key], torch.jit.ScriptFunction)
    _assert_same_bits(flows.capture_views_batch(model, x1, dtype=dtype), eager1)
    _assert_same_bits(flows.capture_views_batch(model, x3, dtype=dtype), eager3)
    assert passes == [1]  # the graph alone

    module._graphs.pop(model.net, None)  # recorded at batch 1: the recording pass is the answer
    _assert_same_bits(flows.capture_views_batch(model, x1, dtype=dtype), eager1)
    assert passes == [1, 1]


def test_the_capture_graph_steps_aside(model, photo, monkeypatch):
    """A hooked network runs eagerly so its hooks fire; a network that cannot be recorded warns once
    and captures op by op; a bounded number of sizes are kept."""
    module = importlib.import_module("xviz.flows.capture")
    module._graphs.pop(model.net, None)
    x = model.preprocess(photo)
    _eager(model, x, np.float16)
    assert module._graphs.get(model.net, {}) == {}

    def broken(*args, **kwargs):
        raise RuntimeError("no tracer here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = flows.capture_views(model, x), flows.capture_views(model, x)
    said = [str(w.message) for w in caught if "could not be recorded as a graph" in str(w.message)]
    assert len(said) == 1 and "no tracer here" in said[0]  # remembered, not retried
    assert module._graphs[model.net][(150, 150, torch.float16)] is None
    eager = _eager(model, x, np.float16)
    _assert_same_bits([first], eager)
    _assert_same_bits([second], eager)
    monkeypatch.undo()

    sizes = (71, 80, 90, 100)
    for size in sizes:
        m = model.with_input_size(size)
        flows.capture_views(m, m.preprocess(photo))
    assert list(module._graphs[model.net]) == [(s, s, torch.float16) for s in sizes[-module.MAX_GRAPHS:]]


def test_a_batched_capture_equals_single_ones(captures, model, photo):
    """What the queue does when several students open the maps at once: one pass for N images, and
    each capture the same as its own single pass (float32 storage, so differences show)."""
    x = model.preprocess(photo)
    xs = torch.cat([x, model.preprocess(photo.rotate(90)), x.flip(-1)])
    batch = flows.capture_views_batch(model, xs, dtype=np.float32)
    assert len(batch) == 3
    single = captures["fp32"]
    for name in ("block1_conv1_act", "block4_add", "block13_sepconv2", "block14_sepconv2_act"):
        ref = single.map(name)
        assert np.abs(batch[0].map(name) - ref).max() <= 1e-5 * np.abs(ref).max()
        # each image owns its maps: the store evicts captures one at a time
        assert batch[0].maps.get(name) is None or batch[0].maps[name].untyped_storage().nbytes() == \
            batch[0].maps[name].numel() * batch[0].maps[name].element_size()
    flipped = flows.capture_views(model, x.flip(-1), dtype=np.float32)
    assert np.abs(batch[2].map("block2_add") - flipped.map("block2_add")).max() <= 1e-5 * np.abs(
        flipped.map("block2_add")).max()
    assert np.allclose(batch[2].logits, flipped.logits, rtol=1e-5, atol=1e-6)
    assert torch.allclose(batch[0].features, single.features, rtol=1e-5, atol=1e-6)
    assert np.array_equal(batch[0].image, single.image) and not np.array_equal(batch[1].image, single.image)
    with pytest.raises(ValueError, match="one preprocessed image"):
        flows.capture_views(model, xs)


@pytest.mark.parametrize("name", ["block2_sepconv1", "block4_sepconv2", "block7_sepconv3", "block14_sepconv2"])
def test_pointwise_is_the_sum_of_its_contributions(captures, model, name):
    exact = flows.separable_anatomy(model, captures["fp32"], name)
    for o in (0, exact.out_channels // 2, exact.out_channels - 1):
        con = flows.pointwise_contributions(exact, o, k=5)
        assert con.tolerance_ok and con.relative_error < 1e-5, (o, con.max_error, con.scale)
        np.testing.assert_allclose(con.top_maps.sum(0) + con.rest, con.reconstruction, rtol=1e-4, atol=1e-4)
        assert np.isclose(con.share.sum(), 1.0) and np.all(np.diff(con.share) <= 1e-12)
    shown = flows.separable_anatomy(model, captures[299], name)  # float16, as the app shows it
    con = flows.pointwise_contributions(shown, 1)
    assert con.tolerance_ok and con.relative_error < 3e-3


def test_pointwise_check_fails_on_wrong_weights(captures, model):
    anat = flows.separable_anatomy(model, captures["fp32"], "block5_sepconv1")
    wrong = replace(anat, weights=np.roll(anat.weights, 1, axis=0))  # each output gets its neighbour's weights
    con = flows.pointwise_contributions(wrong, 10)
    assert not con.tolerance_ok and con.relative_error > 1e-2


def test_bn_after_the_sum_gives_the_bn_layer(captures, model):
    cap = captures["fp32"]
    anat = flows.separable_anatomy(model, cap, "block6_sepconv2")
    con = flows.pointwise_contributions(anat, 7)
    np.testing.assert_allclose(con.bn_output, cap.channel("block6_sepconv2_bn", 7), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", [150, 299, "fp32"])
def test_residual_sum_equals_the_add_output(captures, key):
    cap = captures[key]
    for i in range(2, 14):
        rv = flows.residual_view(cap, f"block{i}")
        assert rv.identity == (5 <= i <= 12)
        assert rv.tolerance_ok, (i, rv.max_error)
        assert rv.max_error <= (1e-5 if key == "fp32" else 3e-3) * rv.scale
    rv = flows.residual_view(cap, "block7")
    assert (rv.input_name, rv.branch_name, rv.total_name) == ("block6_add", "block7_sepconv3_bn", "block7_add")
    assert np.array_equal(rv.shortcut, rv.input)
    with pytest.raises(ValueError, match="no residual"):
        flows.residual_view(cap, "block14")


def test_cache_per_image_fits_100_mb_at_299(captures):
    cap = captures[299]
    assert cap.nbytes <= 100e6, cap.nbytes / 1e6
    before = cap.maps["block2_add"].clone()
    cap.map("block2_add")[:] = 0  # views get copies: the shared cache can't be changed through them
    cap.channel("block2_add", 0)[:] = 0
    assert torch.equal(cap.maps["block2_add"], before)


def test_stats_and_channel_order(captures):
    cap = captures[150]
    act = cap.map("block3_sepconv2_act")
    stats = flows.layer_stats(act)
    assert stats.vmin == 0.0 and stats.zero_after_relu == stats.exact_zeros > 0
    assert stats.shape == (256, 36, 36) and stats.spatial == "36×36"  # before block3_pool
    bn = flows.layer_stats(cap.map("block3_sepconv1_bn"))
    assert bn.vmin < 0 and bn.exact_zeros < bn.zero_after_relu
    means = act.reshape(256, -1).mean(1)
    assert np.all(np.diff(means[flows.channel_order(act, "mean")]) <= 1e-6)
    zeros = (act <= 0).reshape(256, -1).sum(1)
    assert np.all(np.diff(zeros[flows.channel_order(act, "sparsity")]) >= 0)
    assert np.all(np.diff(zeros[flows.channel_order(act, "sparsity_desc")]) <= 0)
    assert sorted(flows.channel_order(act, "mean")) == list(range(256))
    with pytest.raises(ValueError, match="unknown channel order"):
        flows.channel_order(act, "colour")


def test_architecture_summary(model):
    arch = flows.architecture(model, 299)
    assert [b.name for b in arch] == [f"block{i}" for i in range(1, 15)] + ["head"]
    assert sum(b.params for b in arch) == xviz.count_parameters(model.net)
    assert sum(b.params for b in arch[:-1]) == 20_806_952  # the paper's 22,855,952 minus its 1000-class fc
    by = {b.name: b for b in arch}
    assert by["block2"].residual == "1×1 conv /2 + BN" and by["block9"].residual == "identity"
    assert by["block1"].residual == by["block14"].residual == "none"
    assert by["block4"].output_shape == (728, 19, 19) and by["block5"].input_shape == (728, 19, 19)
    assert by["block14"].output_text == "10×10×2048" and by["block1"].input_text == "299×299×3"
    assert by["head"].output_shape == (6,)
    stages = flows.size_stages(flows.layer_table(model, 299), 299)
    assert [s for _, s, _ in stages] == [299, 149, 147, 74, 37, 19, 19, 10, 10]
    assert stages[-1][2] == 2048


def test_bad_inputs_say_what_to_do(captures, model, photo):
    cap = captures[150]
    with pytest.raises(KeyError, match="not among the captured layers"):
        cap.map("block5_sepconv9")
    with pytest.raises(IndexError, match="728 channels"):
        cap.channel("block5_add", 728)
    with pytest.raises(ValueError, match="not a separable convolution"):
        flows.separable_anatomy(model, cap, "block5_add")
    with pytest.raises(ValueError, match="one preprocessed image"):
        flows.capture_views(model, model.preprocess(photo)[0])  # (3, S, S): the batch axis is missing
