"""Teach it new classes: a few shots per class, a new head on the frozen backbone, then see where it looks."""

import streamlit as st

from xviz import teaching as T
from xviz import ui
from xviz.errors import TeachError
from xviz.ui import teach, uploads

ui.page_header("Teach it new classes",
               "Name a few classes, show the network some examples of each, and it learns them in a "
               "second: the backbone stays as it is, only a new last layer is trained on the 2,048 numbers "
               "it computes for each photo. Then pick the taught model in the sidebar and ask where it looks.")
base = teach.base_model(ui.required_model())
st.caption(f"Samples are described by the backbone of **{base.source}** at {base.input_size} px. "
           f"{T.MIN_CLASSES}–{T.MAX_CLASSES} classes, up to {T.MAX_SAMPLES_PER_CLASS} samples each. Your samples "
           "stay in this browser session's memory: never on disk, gone when you close the tab.")

left, right = st.columns([4, 1], vertical_alignment="bottom")
left.text_input("New class", placeholder="e.g. mug", max_chars=T.MAX_NAME_CHARS, key=teach.NEW_NAME)
right.button("Add class", key="teach_add_class", on_click=teach.add_class_from_input)
if teach.ERROR in st.session_state:
    st.error(st.session_state.pop(teach.ERROR))

classes = teach.samples()
if classes:
    target = st.selectbox("Add samples to", list(classes), key="teach_target")
    source = st.radio("From", ["Upload", "Camera", "Example photos"], horizontal=True, key="teach_from")
    if source == "Camera":
        if blocked := ui.camera_blocked(st.context.url):
            st.warning(blocked)
        shot = st.camera_input("One shot per click", key=uploads.key(teach.CAMERA))
        if shot is not None:
            teach.take(target, teach.CAMERA, [shot])
            st.rerun()
    elif source == "Upload":
        files = st.file_uploader("Photos (several at once)", accept_multiple_files=True,
                                 key=uploads.key(teach.UPLOAD), max_upload_size=uploads.PHOTO_MAX_MB,
                                 help=uploads.PHOTO_LIMIT_NOTE)
        if files:
            teach.take(target, teach.UPLOAD, files)
            st.rerun()
    else:
        st.multiselect("Example photos", list(ui.example_images()), key=teach.EXAMPLES)
        st.button("Add these photos", key="teach_add_examples", on_click=teach.take_examples, args=(target,))
    for note in st.session_state.pop(teach.NOTICES, []):
        st.warning(note)
    for class_name in list(classes):
        teach.view_class(class_name)

st.subheader("Train")
if st.button("Teach", type="primary", key="teach_train", disabled=len(classes) < T.MIN_CLASSES):
    try:
        st.session_state[teach.RESULT] = teach.teach(base)
        st.rerun()  # the sidebar (drawn before this page) now offers the taught model
    except TeachError as exc:
        st.error(str(exc))
result = st.session_state.get(teach.RESULT)
if result is None:
    st.info(f"Add at least {T.MIN_CLASSES} classes with a few samples each, then press **Teach**.")
    st.stop()
model, ev = result
st.success(f"Taught **{' / '.join(model.labels)}** on {len(ev.targets)} samples. Choose "
           f"**{teach.taught_label(model)}** under *Weights* in the sidebar to use it on every page.")
teach.view_evaluation(ev)
st.markdown("**An experiment that makes the lesson.** Photograph two objects, each against its own background "
            "(the mug on the desk, the bottle on the carpet), and teach them. Then show the mug on the carpet, "
            "and on *Where it looks* see whether the heatmap lands on the object or on the background.")
teach.view_export(model)
