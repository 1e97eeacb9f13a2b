"""memseg.engine.metrics against hand-computed cases, a brute-force PRO reference and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from memseg.engine.metrics import aupro, compute_metrics, f1_max, image_auroc, pixel_auroc, pro_curve

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a core dependency of memseg")


# ------------------------------------------------------------------------------------- fixtures
def two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """One 6x8 image: region A (2x2) and region B (2x2) apart, 40 normal pixels.

    Map at score 1: all of A, half of B, 4 normal pixels (FPR 0.1); everything else scores 0.
    """
    mask = np.zeros((1, 6, 8), bool)
    mask[0, 0:2, 0:2] = True  # A
    mask[0, 4:6, 5:7] = True  # B
    amap = np.zeros((1, 6, 8), np.float32)
    amap[0, 0:2, 0:2] = 1.0  # all of A
    amap[0, 4, 5:7] = 1.0  # half of B
    amap[0, 0, 4:8] = 1.0  # 4 of the 40 normal pixels
    return mask, amap


def random_case(seed: int, n: int = 6, size: int = 24, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):  # half of the images carry 1-3 blobs of different sizes
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(1, 7, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random(masks.shape) * 0.8 + masks * rng.random(masks.shape) * 0.5
    if ties:
        maps = np.round(maps, 1)  # many tied scores
    return masks, maps.astype(np.float32)


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Reference: loop over every distinct threshold and every region; clip the last segment at the limit."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = above[normal].sum() / normal.sum()
        pro = np.mean([above[i][r].mean() for i, r in regions])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


# ------------------------------------------------------------------------------------ AUPRO
def test_pro_curve_two_regions_known_point():
    mask, amap = two_region_case()
    fpr, pro, thr = pro_curve(mask, amap)
    # threshold 1: A fully covered (1.0), B half (0.5) -> PRO 0.75; 4 / 40 normal pixels -> FPR 0.1
    k = int(np.flatnonzero(thr == 1.0)[0])
    assert fpr[k] == pytest.approx(0.1)
    assert pro[k] == pytest.approx(0.75)
    # threshold 0: everything -> (1, 1)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)


def test_aupro_two_regions_hand_computed():
    mask, amap = two_region_case()
    # curve (0,0) -> (0.1, 0.75) -> (1, 1); value at FPR 0.3 on the second segment: 0.75 + 0.25 * 0.2 / 0.9
    y_at = 0.75 + 0.25 * (0.2 / 0.9)
    area = 0.1 * 0.75 / 2 + 0.2 * (0.75 + y_at) / 2
    assert aupro(mask, amap) == pytest.approx(area / 0.3, abs=1e-12)
    assert aupro(mask, amap) == pytest.approx(brute_force_aupro(mask, amap, 0.3), abs=1e-12)


def test_aupro_uses_8_connectivity():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 0, 0] = True  # one pixel ...
    mask[0, 1:3, 1:3] = True  # ... touching a 2x2 block only diagonally: one 5-pixel region
    amap = np.zeros((1, 8, 8), np.float32)
    amap[0, 0, 0] = 1.0
    fpr, pro, thr = pro_curve(mask, amap)
    # 8-connectivity: 1/5 of one region; 4-connectivity would give mean(1, 0) = 0.5
    assert pro[0] == pytest.approx(0.2)
    assert fpr[0] == 0.0


def test_aupro_perfect_and_inverted_maps():
    masks, _ = random_case(0, ties=False)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    inverted = (~masks).astype(np.float32)  # every normal pixel ranked above every anomalous one
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)


def test_aupro_stops_at_fpr_limit():
    # 100 normal pixels with distinct scores 0.00 .. 0.99 and one 10-pixel region
    normal_scores = np.arange(100) / 100.0
    mask = np.zeros((1, 11, 10), bool)
    mask[0, 10, :] = True
    base = np.zeros((1, 11, 10), np.float64)
    base[0, :10, :] = normal_scores.reshape(10, 10)
    a, b = base.copy(), base.copy()
    a[0, 10, :5] = b[0, 10, :5] = 0.995  # half the region above every normal pixel
    a[0, 10, 5:] = 0.2  # the other half enters at FPR 0.8 ...
    b[0, 10, 5:] = 0.1  # ... or at FPR 0.9: the curves differ only above FPR 0.3
    assert aupro(mask, a) == pytest.approx(0.5, abs=1e-12)  # PRO is 0.5 over the whole [0, 0.3]
    assert aupro(mask, a) == aupro(mask, b)
    # the whole-range integral (the known kit's mistake) does see the difference
    assert aupro(mask, a, fpr_limit=1.0) != pytest.approx(aupro(mask, b, fpr_limit=1.0))
    assert aupro(mask, a, fpr_limit=1.0) == pytest.approx(brute_force_aupro(mask, a, 1.0))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force_with_ties(seed, limit):
    masks, maps = random_case(seed)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(brute_force_aupro(masks, maps, limit), abs=1e-10)


def test_aupro_binned_close_to_exact_and_invariant_to_monotone_rescaling():
    masks, maps = random_case(4, ties=False)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=2000) == pytest.approx(exact, abs=5e-3)
    assert aupro(masks, maps * 0.25 + 0.5) == pytest.approx(exact, abs=1e-12)
    assert aupro(masks, maps**3) == pytest.approx(exact, abs=1e-12)


def test_aupro_accepts_torch_and_channel_dim():
    torch = pytest.importorskip("torch")
    masks, maps = random_case(5)
    expected = aupro(masks, maps)
    got = aupro(torch.from_numpy(masks[:, None]).float(), torch.from_numpy(maps[:, None]))
    assert got == pytest.approx(expected, abs=1e-12)


def test_aupro_errors():
    masks, maps = random_case(6)
    with pytest.raises(ValueError, match="no anomalous region"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="same shape"):
        aupro(masks, maps[:, :-1])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, bad)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)


# ----------------------------------------------------------------------------- AUROC and F1
@pytest.mark.parametrize("seed", [0, 1])
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)
    assert image_auroc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_hand_computed():
    # positives {0.8, 0.4}, negatives {0.6, 0.2}: pairs won 3 of 4 -> 0.75
    assert image_auroc([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.2]) == pytest.approx(0.75)
    assert image_auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_pixel_auroc_matches_sklearn():
    masks, maps = random_case(7)
    expected = sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_one_class_input_raises_clear_error():
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4)))
    with pytest.raises(ValueError, match="same length"):
        image_auroc([0, 1], [0.1, 0.2, 0.3])


def _sklearn_f1_max(labels, scores):
    precision, recall, thresholds = sklearn_metrics.precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)[:-1]
    k = int(np.argmax(f1))
    return f1[k], thresholds[k]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.4 * labels, 2)
    f1, thr = f1_max(labels, scores)
    ref_f1, _ = _sklearn_f1_max(labels, scores)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    # the returned threshold realises that F1 with the rule score >= threshold
    pred = scores >= thr
    assert sklearn_metrics.f1_score(labels, pred) == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_computed():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): at t=0.7 TP=2 FP=1 -> F1 = 4/5; at t=0.9 F1 = 2/3
    f1, thr = f1_max([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.7)
    with pytest.raises(ValueError, match="without anomalous"):
        f1_max([0, 0], [0.1, 0.2])


# ---------------------------------------------------------------------------- compute_metrics
def test_compute_metrics_overall_and_per_defect():
    masks, maps = random_case(8, n=8)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    rng = np.random.default_rng(8)
    scores = rng.random(len(labels)) + 0.3 * labels
    defects = ["crack" if i < 2 else "hole" if lab else "good" for i, lab in enumerate(labels)]
    out = compute_metrics(labels, scores, masks, maps, defects=defects)

    overall = out["overall"]
    assert overall["image_auroc"] == pytest.approx(image_auroc(labels, scores))
    assert overall["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))
    assert overall["aupro"] == pytest.approx(aupro(masks, maps))
    assert (overall["f1_max"], overall["f1_threshold"]) == pytest.approx(f1_max(labels, scores))
    assert (overall["n_images"], overall["n_anomalous"], overall["n_normal"]) == (8, labels.sum(), 8 - labels.sum())

    assert set(out["per_defect"]) == {"crack", "hole"}
    for name, block in out["per_defect"].items():
        sel = np.array([d in (name, "good") for d in defects])
        assert block["n_images"] == sel.sum()
        assert block["image_auroc"] == pytest.approx(image_auroc(labels[sel], scores[sel]))
        assert block["pixel_auroc"] == pytest.approx(pixel_auroc(masks[sel], maps[sel]))
        assert block["aupro"] == pytest.approx(aupro(masks[sel], maps[sel]))


def test_compute_metrics_undefined_metrics_are_nan():
    masks, maps = random_case(9, n=4)
    labels = np.ones(2, int)  # only anomalous images: AUROCs undefined, F1 and AUPRO defined
    out = compute_metrics(labels, [0.3, 0.9], masks[:2], maps[:2])
    assert math.isnan(out["overall"]["image_auroc"])
    assert out["overall"]["f1_max"] == pytest.approx(1.0)
    assert out["per_defect"] == {}
    # no masks/maps: pixel metrics are nan, image metrics still computed
    out = compute_metrics([0, 1], [0.1, 0.9])
    assert out["overall"]["image_auroc"] == 1.0 and math.isnan(out["overall"]["aupro"])


def test_compute_metrics_input_errors():
    masks, maps = random_case(10, n=4)
    with pytest.raises(ValueError, match="4 images but labels hold 3"):
        compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], masks, maps)
    with pytest.raises(ValueError, match="both masks and maps"):
        compute_metrics([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], masks, None)
    with pytest.raises(ValueError, match="defects holds 2"):
        compute_metrics([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], masks, maps, defects=["good", "x"])


def test_compute_metrics_binned_matches_standalone_binned_aupro():
    masks, maps = random_case(11, n=8, ties=False)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    scores = maps.reshape(len(maps), -1).max(1)
    defects = [("x" if i % 2 else "y") if lab else "good" for i, lab in enumerate(labels)]
    assert {"x", "y"} <= set(defects)
    out = compute_metrics(labels, scores, masks, maps, defects=defects, num_thresholds=300)
    assert out["overall"]["aupro"] == pytest.approx(aupro(masks, maps, num_thresholds=300), abs=1e-12)
    assert out["overall"]["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)  # AUROC stays exact
    for name, block in out["per_defect"].items():
        sel = np.array([d in (name, "good") for d in defects])
        assert block["aupro"] == pytest.approx(aupro(masks[sel], maps[sel], num_thresholds=300), abs=1e-12)
