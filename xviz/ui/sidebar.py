"""The shared sidebar: presenter switch, image (example, upload, camera), model and input size, and the
status line that always says which weights run where."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import streamlit as st

import xviz
from xviz import inference
from xviz import weights as W
from xviz.device import FAST_ENV
from xviz.images import check_size
from xviz.ui import cache, state, uploads
from xviz.ui.presenter import presenter_sidebar
from xviz.ui.state import (EXAMPLE, FAST_MODE, IMAGE_BYTES, IMAGE_ERROR, IMAGE_KEY, IMAGE_NAME, IMAGE_SOURCE,
                           INPUT_SIZE, LABELS_UPLOAD, MODEL_ERROR, MODEL_SOURCE, WEIGHTS_UPLOAD)

# package data (like the label files), so an installed xviz has the photos too, not only a checkout
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"

MODEL_CHOICES = {
    "auto": "Best available",
    "imagenet": "ImageNet (1000 classes)",
    "kitchenware": "Kitchenware demo (6 classes)",
    "untrained": "Untrained (random weights)",
    "upload": "Your own weights file…",
}
INPUT_SIZES = (0, 150, 224, 299, 384)  # 0 = native; every size >= 71 works, these cover the usual ones
REPLICA_ENV = "XVIZ_REPLICA"  # this app replica's name (deploy/: app1, app2, or the pod's name)
SESSION_LOST = ("This tab lost its session: the server that held it stopped or restarted, and another one "
                "took over. Your photo and settings were not kept here: upload your photo again (or pick an example).")


# -- the image --------------------------------------------------------------------------------

def example_images() -> dict[str, Path]:
    """Bundled photos (xviz/data/examples) plus the kitchenware package's photos when installed."""
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
        check_size(len(data))  # before hashing: a client that skips the browser can send 128 MB
        key = cache.sha256(data)
        cache.decode_image(key, data)
    except xviz.ImageError as exc:
        st.session_state[IMAGE_ERROR] = f"{name}: {exc}"
        return False
    st.session_state[IMAGE_BYTES] = data
    st.session_state[IMAGE_KEY] = key
    st.session_state[IMAGE_NAME] = name
    st.session_state.pop(IMAGE_ERROR, None)
    return True


def came_back_without_session(headers, session: str | None) -> bool:
    """Is this a new session of a tab that had one elsewhere (another replica, or before a restart)?

    A reconnecting browser names its previous session in the third entry of the websocket's
    Sec-WebSocket-Protocol header; a server that does not hold it starts a fresh session, so whatever
    the student had uploaded is gone.
    """
    entries = [e.strip() for e in (headers.get("Sec-Websocket-Protocol") or "").split(",")]
    return len(entries) >= 3 and bool(entries[2]) and entries[2] != session


def _take_photo(uploader: str) -> None:
    """``on_change`` of the photo uploader and the camera: use the new picture, or refuse it and let
    go of it at once (the previous image stays in use)."""
    file = uploads.current(uploader)
    if file is None:  # the student removed it: the image in use stays
        return
    name = "camera photo" if uploader == uploads.CAMERA else f"upload: {state.safe_display(file.name)}"
    if not _set_image(file.getvalue(), name):
        uploads.release(uploader, file)
    else:
        st.session_state.pop(state.SESSION_LOST, None)


