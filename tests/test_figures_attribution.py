"""The attribution figures: pure functions, checked on small arrays and one real photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import xviz
from xviz.attributions import DeletionCurve, RandomisationCheck
from xviz.figures import attribution as F
from xviz.figures import toolkit as T


@pytest.fixture(scope="module")
def seen(example_photos):
    return xviz.load_image(example_photos[0].read_bytes()).resize((60, 40))


def test_normalise_unsigned_and_signed():
    heat = np.array([[-2.0, 0.0], [1.0, 4.0]])
    assert np.allclose(F.normalise(heat), [[0, 0], [0.25, 1]])
    assert np.allclose(F.normalise(heat, signed=True), [[-0.5, 0], [0.25, 1]])
    spiky = np.ones((100, 100))
    spiky[0, 0] = 1000.0  # one extreme pixel must not wash out the rest
    assert F.normalise(spiky, percentile=99)[5, 5] == 1.0
    assert np.allclose(F.normalise(np.zeros((3, 3))), 0)  # an empty map stays empty, no division by 0


def test_overlay_blends_and_resizes(seen):
    heat = np.random.default_rng(0).random((5, 5))  # a coarse 5x5 Grad-CAM grid
    rgb = np.asarray(seen)
    assert np.array_equal(F.heatmap_overlay(seen, heat, alpha=0.0), rgb)
    full = F.heatmap_overlay(seen, heat, alpha=1.0, cmap="gray")
    assert full.shape == (40, 60, 3) and full.dtype == np.uint8
    assert np.allclose(full[..., 0], full[..., 1])  # gray colour map: no tint of the photo left
    half = F.heatmap_overlay(seen, heat, alpha=0.5).astype(int)
    colour = F.heatmap_overlay(seen, heat, alpha=1.0).astype(int)
    assert np.abs(half - (rgb + colour) / 2).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        F.heatmap_overlay(seen, heat, alpha=1.5)


def test_signed_maps_use_a_diverging_scale():
    heat = np.array([[-1.0, 0.0, 1.0]])
    rgb = F.heatmap_image(heat, signed=True).astype(int)
    blue, white, red = rgb[0]
    assert blue[2] > blue[0] and red[0] > red[2] and white.min() > 200


def test_heatmap_image_size():
    out = F.heatmap_image(np.arange(25.0).reshape(5, 5), cmap="inferno", size=150)
    assert out.shape == (150, 150, 3) and out.dtype == np.uint8


def test_side_by_side_layout():
    a = np.zeros((30, 40, 3), np.uint8)
    b = np.full((30, 40, 3), 255, np.uint8)
    out = F.side_by_side([a, b, a], ["Grad-CAM", "Saliency", ""], columns=2, pad=4, font_size=10)
    assert out.shape == (2 * (30 + 18 + 4) + 4, 2 * (40 + 4) + 4, 3)
    assert (out[4:4 + 18, 4:44] < 128).any()  # the first caption was drawn
    assert (out[4 + 18:4 + 18 + 30, 4:44] == 0).all()  # the first picture sits under it
    with pytest.raises(ValueError):
        F.side_by_side([])


def test_png_carries_its_settings():
    settings = {"method": "gradcam", "layer": "block14_sepconv2_act", "class": "coffee mug/cup", "alpha": 0.5}
    name = F.png_filename(settings)
    assert name == "xviz_method-gradcam_layer-block14_sepconv2_act_class-coffee-mug-cup_alpha-0.5.png"
    data = T.png_bytes(np.zeros((8, 8, 3), np.uint8), settings)
    img = Image.open(io.BytesIO(data))
    assert img.size == (8, 8) and img.text["xviz:layer"] == "block14_sepconv2_act"


def test_trust_figures():
    fr = np.linspace(0, 1, 5)
    curve = DeletionCurve(fr, np.array([0.9, 0.3, 0.2, 0.1, 0.1]), np.array([0.9, 0.8, 0.6, 0.3, 0.1]),
                          0.25, 0.55, 0)
    fig = F.deletion_figure(curve)
    assert [t.name for t in fig.data] == ["most relevant first (area 0.25)", "random order (area 0.55)"]
    check = RandomisationCheck("gradcam", ["head", "block14"], [0.4, float("nan")], np.zeros((2, 2)),
                               [np.zeros((2, 2))] * 2)
    fig = F.randomisation_figure(check)
    assert list(fig.data[0].y) == [0.4, None] and list(fig.data[0].x) == ["head", "…block14"]
    assert list(fig.data[1].x) == ["…block14"] and list(fig.data[1].text) == ["blank map"]  # marked, not a gap


def test_fade_leaves_irrelevant_pixels_untouched(seen):
    heat = np.zeros((40, 60))
    heat[10:20, 10:20] = 1.0
    rgb = np.asarray(seen)
    out = F.heatmap_overlay(seen, heat, alpha=0.8, fade=True)
    assert np.array_equal(out[30:, 40:], rgb[30:, 40:])  # zero relevance: the photo as it was
    assert not np.array_equal(out[12:18, 12:18], rgb[12:18, 12:18])
    signed = F.heatmap_overlay(seen, -heat, alpha=0.8, signed=True)  # fade is on by default for signed maps
    assert np.array_equal(signed[30:, 40:], rgb[30:, 40:])
