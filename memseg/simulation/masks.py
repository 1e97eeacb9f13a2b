"""The anomaly mask M = M_P ⊙ M_I (paper §3.1, first step of Fig. 3, the mask part of eq. (1)).

M_P is Perlin noise P binarised with threshold T (`memseg.simulation.perlin`); M_I is the
foreground mask of the input image (`memseg.simulation.foreground`), so anomalies land on the
object, not on the background. An empty M is redrawn with fresh noise a few times; a sample whose
M stays empty gets a small disc inside its foreground, so every simulated sample is anomalous.

Examples:
    >>> from memseg.simulation import SimulationConfig
    >>> g = torch.Generator().manual_seed(0)
    >>> masks = draw_anomaly_masks(None, (4, 64, 64), 0.5, g, None, SimulationConfig(), "cpu")
    >>> bool((masks.mask.sum(dim=(1, 2, 3)) > 0).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from memseg.simulation.foreground import ForegroundConfig, foreground_mask
from memseg.simulation.perlin import perlin_mask, perlin_noise
from memseg.simulation.sampling import random_choice

if TYPE_CHECKING:
    from memseg.simulation.simulation_config import SimulationConfig

__all__ = ["AnomalyMasks", "blob_masks", "draw_anomaly_masks", "resolve_foreground"]


def resolve_foreground(images: torch.Tensor, foreground: Any, default: ForegroundConfig | None) -> torch.Tensor | None:
    """M_I (B, 1, H, W) in {0, 1}, or None for "no foreground mask" (all ones, not materialised).

    foreground: None (use `default`), False/"none" (no mask), a ForegroundConfig, or a mask tensor
    (B, 1, H, W) / (B, H, W). An image whose foreground vanished (odd lighting, wrong preset) is
    simulated without it.
    """
    b, _, h, w = images.shape
    if isinstance(foreground, torch.Tensor):
        m = (foreground.to(images.device).float() > 0.5).float()
        m = m.unsqueeze(1) if m.dim() == 3 else m
        if m.shape != (b, 1, h, w):
            raise ValueError(f"foreground mask must have shape {(b, 1, h, w)}, got {tuple(m.shape)}")
    else:
        if foreground is None:
            cfg = default
        elif foreground is False or foreground == "none":
            cfg = None
        elif isinstance(foreground, ForegroundConfig):
            cfg = foreground
        else:
            raise ValueError("foreground must be None, False/'none', a ForegroundConfig or a mask tensor, got "
                             f"{foreground!r}")
        if cfg is None:
            return None
        m = foreground_mask(images, cfg)
    empty = m.amax(dim=(1, 2, 3)) == 0
    if bool(empty.any()):
        m = m.clone()
        m[empty] = 1.0
    return m


def blob_masks(m_i: torch.Tensor, radius: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A disc of `radius` × min(H, W) centred on a random foreground pixel of each M_I (n, 1, H, W)."""
    n, _, h, w = m_i.shape
    centre = random_choice(m_i.reshape(n, -1), generator, m_i.device)
    cy, cx = (centre // w).float().view(-1, 1, 1, 1), (centre % w).float().view(-1, 1, 1, 1)
    r = max(1.5, radius * min(h, w))
    ys = torch.arange(h, device=m_i.device, dtype=torch.float32).view(1, 1, -1, 1)
    xs = torch.arange(w, device=m_i.device, dtype=torch.float32).view(1, 1, 1, -1)
    return (((ys - cy) ** 2 + (xs - cx) ** 2) <= r * r).float()


@dataclass
class AnomalyMasks:
    """Step 1 of Fig. 3 for a batch: P, M_P, M_I, M (B, 1, H, W) and how they were drawn.

    foreground None = no restriction (M_I all ones); scale_exp (B, 2) and angle (B,) of the Perlin
    noise; resampled (B,) redraw counts; fallback (B,) bool, True where the blob was used.
    """

    noise: torch.Tensor
    perlin: torch.Tensor
    foreground: torch.Tensor | None
    mask: torch.Tensor
    scale_exp: torch.Tensor
    angle: torch.Tensor
    resampled: torch.Tensor
    fallback: torch.Tensor


def draw_anomaly_masks(
    m_i: torch.Tensor | None,
    shape: tuple[int, int, int],
    threshold: float | torch.Tensor,
    generator: torch.Generator | None,
    scale_exp: Any,
    config: SimulationConfig,
    device: str | torch.device,
) -> AnomalyMasks:
    """P, M_P = P > T and M = M_P ⊙ M_I for (B, H, W), redrawing empty masks, then the blob fallback.

    threshold: T, a float or (B,) tensor; scale_exp: None, an int, a pair or (B, 2) (see perlin_noise).
    """
    b, h, w = shape

    def noise_for(rows: torch.Tensor | None):
        exps = (scale_exp[rows.cpu()]
                if isinstance(scale_exp, torch.Tensor) and scale_exp.dim() == 2 and rows is not None else scale_exp)
        n = b if rows is None else len(rows)
        return perlin_noise(n, h, w, generator, device, config.scale_exp_range, exps, rotate=config.rotate,
                            samples_per_cell=config.samples_per_cell, return_params=True)

    def threshold_for(rows: torch.Tensor):
        return threshold[rows] if isinstance(threshold, torch.Tensor) and threshold.dim() else threshold

    def restrict(m_p: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        return m_p * m_i[rows] if m_i is not None else m_p  # M = M_P ⊙ M_I

    p, params = noise_for(None)
    m_p = perlin_mask(p, threshold)
    m = restrict(m_p, slice(None))
    resampled = torch.zeros(b, dtype=torch.long)
    fallback = torch.zeros(b, dtype=torch.bool)
    empty = torch.nonzero(m.amax(dim=(1, 2, 3)) == 0).view(-1).cpu()
    for _ in range(config.max_resample):
        if empty.numel() == 0:
            break
        rows = empty.to(device)
        p_new, redrawn = noise_for(empty)
        p[rows], m_p[rows] = p_new, perlin_mask(p_new, threshold_for(rows))
        if m_i is not None:
            m[rows] = restrict(m_p[rows], rows)
        params["scale_exp"][empty], params["angle"][empty] = redrawn["scale_exp"], redrawn["angle"]
        resampled[empty] += 1
        empty = empty[(m[rows].amax(dim=(1, 2, 3)) == 0).cpu()]
    if empty.numel():  # still empty: a small blob inside the foreground
        rows = empty.to(device)
        fg = m_i[rows] if m_i is not None else torch.ones(len(empty), 1, h, w, device=device)
        m_p[rows] = blob_masks(fg, config.blob_radius, generator)
        if m_i is not None:
            m[rows] = restrict(m_p[rows], rows)
        fallback[empty] = True
    return AnomalyMasks(p, m_p, m_i, m, params["scale_exp"], params["angle"], resampled, fallback)
