"""Checkpoint files: read safely into (state dict, config), checked against Xception, built into a
network, and saved with their labels and preprocessing. Nothing here unpickles (see xviz.weights)."""

from __future__ import annotations

import dataclasses
import json
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import keras_io
from ..budget import (MAX_ENTRIES, MAX_LOAD_BYTES, MAX_METADATA_BYTES, MAX_PICKLE_BYTES, ByteBudget, loads_json, mb,
                      open_zip)
from ..errors import WeightsError, XvizError
from ..model import MIN_INPUT_SIZE, HeadLayer, Xception, XceptionConfig
from ..preprocess import Preprocessing

MAX_PICKLE_OPS = 50_000  # a pre-1.6 torch file's pickles; a full Xception state dict's have 11,162
BACKBONE_PARAMS = 20_861_480  # Xception without its head (Keras include_top=False), BN statistics included
BACKBONE_FEATURES = 2048  # width of the pooled features every head starts from


# -- reading files into (state_dict, config) ------------------------------------------------------

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5", ".keras")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: XceptionConfig
    layout: str  # "xviz", "timm", "keras2", "keras3"
    input_size: int | None = None  # when the file says it
    file_keys: dict[str, str] = field(default_factory=dict)  # our key -> the file's own key, where renamed
    labels: list[str] | None = None  # class names, when the file carries them (xviz_labels metadata)
    preprocessing: Preprocessing | None = None  # how its inputs were prepared (xviz_preprocessing)
    taught: dict | None = None  # how xviz taught its head (xviz_taught), see xviz.teach


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file of any supported format without executing anything in it.

    What the file claims (sizes, shapes, compression) is checked before anything is read, against
    one :class:`~xviz.budget.ByteBudget` for the whole load (see :mod:`xviz.budget`).

    Raises:
        WeightsError: for every problem with the file, in a sentence a user can act on.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path.name}: unsupported weights format {suffix or '(no extension)'}. "
                           f"Use one of {', '.join(WEIGHT_SUFFIXES)}.")
    budget = ByteBudget(path.name)
    try:
        if suffix == ".keras":
            km = keras_io.read_keras3(path, budget)
            sd, cfg = keras_io.keras_layers_to_state_dict(km)
            return Checkpoint(sd, cfg, "keras3", km.input_size)
        if suffix in (".h5", ".hdf5"):
            km = keras_io.read_keras2_h5(path, budget)
            sd, cfg = keras_io.keras_layers_to_state_dict(km)
            return Checkpoint(sd, cfg, "keras2", km.input_size)
        if suffix == ".safetensors":
            raw, meta = _read_safetensors(path, budget)
        else:
            raw, meta = _unwrap(_read_torch(path, budget), path)
        ckpt = state_dict_to_checkpoint(raw, meta, path.name)
        ckpt.labels, ckpt.preprocessing, ckpt.taught = _described(meta, path.name)
        return ckpt
    except XvizError:
        raise
    except (OSError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError,
            RuntimeError, struct.error, zipfile.BadZipFile):
        # a file built to confuse a reader ends up here; the page gets a sentence, not a traceback
        raise WeightsError(f"{path.name} is damaged or is not a {suffix} weights file xviz can read. "
                           "Upload the file as your training code saved it.") from None


def _read_safetensors(path: Path, budget: ByteBudget) -> tuple[dict, dict]:
    """The header is read and charged first; safetensors itself then checks offsets against the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < header_len <= MAX_METADATA_BYTES or 8 + header_len > path.stat().st_size:
            raise WeightsError(f"{path.name} is not a valid safetensors file: its header length is wrong.")
        header = loads_json(f.read(header_len), path.name, "safetensors header")
    if not isinstance(header, dict) or len(header) > MAX_ENTRIES:
        raise WeightsError(f"{path.name} is not a valid safetensors file: its header is not a list of tensors.")
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            begin, end = entry["data_offsets"]  # a malformed entry raises, and the caller says "damaged"
            total += int(end) - int(begin)
    budget.charge(total, "its tensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError):
        raise WeightsError(f"{path.name} is not a valid safetensors file: its header doesn't match its data.") from None


def _read_torch(path: Path, budget: ByteBudget):
    """``torch.load(weights_only=True)``, after the file's records are checked against the budget."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.load's own test for its zip format (torch >= 1.6)
    if zipped:
        with open_zip(path, path.name, "PyTorch") as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    # torch.save stores records as they are: a compressed one is there to inflate
                    raise WeightsError(
                        f"{path.name} is refused: its record {info.filename} is compressed (to inflate to "
                        f"{mb(info.file_size)}), which torch.save never does. Upload the file torch.save "
                        "wrote, or save the weights as .safetensors.")
                if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
                    raise WeightsError(f"{path.name} is refused: its pickle is {mb(info.file_size)}; an Xception "
                                       f"state dict's is about 50 KB (xviz accepts {mb(MAX_PICKLE_BYTES)}).")
                budget.charge(info.file_size, f"record {info.filename}")
    else:
        # torch < 1.6 files (the published ImageNet one among them): pickles, then raw storages
        budget.charge(path.stat().st_size, "the file")
        _check_legacy_pickles(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError):  # records or storages shorter than they claim
        raise WeightsError(f"{path.name} is damaged: its tensors can't be read (a record or storage is missing "
                           "or shorter than it claims). Upload the file torch.save wrote.") from None
    except Exception as exc:  # UnpicklingError for pickles with code, others for garbage
        raise WeightsError(
            f"{path.name} can't be loaded safely: it is not a plain PyTorch state dict "
            f"({type(exc).__name__}). xviz only loads tensors, never code; save your model with "
            "torch.save(model.state_dict(), ...) or as .safetensors.") from None


