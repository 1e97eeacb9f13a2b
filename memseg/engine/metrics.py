"""Anomaly detection / segmentation metrics: image AUROC, pixel AUROC, AUPRO@0.3, F1-max.

All curves are computed exactly from one sort of the scores (no threshold binning unless asked
for), so ~100 maps of 256x256 take about a second on one CPU core.

Conventions
- A sample (image or pixel) is predicted anomalous when ``score >= threshold``.
- ``labels`` / ``masks``: 1 (or True) = anomalous, 0 = normal. Masks are binarised with ``> 0``.
- Metrics that are undefined for the input (only one class present, no anomalous region) raise
  ``ValueError`` with the reason; :func:`compute_metrics` catches these and reports ``nan``
  (documented per key in its docstring) so one degenerate subset never hides the others.

AUPRO follows the MVTec AD / anomalib standard (ports that invent their own variant report numbers nobody can compare):
connected ground-truth regions (8-connectivity) per image; PRO(t) = mean over all regions of the fraction of
the region's pixels scored >= t; FPR(t) = fraction of normal pixels scored >= t; the PRO-vs-FPR
curve (starting at (0, 0)) is integrated with the trapezoid rule up to FPR = ``fpr_limit``
(interpolated at exactly the limit) and divided by ``fpr_limit``, so a perfect map scores 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "f1_max",
    "f1_all_anomalous",
    "compute_metrics",
]

# 8-connectivity inside each 2-D map, no connectivity across the image axis of an (N, H, W) stack.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz


# ----------------------------------------------------------------------------------- input helpers
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensor / list / array -> numpy array (torch tensors are detached and moved to the CPU)."""
    if x is None:
        raise ValueError(f"{name} is None")
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()  # bf16/fp16 -> fp32 (numpy has no bfloat16)
        x = x.numpy()
    return np.asarray(x)


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        a = a.reshape(-1)
    return a


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    if not np.issubdtype(scores.dtype, np.number) and scores.dtype != bool:
        raise ValueError(f"{name} must be numeric, got dtype {scores.dtype}")
    if scores.dtype.kind == "f" and not np.all(np.isfinite(scores)):
        n_bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN/inf values; expected finite anomaly scores")
    return scores


