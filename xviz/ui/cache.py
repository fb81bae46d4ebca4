"""Everything cached: models (``st.cache_resource``, one per source, shared by all sessions, never
mutated: hooked forwards serialise on ``LoadedModel.lock``), derived tables and maps
(``st.cache_data``, keyed by short content ids through ``hash_funcs``: a model by its key, a
selection by model key + image sha256, never tensors or modules), and the process-wide stores of what
the model computed per image (logits, the feature-map capture, attributions), filled through the
inference queue (:mod:`xviz.inference`) while the student sees their place in line
(:mod:`xviz.ui.waiting`).
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cachetools
import numpy as np
import streamlit as st
import torch
from PIL import Image

import xviz
from xviz import inference
from xviz import weights as W
from xviz.ui import background, uploads
from xviz.ui.waiting import Results, computed, session_id

if TYPE_CHECKING:
    import pandas as pd

    from xviz.ui.state import Selection

# Cache keys through hash_funcs: a model by its key (weights, input size, fast mode), a Selection by
# model key + image sha256, so Streamlit never hashes tensors, modules or images. By type name:
# xviz.ui.state imports this module.
BY_KEY = {"xviz.loaded.LoadedModel": lambda m: m.key, "xviz.ui.state.Selection": lambda s: s.key}

# -- models, images, predictions --------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def configure_torch() -> None:
    """Torch's process-wide settings (threads, true fp32 on CUDA), set once per server process:
    ``load_model`` leaves them alone, so a notebook that imports xviz keeps its own."""
    xviz.device.configure()


@st.cache_resource(show_spinner=False, max_entries=4)
def builtin_model(source: str) -> xviz.LoadedModel:
    # No progress callback: Streamlit replays what a cached function drew, and can't replay a bar
    # drawn into a block made outside it (CacheReplayClosureError on the next run); the sidebar
    # downloads first (state.download_weights), so this only reads the cached file.
    model = xviz.load_model(source)
    LOADED_SOURCES.add(source)
    return model


LOADED_SOURCES: set[str] = set()  # builtin sources loaded in this process ("auto" tries its download once)


# Models read from uploaded files: two kept for all sessions (LRU), and one file read at a time on the
# whole server, since a read holds the file, its tensors and the new model at once. Not
# st.cache_resource: whoever queues for a read is told so on the page, and a cached function would
# record that message and replay it on every later hit.
_uploaded = cachetools.LRUCache(maxsize=2)
_uploaded_lock = threading.Lock()  # guards _uploaded
_weights_reads = uploads.OneAtATime()


def uploaded_model(weights: tuple[str, bytes], labels: tuple[str, bytes] | None, display_name: str,
                   on_wait=None) -> xviz.LoadedModel:
    """The model in uploaded ``weights`` (name, bytes), with optional ``labels`` (name, bytes).

    Read at most one file at a time per server: ``on_wait()`` is called if this one has to queue.
    Models are kept by content (sha256 of the files), so a file already read is never read again."""
    key = (sha256(weights[1]), sha256(labels[1]) if labels else "", display_name)
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
    parsed = None
    if labels is not None:  # first: checking labels is cheap, writing and reading weights is not
        labels_name, labels_data = labels
        parsed = xviz.loaded.parse_labels(labels_data, labels_name.lower().endswith(".json"))
    with tempfile.TemporaryDirectory(prefix="xviz-upload-") as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(data)
        return xviz.load_file(path, labels=parsed, display_name=display_name)


# Decoded photos, shared read-only by every session and bounded by their memory (PIL keeps an RGB
# pixel in 4 bytes): a class's photos (~2 MB each at phone-screenshot sizes; a 12 MP photo is 48 MB,
# a 40 MP one 160 MB). Not st.cache_data: it would unpickle a fresh copy of the photo on every rerun.
_images = Results(maxsize=128 * 2**20, getsizeof=lambda img: img.width * img.height * 4)


def decode_image(image_key: str, data: bytes) -> Image.Image:
    """The photo in ``data``, decoded once per server (``image_key``: the sha256 the caller has
    already taken, so no photo is hashed twice per rerun). Nobody may draw on it in place.

    Raises:
        xviz.ImageError: not a usable photo (see xviz.load_image).
    """
    hit = _images.get(image_key)
    return hit if hit is not None else _images.put(image_key, xviz.load_image(data))


# One forward per (model, image, input size) for everything without a gradient: the logits are kept
# per image, and predictions and top classes of any k are read from them; a capture's own forward
# fills them too, so a student who opened the maps first costs no second forward for predictions.
# The same forward keeps the features the classifier head read (block14_sepconv2_act): Grad-CAM at
# that layer, the Grad-CAM page's default, then runs the head alone for any class (attribution_map).
_logits = Results(maxsize=512)  # (classes,) float32: 4 kB an image for ImageNet
_features = Results(maxsize=16 * 2**20, getsizeof=lambda t: t.numel() * t.element_size())  # 0.2 MB at 150 px


def _prediction_op(model: xviz.LoadedModel) -> str:
    # "forward" also returns the features; an inference service answers "logits" only, and fast
    # mode's features are not float32 (Grad-CAM then makes its own forward, in float32)
    return "logits" if model.fast or "logits" in inference.backend().remote_ops() else "forward"


def logits(sel: Selection) -> np.ndarray:
    """(classes,) float32 logits of the selected image (one queued, micro-batched forward, kept)."""
    key = (sel.model.key, sel.image_key)
    hit = _logits.get(key)
    if hit is None:
        cap = _captures.get((sel.model.key, sel.image_key, sel.model.input_size))
        if cap is not None and cap.logits.size:
            return _logits.put(key, cap.logits)
    return computed(_logits, key, lambda: _submit_prediction(sel), "Predicting",
                    finish=lambda out: _keep_prediction(key, out))


def start_prediction(sel: Selection) -> None:
    """Queue the selected image's prediction without waiting for it: the page draws the photo while
    the network reads it, and :func:`logits` then joins the same request (or finds its result)."""
    key = (sel.model.key, sel.image_key)
    if _logits.get(key) is None:
        ticket = _submit_prediction(sel)
        ticket.future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else _logits.put(key, _keep_prediction(key, f.result())))


def _submit_prediction(sel: Selection) -> inference.Ticket:
    model, op = sel.model, _prediction_op(sel.model)
    return inference.backend().submit(model, op, model_input(sel), key=(op, model.key, sel.image_key),
                                      session=session_id())


def _keep_prediction(key: tuple, out) -> np.ndarray:
    """The logits of a prediction's answer; a "forward" also leaves its features for Grad-CAM."""
    if isinstance(out, inference.Forward):
        _features.put(key, out.features)
        out = out.logits
    return _frozen(out[0].numpy())