def _check_legacy_pickles(path: Path) -> None:
    """A pre-1.6 torch file's five pickles (magic, protocol, system info, the object, storage keys)
    must end within MAX_PICKLE_BYTES and MAX_PICKLE_OPS: a pickle can build Python objects 64x its
    size, so a large one is a memory bomb even though nothing in it runs. The op cap keeps this
    pure-Python scan short (a full Xception's pickles are 11,162 ops, 0.06 s; 50,000 take ~0.25 s).

    Its storages need no check: torch reserves their declared sizes without touching them and
    reads only what the file holds (measured: a file declaring 2 GiB over 16 bytes costs 2 MB).
    """
    ops = 0
    with open(path, "rb") as f:
        try:
            for _ in range(5):
                for _ in pickletools.genops(f):
                    ops += 1
                    if ops > MAX_PICKLE_OPS or f.tell() > MAX_PICKLE_BYTES:
                        raise WeightsError(f"{path.name} is refused: its pickle is far larger than an Xception "
                                           "state dict's (about 50 KB, 11,000 entries).")
        except WeightsError:
            raise
        except ValueError:
            # malformed, or fewer pickles (a plain pickle): torch.load stops at the same place, within the
            # limits just checked, and says what is wrong with it
            pass


def _unwrap(raw, path: Path) -> tuple[dict, dict]:
    """Accept a bare state dict or the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    meta = {}
    if isinstance(raw, dict) and isinstance(raw.get("xviz_config"), str):
        meta["xviz_config"] = raw["xviz_config"]
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path.name} holds no state dict of tensors.")
    # a tensor can be a view far larger than its storage (stride 0): refuse before anything copies one
    claimed = sum(v.numel() * v.element_size() for v in raw.values())
    if claimed > MAX_LOAD_BYTES:
        raise WeightsError(f"{path.name} is refused: its tensors claim {mb(claimed)}, more than any Xception "
                           f"needs ({mb(MAX_LOAD_BYTES)} at most).")
    return raw, meta


def state_dict_to_checkpoint(raw: dict[str, torch.Tensor], meta: dict, name: str = "state dict") -> Checkpoint:
    raw = {k.removeprefix("module."): v for k, v in raw.items()}  # DataParallel prefix
    if "xviz_config" in meta:
        return Checkpoint(raw, config_from_json(meta["xviz_config"]), "xviz")
    if any(k.startswith("entry_flow.") for k in raw):
        return Checkpoint(raw, _infer_xviz_head(raw, name), "xviz")
    if "conv1.weight" in raw and any(k.startswith("block1.rep.") for k in raw):
        return timm_to_xviz(raw)
    raise WeightsError(f"{name} is not an Xception state dict (neither xviz's nor timm's key layout). "
                       f"First keys: {', '.join(list(raw)[:4])}.")


def _infer_xviz_head(raw: dict[str, torch.Tensor], name: str) -> XceptionConfig:
    denses = [k[len("head."):-len(".linear.weight")] for k in raw
              if k.startswith("head.") and k.endswith(".linear.weight")]
    if not denses:
        return XceptionConfig(num_classes=0)
    if len(denses) > 1:
        raise WeightsError(f"{name} has a head of {len(denses)} dense layers but no xviz_config metadata "
                           "saying their activations; save it with xviz.save_weights().")
    return XceptionConfig(num_classes=raw[f"head.{denses[0]}.linear.weight"].shape[0],
                          head=(HeadLayer("dense", denses[0], raw[f"head.{denses[0]}.linear.weight"].shape[0]),))


def _described(meta: dict, name: str) -> tuple[list[str] | None, Preprocessing | None, dict | None]:
    """Labels, preprocessing and teaching record that :func:`save_weights` put in the metadata, so
    a file it wrote reloads with the same predictions and names without a labels file."""
    try:
        labels = json.loads(meta["xviz_labels"]) if "xviz_labels" in meta else None
        prep = Preprocessing(**json.loads(meta["xviz_preprocessing"])) if "xviz_preprocessing" in meta else None
        taught = json.loads(meta["xviz_taught"]) if "xviz_taught" in meta else None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and Preprocessing's checks are ValueErrors
        raise WeightsError(f"{name}: its xviz metadata is malformed ({exc}).") from None
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, str) for n in labels)):
        raise WeightsError(f"{name}: its xviz_labels metadata is not a list of names.")
    if prep is not None and prep.size < MIN_INPUT_SIZE:
        raise WeightsError(f"{name}: its xviz_preprocessing asks for {prep.size} px inputs; "
                           f"Xception needs at least {MIN_INPUT_SIZE}.")
    if taught is not None and not isinstance(taught, dict):
        raise WeightsError(f"{name}: its xviz_taught metadata is not a JSON object.")
    return labels, prep, taught


def config_to_json(config: XceptionConfig) -> str:
    return json.dumps({"num_classes": config.num_classes, "pool_name": config.pool_name,
                       "bn_eps": config.bn_eps, "head": [vars(h) for h in config.head_layers()]})


def config_from_json(text: str) -> XceptionConfig:
    d = loads_json(text, "The weights file", "xviz_config metadata")
    try:
        head = tuple(HeadLayer(**h) for h in d.get("head", []))
        return XceptionConfig(num_classes=int(d["num_classes"]), head=head,
                              pool_name=str(d.get("pool_name", "avg_pool")), bn_eps=float(d.get("bn_eps", 1e-3)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"The file's xviz_config metadata is malformed ({type(exc).__name__}: {exc}).") from None


def check_head(config: XceptionConfig) -> None:
    """Refuse a head that would take more memory than MAX_LOAD_BYTES allows, before it is allocated.

    A config comes from the file (xviz_config metadata, Keras layer configs), and building the model
    allocates and initialises every layer it names, whatever the file's arrays say.
    """
    width, params = BACKBONE_FEATURES, 0
    for layer in config.head_layers():
        if layer.kind == "dense":
            if not isinstance(layer.out_features, int) or layer.out_features < 1:
                raise WeightsError(f"Head layer {layer.name!r} has {layer.out_features!r} outputs.")
            params += (width + 1) * layer.out_features
            width = layer.out_features
    if 4 * (BACKBONE_PARAMS + params) > MAX_LOAD_BYTES:
        raise WeightsError(f"The file's head has {params:,} parameters: more than xviz accepts "
                           f"({mb(MAX_LOAD_BYTES)} of weights in all). Is it really an Xception classifier?")


# timm's legacy Xception: conv1/bn1/conv2/bn2 stem, block1..block12 (= Keras blocks 2..13) whose
# `rep` Sequential interleaves ReLU, SeparableConv2d (conv1 = depthwise, pointwise) and BN, then
# conv3/bn3/conv4/bn4 (= block14) and fc.
_TIMM_FIXED = {
    "conv1": "entry_flow.block1.conv1", "bn1": "entry_flow.block1.conv1_bn",
    "conv2": "entry_flow.block1.conv2", "bn2": "entry_flow.block1.conv2_bn",
    "conv3": "exit_flow.block14.sepconv1", "bn3": "exit_flow.block14.sepconv1_bn",
    "conv4": "exit_flow.block14.sepconv2", "bn4": "exit_flow.block14.sepconv2_bn",
}


def timm_to_xviz(raw: dict[str, torch.Tensor]) -> Checkpoint:
    """Rename a timm/Cadene Xception state dict to xviz's layout (also old 2-D pointwise files)."""
    net = Xception(XceptionConfig(num_classes=0))
    out: dict[str, torch.Tensor] = {}
    rep_items: dict[int, dict[int, list[tuple[str, str, torch.Tensor]]]] = {}  # block -> rep index -> (rest, key, value)
    file_keys: dict[str, str] = {}

    def put(ours: str, key: str, value: torch.Tensor):
        out[ours] = value
        file_keys[ours] = key

    def path_of(keras_name: str, key: str) -> str:
        try:
            return net.module_path(keras_name)
        except KeyError:
            raise WeightsError(f"Unexpected key {key!r} in a timm-layout Xception state dict: it would "
                               f"belong to {keras_name}, which Xception doesn't have.") from None

    for key, value in raw.items():
        parts = key.split(".")
        try:
            if parts[0] in _TIMM_FIXED:
                target = _TIMM_FIXED[parts[0]]
                rest = ".".join(parts[1:])
                rest = {"conv1.weight": "depthwise.weight"}.get(rest, rest)
                put(f"{target}.{rest}", key, value)
            elif parts[0] == "fc":
                put(f"head.predictions.linear.{'.'.join(parts[1:])}", key, value)
            elif parts[0].startswith("block") and parts[1] in ("skip", "skipbn"):
                block = int(parts[0][5:]) + 1  # timm block k is Keras block k+1
                name = "residual" if parts[1] == "skip" else "residual_bn"
                put(f"{path_of(f'block{block}_{name}', key)}.{'.'.join(parts[2:])}", key, value)
            elif parts[0].startswith("block") and parts[1] == "rep":
                rep_items.setdefault(int(parts[0][5:]), {}).setdefault(int(parts[2]), []).append(
                    (".".join(parts[3:]), key, value))
            else:
                raise IndexError
        except WeightsError:
            raise
        except (IndexError, ValueError):
            raise WeightsError(f"Unexpected key {key!r} in a timm-layout Xception state dict.") from None
    # inside a block, the i-th SeparableConv2d and the i-th BN (by rep index) are sepconv{i}(_bn)
    for timm_block, items in rep_items.items():
        block = timm_block + 1
        sep_k = bn_k = 0
        for _, entries in sorted(items.items()):
            keys = {k for k, _, _ in entries}
            if keys & {"conv1.weight", "pointwise.weight"}:  # either half marks a SeparableConv2d
                sep_k += 1
                base = path_of(f"block{block}_sepconv{sep_k}", entries[0][1])
                for k, key, v in entries:
                    put(f"{base}.{ {'conv1.weight': 'depthwise.weight'}.get(k, k) }", key, v)
            else:
                bn_k += 1
                base = path_of(f"block{block}_sepconv{bn_k}_bn", entries[0][1])
                for k, key, v in entries:
                    put(f"{base}.{k}", key, v)
    for key, value in list(out.items()):
        if key.endswith("pointwise.weight") and value.dim() == 2:  # old Cadene files: (Cout, Cin)
            out[key] = value[:, :, None, None]  # (Cout, Cin) -> (Cout, Cin, 1, 1)
    num_classes = out["head.predictions.linear.weight"].shape[0] if "head.predictions.linear.weight" in out else 0
    return Checkpoint(out, XceptionConfig(num_classes=num_classes), "timm", file_keys=file_keys)


