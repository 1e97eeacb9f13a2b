"""MemSeg (paper §3.2-3.4, Fig. 2): encoder, memory module, spatial attention, MSFF, decoder, loss.

Start reading at :mod:`memseg.models.memseg.model`, which wires the parts in the order of Fig. 2.
"""

from memseg.models.memseg.model import MemSeg, MemSegConfig

__all__ = ["MemSeg", "MemSegConfig"]
