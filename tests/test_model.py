"""The architecture itself: parameter count, TF 'same' padding, hook-friendliness, Keras names, shapes.

These tests use a randomly initialised network: they check structure, not what the weights learned
(tests/test_keras_reference.py does that with the trained kitchenware model).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xviz import Xception, XceptionConfig, count_parameters
from xviz.model import MIN_INPUT_SIZE, Add, Dense, GlobalAvgPool, MaxPool2dSame, SeparableConv2d, tf_same_padding


@pytest.fixture(scope="module")
def net() -> Xception:
    torch.manual_seed(0)
    return Xception(XceptionConfig(num_classes=1000)).eval()


# -- parameters -----------------------------------------------------------------------------------

def test_trainable_parameters_match_the_paper(net):
    assert count_parameters(net) == 22_855_952  # Chollet 2017, Table 3


def test_parameter_count_excludes_batchnorm_statistics(net):
    buffers = sum(b.numel() for name, b in net.named_buffers() if not name.endswith("num_batches_tracked"))
    assert buffers == 54_528  # Keras' 22,910,480 total minus the paper's count
    assert count_parameters(net) + buffers == 22_910_480


def test_notop_drops_exactly_the_dense_head():
    assert count_parameters(Xception(XceptionConfig(num_classes=0))) == 22_855_952 - (2048 * 1000 + 1000)


# -- TensorFlow 'same' padding --------------------------------------------------------------------

@pytest.mark.parametrize("size, kernel, stride, expected", [
    (299, 3, 2, (1, 1)),  # odd size, stride 2: symmetric, like PyTorch padding=1
    (147, 3, 2, (1, 1)),
    (19, 3, 2, (1, 1)),
    (74, 3, 2, (0, 1)),   # even size, stride 2: the extra pixel goes after (block3_pool at 299)
    (150, 3, 2, (0, 1)),
    (72, 3, 2, (0, 1)),   # every pool at 150 input
    (36, 3, 2, (0, 1)),
    (9, 3, 2, (1, 1)),
    (74, 1, 2, (0, 0)),   # the 1x1/2 shortcut convs need no padding
    (75, 1, 2, (0, 0)),
    (5, 3, 1, (1, 1)),    # stride 1, odd kernel: always symmetric
    (6, 3, 1, (1, 1)),
    (6, 4, 1, (1, 2)),    # even kernel: after gets the extra
    (1, 3, 2, (1, 1)),
])
def test_tf_same_padding(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # output = ceil(size / stride)


def test_maxpool_same_pads_after_on_even_sizes():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 74, 74)
    ours = MaxPool2dSame(3, 2)(x)
    tf_like = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)
    torch_default = nn.MaxPool2d(3, 2, padding=1)(x)  # pads (1, 1): windows shifted by one pixel
    assert ours.shape == (1, 3, 37, 37)
    assert torch.equal(ours, tf_like)
    assert not torch.equal(ours, torch_default)


def test_maxpool_same_pads_symmetrically_on_odd_sizes():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 147, 147)
    ours = MaxPool2dSame(3, 2)(x)
    assert ours.shape == (1, 3, 74, 74)
    assert torch.equal(ours, nn.MaxPool2d(3, 2, padding=1)(x))


@pytest.mark.parametrize("size", [74, 147])
def test_maxpool_padding_is_minus_infinity(size):
    x = torch.full((1, 2, size, size), -5.0)
    out = MaxPool2dSame(3, 2)(x)
    assert torch.equal(out, torch.full_like(out, -5.0)), "padding must never win a max (zero padding would)"


# -- hooks: no in-place ops, one module per use ---------------------------------------------------

def test_no_inplace_relu(net):
    inplace = [name for name, m in net.named_modules() if getattr(m, "inplace", False)]
    assert inplace == []


def test_every_leaf_module_runs_exactly_once_per_forward(net):
    calls: dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)))
    try:
        with torch.no_grad():
            net(torch.randn(1, 3, 80, 80))
    finally:
        for h in handles:
            h.remove()
    leaves = [name for name, m in net.named_modules() if not list(m.children())]
    assert {name: calls.get(name, 0) for name in leaves} == {name: 1 for name in leaves}
    assert len([n for n in leaves if isinstance(net.get_submodule(n), nn.ReLU)]) == 2 + 1 + 2 * 2 + 8 * 3 + 2 + 2


def test_backward_hooks_on_every_relu_work(net):
    # pytorch-grad-cam #185 / captum #973: an in-place op after a hooked module breaks backward
    grads = []
    handles = [m.register_full_backward_hook(lambda m, gi, go: grads.append(go[0].shape))
               for m in net.modules() if isinstance(m, (nn.ReLU, Add))]
    try:
        x = torch.randn(1, 3, 80, 80, requires_grad=True)
        net(x)[0, 0].backward()
    finally:
        for h in handles:
            h.remove()
    assert len(grads) == len(handles)
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- Keras names ----------------------------------------------------------------------------------

def _keras_named_layers(layout: dict) -> list[str]:
    """Names Keras gives Xception's layers, from a real Keras-2 file (anonymous ones left out)."""
    anonymous = re.compile(r"^(input_\d+|conv2d(_\d+)?|batch_normalization(_\d+)?|add(_\d+)?)$")
    return [name for name in layout["root_attrs"]["layer_names"] if not anonymous.match(name)]


