"""The classroom features in a real browser: the guided tour clicked through, presenter mode, the camera.

Screenshots of every tour step and of presenter mode go to screenshots/ (git-ignored): look at them.
Run: python -m pytest tests/e2e/test_tour.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, AppTab
from ready import skip_unless_ready
from xviz import tour

skip_unless_ready()

from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

STEPS = tour.STEPS
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"  # as conftest.App.screenshot writes them


def step_heading(app: AppTab):
    return app.main.locator("h2").filter(has_text=" · ").first


def tall_screenshot(app: AppTab, name: str) -> None:
    """The whole page: Streamlit scrolls inside stMain, so full_page=True would stop at the viewport."""
    SCREENSHOTS.mkdir(exist_ok=True)
    size = app.page.viewport_size
    main = "() => document.querySelector(\"[data-testid='stMain']\").scrollHeight"
    app.page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollTo(0, 0)")
    app.page.set_viewport_size({"width": size["width"], "height": min(max(app.page.evaluate(main),
                                                                             size["height"]), 8000)})
    try:
        app.page.mouse.move(0, 0)  # no hover buttons (an image's fullscreen icon) over the text
        app.page.wait_for_timeout(500)  # the relayout of the plotly charts to the taller window
        app.page.screenshot(path=str(SCREENSHOTS / f"e2e_{name}.png"))
    finally:
        app.page.set_viewport_size(size)


def test_click_through_the_tour(app):
    app.go_to("Guided tour")
    for n, step in enumerate(STEPS, start=1):
        expect(step_heading(app)).to_have_text(f"{n} · {step.title}")
        assert app.page.url.endswith(f"step={n}"), app.page.url
        assert app.wait_pictures_drawn() > 0, "the step shows no picture"
        answer = app.main.get_by_role("button", name="Show the answer")
        app.act(answer.click)
        expect(answer).to_have_count(0)
        tall_screenshot(app, f"tour_step{n}_{step.slug}")
        if n < len(STEPS):
            app.act(app.main.get_by_role("button", name="Next →").first.click)
    expect(app.main.get_by_role("button", name="Next →").first).to_be_disabled()
    app.assert_clean()


def test_a_link_opens_its_step(app):
    """A teacher's link to step 3, opened in a new tab (a new session), shows step 3."""
    tab = AppTab(app.page.context.new_page(), app.url + "/tour?step=3").open(ready="h2")
    expect(step_heading(tab)).to_have_text(f"3 · {STEPS[2].title}", timeout=TIMEOUT_MS)
    assert tab.page.url.endswith("/tour?step=3")
    shown = tab.page.locator("[data-testid='stException']")
    assert shown.count() == 0, shown.first.inner_text()
    # opened at a page's address, Streamlit's frontend first probes <page>/_stcore/health and
    # host-config for its base path (404), then connects at the root: those two are not the app's
    assert [e for e in tab.errors if "/tour/_stcore/" not in e] == [], tab.errors


def test_presenter_mode(app):
    app.go_to("Guided tour")
    tall_screenshot(app, "tour_normal")
    root_font = "() => getComputedStyle(document.documentElement).fontSize"
    assert app.page.evaluate(root_font) == "16px"
    expect(app.page.get_by_test_id("stSidebar")).to_have_attribute("data-collapsed", "false")
    app.act(app.sidebar.locator(".st-key-presenter").get_by_text("Presenter mode").click)
    assert app.page.evaluate(root_font) == "20px"
    # a changed initial_sidebar_state closes the sidebar (this fresh browser has no stored choice)
    expect(app.page.get_by_test_id("stSidebar")).to_have_attribute("data-collapsed", "true")
    expect(step_heading(app)).to_have_text(f"1 · {STEPS[0].title}")
    app.act(app.main.get_by_role("button", name="Next →").first.click)
    assert app.wait_pictures_drawn() > 0, "the step shows no picture"
    expect(app.main.get_by_test_id("stDownloadButton")).to_have_count(0)
    tall_screenshot(app, "presenter_step2")
    app.assert_clean()


def _camera_context(browser_type, *extra):
    return browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream",
                                                               "--use-fake-device-for-media-stream", *extra])


@pytest.mark.parametrize("host", ["127.0.0.1", "classroom.test"])
def test_camera(server, browser, host):
    """On localhost the camera takes a photo (chromium's fake camera) that becomes the image; opened by
    another name over plain http, the sidebar says the browser will refuse it."""
    url = server.url.replace("127.0.0.1", host)
    # a second chromium from the same Playwright, with a fake camera and a name for 127.0.0.1
    camera = _camera_context(browser.browser_type, "--host-resolver-rules=MAP classroom.test 127.0.0.1")
    try:
        page = camera.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        tab = AppTab(page, url).open()
        tab.act(tab.sidebar.locator(".st-key-image_source").get_by_text("Camera", exact=True).click)
        warning = tab.sidebar.get_by_test_id("stAlertContentWarning").filter(has_text="camera can't work")
        if host == "classroom.test":
            expect(warning).to_have_count(1)
            expect(warning).to_contain_text("plain http from classroom.test")
            return
        expect(warning).to_have_count(0)
        take = tab.sidebar.get_by_role("button", name="Take Photo")
        expect(take).to_be_enabled()
        # the button is enabled before the stream has a frame; a shot taken then is empty and never sent
        video = tab.sidebar.locator(".st-key-camera video")
        tab.page.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=video.element_handle())
        tab.act(take.click)
        expect(tab.main.get_by_test_id("stImageCaption").first).to_contain_text("camera photo")
        expect(tab.sidebar.get_by_test_id("stAlertContentError")).to_have_count(0)
        SCREENSHOTS.mkdir(exist_ok=True)
        tab.page.screenshot(path=str(SCREENSHOTS / "e2e_camera.png"))
        assert not tab.errors, tab.errors
    finally:
        camera.close()
