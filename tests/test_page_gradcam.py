"""AppTest of the Grad-CAM page with a real photo (the app's default coffee example) and the real
demo model at its 150 px."""

import pytest
from streamlit.testing.v1 import AppTest

from helpers import image_captions, image_formats, mentions


@pytest.fixture
def page(open_app) -> AppTest:
    return open_app("pages/gradcam.py")


def test_gradcam_page_renders_a_map_and_its_checks(page):
    at = page
    assert not at.exception
    assert at.selectbox(key="gc_method").value == "gradcam"
    assert at.select_slider(key="gc_layer").value == "block14_sepconv2_act"
    pick = at.selectbox(key="gc_top")
    assert pick.value == 0 and pick.format_func(pick.value).startswith("cup (")  # the coffee photo's top guess
    assert mentions(image_captions(at), "Grad-CAM", "**cup**", "block14_sepconv2_act")
    assert set(image_formats(at).values()) == {"jpg"}  # a heatmap over a photo: JPEG, encoded once
    assert mentions([c.value for c in at.caption], "5×5", "2,048")  # 150 px -> a 5×5 grid of 2,048 channels
    assert at.get("download_button")

    # an early layer, another class found by search, a second method side by side
    at.select_slider(key="gc_layer").set_value("block3_add").run()
    at.toggle(key="gc_any").set_value(True).run()
    at.selectbox(key="gc_label").set_value(at.selectbox(key="gc_label").options.index("spoon")).run()
    at.multiselect(key="gc_compare").set_value(["saliency"]).run()
    assert not at.exception
    assert mentions(image_captions(at), "Grad-CAM", "Saliency", "**spoon**", "block3_add")
    assert mentions([c.value for c in at.caption], "18×18", "256")

    # the trust checks for the default Grad-CAM
    at.toggle(key="gc_any").set_value(False).run()
    at.multiselect(key="gc_compare").set_value([]).run()
    at.select_slider(key="gc_layer").set_value("block14_sepconv2_act").run()
    at.button(key="gc_trust_run").click().run()
    assert not at.exception
    readings = [m.value for m in at.success] + [m.value for m in at.warning]
    assert sum("**Reading:**" in r for r in readings) == 2
    assert len(at.get("plotly_chart")) >= 2


def test_slow_method_runs_with_small_settings(page):
    at = page
    at.selectbox(key="gc_method").set_value("occlusion").run()
    at.slider(key="gc_window").set_value(50).run()
    assert not at.exception
    assert mentions(image_captions(at), "Occlusion", "**cup**")
    assert mentions(image_captions(at), "Red", "blue")  # a signed map says which colour is which


def test_integrated_gradients_says_how_well_it_adds_up(page):
    """The completeness figure stands next to the map, and a fixed small number of steps says plainly
    that its colours do not add up."""
    at = page
    at.selectbox(key="gc_method").set_value("integrated_gradients").run()
    at.toggle(key="gc_ig_auto").set_value(False).run()
    at.slider(key="gc_steps").set_value(3).run()
    assert not at.exception
    assert mentions(image_captions(at), "Integrated Gradients", "**cup**")
    warned = [w.value for w in at.warning if "**Adds up?**" in w.value]
    assert warned and mentions(warned, "mid-grey", "3 steps", "more steps")
    error = float(warned[0].split("agree within ")[1].split("%")[0])
    assert error > 1.0  # three points can't follow the path: the page says how far off it is

    at.radio(key="gc_ig_baseline").set_value("black").run()
    at.slider(key="gc_steps").set_value(2).run()
    assert not at.exception
    assert mentions([w.value for w in at.warning] + [s.value for s in at.success], "**Adds up?**", "black", "2 steps")


def test_default_map_after_a_prediction_runs_only_the_head(open_app, photo, monkeypatch):
    """The prediction's forward kept the features the classifier head read, so the page's default map
    (Grad-CAM at block14_sepconv2_act) costs the head alone, not a second pass through the network."""
    import dataclasses
    import io

    from xviz import inference as I

    computed = []
    for name in ("forward", "logits", "attribution", "gradcam_features"):
        op = I.OPS[name]
        monkeypatch.setitem(I.OPS, name, dataclasses.replace(
            op, fn=lambda *a, _fn=op.fn, _name=name, **k: computed.append(_name) or _fn(*a, **k)))
    buf = io.BytesIO()
    photo.rotate(17).save(buf, format="PNG")  # a picture no other test used: not in the app's stores
    at = open_app()
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    computed.clear()  # the example photo's prediction, when this process had not made it yet
    at.sidebar.get("file_uploader")[0].set_value(("rotated.png", buf.getvalue(), "image/png"))
    at.run()
    assert computed == ["forward"]  # the Predict page: logits and features from one forward
    at.switch_page("pages/gradcam.py").run()
    assert not at.exception
    assert computed == ["forward", "gradcam_features"]
    assert mentions(image_captions(at), "Grad-CAM", "block14_sepconv2_act")
