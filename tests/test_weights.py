"""Every weights source, loaded for real: timm layout, our own layout, Keras 2 HDF5, Keras 3, downloads.

ImageNet files can't be downloaded here, so the files are generated at test time in each format's
exact layout from the kitchenware model's backbone (which *is* the Keras ImageNet backbone) plus a
random head: whatever loads must then reproduce the kitchenware backbone's features bit for bit.
The layouts come from recorded real files (tests/data/timm_legacy_xception_state_dict.tsv,
tests/data/keras2_h5_layout.json), and the writers are checked against them, so they can't drift.
Files land in tmp_path and are never committed (each is ~90 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import pickletools
import re
import socket
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import xviz
from helpers import rel_err
from xviz import weights as W
from xviz.errors import LabelsError, WeightsError, WeightsUnavailableError
from xviz.model import Xception, XceptionConfig

DATA = Path(__file__).resolve().parent / "data"


# -- shared material ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def x(kitchenware, photo) -> torch.Tensor:
    return kitchenware.preprocess(photo).cpu()


@pytest.fixture(scope="module")
def reference(kitchenware, x) -> tuple[torch.Tensor, torch.Tensor]:
    """Kitchenware (pooled features (1, 2048), logits (1, 6)) for ``x``."""
    return _run(kitchenware.net, x)


@pytest.fixture(scope="module")
def reference_features(reference) -> torch.Tensor:
    """What every loaded copy of the kitchenware backbone must give."""
    return reference[0]


@pytest.fixture(scope="module")
def backbone(kitchenware_state_dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in kitchenware_state_dict.items() if not k.startswith("head.")}


@pytest.fixture(scope="module")
def fc() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(1000, 2048, generator=g) * 0.01, torch.randn(1000, generator=g) * 0.1


@torch.no_grad()
def _run(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled features, logits or None) from one forward: the suite runs on 2 cores."""
    device = next(net.parameters()).device
    feature_map = net.forward_features(x.to(device))
    pooled = net.forward_head(feature_map, pre_logits=True).float().cpu()
    return pooled, (net.forward_head(feature_map).float().cpu() if net.num_classes else None)


def _assert_same_backbone(model: xviz.LoadedModel, x, reference_features) -> torch.Tensor | None:
    """Checks the features; returns the logits of the same forward."""
    ours, logits = _run(model.net, x)
    assert ours.shape == (1, 2048)
    assert rel_err(ours, reference_features) <= 1e-6
    return logits


def _logits_from(features: torch.Tensor, fc) -> torch.Tensor:
    weight, bias = fc
    return features @ weight.t() + bias  # (1, 2048) @ (2048, 1000) -> (1, 1000)


# -- timm layout ----------------------------------------------------------------------------------

