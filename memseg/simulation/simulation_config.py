"""The simulation's parameters (paper §3.1): :class:`SimulationConfig`, the one schema of ``simulation:``.

Every step of Fig. 3 reads its numbers from here: the Perlin threshold T and period range (step 1), the
foreground mask M_I (:class:`memseg.simulation.foreground.ForegroundConfig`), the two noise sources (step 2)
and δ of eq. (1). Its own module, below the steps that read it (``masks``, ``structure``, ``simulator``), so
that none of them imports another in a circle.

Examples:
    >>> SimulationConfig(threshold=0.3).grid
    (4, 8)
    >>> SimulationConfig(foreground={"measure": "warmth"}).foreground.measure
    'warmth'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memseg.simulation.foreground import ForegroundConfig

__all__ = ["THRESHOLD_RANGE", "SimulationConfig", "check_perlin_threshold"]


THRESHOLD_RANGE = (-1.0, 1.0)
"""Open interval of usable Perlin thresholds T: P lies in about [-1, 1], so T >= 1 leaves (almost) every mask
empty (each redrawn ``max_resample`` times, then a fallback blob: 100x slower) and T <= -1 masks everything."""


def check_perlin_threshold(threshold, what: str = "threshold", finite_only: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` unless the Perlin threshold T (a float or a tensor) is finite and
    within :data:`THRESHOLD_RANGE` (exclusive); ``finite_only``: only finiteness (``simulate(threshold=...)``
    may force the empty-mask fallback on purpose)."""
    t = (torch.as_tensor(threshold, dtype=torch.float32) if not isinstance(threshold, torch.Tensor)
         else threshold.float())
    lo, hi = THRESHOLD_RANGE
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or (
            not finite_only and (float(t.min()) <= lo or float(t.max()) >= hi)):
        shown = threshold if not isinstance(threshold, torch.Tensor) or threshold.numel() > 8 else threshold.tolist()
        where = "" if finite_only else (f" in ({lo:g}, {hi:g}) (the Perlin noise P lies in about [-1, 1]; the paper "
                                        "uses 0.5)")
        raise ValueError(f"{what} must be a finite number{where}, got {shown!r}")


@dataclass
class SimulationConfig:
    """Parameters of the simulation; the first eight are the paper's/ARCHITECTURE.md's.

    threshold: Perlin threshold T (M_P = P > T); P is in about [-1, 1].
    delta_range: δ ~ U[delta_range] (eq. 1).
    scale_exp_range: Perlin period exponents per axis, inclusive (2^0..2^5 cells).
    grid: (rows, cols) of the structural tile shuffle (paper: 4×8).
    texture_prob: probability of a DTD texture source (else structural); 0 => structure only.
    rotate: rotate the Perlin sampling coordinates by a random angle.
    max_resample: how often an empty M is redrawn before falling back to a blob.
    foreground: ForegroundConfig for M_I; None => the category preset (or no mask).
    brightness, saturation: multiplicative factor ranges of the structural colour jitter.
    hue: hue rotation range, in turns (0.1 = 36°).
    mirror_prob: probability of each horizontal/vertical mirror (structure and texture).
    rot90: random multiples of 90° (180° only for non-square images).
    max_angle: extra small rotation of the structure source, ±degrees (0 = off; costs a resample).
    samples_per_cell: Perlin coarse-grid density (see `memseg.simulation.perlin.perlin_noise`).
    blob_radius: radius of the fallback blob as a fraction of min(H, W).
    sparse_max_fraction: composite only the masked pixels when M covers at most this fraction
        of the batch (same result, much faster); 0 = always build the full noise image.
    """

    threshold: float = 0.5
    delta_range: tuple[float, float] = (0.15, 1.0)
    scale_exp_range: tuple[int, int] = (0, 5)
    grid: tuple[int, int] = (4, 8)
    texture_prob: float = 0.5
    rotate: bool = True
    max_resample: int = 10
    foreground: ForegroundConfig | None = None
    brightness: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: tuple[float, float] = (-0.1, 0.1)
    mirror_prob: float = 0.5
    rot90: bool = True
    max_angle: float = 0.0
    samples_per_cell: float = 4.0
    blob_radius: float = 0.06
    sparse_max_fraction: float = 0.3

    def __post_init__(self) -> None:
        if isinstance(self.foreground, dict):  # from YAML / asdict
            self.foreground = ForegroundConfig(**self.foreground)
        self.delta_range = (float(self.delta_range[0]), float(self.delta_range[1]))
        self.scale_exp_range = (int(self.scale_exp_range[0]), int(self.scale_exp_range[1]))
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        lo, hi = self.delta_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"delta_range must satisfy 0 <= low <= high <= 1, got {self.delta_range}")
        check_perlin_threshold(self.threshold, "threshold")
        if not 0.0 <= self.texture_prob <= 1.0:
            raise ValueError(f"texture_prob must be in [0, 1], got {self.texture_prob}")
        if min(self.grid) < 1:
            raise ValueError(f"grid must be (rows >= 1, cols >= 1), got {self.grid}")
        if self.max_resample < 0:
            raise ValueError(f"max_resample must be >= 0, got {self.max_resample}")
