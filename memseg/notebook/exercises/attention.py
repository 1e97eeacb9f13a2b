"""Exercise 5 (paper §3.2): the spatial attention maps M3 -> M2 -> M1 (eq. 5-7).

The expected answer is the kit's :func:`memseg.models.memseg.attention.spatial_attention_maps` in the
paper's literal form (``scales=None``, ``attention="literal"``): channel means of DI*, chained by
element-wise products with the coarser map up-sampled (bilinear, ``align_corners=False``) to the finer size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memseg.models.memseg.attention import spatial_attention_maps
from memseg.notebook.exercises.check import Case, Verdict, run_check

__all__ = ["check_attention_maps"]

EQUATION = ("eq. (5): M3 = (1/C3) Σ_i DI*_3i, the channel mean; eq. (6): M2 = (1/C2) Σ_i DI*_2i ⊙ M3^U; "
            "eq. (7): M1 = (1/C1) Σ_i DI*_1i ⊙ M2^U, where ⊙ is the element-wise product and ^U up-samples the "
            "coarser map to the finer map's size (F.interpolate(..., size=..., mode='bilinear', "
            "align_corners=False)). Return [M1, M2, M3], finest first, each (B, 1, h, w).")


def _kit_attention(di_star: list[torch.Tensor]) -> list[torch.Tensor]:
    return spatial_attention_maps(di_star, scales=None)  # the paper's literal eq. (5)-(7)


def _di_star(b: int, shapes: list[tuple[int, int, int]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, *s, generator=g) * 2 for s in shapes]  # DI* >= 0, some values above 1


def cases() -> list[Case]:
    one_hot = _di_star(1, [(1, 16, 16), (1, 8, 8), (1, 4, 4)], 3)
    one_hot[2] = torch.zeros_like(one_hot[2])
    one_hot[2][:, :, 1, 2] = 1.0  # a single anomalous cell at the coarsest level
    return [
        Case("DI*: 1 image, one channel per level (C = 1), DI*_3 zero except at one position: M3, M2, M1 must be "
             "zero far from it",
             (one_hot,),
             hint="A product keeps only what the coarser scale agrees with (an average or a sum would not), and the "
                  "bilinear up-sampling spreads the spot smoothly to its neighbours."),
        Case("DI*: 2 images, levels of shapes (8, 16, 16), (16, 8, 8), (32, 4, 4) (C, h, w), random values in [0, 2)",
             (_di_star(2, [(8, 16, 16), (16, 8, 8), (32, 4, 4)], 0),),
             hint="Each level contributes its channel mean; the coarser map multiplies it."),
        Case("DI*: 1 image, odd sizes (4, 17, 23), (6, 9, 12), (8, 5, 6): the coarser map is not exactly half the "
             "finer",
             (_di_star(1, [(4, 17, 23), (6, 9, 12), (8, 5, 6)], 1),),
             hint="Up-sample to the finer map's size (size=...), not by a fixed factor of 2."),
        Case("DI*: 2 images with a single channel at every level (C = 1)",
             (_di_star(2, [(1, 8, 8), (1, 4, 4), (1, 2, 2)], 2),),
             hint="With one channel the channel mean is the channel itself."),
    ]


def check_attention_maps(attention_maps: Callable) -> Verdict:
    """Check ``attention_maps([DI*_1, DI*_2, DI*_3]) -> [M1, M2, M3]`` (each DI*_n (B, C_n, h_n, w_n))."""
    return run_check("attention_maps", attention_maps, _kit_attention, cases(), EQUATION)