def predictions(sel: Selection, k: int) -> list[tuple[str, float]]:
    """Top-k (label, probability), most likely first, from :func:`logits`."""
    return [(label, p) for _, label, p in top_classes(sel, k)]


def top_classes(sel: Selection, k: int) -> list[tuple[int, str, float]]:
    """Top-k (class index, label, probability), from :func:`logits`."""
    return xviz.loaded.top_k(sel.model.labels, logits(sel), k)


PHOTO_SIDE = 1024  # the photo beside the model's input: wider than the page's column
PHOTO_AS_UPLOADED_BYTES = 512 * 1024  # like our own JPEG of a 1024 px photo: the drawn store keeps it


def photo_jpeg(sel: Selection) -> bytes:
    """The photo as shown beside the model's input, once per image (``st.image`` of the PIL image
    would encode it at quality 100 on every rerun): the file itself when it is a JPEG that can go back
    as it came (xviz.images.shown_as_uploaded: a class's webcam shots and web pictures, which then
    cost no encoding), else a JPEG at most ``PHOTO_SIDE`` px wide or high."""
    from xviz.figures import toolkit
    from xviz.ui.drawn import drawn

    def draw() -> bytes:
        if xviz.images.shown_as_uploaded(sel.data, PHOTO_SIDE, PHOTO_AS_UPLOADED_BYTES):
            return sel.data
        return toolkit.jpeg_bytes(sel.image, max_side=PHOTO_SIDE)

    return drawn(("photo", sel.image_key), draw)


