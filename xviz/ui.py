"""The Streamlit glue, and the only xviz module that imports Streamlit.

Imported by ``app.py`` and ``pages/*`` only. It owns the session keys, the shared sidebar (image,
model, status line) and every cached loader. Models live in ``st.cache_resource`` (one per source,
shared by all sessions, never mutated: hooked forwards serialise on ``LoadedModel.lock``); derived
results live in ``st.cache_data`` keyed by short content ids (image sha256, model key), never by
tensors or modules.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
PRESENTER = "presenter"  # classroom projector: larger type, projector-safe colours, fewer controls

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
def _uploaded_model(weights_sha: str, labels_sha: str, display_name: str, _weights: tuple[str, bytes],
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
        return xviz.load_file(path, labels=labels, display_name=display_name)


def _safe_display(name: str) -> str:
    """An uploaded file's name as shown in Markdown: last path part, word characters, '.', '-' and
    spaces only, so a name can't become a link, a path or markup."""
    base = re.split(r"[\\/]", name)[-1]
    return re.sub(r"[^\w.\- ]", "", base)[:80].strip() or "uploaded file"


@st.cache_data(show_spinner=False, max_entries=32)
def _decode(image_key: str, _data: bytes) -> Image.Image:
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
                                   _safe_display(upload[0]), upload, labels)
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
        blocked = camera_blocked(st.context.url)
        if blocked:
            st.sidebar.warning(blocked)
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


def camera_blocked(url: str | None) -> str | None:
    """Why the browser will refuse the camera to a page at ``url``, or None if it allows it.

    Browsers give the camera (getUserMedia) only to secure contexts: https, or http on a loopback
    host (localhost, 127.x.x.x, [::1]). ``url`` is what the browser shows (``st.context.url``).
    """
    if not url:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name, not an address
        pass
    return (f"The camera can't work here: this page was opened over plain http from {parts.netloc}, and "
            "browsers allow the camera only on localhost or over HTTPS. Open the app on the computer that "
            "runs it (http://localhost…), serve it over HTTPS, or upload a photo instead.")


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
    _presenter_sidebar()
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
                 cmap: str, count: int, _cap, _order, min_tile: int = 24):
    """(PNG bytes, layout) of the layer's first ``count`` channels in ``sort`` order as one grid image."""
    from xviz.figures import maps

    rgb, layout = maps.channel_grid(_cap.map(layer), _order[:count], normalise=normalise, cmap=cmap,
                                    min_tile=min_tile)
    return maps.png_bytes(rgb), layout


# -- presenter mode: a classroom projector ------------------------------------------------------

# (screen, projector) colour scales. A projector washes out contrast and shifts hues; scales whose
# lightness rises steadily keep their order when that happens. jet's brightest colours sit mid-scale,
# so a washed-out jet no longer says which end is high; cividis also reads the same to red-green
# colour-blind viewers (about 1 boy in 12).
COLORMAPS = {"maps": ("viridis", "cividis"), "heat": ("jet", "inferno")}

# Streamlit sizes its text in rem of the root font (16 px): raising the root scales all of it, and
# body text gets a further step, for the back row.
PRESENTER_CSS = """<style>
html { font-size: 20px !important; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] :is(p, li) { font-size: 1.2rem; line-height: 1.5; }
[data-testid="stMain"] [data-testid="stCaptionContainer"] { font-size: 0.95rem; }
</style>"""


def projected(fig, text: int = 18):
    """``fig`` with type a projector's back row can read, in presenter mode (plotly sizes text in px,
    so the page's larger root font doesn't reach it); unchanged otherwise. ``text``: the traces' own
    labels, smaller where they sit side by side."""
    if presenter():
        fig.update_layout(font=dict(size=20))
        fig.update_traces(textfont_size=text)
        if fig.layout.height:
            fig.update_layout(height=int(fig.layout.height * 1.4))
    return fig


def presenter() -> bool:
    """Is presenter mode on? Views then show fewer controls and projector-safe colours."""
    return bool(st.session_state.get(PRESENTER, False))


def colormap(kind: str = "maps") -> str:
    """The colour scale views use for ``kind`` ("maps": activations, "heat": attribution heatmaps)."""
    if kind not in COLORMAPS:
        raise ValueError(f"unknown colour-scale kind {kind!r}; use one of {', '.join(COLORMAPS)}")
    return COLORMAPS[kind][presenter()]