def timm_layout() -> list[tuple[str, tuple[int, ...]]]:
    """The 276 (key, shape) rows of timm's legacy_xception state dict, in file order."""
    rows = []
    for line in (DATA / "timm_legacy_xception_state_dict.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(n) for n in re.findall(r"\d+", shape))))
    return rows


def timm_to_ours(keys: list[str]) -> dict[str, str]:
    """timm key -> xviz key, derived here from timm's structure (not from xviz.weights).

    timm: conv1/bn1/conv2/bn2 = Keras block1; block k = Keras block k+1, whose ``rep`` Sequential
    holds [ReLU,] SeparableConv2d (``conv1`` = depthwise, ``pointwise``), BN, ... and whose
    ``skip``/``skipbn`` is the 1x1 shortcut; conv3/bn3/conv4/bn4 = Keras block14.
    """
    fixed = {"conv1": "entry_flow.block1.conv1", "bn1": "entry_flow.block1.conv1_bn",
             "conv2": "entry_flow.block1.conv2", "bn2": "entry_flow.block1.conv2_bn",
             "conv3": "exit_flow.block14.sepconv1", "bn3": "exit_flow.block14.sepconv1_bn",
             "conv4": "exit_flow.block14.sepconv2", "bn4": "exit_flow.block14.sepconv2_bn"}

    def flow(block: int) -> str:
        return "entry_flow" if block <= 4 else "middle_flow" if block <= 12 else "exit_flow"

    convs: dict[int, list[int]] = {}
    norms: dict[int, list[int]] = {}
    for key in keys:
        m = re.fullmatch(r"block(\d+)\.rep\.(\d+)\.(.+)", key)
        if m:
            target = convs if m[3] in ("conv1.weight", "pointwise.weight") else norms
            indices = target.setdefault(int(m[1]), [])
            if int(m[2]) not in indices:
                indices.append(int(m[2]))
    mapping = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] in fixed:
            rest = ".".join(parts[1:]).replace("conv1.weight", "depthwise.weight")
            mapping[key] = f"{fixed[parts[0]]}.{rest}"
        elif parts[0] == "fc":
            mapping[key] = f"head.predictions.linear.{parts[1]}"
        elif parts[1] in ("skip", "skipbn"):
            block = int(parts[0][5:]) + 1
            mapping[key] = f"{flow(block)}.block{block}.{'residual' if parts[1] == 'skip' else 'residual_bn'}.{parts[2]}"
        else:
            timm_block, index, rest = int(parts[0][5:]), int(parts[2]), ".".join(parts[3:])
            block = timm_block + 1
            if rest in ("conv1.weight", "pointwise.weight"):
                k = sorted(convs[timm_block]).index(index) + 1
                mapping[key] = f"{flow(block)}.block{block}.sepconv{k}.{rest.replace('conv1', 'depthwise')}"
            else:
                k = sorted(norms[timm_block]).index(index) + 1
                mapping[key] = f"{flow(block)}.block{block}.sepconv{k}_bn.{rest}"
    return mapping


def make_timm_state_dict(backbone, fc, pointwise_2d: bool = False) -> dict[str, torch.Tensor]:
    rows = timm_layout()
    mapping = timm_to_ours([k for k, _ in rows])
    sd = {}
    for key, shape in rows:
        ours = mapping[key]
        if key == "fc.weight":
            value = fc[0]
        elif key == "fc.bias":
            value = fc[1]
        elif key.endswith("num_batches_tracked"):
            value = torch.tensor(0)
        else:
            value = backbone[ours]
        assert tuple(value.shape) == shape, f"{key}: {tuple(value.shape)} vs timm's {shape}"
        if pointwise_2d and key.endswith("pointwise.weight"):
            value = value[:, :, 0, 0]  # (Cout, Cin, 1, 1) -> (Cout, Cin), as in Cadene's older files
        sd[key] = value.clone()
    return sd


@pytest.fixture(scope="module")
def timm_state_dict(backbone, fc) -> dict[str, torch.Tensor]:
    return make_timm_state_dict(backbone, fc)


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory, timm_state_dict) -> Path:
    path = tmp_path_factory.mktemp("timm") / "xception-timm.pth"
    torch.save(timm_state_dict, path)
    return path


def test_timm_layout_reference_is_complete():
    rows = timm_layout()
    assert len(rows) == 276
    assert sum(k.endswith("num_batches_tracked") for k, _ in rows) == 40
    assert rows[0] == ("conv1.weight", (32, 3, 3, 3)) and rows[-1] == ("fc.bias", (1000,))


def test_timm_layout_maps_one_to_one_onto_our_model():
    rows = timm_layout()
    mapping = timm_to_ours([k for k, _ in rows])
    ours = Xception(XceptionConfig(num_classes=1000)).state_dict()
    assert sorted(mapping.values()) == sorted(ours)  # a bijection, num_batches_tracked included
    assert {k: tuple(ours[mapping[k]].shape) for k, _ in rows} == dict(rows)


def test_timm_state_dict_loads_strictly_and_reproduces_the_backbone(timm_file, x, reference_features, fc):
    model = xviz.load_model(timm_file)
    assert model.kind == "file" and model.net.num_classes == 1000
    assert "timm-layout" in model.source and "ImageNet labels assumed" in model.source
    assert model.labels == xviz.imagenet_labels()
    logits = _assert_same_backbone(model, x, reference_features)
    assert rel_err(logits, _logits_from(reference_features, fc)) <= 1e-5


def test_timm_checkpoint_converts_every_key(timm_state_dict):
    ckpt = W.state_dict_to_checkpoint(dict(timm_state_dict), {}, "timm.pth")
    assert ckpt.layout == "timm"
    assert len(ckpt.state_dict) == 276
    W.build(ckpt)  # strict: raises on any missing, unexpected or wrongly shaped key