# The preprocessed input per (preprocessing, photo): every request about a photo starts from it,
# and resizing a 12 MP phone photo again for each one (prediction, maps, each attribution) costs more
# than some of the requests. A tensor is ~0.3 MB at 150 px (a class of 30 fits), ~1 MB at 299 px.
_inputs = Results(maxsize=16 * 2**20, getsizeof=lambda x: x.numel() * x.element_size())


def model_input(sel: Selection):
    """(1, 3, S, S) ``sel.model.preprocess(sel.image)``, resized once per (preprocessing, photo); a
    copy, so no request can change what the next one starts from."""
    model = sel.model
    key = (model.preprocessing, str(model.device), sel.image_key)
    x = _inputs.get(key)
    if x is None:
        x = _inputs.put(key, model.preprocess(sel.image))
    return x.clone(memory_format=torch.preserve_format)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tables and the feature-map capture (xviz.accounting, xviz.across, xviz.flows, xviz.tour) -----------

@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=BY_KEY)
def ledger(model: xviz.LoadedModel):
    """(ledger, standard-conv counterfactual) DataFrames of xviz.accounting, per (model, input size)."""
    from xviz import accounting

    table = accounting.ledger(model, model.input_size)
    return table, accounting.counterfactual(table)


# The Across architectures page's counts depend on no photo and no model: counted once per server
# process, in a background thread that app.py starts when the first session opens the app, so nobody
# waits for them on the request path (xviz.ui.background). Started by the server's first script run
# rather than at import: a notebook or test that imports xviz.ui doesn't pay ~7 s of CPU for a page it
# may never open; the page starts it itself if nothing did (a page run alone, an AppTest).

class ZooCounts(NamedTuple):
    """What xviz.across counts for the page. Shared by every session: read, never change in place."""

    table: pd.DataFrame  # across.compare_networks: one row per network
    ledgers: dict[str, pd.DataFrame]  # name -> its layer-by-layer ledger
    scaling: pd.DataFrame  # across.efficientnet_scaling: B0 to B7
    csv: bytes  # every ledger in one CSV (the page's download)


def _count_zoo(progress) -> ZooCounts:
    from xviz import across, zoo

    networks, variants = len(zoo.NAMES), len(zoo.EFFICIENTNET_SCALING)
    ledgers = across.zoo_ledgers(progress=lambda done, _: progress(done, networks + variants))
    scaling = across.efficientnet_scaling(progress=lambda done, _: progress(networks + done, networks + variants))
    return ZooCounts(across.compare_networks(ledgers), ledgers, scaling, across.ledgers_csv(ledgers))


def _zoo_progress(done: int, total: int) -> str:
    from xviz import zoo

    networks = len(zoo.NAMES)
    if done < networks:
        return (f"Counting the seven networks layer by layer, once for the whole class: {done} of {networks} "
                "done…")
    return f"Counting EfficientNet-B0 to B7 for the scaling lesson: {done - networks} of {total - networks} done…"


ZOO_COUNTS = background.Task(_count_zoo, _zoo_progress, "The seven networks could not be counted on this server")


def start_background_work() -> None:
    """Start what the pages will need and no student should wait for (once per process; cheap after)."""
    ZOO_COUNTS.start()


def zoo_counts() -> ZooCounts:
    """The counts of every xviz.zoo network and of EfficientNet-B0 to B7; while they are being counted,
    their progress (see :mod:`xviz.ui.background`)."""
    return background.result(ZOO_COUNTS)


# Timing the seven networks builds them on the CPU (~0.9 GB: VGG16 alone is 553 MB) and runs each
# several times: one timing at a time per server, in the background. A student who clicks while one
# runs joins it (and gets its number of rounds) rather than adding another 0.9 GB and slowing both.
_timing: background.Task | None = None
_timing_lock = threading.Lock()  # guards _timing


def timing_task(rounds: int) -> background.Task:
    """The timing running now, or a new one of ``rounds`` rounds (started)."""
    global _timing
    from xviz import across

    with _timing_lock:
        if _timing is None or _timing.outcome() is not None:
            _timing = background.Task(
                lambda progress: across.time_networks(rounds=rounds, progress=progress),
                lambda done, total: (f"Timing the seven networks: forward {done} of {total}…" if done
                                     else "Building the seven networks with random weights…"),
                "The networks could not be timed on this server")
        return _timing.start()


