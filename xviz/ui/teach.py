"""Teaching new classes in the app: the samples (in this session's memory only, never on disk or in
a log), their embeddings (through the inference queue, once per model and sample), the taught model
the sidebar offers as "Taught: …", and the page's views. The numbers come from :mod:`xviz.teaching`.
"""

from __future__ import annotations

import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

import xviz
from xviz import inference
from xviz import teaching as T
from xviz.ui import state, uploads
from xviz.ui.sidebar import example_images
from xviz.ui.presenter import projected

CLASSES = "teach_classes"  # {class name: [teaching.Sample]}, in class order
EMBEDDINGS = "teach_embeddings"  # {(model key, sample key): (2048,) tensor} for the base in use
TAUGHT = state.TAUGHT  # the LoadedModel taught in this session (the sidebar's "taught" choice)
TAUGHT_BASE = "taught_base"  # the model it was taught on
NOTICES = "teach_notices"  # refusals of the last additions, shown once
RESULT = "teach_result"  # (taught model, its evaluation), shown until the next training
NEW_NAME = "teach_name"  # the new-class text box
ERROR = "teach_error"  # why the last new class was refused, shown once
EXAMPLES = "teach_examples"  # the example photos picked to add
CAMERA, UPLOAD = "teach_camera", "teach_upload"  # uploader names (xviz.ui.uploads keys them)


def samples() -> dict[str, list[T.Sample]]:
    return st.session_state.setdefault(CLASSES, {})


def taught_label(model: xviz.LoadedModel) -> str:
    """The sidebar's name of a taught model."""
    return "Taught: " + " / ".join(model.labels)


def base_model(model: xviz.LoadedModel) -> xviz.LoadedModel:
    """The model whose backbone samples are embedded with: the sidebar's, or the one the taught
    model was taught on when the sidebar uses the taught model (at the sidebar's input size)."""
    if model.kind != "taught" or TAUGHT_BASE not in st.session_state:
        return model
    base = st.session_state[TAUGHT_BASE]
    return base.with_input_size(model.input_size) if base.input_size != model.input_size else base


def add_class(name: str) -> None:
    classes = samples()
    if len(classes) >= T.MAX_CLASSES:
        raise xviz.TeachError(f"At most {T.MAX_CLASSES} classes can be taught at once. Remove one first.")
    classes[T.check_name(name, list(classes))] = []


def add_class_from_input() -> None:
    """The "Add class" button's callback: the text box's name becomes a class, and the box empties."""
    try:
        add_class(st.session_state.get(NEW_NAME, ""))
    except xviz.TeachError as exc:
        st.session_state[ERROR] = str(exc)
    st.session_state[NEW_NAME] = ""


def remove_class(name: str) -> None:
    samples().pop(name, None)


def remove_sample(name: str, key: str) -> None:
    samples()[name] = [s for s in samples().get(name, []) if s.key != key]


def add_images(name: str, files: list[tuple[str, bytes]]) -> None:
    """Decode (``xviz.load_image``, like any upload) and keep each file as a sample of ``name``;
    what can't be kept is said in the page's notices."""
    notices = st.session_state.setdefault(NOTICES, [])
    kept = samples()[name]
    for shown_name, data in files:
        if T.room_left(len(kept)) == 0:
            notices.append(f"'{name}' already has {T.MAX_SAMPLES_PER_CLASS} samples, the most a class can "
                           f"hold: {shown_name} and any after it were not added. Remove some to add others.")
            break
        try:
            sample = T.make_sample(xviz.load_image(data))
        except xviz.ImageError as exc:
            notices.append(f"{shown_name}: {exc}")
            continue
        if any(s.key == sample.key for s in kept):  # the same file again, or a shot of the very same frame
            notices.append(f"{shown_name} is already a sample of '{name}': it was not added twice.")
            continue
        kept.append(sample)


def take(name: str, uploader: str, files: list) -> None:
    """Keep the camera's shot or the uploaded files as samples of ``name``, then drop them from the
    server's upload store and show the widget empty (a 12 MP photo is kept as a ~40 KB sample, not
    as its 4 MB upload, and the camera is ready for the next click)."""
    # a shot's file name is a timestamp the student never saw
    add_images(name, [("This camera shot" if uploader == CAMERA else state.safe_display(f.name), f.getvalue())
                      for f in files])
    for f in files:
        uploads.release(uploader, f)


def take_examples(name: str) -> None:
    """The "Add these photos" button's callback: the picked example photos become samples."""
    photos = example_images()
    add_images(name, [(c, photos[c].read_bytes()) for c in st.session_state.get(EXAMPLES, []) if c in photos])
    st.session_state[EXAMPLES] = []


