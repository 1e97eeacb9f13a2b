"""Tiny test material, one way to build each (no downloads; ``tests/conftest.py`` serves them as fixtures):

- :func:`make_tiny_dataset`: a fake MVTec-AD-layout dataset (training / evaluation / inference tests);
- :func:`make_tiny_model`: a tiny model of any registered name (random weights, memory bank filled);
- :func:`tiny_batch`: a training step's (inputs, masks, clean) with simulated anomaly masks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def make_tiny_dataset(root: Path, category: str = "tiny", n_train: int = 12, n_good: int = 3, n_defect: int = 3,
                      size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Write ``root/<category>/{train/good, test/good, test/spot, ground_truth/spot}`` PNGs.

    Normal images: dark grey noise (values 40..80). Defect images: the same plus one bright
    (255) square; its mask marks exactly that square. ``size`` is (H, W). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    cat = Path(root) / category

    def normal() -> np.ndarray:
        return rng.integers(40, 80, size=(h, w, 3), dtype=np.uint8)

    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(normal()).save(cat / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(normal()).save(cat / "test/good" / f"{i:03d}.png")
    for i in range(n_defect):
        img, mask = normal(), np.zeros((h, w), np.uint8)
        s = max(h, w) // 4
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        img[y:y + s, x:x + s] = 255
        mask[y:y + s, x:x + s] = 255
        Image.fromarray(img).save(cat / "test/spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
    return Path(root)


# ------------------------------------------------------------------------------------ tiny models and batches
TINY_SIZE = 64  # (H, W) = (64, 64): a multiple of 32 (MemSeg, DRAEM) and of 16 (MMR)
TINY_MEMORY_SIZE = 2
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "draem": {"base_width": 4, "disc_base_width": 4},  # narrower than DRAEMConfig.quick_options() (16 / 16)
    "mmr": {"embed_dim": 32, "depth": 2, "num_heads": 2},  # smaller than MMRConfig.quick_options() (192 / 4 / 3)
}
"""Per-model options on top of :func:`tiny_options`' generic ones: the smallest settings the tests already used."""


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def tiny_options(name: str, size: int | tuple[int, int] = TINY_SIZE, memory_size: int = TINY_MEMORY_SIZE,
                 **overrides: Any) -> dict[str, Any]:
    """Model options of a tiny ``name`` model for any registered name: the config's ``quick_options()`` (its CPU
    configuration) where it has one, ``input_size``, random ``weights`` and ``memory_size`` where the config has
    those fields, then :data:`TINY_OPTIONS` and ``overrides``."""
    from memseg.models import MODEL_CONFIGS

    cls = MODEL_CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    options: dict[str, Any] = dict(cls.quick_options()) if hasattr(cls, "quick_options") else {}
    options["input_size"] = _size(size)
    if "weights" in fields:
        options["weights"] = "random"
    if "memory_size" in fields:
        options["memory_size"] = memory_size
    return {**options, **TINY_OPTIONS.get(name, {}), **overrides}


def make_tiny_model(name: str = "memseg", size: int | tuple[int, int] = TINY_SIZE, memory_size: int = TINY_MEMORY_SIZE,
                    seed: int = 0, **overrides: Any):
    """A tiny ``name`` model in eval mode, random weights from ``torch.manual_seed(seed)``; a model with a memory
    bank has it filled from ``memory_size`` random images (``torch.rand`` with a generator seeded ``seed``,
    normalised). ``overrides``: more model options (see :func:`tiny_options`)."""
    import torch

    from memseg.models import build_model
    from memseg.utils import normalize

    h, w = _size(size)
    torch.manual_seed(seed)
    model = build_model(name, tiny_options(name, (h, w), memory_size, **overrides))
    if model.memory_size:
        g = torch.Generator().manual_seed(seed)
        model.prepare(normalize(torch.rand(model.memory_size, 3, h, w, generator=g)))
    return model.eval()


def tiny_batch(b: int = 2, size: int | tuple[int, int] = TINY_SIZE, seed: int = 0, n_normal: int = 1):
    """A training step's batch as ``memseg.engine.training._step_batch`` returns it: normalised ``(inputs, masks,
    clean)``, (B, 3, H, W), (B, 1, H, W) in {0, 1}, (B, 3, H, W). The first ``n_normal`` images are clean; each
    other one has a simulated anomaly: a random-noise rectangle (a quarter of each side) marked in its mask."""
    import torch

    from memseg.utils import normalize

    h, w = _size(size)
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(b, 3, h, w, generator=g)
    masks = torch.zeros(b, 1, h, w)
    for i in range(n_normal, b):
        y = int(torch.randint(0, h - h // 4 + 1, (1,), generator=g))
        x = int(torch.randint(0, w - w // 4 + 1, (1,), generator=g))
        masks[i, :, y:y + h // 4, x:x + w // 4] = 1.0
    inputs = clean * (1 - masks) + torch.rand(b, 3, h, w, generator=g) * masks
    return normalize(inputs), masks, normalize(clean)
