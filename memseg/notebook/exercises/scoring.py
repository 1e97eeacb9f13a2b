"""Exercise 7 (paper §4.1): the image-level anomaly score, the mean of the top-k pixel scores.

The expected answer is the kit's :func:`memseg.engine.scoring.image_scores`, the one path from an
anomaly map to an image score in validation, evaluation and prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memseg.engine.scoring import image_scores
from memseg.notebook.exercises.check import Case, Verdict, run_check

__all__ = ["check_image_score"]

EQUATION = ("§4.1: the image score is the mean of the top_k (paper: 100) highest pixel scores of the anomaly map, "
            "one number per image (torch.topk on the flattened map); a map with fewer than top_k pixels uses "
            "all of them.")


def _kit_score(maps: torch.Tensor, top_k: int = 100) -> torch.Tensor:
    return image_scores(maps, top_k)


def cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    spots = torch.full((2, 1, 20, 20), 0.1)
    spots[0, 0, 3:6, 4:7] = 0.9  # 9 hot pixels: with top_k = 100, 91 of the top 100 are at 0.1
    spots[1, 0, 10, 10] = 1.0  # a single hot pixel
    return [
        Case("3 random maps of 32×32 with values in [0, 1), top_k = 100", (torch.rand(3, 1, 32, 32, generator=g), 100),
             hint="One score per image: the mean of that image's 100 highest pixels."),
        Case("2 flat maps (0.1) with a small hot spot (9 pixels at 0.9; 1 pixel at 1.0), top_k = 100",
             (spots, 100),
             hint="A small hot spot raises the score only a little: the other 91 (or 99) top pixels count too."),
        Case("2 random maps of 32×32, top_k = 1", (torch.rand(2, 1, 32, 32, generator=g), 1),
             hint="Use the top_k you are given."),
        Case("1 map of 7×9 (odd sizes: 63 pixels, fewer than top_k = 100)", (torch.rand(1, 1, 7, 9, generator=g), 100),
             hint="With fewer pixels than top_k, every pixel is in the top: take min(top_k, H·W)."),
    ]


def check_image_score(image_score: Callable) -> Verdict:
    """Check ``image_score(maps (B,1,H,W) in [0, 1], top_k=100) -> scores (B,)``."""
    return run_check("image_score", image_score, _kit_score, cases(), EQUATION)
