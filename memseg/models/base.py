"""The interface every model of the kit implements: what training, scoring and checkpoints call.

A model is an ``nn.Module`` with a config dataclass (:class:`memseg.config.ConfigBase`) and:

- ``compute_loss(inputs, masks, clean) -> (loss, parts)``: one training step's loss on normalised
  (B, 3, H, W) inputs (simulated anomalies composited in), their masks (B, 1, H, W) and the clean images;
  ``parts`` maps names to detached 0-dim tensors (training reads them back in one go: one device sync a step);
- ``anomaly_map(inputs) -> (B, 1, H, W)`` in [0, 1];
- optionally ``image_score(maps) -> (B,)`` (otherwise the top-k mean of :mod:`memseg.engine.scoring`).

The defaults below are those of a model without a memory bank that trains every parameter on
simulated anomalies; MemSeg, DRAEM and MMR override what differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memseg.config import ConfigBase


class AnomalyModel(nn.Module):
    """Base class of MemSeg, DRAEM and MMR (see the module docstring for the contract)."""

    name: str = ""
    needs_simulation: bool = True  # trains on simulated anomalies (False: normal images only, e.g. MMR)
    weights_source: str = "random"  # what the pretrained part was initialised from ("imagenet", "random", a file)
    config: ConfigBase

    @property
    def memory_size(self) -> int:
        """Normal images the model keeps as its memory (N, paper §3.2); 0 for models without a memory bank."""
        return 0

    def prepare(self, train_images_normalized: torch.Tensor) -> None:
        """Set-up from N normal train images before training (MemSeg: the memory bank); none by default."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates (frozen parts excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def simulation_overrides(self) -> dict[str, Any]:
        """``SimulationConfig`` fields the model's own recipe changes (DRAEM: textures only); none by default."""
        return {}

    def set_channels_last(self, enabled: bool = True) -> "AnomalyModel":
        """Run convolutions in channels-last memory format (faster on recent GPUs and CPUs)."""
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def config_dict(self) -> dict[str, Any]:
        """The config as a plain dict, for checkpoints."""
        return self.config.to_dict()
