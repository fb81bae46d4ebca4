"""Session state: the keys pages share, the Selection every page works on, the sidebar's model at the
chosen input size, and the hand-over of a deep link to app.py (``ensure_frame``)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import streamlit as st
from PIL import Image

import xviz
import xviz.weights as W
from xviz.errors import XvizError
from xviz.ui import cache, legacy_pages, uploads

# session keys, in one place so pages never invent their own spellings
IMAGE_BYTES = "image_bytes"  # bytes of the current image (survives page switches)
IMAGE_KEY = "image_key"  # their sha256, taken once when the image is chosen
IMAGE_NAME = "image_name"  # where it came from, for captions
IMAGE_ERROR = "image_error"  # message of the last rejected upload, shown once
MODEL_SOURCE = "model_source"  # a key of sidebar.MODEL_CHOICES
WEIGHTS_UPLOAD = "weights_upload"  # (name, bytes) of the user's own weights file
LABELS_UPLOAD = "labels_upload"  # (name, bytes) of the user's labels file
MODEL_ERROR = "model_error"
WEIGHTS_REFUSED = "weights_refused"  # why the last uploaded weights file was refused (and let go)
LAST_MODEL = "last_model"  # the last model that loaded in this session: kept while an upload is refused
INPUT_SIZE = "input_size"  # 0: the weights' own size
FAST_MODE = "fast_mode"  # predictions in bf16/fp16 (the sidebar's switch; default $XVIZ_FAST)
IMAGE_SOURCE = "image_source"
EXAMPLE = "example"
PRESENTER = "presenter"  # classroom projector: larger type, projector-safe colours, fewer controls
GOTO_BLOCK = "goto_block"  # set by the Architecture page: the block whose maps to open
TOUR_REVEALED = "tour_revealed"  # slugs of the tour steps whose answer was revealed
RUN_MODEL = "_run_model"  # the model resolved by this run's sidebar, so pages don't resolve it again
SESSION_LOST = "session_lost"  # this tab had a session on another server: its uploads are gone (deploy/)
TAUGHT = "taught_model"  # the LoadedModel taught in this session (the sidebar's "taught" choice)
PAGES = "_pages"  # app.py's st.Page objects, built on the session's first run


@dataclass(frozen=True)
class Selection:
    """What every page works on: the model, the image and their cache keys."""

    model: xviz.LoadedModel
    image: Image.Image
    image_key: str  # sha256 of the image bytes
    image_name: str
    data: bytes = field(default=b"", repr=False, compare=False)  # the image file as chosen

    @property
    def key(self) -> str:
        return f"{self.model.key}/{self.image_key}"


def safe_display(name: str) -> str:
    """An uploaded file's name as shown in Markdown: last path part, word characters, '.', '-' and
    spaces only, so a name can't become a link, a path or markup."""
    base = re.split(r"[\\/]", name)[-1]
    return re.sub(r"[^\w.\- ]", "", base)[:80].strip() or "uploaded file"


# -- the sidebar's model ----------------------------------------------------------------------

