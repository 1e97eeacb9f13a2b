"""memseg.data.synthetic: exact masks, visible defects, natural variation, determinism, no silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SYNTHETIC_N_TEST, SYNTHETIC_N_TRAIN, SYNTHETIC_SIZE
from PIL import Image

from memseg.data import synthetic as S


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _otsu(grey: np.ndarray) -> float:
    """Plain Otsu threshold on uint8 grey values (between-class variance maximum)."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(np.nanargmax(between))


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_defect_masks_are_exactly_the_changed_pixels(category: str) -> None:
    for defect in S.DEFECTS[category]:
        for i in range(3):
            clean, bad, mask = S.render_defect(category, defect, 96, np.random.default_rng(100 + i))
            assert clean.shape == bad.shape == (96, 96, 3) and mask.shape == (96, 96) and mask.dtype == bool
            np.testing.assert_array_equal(mask, (clean != bad).any(axis=2), err_msg=f"{category}/{defect}")
            area = mask.mean()
            assert 0.0008 <= area <= 0.12, f"{category}/{defect}: defect covers {area:.4f} of the image"
            # visible: the changed pixels move by a clear amount on average (noise alone is ~2-3 levels)
            diff = np.abs(clean.astype(int) - bad.astype(int)).max(axis=2)[mask].mean()
            assert diff >= 20, f"{category}/{defect}: mean change {diff:.1f} grey levels"


def test_washer_is_centred_bright_object_on_dark_background_found_by_otsu() -> None:
    size = 128
    centres = []
    for i in range(8):
        img, fg = S.render_normal("washer", size, np.random.default_rng(i))
        grey = img.mean(axis=2).round().astype(np.uint8)
        assert grey[~fg].mean() < 40 and np.percentile(grey[fg], 1) > 70
        otsu = grey > _otsu(grey)
        iou = (otsu & fg).sum() / (otsu | fg).sum()
        assert iou > 0.97, f"image {i}: Otsu foreground IoU {iou:.3f}"
        assert 0.15 < fg.mean() < 0.4  # a ring, not the whole frame
        ys, xs = np.nonzero(fg)
        centres.append((ys.mean(), xs.mean()))
    centres = np.array(centres)
    offset = np.abs(centres - (size - 1) / 2)
    assert offset.max() < 0.05 * size  # centred within a few pixels ...
    assert centres.std(axis=0).min() > 0.2  # ... but not always at the same place


def test_normal_images_vary_naturally_but_stay_in_distribution() -> None:
    for category in ("weave", "washer"):
        imgs = np.stack([S.render_normal(category, 64, np.random.default_rng(i))[0] for i in range(6)]).astype(float)
        pair_diff = [np.abs(imgs[i] - imgs[j]).mean() for i in range(6) for j in range(i + 1, 6)]
        assert min(pair_diff) > 2.0, category  # every image is different
        means = imgs.mean(axis=(1, 2, 3))
        assert means.std() < 0.15 * means.mean(), category  # same category look