def build(checkpoint: Checkpoint) -> Xception:
    """A model shaped by the checkpoint's config with its weights loaded strictly.

    Raises:
        WeightsError: naming missing keys, unexpected keys and shape mismatches.
    """
    check_head(checkpoint.config)
    net = Xception(checkpoint.config)
    expected = net.state_dict()
    given = {k: v for k, v in checkpoint.state_dict.items() if not k.endswith("num_batches_tracked")}
    # a renamed layout (timm) names keys as the file does, so the user can find them
    shown = {k: f"{v} (= {k})" for k, v in checkpoint.file_keys.items() if v != k}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [shown.get(k, k) for k in given if k not in expected]
    wrong = [f"{shown.get(k, k)} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in given if k in expected and given[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_first(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({_first(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shapes ({_first(wrong)})")
        raise WeightsError("These weights don't fit Xception: " + "; ".join(parts) + ".")
    net.load_state_dict(given, strict=False)  # num_batches_tracked is optional; everything else checked above
    return net


def _first(items: list[str], n: int = 3) -> str:
    more = f", … {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def save_weights(net: Xception, path: str | Path | None, *, labels: list[str] | None = None,
                 preprocessing: Preprocessing | None = None, taught: dict | None = None) -> bytes | None:
    """Save as .safetensors with the head config in the metadata, so any head reloads exactly.

    ``labels``, ``preprocessing`` and ``taught`` go into the metadata too (``load_model`` reads them
    back). With ``path=None`` the file's bytes are returned instead (a download in the app).
    """
    from safetensors.torch import save, save_file
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"xviz_config": config_to_json(net.config)}
    if labels is not None:
        meta["xviz_labels"] = json.dumps(list(labels))
    if preprocessing is not None:
        meta["xviz_preprocessing"] = json.dumps(dataclasses.asdict(preprocessing))
    if taught is not None:
        meta["xviz_taught"] = json.dumps(taught)
    if path is None:
        return save(state, metadata=meta)
    save_file(state, str(path), metadata=meta)
    return None
