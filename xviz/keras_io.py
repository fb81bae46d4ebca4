"""Read Keras Xception weights with h5py and zipfile only: no TensorFlow, nothing unpickled.

Two on-disk formats:

* Keras 2 HDF5 (``xception_weights_tf_dim_ordering_tf_kernels[_notop].h5``, ``model.save_weights``,
  ``model.save('x.h5')``): the root (or ``model_weights``) attribute ``layer_names`` lists layers in
  model order; each layer group's ``weight_names`` attribute lists its arrays in variable order.
* Keras 3 ``.keras`` zips: ``config.json`` + ``model.weights.h5``. The h5 names layers by class in
  snake case with a per-container counter in config order (``separable_conv2d_10``), not by the
  config's names, so the config is walked to rebuild those names.

Both are turned into a list of :class:`KerasLayer` in model order, which
:func:`keras_layers_to_state_dict` maps onto :class:`xviz.model.Xception`.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from .budget import (MAX_ENTRIES, MAX_METADATA_BYTES, ByteBudget, StoredMember, check_inflation, loads_json,
                     open_zip, read_member)
from .errors import WeightsError
from .model import ENTRY_BLOCKS, HeadLayer, Xception, XceptionConfig

RESIDUAL_BLOCKS = (*ENTRY_BLOCKS, 13)  # blocks whose shortcut is an (anonymous) 1x1 conv + BN


@dataclass
class KerasLayer:
    name: str  # Keras name (from the config or the h5 layer group)
    kind: str  # "conv", "sepconv", "bn", "dense", or another Keras class name (no weights)
    weights: list[np.ndarray] = field(default_factory=list)
    config: dict = field(default_factory=dict)


@dataclass
class KerasModel:
    layers: list[KerasLayer]
    input_size: int | None  # from the model config when present
    description: str  # format, for the provenance line


_CLASS_KIND = {"Conv2D": "conv", "SeparableConv2D": "sepconv", "BatchNormalization": "bn", "Dense": "dense"}


def to_snake_case(name: str) -> str:
    """Keras' own ``naming.to_snake_case`` (keras/src/utils/naming.py), used for h5 group names."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _kind_from_weight_names(names: list[str], arrays: list[np.ndarray]) -> str:
    """Keras 2 weight-only files carry no classes; the variable names say enough."""
    short = [n.split("/")[-1].split(":")[0] for n in names]
    if "depthwise_kernel" in short:
        return "sepconv"
    if "moving_mean" in short or "gamma" in short:
        return "bn"
    if short and short[0] == "kernel":
        return "conv" if arrays[0].ndim == 4 else "dense"
    return "unknown"


def read_keras2_h5(path: str | Path, budget: ByteBudget | None = None) -> KerasModel:
    """Layers with weights from a Keras 2 HDF5 file, in the file's ``layer_names`` order.

    Every dataset is checked (:func:`_read_dataset`) and charged to ``budget`` before it is read.
    """
    path = Path(path)
    budget = budget or ByteBudget(path.name)
    with _open_h5(path, path.name) as f:
        group = _get(f, "model_weights", path.name) if "model_weights" in f else f
        if group is None or "layer_names" not in group.attrs:
            raise WeightsError(f"{path.name} has no 'layer_names' attribute: it is not a Keras 2 "
                               "weights file (a Keras 3 file ends in .keras or .weights.h5).")
        config_layers = {}
        input_size = None
        if "model_config" in f.attrs:
            cfg = loads_json(_text(_read_attr(f, "model_config", path.name, 1)), path.name, "model_config")
            for layer in _walk_config(cfg):
                config_layers[layer["config"].get("name", layer.get("name"))] = layer
                input_size = input_size or _input_size(layer)
        layers = []
        for raw in _read_attr(group, "layer_names", path.name, MAX_ENTRIES):
            name = _text(raw)
            g = _get(group, name, path.name)
            if g is None:
                raise WeightsError(f"{path.name} is damaged: it lists layer {name!r} but has no weights for it.")
            weight_names = ([_text(w) for w in _read_attr(g, "weight_names", path.name, MAX_LAYER_ARRAYS)]
                            if "weight_names" in g.attrs else [])
            arrays = [_read_dataset(g, w, path.name, budget) for w in weight_names]
            cfg = config_layers.get(name, {})
            kind = _CLASS_KIND.get(cfg.get("class_name"), None) or (
                _kind_from_weight_names(weight_names, arrays) if arrays else cfg.get("class_name", "none"))
            layers.append(KerasLayer(name, kind, arrays, cfg.get("config", {})))
    return KerasModel(layers, input_size, "Keras 2 HDF5 weights")


