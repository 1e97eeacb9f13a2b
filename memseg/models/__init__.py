"""Model room: MemSeg (paper §3.2-3.3) and the DRAEM / MMR baselines behind one registry.

``build_model(name, config)`` builds any of them from a config dataclass or a plain dict (as stored
in checkpoints). One folder per model: ``memseg/`` (start at ``model.py``), ``draem/``, ``mmr/``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from memseg.models.draem import DRAEM, DRAEMConfig
from memseg.models.memseg import MemSeg, MemSegConfig
from memseg.models.mmr import MMR, MMRConfig

MODEL_REGISTRY: dict[str, type[nn.Module]] = {"memseg": MemSeg, "draem": DRAEM, "mmr": MMR}
"""Model name -> nn.Module class."""

MODEL_CONFIGS: dict[str, type] = {"memseg": MemSegConfig, "draem": DRAEMConfig, "mmr": MMRConfig}
"""Model name -> config dataclass; see :func:`config_from_dict`."""


def config_from_dict(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """Rebuild model ``name``'s config dataclass from a plain dict (unknown keys are an error)."""
    cls = MODEL_CONFIGS[_check_name(name)]
    return cls.from_dict(dict(config or {}))  # every model config is a ConfigBase


def _check_name(name: str) -> str:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_REGISTRY)}")
    return name


def build_model(name: str, config: Any = None, init_weights: bool = True) -> nn.Module:
    """Build model ``name`` ("memseg" | "draem" | "mmr") from a config dataclass, a dict or None.

    Args:
        name: registry key.
        config: the model's config dataclass, a dict of its fields (checkpoints, YAML) or None
            for the defaults.
        init_weights: False skips loading pretrained/local initial weights (for models that accept
            it, e.g. MemSeg) while keeping the recorded weights source in the config; use it when a
            checkpoint's state dict is loaded right after.
    """
    cls = MODEL_REGISTRY[_check_name(name)]
    cfg_cls = MODEL_CONFIGS[name]
    cfg = config if isinstance(config, cfg_cls) else config_from_dict(name, config)
    kwargs = {}
    if not init_weights and "init_weights" in inspect.signature(cls.__init__).parameters:
        kwargs["init_weights"] = False
    return cls(cfg, **kwargs)


__all__ = ["MODEL_CONFIGS", "MODEL_REGISTRY", "build_model", "config_from_dict"]
