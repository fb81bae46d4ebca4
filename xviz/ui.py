"""The Streamlit glue, and the only xviz module that imports Streamlit.

Imported by ``app.py`` and ``pages/*`` only. It owns the session keys, the shared sidebar (image,
model, status line) and every cached loader. Models live in ``st.cache_resource`` (one per source,
shared by all sessions, never mutated: hooked forwards serialise on ``LoadedModel.lock``); derived
results live in ``st.cache_data`` keyed by short content ids (image sha256, model key), never by
tensors or modules.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

import xviz
from xviz import weights as W
from xviz.errors import XvizError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = ASSETS / "examples"

# session keys, in one place so pages never invent their own spellings
IMAGE_BYTES = "image_bytes"  # bytes of the current image (survives page switches)
IMAGE_NAME = "image_name"  # where it came from, for captions
IMAGE_ERROR = "image_error"  # message of the last rejected upload, shown once
SEEN_UPLOAD = "seen_upload"  # file_id of the upload already processed
MODEL_SOURCE = "model_source"  # a key of MODEL_CHOICES
WEIGHTS_UPLOAD = "weights_upload"  # (name, bytes) of the user's own weights file
LABELS_UPLOAD = "labels_upload"  # (name, bytes) of the user's labels file
MODEL_ERROR = "model_error"
INPUT_SIZE = "input_size"  # 0: the weights' own size
IMAGE_SOURCE = "image_source"
EXAMPLE = "example"

MODEL_CHOICES = {
    "auto": "Best available",
    "imagenet": "ImageNet (1000 classes)",
    "kitchenware": "Kitchenware demo (6 classes)",
    "untrained": "Untrained (random weights)",
    "upload": "Your own weights file…",
}
INPUT_SIZES = (0, 150, 224, 299, 384)  # 0 = native; every size >= 71 works, these cover the usual ones
MAX_WEIGHTS_MB = 400


@dataclass(frozen=True)
class Selection:
    """What every page works on: the model, the image and their cache keys."""

    model: xviz.LoadedModel
    image: Image.Image
    image_bytes: bytes
    image_key: str  # sha256 of the image bytes
    image_name: str

    @property
    def key(self) -> str:
        return f"{self.model.key}/{self.image_key}"


# -- cached loaders ---------------------------------------------------------------------------

@st.cache_resource(show_spinner=False, max_entries=4)
def _builtin_model(source: str, _progress=None) -> xviz.LoadedModel:
    return xviz.load_model(source, progress=_progress)


@st.cache_resource(show_spinner=False, max_entries=2)
def _uploaded_model(weights_sha: str, labels_sha: str, _weights: tuple[str, bytes],
                    _labels: tuple[str, bytes] | None) -> xviz.LoadedModel:
    """A model from uploaded bytes. The upload's name never becomes a path: only its extension is
    kept (from an allow-list) on a temp file xviz creates itself."""
    name, data = _weights
    suffix = Path(name).suffix.lower()
    if suffix not in W.WEIGHT_SUFFIXES:
        raise xviz.WeightsError(f"{suffix or 'This file type'} is not a weights format xviz reads. "
                                f"Upload one of {', '.join(W.WEIGHT_SUFFIXES)}.")
    with tempfile.TemporaryDirectory(prefix="xviz-upload-") as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(data)
        labels = None
        if _labels is not None:
            labels_name, labels_data = _labels
            try:
                text = labels_data.decode("utf-8")
            except UnicodeDecodeError:
                raise xviz.LabelsError("The labels file is not UTF-8 text. Save it as plain text, "
                                       "one class name per line.") from None
            labels = xviz.loaded.parse_labels(text, labels_name.lower().endswith(".json"))
        return xviz.load_file(path, labels=labels, display_name=_safe_display(name))


def _safe_display(name: str) -> str:
    return "".join(c for c in Path(name).name if c.isprintable())[:80] or "uploaded file"


@st.cache_data(show_spinner=False, max_entries=32)
def _decode(image_key: str, _data: bytes) -> Image.Image:
    return xviz.load_image(_data)


@st.cache_data(show_spinner=False, max_entries=64)
def predictions(model_key: str, image_key: str, k: int, _model: xviz.LoadedModel,
                _image: Image.Image) -> list[tuple[str, float]]:
    """Top-k predictions, computed once per (model, image, k)."""
    return _model.predict(_image, k=k)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the model --------------------------------------------------------------------------------

def load_selected_model() -> xviz.LoadedModel | None:
    """The model the sidebar asks for, loading it (with a progress bar when downloading)."""
    source = st.session_state.get(MODEL_SOURCE, "auto")
    st.session_state.pop(MODEL_ERROR, None)
    if source == "upload":
        upload = st.session_state.get(WEIGHTS_UPLOAD)
        if upload is None:
            return None
        labels = st.session_state.get(LABELS_UPLOAD)
        try:
            return _uploaded_model(sha256(upload[1]), sha256(labels[1]) if labels else "",
                                   upload, labels)
        except XvizError as exc:
            st.session_state[MODEL_ERROR] = str(exc)
            return None
    bar = st.empty()

    def progress(done: int, total: int):
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"Downloading weights: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

    try:
        with st.spinner("Loading the model…"):
            return _builtin_model(source, _progress=progress)
    except XvizError as exc:
        st.session_state[MODEL_ERROR] = str(exc)
        return None
    finally:
        bar.empty()


# -- the image --------------------------------------------------------------------------------

def example_images() -> dict[str, Path]:
    """Bundled photos (assets/examples) plus the kitchenware package's photos when installed."""
    # coffee first: both the ImageNet and the kitchenware model have something to say about a cup
    order = {"coffee": 0, "cat": 1, "rocket": 2, "astronaut": 3}
    paths = sorted(EXAMPLES.glob("*.jpg"), key=lambda p: (order.get(p.stem, 99), p.stem))
    found = {p.stem.replace("_", " "): p for p in paths}
    kdir = W.kitchenware_dir()
    if kdir is not None:
        for p in sorted((kdir / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))[:6]:
            found[f"kitchenware photo {p.stem}"] = p
    return found