def _binary_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Binary labels: {0, 1} / bool for image labels; masks are binarised with > 0."""
    return labels > 0 if labels.dtype != bool else labels


def _stack_maps(x: Any, name: str) -> np.ndarray:
    """(N, H, W), (N, 1, H, W) or (H, W) -> (N, H, W)."""
    a = _to_numpy(x, name)
    if a.ndim == 4:
        if a.shape[1] != 1:
            raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W); got {a.shape}")
        a = a[:, 0]
    elif a.ndim == 2:
        a = a[None]
    elif a.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W); got {a.shape}")
    return a


def _masks_and_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m = _binary_labels(_stack_maps(masks, "masks"), "masks")
    a = _check_scores(_stack_maps(maps, "maps"), "maps")
    if m.shape != a.shape:
        raise ValueError(
            f"masks and maps must have the same shape (resize masks with nearest neighbour to the map size); "
            f"got masks {m.shape} and maps {a.shape}"
        )
    return m, a


# -------------------------------------------------------------------------------- curve machinery
def _descending_curve(y: np.ndarray, s: np.ndarray, weights_pos: np.ndarray | None = None,
                      order: np.ndarray | None = None):
    """Cumulative counts at every distinct threshold, scores sorted descending (one sort).

    Returns ``(thresholds, tp, fp, wtp)``: for threshold ``thresholds[k]``, ``tp[k]`` / ``fp[k]`` count
    the positives / negatives with ``score >= thresholds[k]``, and ``wtp[k]`` sums ``weights_pos`` over
    those positives (None without weights). Ties are exact: only the last index of every run of equal
    scores is kept. ``order``: indices into y/s sorting the scores descending (a subset is allowed),
    computed here when None.
    """
    if order is None:
        order = np.argsort(s)[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    # last position of each run of equal scores
    last = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1)
    tp = np.cumsum(y_sorted, dtype=np.int64)[last].astype(np.float64)
    fp = (last + 1) - tp
    wtp = None
    if weights_pos is not None:
        wtp = np.cumsum(weights_pos[order], dtype=np.float64)[last]  # weights are 0 on negatives
    return s_sorted[last], tp, fp, wtp


def _region_weights(m: np.ndarray) -> np.ndarray:
    """Per-pixel weight 1 / (|r| * R) for a pixel of ground-truth region r (R regions in total), 0 elsewhere.

    Regions are the connected components (8-connectivity) of each image's mask. Summing the weights
    of the pixels scored >= t gives PRO(t), the per-region overlap averaged over regions.
    """
    regions, n_regions = ndimage.label(m, structure=_STRUCTURE_8)  # (N, H, W) int, 0 = background
    if n_regions == 0:
        raise ValueError("AUPRO is undefined: the masks contain no anomalous region")
    lab = regions.reshape(-1)
    region_sizes = np.bincount(lab, minlength=n_regions + 1).astype(np.float64)
    if region_sizes[0] == 0:
        raise ValueError("AUPRO is undefined: the masks contain no normal pixel")
    weight_of_region = np.zeros(n_regions + 1)
    weight_of_region[1:] = 1.0 / (region_sizes[1:] * n_regions)
    return weight_of_region[lab]


def _require_both_classes(y: np.ndarray, what: str) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{what} is undefined with only one class present ({n_pos} anomalous, {n_neg} normal); "
            "it needs both normal and anomalous samples"
        )
    return n_pos, n_neg


def _auroc(y: np.ndarray, s: np.ndarray, what: str) -> float:
    n_pos, n_neg = _require_both_classes(y, what)
    _, tp, fp, _ = _descending_curve(y, s)
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    return float(_trapezoid(tpr, fpr))


# ------------------------------------------------------------------------------------ public API
def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image-level scores (labels 1 = anomalous).

    Raises ``ValueError`` when only one class is present.
    """
    y = _binary_labels(_as_1d(labels, "labels"), "labels")
    s = _check_scores(_as_1d(scores, "scores"), "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length; got {y.size} and {s.size}")
    return _auroc(y, s, "image AUROC")


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC AUC over all pixels of all images (flattened); masks (N,H,W)/(N,1,H,W), maps the same shape.

    Raises ``ValueError`` when the masks contain no anomalous pixel or no normal pixel.
    """
    m, a = _masks_and_maps(masks, maps)
    return _auroc(m.reshape(-1), a.reshape(-1), "pixel AUROC")


def pro_curve(masks: Any, maps: Any, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region-overlap curve: returns ``(fpr, pro, thresholds)`` with FPR ascending.

    - Regions: connected components (8-connectivity, ``scipy.ndimage.label``) of each image's mask.
    - ``pro[k]`` = mean over all regions r of |{p in r : score_p >= thresholds[k]}| / |r|.
    - ``fpr[k]`` = |{normal p : score_p >= thresholds[k]}| / |normal pixels|.
    - ``num_thresholds=None``: exact curve at every distinct score. An int bins the scores into that
      many equally spaced thresholds between min and max (anomalib style; cheaper, slightly coarser).

    The curve does not include the (0, 0) starting point (see :func:`aupro`).
    Raises ``ValueError`` without any anomalous region or without any normal pixel.
    """
    m, a = _masks_and_maps(masks, maps)
    weights = _region_weights(m)
    return _pro_curve_from(m.reshape(-1), a.reshape(-1), weights, num_thresholds)[:3]


def _pro_curve_from(y: np.ndarray, s: np.ndarray, weights: np.ndarray, num_thresholds: int | None):
    """(fpr, pro, thresholds, tp) from flattened labels, scores and region weights; tp is None when binned."""
    n_normal = int(y.size - y.sum())
    tp = None
    if num_thresholds is None:
        thresholds, tp, fp, pro = _descending_curve(y, s, weights_pos=weights)
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
        thresholds = np.linspace(float(s.max()), float(s.min()), num_thresholds)  # descending
        # a pixel counts at threshold k iff score >= thresholds[k] iff k >= (first k with thresholds[k] <= score)
        bins = np.clip(np.searchsorted(-thresholds, -s, side="left"), 0, num_thresholds - 1)
        pro = np.cumsum(np.bincount(bins, weights=weights, minlength=num_thresholds))
        fp = np.cumsum(np.bincount(bins[~y], minlength=num_thresholds)).astype(np.float64)
    return fp / n_normal, np.minimum(pro, 1.0), thresholds, tp


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max]; the curve is interpolated at exactly x_max.

    ``x`` must be non-decreasing and start at 0. At an x that appears several times (a vertical
    step), ``np.interp`` would be ambiguous, so the crossing is located explicitly.
    """
    inside = x <= x_max
    k = int(np.flatnonzero(inside)[-1])  # last point inside the limit
    xs, ys = x[: k + 1], y[: k + 1]
    if xs[-1] < x_max and k + 1 < x.size:
        x0, x1, y0, y1 = x[k], x[k + 1], y[k], y[k + 1]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(_trapezoid(ys, xs))


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD / anomalib standard).

    The curve is extended with (0, 0) at the start and (1, 1) at the end (as MVTec's reference
    code does), integrated with the trapezoid rule over FPR in [0, fpr_limit] (interpolated at
    exactly the limit) and divided by ``fpr_limit``: perfect map -> 1.0, a map ranking every
    normal pixel above every anomalous one -> 0.0.
    """
    _check_fpr_limit(fpr_limit)
    fpr, pro, _ = pro_curve(masks, maps, num_thresholds=num_thresholds)
    return _normalised_pro_area(fpr, pro, fpr_limit)


