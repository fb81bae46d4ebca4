"""Teach Xception new classes: a linear softmax head on the frozen backbone's pooled features.

The recipe of Teachable Machine and of every transfer-learning tutorial: keep the backbone, embed
each sample once (the 2,048 channel averages of ``block14_sepconv2_act``, :meth:`LoadedModel.embed`)
and fit multinomial logistic regression on the embeddings. Here it is fit by full-batch L-BFGS on
standardised features with an L2 penalty: the problem is strictly convex, so the answer does not
depend on where the optimiser starts, and with a fixed seed (which only orders the k-fold split and
the starting point) two runs give the same bits. It is checked by leave-one-out (k-fold past
:data:`LOO_MAX_SAMPLES`) against the nearest-class-mean baseline, and turned back into an ordinary
:class:`~xviz.LoadedModel`: the base model's backbone modules (shared, not copied: a taught model
costs its head, 8 KB a class) followed by a Dense head called ``predictions``.

Because that head is linear on global average pooling, Grad-CAM at the last layer is CAM (Zhou et
al., 2016, "Learning Deep Features for Discriminative Localization") rectified and divided by the
number of positions: see :func:`class_activation_map`. The fit and its held-out check are in
:mod:`xviz.teaching_fit` (re-exported here).

Example:
    >>> base = xviz.load_model("kitchenware")
    >>> m = xviz.teach(base, {"mug": [img1, img2, img3], "bottle": [img4, img5, img6]})
    >>> m.labels, m.predict(img7, k=1)
    (['mug', 'bottle'], [('mug', 0.93)])
    >>> xviz.teaching.save(m, "out/")   # .safetensors + labels + how it was taught; xviz.load_model reads it
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .activations import locked
from .errors import TeachError
from .images import load_image
from .loaded import LoadedModel
from .model import FLOWS, Dense, GlobalAvgPool, HeadLayer, Xception, XceptionConfig
from .teaching_fit import (FOLDS, GRAD_TOL, L2, LOO_MAX_SAMPLES, MAX_ITER, Evaluation, LinearHead,  # noqa: F401
                           evaluate, fit_head, folds, lbfgs, nearest_class_mean)
from .weights import save_weights

MIN_CLASSES = 2
MAX_CLASSES = 10  # a classroom exercise; also bounds the session memory a student can hold
MAX_SAMPLES_PER_CLASS = 50
FEW_SAMPLES = 3  # fewer samples in a class than this: warn (its accuracy means little)
MAX_NAME_CHARS = 40


# -- the samples ----------------------------------------------------------------------------------

def check_name(name: str, taken: Sequence[str] = ()) -> str:
    """A class name as it will be used: stripped, non-empty, short, not already taken."""
    name = " ".join(str(name).split())
    if not name:
        raise TeachError("Give the class a name (a word or two, like 'mug').")
    if len(name) > MAX_NAME_CHARS:
        raise TeachError(f"Class names can be at most {MAX_NAME_CHARS} characters; '{name[:20]}…' is longer.")
    if name.lower() in (t.lower() for t in taken):
        raise TeachError(f"There is already a class called '{name}'. Pick another name.")
    return name


def check_counts(counts: Mapping[str, int]) -> None:
    """Refuse what can't be taught: fewer than 2 or more than 10 classes, an empty class, more
    than 50 samples in one. ``counts`` maps class name -> number of samples, in class order."""
    if len(counts) < MIN_CLASSES:
        raise TeachError(f"Teach at least {MIN_CLASSES} classes: a classifier needs something to tell apart.")
    if len(counts) > MAX_CLASSES:
        raise TeachError(f"At most {MAX_CLASSES} classes can be taught at once; there are {len(counts)}. "
                         "Remove some.")
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise TeachError(f"The class '{empty[0]}' has no samples yet. Add a few photos of it, or remove it.")
    full = [name for name, n in counts.items() if n > MAX_SAMPLES_PER_CLASS]
    if full:
        raise TeachError(f"The class '{full[0]}' has {counts[full[0]]} samples; at most "
                         f"{MAX_SAMPLES_PER_CLASS} per class are accepted. Remove some.")


def room_left(count: int) -> int:
    """How many more samples a class holding ``count`` may take."""
    return max(0, MAX_SAMPLES_PER_CLASS - count)


@dataclass(frozen=True)
class Sample:
    """One sample as the app keeps it in a session's memory: a JPEG no larger than the largest
    input xviz offers, and a thumbnail. The embedding is computed from ``jpeg`` (for every model
    alike), so it is the same whenever it is recomputed."""

    key: str  # sha256 of ``jpeg``: with the model's key, the embedding's cache key
    jpeg: bytes  # longest side <= SAMPLE_SIDE
    thumb: bytes  # longest side <= THUMB_SIDE

    @property
    def nbytes(self) -> int:
        return len(self.jpeg) + len(self.thumb)

    def image(self) -> Image.Image:
        return load_image(self.jpeg)


SAMPLE_SIDE = 384  # px: what the largest input size (384) needs; a 12 MP phone photo would be 36 MB decoded
THUMB_SIDE = 96
JPEG_QUALITY = 90


def make_sample(img: Image.Image) -> Sample:
    """Shrink a decoded image (:func:`xviz.load_image`) to what a sample keeps."""
    def jpeg(side: int, quality: int) -> bytes:
        small = img.convert("RGB")
        small.thumbnail((side, side), Image.BICUBIC)  # keeps the aspect ratio; never enlarges
        out = io.BytesIO()
        small.save(out, "JPEG", quality=quality)
        return out.getvalue()

    big = jpeg(SAMPLE_SIDE, JPEG_QUALITY)
    return Sample(hashlib.sha256(big).hexdigest(), big, jpeg(THUMB_SIDE, 80))


# -- what to tell the student ---------------------------------------------------------------------

def warnings_for(counts: Mapping[str, int], ev: Evaluation | None) -> list[str]:
    """What a student should know before trusting the taught model."""
    out = [f"'{name}' has only {n} sample{'s' if n != 1 else ''}: add at least {FEW_SAMPLES}, from "
           "different angles and backgrounds, or its accuracy means little."
           for name, n in counts.items() if n < FEW_SAMPLES]
    if ev is not None and ev.accuracy <= ev.chance + 1e-9:
        out.append(f"Held-out accuracy ({ev.accuracy:.0%}) is no better than chance ({ev.chance:.0%}, "
                   "always answering the largest class): the model has not learned to tell these classes "
                   "apart. Add more varied samples, or pick classes that look more different.")
    return out


# -- the taught model ------------------------------------------------------------------------------

def with_linear_head(net: Xception, head: LinearHead) -> Xception:
    """``net``'s backbone modules (shared, not copied) followed by pooling and one Dense layer.

    Hooks on the backbone therefore reach both models: use the base model's lock for both.
    """
    num_classes = head.weight.shape[0]
    config = XceptionConfig(num_classes=num_classes, head=(HeadLayer("dense", "predictions", num_classes),),
                            pool_name=net.config.pool_name, bn_eps=net.config.bn_eps)
    with torch.device("meta"):  # the skeleton's own backbone is replaced at once: never allocate it
        taught = Xception(config)
    for flow in FLOWS:
        setattr(taught, flow, getattr(net, flow))
    device = next(net.parameters()).device
    taught.head = torch.nn.Sequential()
    taught.head.add_module(config.pool_name, GlobalAvgPool())
    dense = Dense(net.num_features, num_classes)
    with torch.no_grad():
        dense.linear.weight.copy_(head.weight)
        dense.linear.bias.copy_(head.bias)
    taught.head.add_module("predictions", dense)
    return taught.to(device).eval().requires_grad_(False)


def taught_model(base: LoadedModel, labels: Sequence[str], head: LinearHead, record: dict) -> LoadedModel:
    """A :class:`LoadedModel` like any other: predictions, captures and attributions work on it.

    It shares ``base``'s backbone and lock (hooked forwards on either must not overlap).
    """
    net = with_linear_head(base.net, head)
    h = hashlib.sha256(base.key.encode())
    h.update(head.weight.numpy().tobytes())
    h.update(head.bias.numpy().tobytes())
    h.update(json.dumps(list(labels)).encode())
    counts = record.get("samples_per_class", {})
    source = (f"Taught: {' / '.join(labels)} — a linear head trained here on {sum(counts.values())} samples, "
              f"on the backbone of: {base.source}")
    return LoadedModel(net, list(labels), base.preprocessing, source, "taught", f"taught-{h.hexdigest()[:16]}",
                       base.device, base.trained, [], base.lock, taught=record)


def teach(base: LoadedModel, examples: Mapping[str, Sequence[Image.Image]], *, seed: int = 0) -> LoadedModel:
    """Teach ``base``'s backbone new classes from a few example images each.

    Args:
        base: the model whose backbone is kept (its head is ignored), at the input size to use.
        examples: class name -> images (PIL, any mode), 2 to 10 classes, 1 to 50 images each; the
            classes are numbered in the mapping's order.
        seed: fixes the cross-validation split and the optimiser's start (runs are bit-identical).

    Returns:
        A :class:`LoadedModel` whose ``labels`` are the class names in order, whose ``source``
        says what it was taught from, and whose ``taught`` records the base, the samples per class
        and the held-out accuracy (leave-one-out, or 5-fold past 60 samples) next to the
        nearest-class-mean baseline's.

    Raises:
        TeachError: too few or too many classes or samples, a blank or repeated name.

    Example:
        >>> m = xviz.teach(xviz.load_model("kitchenware"), {"mug": mugs, "bottle": bottles})
        >>> m.taught["evaluation"]["accuracy"]
        1.0
    """
    labels: list[str] = []
    for name in examples:
        labels.append(check_name(name, labels))
    counts = {label: len(examples[name]) for label, name in zip(labels, examples)}
    check_counts(counts)
    feats, targets = [], []
    for k, name in enumerate(examples):
        for img in examples[name]:
            if not isinstance(img, Image.Image):
                raise TeachError(f"The samples of '{labels[k]}' must be PIL images; got {type(img).__name__}. "
                                 "Read files with xviz.load_image(open(path, 'rb').read()).")
            feats.append(base.embed(img if img.mode == "RGB" else img.convert("RGB")))
            targets.append(k)
    return train(base, labels, torch.stack(feats), torch.tensor(targets), seed=seed)


def train(base: LoadedModel, labels: Sequence[str], x: torch.Tensor, y: torch.Tensor, *,
          seed: int = 0, evaluation: Evaluation | None = None) -> LoadedModel:
    """:func:`teach` from embeddings already computed (the app caches them per sample); pass the
    :func:`evaluate` result if you have it, so it is not computed twice."""
    counts = {label: int((y == k).sum()) for k, label in enumerate(labels)}
    check_counts(counts)
    head = fit_head(x, y, len(labels), seed=seed)
    ev = evaluation if evaluation is not None else evaluate(x, y, labels, seed=seed)
    record = {"base": base.source, "base_key": base.key, "input_size": base.input_size,
              "classes": list(labels), "samples_per_class": counts, "seed": seed, "l2": L2,
              "head": "linear softmax on the 2,048 pooled features (multinomial logistic regression, L-BFGS)",
              "evaluation": ev.summary()}
    return taught_model(base, labels, head, record)


# -- CAM ------------------------------------------------------------------------------------------

def linear_head(net: Xception) -> Dense | None:
    """The Dense layer if the head is exactly pooling + one linear Dense (dropout allowed), else None."""
    denses = [layer for layer in net.config.head_layers() if layer.kind == "dense"]
    if len(denses) != 1 or denses[0].activation != "linear":
        return None
    return getattr(net.head, denses[0].name)


def class_activation_map(m, x: torch.Tensor, target: int) -> torch.Tensor:
    """CAM (Zhou et al., 2016): sum_k W[target, k] A^k at ``block14_sepconv2_act``, signed, (h, w).

    Only defined for a linear head on global average pooling (a taught model), where
    ``logit = mean_ij(CAM) + bias``. Then dlogit/dA^k_ij = W[target, k] / (h w) for every position,
    so Grad-CAM's channel weights are W[target, k] / (h w) and Grad-CAM at that layer is exactly
    ReLU(CAM) / (h w), before both are upsampled.

    Raises:
        ValueError: the head is not a single linear Dense layer.
    """
    net = getattr(m, "net", m)
    dense = linear_head(net)
    if dense is None:
        raise ValueError("CAM needs a head that is one linear layer on average pooling (a taught model); "
                         "this model's head has hidden layers. Use Grad-CAM.")
    with locked(m), torch.no_grad():
        a = net.forward_features(x.to(next(net.parameters()).device))  # (1, C, h, w)
    w = dense.linear.weight[target].to(a.dtype)  # (C,)
    return torch.einsum("c,chw->hw", w, a[0]).float().cpu()  # (C,) x (C, h, w) -> (h, w)


def cam_as_gradcam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What Grad-CAM at ``block14_sepconv2_act`` must be for a linear head: ReLU(CAM) / (h w),
    upsampled to ``size`` as :func:`xviz.gradcam` upsamples."""
    h, w = cam.shape
    return F.interpolate(F.relu(cam)[None, None] / (h * w), size=size, mode="bilinear", align_corners=False)[0, 0]