def test_every_keras_layer_name_is_addressable(net, keras2_layout):
    keras_names = _keras_named_layers(keras2_layout)
    assert keras_names[0] == "block1_conv1" and keras_names[-2:] == ["avg_pool", "predictions"]
    assert "block14_sepconv2_act" in keras_names and len(keras_names) == 134 - 1 - 4 - 4 - 12
    ours = net.layer_names()
    missing = [n for n in keras_names if n not in ours]
    assert missing == []
    # and in the same order as Keras creates them (Keras puts a block's shortcut after its pool)
    assert [n for n in ours if n in keras_names] == keras_names


@pytest.mark.parametrize("pattern, kind", [
    (r"block1_conv\d", nn.Conv2d),
    (r"block\d+_sepconv\d", SeparableConv2d),
    (r"block\d+_sepconv\d_depthwise", nn.Conv2d),
    (r"block\d+_(conv|sepconv)\d_bn|block\d+_residual_bn", nn.BatchNorm2d),
    (r"block\d+_(conv|sepconv)\d_act", nn.ReLU),
    (r"block\d+_pool", MaxPool2dSame),
    (r"block\d+_residual", nn.Conv2d),
    (r"block\d+_add", Add),
    (r"avg_pool", GlobalAvgPool),
    (r"predictions", Dense),
])
def test_names_map_to_the_right_modules(net, pattern, kind):
    names = [n for n in net.layer_names() if re.fullmatch(pattern, n)]
    assert names, f"no layer matches {pattern}"
    for name in names:
        module = net.layer(name)
        assert isinstance(module, kind), f"{name} -> {type(module).__name__}"
        assert net.get_submodule(net.module_path(name)) is module


def test_depthwise_names_point_at_depthwise_convs(net):
    for name in net.layer_names():
        if name.endswith("_depthwise"):
            conv = net.layer(name)
            assert conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (3, 3)
            assert net.layer(name[: -len("_depthwise")]).depthwise is conv


def test_documented_names_and_paths(net):
    assert net.module_path("block1_conv1_act") == "entry_flow.block1.conv1_act"
    assert net.module_path("block5_sepconv2_act") == "middle_flow.block5.sepconv2_act"
    assert net.module_path("block13_residual") == "exit_flow.block13.residual"
    assert net.module_path("block14_sepconv2_act") == "exit_flow.block14.sepconv2_act"
    assert net.module_path("block5_sepconv1_depthwise") == "middle_flow.block5.sepconv1.depthwise"
    assert net.module_path("block2_add") == "entry_flow.block2.add"
    assert [f"block{n}_add" for n in range(2, 14)] == [n for n in net.layer_names() if n.endswith("_add")]
    assert "block2_sepconv1_act" not in net.layer_names()  # Keras block 2 has no ReLU before sepconv1
    with pytest.raises(KeyError, match="block99_conv1"):
        net.layer("block99_conv1")
    with pytest.raises(KeyError):
        net.module_path("conv2d_1")


def test_layer_names_are_in_forward_order(net):
    fired: list[str] = []
    handles = [net.layer(n).register_forward_hook(lambda m, i, o, n=n: fired.append(n))
               for n in net.layer_names()]
    try:
        with torch.no_grad():
            net(torch.randn(1, 3, 80, 80))
    finally:
        for h in handles:
            h.remove()
    assert fired == net.layer_names()


def test_units_are_the_layer_names_with_what_feeds_each(net):
    """Every unit's inputs are exactly the tensors its module receives in a real forward pass."""
    units = net.units()
    assert [u.name for u in units] == net.layer_names() and units is net.units()  # built once
    assert [u.name for u in units if u.kind == "pointwise"] == [
        f"block{b}_sepconv{k}" for b, n in [(2, 2), (3, 2), (4, 2), *((i, 3) for i in range(5, 13)), (13, 2), (14, 2)]
        for k in range(1, n + 1)]  # the 34 separable convs
    outputs: dict[str, torch.Tensor] = {}
    received: dict[str, tuple] = {}
    handles = []
    for u in units:
        handles.append(net.get_submodule(u.path).register_forward_hook(
            lambda m, i, o, n=u.name: outputs.__setitem__(n, o)))
        # a pointwise unit's module is the whole separable conv: what feeds it is its 1x1 half's input
        reader = f"{u.path}.pointwise" if u.kind == "pointwise" else u.path
        handles.append(net.get_submodule(reader).register_forward_hook(
            lambda m, i, o, n=u.name: received.__setitem__(n, i)))
    x = torch.randn(1, 3, 80, 80)
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    outputs[""] = x
    for u in units:
        assert len(received[u.name]) == len(u.inputs), u
        assert all(got is outputs[name] for got, name in zip(received[u.name], u.inputs)), u