def embeddings(base: xviz.LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): every sample's embedding by ``base`` and its class index, computed once per
    (model, sample) through the shared inference queue (micro-batched with other sessions')."""
    store = st.session_state.setdefault(EMBEDDINGS, {})
    classes = samples()
    wanted = [(k, s) for k, name in enumerate(classes) for s in classes[name]]
    missing = [s for _, s in wanted if (base.key, s.key) not in store]
    if missing:
        queue = inference.backend()
        session = st.session_state.get("_teach_session") or st.session_state.setdefault("_teach_session", object())
        tickets = [queue.submit(base, "embedding", base.preprocess(s.image()), session=session) for s in missing]
        bar = st.progress(0.0, text="Embedding the samples…")
        try:
            while not all(t.done() for t in tickets):
                done = sum(t.done() for t in tickets)
                ahead = max((t.place().ahead for t in tickets if not t.done()), default=0)
                wait = f" · {ahead} requests ahead of yours" if ahead else ""
                bar.progress(done / len(tickets), text=f"Embedding sample {done + 1} of {len(tickets)}{wait}")
                time.sleep(0.1)
            for s, t in zip(missing, tickets):
                store[(base.key, s.key)] = t.result()[0]
        finally:
            for t in tickets:
                t.cancel()
            bar.empty()
    # keep only what this base needs: a student switching models does not pile up copies
    keep = {(base.key, s.key) for _, s in wanted}
    for key in [key for key in store if key not in keep]:
        del store[key]
    x = torch.stack([store[(base.key, s.key)] for _, s in wanted]) if wanted else torch.empty(0, 2048)
    return x, torch.tensor([k for k, _ in wanted], dtype=torch.long)


def teach(base: xviz.LoadedModel) -> tuple[xviz.LoadedModel, T.Evaluation]:
    """Train the head on this session's samples and offer the result in the sidebar."""
    T.check_counts({name: len(v) for name, v in samples().items()})
    x, y = embeddings(base)
    labels = list(samples())
    ev = T.evaluate(x, y, labels)
    model = T.train(base, labels, x, y, evaluation=ev)
    st.session_state[TAUGHT] = model
    st.session_state[TAUGHT_BASE] = base
    return model, ev


# -- views -----------------------------------------------------------------------------------------

def view_class(name: str, *, columns: int = 8) -> None:
    """One class: its thumbnails, each with a remove button, and a remove-class button."""
    kept = samples()[name]
    head, remove = st.columns([5, 1])
    head.markdown(f"**{name}** — {len(kept)} of at most {T.MAX_SAMPLES_PER_CLASS} samples")
    remove.button("Remove class", key=f"teach_drop_{name}", on_click=remove_class, args=(name,))
    if not kept:
        st.caption("No samples yet: add some with the camera, uploads or the example photos above.")
        return
    cols = st.columns(columns)
    for i, s in enumerate(kept):
        with cols[i % columns]:
            st.image(s.thumb, width=80)
            st.button("✕", key=f"teach_rm_{name}_{s.key[:12]}", help="Remove this sample",
                      on_click=remove_sample, args=(name, s.key))


def confusion_figure(matrix: np.ndarray, labels: list[str], title: str) -> go.Figure:
    """Rows: the true class; columns: what the held-out prediction said."""
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", showscale=False,
                               text=matrix, texttemplate="%{text}", hovertemplate="true %{y}, said %{x}: %{z}"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      height=120 + 40 * len(labels), margin=dict(l=10, r=10, t=40, b=10))
    return projected(fig)


def view_evaluation(ev: T.Evaluation) -> None:
    n = len(ev.targets)
    st.markdown(f"**Held-out accuracy ({ev.method}, {n} samples):** the new head **{ev.accuracy:.0%}**, "
                f"the nearest class mean **{ev.baseline_accuracy:.0%}**, chance {ev.chance:.0%}. "
                "Each sample was predicted by a head trained without it"
                + (" (without its fold)" if ev.method != "leave-one-out" else "") + ".")
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(ev.confusion, ev.labels, "New head (softmax)"), key="teach_cm")
    right.plotly_chart(confusion_figure(ev.baseline_confusion, ev.labels, "Nearest class mean"), key="teach_cm_ncm")
    for note in T.warnings_for(dict(zip(ev.labels, np.bincount(ev.targets, minlength=len(ev.labels)).tolist())), ev):
        st.warning(note)


def view_export(model: xviz.LoadedModel) -> None:
    stem = T.file_stem(model.labels)
    st.markdown("**Take it with you.** The weights file holds the whole network (the backbone and your head, "
                "about 88 MB) with the class names and the preprocessing inside, so the sidebar's "
                "*Your own weights file…* or `xviz.load_model(path)` gives the same predictions. "
                "Nothing leaves this page unless you download it.")
    a, b, c = st.columns(3)
    # a callable: the 88 MB are built only when the button is clicked, not on every rerun
    a.download_button("Weights (.safetensors)", lambda: T.export_weights(model), f"{stem}.safetensors",
                      "application/octet-stream", key="teach_dl_weights", on_click="ignore")
    b.download_button("Labels (.txt)", T.export_labels(model), f"{stem}.labels.txt", "text/plain",
                      key="teach_dl_labels", on_click="ignore")
    c.download_button("How it was taught (.json)", T.export_record(model), f"{stem}.json", "application/json",
                      key="teach_dl_json", on_click="ignore")


def view_cam_identity(sel: state.Selection, target: int) -> None:
    """On the Grad-CAM page, for a taught model: Grad-CAM at the last layer is CAM, checked on this photo."""
    from xviz.attributions import DEFAULT_LAYER
    from xviz.ui import cache

    heat = cache.attribution_map(sel, "gradcam", DEFAULT_LAYER, target)
    x = cache.model_input(sel)
    cam = T.class_activation_map(sel.model, x, target)
    expected = T.cam_as_gradcam(cam, tuple(x.shape[-2:])).numpy()
    diff = float(np.abs(heat - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    h, w = cam.shape
    st.info(f"**A taught class: Grad-CAM here is CAM.** This model's head is one linear layer on the average of "
            f"`{DEFAULT_LAYER}`, so the class score is the average over the {h}×{w} grid of Σₖ wₖ·Aₖ (CAM, "
            f"Zhou et al. 2016) plus a bias. Every position's gradient is wₖ/{h * w}, and Grad-CAM at "
            f"`{DEFAULT_LAYER}` is exactly ReLU(CAM)/{h * w}: on this photo the two differ by {diff:.1e} "
            "(relative), float rounding. Try the experiment on the *Teach* page: is it the object or its "
            "background that lights up?")
