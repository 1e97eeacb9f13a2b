"""MemSeg training constraints (paper §3.4): L1 loss, focal loss and their weighted sum (eq. 8-10).

All losses take the network's 2-class logits (B, 2, H, W) and the ground-truth anomaly mask
S (B, 1, H, W) in {0, 1}; the predicted anomaly probability is ``softmax(logits)[:, 1]``.
Probabilities are computed through ``log_softmax`` so that a confident wrong pixel gives a large
but finite loss (no ``log(0)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Validate shapes; returns the mask as float (B, H, W) on the logits' device."""
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape (B, 2, H, W), got {tuple(logits.shape)}")
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must have shape (B, 1, H, W) or (B, H, W), got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"masks of shape {tuple(masks.shape)} do not match logits {tuple(logits.shape)}: "
            f"expected (B, 1, H, W) = ({logits.shape[0]}, 1, {logits.shape[2]}, {logits.shape[3]})"
        )
    return masks.to(device=logits.device, dtype=torch.float32)


def l1_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """eq. (8): L_l1 = ||S - Ŝ||_1, averaged over pixels; Ŝ = softmax(logits)[:, 1]."""
    s = _check(logits, masks)
    prob = F.softmax(logits.float(), dim=1)[:, 1]  # (B, H, W)
    return (s - prob).abs().mean()


def focal_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    gamma: float = 4.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """eq. (9): L_f = -α_t (1 - p_t)^γ log(p_t), averaged over pixels.

    p_t = p where S = 1 and 1 - p where S = 0 (p = anomaly probability). Written as
    ``-(S (1-p)^γ log p + (1-S) p^γ log(1-p))`` which equals eq. (9) for binary S and stays
    defined for soft masks. ``alpha`` (optional, Lin et al.) weights the anomalous class by α and
    the normal class by 1 - α; ``None`` means α_t = 1.

    Args:
        logits: (B, 2, H, W) raw scores; channel 1 = anomalous.
        masks: (B, 1, H, W) or (B, H, W) ground truth S in {0, 1}.
        gamma: focusing parameter γ (paper: 4).
        alpha: class balance α in [0, 1] or None.
    """
    s = _check(logits, masks)
    logp = F.log_softmax(logits.float(), dim=1)  # numerically stable log p, log(1-p)
    log_p1, log_p0 = logp[:, 1], logp[:, 0]  # (B, H, W)
    p1, p0 = log_p1.exp(), log_p0.exp()
    pos = (p0.pow(gamma)) * log_p1  # (1 - p)^γ log p
    neg = (p1.pow(gamma)) * log_p0  # p^γ log(1 - p)
    if alpha is None:
        loss = -(s * pos + (1.0 - s) * neg)
    else:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal loss alpha must be in [0, 1] or None, got {alpha}")
        loss = -(alpha * s * pos + (1.0 - alpha) * (1.0 - s) * neg)
    return loss.mean()


class MemSegLoss(nn.Module):
    """eq. (10): L_all = λ_l1 · L_l1 + λ_f · L_f (paper: λ_l1 = 0.6, λ_f = 0.4, γ = 4).

    A weight of 0 switches its term off (loss ablation, paper Table 4); the switched-off term is
    not computed. ``forward`` returns ``(total, parts)`` with ``parts`` holding detached tensors
    ``l1``, ``focal`` (for the terms that are on) and ``loss``.
    """

    def __init__(self, l1_weight: float = 0.6, focal_weight: float = 0.4, gamma: float = 4.0,
                 alpha: float | None = None) -> None:
        super().__init__()
        if l1_weight < 0 or focal_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got l1_weight={l1_weight}, focal_weight={focal_weight}")
        if l1_weight == 0 and focal_weight == 0:
            raise ValueError("at least one of l1_weight and focal_weight must be > 0 (both terms are switched off)")
        self.l1_weight = float(l1_weight)
        self.focal_weight = float(focal_weight)
        self.gamma = float(gamma)
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if self.l1_weight > 0:
            l1 = l1_loss(logits, masks)  # eq. (8)
            total = total + self.l1_weight * l1
            parts["l1"] = l1.detach()
        if self.focal_weight > 0:
            fl = focal_loss(logits, masks, gamma=self.gamma, alpha=self.alpha)  # eq. (9)
            total = total + self.focal_weight * fl
            parts["focal"] = fl.detach()
        parts["loss"] = total.detach()
        return total, parts

    def extra_repr(self) -> str:
        return f"l1_weight={self.l1_weight}, focal_weight={self.focal_weight}, gamma={self.gamma}, alpha={self.alpha}"
