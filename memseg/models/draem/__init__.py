"""DRAEM baseline (Zavrtanik et al., ICCV 2021): reconstructive + discriminative sub-networks."""

from memseg.models.draem.torch_model import DRAEM, DRAEMConfig

__all__ = ["DRAEM", "DRAEMConfig"]
