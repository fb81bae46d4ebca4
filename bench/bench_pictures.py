"""Cheaper pictures: bytes sent and milliseconds of encoding per view, before and after issue 11.

    python bench/bench_pictures.py

Before, ``st.image`` got arrays and PIL images, which Streamlit encodes as JPEG at quality 100 on
every rerun (``streamlit/elements/lib/image_utils.py``: ``_pil_to_bytes(..., quality=100)``), and the
Grad-CAM and channel download buttons encoded a PNG on every rerun whether or not anyone clicked.
After: photos and overlays are JPEG at quality 88 (``xviz.figures.toolkit.jpeg_bytes``), the photo is
encoded once per image (``ui.cache.photo_jpeg``), downloads are encoded on click (a callable).

The channel grid of the Feature maps page was encoded once as an RGB PNG and cached; but given bytes
and no ``output_format``, ``st.image`` guesses JPEG for any picture without alpha, so it decoded that
PNG and encoded a JPEG at quality 90 on every rerun (lossy, too: ringing around every enlarged map
pixel). Now the grid is an indexed PNG (255 colormap steps and the gap colour: one byte a pixel to
compress, exact), sent as it is.

Measured on a real kitchenware photo with the demo model (150 px; Grad-CAM overlay drawn at 448 px;
the grid is the page's first view, block1_conv2_act's 64 channels); ratios of medians measured side
by side.
"""

from __future__ import annotations

import dataclasses
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import xviz  # noqa: E402
from bench.common import bench_model, row  # noqa: E402
from xviz import attributions as A  # noqa: E402
from xviz import flows  # noqa: E402
from xviz import weights as W  # noqa: E402
from xviz.figures import attribution as F  # noqa: E402
from xviz.figures import maps as M  # noqa: E402
from xviz.figures import toolkit as T  # noqa: E402


def _streamlit_jpeg(picture) -> bytes:
    """What st.image does with an array or PIL image (auto format, no alpha): JPEG at quality 100."""
    img = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def _streamlit_reencoded(png: bytes) -> bytes:
    """What st.image did with PNG bytes and no output_format: decode, then JPEG at quality 90."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _median_ms(fn, repeat: int = 7) -> tuple[float, int]:
    """(median ms, bytes) of ``fn``; ``repeat=0``: its bytes only, as work done once and reused (0 ms)."""
    out, times = fn(), [0.0]
    if repeat:
        times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, sum(len(b) for b in out)


def views() -> dict[str, tuple[tuple[float, int], tuple[float, int]]]:
    """{view: ((ms, bytes) per rerun before, (ms, bytes) per rerun after)}."""
    kdir = W.kitchenware_dir()
    path = (sorted((kdir / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))[0] if kdir
            else ROOT / "xviz" / "data" / "examples" / "coffee.jpg")
    photo = xviz.load_image(path.read_bytes())
    m = bench_model(150)
    heat = A.gradcam(m, m.preprocess(photo)).numpy()
    seen = dataclasses.replace(m.preprocessing, size=448, resize="bilinear").resized(photo)  # as the view draws it
    overlay = F.heatmap_overlay(seen, heat, alpha=0.5, cmap="jet")
    settings = {"method": "gradcam", "size": 150}
    shown_photo = T.jpeg_bytes(photo, max_side=1024)  # encoded once per image, then reused
    values = flows.capture_views(m, m.preprocess(photo)).map("block1_conv2_act")
    rgb, _ = M.channel_grid(values, min_tile=64)
    indices, palette, _ = M.channel_grid_indexed(values, min_tile=64)
    grid_rgb_png = T.png_bytes(rgb)
    return {
        "Predict photo": (_median_ms(lambda: [_streamlit_jpeg(photo)]), _median_ms(lambda: [shown_photo])),
        "Grad-CAM overlay + download": (
            _median_ms(lambda: [_streamlit_jpeg(overlay), T.png_bytes(overlay, settings)]),
            _median_ms(lambda: [T.jpeg_bytes(overlay)], repeat=0)),  # drawn once (ui.drawn), then reused
        "Feature-map grid, first view": (_median_ms(lambda: [T.png_bytes(rgb)]),
                                         _median_ms(lambda: [T.png_bytes(indices, palette=palette)])),
        # after: the cached PNG goes out as it is (no work; the bytes of the first view)
        "Feature-map grid, each rerun": (_median_ms(lambda: [_streamlit_reencoded(grid_rgb_png)]),
                                         _median_ms(lambda: [T.png_bytes(indices, palette=palette)], repeat=0)),
    }


def rows() -> list[dict]:
    out = []
    for view, ((ms0, b0), (ms1, b1)) in views().items():
        lossless = view.startswith("Feature-map grid, each")  # JPEG's smaller file was a lossy copy: no budget
        out.append(row(f"pictures: {view}, bytes per view after / before", b1 / b0, "x", None if lossless else 1.0,
                       note=f"{b0 / 1024:.0f} kB -> {b1 / 1024:.0f} kB"
                            + (" (lossy JPEG before, the exact PNG now)" if lossless else "")))
        out.append(row(f"pictures: {view}, encoding ms per rerun after / before", ms1 / max(ms0, 1e-9), "x", 1.0,
                       note=f"{ms0:.1f} ms -> {ms1:.1f} ms"))
    return out


if __name__ == "__main__":
    from bench.run import print_table

    print_table(rows())
