"""Small helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def rel_err(ours, reference) -> float:
    """Largest absolute difference relative to the reference's largest magnitude.

    The issue's fidelity budget (<= 1e-4 vs Keras) is stated in this unit: element-wise relative
    error is meaningless for activations near zero, which post-ReLU maps are full of.
    """
    a, b = as_numpy(ours), as_numpy(reference)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    scale = float(np.abs(b).max())
    assert scale > 0, "reference is all zeros: relative error undefined"
    return float(np.abs(a - b).max()) / scale


def start_app(page: str | None = None, *, query: dict | None = None, timeout: float = 240,
              **session) -> AppTest:
    """app.py run once in AppTest (the frame: sidebar, navigation), then ``page`` if given.

    ``session``: session-state values set before the first run (``model_source="kitchenware"``);
    ``query``: URL query parameters for the page. ``timeout`` is per run and generous because the
    first run loads the model on a shared machine; a passing run never waits for it.
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page is None:
        return at
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.switch_page(page).run()


def mentions(texts, *parts: str) -> bool:
    """Does one of ``texts`` mention every one of ``parts`` (numbers, names), in any wording?"""
    if isinstance(texts, str):
        texts = [texts]
    return any(all(p in t for p in parts) for t in texts)


def image_captions(at: AppTest) -> list[str]:
    """The captions of every image the run drew (``st.image`` with one or several pictures)."""
    return [c for kind in ("image", "imgs") for img in at.get(kind) for c in img.captions]


def image_formats(at: AppTest) -> dict[str, str]:
    """{caption: file extension} of every picture the run drew: which encoding Streamlit sent."""
    return {img.caption: img.url.rsplit(".", 1)[-1] for kind in ("image", "imgs") for el in at.get(kind)
            for img in el.proto.imgs}


def uploader(at: AppTest, name: str):
    """The sidebar's uploader ``name`` (``xviz.ui.uploads.PHOTO``, ``WEIGHTS``) under its current key:
    each refused file re-keys it (``name_1``, ``name_2``, ...) to empty it."""
    found = [u for u in at.sidebar.file_uploader if re.fullmatch(rf"{re.escape(name)}(_\d+)?", u.key or "")]
    assert len(found) == 1, [u.key for u in at.sidebar.file_uploader]
    return found[0]
