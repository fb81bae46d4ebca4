"""Everything cached: models (``st.cache_resource``, one per source, shared by all sessions, never
mutated: hooked forwards serialise on ``LoadedModel.lock``), derived tables and maps
(``st.cache_data``, keyed by short content ids: image sha256, model key, never tensors or modules),
and the process-wide store of attribution results.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import cachetools
import streamlit as st
from PIL import Image

import xviz
from xviz import weights as W
from xviz.ui import uploads

if TYPE_CHECKING:
    from xviz.ui.state import Selection

# -- models, images, predictions --------------------------------------------------------------

@st.cache_resource(show_spinner=False, max_entries=4)
def builtin_model(source: str, _progress=None) -> xviz.LoadedModel:
    return xviz.load_model(source, progress=_progress)


# Models read from uploaded files: two kept for all sessions (LRU), and one file read at a time on the
# whole server, since a read holds the file, its tensors and the new model at once. Not
# st.cache_resource: whoever queues for a read is told so on the page, and a cached function would
# record that message and replay it on every later hit.
_uploaded = cachetools.LRUCache(maxsize=2)
_uploaded_lock = threading.Lock()  # guards _uploaded
_weights_reads = uploads.OneAtATime()


def uploaded_model(weights_sha: str, labels_sha: str, display_name: str, weights: tuple[str, bytes],
                   labels: tuple[str, bytes] | None, on_wait=None) -> xviz.LoadedModel:
    """The model in uploaded ``weights`` (name, bytes), with optional ``labels`` (name, bytes).

    Read at most one file at a time per server: ``on_wait()`` is called if this one has to queue.
    Models are kept by content (the shas), so a file already read is never read again."""
    key = (weights_sha, labels_sha, display_name)
    with _uploaded_lock:
        hit = _uploaded.get(key)
    if hit is not None:
        return hit
    with _weights_reads.turn(on_wait):
        with _uploaded_lock:
            hit = _uploaded.get(key)  # read by another session while this one waited
        if hit is not None:
            return hit
        model = _read_uploaded(weights, labels, display_name)
    with _uploaded_lock:
        _uploaded[key] = model
    return model


def _read_uploaded(weights: tuple[str, bytes], labels: tuple[str, bytes] | None,
                   display_name: str) -> xviz.LoadedModel:
    """The upload's name never becomes a path: only its extension is kept (from an allow-list) on a
    temp file xviz creates itself."""
    name, data = weights
    suffix = Path(name).suffix.lower()
    if suffix not in W.WEIGHT_SUFFIXES:
        raise xviz.WeightsError(f"{suffix or 'This file type'} is not a weights format xviz reads. "
                                f"Upload one of {', '.join(W.WEIGHT_SUFFIXES)}.")
    with tempfile.TemporaryDirectory(prefix="xviz-upload-") as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(data)
        parsed = None
        if labels is not None:
            labels_name, labels_data = labels
            try:
                text = labels_data.decode("utf-8")
            except UnicodeDecodeError:
                raise xviz.LabelsError("The labels file is not UTF-8 text. Save it as plain text, "
                                       "one class name per line.") from None
            parsed = xviz.loaded.parse_labels(text, labels_name.lower().endswith(".json"))
        return xviz.load_file(path, labels=parsed, display_name=display_name)


@st.cache_data(show_spinner=False, max_entries=32)
def decode_image(image_key: str, _data: bytes) -> Image.Image:
    return xviz.load_image(_data)


@st.cache_data(show_spinner=False, max_entries=64)
def predictions(model_key: str, image_key: str, k: int, _model: xviz.LoadedModel,
                _image: Image.Image) -> list[tuple[str, float]]:
    """Top-k predictions, computed once per (model, image, k)."""
    return _model.predict(_image, k=k)


@st.cache_data(show_spinner=False, max_entries=64)
def top_classes(model_key: str, image_key: str, k: int, _model: xviz.LoadedModel,
                _image: Image.Image) -> list[tuple[int, str, float]]:
    """Top-k (class index, label, probability), computed once per (model, image, k)."""
    return _model.top_classes(_image, k=k)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tables and the feature-map capture (xviz.accounting, xviz.across, xviz.flows, xviz.tour) -----------

@st.cache_data(show_spinner=False, max_entries=16)
def ledger(model_key: str, input_size: int, _model: xviz.LoadedModel):
    """(ledger, standard-conv counterfactual) DataFrames of xviz.accounting, per (model, input size)."""
    from xviz import accounting

    table = accounting.ledger(_model, input_size)
    return table, accounting.counterfactual(table)


@st.cache_data(show_spinner="Building seven networks and counting them layer by layer…")
def zoo_comparison():
    """(comparison table, {name: ledger}) of xviz.across for every xviz.zoo network; the same for everyone."""
    from xviz import across

    ledgers = across.zoo_ledgers()
    return across.compare_networks(ledgers), ledgers


@st.cache_data(show_spinner=False)
def zoo_ledgers_csv() -> bytes:
    from xviz import across

    return across.ledgers_csv(zoo_comparison()[1])


@st.cache_data(show_spinner="Building EfficientNet-B0 to B7 and counting them…")
def efficientnet_scaling():
    from xviz import across

    return across.efficientnet_scaling()


@st.cache_resource(show_spinner="Running the network once and keeping every map these pages show…",
                   max_entries=3)
def flow_capture(model_key: str, image_key: str, input_size: int, _model: xviz.LoadedModel,
                 _image: Image.Image):
    """ONE forward pass per (model, image, input size): the float16 maps of xviz.flows (~82 MB at
    299 px), shared read-only by every session and every page; changing layer, channel or sort
    order reuses it."""
    from xviz import flows

    return flows.capture_views(_model, _model.preprocess(_image))


@st.cache_data(show_spinner=False, max_entries=8)
def layer_table(model_key: str, input_size: int, _model: xviz.LoadedModel):
    """Shown layers with flow, block, kind and shape at ``input_size`` (one shape-only forward)."""
    from xviz import flows

    return flows.layer_table(_model, input_size)


@st.cache_data(show_spinner=False, max_entries=8)
def architecture(model_key: str, input_size: int, _model: xviz.LoadedModel):
    """Per-block summary (shapes at ``input_size``, parameters, residual type)."""
    from xviz import flows

    return flows.architecture(_model, input_size)


@st.cache_data(show_spinner=False, max_entries=64)
def layer_summary(model_key: str, image_key: str, input_size: int, layer: str, _cap):
    """(LayerStats, {sort: channel order}) of one captured layer."""
    from xviz import flows

    maps = _cap.map(layer)
    return flows.layer_stats(maps), {by: flows.channel_order(maps, by) for by in flows.SORTS}


@st.cache_data(show_spinner=False, max_entries=32)
def channel_grid(model_key: str, image_key: str, input_size: int, layer: str, sort: str, normalise: str,
                 cmap: str, count: int, _cap, _order, min_tile: int = 24):
    """(PNG bytes, layout) of the layer's first ``count`` channels in ``sort`` order as one grid image."""
    from xviz.figures import maps

    rgb, layout = maps.channel_grid(_cap.map(layer), _order[:count], normalise=normalise, cmap=cmap,
                                    min_tile=min_tile)
    return maps.png_bytes(rgb), layout