def test_toy_shapes_are_solid_regular_colours() -> None:
    for shape in S.DEFECTS["toys"]:
        clean, bad, mask = S.render_defect("toys", shape, 128, np.random.default_rng(5))
        inside = bad[mask].astype(float)
        assert inside.std(axis=0).max() < 6, shape  # one colour (+ slight noise)
        assert mask.sum() >= 40


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic category 'carpet'.*weave, washer, toys"):
        S.render_normal("carpet", 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown defect 'crack'.*scratch"):
        S.render_defect("weave", "crack", 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 32"):
        S.render_normal("weave", 8, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- the dataset on disk


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_dataset_json_matches_the_files(synthetic_root: Path, category: str) -> None:
    cat = synthetic_root / category
    meta = json.loads((cat / "dataset.json").read_text())
    assert meta["seed"] == 0 and meta["size"] == [SYNTHETIC_SIZE, SYNTHETIC_SIZE] and meta["version"] == S.VERSION
    assert meta["defects"] == list(S.DEFECTS[category]) and meta["kind"] == S.KINDS[category]
    assert meta["counts"]["train/good"] == SYNTHETIC_N_TRAIN
    for key, n in meta["counts"].items():
        assert len(list((cat / key).glob("*.png"))) == n, key
    assert meta["counts"]["test/good"] == SYNTHETIC_N_TEST
    masks = sorted(cat.glob("ground_truth/*/*_mask.png"))
    assert len(masks) == meta["n_masks"] == SYNTHETIC_N_TEST * len(S.DEFECTS[category])
    for m in masks:
        arr = np.asarray(Image.open(m))
        assert arr.shape == (SYNTHETIC_SIZE, SYNTHETIC_SIZE) and set(np.unique(arr)) == {0, 255}
        assert (cat / "test" / m.parent.name / m.name.replace("_mask", "")).is_file()
    assert not (cat / "ground_truth" / "good").exists()
    assert not list(synthetic_root.glob(".*tmp*"))  # no temporary folders left behind


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    kw = dict(size=48, n_train=2, n_test=1, progress=False)
    a = _files(S.generate(tmp_path / "a", seed=3, **kw))
    b = _files(S.generate(tmp_path / "b", seed=3, **kw))
    c = _files(S.generate(tmp_path / "c", seed=4, **kw))
    assert a.keys() == b.keys() == c.keys() and len(a) > 20
    assert a == b
    images = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert all(a[k] != c[k] for k in images)


def test_counts_do_not_shift_the_test_images(tmp_path: Path) -> None:
    small = S.generate(tmp_path / "s", categories=["weave"], size=48, n_train=1, n_test=1, progress=False)
    large = S.generate(tmp_path / "l", categories=["weave"], size=48, n_train=3, n_test=2, progress=False)
    for rel in ("train/good/000.png", "test/good/000.png", "test/hole/000.png", "ground_truth/hole/000_mask.png"):
        assert (small / "weave" / rel).read_bytes() == (large / "weave" / rel).read_bytes()


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    kw = dict(categories=["washer"], size=40, n_train=1, n_test=1, progress=False)
    root = S.generate(tmp_path, seed=1, **kw)
    before = _files(root / "washer")
    with pytest.raises(FileExistsError, match=r"washer.*already exists.*overwrite=True"):
        S.generate(tmp_path, seed=2, **kw)
    assert _files(root / "washer") == before  # untouched
    (root / "washer" / "extra.txt").write_text("user file")
    S.generate(tmp_path, seed=2, overwrite=True, **kw)
    after = _files(root / "washer")
    assert "extra.txt" not in after and after["train/good/000.png"] != before["train/good/000.png"]
    assert json.loads(after["dataset.json"])["seed"] == 2
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(ValueError, match=r"plain\.txt.*not a folder"):
        S.generate(tmp_path / "plain.txt", **kw)
    # an empty existing folder is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weave").mkdir()
    S.generate(tmp_path / "other", categories=["weave"], size=40, n_train=1, n_test=1, progress=False)


def test_ensure_synthetic_reuses_matching_and_refuses_mismatching(tmp_path: Path) -> None:
    kw = dict(categories=["weave", "toys"], size=40, n_train=2, n_test=1, progress=False)
    root = S.ensure_synthetic(tmp_path / "syn", seed=0, **kw)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    assert S.ensure_synthetic(root, seed=0, **kw) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamp  # reused, not rewritten
    # a missing category is added next to the reused ones
    S.ensure_synthetic(root, seed=0, **{**kw, "categories": ["weave", "toys", "washer"]})
    assert (root / "washer" / "dataset.json").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    # a deleted image makes the category incomplete: it is not silently reused
    (root / "weave" / "train" / "good" / "001.png").unlink()
    with pytest.raises(FileExistsError, match=r"weave.*does not match"):
        S.ensure_synthetic(root, seed=0, **kw)
    with pytest.raises(FileExistsError, match="does not match seed=5"):
        S.ensure_synthetic(root, seed=5, **kw)
    S.ensure_synthetic(root, seed=5, overwrite=True, **kw)
    assert json.loads((root / "toys" / "dataset.json").read_text())["seed"] == 5


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from memseg.apps.cli import main

    args = ["synth", "--out", str(tmp_path / "d"), "--categories", "washer", "--size", "40", "--n-train", "2",
            "--n-test", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "washer" in out and "2 train" in out
    assert len(list((tmp_path / "d" / "washer" / "train" / "good").glob("*.png"))) == 2
    assert main(args) == 2  # refuses to overwrite: a one-line error, not a traceback
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--seed", "9"]) == 0
    assert main(["synth", "--out", str(tmp_path / "e"), "--categories", "bottle"]) == 2
    assert "available: weave, washer, toys" in capsys.readouterr().err


def test_washer_preset_of_the_simulation_room_finds_the_washer() -> None:
    """Cross-room check: ``FOREGROUND_PRESETS["washer"]`` (memseg.simulation.foreground) recovers the rendered ring."""
    fg_mod = pytest.importorskip("memseg.simulation.foreground")
    torch = pytest.importorskip("torch")
    renders = [S.render_normal("washer", 96, np.random.default_rng(i)) for i in range(4)]
    x = torch.from_numpy(np.stack([im for im, _ in renders])).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    masks = fg_mod.foreground_mask(x, fg_mod.FOREGROUND_PRESETS["washer"])  # (B, 1, H, W)
    for (_, fg), m in zip(renders, masks):
        found = m[0].numpy() > 0.5
        assert (found & fg).sum() / (found | fg).sum() > 0.95
