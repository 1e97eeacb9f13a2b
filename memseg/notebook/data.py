"""The notebooks' data: the settings' splits, images as tensors, the memory images of a checkpoint,
and the anomaly simulator (paper §3.1) for the notebook's category.

Examples:
    >>> pick_indices(10, 3, seed=0) == pick_indices(10, 3, seed=0)   # deterministic
    True
    >>> pick_indices(3, None)
    [0, 1, 2]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from memseg.notebook.settings import NotebookSettings


def settings_split(settings: NotebookSettings, split: str = "train", size: tuple[int, int] | None = None):
    """:func:`memseg.data.load_split` of the notebook's dataset and category (at ``settings.size``)."""
    from memseg.data import load_split

    return load_split(settings.data_root, settings.category, split=split, size=size or settings.size)


def pick_indices(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """``n`` distinct indices out of ``n_total`` (all when n is None or ≥ n_total), sorted, deterministic."""
    if n is None or n >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:n].tolist())


def load_images(dataset, n: int | None = None, seed: int = 0, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Images of a dataset as float (N, 3, H, W) in [0, 1] (not normalised): the given ``indices``,
    or ``n`` picked at random (seeded), or all."""
    idx = list(indices) if indices is not None else pick_indices(len(dataset), n, seed)
    return dataset.load_images(indices=idx, progress=False).float() / 255.0


def first_anomalous(dataset, defect: str | None = None) -> int:
    """Index of the first anomalous record (of ``defect`` when given)."""
    for i, r in enumerate(dataset.records):
        if r.label == 1 and (defect is None or r.defect == defect):
            return i
    raise ValueError(f"no anomalous image{' of defect ' + repr(defect) if defect else ''} in this split")


def memory_images(settings: NotebookSettings, info: dict) -> torch.Tensor:
    """The training images that form the model's memory bank, (N, 3, H, W) in [0, 1], in memory-slot order.

    The training run records their indices (``info["extra"]["splits"]["memory"]``).
    """
    try:
        idx = [int(i) for i in info["extra"]["splits"]["memory"]]
    except (KeyError, TypeError):
        raise KeyError("this checkpoint does not record which training images form its memory bank "
                       "(expected info['extra']['splits']['memory'], written by "
                       "memseg.engine.training.train)") from None
    size = tuple(info.get("model_config", {}).get("input_size") or settings.size)
    return load_images(settings_split(settings, "train", size=size), indices=idx)


def make_simulator(settings: NotebookSettings, size: tuple[int, int] | None = None, **config):
    """An :class:`memseg.simulation.simulator.AnomalySimulator` for the notebook's category and size.

    Uses the DTD textures when present (``settings.dtd_root``); without them the simulator
    simulates structural anomalies only (said by :func:`describe_texture_source`, not warned).
    ``config`` overrides :class:`SimulationConfig` fields.
    """
    from memseg.simulation.simulator import AnomalySimulator, SimulationConfig

    cfg = SimulationConfig(**config) if config else None
    with warnings.catch_warnings():
        if settings.dtd_root is None:
            warnings.simplefilter("ignore")  # reported by describe_texture_source instead
        return AnomalySimulator(cfg, dtd_root=settings.dtd_root, size=size or settings.size, device="cpu",
                                category=settings.category, max_textures=64 if settings.quick else 256, progress=False)


def has_textures(simulator) -> bool:
    """True when the simulator has a texture source (DTD found)."""
    return bool(getattr(simulator, "has_textures", False))


def describe_texture_source(settings: NotebookSettings) -> str:
    """One line saying where textural anomalies come from (or that they are off)."""
    if settings.dtd_root is None:
        return ("DTD textures: NOT FOUND (looked at $MEMSEG_DTD and the project defaults) -> only structural anomalies "
                "are simulated; point MEMSEG_DTD at a DTD folder (images/<category>/*.jpg) to add textural ones.")
    n = len(list(Path(settings.dtd_root).rglob("*.jpg")))
    return f"DTD textures: {n} images under {settings.dtd_root} (texture and structure sources, 50 % each)"