def _presenter_sidebar():
    on = st.sidebar.toggle("Presenter mode", key=PRESENTER,
                           help="For a projector: larger type, colour scales that survive a projector, fewer "
                                "controls, and the sidebar closes (» at the top left opens it again).")
    # A second st.set_page_config is allowed mid-session, and Streamlit 1.67 applies a *changed*
    # initial_sidebar_state at once. But once the user has opened or closed the sidebar by hand, the
    # browser stores that choice and it wins over the app's: then the sidebar stays as the user left it.
    st.set_page_config(initial_sidebar_state="collapsed" if on else "auto")
    if on:
        st.html(PRESENTER_CSS)
        st.sidebar.caption("Sidebar still open? Close it with « at its top: this browser remembers your "
                           "own choice over the app's.")


# -- views shared by the pages and the tour -----------------------------------------------------
# Each draws one view of the current image where it is called. ``key`` prefixes its widgets' keys,
# so a page and the tour keep separate settings; ``controls=False`` fixes the settings instead of
# offering widgets (the tour). Presenter mode hides colour pickers and downloads.

def view_input(sel: Selection) -> None:
    """The photo and the picture the network reads (resized as its preprocessing says)."""
    model = sel.model
    left, right = st.columns(2)
    left.image(sel.image, caption=f"Your image ({sel.image_name}), {sel.image.width}×{sel.image.height} px",
               width="stretch")
    right.image(model.preprocessing.resized(sel.image),
                caption=f"What the model sees: {model.preprocessing.describe()}", width="stretch")


def view_predictions(sel: Selection, k: int) -> list[tuple[str, float]]:
    """The top-``k`` bar chart; returns the predictions shown."""
    from xviz.figures import topk_bar

    preds = predictions(sel.model.key, sel.image_key, k, sel.model, sel.image)
    st.plotly_chart(projected(topk_bar(preds)), width="stretch")
    return preds


def _flow_rows(sel: Selection):
    model, size = sel.model, sel.model.input_size
    cap = flow_capture(model.key, sel.image_key, size, model, sel.image)
    return cap, {r.name: r for r in layer_table(model.key, size, model)}


def view_layer_numbers(sel: Selection, layer: str) -> None:
    """What ``layer`` is, its shape, stride, sparsity and range, and where it sits in the size strip."""
    from xviz import flows

    model, size = sel.model, sel.model.input_size
    cap, rows = _flow_rows(sel)
    info = rows[layer]
    stats, _ = layer_summary(model.key, sel.image_key, size, layer, cap)
    st.caption(f"**{layer}** — {flows.KIND_TEXT[info.kind]}. "
               + ("Kept from the forward pass." if info.stored else
                  f"Computed from `{cap.plan[layer].source}` exactly as the network does (no rerun).")
               + " Maps are stored as float16 for display (about 3 significant digits).")
    m = st.columns(4)
    m[0].metric("Shape (H×W×C)", info.shape_text)
    m[1].metric("Stride from the input", f"{info.stride}× smaller")
    m[2].metric("Zeros after ReLU", f"{stats.zero_after_relu:.0%}",
                help="For a ReLU layer: the share of values that are exactly 0. For any other layer: the "
                     "share the next ReLU would set to 0 (values ≤ 0).")
    m[3].metric("Value range", f"{stats.vmin:.3g} … {stats.vmax:.3g}")
    view_size_strip(sel, layer)


def view_size_strip(sel: Selection, layer: str) -> None:
    """The input-to-exit strip of map sizes, ``layer``'s stage highlighted."""
    from xviz import flows
    from xviz.figures import maps as M

    size = sel.model.input_size
    table = layer_table(sel.model.key, size, sel.model)
    info = next(r for r in table if r.name == layer)
    highlight = ("middle flow ×8" if info.flow == "middle_flow" else
                 (layer.replace("_act", "") if info.block == "block1" else info.block))
    st.plotly_chart(projected(M.size_strip(flows.size_stages(table, size), highlight=highlight), text=13),
                    width="stretch", config={"displayModeBar": False})
    st.caption(f"Each square is a block's output, its side the map's size (square-root scale). `{layer}` is "
               f"{info.shape_text}: {info.height * info.width * info.channels:,} numbers for "
               f"{size * size * 3:,} in the input.")