def _set_image(data: bytes, name: str) -> bool:
    try:
        _decode(sha256(data), data)
    except xviz.ImageError as exc:
        st.session_state[IMAGE_ERROR] = f"{name}: {exc}"
        return False
    st.session_state[IMAGE_BYTES] = data
    st.session_state[IMAGE_NAME] = name
    st.session_state.pop(IMAGE_ERROR, None)
    return True


def _image_sidebar():
    st.sidebar.subheader("Image")
    source = st.sidebar.radio("Source", ["Example", "Upload", "Camera"], horizontal=True,
                              key=IMAGE_SOURCE, label_visibility="collapsed")
    if source == "Example":
        examples = example_images()
        choice = st.sidebar.selectbox("Example photo", list(examples), key=EXAMPLE)
        if choice and st.session_state.get(IMAGE_NAME) != f"example: {choice}":
            _set_image(examples[choice].read_bytes(), f"example: {choice}")
    elif source == "Upload":
        up = st.sidebar.file_uploader("Your photo", type=None, key="image_uploader",
                                      help="JPEG, PNG, WebP, GIF, BMP or TIFF, up to 25 MB.")
        if up is not None and st.session_state.get(SEEN_UPLOAD) != up.file_id:
            st.session_state[SEEN_UPLOAD] = up.file_id
            _set_image(up.getvalue(), f"upload: {_safe_display(up.name)}")
    else:
        st.sidebar.caption("The camera works when the app is opened on localhost or over HTTPS; "
                           "on plain http from another machine the browser blocks it.")
        shot = st.sidebar.camera_input("Take a photo", key="camera")
        if shot is not None and st.session_state.get(SEEN_UPLOAD) != shot.file_id:
            st.session_state[SEEN_UPLOAD] = shot.file_id
            _set_image(shot.getvalue(), "camera photo")
    if IMAGE_ERROR in st.session_state:
        kept = " The previous image is still in use." if IMAGE_BYTES in st.session_state else ""
        st.sidebar.error(st.session_state[IMAGE_ERROR] + kept)
    if IMAGE_BYTES not in st.session_state:  # first visit: start with a photo, never an empty page
        first = next(iter(example_images().items()))
        _set_image(first[1].read_bytes(), f"example: {first[0]}")


