"""Exercise 8 (paper §4.1, the MVTec AD standard): AUPRO, the normalised area under the PRO curve up to FPR 0.3.

The expected answer is the kit's :func:`memseg.engine.metrics.aupro` (checked against MVTec's official code
and anomalib, docs/results/aupro-check).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from memseg.engine.metrics import aupro
from memseg.notebook.exercises.check import Case, Verdict, run_check

__all__ = ["check_aupro"]

EQUATION = ("AUPRO (MVTec AD): the regions are the connected components (8-connectivity) of each image's mask; "
            "for a threshold t, PRO(t) = mean over ALL regions of the fraction of the region's pixels scored >= t, "
            "FPR(t) = fraction of the normal pixels (of all images) scored >= t; the curve starts at (0, 0), is "
            "integrated with the trapezoid rule over FPR from 0 up to fpr_limit only (interpolated at exactly "
            "fpr_limit) and divided by fpr_limit, so a perfect map scores 1.")


def _kit_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    return aupro(masks, maps, fpr_limit=fpr_limit)


def _blobs(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        for _ in range(2):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            dy, dx = rng.integers(2, 5), rng.integers(2, 5)
            masks[k, y:y + dy, x:x + dx] = True
    return masks


def _noisy(masks: np.ndarray, rng: np.random.Generator, signal: float = 0.5) -> np.ndarray:
    return signal * masks + rng.random(masks.shape)


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    """A large region scored high and a small region scored low: PRO is not the fraction of anomalous pixels."""
    masks = np.zeros((1, 24, 24), dtype=bool)
    masks[0, 2:14, 2:14] = True  # 144 pixels
    masks[0, 18:20, 18:20] = True  # 4 pixels
    rng = np.random.default_rng(7)
    maps = 0.6 * rng.random(masks.shape)
    maps[0, 2:14, 2:14] += 0.5
    return masks, maps


def _one_region() -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((1, 20, 20), dtype=bool)
    masks[0, 5:12, 6:14] = True
    return masks, _noisy(masks, np.random.default_rng(3), 0.4)


def cases() -> list[Case]:
    rng = np.random.default_rng(0)
    masks = _blobs(3, 24, 24, rng)
    with_normal = _blobs(3, 20, 20, rng)
    with_normal[1] = False  # a normal image in the set
    odd = _blobs(1, 17, 23, rng)
    ties = _blobs(2, 16, 16, rng)
    perfect = _blobs(2, 16, 16, rng)
    return [
        Case("a perfect map (1 on every defect pixel, 0 elsewhere) of 2 images of 16×16; fpr_limit = 0.3",
             (perfect, perfect.astype(float)), {"fpr_limit": 0.3},
             hint="A perfect map reaches PRO = 1 at FPR = 0, so its area up to fpr_limit, divided by fpr_limit, is 1."),
        Case("1 image of 20×20 with one rectangular defect; map = 0.4·mask + U(0, 1); fpr_limit = 0.3",
             _one_region(), {"fpr_limit": 0.3},
             hint="Only the part of the curve with FPR <= fpr_limit counts: cut it at exactly fpr_limit (interpolate "
                  "between the last point before and the first point after)."),
        Case("1 image with a large defect (144 pixels) scored high and a small one (4 pixels) scored like the "
             "background; fpr_limit = 0.3", _two_regions(), {"fpr_limit": 0.3},
             hint="PRO averages the overlap per region: the small missed region counts as much as the large found "
                  "one."),
        Case("3 images of 24×24, each mask with 1-2 rectangular defects; maps = 0.5·mask + U(0, 1); fpr_limit = 0.3",
             (masks, _noisy(masks, rng)), {"fpr_limit": 0.3},
             hint="Regions are counted over all images together; PRO is their mean, FPR pools all normal pixels."),
        Case("3 images of 20×20, the middle one normal (an empty mask); fpr_limit = 0.3",
             (with_normal, _noisy(with_normal, rng)), {"fpr_limit": 0.3},
             hint="A normal image has no region; its pixels only count as normal pixels in the FPR."),
        Case("1 image of 17×23 (odd sizes); fpr_limit = 0.3", (odd, _noisy(odd, rng)), {"fpr_limit": 0.3},
             hint="Nothing depends on the sizes."),
        Case("3 images of 24×24 with defects, fpr_limit = 0.1",
             (masks, _noisy(masks, np.random.default_rng(1))), {"fpr_limit": 0.1},
             hint="Use the fpr_limit you are given, for the integration limit and the normalisation."),
        Case("maps rounded to steps of 0.5 (many equal scores); fpr_limit = 0.3",
             (ties, np.round(_noisy(ties, rng, 0.8) * 2) / 2), {"fpr_limit": 0.3},
             hint="Pixels with the same score pass a threshold together: one curve point per distinct score."),
    ]


def check_aupro(aupro_fn: Callable) -> Verdict:
    """Check ``aupro_fn(masks (N,H,W) bool, maps (N,H,W) float, fpr_limit=0.3) -> a float in [0, 1]``."""
    return run_check("aupro", aupro_fn, _kit_aupro, cases(), EQUATION, rtol=1e-6, atol=1e-6)
