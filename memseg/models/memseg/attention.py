"""Attention in MemSeg: spatial attention maps (paper §3.2, eq. 5-7) and coordinate attention
(Hou et al., CVPR 2021; used by the MSFF module, paper §3.3, Fig. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("calibrated", "literal")
"""How the channel means of DI* enter eq. (5)-(7); see :func:`spatial_attention_maps`."""


def spatial_attention_maps(di_star: list[torch.Tensor], scales: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """M1, M2, M3 from the best difference information DI* (eq. 5-7).

    Args:
        di_star: [DI*_1 (B,C1,h1,w1), DI*_2 (B,C2,h2,w2), DI*_3 (B,C3,h3,w3)], finest first.
        scales: None for the paper's literal eq. (5)-(7) (``attention="literal"``): products of raw
            channel means. Or the memory's reference differences [S_1, S_2, S_3] (scalars or
            (1,1,h_n,w_n) maps, ``MemoryBank.scales``: how much normal images differ from memory at
            each position); each channel mean D is then read on that scale as A = 2D / (D + S)
            before the products (``attention="calibrated"``): ~1 where the input differs from memory
            as much as normal images do, -> 0 where it matches, -> 2 where it differs far more.
            The literal products of three raw means are tiny unless the features are large
            (docs/results/ablation-300-128 measures M1), so they multiply the MSFF outputs
            by ~0 and the memory path does no work; calibrated, M stays in [0, 8) whatever the
            encoder's feature scale, ~1 on normal regions, and a part that always varies (a tyre's
            tread at another angle) is not mistaken for a difference.

    Returns:
        [M1 (B,1,h1,w1), M2 (B,1,h2,w2), M3 (B,1,h3,w3)].
    """
    d = [x.float().mean(dim=1, keepdim=True) for x in di_star]  # channel means (1/C) Σ_i DI*_i
    if scales is not None:
        d = [2 * x / (x + torch.as_tensor(s, dtype=x.dtype, device=x.device).clamp_min(1e-12))
             for x, s in zip(d, scales)]
    d1, d2, d3 = d
    m3 = d3  # eq. (5)
    m2 = d2 * F.interpolate(m3, size=d2.shape[-2:], mode="bilinear", align_corners=False)  # eq. (6): ⊙ M3^U
    m1 = d1 * F.interpolate(m2, size=d1.shape[-2:], mode="bilinear", align_corners=False)  # eq. (7): ⊙ M2^U
    return [m1, m2, m3]


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al. 2021) returning the attention *weights* only.

    The known public kit's block multiplies its input in again (``conv(x) · x · a_h · a_w``).
    Here the module returns ``(a_h (B,C,H,1), a_w (B,C,1,W))`` and the caller multiplies the conv
    output by them once.
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.conv = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish(inplace=True)
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1): pool along the width
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): pool along the height
        y = self.act(self.bn(self.conv(torch.cat([x_h, x_w], dim=2))))  # (B, hidden, H+W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))  # (B, C, H, 1)
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # (B, C, 1, W)
        return a_h, a_w