def test_old_cadene_file_with_2d_pointwise_weights_loads(tmp_path, backbone, fc, x, reference_features):
    sd = make_timm_state_dict(backbone, fc, pointwise_2d=True)
    assert sd["block1.rep.0.pointwise.weight"].shape == (128, 64)
    path = tmp_path / "xception-b5690688.pth"
    torch.save(sd, path)
    _assert_same_backbone(xviz.load_model(path), x, reference_features)


def test_wrapped_and_dataparallel_state_dicts_load(tmp_path, timm_state_dict):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_state_dict.items()}, "epoch": 3}, path)
    assert W.read_checkpoint(path).layout == "timm"


@pytest.mark.parametrize("change, named", [
    ("missing", "middle_flow.block6.sepconv2_bn.running_var"),  # timm block5.rep.5 = Keras block6 sepconv2_bn
    ("extra", "block1.rep.0.conv1.bias"),
    ("wrong_shape", "block1.skip.weight"),
    ("beyond_the_architecture", "block3.rep.9.weight"),
    ("no_such_block", "block13.skip.weight"),
    ("foreign", "head.fc.weight"),
])
def test_timm_key_problems_are_named(timm_state_dict, change, named):
    sd = dict(timm_state_dict)
    if change == "missing":
        del sd["block5.rep.5.running_var"]
    elif change == "wrong_shape":
        sd[named] = torch.zeros(128, 64, 3, 3)
    else:
        sd[named] = torch.zeros(3)
    with pytest.raises(WeightsError, match=re.escape(named)):
        W.build(W.state_dict_to_checkpoint(sd, {}, "bad.pth"))


# -- our own layout: safetensors and .pth ---------------------------------------------------------

def test_save_weights_round_trips_any_head(tmp_path, kitchenware, x, reference):
    path = tmp_path / "kitchenware.safetensors"
    xviz.save_weights(kitchenware.net, path)
    model = xviz.load_model(path, labels=kitchenware.labels)
    assert model.net.config == kitchenware.net.config  # Dense(100, relu) -> Dropout -> Dense(6), pool name
    assert model.labels == kitchenware.labels
    assert torch.equal(_run(model.net, x)[1], reference[1])


def _with_head(backbone, num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(num_classes)
    return {**backbone, "head.predictions.linear.weight": torch.randn(num_classes, 2048, generator=g) * 0.01,
            "head.predictions.linear.bias": torch.randn(num_classes, generator=g)}


@pytest.mark.parametrize("num_classes, suffix", [(1, ".pth"), (37, ".safetensors"), (1000, ".pt")])
def test_our_layout_with_any_number_of_classes(tmp_path, backbone, x, reference_features, num_classes, suffix):
    sd = _with_head(backbone, num_classes)
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))  # no xviz metadata: the head is inferred from the keys
    else:
        torch.save(sd, path)
    model = xviz.load_model(path)
    assert model.net.num_classes == num_classes and len(model.labels) == num_classes
    if num_classes != 1000:
        assert model.labels[0] == "class 0" and "no labels file" in model.source
    logits = _assert_same_backbone(model, x, reference_features)
    head = (sd["head.predictions.linear.weight"], sd["head.predictions.linear.bias"])
    assert rel_err(logits, _logits_from(reference_features, head)) <= 1e-5


def test_pth_with_a_multi_layer_head_needs_its_config(tmp_path, kitchenware, kitchenware_state_dict, x, reference):
    bare = tmp_path / "bare.pth"
    torch.save(kitchenware_state_dict, bare)
    with pytest.raises(WeightsError, match="save_weights"):
        xviz.load_model(bare)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": kitchenware_state_dict, "xviz_config": W.config_to_json(kitchenware.net.config)}, wrapped)
    assert torch.equal(_run(xviz.load_model(wrapped).net, x)[1], reference[1])


@pytest.fixture(scope="module")
def three_class_file(tmp_path_factory, backbone) -> Path:
    path = tmp_path_factory.mktemp("three") / "three.pth"
    torch.save(_with_head(backbone, 3), path)
    return path


