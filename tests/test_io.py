"""memseg.data.io: decoding every image mode, masks, tensors, and clear errors for bad files."""

from __future__ import annotations

import io as pyio
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from memseg.data.io import (
    DECODE_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    bounded_size,
    is_image_file,
    load_image,
    load_mask,
    pil_to_rgb_array,
    to_tensor,
    to_uint8_tensor,
)


def _gradient(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = pyio.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".TIFF", ".PNG"])
def test_rgb_round_trip_is_exact_for_lossless_formats(tmp_path: Path, suffix: str) -> None:
    arr = _gradient(7, 11)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(path, format={".png": "PNG", ".bmp": "BMP"}.get(suffix.lower(), "TIFF"))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_loads_close_to_source(tmp_path: Path) -> None:
    arr = np.full((16, 24, 3), (200, 100, 50), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.JPG", quality=95)
    out = load_image(tmp_path / "a.JPG")
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - arr).max() <= 4


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (6, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 40)
    rgba[0, :, 3] = [0, 128, 255]
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # fully transparent -> black
    np.testing.assert_array_equal(out[0, 2], [200, 100, 40])  # opaque -> unchanged
    np.testing.assert_allclose(out[0, 1], np.array([200, 100, 40]) * 128 / 255, atol=1)
    np.testing.assert_array_equal(out[1], np.tile([200, 100, 40], (3, 1)))


def test_la_is_composited_on_black(tmp_path: Path) -> None:
    la = np.zeros((1, 2, 2), np.uint8)
    la[..., 0] = 180
    la[0, :, 1] = [0, 255]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [180, 180, 180])


def test_palette_image_is_expanded(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1, 2, 1, 0, 0])
    img.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 255])
    np.testing.assert_array_equal(out[1, 3], [0, 0, 0])


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 255, 255, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    img.info["transparency"] = 1  # index 1 is transparent
    img.save(tmp_path / "pt.png", transparency=1)
    out = load_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_16bit_png_is_scaled_by_its_actual_bit_range(tmp_path: Path) -> None:
    # a 12-bit sensor image stored in 16 bits: max 4095 must map to 255, not to 16
    values = np.array([[0, 1024, 2048, 4095]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d12.png")
    assert Image.open(tmp_path / "d12.png").mode in ("I;16", "I")
    out = load_image(tmp_path / "d12.png")
    np.testing.assert_array_equal(out[0, :, 0], np.round(values[0].astype(np.float64) * 255 / 4095).astype(np.uint8))
    # full 16-bit range
    full = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(full).save(tmp_path / "d16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "d16.png")[0, :, 1], [0, 128, 255])


def test_16bit_big_endian_and_int32_modes() -> None:
    big = Image.frombytes("I;16B", (3, 1), np.array([0, 512, 1023], ">u2").tobytes())
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(pil_to_rgb_array(big)[0, :, 0], [0, 128, 255])  # 10-bit range
    i32 = Image.fromarray(np.array([[0, 100, 255]], np.int32), mode="I")
    np.testing.assert_array_equal(pil_to_rgb_array(i32)[0, :, 2], [0, 100, 255])  # fits 8 bits: unchanged
    neg = Image.fromarray(np.array([[-10, 0, 10]], np.int32), mode="I")
    np.testing.assert_array_equal(pil_to_rgb_array(neg)[0, :, 0], [0, 128, 255])  # min-max stretch


def test_float_tiff_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, np.nan]], np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255], [64, 191, 0]])
    wide = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], np.float32), mode="F")
    np.testing.assert_array_equal(pil_to_rgb_array(wide)[0, :, 0], [0, 64, 255])


def test_non_square_image_keeps_height_and_width(tmp_path: Path) -> None:
    arr = _gradient(30, 50)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png")
    assert out.shape == (30, 50, 3)
    x = to_tensor(out, (20, 40))
    assert x.shape == (3, 20, 40) and x.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- tensors


def test_to_tensor_scales_to_unit_range_and_resizes_with_antialias() -> None:
    arr = _gradient(16, 16)
    x = to_tensor(arr)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    # downscaling a fine checkerboard with antialias averages it to grey (no aliasing)
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)
    y = to_tensor(np.repeat(checker[..., None], 3, axis=2), 8)
    assert y.shape == (3, 8, 8)
    assert torch.allclose(y, torch.full_like(y, 0.5), atol=0.02)
    assert y.min() >= 0 and y.max() <= 1
    u8 = to_uint8_tensor(arr, (8, 4))
    assert u8.dtype == torch.uint8 and u8.shape == (3, 8, 4)


def test_to_tensor_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), np.float32))



# ---------------------------------------------------------------------------------------------- masks


