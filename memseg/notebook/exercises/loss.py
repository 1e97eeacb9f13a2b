"""Exercise 6 (paper §3.4): the focal loss of eq. (9).

The expected answer is the kit's :func:`memseg.models.memseg.loss.focal_loss` with α_t = 1 (its default):
p = softmax(logits)[:, 1] is the anomaly probability, p_t = p on anomalous pixels (S = 1) and 1 - p on
normal ones, and the loss is the mean over pixels of -(1 - p_t)^γ log(p_t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memseg.models.memseg.loss import focal_loss
from memseg.notebook.exercises.check import Case, Verdict, run_check

__all__ = ["check_focal_loss"]

EQUATION = ("eq. (9): L_f = -α_t (1 - p_t)^γ log(p_t) with α_t = 1, averaged over all pixels of all images; "
            "p = softmax(logits, dim=1)[:, 1] (channel 1 = anomalous), p_t = p where S = 1 and 1 - p where S = 0.")


def _kit_focal(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    return focal_loss(logits, masks, gamma=gamma)


def _inputs(b: int, h: int, w: int, seed: int, scale: float = 2.0, mask: str = "random"):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(b, 2, h, w, generator=g)
    if mask == "random":
        masks = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
    else:
        masks = torch.full((b, 1, h, w), 1.0 if mask == "full" else 0.0)
    return logits, masks


def cases() -> list[Case]:
    return [
        Case("a full mask S (every pixel anomalous), γ = 4", _inputs(2, 8, 8, 4, mask="full"), {"gamma": 4.0},
             hint="Where S = 1, p_t = p: the term is -(1 - p)^γ log(p); (1 - p)^γ makes confidently right pixels "
                  "(p near 1) add almost nothing."),
        Case("an empty mask S (every pixel normal), γ = 4", _inputs(2, 8, 8, 3, mask="empty"), {"gamma": 4.0},
             hint="Where S = 0, p_t = 1 - p: the term is -p^γ log(1 - p)."),
        Case("logits: 2 images of 16×16 (2 channels, normal and anomalous), values ~ 2·N(0, 1); S: 30 % of pixels "
             "anomalous; γ = 4 (the paper's)", _inputs(2, 16, 16, 0), {"gamma": 4.0},
             hint="Each pixel uses its own p_t: p where S = 1, 1 - p where S = 0."),
        Case("the same kind of input with γ = 2", _inputs(2, 16, 16, 1), {"gamma": 2.0},
             hint="Use the γ you are given."),
        Case("1 image of 15×21 (odd sizes), γ = 4", _inputs(1, 15, 21, 2), {"gamma": 4.0},
             hint="Average over every pixel, whatever the size."),
        Case("confident logits (~ 15·N(0, 1)), some of them confidently wrong, γ = 4",
             _inputs(2, 8, 8, 5, scale=15.0), {"gamma": 4.0},
             hint="Compute log p with torch.log_softmax, so a very small p does not become log(0)."),
    ]


def check_focal_loss(focal: Callable) -> Verdict:
    """Check ``focal(logits (B,2,H,W), masks S (B,1,H,W) in {0, 1}, gamma=4.0) -> the loss (a 0-d tensor)``."""
    return run_check("focal_loss", focal, _kit_focal, cases(), EQUATION, rtol=1e-4, atol=1e-6)
