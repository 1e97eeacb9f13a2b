"""Tiny fake MVTec-AD-layout datasets for the training / evaluation / inference tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

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