def load_selected_model() -> xviz.LoadedModel | None:
    """The model the sidebar asks for, loading it (with a progress bar when downloading)."""
    source = st.session_state.get(MODEL_SOURCE, "auto")
    st.session_state.pop(MODEL_ERROR, None)
    if source == "taught":  # lives in this session only; it shares the backbone of a cached model
        return st.session_state.get(TAUGHT)
    if source == "upload":
        return _uploaded_model()
    st.session_state.pop(WEIGHTS_REFUSED, None)
    bar = []  # the progress bar, made by the first report: most runs download nothing and draw no bar

    def progress(done: int, total: int):
        if not bar:
            bar.append(st.empty())
        bar[0].progress(min(done / max(total, 1), 1.0),
                        text=f"Downloading weights: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

    # a model this server has loaded is a cache hit: no spinner (each one starts a timer thread)
    loading = contextlib.nullcontext() if source in cache.LOADED_SOURCES else st.spinner("Loading the model…")
    try:
        download_weights(source, progress)
        with loading:
            model = cache.builtin_model(source)
        st.session_state[LAST_MODEL] = model
        return model
    except XvizError as exc:
        st.session_state[MODEL_ERROR] = str(exc)
        return None
    finally:
        if bar:
            bar[0].empty()


def download_weights(source: str, progress) -> None:
    """Download the ImageNet weights the source needs, with the page's progress bar, before the
    cached loader runs (it must draw nothing). "imagenet" that can't be had raises the loader's own
    WeightsUnavailableError; "auto" tries once per server and otherwise lets the loader fall back
    to the demo model and say why."""
    if source not in ("auto", "imagenet") or (source == "auto" and "auto" in cache.LOADED_SOURCES):
        return
    if W.cached_path(W.IMAGENET) is not None:
        return
    if source == "auto":
        with contextlib.suppress(XvizError):
            W.fetch(W.IMAGENET, progress=progress)
        return
    W.fetch(W.IMAGENET, progress=progress)


def _uploaded_model() -> xviz.LoadedModel | None:
    """The model in the sidebar's weights uploader. A refused weights file is let go at once (the
    uploader is emptied and the run starts over) and why it was refused stays on show, while the
    pages go on with the model the session had (a refused file, a mistake or crafted to hurt the
    server, changes nothing else)."""
    upload = st.session_state.get(WEIGHTS_UPLOAD)
    if upload is None:
        if WEIGHTS_REFUSED in st.session_state:
            st.session_state[MODEL_ERROR] = st.session_state[WEIGHTS_REFUSED]
            return st.session_state.get(LAST_MODEL)
        return None
    st.session_state.pop(WEIGHTS_REFUSED, None)
    labels = st.session_state.get(LABELS_UPLOAD)
    waiting = st.sidebar.empty()
    try:
        with st.spinner("Reading the weights file…"):
            model = cache.uploaded_model(upload, labels, safe_display(upload[0]),
                                         on_wait=lambda: waiting.info(uploads.WAITING_FOR_WEIGHTS))
        st.session_state[LAST_MODEL] = model
        return model
    except XvizError as exc:
        st.session_state[MODEL_ERROR] = str(exc)
        file = uploads.current(uploads.WEIGHTS)
        if isinstance(exc, xviz.LabelsError) or file is None:  # the labels' fault: the weights are fine
            return st.session_state.get(LAST_MODEL)
        st.session_state[WEIGHTS_REFUSED] = str(exc)
        st.session_state[WEIGHTS_UPLOAD] = None
        uploads.release(uploads.WEIGHTS, file)
        st.rerun()  # draw the emptied uploader now; the refused file's last reference goes with the old one
    finally:
        waiting.empty()


def current_model() -> xviz.LoadedModel | None:
    """The model chosen in the sidebar at the chosen input size."""
    if RUN_MODEL in st.session_state:
        return st.session_state[RUN_MODEL]
    return resolve_model()


def resolve_model() -> xviz.LoadedModel | None:
    model = load_selected_model()
    if model is None:
        return None
    size = st.session_state.get(INPUT_SIZE, 0)
    model = model.with_input_size(size) if size and size != model.input_size else model
    return model.with_fast_mode(bool(st.session_state.get(FAST_MODE)) and model.fast_precision is not None)


def required_model() -> xviz.LoadedModel:
    """The sidebar's model for a page; without one, a hint is shown and the page stops there."""
    ensure_frame()
    model = current_model()
    if model is None:
        st.info("Choose a model in the sidebar (or upload a weights file) to begin.")
        st.stop()
    return model


def current() -> Selection:
    """The model and image every page works on; if either is missing, a hint is shown and the
    page stops there."""
    model = required_model()
    data = st.session_state.get(IMAGE_BYTES)
    if data is None:
        st.info("Choose an image in the sidebar to begin.")
        st.stop()
    key = st.session_state.get(IMAGE_KEY) or cache.sha256(data)
    return Selection(model, cache.decode_image(key, data), key, st.session_state.get(IMAGE_NAME, "image"), data)


def ensure_frame() -> None:
    """Hand a deep link over to app.py when Streamlit ran the page file on its own.

    A link like ``/parameters`` opened as the server's very first request runs
    ``pages/parameters.py`` alone, without the sidebar (see legacy_pages). Leaving legacy mode and
    rerunning lets app.py (the frame) run and route to the same page.
    """
    if legacy_pages.active():
        legacy_pages.leave()
        st.rerun()


def page_header(title: str, lead: str) -> None:
    ensure_frame()
    st.title(title)
    st.markdown(lead)