def test_mask_is_binarised_above_zero_and_resized_nearest(tmp_path: Path) -> None:
    m = np.zeros((8, 12), np.uint8)
    m[2:6, 3:9] = 255
    m[0, 0] = 1  # any value > 0 counts
    Image.fromarray(m).save(tmp_path / "m.png")
    full = load_mask(tmp_path / "m.png")
    assert full.dtype == bool and full.shape == (8, 12)
    np.testing.assert_array_equal(full, m > 0)
    half = load_mask(tmp_path / "m.png", size=(4, 6))
    assert half.shape == (4, 6) and half.dtype == bool
    # nearest neighbour with pixel-centre sampling: output pixel i reads source pixel 2i + 1
    np.testing.assert_array_equal(half, (m > 0)[1::2, 1::2])
    up = load_mask(tmp_path / "m.png", size=(16, 24))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(m > 0, 2, 0), 2, 1))


def test_colour_and_palette_masks(tmp_path: Path) -> None:
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[1, 1] = (0, 0, 9)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").sum() == 1 and load_mask(tmp_path / "rgb.png")[1, 1]
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 drawn white: index counts
    pal.putdata([0, 1, 0])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "pal.png"), [[False, True, False]])


# ---------------------------------------------------------------------------------------------- bad files


def test_is_image_file_is_case_insensitive() -> None:
    assert is_image_file("a.PNG") and is_image_file("b.TiFf") and is_image_file("c.jpeg") and is_image_file("d.Bmp")
    assert not is_image_file("notes.txt") and not is_image_file("x.gif") and not is_image_file("png")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png.*empty \(0 bytes\).*expected an image"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="empty"):
        load_mask(path)


def test_truncated_png_is_detected(tmp_path: Path) -> None:
    data = _png_bytes(_gradient(64, 64))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.png.*truncated or corrupt"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # we never switch Pillow's lenient mode on


def test_truncated_jpeg_is_detected(tmp_path: Path) -> None:
    buf = pyio.BytesIO()
    Image.fromarray(_gradient(64, 64)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:600])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg"):
        load_image(path)


def test_corrupt_bytes_and_non_image_with_image_suffix(tmp_path: Path) -> None:
    corrupt = tmp_path / "noise.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match=r"noise\.png.*expected an image file"):
        load_image(corrupt)
    text = tmp_path / "notes.jpg"
    text.write_text("these are my notes, not a picture\n")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg.*not a recognised image"):
        load_image(text)
    # a broken PNG body: valid signature and header, garbage after
    data = bytearray(_png_bytes(_gradient(32, 32)))
    data[60:120] = bytes(60)
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match=r"broken\.png"):
        load_image(broken)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.png"):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path / "folder.png")


def test_image_load_error_is_a_value_error() -> None:
    assert issubclass(ImageLoadError, ValueError)


# ------------------------------------------------------------------ large images: bounded decode
def test_bounded_size_keeps_the_aspect_ratio_and_small_sizes() -> None:
    assert bounded_size(8000, 6000, DECODE_MAX_PIXELS) == (2309, 1732)
    assert bounded_size(1024, 1024, DECODE_MAX_PIXELS) == (1024, 1024)  # MVTec AD: untouched
    w, h = bounded_size(10_000, 100, 500_000)
    assert (w, h) == (7071, 70) and w * h <= 500_000  # floored: never above the bound


def test_large_jpeg_is_decoded_downscaled_through_draft_mode(tmp_path: Path) -> None:
    """An 8000x6000 JPEG comes back bounded; draft mode means the decoder never made the full image."""
    img = np.zeros((6000, 8000, 3), np.uint8)
    img[:3000] = (200, 40, 40)  # top half red
    path = tmp_path / "big.jpg"
    Image.fromarray(img).save(path, quality=80)
    with Image.open(path) as probe:  # what draft mode does for this target: decode at 1/2 scale
        probe.draft(None, bounded_size(8000, 6000, DECODE_MAX_PIXELS))
        assert probe.size == (4000, 3000)
    out = load_image(path, max_decoded_pixels=DECODE_MAX_PIXELS)
    assert out.shape == (1732, 2309, 3)
    assert np.abs(out[:800].astype(int) - (200, 40, 40)).max() < 12 and out[950:].max() < 12


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "I;16"])
def test_every_mode_is_downscaled_before_conversion(tmp_path: Path, mode: str) -> None:
    """The bounded decode resizes in the file's own mode; the conversion rules still hold afterwards."""
    h, w = 300, 400
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    if mode == "I;16":
        arr = np.where(left, 4095, 0).astype(np.uint16)  # a 12-bit sensor image: white stays white
        pil = Image.fromarray(arr)
    elif mode == "1":
        pil = Image.fromarray(left)
    else:
        rgb = np.where(left[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
        pil = Image.fromarray(rgb).convert(mode) if mode != "P" else Image.fromarray(rgb).quantize(2)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    pil.save(path)
    out = load_image(path, max_decoded_pixels=10_000)
    assert out.shape == (86, 115, 3) and out.dtype == np.uint8
    assert out[:, :50].min() >= 250 and out[:, 65:].max() <= 5


def test_max_pixels_refuses_large_images_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(path)
    with pytest.raises(ImageTooLargeError, match=rf"{path}: 300x100 = 0.0 Mpx is above the limit of 0.02 Mpx"):
        load_image(path, max_pixels=20_000)
    assert load_image(path, max_pixels=30_000).shape == (100, 300, 3)