def zoo_latency(rounds: int):
    """xviz.across.NetworkLatency of the seven networks on this machine's CPU; its progress meanwhile."""
    return background.result(timing_task(rounds))


# Captures are the largest things kept (~19 MB an image at 150 px, ~82 MB at 299 px): bounded by bytes,
# so a class at 150 px keeps every student's maps while they browse, and 299 px keeps the last few.
_captures = Results(maxsize=320 * 2**20, getsizeof=lambda cap: cap.nbytes)


def flow_capture(sel: Selection):
    """ONE forward pass per (model, image, input size): the float16 maps of xviz.flows, shared
    read-only by every session and every page; changing layer, channel or sort order reuses it.
    Its logits serve the predictions too."""
    model = sel.model
    model_key, image_key, input_size = model.key, sel.image_key, model.input_size
    key = (model_key, image_key, input_size)

    def keep(cap):
        if cap.logits.size:
            _logits.put((model_key, image_key), _frozen(cap.logits))
            _features.put((model_key, image_key), cap.features)
        return cap

    return computed(_captures, key, lambda: inference.backend().submit(
        model, "capture", model_input(sel), key=("capture", *key), session=session_id()),
        "Running the network once and keeping every map these pages show", finish=keep)


# Tuples of frozen dataclasses, shared as they are (cache_resource): cache_data would unpickle ~200
# rows on each of the several calls a page run makes (2% of the GIL's time in a class)
@st.cache_resource(show_spinner=False, max_entries=8, hash_funcs=BY_KEY)
def layer_table(model: xviz.LoadedModel) -> tuple:
    """Shown layers with flow, block, kind and shape at the model's input size (one shape-only forward)."""
    from xviz import flows

    return tuple(flows.layer_table(model, model.input_size))


@st.cache_resource(show_spinner=False, max_entries=8, hash_funcs=BY_KEY)
def architecture(model: xviz.LoadedModel) -> tuple:
    """Per-block summary (shapes at the model's input size, parameters, residual type)."""
    from xviz import flows

    return tuple(flows.architecture(model, model.input_size))


def layer_summary(sel: Selection, layer: str):
    """(LayerStats, {sort: channel order}) of one captured layer."""
    # the capture is fetched here, outside the cached call: it may wait in the queue, and what a
    # cached function draws (the waiting line) Streamlit would replay on every later hit
    return _layer_summary(sel, layer, flow_capture(sel))


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=BY_KEY)
def _layer_summary(sel: Selection, layer: str, _cap):
    from xviz import flows

    maps = _cap.map(layer)
    return flows.layer_stats(maps), {by: flows.channel_order(maps, by) for by in flows.SORTS}


def channel_grid(sel: Selection, layer: str, sort: str, normalise: str, cmap: str, count: int,
                 min_tile: int = 24):
    """(PNG bytes, layout) of the layer's first ``count`` channels in ``sort`` order as one grid image."""
    _, orders = layer_summary(sel, layer)
    return _channel_grid(sel, layer, sort, normalise, cmap, count, min_tile, flow_capture(sel), orders[sort])


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=BY_KEY)
def _channel_grid(sel: Selection, layer: str, sort: str, normalise: str, cmap: str, count: int, min_tile: int,
                  _cap, _order):
    from xviz.figures import maps, toolkit

    indices, palette, layout = maps.channel_grid_indexed(_cap.map(layer), _order[:count], normalise=normalise,
                                                         cmap=cmap, min_tile=min_tile)
    return toolkit.png_bytes(indices, palette=palette), layout


@st.cache_data(show_spinner=False, max_entries=8, hash_funcs=BY_KEY)
def tour_facts(model: xviz.LoadedModel):
    """xviz.tour.TourFacts of the model at its input size, from the cached tables the other pages use."""
    from xviz import tour

    table, twin = ledger(model)
    return tour.facts(model, layer_table(model), architecture(model), table, twin)


