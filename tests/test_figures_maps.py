"""xviz.figures.maps: pure builders (sizes, dtypes, colours) and the bytes each view sends to the browser."""

import io

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from xviz import flows
from xviz.figures import maps as M
from xviz.figures import toolkit as T

VIEW_BUDGET = 2_000_000  # bytes sent to the browser per view (issue 4)
rng = np.random.default_rng(0)


def test_lut_and_colorize():
    table = T.lut("viridis")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    a = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    rgb = T.colorize(a)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == table[0]).all() and (rgb[1, 1] == table[255]).all()
    assert (T.colorize(np.full((3, 3), 5.0))[0, 0] == table[0]).all()  # a flat map doesn't divide by zero
    with pytest.raises(ValueError, match="unknown colormap"):
        T.lut("no-such-map")
    assert T.plotly_colorscale("gray")[0] == [0.0, "rgb(0,0,0)"]


def test_downsample_takes_box_means():
    a = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    small = M.downsample(a, 2, 3)
    np.testing.assert_allclose(small, a.reshape(2, 2, 2, 3, 2).mean(axis=(2, 4)))
    odd = M.downsample(rng.random((3, 147, 147)).astype(np.float32), 62, 62)
    assert odd.shape == (3, 62, 62)
    assert abs(odd.mean() - 0.5) < 0.01
    with pytest.raises(ValueError, match="only shrink"):
        M.downsample(a, 8, 8)


def test_channel_grid_layout_and_normalisation():
    maps = rng.normal(size=(128, 147, 147)).astype(np.float32)
    order = np.arange(128)[::-1]
    rgb, lay = M.channel_grid(maps, order, max_width=960)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[1] <= 960 and lay.downsampled and lay.tile < 147
    assert rgb.shape == (lay.rows * (lay.tile + lay.gap) - lay.gap, lay.cols * (lay.tile + lay.gap) - lay.gap, 3)
    assert lay.channels[0] == 127 and lay.cell_of(127) == (0, 0) and lay.cell_of(0) == divmod(127, lay.cols)
    # per channel: every tile reaches both ends of the colormap
    table = T.lut("viridis")
    first = rgb[: lay.tile, : lay.tile]
    assert (first == table[0]).all(axis=2).any() and (first == table[255]).all(axis=2).any()
    assert (rgb[lay.tile, 0] == 255).all()  # the gap row is white


def test_channel_grid_small_maps_are_enlarged_within_width():
    maps = rng.random((2048, 10, 10)).astype(np.float32)
    rgb, lay = M.channel_grid(maps, max_width=960)
    assert rgb.shape[1] <= 960 and not lay.downsampled and lay.rows * lay.cols >= 2048
    rgb, lay = M.channel_grid(maps[:16], max_width=960, min_tile=40)
    assert lay.tile == 40  # 10x10 maps drawn 4x larger, by whole pixels


def test_channel_grid_shared_scale_compares_channels():
    maps = np.stack([np.full((5, 5), 1.0), np.full((5, 5), 3.0)]).astype(np.float32)
    rgb, lay = M.channel_grid(maps, normalise="shared", vrange=(0.0, 3.0))
    table = T.lut("viridis")
    assert (rgb[0, 0] == table[85]).all() and (rgb[0, -1] == table[255]).all()
    with pytest.raises(ValueError, match="normalise"):
        M.channel_grid(maps, normalise="global")


def test_tiles_share_one_symmetric_scale():
    out = M.tiles([np.full((4, 4), -2.0), np.full((4, 4), 1.0)], side=40)
    assert [t.shape for t in out] == [(40, 40, 3), (40, 40, 3)]
    table = T.lut("RdBu_r")
    assert (out[0][0, 0] == table[0]).all() and (out[1][0, 0] == table[191]).all()


def test_channel_figure_sends_a_picture_not_pixels():
    values = rng.normal(size=(147, 147)).astype(np.float32)
    fig = M.channel_figure(values, title="t")
    image, heat = fig.data[0], fig.data[1]
    assert isinstance(image, go.Image) and image.source.startswith("data:image/png;base64,")
    assert image.z is None
    assert isinstance(heat, go.Heatmap) and np.asarray(heat.z).shape == (48, 48)  # coarse hover grid
    assert M.figure_bytes(fig) < 300_000
    small = rng.normal(size=(10, 10)).astype(np.float32)
    fig = M.channel_figure(small)
    np.testing.assert_allclose(np.asarray(fig.data[1].z), np.round(small, 4))  # exact hover values
    photo = rng.integers(0, 255, (299, 299, 3), dtype=np.uint8)
    fig = M.channel_figure(small, image=photo)
    assert fig.data[0].source.startswith("data:image/jpeg;base64,")