def view_channel_grid(sel: Selection, layer: str, *, key: str = "fm", controls: bool = True,
                      sort: str = "index", count: int = 128, title: str | None = None):
    """The channels of ``layer`` as one grid image. Returns (channel order shown, colour scale).

    With ``controls`` the order, colour scale, colours and count are widgets (``{key}_sort``,
    ``{key}_norm``, ``{key}_cmap``, ``{key}_count``); without, ``sort`` and ``count`` are used.
    """
    from xviz import flows
    from xviz.figures import maps as M

    model, size = sel.model, sel.model.input_size
    cap, rows = _flow_rows(sel)
    info = rows[layer]
    _, orders = layer_summary(model.key, sel.image_key, size, layer, cap)
    st.subheader(f"The {info.channels:,} channels of {layer}" if title is None else title)
    normalise, cmap, count = "channel", colormap("maps"), min(count, info.channels)
    if controls:
        g = st.columns([2, 2, 1, 2])
        sort = g[0].selectbox("Order", list(flows.SORTS), format_func=flows.SORTS.get, key=f"{key}_sort")
        normalise = g[1].radio("Colour scale", list(M.NORMALISATIONS), horizontal=True, key=f"{key}_norm",
                               format_func=lambda k: {"channel": "per channel", "shared": "shared"}[k],
                               help=" · ".join(M.NORMALISATIONS.values()))
        if not presenter():
            cmap = g[2].selectbox("Colours", M.COLORMAPS, key=f"{key}_cmap")
        count = g[3].slider("Channels shown", 1, info.channels, min(info.channels, 128), key=f"{key}_count")
    # small maps (9×9) are enlarged by whole pixels here, crisply: left to the browser they'd be
    # stretched to the caption's width and blurred
    grid, layout = channel_grid(model.key, sel.image_key, size, layer, sort, normalise, cmap, count, cap,
                                orders[sort], min_tile=64)
    st.image(grid, width=_grid_width(layout),
             caption=f"{count} of {info.channels} channels, {flows.SORTS[sort]}, read left to right; "
                     f"{M.NORMALISATIONS[normalise]}"
                     + (f". Tiles are shrunk to {layout.tile} px (each pixel the mean of a box)."
                        if layout.downsampled else "."))
    if controls and not presenter():
        st.download_button("Download the grid (PNG)", grid, f"{layer}_grid.png", "image/png", key=f"{key}_grid_png")
    return orders[sort], cmap


def _grid_width(layout) -> int:
    """Pixel width of a channel-grid image: show it at that size, not the caption's."""
    return layout.cols * (layout.tile + layout.gap) - layout.gap


def view_residual(sel: Selection, block: str, *, key: str = "fm", channel: int = 0, controls: bool = True) -> None:
    """Branch + shortcut = sum for one channel of residual block ``block``, checked on the stored maps."""
    from xviz import flows
    from xviz.figures import maps as M

    cap, _ = _flow_rows(sel)
    rv = flows.residual_view(cap, block)
    st.subheader(f"The residual connection of {block}")
    st.markdown(
        "The block's branch computes a *correction*; the shortcut carries "
        + ("**the block's input, unchanged** (identity)" if rv.identity else
           "**the input through a 1×1 convolution with stride 2 and BN** (to match the new size)")
        + f", and `{rv.total_name}` is their sum. Channel by channel: sum = branch + shortcut.")
    rc = min(channel, rv.total.shape[0] - 1)
    if controls:
        rc = st.number_input("Channel", 0, rv.total.shape[0] - 1, rc, key=f"{key}_res_channel")
    shortcut = "+ shortcut (the input itself)" if rv.identity else f"+ shortcut (1×1 conv of {rv.input_name})"
    parts = [("branch", rv.branch_name, rv.branch), (shortcut, rv.shortcut_name, rv.shortcut),
             ("= sum", rv.total_name, rv.total)]
    st.image(M.tiles([a[rc] for _, _, a in parts], side=200), width=200, output_format="PNG",
             caption=[f"{role}: {name}, ch {rc}" for role, name, _ in parts])
    st.caption("Blue negative, red positive, one shared scale. Check on the stored maps: "
               f"max |branch + shortcut − sum| = {rv.max_error:.2g} for values up to {rv.scale:.3g} — "
               + ("equal within float16 rounding ✓" if rv.tolerance_ok else "LARGER than float16 rounding allows ✗"))