@pytest.mark.parametrize("file_name, text", [
    ("labels.txt", "cat\ndog\n\nhorse\n"),
    ("labels.json", json.dumps(["cat", "dog", "horse"])),
    ("labels.json", json.dumps({"0": "cat", "2": "horse", "1": "dog"})),
    ("class_indices.json", json.dumps({"dog": 1, "cat": 0, "horse": 2})),  # Keras' flow_from_directory
])
def test_labels_from_text_and_json(tmp_path, three_class_file, file_name, text):
    labels = tmp_path / file_name
    labels.write_text(text)
    model = xviz.load_model(three_class_file, labels=labels)
    assert model.labels == ["cat", "dog", "horse"]
    assert "no labels file" not in model.source


@pytest.mark.parametrize("file_name, text, says", [
    ("labels.txt", "cat\ndog\n", "2 names"),
    ("labels.txt", "a\nb\nc\nd\n", "4 names"),
    ("labels.json", "[\"cat\", ", "malformed"),
    ("labels.json", json.dumps({"0": "cat", "5": "dog", "1": "x"}), "gaps"),
    ("labels.txt", "", "empty"),
    ("labels.json", json.dumps([["cat"], "dog", "horse"]), "names should be"),
    ("labels.json", json.dumps({"cat": "x", "dog": "y", "horse": "z"}), "names to indices"),
    ("labels.txt", "cat\n" + "dog" * 100 + "\nhorse\n", "300 characters long"),
    ("labels.txt", "cat\ndog\nhorse\n" + "#" * 2**20, "far smaller"),
    ("labels.json", "[" * 10_000 + "]" * 10_000, "nested too deeply"),
])
def test_bad_labels_are_a_labels_error(tmp_path, three_class_file, file_name, text, says):
    labels = tmp_path / file_name
    labels.write_text(text)
    with pytest.raises(LabelsError, match=says):
        xviz.load_model(three_class_file, labels=labels)


def test_labels_list_of_the_wrong_size(three_class_file):
    with pytest.raises(LabelsError, match="3 outputs"):
        xviz.load_model(three_class_file, labels=["only", "two"])


