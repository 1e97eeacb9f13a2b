"""Notebook 06 and ``benchmarks/compare_models.py``: MemSeg, DRAEM and MMR trained with the same budget.

One recipe for both: the same data, image size, steps, batch and seed (those of ``base``), each model with
its own optimiser settings (``<Config>.train_overrides``) and, in quick mode, its CPU-sized variant
(``<Config>.quick_options``).

Examples:
    >>> from memseg.engine.train_config import TrainConfig
    >>> base = TrainConfig(data="data/synthetic", category="washer", size=64, steps=30)
    >>> configs = comparison_configs(base, quick=True, weights="random", out="runs/compare")
    >>> [(name, c.model, c.out) for name, c in configs.items()]  # doctest: +NORMALIZE_WHITESPACE
    [('MemSeg', 'memseg', 'runs/compare/memseg'), ('DRAEM', 'draem', 'runs/compare/draem'),
     ('MMR', 'mmr', 'runs/compare/mmr')]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


def comparison_configs(base, quick: bool, weights: str, out: str | Path) -> dict:
    """``{"MemSeg": cfg, "DRAEM": cfg, "MMR": cfg}``: :class:`memseg.engine.train_config.TrainConfig` s that share
    ``base``'s data, size, steps, batch and seed; each trains into ``<out>/<model>``.

    MemSeg keeps ``base.model_options`` (e.g. its memory size); DRAEM and MMR get their quick variants when
    ``quick``; ``weights`` initialises MemSeg's encoder and MMR's teacher.
    """
    from memseg.models.draem.torch_model import DRAEMConfig
    from memseg.models.mmr.torch_model import MMRConfig

    def run(model: str) -> str:
        return str(Path(out) / model)

    return {
        "MemSeg": dataclasses.replace(base, model="memseg", out=run("memseg"),
                                      model_options={**base.model_options, "weights": weights}),
        "DRAEM": dataclasses.replace(base, model="draem", out=run("draem"),
                                     model_options=DRAEMConfig.quick_options() if quick else {},
                                     **DRAEMConfig.train_overrides(quick)),
        "MMR": dataclasses.replace(base, model="mmr", out=run("mmr"),
                                   model_options={**(MMRConfig.quick_options() if quick else {}), "weights": weights},
                                   **MMRConfig.train_overrides(quick)),
    }