def _image_sidebar():
    st.sidebar.subheader("Image")
    if st.session_state.get(state.SESSION_LOST):
        st.sidebar.warning(SESSION_LOST)
    source = st.sidebar.radio("Source", ["Example", "Upload", "Camera"], horizontal=True,
                              key=IMAGE_SOURCE, label_visibility="collapsed")
    if source == "Example":
        examples = example_images()
        choice = st.sidebar.selectbox("Example photo", list(examples), key=EXAMPLE)
        if choice and st.session_state.get(IMAGE_NAME) != f"example: {choice}":
            _set_image(examples[choice].read_bytes(), f"example: {choice}")
    elif source == "Upload":
        # the browser refuses a bigger file before sending it, but says so only in a tooltip: hence the caption
        st.sidebar.file_uploader("Your photo", key=uploads.key(uploads.PHOTO), max_upload_size=uploads.PHOTO_MAX_MB,
                                 on_change=_take_photo, args=(uploads.PHOTO,),
                                 help="JPEG, PNG, WebP, GIF, BMP or TIFF.")
        st.sidebar.caption(uploads.PHOTO_LIMIT_NOTE)
    else:
        blocked = camera_blocked(st.context.url)
        if blocked:
            st.sidebar.warning(blocked)
        else:
            st.sidebar.caption("The camera works when the app is opened on localhost or over HTTPS; "
                               "on plain http from another machine the browser blocks it.")
        st.sidebar.camera_input("Take a photo", key=uploads.key(uploads.CAMERA), on_change=_take_photo,
                                args=(uploads.CAMERA,))
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
    choices = dict(MODEL_CHOICES)
    taught = st.session_state.get(state.TAUGHT)
    if taught is not None:  # taught on the "Teach it new classes" page, in this session only
        choices["taught"] = "Taught: " + " / ".join(taught.labels)
    if st.session_state.get(MODEL_SOURCE) not in choices:
        st.session_state[MODEL_SOURCE] = "auto"
    st.sidebar.selectbox("Weights", list(choices), format_func=choices.get, key=MODEL_SOURCE)
    if st.session_state.get(MODEL_SOURCE) == "upload":
        w = st.sidebar.file_uploader("Weights file", type=[s.lstrip(".") for s in W.WEIGHT_SUFFIXES],
                                     key=uploads.key(uploads.WEIGHTS), max_upload_size=uploads.WEIGHTS_MAX_MB,
                                     help="An Xception state dict (.pth/.pt/.safetensors; xviz or timm "
                                          "layout) or a Keras .h5/.keras file. Loaded without "
                                          "executing anything in it.")
        st.sidebar.caption(uploads.WEIGHTS_LIMIT_NOTE)
        lab = st.sidebar.file_uploader("Labels (optional)", type=["txt", "json"], key=uploads.LABELS,
                                       max_upload_size=uploads.LABELS_MAX_MB,
                                       help="One class name per line, or a JSON list.")
        st.session_state[WEIGHTS_UPLOAD] = (w.name, w.getvalue()) if w is not None else None
        st.session_state[LABELS_UPLOAD] = (lab.name, lab.getvalue()) if lab is not None else None
    st.sidebar.select_slider("Input size", INPUT_SIZES, key=INPUT_SIZE,
                             format_func=lambda s: "native" if s == 0 else f"{s} px",
                             help="Xception accepts any size from 71 px; 'native' is the size the "
                                  "weights were trained at. Spatial maps grow with the input.")


def _fast_switch(model: xviz.LoadedModel) -> None:
    """The fast-mode switch; ``state.resolve_model`` has already applied its value to ``model``."""
    precision = model.fast_precision
    if precision is None:
        help_ = (f"Needs a CPU with native bf16 (AVX512-BF16 or AMX) or a CUDA GPU; {model.device_name} has "
                 "neither, so predictions stay fp32.")
    else:
        help_ = (f"Predictions in {precision} instead of fp32: about twice as fast. Probabilities move by about "
                 "1%, and the top class can change where two are close. Feature maps and attributions stay fp32.")
    st.sidebar.toggle(f"Fast predictions ({precision or 'not available here'})", key=FAST_MODE,
                      disabled=precision is None, help=help_)


def sidebar() -> None:
    """Build the shared sidebar. Call after ``st.navigation`` and before ``page.run()``."""
    st.session_state.setdefault(MODEL_SOURCE, "auto")
    st.session_state.setdefault(INPUT_SIZE, 0)
    st.session_state.setdefault(FAST_MODE, os.environ.get(FAST_ENV) == "1")
    if state.SESSION_LOST not in st.session_state:  # once, on the session's first run
        st.session_state[state.SESSION_LOST] = came_back_without_session(st.context.headers, cache.session_id())
    presenter_sidebar()
    _image_sidebar()
    _model_sidebar()
    model = state.resolve_model()
    if model is not None:
        _fast_switch(model)
    st.session_state[state.RUN_MODEL] = model
    st.sidebar.divider()
    if model is None:
        st.sidebar.error(st.session_state.get(MODEL_ERROR) or "Upload a weights file to use your own model.")
    else:
        if st.session_state.get(MODEL_ERROR):  # an upload was refused; state.load_selected_model kept this one
            st.sidebar.error(f"{st.session_state[MODEL_ERROR]} The previous model is still in use.")
        status(model, st.sidebar)


def status(model: xviz.LoadedModel, where=st) -> None:
    """Weights and where they came from, device, input size and preprocessing, where inference runs
    (this process or an inference service, and why not the service when it fails) — always visible;
    and fast mode whenever it is on."""
    if not model.trained:
        where.error("**Untrained network** — random weights. Nothing it shows means anything.")
    where.markdown(f"**Weights:** {model.source}")
    where.caption(f"**Device:** {model.device_name} · **Input:** {model.input_size}×{model.input_size} px · "
                  f"**Preprocessing:** {model.preprocessing.describe()}")
    runner = inference.backend()
    where.caption(f"**Inference:** {runner.location(model)}")
    problem = runner.problem()
    if problem:
        where.warning(problem)
    if os.environ.get(REPLICA_ENV):  # behind a load balancer: which app replica holds this session
        where.caption(f"**App replica:** {os.environ[REPLICA_ENV]}")
    if model.fast:
        where.warning(f"**Fast mode on:** predictions are computed in {model.precision}, not fp32; probabilities "
                      "can differ by about 1%. Feature maps and attributions stay fp32.")
    if model.notes:
        with where.expander("How this model was chosen"):
            for note in model.notes:
                st.markdown(note)