# -- attributions: where the network looks (pages/gradcam.py, xviz.attributions) ----------------
# Maps, deletion curves and randomisation checks go through the queue (heavy requests, in arrival
# order; the slow methods report progress, shown in place of the waiting line). Keys are small values
# only: (kind, model key, image sha256, input size, method, layer, target, options).

_results = Results(maxsize=96)  # ~35 MB of 299 px float32 maps at most


def _stored(key: tuple, model: xviz.LoadedModel, op: str, x, what: str, finish=lambda v: v, **params):
    """The stored result for ``key``, or the queue's answer to ``op`` (waited for visibly)."""
    return computed(_results, key, lambda: inference.backend().submit(
        model, op, x, key=key, session=session_id(), **params), what, finish=finish)


def _frozen(arr):
    arr.setflags(write=False)  # shared across sessions: nobody may draw on it in place
    return arr


def attribution_map(sel: Selection, method: str, layer: str, target: int, options: tuple = ()):
    """(H, W) float32 numpy map of ``method`` for class ``target`` (cached per model/image/settings).

    ``options`` is a tuple of (keyword, value) pairs for the method (steps, window, samples).
    """
    from xviz import attributions as A

    spec = A.METHODS[method]
    if method == "integrated_gradients":  # IG's result also says how well it adds up: keep it whole
        return ig_result(sel, target, options).map
    layer = layer if spec.uses_layer else ""
    key = ("map", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options)
    features = _features.get((sel.model.key, sel.image_key)) if (method, layer) == ("gradcam", A.DEFAULT_LAYER) else None
    if features is not None:  # the prediction's forward already reached this layer: the head alone is left
        return _stored(key, sel.model, "gradcam_features", features, f"Computing {spec.title}",
                       lambda heat: _frozen(heat.numpy()), target=target)
    return _stored(key, sel.model, "attribution", model_input(sel), f"Computing {spec.title}",
                   lambda heat: _frozen(heat.numpy()), target=target, method=method,
                   **({"layer": layer} if layer else {}), **dict(options))


RANDOMISED_IG_STEPS = 16
IG_PAGE_SECONDS = 30.0  # a student waits at most this long for IG to refine; the page says if 1% wasn't reached


def ig_result(sel: Selection, target: int, options: tuple = ()):
    """xviz.attributions.IGResult (map as a read-only numpy array), cached like :func:`attribution_map`."""
    import dataclasses

    key = ("ig", sel.model.key, sel.image_key, sel.model.input_size, target, options)
    return _stored(key, sel.model, "integrated_gradients", model_input(sel),
                   "Computing Integrated Gradients",
                   lambda r: dataclasses.replace(r, map=_frozen(r.map.numpy())), target=target,
                   **{"time_budget": IG_PAGE_SECONDS, **dict(options)})


def attribution_deletion(sel: Selection, method: str, layer: str, target: int, options: tuple = ()):
    """xviz.attributions.DeletionCurve of the cached map (same key as :func:`attribution_map`)."""
    from xviz import attributions as A

    heat = attribution_map(sel, method, layer, target, options)
    layer = layer if A.METHODS[method].uses_layer else ""
    key = ("deletion", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options)
    return _stored(key, sel.model, "deletion", model_input(sel), "Deleting pixels, most relevant first",
                   heat=heat, target=target)


def attribution_randomisation(sel: Selection, method: str, layer: str, target: int, options: tuple = (),
                              stages: tuple[str, ...] | None = None):
    """xviz.attributions.RandomisationCheck on a randomised copy (the shared model is not touched)."""
    from xviz import attributions as A

    layer = layer if A.METHODS[method].uses_layer else ""
    if method == "integrated_gradients" and "steps" not in dict(options):
        # the check compares map structure, not completeness: refining each of the scrambled copies
        # (whose paths are rough) would cost up to 7x the map for nothing the check reads
        options = tuple(sorted({**dict(options), "steps": RANDOMISED_IG_STEPS}.items()))
    key = ("randomise", sel.model.key, sel.image_key, sel.model.input_size, method, layer, target, options,
           stages)
    return _stored(key, sel.model, "randomisation", model_input(sel),
                   "Randomising the network from the head down", target=target, method=method,
                   layer=layer or A.DEFAULT_LAYER, stages=stages, **dict(options))

