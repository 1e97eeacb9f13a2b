"""memseg.data.datasets: MVTec AD / BTAD / folder layouts on tiny fakes, the synthetic set and real tire data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_N_TEST, SYNTHETIC_N_TRAIN
from PIL import Image

from memseg.data.datasets import (
    AnomalyDataset,
    Record,
    detect_layout,
    find_records,
    list_categories,
    load_split,
)
from memseg.data.io import ImageLoadError


def _img(path: Path, value: int = 128, hw: tuple[int, int] = (20, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((*hw, 3), value, np.uint8)
    arr[0, 0] = (value + 1) % 256  # not completely flat
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _mask(path: Path, box: tuple[int, int, int, int] = (5, 10, 8, 20), hw: tuple[int, int] = (20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(hw, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    Image.fromarray(m).save(path)
    return path


def make_mvtec(root: Path, category: str = "thing") -> Path:
    """train/good 4, test/good 2, test/crack 2, test/scratch 1 (+ masks) and some clutter."""
    cat = root / category
    for i in range(4):
        _img(cat / "train" / "good" / f"{i:03d}.png", 100 + i)
    (cat / "train" / "good" / "readme.txt").write_text("not an image")
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01")
    for i in range(2):
        _img(cat / "test" / "good" / f"{i:03d}.png", 90)
        _img(cat / "test" / "crack" / f"{i:03d}.png", 60)
        _mask(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    _img(cat / "test" / "scratch" / "000.png", 50)
    _mask(cat / "ground_truth" / "scratch" / "000_mask.png", box=(0, 2, 0, 2))
    (cat / "license.txt").write_text("x")
    return root


# ---------------------------------------------------------------------------------------------- MVTec


def test_mvtec_layout_with_test_and_good_in_the_data_root(tmp_path: Path) -> None:
    # the root itself contains "test" and "good": labels and mask paths must come from the layout
    root = make_mvtec(tmp_path / "test" / "good_stuff" / "ground_truth")
    assert detect_layout(root, "thing") == "mvtec"
    assert list_categories(root) == ["thing"]

    train = load_split(root, "thing", "train", size=(16, 24))
    assert len(train) == 4 and train.labels == [0] * 4 and set(train.defects) == {"good"}
    assert [Path(p).name for p in train.paths] == ["000.png", "001.png", "002.png", "003.png"]

    test = load_split(root, "thing", "test", size=(16, 24))
    assert [(r.defect, r.image_path.name, r.label) for r in test.records] == [
        ("crack", "000.png", 1), ("crack", "001.png", 1), ("good", "000.png", 0), ("good", "001.png", 0),
        ("scratch", "000.png", 1),
    ]
    for r in test.records:
        if r.label:
            assert r.mask_path == root / "thing" / "ground_truth" / r.defect / f"{r.image_path.stem}_mask.png"
        else:
            assert r.mask_path is None
    assert test.has_masks


def test_items_have_contract_shapes_and_values(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    test = load_split(root, "thing", "test", size=(10, 15))  # half of 20x30, non-square
    item = test[0]
    assert set(item) == {"image", "mask", "label", "defect", "path"}
    assert item["image"].shape == (3, 10, 15) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 10, 15) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    # rows 5:10, cols 8:20 of 20x30; halved with nearest (output i reads source 2i + 1): rows 2..4, cols 4..9
    expected = np.zeros((10, 15), bool)
    expected[2:5, 4:10] = True
    np.testing.assert_array_equal(item["mask"][0].numpy() > 0, expected)
    assert item["label"] == 1 and item["defect"] == "crack" and item["path"].endswith("crack/000.png")
    good = test[2]
    assert good["label"] == 0 and good["defect"] == "good" and good["mask"].sum() == 0
    # the value written (60) comes back through the [0, 1] scaling
    assert abs(float(item["image"][:, 5, 5].mean()) - 60 / 255) < 1e-3


def test_load_images_and_masks_cache(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    test = load_split(root, "thing", "test", size=(8, 12))
    cache = test.load_images(progress=False)
    assert cache.dtype == torch.uint8 and cache.shape == (5, 3, 8, 12)
    for i in range(len(test)):
        ref = (test[i]["image"] * 255).round().to(torch.uint8)
        assert torch.equal(cache[i], ref)
    sub = test.load_images(indices=[4, 0], progress=False)
    assert torch.equal(sub[0], cache[4]) and torch.equal(sub[1], cache[0])
    masks = test.load_masks(progress=False)
    assert masks.shape == (5, 1, 8, 12) and masks.dtype == torch.uint8
    assert [int(m.sum() > 0) for m in masks] == test.labels


def test_uppercase_suffixes_and_sorting(tmp_path: Path) -> None:
    cat = tmp_path / "c"
    _img(cat / "train" / "good" / "b.PNG", fmt="PNG")
    _img(cat / "train" / "good" / "a.JPEG", fmt="JPEG")
    _img(cat / "train" / "good" / "c.Tif", fmt="TIFF")
    _img(cat / "train" / "good" / "d.BMP", fmt="BMP")
    (cat / "train" / "good" / "e.gif").write_bytes(b"GIF89a")  # not an accepted suffix: ignored
    train = load_split(tmp_path, "c", "train", size=8)
    assert [Path(p).name for p in train.paths] == ["a.JPEG", "b.PNG", "c.Tif", "d.BMP"]
    assert train.load_images(progress=False).shape == (4, 3, 8, 8)


# ---------------------------------------------------------------------------------------------- BTAD


def make_btad(root: Path) -> Path:
    for cat, img_fmt, mask_suffix in (("01", "BMP", ".png"), ("03", "BMP", ".bmp")):
        for i in range(3):
            _img(root / cat / "train" / "ok" / f"{i:04d}.bmp", 120, fmt=img_fmt)
        _img(root / cat / "test" / "ok" / "0000.bmp", 120, fmt=img_fmt)
        for i in range(2):
            _img(root / cat / "test" / "ko" / f"{i:04d}.bmp", 30, fmt=img_fmt)
            _mask(root / cat / "ground_truth" / "ko" / f"{i:04d}{mask_suffix}", box=(2, 4, 2, 4))
    return root


def test_btad_layout(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad")
    assert list_categories(root) == ["01", "03"]
    assert list_categories(root, layout="btad") == ["01", "03"]
    assert list_categories(root, layout="mvtec") == []
    for cat, mask_suffix in (("01", ".png"), ("03", ".bmp")):
        assert detect_layout(root, cat) == "btad"
        train = load_split(root, cat, "train", size=16)
        assert len(train) == 3 and train.defects == ["good"] * 3
        test = load_split(root, cat, "test", size=16)
        assert test.labels == [1, 1, 0] and test.defects == ["ko", "ko", "good"]
        assert [r.mask_path.name if r.mask_path else None for r in test.records] == [
            f"0000{mask_suffix}", f"0001{mask_suffix}", None]
        assert test[0]["mask"].sum() > 0 and test[2]["mask"].sum() == 0


def test_btad_missing_mask_names_the_expected_file(tmp_path: Path) -> None:
    root = make_btad(tmp_path)
    (root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ground_truth/ko/0001\.png"):
        load_split(root, "01", "test")


# ---------------------------------------------------------------------------------------------- folder


def test_folder_layout_variants(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for i in range(3):
        _img(root / "flat" / f"img{i}.jpg", fmt="JPEG")  # images directly in the category folder
        _img(root / "goodies" / "good" / f"{i}.png")  # in good/
        _img(root / "parts" / "train" / f"{i}.png")  # in train/
    _img(root / "parts" / "test" / "good" / "g.png")
    _img(root / "parts" / "test" / "dent" / "d1.png", 10)
    _img(root / "parts" / "test" / "dent" / "d2.png", 10)
    _mask(root / "parts" / "masks" / "dent" / "d1.png")
    _mask(root / "parts" / "masks" / "dent" / "d2_mask.png")
    assert list_categories(root) == ["flat", "goodies", "parts"]
    for cat in ("flat", "goodies", "parts"):
        assert detect_layout(root, cat) == "folder"
        assert len(load_split(root, cat, "train", size=8)) == 3
    test = load_split(root, "parts", "test", size=8)
    assert test.defects == ["dent", "dent", "good"] and test.labels == [1, 1, 0]
    assert [r.mask_path.name if r.mask_path else None for r in test.records] == ["d1.png", "d2_mask.png", None]
    assert test.has_masks
    with pytest.raises(FileNotFoundError, match=r"flat/test"):
        load_split(root, "flat", "test")


def test_folder_layout_without_masks_is_image_level_only(tmp_path: Path) -> None:
    root = tmp_path
    _img(root / "c" / "good" / "0.png")
    _img(root / "c" / "test" / "OK" / "0.png")
    _img(root / "c" / "test" / "bent" / "0.png")
    test = load_split(root, "c", "test", size=8)
    # folders sort by name ("OK" < "bent" in code-point order); OK is a normal folder name
    assert test.labels == [0, 1] and test.defects == ["good", "bent"]
    assert test.records[1].mask_path is None and not test.has_masks
    assert test[1]["mask"].shape == (1, 8, 8) and test[1]["mask"].sum() == 0


def test_folder_layout_with_masks_requires_every_mask(tmp_path: Path) -> None:
    _img(tmp_path / "c" / "0.png")
    _img(tmp_path / "c" / "test" / "bent" / "0.png")
    _img(tmp_path / "c" / "test" / "bent" / "1.png")
    _mask(tmp_path / "c" / "ground_truth" / "bent" / "0.png")
    with pytest.raises(FileNotFoundError, match=r"test/bent/1\.png.*ground_truth/bent/1\.png"):
        load_split(tmp_path, "c", "test")


# ---------------------------------------------------------------------------------------------- errors


def test_missing_root_and_unknown_category(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split(tmp_path / "nowhere", "thing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"afile: data root is not a folder"):
        list_categories(tmp_path / "afile")
    root = make_mvtec(tmp_path)
    make_mvtec(tmp_path, "other")
    with pytest.raises(FileNotFoundError, match=r"unknown category 'bottle'.*found under .*: other, thing"):
        load_split(root, "bottle")
    with pytest.raises(FileNotFoundError, match="unknown category"):
        detect_layout(root, "../thing")


def test_empty_train_folder(tmp_path: Path) -> None:
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    (tmp_path / "c" / "train" / "good" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"c/train/good: the train/good folder of category 'c' holds no images "
                                         r"\(expected files ending in .*MVTec AD layout"):
        load_split(tmp_path, "c", "train")


def test_train_folder_with_only_sub_folders_names_them(tmp_path: Path) -> None:
    """A folder-layout train/ whose images sit one level deeper (train/Good/): the message says so."""
    (tmp_path / "c" / "train" / "Good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c" / "train" / "Good" / "000.png")
    with pytest.raises(ValueError, match=r"c/train: the train folder of category 'c' holds no images; "
                                         r"it holds only the sub-folder\(s\) Good/ .*folder layout"):
        load_split(tmp_path, "c", "train")


def test_missing_mvtec_mask_names_the_expected_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "thing" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"crack/001\.png.*no mask.*ground_truth/crack/001_mask\.png"):
        load_split(root, "thing", "test")


def test_corrupt_and_fake_images_raise_at_load_naming_the_file(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    bad = root / "thing" / "train" / "good" / "004.png"
    bad.write_text("I am text with an image suffix")
    empty = root / "thing" / "train" / "good" / "005.png"
    empty.write_bytes(b"")
    train = load_split(root, "thing", "train", size=8)
    assert len(train) == 6  # suffix says image: listed, not silently skipped
    with pytest.raises(ImageLoadError, match=r"004\.png"):
        train[4]
    with pytest.raises(ImageLoadError, match=r"005\.png.*0 bytes"):
        train[5]
    with pytest.raises(ImageLoadError, match=r"004\.png"):
        train.load_images(progress=False)
    truncated = root / "thing" / "test" / "good" / "000.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 30])
    test = load_split(root, "thing", "test", size=8)
    idx = [i for i, r in enumerate(test.records) if r.image_path == truncated][0]
    with pytest.raises(ImageLoadError, match=r"good/000\.png.*truncated or corrupt"):
        test[idx]


def test_mask_of_the_wrong_size_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    _mask(root / "thing" / "ground_truth" / "crack" / "000_mask.png", hw=(10, 10))
    test = load_split(root, "thing", "test", size=8)
    with pytest.raises(ValueError, match=r"000_mask\.png.*10x10.*20"):
        test[0]


def test_bad_arguments(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_split(root, "thing", "val")
    with pytest.raises(ValueError, match="unknown layout"):
        load_split(root, "thing", layout="kaggle")
    with pytest.raises(FileNotFoundError, match=r"train/ok"):
        load_split(root, "thing", layout="btad")
    record = Record(root / "thing" / "train" / "good" / "000.png", None, 0, "good")
    assert AnomalyDataset([record], size=4)[0]["image"].shape == (3, 4, 4)


def test_loose_images_in_test_folder_are_rejected(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    _img(root / "thing" / "test" / "stray.png")
    with pytest.raises(ValueError, match=r"stray\.png.*sub-folders"):
        find_records(root, "thing", "test")


# ---------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("category", ["weave", "washer", "toys"])
def test_synthetic_dataset_loads_consistently(synthetic_root: Path, category: str) -> None:
    meta = json.loads((synthetic_root / category / "dataset.json").read_text())
    assert detect_layout(synthetic_root, category) == "mvtec"
    train = load_split(synthetic_root, category, "train", size=32)
    assert len(train) == meta["counts"]["train/good"] == SYNTHETIC_N_TRAIN
    test = load_split(synthetic_root, category, "test", size=32)
    counts = {}
    for d in test.defects:
        counts[f"test/{d}"] = counts.get(f"test/{d}", 0) + 1
    assert counts == {k: v for k, v in meta["counts"].items() if k.startswith("test/")}
    assert all(v == SYNTHETIC_N_TEST for v in counts.values())
    masks = test.load_masks(progress=False)
    assert set(masks.unique().tolist()) <= {0, 1}
    for label, defect, m in zip(test.labels, test.defects, masks):
        assert (defect == "good") == (label == 0)
        assert (m.sum() > 0) == (label == 1), defect  # anomalous <-> non-empty mask
    items = [test[i] for i in range(len(test))]
    assert all(set(it["mask"].unique().tolist()) <= {0.0, 1.0} for it in items)
    assert sum(int(m.sum() > 0) for m in masks) == meta["n_masks"]


def test_synthetic_categories_listed(synthetic_root: Path) -> None:
    assert list_categories(synthetic_root) == ["toys", "washer", "weave"]


# ---------------------------------------------------------------------------------------------- real data


def test_real_mvtec3d_tire(tire_root: Path) -> None:
    assert detect_layout(tire_root, "tire") == "mvtec"
    assert "tire" in list_categories(tire_root)
    train = find_records(tire_root, "tire", "train")
    assert len(train) == 210
    test = load_split(tire_root, "tire", "test", size=(200, 150))
    counts = {d: test.defects.count(d) for d in sorted(set(test.defects))}
    assert counts == {"combined": 5, "contamination": 28, "cut": 27, "good": 25, "hole": 27}
    with_mask = [r for r in test.records if r.mask_path is not None]
    assert len(with_mask) == 87 and all(r.label == 1 for r in with_mask)
    assert all(r.mask_path.parent.name == r.defect for r in with_mask)
    # non-square: 300 wide x 400 high
    from memseg.data.io import load_image, load_mask

    assert load_image(train[0].image_path).shape == (400, 300, 3)
    assert load_mask(with_mask[0].mask_path).shape == (400, 300)
    idx = test.labels.index(1)
    item = test[idx]
    assert item["image"].shape == (3, 200, 150) and item["mask"].shape == (1, 200, 150)
    assert item["mask"].sum() > 0
    cache = load_split(tire_root, "tire", "train", size=(64, 48)).load_images(indices=[0, 1, 2], progress=False)
    assert cache.shape == (3, 3, 64, 48) and cache.dtype == torch.uint8
