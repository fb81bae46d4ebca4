"""AppTest of the app shell and the Predict page: real photos, the real demo model, bad uploads.

Pages added by other modules have their own test_page_*.py; the shared sidebar is tested here.
"""

import re

import pytest
from streamlit.testing.v1 import AppTest

from helpers import ROOT, image_formats, mentions

EXAMPLES = ROOT / "xviz" / "data" / "examples"


@pytest.fixture
def app(open_app):
    return open_app()  # an empty hub cache: "auto" falls back to the demo model, as on a fresh machine


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
    assert mentions([c.value for c in app.sidebar.caption], "150×150")  # input size + device line
    assert mentions(markdown_text(app), "**cup**")  # the default coffee photo is a cup
    assert app.get("plotly_chart")
    # the photo as a JPEG, what the network reads losslessly (its exact pixels)
    formats = image_formats(app)
    assert [f for c, f in formats.items() if c.startswith("Your image")] == ["jpg"]
    assert [f for c, f in formats.items() if c.startswith("What the model sees")] == ["png"]


@pytest.mark.parametrize("kind", ["plain", "exif", "large"])
def test_the_photo_goes_back_as_uploaded_when_nothing_needs_changing(kind):
    """A plain JPEG that fits is shown as it came (no encoding per photo); a camera file (EXIF) or a
    larger photo is re-encoded at most 1024 px a side."""
    import io

    from PIL import Image

    import xviz
    from xviz.ui import cache, state

    img = Image.open(EXAMPLES / "cat.jpg")
    buf = io.BytesIO()
    if kind == "plain":
        buf.write((EXAMPLES / "cat.jpg").read_bytes())
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"
        img.save(buf, "JPEG", exif=exif.tobytes())
    else:
        img.resize((2048, 1362)).save(buf, "JPEG")
    data = buf.getvalue()
    sel = state.Selection(None, xviz.load_image(data), cache.sha256(data), "upload: cat.jpg", data)
    shown = cache.photo_jpeg(sel)
    assert (shown == data) == (kind == "plain")
    assert max(Image.open(io.BytesIO(shown)).size) == (1024 if kind == "large" else 451)
    assert "exif" not in Image.open(io.BytesIO(shown)).info


def test_upload_a_real_photo(app):
    at = upload_image(app, "cat.jpg", (EXAMPLES / "cat.jpg").read_bytes())
    assert not at.exception
    assert not at.sidebar.error
    assert at.session_state["image_name"] == "upload: cat.jpg"
    assert re.search(r"\*\*\d+%\*\*.*\*\*\w+\*\*", markdown_text(at))  # a probability, then a class


def test_bad_upload_keeps_previous_image(app):
    before = app.session_state["image_bytes"]
    at = upload_image(app, "notes.jpg", b"this is not a picture", "image/jpeg")
    assert not at.exception
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "not an image" in errors and "previous image is still in use" in errors
    assert at.session_state["image_bytes"] == before
    assert mentions(markdown_text(at), "**cup**")  # the page still works on the old image


def test_switch_to_untrained_is_loudly_labelled(app):
    at = app.sidebar.selectbox(key="model_source").set_value("untrained").run()
    assert not at.exception
    assert any("Untrained network" in e.value for e in at.sidebar.error)
    assert any("random weights" in e.value for e in at.error)
    # and back: the trained model and the same image are still there
    at = at.sidebar.selectbox(key="model_source").set_value("kitchenware").run()
    assert not at.sidebar.error and mentions(markdown_text(at), "**cup**")


def test_input_size_changes_what_the_model_sees(app):
    at = app.sidebar.select_slider(key="input_size").set_value(299).run()
    assert not at.exception
    assert mentions([c.value for c in at.sidebar.caption], "299×299")
    assert mentions(markdown_text(at), "299×299×3", f"{299 * 299 * 3:,}")


def test_imagenet_choice_offline_explains_what_to_do(app):
    at = app.sidebar.selectbox(key="model_source").set_value("imagenet").run()
    assert not at.exception
    message = " ".join(e.value for e in at.sidebar.error)
    assert "python -m xviz fetch imagenet" in message


def test_fast_mode_is_off_by_default_and_the_status_line_says_when_on(app):
    switch = app.sidebar.toggle(key="fast_mode")
    assert switch.value is False
    assert not any("Fast mode" in w.value for w in app.sidebar.warning)
    if switch.disabled:  # no native bf16, no GPU: the switch says so and stays off
        assert "not available here" in switch.label
        return
    at = switch.set_value(True).run()
    assert not at.exception
    precision = switch.label.split("(")[-1].rstrip(")")  # "Fast predictions (bf16)"
    assert any("Fast mode on" in w.value and precision in w.value for w in at.sidebar.warning)
    assert mentions(markdown_text(at), "**cup**")  # same answer on the default photo
    at = at.sidebar.toggle(key="fast_mode").set_value(False).run()
    assert not any("Fast mode" in w.value for w in at.sidebar.warning)
