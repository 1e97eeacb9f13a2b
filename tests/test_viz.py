"""memseg.viz: colormap, heat map, overlay, mask outline, uint8 conversion."""

from __future__ import annotations

import numpy as np
import pytest

from memseg.viz import colormap_lut, heatmap, mask_outline, overlay, to_uint8


def test_jet_lut_matches_matplotlib():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib comes with the notebooks extra")
    ref = np.round(matplotlib.colormaps["jet"](np.arange(256))[:, :3] * 255)
    lut = colormap_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert np.abs(lut.astype(int) - ref).max() <= 1  # rounding at .5 only


def test_other_colormap_from_matplotlib_and_unknown_name():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib comes with the notebooks extra")
    ref = np.round(np.asarray(matplotlib.colormaps["inferno"].colors) * 255)
    assert np.array_equal(colormap_lut("inferno").astype(int), ref.astype(int))
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colormap_lut("nope")


def test_heatmap_colours_low_blue_high_red_and_clips():
    amap = np.array([[0.0, 0.5, 1.0, 7.0, -3.0]], np.float32)
    rgb = heatmap(amap)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    lo, mid, hi, above, below = rgb[0]
    assert lo[2] > 100 and lo[0] == 0  # dark blue
    assert hi[0] > 100 and hi[2] == 0  # dark red
    assert mid[1] > 200  # greenish middle
    assert np.array_equal(above, hi) and np.array_equal(below, lo)
    # monotone position in the LUT: heatmap(x) == lut[round(255 x)]
    x = np.linspace(0, 1, 11, dtype=np.float32)[None]
    assert np.array_equal(heatmap(x)[0], colormap_lut()[np.round(x[0] * 255).astype(int)])


def test_heatmap_accepts_torch_with_batch_dims_and_rejects_nan():
    torch = pytest.importorskip("torch")
    amap = torch.rand(1, 1, 6, 7)
    assert heatmap(amap).shape == (6, 7, 3)
    with pytest.raises(ValueError, match="NaN"):
        heatmap(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"shaped \(H, W\)"):
        heatmap(np.zeros((2, 3, 4)))


def test_overlay_blends_and_resizes():
    image = np.full((40, 60, 3), 200, np.uint8)
    amap = np.ones((10, 15), np.float32)  # smaller than the image: resized
    out = overlay(image, amap, alpha=0.25)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    red = colormap_lut()[255].astype(float)
    expected = np.round(0.75 * 200 + 0.25 * red).astype(np.uint8)
    assert np.array_equal(out[20, 30], expected)
    assert np.array_equal(overlay(image, amap, alpha=0.0), image)
    assert np.array_equal(overlay(image, amap, alpha=1.0)[0, 0], colormap_lut()[255])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, amap, alpha=1.5)


def test_overlay_resized_map_keeps_spatial_layout():
    image = np.zeros((64, 64, 3), np.uint8)
    amap = np.zeros((8, 8), np.float32)
    amap[:, 4:] = 1.0  # right half hot
    out = overlay(image, amap, alpha=1.0)
    assert out[32, 60, 0] > out[32, 3, 0]  # red on the right
    assert out[32, 3, 2] > out[32, 60, 2]  # blue on the left


def test_overlay_accepts_float_chw_and_grey_images():
    torch = pytest.importorskip("torch")
    img = torch.full((3, 8, 8), 0.5)
    out = overlay(img, np.zeros((8, 8)), alpha=0.0)
    assert out.shape == (8, 8, 3) and (out == 128).all()
    grey = np.full((8, 8), 10, np.uint8)
    assert overlay(grey, np.zeros((8, 8)), alpha=0.0).shape == (8, 8, 3)


def test_mask_outline_draws_boundary_only():
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = mask_outline(image, mask, color=(0, 255, 0))
    drawn = (out == [0, 255, 0]).all(-1)
    ring = mask & ~np.pad(np.ones((8, 8), bool), 6)  # the 1-pixel inner ring of the 10x10 square
    assert np.array_equal(drawn, ring)
    assert image.sum() == 0  # input untouched
    thick = (mask_outline(image, mask, thickness=2) == [255, 0, 0]).all(-1)
    assert thick.sum() == 10 * 10 - 6 * 6


def test_mask_outline_resizes_mask_nearest():
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    drawn = (mask_outline(image, mask) == [255, 0, 0]).all(-1)
    ys, xs = np.nonzero(drawn)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 29, 10, 29)
    with pytest.raises(ValueError, match="color"):
        mask_outline(image, mask, color=(300, 0, 0))


def test_to_uint8_conversions():
    torch = pytest.importorskip("torch")
    chw = torch.tensor([[[0.0, 1.0]], [[0.5, 2.0]], [[-1.0, 0.25]]])  # (3, 1, 2)
    out = to_uint8(chw)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 128, 0] and out[0, 1].tolist() == [255, 255, 64]
    assert to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    assert to_uint8(np.zeros((1, 4, 5))).shape == (4, 5)
    u = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert to_uint8(u) is u
    assert to_uint8(np.array([[3, 200]], np.int64)).tolist() == [[3, 200]]
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_uint8(np.array([[0, 4095]], np.uint16))
    with pytest.raises(ValueError, match="one image"):
        to_uint8(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([[np.nan]]))
