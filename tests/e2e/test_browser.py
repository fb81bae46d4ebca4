"""The app in a real browser: Debian's chromium driven by Playwright against `streamlit run app.py`.

Pages are read from app.py's st.Page(...) entries when the tests are collected, so a page that
lands later is covered without editing this file. Run: python -m pytest tests/e2e -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

import xviz
from bench.browser import AppTab as App
from bench.browser import registered_pages
from ready import skip_unless_ready
from xviz.ui import uploads

ROOT = Path(__file__).resolve().parents[2]

skip_unless_ready()

from hostile import case as hostile_case  # noqa: E402
from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

PAGES = registered_pages(ROOT)
EXAMPLES = ROOT / "xviz" / "data" / "examples"
CAT = EXAMPLES / "cat.jpg"
RENDERED = ("stPlotlyChart", "stImage", "stDataFrame", "stTable", "stVegaLiteChart", "stGraphVizChart")


@pytest.fixture(scope="module")
def model() -> xviz.LoadedModel:
    return xviz.load_model("kitchenware")


# -- actions ----------------------------------------------------------------------------------

def keyed(app: App, key: str):
    """The sidebar widget created with ``key=`` (Streamlit puts ``st-key-<key>`` on its container)."""
    return app.sidebar.locator(f".st-key-{key}")


def choose_upload(app: App) -> None:
    app.act(lambda: keyed(app, "image_source").get_by_text("Upload", exact=True).click())


def photo_uploader(app: App):
    """The photo uploader under its current key (a refused file re-keys it: image_uploader_1, ...)."""
    return app.sidebar.locator(f"[class*='st-key-{uploads.PHOTO}']")


def upload(app: App, name: str, data: bytes, mime: str) -> None:
    dropzone = photo_uploader(app).get_by_test_id("stFileUploaderDropzoneInput")
    app.act(lambda: dropzone.set_input_files({"name": name, "mimeType": mime, "buffer": data}))


def choose_model(app: App, option_text: str) -> None:
    keyed(app, "model_source").get_by_role("button", name="Open").click()
    option = app.page.get_by_role("option").filter(has_text=option_text)
    app.act(option.click)


# -- what the page shows ----------------------------------------------------------------------

def chart_ticks(app: App):
    return app.main.get_by_test_id("stPlotlyChart").first.locator(".ytick text")


def expect_predictions(app: App, labels: list[str]) -> None:
    """The Predict chart shows these class names, most likely first (plotly lists the top bar last)."""
    expect(chart_ticks(app)).to_have_text(labels[::-1])


def expect_caption(app: App, text: str) -> None:
    expect(app.main.get_by_test_id("stImageCaption").first).to_contain_text(text)


def expect_sidebar_error(app: App, *parts: str) -> None:
    errors = app.sidebar.get_by_test_id("stAlertContentError")
    expect(errors).to_have_count(1)
    for part in parts:
        expect(errors).to_contain_text(part)


def weights_line(app: App) -> str:
    return app.sidebar.get_by_test_id("stMarkdownContainer").filter(has_text="Weights:").first.inner_text()


def top_labels(model: xviz.LoadedModel, path: Path, k: int = 5) -> list[str]:
    return [label for label, _ in model.predict(xviz.load_image(path.read_bytes()), k=k)]


# Pages whose first visit shows a prompt, not a picture: the prompt they show
STARTS_EMPTY = {"pages/teach.py": "Add at least"}


def assert_rendered(app: App) -> None:
    """Something visual is on the page, every chart has drawn and every image has decoded."""
    counts = {tid: app.main.get_by_test_id(tid).count() for tid in RENDERED}
    assert sum(counts.values()) > 0, "the page shows no chart, image or table"
    app.wait_pictures_drawn()
    assert app.main.get_by_test_id("stAlertContentError").count() == 0, \
        app.main.get_by_test_id("stAlertContentError").all_inner_texts()


# -- tests ------------------------------------------------------------------------------------

def test_app_opens_on_predictions(app: App, model):
    assert app.page.title().startswith("xviz")
    expect_predictions(app, top_labels(model, EXAMPLES / "coffee.jpg"))
    assert top_labels(model, EXAMPLES / "coffee.jpg", 1) == ["cup"]
    assert "kitchenware" in weights_line(app)
    assert_rendered(app)
    app.assert_clean()


def test_navigation_lists_every_registered_page(app: App):
    for entry in PAGES:
        assert app.nav_link(entry.title).count() == 1, f"{entry.path} ({entry.title!r}) is not in the navigation"


def test_real_upload_is_predicted(app: App, model):
    choose_upload(app)
    upload(app, "cat.jpg", CAT.read_bytes(), "image/jpeg")
    expect_caption(app, "upload: cat.jpg")
    expect_predictions(app, top_labels(model, CAT))
    expect(app.sidebar.get_by_test_id("stAlertContentError")).to_have_count(0)
    app.assert_clean()


@pytest.mark.parametrize("entry", PAGES, ids=lambda e: Path(e.path).stem)
def test_page_renders_without_errors(app: App, entry):
    if entry.path != "pages/predict.py":
        app.go_to(entry.title)
    if entry.path in STARTS_EMPTY:  # nothing to draw before the student adds something
        expect(app.main.get_by_test_id("stAlertContentInfo").filter(has_text=STARTS_EMPTY[entry.path])).to_have_count(1)
        assert app.main.get_by_test_id("stAlertContentError").count() == 0
    else:
        assert_rendered(app)
    app.assert_clean()


def test_switching_pages_keeps_image_and_model(app: App, model):
    choose_model(app, "Kitchenware")
    choose_upload(app)
    upload(app, "cat.jpg", CAT.read_bytes(), "image/jpeg")
    weights = weights_line(app)
    for entry in PAGES[1:] + PAGES[:1]:  # every other page, then back to Predict
        app.go_to(entry.title)
        assert weights_line(app) == weights, f"the model changed on {entry.title}"
        assert photo_uploader(app).get_by_test_id("stFileChipName").inner_text() == "cat.jpg", entry.title
        assert keyed(app, "image_source").get_by_role("radio", name="Upload").is_checked(), entry.title
    expect_caption(app, "upload: cat.jpg")
    expect_predictions(app, top_labels(model, CAT))
    app.assert_clean()


def test_bad_uploads_keep_the_previous_image(app: App, model):
    choose_upload(app)
    upload(app, "cat.jpg", CAT.read_bytes(), "image/jpeg")
    cat_labels = top_labels(model, CAT)
    expect_predictions(app, cat_labels)

    html = hostile_case("html_as_png")
    upload(app, html.filename, html.data, html.mime)
    expect_sidebar_error(app, html.filename, "not an image", "The previous image is still in use.")
    expect(photo_uploader(app).get_by_test_id("stFileChip")).to_have_count(0)  # emptied: the file is let go
    expect_caption(app, "upload: cat.jpg")
    expect_predictions(app, cat_labels)
    app.screenshot("bad_upload")

    bomb = hostile_case("bomb_png")
    upload(app, bomb.filename, bomb.data, bomb.mime)
    expect_sidebar_error(app, bomb.filename, "too large", "The previous image is still in use.")
    expect_caption(app, "upload: cat.jpg")
    expect_predictions(app, cat_labels)
    app.assert_clean()


def test_over_limit_photo_is_refused_by_the_browser_with_a_message(app: App, model, tmp_path):
    """A photo over 25 MB never leaves the browser (the uploader's own limit; the server's is 128 MB
    for weights files). The browser marks the file red and says why only in a tooltip, so the limit
    is written under the uploader; nothing reruns and the previous photo stays in use."""
    choose_upload(app)
    upload(app, "cat.jpg", CAT.read_bytes(), "image/jpeg")
    big = hostile_case("over_byte_limit")
    path = tmp_path / big.filename  # a path, not a buffer: 26 MB through the driver's pipe takes ~25 s
    path.write_bytes(big.data)
    photo_uploader(app).get_by_test_id("stFileUploaderDropzoneInput").set_input_files(path)
    refused = photo_uploader(app).locator("[data-testid='stFileChip'][aria-invalid='true']")
    expect(refused).to_contain_text(big.filename)
    expect(refused.get_by_role("alert")).to_contain_text("File must be 25.0MB or smaller.")
    expect(app.sidebar.get_by_text(f"Photos up to {uploads.PHOTO_MAX_MB} MB")).to_be_visible()
    expect(app.sidebar.get_by_test_id("stAlertContentError")).to_have_count(0)  # the server never saw it
    expect_caption(app, "upload: cat.jpg")
    expect_predictions(app, top_labels(model, CAT))
    app.screenshot("over_limit_upload")
    app.assert_clean()
