"""Two students in real browser tabs share the inference queue: the one who waits sees their place.

Student A asks for Occlusion (hundreds of forward passes) and sees its progress; student B, on
another photo, opens Grad-CAM meanwhile. B's default map (Grad-CAM at the last layer, from the
features of B's prediction: the head alone) is a cheap request, served between A's passes; B's
Saliency map is a heavy one and waits behind A's Occlusion, so B's page must say so ("… ahead of you
in line · about … s") while it waits, and the message must give way to B's picture when it is
served. Run: python -m pytest tests/e2e/test_queue_browser.py -q
"""

from __future__ import annotations

import re

from bench.browser import TIMEOUT_MS
from ready import skip_unless_ready

skip_unless_ready()

from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

GRADCAM = "Where it looks (Grad-CAM)"
IN_LINE = re.compile(r"ahead of you in line")
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def _choose(app, key: str, option: str, where) -> None:
    where.locator(f".st-key-{key}").get_by_role("button", name="Open").click()
    app.page.get_by_role("option").filter(has_text=option).first.click()


def _input_size(app, size: str) -> None:
    slider = app.sidebar.locator(".st-key-input_size").get_by_role("slider")
    slider.focus()
    for _ in range(4):  # native, 150, 224, 299, 384 px
        if slider.get_attribute("aria-valuetext") == size:
            break
        slider.press("ArrowRight")
    expect(slider).to_have_attribute("aria-valuetext", size)
    # the server has the last value once the status line says so: no slider rerun comes later and
    # cancels a request made next
    px = size.removesuffix(" px")
    expect(app.sidebar).to_contain_text(f"{px}×{px} px")
    app.page.wait_for_selector(IDLE)
    # and the page's pictures have arrived before the student moves on: Streamlit lets go of a run's
    # media once the next run ends, so a picture still loading when the tab switches page is a 404
    # in the console (seen once in CI, on a busy server), though nobody is looking at it any more
    app.wait_pictures_drawn()


def test_a_waiting_student_sees_their_place_until_served(open_tab):
    b, a = open_tab(), open_tab()
    # Sizes no other test uses: the server (and its results) is shared by the whole e2e run, so at
    # the default size B's Grad-CAM may already be computed and never wait. The same network, so the
    # same worker. A at 384 px: its occlusion takes ~120 eager forwards of ~0.2 s, long enough for B
    # to arrive behind it even on a fast quiet machine.
    b.act(lambda: _choose(b, "example", "cat", b.sidebar))
    b.act(lambda: _input_size(b, "224 px"))
    a.act(lambda: _input_size(a, "384 px"))
    a.go_to(GRADCAM)
    _choose(a, "gc_method", "Occlusion", a.main)  # not waited for: it runs while B arrives
    # A's occlusion is in the queue: its progress bar is up (or, on a busy server, its own place in line)
    a_waits = a.main.get_by_test_id("stProgress").or_(a.main.get_by_test_id("stAlertContentInfo").filter(has_text=IN_LINE))
    expect(a_waits.first).to_be_visible(timeout=2 * TIMEOUT_MS)

    b.nav_link(GRADCAM).click()
    # the default map needs only the head, on the features B's prediction kept: served while A's
    # occlusion still runs
    expect(b.main.get_by_test_id("stImageCaption").filter(has_text="Grad-CAM for")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(a_waits.first).to_be_visible()
    _choose(b, "gc_method", "Saliency", b.main)
    waiting = b.main.get_by_test_id("stAlertContentInfo").filter(has_text=IN_LINE)
    expect(waiting).to_be_visible(timeout=TIMEOUT_MS)
    assert re.search(r"\d+ ahead of you in line · (under a second|about \d+ (s|min))", waiting.inner_text())

    # served (after A's occlusion): the message gives way to B's own Saliency picture
    b.page.wait_for_selector(IDLE, timeout=3 * TIMEOUT_MS)
    expect(b.main.get_by_test_id("stAlertContentInfo").filter(has_text=IN_LINE)).to_have_count(0)
    expect(b.main.get_by_test_id("stImageCaption").filter(has_text="Saliency (gradient) for")).to_have_count(1)
    b.wait_pictures_drawn()
    a.page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
    expect(a.main.get_by_test_id("stProgress")).to_have_count(0)
    expect(a.main.get_by_test_id("stImageCaption").filter(has_text="Occlusion for")).to_have_count(1)
    a.assert_clean()
    b.assert_clean()
