"""Random draws of the anomaly simulation (paper §3.1): every random number comes from one generator.

Numbers are drawn on the generator's device (the CPU when none is given) and then moved to where
they are used, so a CPU `torch.Generator` gives the same anomalies on CPU and CUDA, and the same
seed gives the same batch.

Examples:
    >>> g = torch.Generator().manual_seed(0)
    >>> random_uniform((2, 3), g, low=0.15, high=1.0).shape
    torch.Size([2, 3])
    >>> random_permutation(4, 32, g).shape  # four random orders of the 4x8 tiles
    torch.Size([4, 32])
"""

from __future__ import annotations

import torch

__all__ = ["generator_device", "random_choice", "random_int", "random_permutation", "random_uniform"]


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on: the generator's, or the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")


def random_uniform(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """U[low, high) float32 of `shape`, drawn on the generator's device, returned on `device`."""
    u = torch.rand(shape, generator=generator, device=generator_device(generator))
    return (low + (high - low) * u).to(device)


def random_int(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Integers uniform in [low, high), LongTensor of `shape` on the CPU."""
    return torch.randint(low, high, shape, generator=generator, device=generator_device(generator)).cpu()


def random_permutation(rows: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`rows` independent random orders of range(n): LongTensor (rows, n) on the CPU."""
    return torch.argsort(random_uniform((rows, n), generator), dim=1)


def random_choice(
    weights: torch.Tensor, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """One column per row of `weights` (n, K), drawn with probability ∝ weight: LongTensor (n,) on `device`."""
    picks = torch.multinomial(weights.to(generator_device(generator)), 1, generator=generator)
    return picks.view(-1).to(device)
