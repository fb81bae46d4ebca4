"""Guided tour: one image through Xception in seven steps, for a class with a projector or a student alone.

The step lives in the URL (``?step=3`` or ``?step=separable``), so a teacher can link to a step and
come back to it. The pictures are the other pages' views (xviz.ui.view_*) on the current image; every
number and answer comes from xviz.tour, computed from the loaded model at the sidebar's input size.
"""

import streamlit as st

from xviz import tour, ui

STEP = "step"  # the URL's query parameter
STEPS = tour.STEPS

ui.page_header("A guided tour through Xception",
               "One image — the one in the sidebar — through the whole network, in seven steps. Every "
               "picture is computed from it, every number from the model that is loaded. The address bar "
               "names the step: copy it to come back here.")
sel = ui.current()
model, size = sel.model, sel.model.input_size
index, problem = tour.parse_step(st.query_params.get(STEP))
if problem:
    st.warning(problem)
st.query_params[STEP] = str(index + 1)  # the URL always names the step shown
facts = ui.tour_facts(model)
step = STEPS[index]


def go(i: int) -> None:
    st.query_params[STEP] = str(i + 1)


def nav(where: str) -> None:
    prev, middle, nxt = st.columns([1, 4, 1], vertical_alignment="center")
    prev.button("← Previous", key=f"tour_prev{where}", disabled=index == 0, on_click=go, args=(index - 1,),
                width="stretch")
    nxt.button("Next →", key=f"tour_next{where}", disabled=index == len(STEPS) - 1, on_click=go,
               args=(index + 1,), width="stretch", type="primary")
    middle.progress((index + 1) / len(STEPS), text=f"Step {index + 1} of {len(STEPS)} · "
                    + " → ".join(f"**{s.short}**" if s is step else s.short for s in STEPS))


def strongest_channel(layer: str) -> int:
    return int(ui.layer_summary(sel, layer)[1]["mean"][0])


def show(slug: str) -> None:
    few = 32 if ui.presenter() else 64
    if slug == "input":
        ui.view_input(sel)
    elif slug == "entry":
        first = facts.stem[0]
        ui.view_size_strip(sel, first.name)
        ui.view_channel_grid(sel, first.name, key="tour_stem", controls=False, count=first.channels,
                             title=f"All {first.channels} channels of {first.name}, the very first filters")
        ui.view_channel_grid(sel, facts.entry_out.name, key="tour_entry", controls=False, sort="mean", count=few,
                             title=f"The {few} strongest of the {facts.entry_out.channels} channels of "
                                   f"{facts.entry_out.name}, the end of the entry flow")
    elif slug == "separable":
        ui.view_separable(sel, facts.separable.name, key="tour_sep", controls=False, bn=False,
                          heading=lambda title: st.subheader(title.split(" · ", 1)[-1]))  # "1 · Depthwise…"
    elif slug == "middle":
        ui.view_size_strip(sel, facts.middle_out.name)
        block = facts.middle_blocks[0]
        channel = strongest_channel(f"{block}_add")
        ui.view_residual(sel, block, key="tour_res", channel=channel, controls=False)
        st.caption(f"Channel {channel} is the strongest (highest mean) of `{block}_add` for this image. "
                   "Every channel of every middle block is such a sum.")
    elif slug == "exit":
        ui.view_channel_grid(sel, facts.exit_out.name, key="tour_exit", controls=False, sort="mean", count=few,
                             title=f"The {few} strongest of the {facts.exit_out.channels} channels of "
                                   f"{facts.exit_out.name}, the last maps")
    elif slug == "prediction":
        if not model.has_head:
            st.warning("This model has no classifier head, so there is no prediction to show.")
            return
        label, prob = ui.view_predictions(sel, min(5, facts.classes))[0]
        st.markdown(f"Its best guess for this image: **{label}**, {prob:.0%} sure.")
    elif slug == "gradcam":
        if not model.has_head:
            st.warning("Grad-CAM explains a class score; this model has no classifier head.")
            return
        cap = ui.flow_capture(sel)
        top = int(cap.logits.argmax())  # the class of step 6's best guess, from the same forward pass
        ui.view_attribution(sel, top, key="tour_cam", controls=False)


nav("")
st.header(f"{index + 1} · {step.title}")
if not model.trained:
    st.error("**Untrained network**: the maps and the prediction mean nothing here. The shapes and "
             "parameter counts are still those of Xception.")
st.markdown(tour.narrative(facts, step.slug))
show(step.slug)

q = tour.question(facts, step.slug)
if q is not None:
    revealed = st.session_state.setdefault(ui.TOUR_REVEALED, set())
    with st.container(border=True):
        st.markdown(f"**Question.** {q.text}")
        if step.slug in revealed:
            st.markdown(q.answer)
            if q.working:
                st.latex(q.working)
        else:
            st.button("Show the answer", key=f"tour_answer_{step.slug}", on_click=revealed.add, args=(step.slug,))
nav("_end")
