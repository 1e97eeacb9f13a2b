"""Multi-scale feature fusion (MSFF) module of MemSeg (paper §3.3, Fig. 4).

Per level n (CI_n = concat(II_n, DI*_n), 2C_n channels):
  1. a 3×3 conv block (conv-BN-ReLU) that keeps the 2C_n channels fuses CI_n;
  2. coordinate attention computed on CI_n gives weights (a_h, a_w); the conv output is
     multiplied by them once (not by the input again, as the known public kit does);
  3. a 1×1 conv block reduces to C_n channels (the width of the U-Net skip connection).
Then the multi-scale fusion, coarse to fine: the coarser level is up-sampled to the finer
resolution, aligned in channels by a convolution, and added element-wise. Finally each fused
level is weighted by its spatial attention map M_n (eq. 5-7) before going to the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memseg.models.memseg.attention import CoordinateAttention
from memseg.models.memseg.decoder import ConvBlock


class MSFFBlock(nn.Module):
    """One level of Fig. 4: conv3×3 (keeps channels) ⊙ CA weights, then 1×1 to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, use_coord_attention: bool = True) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, in_channels, 3)
        self.coord_attention = CoordinateAttention(in_channels) if use_coord_attention else None
        self.reduce = ConvBlock(in_channels, out_channels, 1)

    def forward(self, ci: torch.Tensor) -> torch.Tensor:
        y = self.conv(ci)  # (B, 2C, h, w)
        if self.coord_attention is not None:
            a_h, a_w = self.coord_attention(ci)  # (B, 2C, h, 1), (B, 2C, 1, w)
            y = y * a_h * a_w
        return self.reduce(y)  # (B, C, h, w)


class MSFF(nn.Module):
    """Fig. 4: three MSFF blocks, top-down multi-scale fusion, spatial-attention weighting.

    Args:
        in_channels: channels of CI_1..CI_3 (2C with memory, C without).
        out_channels: channels of the outputs F_1..F_3 (C: 64, 128, 256).
        use_multiscale: cross-level fusion on/off (paper Table 5).
        use_coord_attention: CA on/off (paper Table 5).
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (128, 256, 512),
        out_channels: Sequence[int] = (64, 128, 256),
        use_multiscale: bool = True,
        use_coord_attention: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MSFFBlock(i, o, use_coord_attention) for i, o in zip(in_channels, out_channels))
        self.use_multiscale = use_multiscale
        if use_multiscale:
            # channel alignment of the up-sampled coarser level (level 3 -> 2, level 2 -> 1).
            # A 1×1 conv is linear and bilinear weights sum to 1, so conv-then-upsample equals
            # upsample-then-conv exactly; it runs at the coarse resolution (4× fewer operations).
            self.align = nn.ModuleList(nn.Conv2d(out_channels[i + 1], out_channels[i], 1)
                                       for i in range(len(out_channels) - 1))

    def forward(self, ci: Sequence[torch.Tensor],
                attention_maps: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """ci [CI_1, CI_2, CI_3] (finest first) -> [F_1, F_2, F_3], optionally ⊙ [M1, M2, M3]."""
        feats = [blk(x) for blk, x in zip(self.blocks, ci)]  # [(B, C_n, h_n, w_n)]
        if self.use_multiscale:
            for i in range(len(feats) - 2, -1, -1):  # coarse to fine: F_2 += up(F_3), F_1 += up(F_2)
                coarse = self.align[i](feats[i + 1])
                feats[i] = feats[i] + F.interpolate(coarse, size=feats[i].shape[-2:], mode="bilinear",
                                                    align_corners=False)
        if attention_maps is not None:
            feats = [f * m.to(f.dtype) for f, m in zip(feats, attention_maps)]  # weighted by M_n (Fig. 2)
        return feats