def test_unit_strides_and_flows(net):
    spatial = [u for u in net.units() if u.flow != "head"]
    sides: dict[str, int] = {}
    handles = [net.get_submodule(u.path).register_forward_hook(
        lambda m, i, o, n=u.name: sides.__setitem__(n, o.shape[-1])) for u in spatial]
    try:
        with torch.no_grad():
            net(torch.randn(1, 3, 299, 299))
    finally:
        for h in handles:
            h.remove()
    for u in spatial:
        assert u.stride == 2 ** round(math.log2(299 / sides[u.name])), u  # 149 px -> 2, ..., 10 px -> 32
    assert {u.block: u.flow for u in net.units()} == {
        **{f"block{i}": "entry_flow" for i in range(1, 5)}, **{f"block{i}": "middle_flow" for i in range(5, 13)},
        "block13": "exit_flow", "block14": "exit_flow", "head": "head"}
    assert list(net.block_paths())[:2] == ["block1", "block2"] and net.block_paths()["head"] == "head"


# -- shapes ---------------------------------------------------------------------------------------

# (layer, channels, side at 299, side at 150); 299 gives the paper's 149 -> 147 -> 74 -> 37 -> 19 -> 10
SHAPES = [
    ("block1_conv1_act", 32, 149, 74),
    ("block1_conv2_act", 64, 147, 72),
    ("block2_sepconv2_bn", 128, 147, 72),
    ("block2_add", 128, 74, 36),
    ("block3_add", 256, 37, 18),
    ("block4_add", 728, 19, 9),
    ("block12_add", 728, 19, 9),
    ("block13_sepconv2_bn", 1024, 19, 9),
    ("block13_add", 1024, 10, 5),
    ("block14_sepconv1_act", 1536, 10, 5),
    ("block14_sepconv2_act", 2048, 10, 5),
]


@pytest.mark.parametrize("size", [299, 150])
def test_activation_shapes(net, size):
    from xviz import activations

    acts = activations(net, torch.randn(1, 3, size, size), [name for name, *_ in SHAPES])
    column = 2 if size == 299 else 3
    assert {n: tuple(a.shape) for n, a in acts.items()} == {
        row[0]: (1, row[1], row[column], row[column]) for row in SHAPES}


def test_flow_shapes_at_the_smallest_input(net):
    # at 299 and 150 the flows' outputs are block4_add, block12_add and block14_sepconv2_act above
    with torch.no_grad():
        x = net.entry_flow(torch.randn(1, 3, 71, 71))  # 71 -> 35 -> 33 -> 17 -> 9 -> 5
        assert x.shape == (1, 728, 5, 5)
        x = net.middle_flow(x)
        assert x.shape == (1, 728, 5, 5)
        x = net.exit_flow(x)
        assert x.shape == (1, 2048, 3, 3)
        assert net.forward_head(x).shape == (1, 1000)
        assert net.forward_head(x, pre_logits=True).shape == (1, 2048)


def test_non_square_inputs_work(net):
    with torch.no_grad():
        assert net(torch.randn(2, 3, 71, 120)).shape == (2, 1000)


@pytest.mark.parametrize("shape", [(1, 3, 70, 70), (1, 3, 70, 299), (1, 3, 299, 32)])
def test_input_below_71_pixels_is_refused(net, shape):
    assert MIN_INPUT_SIZE == 71
    with pytest.raises(ValueError, match="at least 71"):
        net(torch.randn(*shape))


def test_head_layers_and_config():
    from xviz.model import HeadLayer

    cfg = XceptionConfig(num_classes=6, head=(HeadLayer("dense", "dense", 100, "relu"),
                                              HeadLayer("dropout", "dropout", rate=0.2),
                                              HeadLayer("dense", "dense_1", 6)))
    net = Xception(cfg).eval()
    assert net.num_classes == 6
    assert [n for n in net.layer_names() if not n.startswith("block")] == ["avg_pool", "dense", "dropout", "dense_1"]
    assert isinstance(net.layer("dense").act, nn.ReLU)
    assert count_parameters(net) == 22_855_952 - 2_049_000 + 2048 * 100 + 100 + 100 * 6 + 6
    with pytest.raises(ValueError, match="activation"):
        Dense(4, 2, "softmax")