# -- export ---------------------------------------------------------------------------------------

def file_stem(labels: Sequence[str]) -> str:
    """A file name from the class names: 'taught-mug-bottle-hand' (letters, digits, '-' only)."""
    words = [re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() for name in labels]
    return ("taught-" + "-".join(w for w in words if w))[:60].rstrip("-")


def export_weights(m: LoadedModel) -> bytes:
    """The whole network as .safetensors, with labels, preprocessing and the teaching record in its
    metadata: ``xviz.load_model(path)`` gives the same predictions without any other file."""
    return save_weights(m.net, None, labels=m.labels, preprocessing=m.preprocessing, taught=m.taught)


def export_labels(m: LoadedModel) -> str:
    return "".join(f"{name}\n" for name in m.labels)


def export_record(m: LoadedModel) -> str:
    return json.dumps(m.taught or {}, indent=2, ensure_ascii=False) + "\n"


def save(m: LoadedModel, directory: str | Path) -> list[Path]:
    """Write ``<stem>.safetensors``, ``<stem>.labels.txt`` and ``<stem>.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = file_stem(m.labels)
    paths = [directory / f"{stem}.safetensors", directory / f"{stem}.labels.txt", directory / f"{stem}.json"]
    paths[0].write_bytes(export_weights(m))
    paths[1].write_text(export_labels(m), encoding="utf-8")
    paths[2].write_text(export_record(m), encoding="utf-8")
    return paths