def view_separable(sel: Selection, name: str, *, key: str = "sep", controls: bool = True, bn: bool = True,
                   heading=None) -> None:
    """Separable conv ``name`` opened up on the current image: depthwise, pointwise (its sum checked)
    and, with ``bn``, batch normalisation and ReLU. ``heading`` draws the section titles (st.header).

    Without ``controls``: 12 input channels (8 in presenter mode), channel 0 checked, the output
    channel with the highest mean taken apart into its 6 largest contributions.
    """
    import numpy as np

    from xviz import flows
    from xviz.figures import maps as M

    heading = heading or st.header
    model, size = sel.model, sel.model.input_size
    cap = flow_capture(model.key, sel.image_key, size, model, sel.image)
    cmap, show_downloads = colormap("maps"), controls and not presenter()
    anat = flows.separable_anatomy(model, cap, name)
    cin, cout, (h, w) = anat.in_channels, anat.out_channels, anat.pointwise.shape[1:]
    st.caption(f"Reads `{anat.info.input}` ({h}×{w}×{cin}) and writes {h}×{w}×{cout}. Maps are stored as "
               "float16 for display; the checks below allow for that rounding.")

    heading("1 · Depthwise: one 3×3 filter per input channel")
    st.latex(r"D_c = K_c \ast X_c \qquad c = 1,\dots," + str(cin))
    n = min(cin, 8 if presenter() else 12)
    if controls:
        n = st.slider("Input channels shown", 1, min(cin, 64), n, key=f"{key}_n")
    cols = st.columns([2, 1, 2])
    grid_in, _ = M.channel_grid(anat.inputs[:n], cmap=cmap, max_width=400, min_tile=56)
    grid_k, _ = M.channel_grid(anat.kernels[:n], normalise="shared", cmap="RdBu_r", max_width=200,
                               vrange=M.symmetric_range(anat.kernels[:n]), min_tile=30, gap_colour=200)
    grid_dw, _ = M.channel_grid(anat.depthwise[:n], cmap=cmap, max_width=400, min_tile=56)
    grid_in, grid_k, grid_dw = M.png_bytes(grid_in), M.png_bytes(grid_k), M.png_bytes(grid_dw)
    cols[0].image(grid_in, caption=f"input channels 0–{n - 1} ({anat.info.input})")
    cols[1].image(grid_k, caption="their 3×3 kernels (blue −, red +)")
    cols[2].image(grid_dw, caption=f"depthwise maps 0–{n - 1}: same order, same count")
    c = st.number_input("Check one channel", 0, cin - 1, 0, key=f"{key}_dw_channel") if controls else 0
    err = flows.depthwise_check(anat, c)
    st.caption(f"Depthwise map {c} recomputed from input channel {c} and kernel {c} **alone**: max difference "
               f"{err:.2g} (values up to {np.abs(anat.depthwise[c]).max():.3g}). {cin} input channels give "
               f"exactly {anat.depthwise.shape[0]} depthwise maps, using {cin * 9:,} weights.")
    if show_downloads:
        for col, (img, label) in zip(st.columns(3), [(grid_in, "inputs"), (grid_k, "kernels"),
                                                     (grid_dw, "depthwise")]):
            col.download_button(f"Download {label} (PNG)", img, f"{name}_{label}.png", "image/png",
                                key=f"{key}_{label}_png")

    heading("2 · Pointwise: every output mixes all depthwise maps")
    st.latex(r"Y_o = \sum_{c=1}^{" + str(cin) + r"} W_{o,c}\, D_c \qquad o = 1,\dots," + str(cout))
    order = flows.channel_order(anat.pointwise, "mean")
    shown = min(cout, 128 if controls else 64)
    grid_pw, layout_pw = M.channel_grid(anat.pointwise, order[:shown], cmap=cmap, min_tile=64)
    grid_pw = M.png_bytes(grid_pw)
    st.image(grid_pw, width=_grid_width(layout_pw), caption=f"{shown} of the {cout} pointwise outputs, highest mean first ({cin * cout:,} weights)")
    if show_downloads:
        st.download_button("Download pointwise maps (PNG)", grid_pw, f"{name}_pointwise.png", "image/png",
                           key=f"{key}_pointwise_png")

    o, k = int(order[0]), min(cin, 6)
    if controls:
        o = st.selectbox("Output channel to take apart", [int(i) for i in order], key=f"{key}_out",
                         help="Listed by mean activation, highest first.")
        k = st.slider("Largest contributions shown", 1, min(cin, 12), k, key=f"{key}_k")
    con = flows.pointwise_contributions(anat, o, k)
    labels = [f"ch {c} × {wt:+.3f} ({sh:.1%})" for c, wt, sh in zip(con.top, con.top_weights, con.share[:k])]
    st.image(M.tiles(list(con.top_maps), side=112), caption=labels, width=112, output_format="PNG")
    st.image(M.tiles([con.rest, con.reconstruction, con.output], side=112),
             caption=[f"+ the other {cin - k} ({1 - con.share[:k].sum():.0%})", "= sum of all", f"network's Y_{o}"],
             width=112, output_format="PNG")
    lo_top, hi_top = M.symmetric_range(*con.top_maps)
    st.caption(f"Row 1: the {k} largest terms W[o,c]·D_c of output channel {o}, {con.share[:k].sum():.0%} of the "
               f"total |contribution| (colour scale ±{hi_top:.2g}). Row 2: everything else, the sum of all {cin} "
               "terms and the network's output, on one shared scale. Blue negative, red positive. "
               + ("No single channel dominates: the output really is a mix of many." if con.share[0] < 0.1 else ""))
    verdict = (f"Sum of all {cin} contributions vs the network's own output channel {o}: max difference "
               f"**{con.max_error:.2g}** for values up to {con.scale:.3g} ({con.relative_error:.2%}).")
    if con.tolerance_ok:
        st.success(verdict + " Equal within float16 storage rounding ✓")
    else:
        st.error(verdict + " Larger than float16 rounding allows ✗")
    if not bn:
        return

    heading("3 · Batch normalisation, then ReLU")
    p = anat.bn
    st.latex(r"\mathrm{BN}(Y_o) = \gamma_o\,\frac{Y_o-\mu_o}{\sqrt{\sigma_o^2+\varepsilon}}+\beta_o"
             rf" = {p.gamma[o]:.3f}\cdot\frac{{Y_{{{o}}} - ({p.mean[o]:.3f})}}{{\sqrt{{{p.var[o]:.4f} + {p.eps:g}}}}}"
             rf" + ({p.beta[o]:.3f})")
    relu_next = [e.name for e in cap.plan.values() if e.source == anat.info.bn and e.derive == "relu"]
    st.markdown("BN shifts and scales the *whole sum*, one number pair per output channel, learnt in training "
                "(μ and σ² are the training data's statistics). There is **no** non-linearity between "
                "depthwise and pointwise: the paper found that works better. "
                + (f"Next, `{relu_next[0]}` sets the negative values to zero." if relu_next else
                   f"Next comes the block's end (`{anat.info.block}_add`, after max-pooling if the block "
                   "downsamples): the residual sum, before the next block's ReLU."))
    maps_bn = [con.reconstruction, con.bn_output] + ([np.maximum(con.bn_output, 0)] if relu_next else [])
    st.image([M.tiles([m], side=160)[0] for m in maps_bn], width=160, output_format="PNG",
             caption=[f"{t}: {m.min():.3g} … {m.max():.3g}" for t, m in
                      zip([f"Y_{o}", f"BN(Y_{o})", f"ReLU(BN(Y_{o}))"], maps_bn)])
    st.caption("Each tile on its own scale, zero white: BN moves zero and stretches the range; ReLU then "
               "keeps only the positive part.")


