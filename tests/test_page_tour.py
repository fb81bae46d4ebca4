"""AppTest of the guided tour (pages/tour.py) and presenter mode, with a real photo and the real demo model.

The expected numbers are written as the arithmetic they are (3 * 3 * 728 * 728), from Xception's
published layer widths and the kitchenware head (2048 -> 100 -> 6), not copied from the app.
"""

import pytest
from streamlit.testing.v1 import AppTest

from helpers import image_captions, mentions
from xviz import tour

TITLES = [s.title for s in tour.STEPS]


@pytest.fixture
def open_tour(open_app):
    """``open_tour(step=None, **session)``: the tour on the demo model, at ``step`` (the URL's)."""
    return lambda step=None, **session: open_app("pages/tour.py", query={"step": step} if step else None,
                                                 **session)


def text(at: AppTest) -> str:
    """Everything the main area says (the sidebar's status lines are left out)."""
    m = at.main
    parts = [x.value for x in m.markdown] + [c.value for c in m.caption] + [x.value for x in m.latex]
    parts += [s.value for s in m.success] + [w.value for w in m.warning] + [e.value for e in m.error]
    parts += [c for img in m.get("image") for c in img.captions]
    return "\n".join(str(p) for p in parts)


def heading(at: AppTest) -> str:
    return at.header[0].value


def reveal(at: AppTest) -> str:
    """Click the step's "Show the answer" and return what the page says then."""
    buttons = [b for b in at.button if (b.key or "").startswith("tour_answer_")]
    assert len(buttons) == 1, [b.key for b in at.button]
    assert "Show the answer" == buttons[0].label
    before = text(at)
    after = text(buttons[0].click().run())
    assert not at.exception
    return after.replace(before, "") if before in after else after


# what each step must show at 150 px (the demo model's size), and what its revealed answer says
AT_150 = {
    1: ["150×150", "67,500"],
    2: ["74×74×32", "72×72×64", "9×9×728"],
    3: [f"{3 * 3 * 728 + 728 * 728:,}", "728 input channels", "728 depthwise maps", "✓"],
    4: ["9×9×728", "✓"],
    5: ["5×5×2048", "2,048 numbers"],
    6: ["dense (2,048→100)", "dense_1 (100→6)", "**cup**"],
    7: ["5×5", "Grad-CAM", "**cup**", "block14_sepconv2_act"],
}
ANSWERS_150 = {
    1: f"{(150 - 3) // 2 + 1}×{(150 - 3) // 2 + 1}×32",  # block1_conv1: 3×3, stride 2, no padding
    2: f"{9 * 9 * 728:,}",
    3: f"{3 * 3 * 728 * 728:,}",  # the standard 3×3 conv the question asks about
    4: f"{8 * 1_613_976:,}",  # eight identical middle blocks
    5: f"{5 * 5 * 2048:,} in, 2,048 out",
    6: f"{2048 * 100 + 100 + 100 * 6 + 6:,}",
    7: f"{2 ** 5} pixels",  # five halvings by block14
}

def test_walk_the_whole_tour(open_tour):
    at = open_tour()
    assert at.query_params["step"] == "1"  # the URL names the step from the start
    assert at.button(key="tour_prev").disabled
    for n, title in enumerate(TITLES, start=1):
        assert heading(at) == f"{n} · {title}", n
        body = text(at)
        for expected in AT_150[n]:
            assert expected in body, (n, expected)
        assert ANSWERS_150[n] not in body, f"step {n} gives the answer away"
        assert ANSWERS_150[n] in reveal(at), n
        assert at.get("image") or at.get("plotly_chart"), f"step {n} shows no picture"
        if n < len(TITLES):
            at.button(key="tour_next").click().run()
            assert not at.exception, n
            assert at.query_params["step"] == str(n + 1)
    assert at.button(key="tour_next").disabled
    at.button(key="tour_prev_end").click().run()
    assert heading(at) == f"6 · {TITLES[5]}" and at.query_params["step"] == "6"


@pytest.mark.parametrize("step, n", [("3", 3), ("separable", 3), ("7", 7), ("1", 1)])
def test_the_url_opens_a_step(open_tour, step, n):
    at = open_tour(step=step)
    assert not at.exception
    assert heading(at) == f"{n} · {TITLES[n - 1]}"
    assert at.query_params["step"] == str(n)


def test_a_bad_step_in_the_url_says_so(open_tour):
    at = open_tour(step="42")
    assert heading(at) == f"1 · {TITLES[0]}"
    assert mentions([w.value for w in at.warning], "42", "1", "7")  # what was asked, what exists
    assert at.query_params["step"] == "1"


def test_numbers_follow_the_input_size(open_tour):
    at = open_tour(step="2", input_size=299)
    body = text(at)
    assert "147×147×64" in body and "19×19×728" in body and "72×72×64" not in body
    at.button(key="tour_next").click().run()
    assert f"{3 * 3 * 728 * 728 * 19 * 19:,}" in reveal(at)  # standard conv's multiply-adds at 19×19
    # and back to the model's own 150 px in the same session
    at.sidebar.select_slider(key="input_size").set_value(0).run()
    assert f"{3 * 3 * 728 * 728 * 9 * 9:,}" in text(at)


def test_numbers_follow_the_model(open_tour):
    """The untrained network has ImageNet's head (2048 -> 1000) and its 299 px input."""
    at = open_tour(step="6", model_source="untrained")
    body = text(at)
    assert "Untrained network" in body
    assert "predictions (2,048→1,000)" in body and "1,000 classes" in body
    assert f"{2048 * 1000 + 1000:,}" in reveal(at)
    at.query_params["step"] = "1"
    at.run()
    assert f"{299 * 299 * 3:,} numbers" in text(at)


def test_presenter_mode(open_tour):
    at = open_tour(step="5")
    assert mentions(image_captions(at), "64 of", "2048")
    at.sidebar.toggle(key="presenter").set_value(True).run()
    assert not at.exception
    styles = [h.proto.body for h in at.get("html")]
    assert any("font-size: 20px" in s for s in styles), styles  # larger type
    assert mentions(image_captions(at), "32 of", "2048")  # fewer channels, larger tiles
    assert not at.get("download_button")
    at.switch_page("pages/feature_maps.py").run()  # the other pages show fewer controls too
    assert not at.exception
    assert "fm_cmap" not in [s.key for s in at.selectbox] and not at.get("download_button")
    at.sidebar.toggle(key="presenter").set_value(False).run()
    assert "fm_cmap" in [s.key for s in at.selectbox]
    assert not any("font-size: 20px" in h.proto.body for h in at.get("html"))


def test_colormap_follows_presenter_mode():
    def app():
        import streamlit as st

        from xviz import ui

        st.write(f"{ui.colormap('maps')} {ui.colormap('heat')}")
        st.session_state["presenter"] = True
        st.write(f"{ui.colormap('maps')} {ui.colormap('heat')}")

    at = AppTest.from_function(app).run()
    assert [m.value for m in at.markdown] == ["viridis jet", "cividis inferno"]