def _normalised_pro_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.concatenate([[0.0], pro, [1.0]])
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


class _PixelIndex:
    """Flattened masks/maps sorted once; pixel AUROC + AUPRO of any subset of images without re-sorting.

    compute_metrics evaluates the whole test set and every defect type (its images plus the normal
    ones); filtering the global descending order by a subset keeps it sorted, so one ``argsort``
    serves every block. Regions are labelled once (8-connectivity per image).
    """

    def __init__(self, m: np.ndarray, a: np.ndarray) -> None:
        self.n_images, h, w = m.shape
        self.hw = h * w
        self.y = m.reshape(-1)
        self.s = a.reshape(-1)
        self.order = np.argsort(self.s)[::-1]
        regions, self.n_regions = ndimage.label(m, structure=_STRUCTURE_8)
        self.lab = regions.reshape(-1)
        self.region_sizes = np.bincount(self.lab, minlength=self.n_regions + 1).astype(np.float64)
        self.region_image = np.zeros(self.n_regions + 1, dtype=np.int64)  # image index of every region
        anomalous = np.flatnonzero(self.lab)
        self.region_image[self.lab[anomalous]] = anomalous // self.hw

    def metrics(self, images: np.ndarray | None, fpr_limit: float, num_thresholds: int | None) -> tuple[float, float]:
        """(pixel AUROC, AUPRO) of the images selected by the boolean ``images`` (None: all); nan if undefined."""
        if images is None:
            pixels, order = None, self.order
            in_subset = np.ones(self.n_regions, dtype=bool)
        else:
            pixels = np.repeat(images, self.hw)
            order = self.order[pixels[self.order]]
            in_subset = images[self.region_image[1:]]
        n_regions = int(in_subset.sum())
        y_sel = self.y if pixels is None else self.y[pixels]
        n_pos = int(y_sel.sum())
        n_neg = int(y_sel.size - n_pos)
        if n_regions == 0 or n_neg == 0:
            return float("nan"), float("nan")
        weight_of_region = np.zeros(self.n_regions + 1)
        weight_of_region[1:][in_subset] = 1.0 / (self.region_sizes[1:][in_subset] * n_regions)
        weights = weight_of_region[self.lab]
        if num_thresholds is not None:  # binned AUPRO on the subset; the AUROC stays exact
            s_sel = self.s if pixels is None else self.s[pixels]
            w_sel = weights if pixels is None else weights[pixels]
            fpr, pro, _, _ = _pro_curve_from(y_sel, s_sel, w_sel, num_thresholds)
            _, tp, fp, _ = _descending_curve(self.y, self.s, order=order)
        else:
            _, tp, fp, pro = _descending_curve(self.y, self.s, weights_pos=weights, order=order)
            fpr = fp / n_neg
            pro = np.minimum(pro, 1.0)
        auroc = float(_trapezoid(np.concatenate([[0.0], tp / n_pos]), np.concatenate([[0.0], fp / n_neg])))
        return auroc, _normalised_pro_area(fpr, pro, fpr_limit)


