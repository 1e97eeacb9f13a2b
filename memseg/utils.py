"""Small shared helpers: device selection, seeding, ImageNet normalisation."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cpu`/`cuda`/`cuda:1` are taken as given.

    Asking for cuda on a machine without it is an error, not a silent fallback.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available on this machine; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU torch.Generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of images in [0, 1], shape (B, 3, H, W) or (3, H, W).

    Applied *after* anomaly compositing (PITFALLS: never before).
    """
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return (images * std + mean).clamp(0, 1)