def read_keras3(path: str | Path, budget: ByteBudget | None = None) -> KerasModel:
    """Layers from a Keras 3 ``.keras`` zip, in config order, nested models flattened.

    Member sizes and compression are checked before anything is inflated; a stored (uncompressed)
    ``model.weights.h5``, which is what Keras writes, is read in place, never copied into memory.
    """
    path = Path(path)
    name = path.name
    budget = budget or ByteBudget(name)
    with open_zip(path, name, "Keras 3 .keras") as zf:
        names = set(zf.namelist())
        if not {"config.json", "model.weights.h5"} <= names:
            raise WeightsError(f"{name} lacks config.json or model.weights.h5: not a Keras 3 model file.")
        config = loads_json(read_member(zf, "config.json", name, budget, MAX_METADATA_BYTES), name, "config.json")
        meta = (loads_json(read_member(zf, "metadata.json", name, budget, MAX_METADATA_BYTES), name, "metadata.json")
                if "metadata.json" in names else {})
        info = zf.getinfo("model.weights.h5")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size:
            weights_file = StoredMember(path, info)
        else:
            weights_file = io.BytesIO(read_member(zf, "model.weights.h5", name, budget))
    layers: list[KerasLayer] = []
    input_size = None
    seen = 0
    with weights_file, _open_h5(weights_file, name) as h5:
        def visit(container_cfg: dict, group: h5py.Group | None):
            nonlocal input_size, seen
            used: dict[str, int] = {}
            for layer in container_cfg["config"]["layers"]:
                seen += 1
                if seen > MAX_ENTRIES:
                    raise WeightsError(f"{name} is refused: its config lists more than {MAX_ENTRIES:,} layers; "
                                       "Keras' Xception has 134.")
                base = to_snake_case(layer["class_name"])
                count = used.get(base, 0)
                used[base] = count + 1
                h5_name = base if count == 0 else f"{base}_{count}"
                sub = _get(group, h5_name, name) if group is not None else None
                if "layers" in layer.get("config", {}):  # a nested model, like the Xception backbone
                    visit(layer, _get(sub, "layers", name) if sub is not None else None)
                    continue
                input_size = input_size or _input_size(layer)
                arrays = []
                variables = _get(sub, "vars", name) if sub is not None else None
                if variables is not None:
                    too_many = len(variables) > MAX_LAYER_ARRAYS  # len() lists nothing: ask before listing
                    keys = [] if too_many else list(variables)
                    if too_many or not all(k.isdigit() for k in keys):
                        raise WeightsError(f"{name} is damaged: layer {h5_name!r} has unexpected arrays.")
                    arrays = [_read_dataset(variables, k, name, budget) for k in sorted(keys, key=int)]
                kind = _CLASS_KIND.get(layer["class_name"], layer["class_name"])
                layers.append(KerasLayer(layer["config"].get("name", h5_name), kind, arrays, layer["config"]))

        visit(config, _get(h5, "layers", name))
    version = meta.get("keras_version", "3")
    return KerasModel(layers, input_size, f"Keras {version} .keras file")


# -- HDF5, looked at before it is read ----------------------------------------------------------

