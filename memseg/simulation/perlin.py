"""Batched, seedable 2-D Perlin noise in torch (paper §3.1, first step of Fig. 3).

The noise P is evaluated directly on (rotated) pixel coordinates, so any H×W works (no
"size must be a multiple of the period" restriction of the classic numpy port) and the rotation
is applied to the *sampling coordinates*, not by resampling a noise image.

Speed (per-pixel Perlin noise dominated the public ports' data loading): the noise is smooth inside a lattice cell, so
each sample is evaluated on a coarse grid with about `samples_per_cell` points per cell along its shortest
cell side and bilinearly upsampled to H×W. Samples are grouped by coarse-grid size so a batch
with mixed periods does not pay the finest grid for every sample.

All random numbers are drawn from the given `torch.Generator` on the generator's device (CPU
when none is given) and then moved to `device`, so a CPU generator gives the same noise on CPU
and CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memseg.simulation.sampling import random_int, random_uniform

__all__ = ["perlin_mask", "perlin_noise", "sample_scale_exp"]


def sample_scale_exp(
    batch: int,
    generator: torch.Generator | None = None,
    scale_exp_range: tuple[int, int] = (0, 5),
    scale_exp: int | tuple[int, int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample (exp_y, exp_x) as a LongTensor (B, 2) on the CPU.

    The noise has 2**exp_y lattice cells across the height and 2**exp_x across the width.
    Random exponents are uniform over the inclusive `scale_exp_range` (paper/DRAEM: 2^0..2^5);
    `scale_exp` fixes them: an int (both axes), a pair (exp_y, exp_x), or a tensor (B, 2).
    """
    lo, hi = int(scale_exp_range[0]), int(scale_exp_range[1])
    if scale_exp is None:
        if lo < 0 or hi < lo:
            raise ValueError(f"scale_exp_range must be 0 <= low <= high, got {scale_exp_range}")
        return random_int(lo, hi + 1, (batch, 2), generator)
    exps = torch.as_tensor(scale_exp, dtype=torch.long).detach().cpu()
    if exps.dim() == 0:
        exps = exps.repeat(2)
    if exps.shape == (2,):
        exps = exps.view(1, 2).expand(batch, 2)
    if exps.shape != (batch, 2) or int(exps.min()) < 0:
        raise ValueError(f"scale_exp must be an int >= 0, a pair or a (B={batch}, 2) tensor; got {scale_exp!r}")
    return exps.contiguous()


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _noise_at(
    ys: torch.Tensor,
    xs: torch.Tensor,
    cells: torch.Tensor,
    angle: torch.Tensor,
    theta: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Perlin noise of G samples on a shared grid of pixel coordinates.

    ys (n_y,), xs (n_x,): pixel-centre coordinates (index units) where the noise is evaluated.
    cells (G, 2): lattice cells across (height, width); angle (G,): rotation in radians.
    theta (G, n_lat_y, n_lat_x): gradient directions on the lattice (radians).
    Returns (G, n_y, n_x), values in about [-1, 1] (DRAEM's sqrt(2) scaling).
    """
    g, _, n_lat_x = theta.shape
    device = theta.device
    radius = 0.5 * math.hypot(height, width)  # half-diagonal: bound of |rotated coordinate|
    per_px_y = cells[:, 0].to(torch.float32) / height  # lattice units per pixel (G,)
    per_px_x = cells[:, 1].to(torch.float32) / width
    grad_x, grad_y = torch.cos(theta).view(g, -1), torch.sin(theta).view(g, -1)  # unit gradients

    px, py = per_px_x.to(device).view(-1, 1, 1), per_px_y.to(device).view(-1, 1, 1)
    c, s = torch.cos(angle).to(device).view(-1, 1, 1), torch.sin(angle).to(device).view(-1, 1, 1)
    # Centred pixel coordinates (xc, yc) rotated about the image centre and scaled to lattice
    # units, shifted so they are >= 0:  u = px (c xc - s yc + R),  v = py (s xc + c yc + R).
    # Both are affine, so each is one broadcast add of a row term and a column term: (G, n_y, n_x).
    yc = (ys + 0.5 - height / 2).view(1, -1, 1)
    xc = (xs + 0.5 - width / 2).view(1, 1, -1)
    u = (px * c) * xc + (px * radius - (px * s) * yc)
    v = (py * s) * xc + (py * radius + (py * c) * yc)
    u0, v0 = u.floor(), v.floor()
    fu, fv = u - u0, v - v0
    i00 = (v0.long() * n_lat_x + u0.long()).view(g, -1)  # (G, N) flat lattice index
    i10, i01, i11 = i00 + 1, i00 + n_lat_x, i00 + n_lat_x + 1
    fu, fv = fu.view(g, -1), fv.view(g, -1)

    def dot(idx: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return grad_x.gather(1, idx) * dx + grad_y.gather(1, idx) * dy

    n00 = dot(i00, fu, fv)
    n10 = dot(i10, fu - 1, fv)
    n01 = dot(i01, fu, fv - 1)
    n11 = dot(i11, fu - 1, fv - 1)
    wu, wv = _fade(fu), _fade(fv)
    noise = torch.lerp(torch.lerp(n00, n10, wu), torch.lerp(n01, n11, wu), wv)
    return (math.sqrt(2.0) * noise).view(g, ys.numel(), xs.numel())


def perlin_noise(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    scale_exp_range: tuple[int, int] = (0, 5),
    scale_exp: int | tuple[int, int] | torch.Tensor | None = None,
    rotate: bool = True,
    angle: float | torch.Tensor | None = None,
    samples_per_cell: float = 4.0,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Perlin noise P, FloatTensor (B, 1, H, W) with values in about [-1, 1].

    Args:
        batch, height, width: output shape; any H×W.
        generator: torch.Generator for reproducible noise (same seed -> same noise).
        device: where the noise is computed and returned.
        scale_exp_range: inclusive range of the period exponents (2^lo .. 2^hi cells per axis).
        scale_exp: fix the exponents (int, (exp_y, exp_x) or (B, 2) tensor) instead of sampling.
        rotate: rotate the sampling coordinates by a random angle in [-90°, 90°) (DRAEM/MemSeg).
        angle: fix the rotation (radians, float or (B,) tensor); overrides `rotate`.
        samples_per_cell: coarse-grid density before bilinear upsampling (0 => full resolution).
        return_params: also return {"scale_exp": (B, 2), "angle": (B,)}.
    """
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"perlin_noise needs batch, height, width >= 1; got {batch}, {height}, {width}")
    device = torch.device(device)
    exps = sample_scale_exp(batch, generator, scale_exp_range, scale_exp)  # (B, 2) CPU
    if angle is not None:
        angles = torch.as_tensor(angle, dtype=torch.float32).reshape(-1).expand(batch).clone()
    elif rotate:
        angles = random_uniform((batch,), generator, "cpu", -math.pi / 2, math.pi / 2)
    else:
        angles = torch.zeros(batch)
    cells = 2**exps  # (B, 2) lattice cells across (H, W)

    # Coarse-grid step in pixels per sample: `samples_per_cell` points along the shortest cell side.
    min_cell = torch.minimum(height / cells[:, 0].float(), width / cells[:, 1].float())
    step = (min_cell / samples_per_cell).clamp(min=1.0) if samples_per_cell > 0 else torch.ones(batch)
    n_y = torch.clamp(torch.ceil((height - 1) / step).long() + 1, max=height)
    n_x = torch.clamp(torch.ceil((width - 1) / step).long() + 1, max=width)

    # Random gradient directions on a lattice that covers the rotated image for every sample,
    # drawn once for the batch so the noise does not depend on the coarse-grid grouping.
    radius = 0.5 * math.hypot(height, width)
    n_lat_y = int(math.floor(2 * radius * float(cells[:, 0].max()) / height)) + 2
    n_lat_x = int(math.floor(2 * radius * float(cells[:, 1].max()) / width)) + 2
    theta = random_uniform((batch, n_lat_y, n_lat_x), generator, device, 0.0, 2 * math.pi)

    out = torch.empty(batch, 1, height, width, device=device)
    groups = torch.stack([n_y, n_x], 1)
    for key in torch.unique(groups, dim=0):
        gy, gx = int(key[0]), int(key[1])
        members = torch.nonzero((groups == key).all(1)).view(-1)
        full = gy >= height and gx >= width
        gy, gx = (height, width) if full else (max(gy, 2), max(gx, 2))
        ys = torch.linspace(0, height - 1, gy, device=device)
        xs = torch.linspace(0, width - 1, gx, device=device)
        sel = members.to(device)
        noise = _noise_at(ys, xs, cells[members], angles[members], theta[sel], height, width)
        noise = noise.unsqueeze(1)  # (G, 1, gy, gx)
        if not full:
            noise = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=True)
        out[sel] = noise
    if return_params:
        return out, {"scale_exp": exps, "angle": angles}
    return out


def perlin_mask(noise: torch.Tensor, threshold: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Binarise P with threshold T into M_P (float {0, 1}, same shape); T may be per sample (B,)."""
    if isinstance(threshold, torch.Tensor) and threshold.dim() > 0:
        threshold = threshold.to(noise.device, noise.dtype).view(-1, *([1] * (noise.dim() - 1)))
    return (noise > threshold).to(noise.dtype)
