"""Losses of MemSeg (paper §3.4, eq. 8-10) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memseg.models.memseg.loss import MemSegLoss, focal_loss, l1_loss


def _two_pixel_case() -> tuple[torch.Tensor, torch.Tensor]:
    # logits (1, 2, 1, 2): pixel a = (0, 2) -> p = σ(2); pixel b = (1, -1) -> p = σ(-2)
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, -1.0]]]])
    masks = torch.tensor([[[[1.0, 0.0]]]])  # pixel a anomalous, pixel b normal
    return logits, masks


def test_focal_loss_matches_hand_computation() -> None:
    logits, masks = _two_pixel_case()
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    p_a, p_b = sig(2.0), sig(-2.0)
    # eq. (9): p_t = p where S = 1, 1 - p where S = 0
    pt_a, pt_b = p_a, 1.0 - p_b
    expected = (-((1 - pt_a) ** 4) * math.log(pt_a) - ((1 - pt_b) ** 4) * math.log(pt_b)) / 2
    got = focal_loss(logits, masks, gamma=4.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # with α: α_t = α for anomalous pixels, 1 - α for normal ones
    alpha = 0.25
    expected_a = (-alpha * (1 - pt_a) ** 4 * math.log(pt_a) - (1 - alpha) * (1 - pt_b) ** 4 * math.log(pt_b)) / 2
    assert focal_loss(logits, masks, gamma=4.0, alpha=alpha).item() == pytest.approx(expected_a, rel=1e-5)


def test_focal_loss_gamma_zero_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 7, generator=g) * 3
    masks = (torch.rand(2, 1, 5, 7, generator=g) > 0.5).float()
    ce = F.cross_entropy(logits, masks[:, 0].long())
    assert focal_loss(logits, masks, gamma=0.0).item() == pytest.approx(ce.item(), rel=1e-5)


def test_l1_loss_matches_hand_computation() -> None:
    logits, masks = _two_pixel_case()
    p_a, p_b = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))
    expected = (abs(1 - p_a) + abs(0 - p_b)) / 2  # eq. (8), mean over pixels
    assert l1_loss(logits, masks).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_weights_and_switches() -> None:
    logits, masks = _two_pixel_case()
    total, parts = MemSegLoss()(logits, masks)  # paper: 0.6, 0.4, γ = 4
    expected = 0.6 * l1_loss(logits, masks) + 0.4 * focal_loss(logits, masks, gamma=4.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"l1", "focal", "loss"}
    only_l1, parts = MemSegLoss(l1_weight=1.0, focal_weight=0.0)(logits, masks)
    assert set(parts) == {"l1", "loss"} and only_l1.item() == pytest.approx(l1_loss(logits, masks).item())
    only_focal, parts = MemSegLoss(l1_weight=0.0, focal_weight=1.0)(logits, masks)
    assert set(parts) == {"focal", "loss"}
    assert only_focal.item() == pytest.approx(focal_loss(logits, masks, gamma=4.0).item())
    with pytest.raises(ValueError, match="both terms"):
        MemSegLoss(0.0, 0.0)


def test_losses_are_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[[[200.0, -200.0]], [[-200.0, 200.0]]]], requires_grad=True)
    masks = torch.tensor([[[[1.0, 0.0]]]])  # both pixels confidently wrong
    total, _ = MemSegLoss()(logits, masks)
    total.backward()
    assert torch.isfinite(total) and total.item() > 1.0
    assert torch.isfinite(logits.grad).all()


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        focal_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="do not match"):
        l1_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), alpha=2.0)