MAX_LAYER_ARRAYS = 16  # a BatchNormalization has 4, a SeparableConv2D 2-3


def _open_h5(source, name: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError):
        raise WeightsError(f"{name} is not a readable HDF5 file: it is damaged or not a Keras weights file.") from None


def _get(group: h5py.Group, path: str, name: str):
    """``group[path]`` through hard links only, or None if absent.

    HDF5 links can point into other files (external links) or elsewhere by name (soft links);
    following them would let an upload make the server open files by path.
    """
    obj = group
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(obj, h5py.Group) or part not in obj:
            return None
        link = obj.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise WeightsError(f"{name} is refused: {part!r} is a link to somewhere else "
                               f"({type(link).__name__}); Keras never writes links.")
        obj = obj[part]
    return obj


def _read_attr(obj, key: str, name: str, max_items: int):
    """An attribute, after checking how many items (and for fixed-width strings, bytes) it holds."""
    aid = obj.attrs.get_id(key)
    items = int(np.prod(aid.shape)) if aid.shape else 1
    if items > max_items or (aid.dtype.kind == "S" and items * aid.dtype.itemsize > MAX_METADATA_BYTES):
        raise WeightsError(f"{name} is refused: its {key!r} attribute is far larger than an Xception's.")
    value = obj.attrs[key]
    if isinstance(value, (str, bytes)) and len(value) > MAX_METADATA_BYTES:  # variable-length text
        raise WeightsError(f"{name} is refused: its {key!r} attribute is far larger than an Xception's.")
    return value


def _read_dataset(group: h5py.Group, path: str, name: str, budget: ByteBudget) -> np.ndarray:
    """One weight array, read only after its dtype, layout and sizes pass and the budget is charged."""
    ds = _get(group, path, name)
    if not isinstance(ds, h5py.Dataset):
        raise WeightsError(f"{name} is damaged: the array {path!r} it lists is missing.")
    where = f"array {ds.name}"
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4, 8):
        raise WeightsError(f"{name} is refused: {where} holds {ds.dtype}, not floating-point weights.")
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL or dcpl.get_external_count():
        raise WeightsError(f"{name} is refused: {where} keeps its data in other files; Keras never does.")
    nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize if ds.shape else ds.dtype.itemsize
    check_inflation(name, where, ds.id.get_storage_size(), nbytes)
    budget.charge(nbytes, where)
    return np.asarray(ds[()])