# -- the guided tour (pages/tour.py) ----------------------------------------------------------------

TOUR_REVEALED = "tour_revealed"  # slugs of the tour steps whose answer was revealed


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

class _ResultStore:
    """A thread-safe LRU shared by every session; stored arrays are made read-only."""

    def __init__(self, max_entries: int):
        import threading
        from collections import OrderedDict

        self._data, self._lock, self._max = OrderedDict(), threading.Lock(), max_entries

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)
        return value


@st.cache_resource(show_spinner=False)
def _attribution_store() -> _ResultStore:
    return _ResultStore(max_entries=96)  # ~35 MB of 299 px float32 maps at most


def _stored(key: tuple, compute, what: str):
    """The stored result for ``key``, or ``compute(progress)`` with a progress bar while it runs."""
    store = _attribution_store()
    hit = store.get(key)
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
    return store.put(key, value)


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


def view_attribution(sel: Selection, target: int, *, method: str = "gradcam", layer: str | None = None,
                     compare=(), options: dict | None = None, key: str = "gc", controls: bool = True) -> None:
    """The map of ``method`` for class ``target`` over the picture the model saw (side by side with the
    methods in ``compare``), and how to read it.

    With ``controls``: view, opacity and colours are widgets (``{key}_view``, ``{key}_alpha``,
    ``{key}_cmap``) and the picture can be downloaded; without, an overlay at opacity 0.5.
    """
    import dataclasses

    from xviz import attributions as A
    from xviz.figures import attribution as F

    model, size = sel.model, sel.model.input_size
    layer, options = layer or A.DEFAULT_LAYER, options or {}
    spec = A.METHODS[method]
    view, alpha, cmap = "Overlay", 0.5, colormap("heat")
    if controls:
        c0, c1, c2 = st.columns([2, 3, 2])
        view = c0.radio("View", ["Overlay", "Heatmap only"], horizontal=True, key=f"{key}_view")
        alpha = c1.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_alpha", disabled=view != "Overlay")
        if not presenter():
            cmap = c2.selectbox("Colours", F.COLORMAPS, key=f"{key}_cmap")
    shapes = {r.name: r for r in layer_table(model.key, size, model)}
    # the picture the model saw, cropped the same way but drawn at a readable size (not upscaled pixels)
    shown_size = max(size, 448)
    seen = dataclasses.replace(model.preprocessing, size=shown_size, resize="bilinear").resized(sel.image)

    def picture(name):
        opts = tuple(sorted(options.items())) if name == method else ()
        heat = attribution_map(sel, name, layer, target, opts)
        m = A.METHODS[name]
        look = dict(cmap=cmap, signed=m.signed, percentile=100.0 if m.uses_layer else 99.5)
        # pixel-level maps are sparse: let their near-zero pixels show the photo (fade)
        return (F.overlay(seen, heat, alpha=alpha, fade=m.signed or not m.uses_layer, **look) if view == "Overlay"
                else F.heatmap_image(heat, size=shown_size, **look))

    label = model.labels[target]
    chosen = [method, *compare]
    shown = [(A.METHODS[n].title, picture(n)) for n in chosen]
    image = F.side_by_side([p for _, p in shown], [t for t, _ in shown], font_size=24) if compare else shown[0][1]
    caption = (f"{' · '.join(t for t, _ in shown)} for **{label}**"
               + (f" at {layer}" if any(A.METHODS[n].uses_layer for n in chosen) else "")
               + (". Red: evidence for the class, blue: against." if any(A.METHODS[n].signed for n in chosen)
                  else "."))
    pic, note = (st.container(), st.container()) if compare else st.columns([3, 2])
    pic.image(image, width="stretch", caption=caption)
    if spec.uses_layer and layer in shapes:
        note.markdown(f"**How to read it.** Warm colours: places that raised the score of **{label}**; cold: "
                      f"little or nothing. {spec.title} is computed on the {shapes[layer].height}×"
                      f"{shapes[layer].width} grid of `{layer}` and stretched over the photo: that is why it "
                      "is smooth." + (" Slide to an earlier layer for a sharper, less class-specific map."
                                      if controls else ""))
    else:
        note.markdown(f"**How to read it.** {spec.summary} The map has one value per input pixel "
                      f"({size}×{size}); the colours are scaled to its 99.5th percentile so a few extreme "
                      "pixels don't wash out the rest.")
    if controls and not presenter():
        settings = {"method": "+".join(chosen), "layer": layer, "class": label, "view": view.split()[0],
                    "alpha": alpha, "cmap": cmap, "size": size, "image": sel.image_key[:8]}
        note.download_button("Download this picture (PNG)", F.png_bytes(image, settings), F.png_filename(settings),
                             "image/png", key=f"{key}_png")


