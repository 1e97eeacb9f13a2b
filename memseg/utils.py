"""Small shared helpers: device selection, seeding, ImageNet normalisation."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cpu`/`cuda`/`cuda:1` are taken as given.

    Asking for cuda on a machine without it is an error, not a silent fallback.
    A CUDA device always comes back with its index (``cuda:0``, not ``cuda``), so it compares equal
    to the ``.device`` of the tensors placed on it.
    """
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} was requested but CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
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


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """A region that runs in float32 even inside an autocast region (e.g. bf16 training on CUDA)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()