@st.cache_data(show_spinner=False, max_entries=8)
def tour_facts(model_key: str, input_size: int, _model: xviz.LoadedModel):
    """xviz.tour.TourFacts of the model at ``input_size``, from the cached tables the other pages use."""
    from xviz import tour

    table, twin = ledger(model_key, input_size, _model)
    return tour.facts(_model, layer_table(model_key, input_size, _model),
                      architecture(model_key, input_size, _model), table, twin)


# -- attributions: where the network looks (pages/gradcam.py, xviz.attributions) ----------------
# Maps, deletion curves and randomisation checks are kept in one process-wide LRU rather than
# st.cache_data: the slow methods report progress into an st.progress bar drawn outside the
# computation, which cache_data would record and fail to replay. Keys are small values only:
# (kind, model key, image sha256, input size, method, layer, target, options).

_results = cachetools.LRUCache(maxsize=96)  # ~35 MB of 299 px float32 maps at most
_results_lock = threading.Lock()  # LRUCache is not thread-safe, and every session's script is a thread


def _stored(key: tuple, compute, what: str):
    """The stored result for ``key``, or ``compute(progress)`` with a progress bar while it runs."""
    with _results_lock:
        hit = _results.get(key)
    if hit is not None:
        return hit
    bar = st.empty()

    def progress(done: int, total: int):
        bar.progress(min(done / max(total, 1), 1.0), text=f"{what}: {done} of {total}")

    try:
        with st.spinner(f"{what}…"):
            value = compute(progress)
    finally:
        bar.empty()
    with _results_lock:
        _results[key] = value
    return value


def _frozen(arr):
    arr.setflags(write=False)  # shared across sessions: nobody may draw on it in place
    return arr


def attribution_map(sel: Selection, method: str, layer: str, target: int, options: tuple = ()):
    """(H, W) float32 numpy map of ``method`` for class ``target`` (cached per model/image/settings).

    ``options`` is a tuple of (keyword, value) pairs for the method (steps, window, samples).
    """
    from xviz import attributions as A

    spec = A.METHODS[method]
    layer = layer if spec.uses_layer else ""
    key = ("map", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options)
    x = sel.model.preprocess(sel.image)
    return _stored(key, lambda progress: _frozen(A.attribute(
        sel.model, x, target, method, layer=layer or A.DEFAULT_LAYER, progress=progress,
        **dict(options)).numpy()), f"Computing {spec.title}")


def attribution_deletion(sel: Selection, method: str, layer: str, target: int, options: tuple = ()):
    """xviz.attributions.DeletionCurve of the cached map (same key as :func:`attribution_map`)."""
    from xviz import attributions as A

    heat = attribution_map(sel, method, layer, target, options)
    layer = layer if A.METHODS[method].uses_layer else ""
    key = ("deletion", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options)
    x = sel.model.preprocess(sel.image)
    return _stored(key, lambda progress: A.deletion_curve(sel.model, x, heat, target, progress=progress),
                   "Deleting pixels, most relevant first")


def attribution_randomisation(sel: Selection, method: str, layer: str, target: int, options: tuple = (),
                              stages: tuple[str, ...] | None = None):
    """xviz.attributions.RandomisationCheck on a randomised copy (the shared model is not touched)."""
    from xviz import attributions as A

    layer = layer if A.METHODS[method].uses_layer else ""
    key = ("randomise", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options,
           stages)
    x = sel.model.preprocess(sel.image)
    return _stored(key, lambda progress: A.randomisation_check(
        sel.model, x, target, method, layer=layer or A.DEFAULT_LAYER, stages=stages, progress=progress,
        **dict(options)), "Randomising the network from the head down")