def test_overlay_blends():
    photo = np.full((30, 30, 3), 100, np.uint8)
    values = rng.random((5, 5)).astype(np.float32)
    assert (T.overlay(photo, values, alpha=0.0) == 100).all()
    full = T.overlay(photo, values, alpha=1.0)
    assert full.shape == (30, 30, 3) and full.dtype == np.uint8 and not (full == 100).all()
    with pytest.raises(ValueError, match="alpha"):
        T.overlay(photo, values, alpha=1.5)


def test_indexed_grid_is_the_rgb_grid_in_half_the_bytes():
    """The grid goes to the browser as an indexed PNG: it must decode to exactly the RGB picture
    (colormap ends and gap colour included), in fewer bytes."""
    maps = rng.normal(size=(64, 72, 72)).astype(np.float32)
    indices, palette, lay = M.channel_grid_indexed(maps, min_tile=64)
    rgb, lay_rgb = M.channel_grid(maps, min_tile=64)
    assert lay == lay_rgb and indices.dtype == np.uint8 and palette.shape == (256, 3)
    assert np.array_equal(palette[indices], rgb)
    table = T.lut("viridis")
    assert (palette[0] == table[0]).all() and (palette[M.LEVELS - 1] == table[255]).all()
    assert (palette[M.GAP_INDEX] == M.GAP_COLOUR).all() and indices[lay.tile, 0] == M.GAP_INDEX
    png = T.png_bytes(indices, palette=palette)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded.convert("RGB")), rgb)
    assert len(png) < 0.75 * len(T.png_bytes(rgb))
    with pytest.raises(ValueError, match="indexed"):
        T.png_bytes(rgb, palette=palette)


def test_png_bytes_round_trip():
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(T.png_bytes(rgb))))
    assert np.array_equal(back, rgb)
    with pytest.raises(ValueError, match="uint8"):
        T.png_bytes(rgb.astype(np.float32))


def test_size_strip_and_architecture_diagram(kitchenware):
    stages = flows.size_stages(flows.layer_table(kitchenware, 299), 299)
    fig = M.size_strip(stages, highlight="block4")
    assert len(fig.layout.shapes) == len(stages) and M.figure_bytes(fig) < 50_000
    arch = flows.architecture(kitchenware, 299)
    fig = M.architecture_diagram(arch, highlight="block7")
    clickable = fig.data[-1]
    assert list(clickable.customdata) == [f"block{i}" for i in range(1, 15)]
    assert M.figure_bytes(fig) < 200_000


@pytest.fixture(scope="module")
def cap299(kitchenware, photo):
    m = kitchenware.with_input_size(299)
    return flows.capture_views(m, m.preprocess(photo))


def test_busiest_views_fit_the_payload_budget(cap299, kitchenware):
    """The heaviest views at 299 px: block2 (128 channels of 147×147) on the Feature maps page, and
    block2_sepconv2 on the Separable page, counting every image and figure each one sends."""
    cap = cap299
    layer = "block2_sepconv2_act"
    values = cap.map(layer)
    grid, palette, _ = M.channel_grid_indexed(values, flows.channel_order(values, "mean"), normalise="channel")
    fig = M.channel_figure(values[0], image=cap.image)
    rv = flows.residual_view(cap, "block2")
    tiles = M.tiles([rv.input[0], rv.branch[0], rv.shortcut[0], rv.total[0]], side=200)
    strip = M.size_strip(flows.size_stages(flows.layer_table(kitchenware, 299), 299))
    feature_maps = (len(T.png_bytes(grid, palette=palette)) + M.figure_bytes(fig) + M.figure_bytes(strip)
                    + sum(len(T.png_bytes(t)) for t in tiles))
    assert feature_maps <= VIEW_BUDGET, feature_maps

    anat = flows.separable_anatomy(kitchenware, cap, "block2_sepconv2")
    n = 64
    grids = [M.channel_grid_indexed(anat.inputs[:n], max_width=400, min_tile=56),
             M.channel_grid_indexed(anat.kernels[:n], normalise="shared", cmap="RdBu_r", max_width=200, min_tile=30),
             M.channel_grid_indexed(anat.depthwise[:n], max_width=400, min_tile=56),
             M.channel_grid_indexed(anat.pointwise, flows.channel_order(anat.pointwise, "mean")[:128])]
    con = flows.pointwise_contributions(anat, 0, k=12)
    tiles = M.tiles(list(con.top_maps), side=112) + M.tiles([con.rest, con.reconstruction, con.output], side=112)
    separable = sum(len(T.png_bytes(g, palette=p)) for g, p, _ in grids) + sum(len(T.png_bytes(t)) for t in tiles)
    assert separable <= VIEW_BUDGET, separable
