"""Teaching in a real browser, as a student does it: two classes named in the text box, shots taken by
clicking chromium's fake camera (fed a video made of real photos of cups), an example photo and a
multi-file upload of real plates, then Teach, the held-out evaluation, the taught model chosen in the
sidebar, its prediction and its Grad-CAM (with the CAM identity checked on the page).
Screenshots: screenshots/e2e_teach.png, e2e_teach_gradcam.png. Run: python -m pytest tests/e2e/test_teach_browser.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from bench.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, AppTab
from ready import skip_unless_ready

skip_unless_ready()

from playwright.sync_api import expect  # noqa: E402  (after the skips: playwright may be missing)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"  # git-ignored, as conftest.App writes them
# the demo package's photos, labelled by its train.csv (0009, 0020, 0299, 0403: cup; 0004, 0026: plate)
# or by looking (0000: a mug; 0002: a plate)
CUPS, PLATES = ["0009", "0020", "0299", "0403", "0000"], ["0004", "0002", "0026"]
SHOTS = 3  # camera clicks for the first class

# One click on the page's camera button, made by the page's own JavaScript in the same task that reads
# the frame on show, once it is a frame no earlier click took: react-webcam's screenshot is taken in
# the click handler, so the sample is that frame. Each click re-keys the camera, whose new stream
# starts the fake video from its first frame again: clicks at the same moment after each restart
# would send the same frame, which is one sample, not two.
CLICK_NEW_FRAME = """async ([selector, taken, deadline]) => {
  const digest = v => {
    const c = document.createElement('canvas'); c.width = 16; c.height = 12;
    const g = c.getContext('2d'); g.drawImage(v, 0, 0, 16, 12);
    return Array.from(g.getImageData(0, 0, 16, 12).data).join(',');
  };
  const until = Date.now() + deadline;
  while (Date.now() < until) {
    const box = document.querySelector(selector);
    const video = box && box.querySelector('video');
    const button = box && [...box.querySelectorAll('button')].find(b => b.innerText.trim() === 'Take Photo');
    if (video && button && !button.disabled && video.readyState >= 2 && video.videoWidth > 0) {
      const frame = digest(video);
      if (/[1-9]/.test(frame.replace(/255/g, '')) && !taken.includes(frame)) {  // a picture, not black
        button.click();
        return frame;
      }
    }
    await new Promise(r => setTimeout(r, 20));
  }
  throw new Error('the camera showed no new frame to take');
}"""


def write_y4m(path: Path, photos: list[Path], *, size=(320, 240), fps: int = 4, zooms: int = 3) -> Path:
    """A YUV4MPEG2 (4:2:0) video for ``--use-file-for-fake-video-capture``: the photos in turn, one
    frame each, then again a little closer (``zooms`` rounds), so every frame the camera shows is a
    different real picture (chromium plays the file at ``fps`` and loops it)."""
    w, h = size
    images = [Image.open(photo).convert("RGB") for photo in photos]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(zooms):
            for img in images:
                f = 1.0 - 0.08 * k  # the centre crop, a little tighter each round
                cw, ch = int(img.width * f), int(img.height * f)
                left, top = (img.width - cw) // 2, (img.height - ch) // 2
                yuv = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC).convert("YCbCr")
                y, u, v = (np.asarray(p) for p in yuv.split())
                out.write(b"FRAME\n" + y.tobytes())
                for plane in (u, v):  # 4:2:0: each chroma plane at half the width and height
                    out.write(np.asarray(Image.fromarray(plane).resize((w // 2, h // 2), Image.BOX)).tobytes())
    return path


def shoot(tab: AppTab, taken: list[str]) -> None:
    """Click the page's camera button once on a frame not in ``taken`` (digests), and wait for the rerun."""
    selector = "[data-testid='stMain'] [class*='st-key-teach_camera']"
    tab.act(lambda: taken.append(tab.page.evaluate(CLICK_NEW_FRAME, [selector, taken, TIMEOUT_MS])))


def choose(tab: AppTab, key: str, option: str) -> None:
    """Pick ``option`` in the main area's selectbox ``key`` (a rerun only if it changes)."""
    box = tab.main.locator(f".st-key-{key}")
    if box.get_by_role("combobox").input_value() == option:
        return  # already chosen: choosing it again sends nothing, so there is no rerun to wait for
    box.get_by_role("button", name="Open").click()
    tab.act(tab.page.get_by_role("option", name=option, exact=True).click)