def test_our_layout_problems_are_named(tmp_path, backbone):
    sd = _with_head(backbone, 3)
    del sd["middle_flow.block7.sepconv3_bn.running_mean"]
    sd["middle_flow.block7.sepconv3.bias"] = torch.zeros(728)
    sd["exit_flow.block13.residual.weight"] = torch.zeros(1024, 728, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as info:
        xviz.load_model(path)
    message = str(info.value)
    for key in ("middle_flow.block7.sepconv3_bn.running_mean", "middle_flow.block7.sepconv3.bias",
                "exit_flow.block13.residual.weight"):
        assert key in message


# -- Keras 2 HDF5 ---------------------------------------------------------------------------------

RESIDUAL_BLOCKS = (2, 3, 4, 13)  # Keras creates the anonymous shortcut convs in this order


def _keras_arrays(layer: dict, path: str, sd: dict[str, torch.Tensor], fc) -> list[np.ndarray]:
    """A layer's arrays in Keras' variable order and layout, from xviz tensors."""
    arrays = []
    for weight_name in layer["weight_names"]:
        var = weight_name.split("/")[-1].split(":")[0]
        if layer["name"] == "predictions":
            t = fc[0].t() if var == "kernel" else fc[1]  # (out, in) -> Keras (in, out)
        elif var == "kernel":
            t = sd[f"{path}.weight"].permute(2, 3, 1, 0)  # (Cout, Cin, kh, kw) -> (kh, kw, Cin, Cout)
        elif var == "depthwise_kernel":
            t = sd[f"{path}.depthwise.weight"].permute(2, 3, 0, 1)  # (Cin, 1, kh, kw) -> (kh, kw, Cin, 1)
        elif var == "pointwise_kernel":
            t = sd[f"{path}.pointwise.weight"].permute(2, 3, 1, 0)  # (Cout, Cin, 1, 1) -> (1, 1, Cin, Cout)
        else:
            t = sd[f"{path}.{ {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean', 'moving_variance': 'running_var'}[var] }"]
        arrays.append(np.ascontiguousarray(t.numpy(), dtype=np.float32))
    return arrays


def write_keras2_h5(path: Path, layout: dict, sd: dict[str, torch.Tensor], fc, top: bool = True) -> list[dict]:
    """Write ``sd`` the way tf_keras ``Model.save_weights('x.h5')`` does, following the recorded layout.

    ``top=False`` writes the ``_notop`` variant (no avg_pool, no predictions). Returns the layers written.
    """
    layers = [l for l in layout["layers"] if top or l["name"] not in ("avg_pool", "predictions")]
    names = Xception(XceptionConfig(num_classes=0))
    convs, norms = iter(RESIDUAL_BLOCKS), iter(RESIDUAL_BLOCKS)
    ascii_str = h5py.string_dtype("ascii")  # what the recorded file has (vlen ascii)
    with h5py.File(path, "w") as f:
        for key in ("backend", "keras_version"):
            f.attrs.create(key, layout["root_attrs"][key], dtype=ascii_str)
        f.attrs.create("layer_names", [l["name"] for l in layers], dtype=ascii_str)
        for layer in layers:
            group = f.create_group(layer["name"])
            if not layer["weight_names"]:
                group.attrs["weight_names"] = np.zeros(0)  # Keras writes [] and h5py stores float64 (0,)
                continue
            group.attrs.create("weight_names", layer["weight_names"], dtype=ascii_str)
            if layer["name"] == "predictions":
                path_ = ""
            elif layer["name"].startswith("conv2d"):
                path_ = names.module_path(f"block{next(convs)}_residual")
            elif layer["name"].startswith("batch_normalization"):
                path_ = names.module_path(f"block{next(norms)}_residual_bn")
            else:
                path_ = names.module_path(layer["name"])
            for weight_name, array in zip(layer["weight_names"], _keras_arrays(layer, path_, sd, fc)):
                group.create_dataset(weight_name, data=array)  # "<layer>/<var>:0" -> <layer>/<layer>/<var>:0
        f.create_group("top_level_model_weights").attrs["weight_names"] = np.zeros(0)
    return layers


def _h5type(attr_id) -> str:
    """Same description of an attribute's type as tests/data/make_keras_reference.py records."""
    t = attr_id.get_type()
    if isinstance(t, h5py.h5t.TypeStringID):
        kind = "vlen" if t.is_variable_str() else f"fixed{t.get_size()}"
        cset = "utf8" if t.get_cset() == h5py.h5t.CSET_UTF8 else "ascii"
        return f"string/{kind}/{cset} shape={attr_id.shape}"
    return f"{attr_id.dtype} shape={attr_id.shape}"


def _text(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_text(x) for x in v.tolist()]
    return v


def describe_h5(path: Path) -> dict:
    """The structure of an .h5 file, in the recorded layout's terms (no data)."""
    with h5py.File(path, "r") as f:
        layers = []
        for name in _text(f.attrs["layer_names"]):
            g = f[name]
            datasets = []
            g.visititems(lambda n, obj: datasets.append(
                {"path": f"{name}/{n}", "shape": list(obj.shape), "dtype": str(obj.dtype)})
                if isinstance(obj, h5py.Dataset) else None)
            layers.append({"name": name, "attrs": sorted(g.attrs.keys()),
                           "weight_names": _text(g.attrs["weight_names"]),
                           "weight_names_dtype": _h5type(g.attrs.get_id("weight_names")),
                           "datasets": datasets})
        return {"root_attrs": {k: _text(f.attrs[k]) for k in f.attrs},
                "root_attr_dtypes": {k: _h5type(f.attrs.get_id(k)) for k in f.attrs},
                "root_groups_sorted": sorted(f.keys()), "layers": layers}


def _expected_layout(layout: dict, top: bool) -> dict:
    dropped = set() if top else {"avg_pool", "predictions"}
    names = [n for n in layout["root_attrs"]["layer_names"] if n not in dropped]
    dtypes = dict(layout["root_attr_dtypes"])
    dtypes["layer_names"] = f"string/vlen/ascii shape=({len(names)},)"
    return {"root_attrs": {**layout["root_attrs"], "layer_names": names},
            "root_attr_dtypes": dtypes,
            "root_groups_sorted": [g for g in layout["root_groups_sorted"] if g not in dropped],
            "layers": [l for l in layout["layers"] if l["name"] not in dropped]}


@pytest.fixture(scope="module", params=["full", "notop"])
def keras2_file(request, tmp_path_factory, keras2_layout, backbone, fc) -> tuple[Path, bool]:
    top = request.param == "full"
    name = "xception_weights_tf_dim_ordering_tf_kernels" + ("" if top else "_notop") + ".h5"
    path = tmp_path_factory.mktemp("keras2") / name
    write_keras2_h5(path, keras2_layout, backbone, fc, top=top)
    return path, top


def test_keras2_writer_reproduces_the_recorded_layout(keras2_file, keras2_layout):
    path, top = keras2_file
    assert describe_h5(path) == _expected_layout(keras2_layout, top)


def test_keras2_h5_loads_and_matches_the_backbone(keras2_file, x, reference_features, fc):
    path, top = keras2_file
    model = xviz.load_model(path)
    assert "Keras 2 HDF5" in model.source
    assert model.input_size == 299 and model.preprocessing.crop_pct == 1.0  # Keras: straight resize
    logits = _assert_same_backbone(model, x, reference_features)
    if top:
        assert model.net.num_classes == 1000 and model.labels == xviz.imagenet_labels()
        # Keras' model ends in softmax; xviz keeps the logits under it
        assert rel_err(logits, _logits_from(reference_features, fc)) <= 1e-5
    else:
        assert model.net.num_classes == 0 and model.labels == [] and not model.has_head
        with pytest.raises(WeightsError, match="no classifier head"):
            model.predict(_photo_of(x))


def _photo_of(x: torch.Tensor):
    from PIL import Image
    return Image.fromarray(xviz.to_display(x))


def test_keras2_file_without_layer_names_is_refused(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kernel", data=np.zeros(3))
    with pytest.raises(WeightsError, match="layer_names"):
        xviz.load_model(path)


# -- Keras 3 .keras -------------------------------------------------------------------------------

def test_keras3_file_with_a_custom_head(kitchenware):
    cfg = kitchenware.net.config
    assert [(h.kind, h.name, h.out_features, h.activation) for h in cfg.head] == [
        ("dense", "dense", 100, "relu"), ("dropout", "dropout", 0, "linear"), ("dense", "dense_1", 6, "linear")]
    assert cfg.head[1].rate == pytest.approx(0.2)
    assert cfg.pool_name == "global_average_pooling2d"
    assert kitchenware.input_size == 150 and kitchenware.kind == "kitchenware"
    assert W.read_checkpoint(W.kitchenware_path()).layout == "keras3"


def _rezip(src: Path, dst: Path, edit_config) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                edit_config(config)
                data = json.dumps(config).encode()
            zout.writestr(info.filename, data)


def test_keras3_softmax_head_keeps_logits(tmp_path, kitchenware, x, reference):
    def softmax_last(config):
        dense = [l for l in config["config"]["layers"] if l["class_name"] == "Dense"]
        dense[-1]["config"]["activation"] = "softmax"

    path = tmp_path / "kitchenware_softmax.keras"
    _rezip(W.kitchenware_path(), path, softmax_last)
    model = xviz.load_model(path, labels=kitchenware.labels)
    assert model.net.config.head[-1].activation == "linear"
    assert "Keras 3" in model.source and model.input_size == 150
    logits = _run(model.net, x)[1]
    assert torch.equal(logits, reference[1])
    assert abs(float(logits.sum()) - 1.0) > 1e-3  # logits, not probabilities


def test_keras3_unsupported_head_activation_is_refused(tmp_path):
    def odd_activation(config):
        dense = [l for l in config["config"]["layers"] if l["class_name"] == "Dense"]
        dense[0]["config"]["activation"] = "hard_silu"

    path = tmp_path / "odd.keras"
    _rezip(W.kitchenware_path(), path, odd_activation)
    with pytest.raises(WeightsError, match="hard_silu"):
        xviz.load_model(path)


def test_keras3_zip_without_weights_is_refused(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(WeightsError, match="model.weights.h5"):
        xviz.load_model(path)


# -- hostile and broken files ---------------------------------------------------------------------

class _Plant:
    """Unpickling this calls open(marker, 'w'): proof of code execution if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, timm_state_dict, suffix):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"innocent{suffix}"
    torch.save({"state_dict": dict(list(timm_state_dict.items())[:4]), "extra": _Plant(marker)}, path)
    # the payload is real: the pickle calls open() on the marker path when unpickled
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
    assert ("REDUCE", None) in ops and any(arg == str(marker) for _, arg in ops)
    with pytest.raises(WeightsError, match="never code"):
        xviz.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".h5", ".keras"])
def test_random_bytes_are_a_weights_error(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError):
        xviz.load_model(path)


@pytest.mark.parametrize("name", ["model.onnx", "weights.txt", "xception"])
def test_wrong_extension_is_a_weights_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="unsupported weights format"):
        xviz.load_model(path)


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="No weights file"):
        xviz.load_model(tmp_path / "nowhere.pth")


def test_a_state_dict_of_something_else_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)
    with pytest.raises(WeightsError, match="not an Xception state dict"):
        xviz.load_model(path)


# -- ImageNet download ----------------------------------------------------------------------------

def test_imagenet_offline_fails_fast_with_the_fetch_hint(offline, monkeypatch):
    monkeypatch.setattr(W, "DOWNLOAD_TIMEOUT_S", 60.0)  # so a wait for the stall timeout would show
    start = time.monotonic()
    calls = []
    with pytest.raises(WeightsUnavailableError) as info:
        xviz.load_model("imagenet", progress=lambda done, total: calls.append(done))
    assert time.monotonic() - start < 10  # the network error itself, not the 60 s watchdog
    # no progress without data: the app's bar lives outside its cached loader, and Streamlit can't
    # replay an element drawn there (CacheReplayClosureError on the next run)
    assert calls == []
    message = str(info.value)
    assert "python -m xviz fetch imagenet" in message and "offline" in message
    checkpoints = offline / "hub" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []


class _SilentServer:
    """Accepts connections on 127.0.0.1 and never answers: a network that died mid-request."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/xception.pth"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_fetch_gives_up_on_a_silent_server_and_the_worker_cleans_up(hub):
    """torch.hub.download_url_to_file has no timeout; xviz's watchdog stops waiting for it."""
    server = _SilentServer()
    spec = dataclasses.replace(W.IMAGENET, url=server.url, file_name="xception-silent.pth")
    try:
        with pytest.raises(WeightsUnavailableError, match=r"no data for 1 s.*python -m xviz fetch imagenet"):
            W.fetch(spec, timeout=1.0)
        job = W._DOWNLOADS[hub / spec.file_name]
        assert job.thread.is_alive()  # still blocked in torch.hub
    finally:
        server.close()
    job.thread.join(10)
    assert not job.thread.is_alive() and isinstance(job.error, WeightsUnavailableError)
    assert list(hub.iterdir()) == []  # torch's .partial and xviz's .download are gone


class _Server:
    """A one-file HTTP server on 127.0.0.1 that counts its downloads."""

    def __init__(self, payload: bytes):
        self.payload, self.requests = payload, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                self.wfile.write(outer.payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/xception.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


PUBLISHED_BYTES = 91_675_053  # xception-43020ad28.pth as timm publishes it


@pytest.fixture(scope="module")
def published_layout(tmp_path_factory, timm_state_dict) -> Path:
    """The ImageNet file's layout: timm's keys, saved in torch's pre-1.6 (non-zip) format. The file
    dates from 2019 and its size says so: this layout comes to within 10 KB of it (a zip would be
    45 KB larger than the published file)."""
    path = tmp_path_factory.mktemp("published") / "xception-43020ad28.pth"
    torch.save(timm_state_dict, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] == b"\x80\x02"  # a pickle, not a zip
    assert abs(path.stat().st_size - PUBLISHED_BYTES) < 10_000
    return path


@pytest.fixture(scope="module")
def server(published_layout):
    srv = _Server(published_layout.read_bytes())
    yield srv
    srv.close()


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty torch.hub cache, and no proxy between us and 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _spec(server: _Server, **changes) -> W.WeightsSpec:
    sha = hashlib.sha256(server.payload).hexdigest()
    return dataclasses.replace(W.IMAGENET, url=server.url, file_name=f"xception-{sha[:9]}.pth",
                               hash_prefix=sha[:9], num_bytes=len(server.payload), **changes)


def test_fetch_downloads_into_the_hub_cache_once(hub, server):
    spec = _spec(server)
    progress = []
    before = server.requests
    path = W.fetch(spec, progress=lambda done, total: progress.append((done, total)))
    assert path == hub / spec.file_name and path.read_bytes() == server.payload
    assert server.requests == before + 1
    assert progress and progress[-1] == (spec.num_bytes, spec.num_bytes)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert W.fetch(spec, progress=lambda *a: progress.append(a)) == path  # cached: no second download
    assert server.requests == before + 1
    assert sorted(p.name for p in hub.iterdir()) == [spec.file_name]  # no .partial left behind


@pytest.mark.parametrize("change", ["hash", "size"])
def test_fetch_refuses_a_corrupt_download_and_leaves_nothing(hub, server, change):
    spec = _spec(server)
    spec = (dataclasses.replace(spec, hash_prefix="0" * 9 if not spec.hash_prefix.startswith("0") else "f" * 9)
            if change == "hash" else dataclasses.replace(spec, num_bytes=spec.num_bytes + 1))
    with pytest.raises(WeightsUnavailableError, match="checksum" if change == "hash" else "incomplete"):
        W.fetch(spec)
    assert not hub.exists() or list(hub.iterdir()) == []


def test_load_imagenet_downloads_then_uses_the_cache(hub, server, monkeypatch, x, reference_features, fc):
    monkeypatch.setattr(W, "IMAGENET", _spec(server))
    before = server.requests
    model = xviz.load_model("imagenet")
    assert model.kind == "imagenet" and model.labels == xviz.imagenet_labels() and len(model.labels) == 1000
    assert model.input_size == 299 and model.preprocessing.crop_pct == pytest.approx(0.8975)
    assert str(hub) in model.source
    _assert_same_backbone(model, x, reference_features)
    auto = xviz.load_model("auto")
    assert auto.kind == "imagenet" and "found in the torch.hub cache" in " ".join(auto.notes)
    assert server.requests == before + 1


def test_the_app_downloads_imagenet_and_its_next_run_replays_cleanly(hub, server, monkeypatch):
    """The sidebar downloads before its cached loader runs: a progress bar drawn from inside a
    cached function into a block made outside it can't be replayed (CacheReplayClosureError on the
    next run, which is what a student's next click does)."""
    from helpers import start_app

    from xviz.ui import cache, state

    monkeypatch.setattr(W, "IMAGENET", _spec(server))
    shown = []
    draw = state.download_weights
    monkeypatch.setattr(state, "download_weights", lambda source, progress: draw(
        source, lambda done, total: (shown.append(done), progress(done, total))))
    before = server.requests
    cache.builtin_model.clear()
    try:
        at = start_app(model_source="imagenet")
        assert server.requests == before + 1 and shown and shown[-1] == len(server.payload)
        assert any("ImageNet" in m.value for m in [*at.sidebar.markdown, *at.sidebar.caption])
        at.run()
        assert not at.exception, at.exception
        assert server.requests == before + 1
    finally:
        cache.builtin_model.clear()  # the fake ImageNet must not serve the next test


# -- choosing the default -------------------------------------------------------------------------

def test_auto_offline_picks_the_kitchenware_model_and_says_why(offline, kitchenware_dir):
    model = xviz.load_model("auto")
    assert model.kind == "kitchenware" and model.trained
    notes = " ".join(model.notes)
    assert "ImageNet weights unavailable" in notes and "python -m xviz fetch imagenet" in notes
    assert "kitchenware demo model" in notes


def test_untrained_only_on_request_and_labelled():
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    model = xviz.load_model("untrained")
    assert torch.equal(torch.rand(3), expected), "loading must not reset the caller's random seed"
    assert model.source.startswith("UNTRAINED") and not model.trained and model.kind == "untrained"
    again = xviz.load_model("untrained")
    assert torch.equal(model.net.exit_flow.block14.sepconv2.pointwise.weight,
                       again.net.exit_flow.block14.sepconv2.pointwise.weight)  # seeded: same every time
