"""AppTest of "Teach it new classes": classes, uploads of real photos, training, the evaluation, the
taught model in the sidebar and on the other pages, refusals, and the export buttons."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from helpers import start_app

from xviz import teaching as T

# labels from the demo package's train.csv (0009, 0020, 0299: cup; 0004: plate) and by looking (0002: a plate)
CUPS, PLATES = ["0009", "0020", "0299"], ["0004", "0002"]


def jpeg_crops(path, n=3) -> list[bytes]:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    out = []
    for i in range(n):
        f = 1.0 - 0.15 * i
        crop = img.crop((0, 0, int(w * f), int(h * f))) if i % 2 else img.crop(
            (w - int(w * f), h - int(h * f), w, h))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def add_class(at, name):
    at.text_input(key="teach_name").set_value(name)
    return at.button(key="teach_add_class").click().run()


def upload(at, files):
    at.main.get("file_uploader")[0].set_value(files)  # the page's (the sidebar shows an example photo)
    return at.run()


@pytest.fixture(scope="module")
def taught_app(kitchenware_images):
    by_id = {p.stem: p for p in kitchenware_images}
    at = start_app("pages/teach.py", model_source="kitchenware")
    assert not at.exception, at.exception
    at = add_class(at, "cup")
    at = add_class(at, "plate")
    assert list(at.session_state["teach_classes"]) == ["cup", "plate"]
    at.selectbox(key="teach_target").set_value("cup").run()
    at = upload(at, [(f"{i}-{k}.jpg", data, "image/jpeg") for i in CUPS for k, data in enumerate(jpeg_crops(by_id[i]))])
    at.selectbox(key="teach_target").set_value("plate").run()
    at = upload(at, [(f"{i}-{k}.jpg", data, "image/jpeg") for i in PLATES
                     for k, data in enumerate(jpeg_crops(by_id[i]))] + [("notes.jpg", b"not a photo", "image/jpeg")])
    assert not at.exception, at.exception
    # the file that is not a photo is refused with a sentence, once; the photos before and after it are kept
    assert any("notes.jpg" in w.value and "not an image" in w.value for w in at.warning)
    return at.button(key="teach_train").click().run()


def test_samples_and_thumbnails(taught_app):
    at = taught_app
    classes = at.session_state["teach_classes"]
    assert [len(classes["cup"]), len(classes["plate"])] == [9, 6]
    assert all(isinstance(s, T.Sample) and len(s.thumb) < len(s.jpeg) for v in classes.values() for s in v)
    assert len(at.get("imgs")) + len(at.get("image")) >= 15  # a thumbnail per sample
    assert any("cup" in m.value and "9 of at most 50" in m.value for m in at.markdown)


def test_training_shows_accuracy_confusion_and_offers_the_model(taught_app):
    at = taught_app
    assert not at.exception, at.exception
    model, ev = at.session_state["teach_result"]
    assert model.labels == ["cup", "plate"] and len(ev.targets) == 15
    text = " ".join(m.value for m in at.markdown)
    assert f"**{ev.accuracy:.0%}**" in text and f"**{ev.baseline_accuracy:.0%}**" in text and "leave-one-out" in text
    assert len(at.get("plotly_chart")) == 2  # confusion matrices: the head and nearest class mean
    assert any("Taught: cup / plate" in s.value for s in at.success)
    assert {b.label for b in at.get("download_button")} >= {"Weights (.safetensors)", "Labels (.txt)"}
    assert "Taught: cup / plate" in at.sidebar.selectbox(key="model_source").options


def test_taught_model_everywhere(taught_app, kitchenware_images):
    at = taught_app
    at.sidebar.selectbox(key="model_source").set_value("taught").run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**Weights:** Taught: cup / plate") for m in at.sidebar.markdown)
    at = at.switch_page("pages/predict.py").run()
    assert not at.exception, at.exception
    assert at.session_state["_run_model"].labels == ["cup", "plate"]
    at = at.switch_page("pages/gradcam.py").run()
    assert not at.exception, at.exception
    assert any("Grad-CAM here is CAM" in i.value for i in at.info)
    at = at.switch_page("pages/teach.py").run()  # teaching again starts from the taught model's base
    assert not at.exception, at.exception
    assert any("Samples are described" in c.value and "kitchenware" in c.value for c in at.caption)


def test_the_same_photo_twice_is_one_sample_and_says_so(taught_app, kitchenware_images):
    by_id = {p.stem: p for p in kitchenware_images}
    at = taught_app
    at.selectbox(key="teach_target").set_value("cup").run()
    at = upload(at, [("again.jpg", jpeg_crops(by_id[CUPS[0]])[0], "image/jpeg")])
    assert not at.exception, at.exception
    assert len(at.session_state["teach_classes"]["cup"]) == 9
    assert any("again.jpg is already a sample of 'cup'" in w.value for w in at.warning)


def test_refusals_are_sentences(taught_app):
    at = add_class(taught_app, "CUP")
    assert any("already a class called" in e.value for e in at.error)
    for i in range(T.MAX_CLASSES - 2):
        at = add_class(at, f"extra {i}")
    at = add_class(at, "one too many")
    assert any("At most 10 classes" in e.value for e in at.error)
    assert len(at.session_state["teach_classes"]) == T.MAX_CLASSES
