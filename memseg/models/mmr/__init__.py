"""MMR baseline (Zhang et al., 2023): masked multi-scale reconstruction of frozen ResNet features."""

from memseg.models.mmr.torch_model import MMR, MMRConfig

__all__ = ["MMR", "MMRConfig"]