def keras_layers_to_state_dict(model: KerasModel) -> tuple[dict[str, torch.Tensor], XceptionConfig]:
    """Map Keras layers onto our module names, transposing kernels to PyTorch's layout.

    Named backbone layers map by name; the four anonymous shortcut convs (and their BNs) map by
    order onto blocks 2, 3, 4 and 13, which is the order Keras creates them in. Dense layers after
    the backbone form the head; a final softmax is dropped, because xviz works with logits.
    """
    net = Xception(XceptionConfig(num_classes=0))
    known = set(net.layer_names())
    state: dict[str, torch.Tensor] = {}
    residual_convs = iter(RESIDUAL_BLOCKS)
    residual_bns = iter(RESIDUAL_BLOCKS)
    head: list[HeadLayer] = []
    pool_name = "avg_pool"
    seen_backbone_end = False

    for layer in model.layers:
        if layer.kind in ("GlobalAveragePooling2D",):
            pool_name = layer.name
            continue
        if layer.kind == "Dropout":
            if seen_backbone_end:
                head.append(HeadLayer("dropout", layer.name, rate=float(layer.config.get("rate", 0.0))))
            continue
        if not layer.weights:
            continue
        w = [torch.from_numpy(np.ascontiguousarray(a)).float() for a in layer.weights]
        if layer.kind == "dense":
            seen_backbone_end = True
            if w[0].ndim != 2:
                raise WeightsError(f"Dense layer {layer.name!r} has a kernel of shape {tuple(w[0].shape)}.")
            activation = layer.config.get("activation", "linear")
            if isinstance(activation, dict):  # serialised activation object
                activation = activation.get("config", {}).get("name", activation.get("class_name", ""))
            prefix = f"head.{layer.name}.linear"
            state[f"{prefix}.weight"] = w[0].t().contiguous()  # Keras (in, out) -> PyTorch (out, in)
            state[f"{prefix}.bias"] = w[1] if len(w) > 1 else torch.zeros(w[0].shape[1])
            head.append(HeadLayer("dense", layer.name, int(w[0].shape[1]), str(activation)))
            continue
        if layer.name in known:
            path = net.module_path(layer.name)
        elif layer.kind == "conv":
            block = next(residual_convs, None)
            if block is None:
                raise WeightsError(f"Unexpected convolution {layer.name!r}: Xception has four shortcut convs.")
            path = net.module_path(f"block{block}_residual")
        elif layer.kind == "bn":
            block = next(residual_bns, None)
            if block is None:
                raise WeightsError(f"Unexpected BatchNormalization {layer.name!r}: not a layer of Xception.")
            path = net.module_path(f"block{block}_residual_bn")
        else:
            raise WeightsError(f"Layer {layer.name!r} ({layer.kind}) is not part of Xception.")
        state.update(_convert(layer, w, path))

    # Keras' final softmax turns logits into probabilities; xviz applies softmax itself
    if head and head[-1].kind == "dense" and head[-1].activation == "softmax":
        head[-1] = HeadLayer("dense", head[-1].name, head[-1].out_features, "linear")
    unsupported = [h for h in head if h.kind == "dense" and h.activation not in _dense_activations()]
    if unsupported:
        raise WeightsError(f"Head layer {unsupported[0].name!r} uses activation "
                           f"{unsupported[0].activation!r}, which xviz does not support.")
    num_classes = next((h.out_features for h in reversed(head) if h.kind == "dense"), 0)
    return state, XceptionConfig(num_classes=num_classes, head=tuple(head), pool_name=pool_name)


def _dense_activations():
    from .model import Dense
    return Dense.ACTIVATIONS


def _convert(layer: KerasLayer, w: list[torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    if layer.kind == "conv":
        _expect(layer, w, 1)
        return {f"{path}.weight": w[0].permute(3, 2, 0, 1)}  # (kh, kw, Cin, Cout) -> (Cout, Cin, kh, kw)
    if layer.kind == "sepconv":
        _expect(layer, w, 2)
        return {
            f"{path}.depthwise.weight": w[0].permute(2, 3, 0, 1),  # (kh, kw, Cin, 1) -> (Cin, 1, kh, kw)
            f"{path}.pointwise.weight": w[1].permute(3, 2, 0, 1),  # (1, 1, Cin, Cout) -> (Cout, Cin, 1, 1)
        }
    if layer.kind == "bn":
        _expect(layer, w, 4)
        return {f"{path}.weight": w[0], f"{path}.bias": w[1],
                f"{path}.running_mean": w[2], f"{path}.running_var": w[3]}
    raise WeightsError(f"Layer {layer.name!r} ({layer.kind}) is not part of Xception.")


def _expect(layer: KerasLayer, w: list[torch.Tensor], n: int):
    if len(w) != n:
        raise WeightsError(f"Layer {layer.name!r} ({layer.kind}) has {len(w)} arrays, expected {n} "
                           "(a conv with a bias, or a BatchNormalization without scale/center?).")


def _walk_config(cfg: dict):
    """Yield every leaf layer config of a (possibly nested) Keras model config."""
    for layer in cfg.get("config", {}).get("layers", []):
        if "layers" in layer.get("config", {}):
            yield from _walk_config(layer)
        else:
            yield layer


def _input_size(layer: dict) -> int | None:
    if layer.get("class_name") != "InputLayer":
        return None
    shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
    if shape and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return None


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
