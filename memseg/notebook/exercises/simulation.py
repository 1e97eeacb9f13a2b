"""Exercises 1-2 (paper §3.1, Fig. 3): the anomaly mask M = M_P ⊙ M_I and the blend of eq. (1)-(2).

The expected answers come from the kit: :func:`memseg.simulation.perlin_mask` (M_P = [P > T]) and
:func:`memseg.simulation.composite` (eq. 1-2). Noise P comes from :func:`memseg.simulation.perlin_noise`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memseg.notebook.exercises.check import Case, Verdict, run_check
from memseg.simulation import composite, perlin_mask, perlin_noise

__all__ = ["check_anomaly_mask", "check_blend"]

MASK_EQUATION = ("Fig. 3 / eq. (1): M_P = 1 where the Perlin noise P is above the threshold T (P > T), 0 elsewhere, "
                 "and the anomaly mask is M = M_P ⊙ M_I (element-wise product with the foreground mask M_I).")
BLEND_EQUATION = ("eq. (1): I'_n = δ(M ⊙ I_n) + (1 - δ)(M ⊙ I); eq. (2): I_A = M̄ ⊙ I + I'_n with M̄ = 1 - M; "
                  "return (I_A, I'_n) in that order.")


def _kit_anomaly_mask(noise: torch.Tensor, threshold: float, foreground: torch.Tensor) -> torch.Tensor:
    return perlin_mask(noise, threshold) * foreground  # M = M_P ⊙ M_I, as memseg.simulation.masks does


def _noise(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    return perlin_noise(b, h, w, torch.Generator().manual_seed(seed), scale_exp_range=(1, 3))


def _half(b: int, h: int, w: int) -> torch.Tensor:
    m = torch.zeros(b, 1, h, w)
    m[..., : w // 2] = 1.0
    return m


def _disc(b: int, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.arange(h).view(-1, 1).float(), torch.arange(w).view(1, -1).float()
    inside = (ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2 <= (0.4 * min(h, w)) ** 2
    return inside.float().expand(b, 1, h, w).clone()


def mask_cases() -> list[Case]:
    quantised = (_noise(2, 20, 20, 3) * 10).round() / 10  # many pixels exactly at T = 0.2
    return [
        Case("P: Perlin noise of 2 images of 32×32, T = 0.5, M_I all ones (the whole image is foreground)",
             (_noise(2, 32, 32, 0), 0.5, torch.ones(2, 1, 32, 32)),
             hint="With M_I all ones, M is just M_P."),
        Case("P: Perlin noise of 2 images of 32×32, T = 0.1, M_I = the left half of each image",
             (_noise(2, 32, 32, 1), 0.1, _half(2, 32, 32)),
             hint="Anomalies may only land on the object: M is 0 wherever M_I is 0."),
        Case("P: Perlin noise of 3 images of 17×23 (odd sizes), T = -0.2, M_I = a disc in the middle",
             (_noise(3, 17, 23, 2), -0.2, _disc(3, 17, 23)),
             hint="Nothing depends on the image size, and T may be negative."),
        Case("P rounded to one decimal (many pixels exactly equal to T), T = 0.2, M_I all ones",
             (quantised, 0.2, torch.ones(2, 1, 20, 20)),
             hint="The comparison is strict: a pixel with P exactly equal to T stays normal."),
        Case("an empty mask: T = 1.5 lies above every noise value, M_I all ones",
             (_noise(2, 16, 16, 4), 1.5, torch.ones(2, 1, 16, 16)),
             hint="When no pixel is above T, M is all zeros (a float mask of zeros, not an error)."),
        Case("an empty foreground: T = -1.5 (every pixel is above it), M_I all zeros",
             (_noise(1, 16, 16, 5), -1.5, torch.zeros(1, 1, 16, 16)),
             hint="An empty M_I gives an empty M, whatever M_P is."),
    ]


def check_anomaly_mask(anomaly_mask: Callable) -> Verdict:
    """Check ``anomaly_mask(noise P (B,1,H,W), threshold T, foreground M_I (B,1,H,W)) -> M (B,1,H,W) in {0, 1}``."""
    return run_check("anomaly_mask", anomaly_mask, _kit_anomaly_mask, mask_cases(), MASK_EQUATION)


def _blend_inputs(b: int, h: int, w: int, seed: int, delta: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    image, noise = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)
    if mask is None:
        mask = perlin_mask(perlin_noise(b, h, w, g, scale_exp_range=(1, 3)), 0.3)
    if delta is None:
        delta = 0.2 + 0.8 * torch.rand(b, 1, 1, 1, generator=g)
    return image, noise, mask, delta


def blend_cases() -> list[Case]:
    d = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    return [
        Case("an empty mask M (all zeros), random δ",
             _blend_inputs(2, 16, 16, 3, mask=torch.zeros(2, 1, 16, 16)),
             hint="With M = 0 nothing is simulated: I'_n is all zeros and I_A equals I."),
        Case("δ = 1 for the first image (only the noise inside M) and δ = 0 for the second (only the original)",
             _blend_inputs(2, 24, 24, 1, delta=d),
             hint="δ weights the noise image I_n and 1 - δ the original I."),
        Case("I and I_n: 2 random images of 32×32, M: a Perlin mask (T = 0.3), δ = 0.2 + 0.8·U(0, 1) per image",
             _blend_inputs(2, 32, 32, 0),
             hint="Inside M the pixels mix the noise image and the original; outside M the image is untouched."),
        Case("one image of 15×21 (odd sizes), a Perlin mask, random δ",
             _blend_inputs(1, 15, 21, 2),
             hint="Everything is element-wise; M (B,1,H,W) and δ (B,1,1,1) broadcast over the 3 colour channels."),
    ]


def check_blend(blend: Callable) -> Verdict:
    """Check ``blend(image I, noise I_n (B,3,H,W), mask M (B,1,H,W), delta δ (B,1,1,1)) -> (I_A, I'_n)``."""
    return run_check("blend", blend, composite, blend_cases(), BLEND_EQUATION)