def expect_count(tab: AppTab, name: str, n: int) -> None:
    expect(tab.main.get_by_text(f"{name} — {n} of at most 50 samples")).to_have_count(1)


def test_teach_from_the_camera_and_uploads(server, browser, tmp_path, kitchenware_dir):
    images = kitchenware_dir / "datasets" / "kitchenware-data" / "images"
    video = write_y4m(tmp_path / "cups.y4m", [images / f"{i}.jpg" for i in CUPS])
    camera = browser.browser_type.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}"])
    try:
        page = camera.new_context(viewport={"width": 1400, "height": 1200}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        tab = AppTab(page, server.url).open()
        tab.go_to("Teach it new classes")
        for name in ("cup", "plate"):
            tab.main.get_by_label("New class", exact=True).fill(name)
            tab.act(tab.main.get_by_role("button", name="Add class").click)
            expect_count(tab, name, 0)

        # cup: one sample per click on the camera, then an example photo
        tab.act(tab.main.locator(".st-key-teach_from").get_by_text("Camera", exact=True).click)
        choose(tab, "teach_target", "cup")
        taken = []
        for n in range(1, SHOTS + 1):
            shoot(tab, taken)
            expect_count(tab, "cup", n)
        expect(tab.main.get_by_test_id("stAlertContentWarning")).to_have_count(0)
        tab.act(tab.main.locator(".st-key-teach_from").get_by_text("Example photos", exact=True).click)
        tab.main.locator(".st-key-teach_examples").click()
        page.get_by_role("option", name="coffee", exact=True).click()  # the list stays open: no rerun yet
        page.keyboard.press("Escape")
        tab.act(tab.main.get_by_role("button", name="Add these photos").click)
        expect_count(tab, "cup", SHOTS + 1)

        # plate: several photos in one upload
        choose(tab, "teach_target", "plate")
        tab.act(tab.main.locator(".st-key-teach_from").get_by_text("Upload", exact=True).click)
        dropzone = tab.main.get_by_test_id("stFileUploaderDropzoneInput")
        tab.act(lambda: dropzone.set_input_files([images / f"{i}.jpg" for i in PLATES]))
        expect_count(tab, "plate", len(PLATES))

        tab.act(tab.main.get_by_role("button", name="Teach", exact=True).click)
        n = SHOTS + 1 + len(PLATES)
        expect(tab.main.get_by_test_id("stAlertContentSuccess")).to_contain_text("Taught cup / plate")
        expect(tab.main.get_by_text(f"Held-out accuracy (leave-one-out, {n} samples)")).to_have_count(1)
        expect(tab.main.get_by_test_id("stPlotlyChart")).to_have_count(2)  # the two confusion matrices
        tab.wait_pictures_drawn()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "e2e_teach.png"), full_page=True)

        # the taught model, chosen in the sidebar, on Predict (the sidebar's photo: coffee, a training sample)
        tab.sidebar.locator(".st-key-model_source").get_by_role("button", name="Open").click()
        tab.act(page.get_by_role("option", name="Taught: cup / plate", exact=True).click)
        tab.go_to("Predict")
        ticks = tab.main.get_by_test_id("stPlotlyChart").first.locator(".ytick text")
        expect(ticks).to_have_text(["plate", "cup"])  # plotly lists the top bar last: cup first
        tab.go_to("Where it looks (Grad-CAM)")
        identity = tab.main.get_by_test_id("stAlertContentInfo").filter(has_text="Grad-CAM here is CAM")
        expect(identity).to_have_count(1)
        differ = re.search(r"differ by ([0-9.e+-]+) \(relative\)", identity.inner_text())
        assert differ and float(differ.group(1)) < 1e-4, identity.inner_text()  # measured on the page's photo
        assert tab.wait_pictures_drawn() > 0
        page.screenshot(path=str(SCREENSHOTS / "e2e_teach_gradcam.png"))
        shown = page.locator("[data-testid='stException']")
        assert shown.count() == 0, shown.first.inner_text()
        assert not tab.errors, tab.errors
    finally:
        camera.close()