def _model_sidebar():
    st.sidebar.subheader("Model")
    st.sidebar.selectbox("Weights", list(MODEL_CHOICES), format_func=MODEL_CHOICES.get, key=MODEL_SOURCE)
    if st.session_state.get(MODEL_SOURCE) == "upload":
        w = st.sidebar.file_uploader("Weights file", type=[s.lstrip(".") for s in W.WEIGHT_SUFFIXES],
                                     key="weights_uploader",
                                     help="An Xception state dict (.pth/.pt/.safetensors; xviz or timm "
                                          "layout) or a Keras .h5/.keras file. Loaded without "
                                          "executing anything in it.")
        lab = st.sidebar.file_uploader("Labels (optional)", type=["txt", "json"], key="labels_uploader",
                                       help="One class name per line, or a JSON list.")
        st.session_state[WEIGHTS_UPLOAD] = (w.name, w.getvalue()) if w is not None else None
        st.session_state[LABELS_UPLOAD] = (lab.name, lab.getvalue()) if lab is not None else None
    st.sidebar.select_slider("Input size", INPUT_SIZES, key=INPUT_SIZE,
                             format_func=lambda s: "native" if s == 0 else f"{s} px",
                             help="Xception accepts any size from 71 px; 'native' is the size the "
                                  "weights were trained at. Spatial maps grow with the input.")


def sidebar() -> None:
    """Build the shared sidebar. Call after ``st.navigation`` and before ``page.run()``."""
    st.session_state.setdefault(MODEL_SOURCE, "auto")
    st.session_state.setdefault(INPUT_SIZE, 0)
    _image_sidebar()
    _model_sidebar()
    model = _resolve_model()
    st.session_state[_RUN_MODEL] = model
    st.sidebar.divider()
    if model is None:
        st.sidebar.error(st.session_state.get(MODEL_ERROR) or "Upload a weights file to use your own model.")
    else:
        status(model, st.sidebar)


def status(model: xviz.LoadedModel, where=st) -> None:
    """Weights and where they came from, device, input size and preprocessing — always visible."""
    if not model.trained:
        where.error("**Untrained network** — random weights. Nothing it shows means anything.")
    where.markdown(f"**Weights:** {model.source}")
    where.caption(f"**Device:** {model.device_name} · **Input:** {model.input_size}×{model.input_size} px · "
                  f"**Preprocessing:** {model.preprocessing.describe()}")
    if model.notes:
        with where.expander("How this model was chosen"):
            for note in model.notes:
                st.write(note)


_RUN_MODEL = "_run_model"  # the model resolved by this run's sidebar, so pages don't resolve it again


def current_model() -> xviz.LoadedModel | None:
    """The model chosen in the sidebar at the chosen input size."""
    if _RUN_MODEL in st.session_state:
        return st.session_state[_RUN_MODEL]
    return _resolve_model()


def _resolve_model() -> xviz.LoadedModel | None:
    model = load_selected_model()
    if model is None:
        return None
    size = st.session_state.get(INPUT_SIZE, 0)
    return model.with_input_size(size) if size and size != model.input_size else model


def current() -> Selection | None:
    """The model and image every page works on, or None (with a message shown) if either is missing."""
    ensure_frame()
    model = current_model()
    data = st.session_state.get(IMAGE_BYTES)
    if model is None:
        st.info("Choose a model in the sidebar (or upload a weights file) to begin.")
        return None
    if data is None:
        st.info("Choose an image in the sidebar to begin.")
        return None
    key = sha256(data)
    return Selection(model, _decode(key, data), data, key, st.session_state.get(IMAGE_NAME, "image"))


def ensure_frame() -> None:
    """Hand a deep link over to app.py when Streamlit ran the page file on its own.

    Until ``st.navigation`` has run once in the server process, Streamlit treats the ``pages/``
    folder as a legacy multipage app: a link like ``/parameters`` opened as the server's very
    first request runs ``pages/parameters.py`` alone, without the sidebar. Leaving legacy mode
    and rerunning lets app.py (the frame) run and route to the same page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_header(title: str, lead: str) -> None:
    ensure_frame()
    st.title(title)
    st.markdown(lead)


@st.cache_data(show_spinner=False, max_entries=16)
def ledger(model_key: str, input_size: int, _model: xviz.LoadedModel):
    """(ledger, standard-conv counterfactual) DataFrames of xviz.accounting, per (model, input size)."""
    from xviz import accounting

    table = accounting.ledger(_model, input_size)
    return table, accounting.counterfactual(table)


# -- inside the flows: feature maps, separable anatomy, architecture (xviz.flows) -------------

GOTO_BLOCK = "goto_block"  # set by the Architecture page: the block whose maps to open


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
                 cmap: str, count: int, _cap, _order):
    """(PNG bytes, layout) of the layer's first ``count`` channels in ``sort`` order as one grid image."""
    from xviz.figures import maps

    rgb, layout = maps.channel_grid(_cap.map(layer), _order[:count], normalise=normalise, cmap=cmap)
    return maps.png_bytes(rgb), layout
