"""U-Net decoder of MemSeg (paper §4.2, Fig. 2).

"The up-sampling layer contains a bilinear interpolation layer and a basic convolution block
consisting of a convolution layer, batch-normalization, and a ReLU activation function. The Conv
Layer contains two stacked basic convolution blocks; only the last Conv Layer contains one basic
convolution block and a 2-channel convolution layer."

Skip connections (finest first): the encoder stem (B,64,H/2,W/2) and the three MSFF outputs
(B,64,H/4,W/4), (B,128,H/8,W/8), (B,256,H/16,W/16); the bottleneck is block 4 (B,512,H/32,W/32).
The widths of the decoder stages are configurable (``decoder_channels``); the defaults keep the
high-resolution stages narrow, which is where a U-Net decoder spends its time on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Basic convolution block: conv (k×k, same padding) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Up-sampling layer: bilinear interpolation to ``size`` (×2), then a basic conv block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)  # (B, Cin, h, w)
        return self.conv(x)  # (B, Cout, h, w)


class ConvLayer(nn.Sequential):
    """"Conv Layer": two stacked basic conv blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBlock(in_channels, out_channels), ConvBlock(out_channels, out_channels))


HEADS = ("no_relu", "paper")
"""Variants of the last Conv Layer; see :class:`SegmentationHead`."""


class SegmentationHead(nn.Sequential):
    """The last Conv Layer: one basic conv block and a 2-channel convolution (§4.2) -> logits.

    ``head="paper"`` is the literal wording: conv-BN-ReLU, then the 2-channel conv. Trained, that
    head learns "anomalous = every ReLU channel is zero", so p = softmax(bias)[1] becomes a hard
    ceiling that many anomalous pixels and images tie at (docs/results/ablation-300-128 measures
    it). ``head="no_relu"`` (default) drops that last ReLU (conv-BN, then
    the 2-channel conv): the logits are no longer bounded by the bias, so the model can say
    "certainly anomalous".
    """

    def __init__(self, channels: int, head: str = "no_relu") -> None:
        if head not in HEADS:
            raise ValueError(f"decoder head must be one of {HEADS}, got {head!r}")
        block = (ConvBlock(channels, channels) if head == "paper" else
                 nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)))
        super().__init__(block, nn.Conv2d(channels, 2, 3, padding=1))


class Decoder(nn.Module):
    """Bottleneck + 4 skip connections -> 2-class logits at the input resolution.

    Args:
        bottleneck_channels: channels of block 4 (512).
        skip_channels: channels of the skips, finest first: (stem, MSFF 1, MSFF 2, MSFF 3).
        widths: output channels of the five up-sampling stages, coarsest first
            (H/16, H/8, H/4, H/2, H).
        head: the last Conv Layer, see :class:`SegmentationHead`.
    """

    def __init__(
        self,
        bottleneck_channels: int = 512,
        skip_channels: Sequence[int] = (64, 64, 128, 256),
        widths: Sequence[int] = (128, 64, 32, 16, 16),
        head: str = "no_relu",
    ) -> None:
        super().__init__()
        if len(skip_channels) != 4 or len(widths) != 5:
            raise ValueError(f"decoder needs 4 skip channel counts and 5 widths, got {tuple(skip_channels)} and "
                             f"{tuple(widths)}")
        s0, s1, s2, s3 = skip_channels
        d3, d2, d1, d0, dout = widths
        self.up3, self.conv3 = UpBlock(bottleneck_channels, d3), ConvLayer(d3 + s3, d3)  # H/16
        self.up2, self.conv2 = UpBlock(d3, d2), ConvLayer(d2 + s2, d2)  # H/8
        self.up1, self.conv1 = UpBlock(d2, d1), ConvLayer(d1 + s1, d1)  # H/4
        self.up0, self.conv0 = UpBlock(d1, d0), ConvLayer(d0 + s0, d0)  # H/2
        self.up_out = UpBlock(d0, dout)  # H
        self.head = SegmentationHead(dout, head)

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        """bottleneck (B,512,H/32,W/32), skips [stem, F1, F2, F3] -> logits (B, 2, H, W)."""
        stem, f1, f2, f3 = skips
        x = self.conv3(torch.cat([self.up3(bottleneck, f3.shape[-2:]), f3], dim=1))  # (B, d3, H/16, W/16)
        x = self.conv2(torch.cat([self.up2(x, f2.shape[-2:]), f2], dim=1))  # (B, d2, H/8, W/8)
        x = self.conv1(torch.cat([self.up1(x, f1.shape[-2:]), f1], dim=1))  # (B, d1, H/4, W/4)
        x = self.conv0(torch.cat([self.up0(x, stem.shape[-2:]), stem], dim=1))  # (B, d0, H/2, W/2)
        return self.head(self.up_out(x, out_size))  # (B, 2, H, W)