SLOW_CASCADE = ("head", "block14", "block13", "block12", "block8", "block4", "block1")  # 7 maps, not 15


def pick_attribution_target(sel: Selection, where=st, *, key: str = "gc") -> int:
    """The class to explain: one of the top guesses, or any label by search. Returns its index."""
    model = sel.model
    top = top_classes(model.key, sel.image_key, min(5, len(model.labels)), model, sel.image)
    if where.toggle("Any class (search by name)", key=f"{key}_any",
                    help="Off: the model's top guesses. On: every class it knows; type to search."):
        return where.selectbox("Class to explain", range(len(model.labels)), format_func=model.labels.__getitem__,
                               index=top[0][0], key=f"{key}_label")
    probs = {index: p for index, _, p in top}
    return where.selectbox("Class to explain", list(probs), key=f"{key}_top",
                           format_func=lambda i: f"{model.labels[i]} ({probs[i]:.0%})")


def attribution_options(method: str, size: int, *, key: str = "gc") -> dict:
    """Widgets for the settings of a slow method (steps, noisy copies, window); {} for fast ones."""
    from xviz import attributions as A

    if not A.METHODS[method].slow:
        return {}
    options = {}
    with st.expander("Settings of this slow method", expanded=False):
        if method == "integrated_gradients":
            options["steps"] = st.slider("Steps from grey to the image", 4, 64, A.DEFAULT_IG_STEPS, key=f"{key}_steps")
            options["smooth_samples"] = st.slider("SmoothGrad noisy copies (0: off)", 0, 8, 0, key=f"{key}_ig_smooth")
        elif method == "occlusion":
            window, _ = A.occlusion_window(size)
            options["window"] = st.slider("Grey square (px)", 4, size // 2, window, key=f"{key}_window")
        elif method == "smoothgrad":
            options["samples"] = st.slider("Noisy copies", 2, 32, 16, key=f"{key}_samples")
    return options


def view_attribution_trust(sel: Selection, method: str, layer: str, target: int, options: tuple = ()) -> None:
    """Deletion curve and model-randomisation check of one map, each with a one-line reading."""
    from xviz import attributions as A
    from xviz.figures import attribution as F

    spec = A.METHODS[method]
    left, right = st.columns(2)
    curve = attribution_deletion(sel, method, layer, target, options)
    left.plotly_chart(F.deletion_figure(curve, title="Deletion: most relevant patches first"), width="stretch")
    if curve.faithful:
        left.success(f"**Reading:** the probability falls faster when the map's top patches go first (area "
                     f"{curve.area_relevant:.2f} vs {curve.area_random:.2f} for random order): the map points "
                     "at evidence the model really uses.")
    else:
        left.warning(f"**Reading:** on this image, greying out the map's top patches first lowers the "
                     f"probability no faster than random patches (area {curve.area_relevant:.2f} vs "
                     f"{curve.area_random:.2f}): here the map is not a reliable guide to the evidence.")
    check = attribution_randomisation(sel, method, layer, target, options, SLOW_CASCADE if spec.slow else None)
    right.plotly_chart(F.randomisation_figure(check, title="Randomisation: weights scrambled from the top"),
                       width="stretch")
    last = check.spearman[-1]
    if last != last or abs(last) < 0.5:
        right.success("**Reading:** with random weights the map " + ("goes blank" if last != last else
                      f"no longer resembles the original (ρ = {last:.2f})") + ": it depends on what the network "
                      "learned, as an explanation should.")
    else:
        right.warning(f"**Reading:** the map still resembles the original with random weights (ρ = {last:.2f}): "
                      "it shows the image's structure more than the model's reasoning.")
    picks = [i for i, s in enumerate(check.stages) if s in ("head", "block13", "block8", "block4", "block1")]
    look = dict(cmap=colormap("heat"), signed=spec.signed, percentile=100.0 if spec.uses_layer else 99.5)
    strip = [F.heatmap_image(check.original, **look)] + [F.heatmap_image(check.maps[i], **look) for i in picks]
    titles = ["trained"] + [f"random to {check.stages[i]}" for i in picks]
    st.image(F.side_by_side(strip, titles, font_size=12), width="stretch",
             caption="The same map as more and more of the network is scrambled, from the head down (each "
                     "on its own colour scale; an all-dark tile is a blank map: nothing left to rank).")
