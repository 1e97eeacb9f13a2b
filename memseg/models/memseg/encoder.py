"""ResNet18 encoder of MemSeg (paper §3.2, Fig. 2): stem and blocks 1-3 frozen, block 4 trains.

The paper freezes blocks 1-3 "to ensure the unification of the memory information and the
high-level features of the input images". The known kit freezes only the block parameters, so the
stem keeps training, the BatchNorm statistics keep moving in ``train()`` mode and the memory bank
(extracted once) goes stale. Here the stem (conv1/bn1) and blocks 1-3 have ``requires_grad=False``,
run under ``torch.no_grad()`` (no backward pass) and their BatchNorm layers stay in eval mode even
when the model is in ``train()``.

``trainable=True`` (``MemSegConfig.train_encoder``, what ``memseg pretrain`` uses) lets the stem and
blocks 1-3 learn too, BatchNorm still in eval mode; the memory must then be extracted again as they
change (the training loop does it every ``memory_refresh_every`` steps).

Where the weights come from (``"auto"``, ``"imagenet"``, ``"timm:<tag>"``, ``"offline"``,
``"random"`` or a file) is :mod:`memseg.models.encoder_weights`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from memseg.models.encoder_weights import create_backbone
from memseg.utils import no_autocast

FROZEN_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3")
"""Stem and blocks 1-3: frozen, eval-mode BN (paper §3.2)."""


RESNET18_FEATURES = ((64, 64, 128, 256, 512), (2, 4, 8, 16, 32))
"""(channels, strides) of a resnet18's stem and blocks 1-4: what the forward pass below is written for."""


class ResNet18Encoder(nn.Module):
    """ResNet18 with frozen stem + blocks 1-3 and a trainable block 4.

    ``forward_frozen(x)`` -> [stem (B,64,H/2,W/2), f1 (B,64,H/4,W/4), f2 (B,128,H/8,W/8),
    f3 (B,256,H/16,W/16)] computed under ``no_grad`` (with gradients when ``trainable``);
    ``forward_block4(f3)`` -> (B,512,H/32,W/32).

    ``channels`` and ``strides`` (stem, blocks 1-4) are read from timm's ``feature_info``: the
    memory bank, MSFF and the decoder are sized from them.
    """

    def __init__(self, weights: str | Path = "auto", trainable: bool = False) -> None:
        super().__init__()
        self.backbone, self.weights_source = create_backbone(weights)
        self.channels = tuple(self.backbone.feature_info.channels())  # stem, block 1, 2, 3, 4
        self.strides = tuple(self.backbone.feature_info.reduction())
        if (self.channels, self.strides) != RESNET18_FEATURES:
            raise RuntimeError("expected a resnet18 backbone, got features (channels, strides) "
                               f"{(self.channels, self.strides)}")
        self.trainable = bool(trainable)
        for name in FROZEN_MODULES:
            for p in getattr(self.backbone, name).parameters():
                p.requires_grad_(self.trainable)
        self.train(True)

    def frozen_modules(self) -> list[nn.Module]:
        return [getattr(self.backbone, n) for n in FROZEN_MODULES]

    def train(self, mode: bool = True) -> "ResNet18Encoder":
        """Set train/eval mode; the stem and blocks 1-3 always keep eval-mode BatchNorm (statistics fixed)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def forward_frozen(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and blocks 1-3 in float32, even inside an autocast region: the memory bank (extracted in
        float32) must meet live features of the same precision."""
        b = self.backbone
        grad = contextlib.nullcontext() if self.trainable else torch.no_grad()
        with grad, no_autocast(x.device.type):
            x = x.float()
            stem = b.act1(b.bn1(b.conv1(x)))  # (B, 64, H/2, W/2)
            f1 = b.layer1(b.maxpool(stem))  # (B, 64, H/4, W/4)   block 1
            f2 = b.layer2(f1)  # (B, 128, H/8, W/8)                block 2
            f3 = b.layer3(f2)  # (B, 256, H/16, W/16)              block 3
        return [stem, f1, f2, f3]

    def forward_block4(self, f3: torch.Tensor) -> torch.Tensor:
        return self.backbone.layer4(f3)  # (B, 512, H/32, W/32)  block 4 (trainable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.forward_frozen(x)
        return feats + [self.forward_block4(feats[-1])]

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        """The stem and blocks 1-3 (timm key names): what ``memseg pretrain`` writes and ``--weights FILE`` reads."""
        return {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()
                if k.split(".")[0] in FROZEN_MODULES}


__all__ = ["FROZEN_MODULES", "RESNET18_FEATURES", "ResNet18Encoder", "create_backbone"]
