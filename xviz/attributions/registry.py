"""The registry the page and notebooks use: every method of xviz.attributions as :class:`Method`
(:data:`METHODS`), and :func:`attribute`, which calls one by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .ig import integrated_gradients
from .methods import DEFAULT_LAYER, ProgressFn, gradcam, guided_gradcam, occlusion, saliency, smoothgrad


def _ig_map(m, x, target=None, **options) -> torch.Tensor:
    """The map alone, for :func:`attribute`; :func:`integrated_gradients` also says how well it adds up."""
    return integrated_gradients(m, x, target, **options).map


@dataclass(frozen=True)
class Method:
    """One attribution method as the app presents it."""

    name: str  # key for attribute() and cache keys
    title: str  # what the page shows
    fn: Callable[..., torch.Tensor]
    uses_layer: bool  # takes layer= (Grad-CAM family)
    signed: bool  # the map can be negative (evidence against the class)
    slow: bool  # many passes: show progress
    summary: str  # one sentence for students


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", gradcam, True, False, False,
           "Weights each channel of a layer by how much the class score rises with it, then keeps the "
           "positive evidence: coarse, but about this class."),
    Method("guided_gradcam", "Guided Grad-CAM", guided_gradcam, True, False, False,
           "Grad-CAM times guided backpropagation: pixel-sharp edges inside the Grad-CAM region."),
    Method("saliency", "Saliency (gradient)", saliency, False, False, False,
           "How much each pixel would change the class score if nudged: sharp but noisy."),
    Method("smoothgrad", "SmoothGrad", smoothgrad, False, False, True,
           "Saliency averaged over noisy copies of the image: the noise cancels, the object stays."),
    Method("integrated_gradients", "Integrated Gradients", _ig_map, False, True, True,
           "Adds up gradients along a path from a grey image to yours: the pixels' shares of the score."),
    Method("occlusion", "Occlusion", occlusion, False, True, True,
           "Greys out one square at a time and measures how much the class score drops: slow, but "
           "uses no gradients at all."),
)}


def attribute(m, x, target: int | str | None = None, method: str = "gradcam", *, layer: str = DEFAULT_LAYER,
              progress: ProgressFn | None = None, **options) -> torch.Tensor:
    """Any method of :data:`METHODS` by name; ``layer`` goes to the methods that use one.

    Args:
        m, x, target: as in :func:`gradcam`.
        method: a key of :data:`METHODS`.
        layer: for Grad-CAM and Guided Grad-CAM.
        progress: called with (done, total) as the method advances.
        **options: the method's own keywords (``steps=``, ``window=``, ``batch_size=`` ...).

    Returns:
        (H, W) float32 CPU tensor; see ``METHODS[method].signed``.

    Example:
        >>> heat = xviz.attributions.attribute(m, m.preprocess(img), "cup", "occlusion", window=30)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.uses_layer:
        options["layer"] = layer
    return spec.fn(m, x, target, progress=progress, **options)