def f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold (predict anomalous when ``score >= threshold``).

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P). Among equal F1 values the highest threshold
    wins (fewest alarms). Raises ``ValueError`` when there is no anomalous sample (F1 undefined).
    """
    y = _binary_labels(_as_1d(labels, "labels"), "labels")
    s = _check_scores(_as_1d(scores, "scores"), "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length; got {y.size} and {s.size}")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("F1-max is undefined without anomalous samples (labels are all 0)")
    thresholds, tp, fp, _ = _descending_curve(y, s)
    f1 = 2.0 * tp / (tp + fp + n_pos)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    return float(f1[k]), float(thresholds[k])


def f1_all_anomalous(labels: Sequence[int] | np.ndarray) -> float:
    """F1 of the trivial detector that calls every image anomalous: ``2 p / (1 + p)``.

    ``p`` is the share of anomalous images (precision ``p``, recall 1). F1-max can never be below
    this, so it is the baseline to read F1-max against: on a test split that is 80 % anomalous it
    is already 88.9 %. ``nan`` without anomalous samples (F1 undefined, as for :func:`f1_max`).
    """
    y = _binary_labels(_as_1d(labels, "labels"), "labels")
    if y.size == 0 or not y.any():
        return float("nan")
    p = float(y.mean())
    return 2.0 * p / (1.0 + p)


# ---------------------------------------------------------------------------------- aggregation
def _safe(fn, *args, **kwargs) -> float:
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return float("nan")


def _block(labels: np.ndarray, scores: np.ndarray, pixel_index: _PixelIndex | None, images: np.ndarray | None,
           fpr_limit: float, num_thresholds: int | None) -> dict[str, float | int]:
    """Metrics of one block; ``images`` selects its images in ``pixel_index`` (None: all)."""
    f1, thr = (float("nan"), float("nan"))
    if labels.any():
        f1, thr = f1_max(labels, scores)
    out: dict[str, float | int] = {
        "image_auroc": _safe(image_auroc, labels, scores),
        "pixel_auroc": float("nan"),
        "aupro": float("nan"),
        "f1_max": f1,
        "f1_threshold": thr,
        "f1_all_anomalous": f1_all_anomalous(labels),
        "n_images": int(labels.size),
        "n_anomalous": int(labels.sum()),
        "n_normal": int(labels.size - labels.sum()),
    }
    if pixel_index is not None:
        out["pixel_auroc"], out["aupro"] = pixel_index.metrics(images, fpr_limit, num_thresholds)
    return out


def compute_metrics(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    defects: Sequence[str] | None = None,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> dict[str, Any]:
    """All metrics, overall and per defect type.

    Args:
        labels: (N,) 1 = anomalous, 0 = normal.  scores: (N,) image anomaly scores.
        masks: (N, H, W) or (N, 1, H, W) ground truth (zeros for normal images), or None.
        maps: anomaly maps with the same shape as ``masks``, or None (pixel metrics are then nan).
        defects: (N,) defect type per image ("good" for normal ones), or None.

    Returns:
        ``{"overall": {...}, "per_defect": {defect: {...}}, "fpr_limit": 0.3}`` where each block holds
        ``image_auroc, pixel_auroc, aupro, f1_max, f1_threshold, f1_all_anomalous, n_images,
        n_anomalous, n_normal`` (``f1_all_anomalous``: F1 of calling every image anomalous, the floor
        of F1-max; see :func:`f1_all_anomalous`).
        Per-defect blocks use that defect's images plus all normal images (label 0). A metric that is
        undefined for a block (e.g. no normal image -> AUROC) is ``nan``.
    """
    y = _binary_labels(_as_1d(labels, "labels"), "labels")
    s = _check_scores(_as_1d(scores, "scores"), "scores").astype(np.float64)
    if y.size != s.size:
        raise ValueError(f"labels and scores must have the same length; got {y.size} and {s.size}")
    if y.size == 0:
        raise ValueError("compute_metrics got no images")
    _check_fpr_limit(fpr_limit)
    m = a = None
    if (masks is None) != (maps is None):
        raise ValueError("give both masks and maps (or neither)")
    if masks is not None:
        m, a = _masks_and_maps(masks, maps)
        if m.shape[0] != y.size:
            raise ValueError(f"masks/maps hold {m.shape[0]} images but labels hold {y.size}")
    index = _PixelIndex(m, a) if m is not None else None
    result: dict[str, Any] = {
        "overall": _block(y, s, index, None, fpr_limit, num_thresholds),
        "per_defect": {},
        "fpr_limit": fpr_limit,
    }
    if defects is not None:
        d = np.asarray([str(v) for v in defects])
        if d.size != y.size:
            raise ValueError(f"defects holds {d.size} entries but labels hold {y.size}")
        normal = ~y
        for name in sorted(set(d[y].tolist())):
            sel = (d == name) | normal
            result["per_defect"][name] = _block(y[sel], s[sel], index, sel, fpr_limit, num_thresholds)
    return result
