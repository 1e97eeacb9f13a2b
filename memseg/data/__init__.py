"""Data room: image IO, dataset layouts (MVTec AD, BTAD, folder) and the procedural synthetic dataset.

- :mod:`memseg.data.io` — ``load_image``, ``load_mask``, ``to_tensor``, ``ImageLoadError``.
- :mod:`memseg.data.datasets` — ``Record``, ``AnomalyDataset``, ``load_split``, ``list_categories``,
  ``detect_layout``.
- :mod:`memseg.data.synthetic` — ``generate``, ``ensure_synthetic``, ``CATEGORIES`` (numpy + Pillow only).

The names below are imported lazily (PEP 562), so ``import memseg.data.synthetic`` does not pull in
torch: generating the synthetic dataset stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_SUFFIXES": "memseg.data.io",
    "ImageLoadError": "memseg.data.io",
    "is_image_file": "memseg.data.io",
    "load_image": "memseg.data.io",
    "load_mask": "memseg.data.io",
    "to_tensor": "memseg.data.io",
    "LAYOUTS": "memseg.data.datasets",
    "AnomalyDataset": "memseg.data.datasets",
    "Record": "memseg.data.datasets",
    "detect_layout": "memseg.data.datasets",
    "find_records": "memseg.data.datasets",
    "list_categories": "memseg.data.datasets",
    "load_split": "memseg.data.datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memseg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
