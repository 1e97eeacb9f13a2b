"""DRAEM baseline (Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction
embedding for surface anomaly detection", ICCV 2021, arXiv 2108.07610), in the kit's model interface.

Two sub-networks (DRAEM Fig. 2):
- reconstructive: a plain encoder-decoder (no skip connections, 4 poolings) trained to restore the
  anomaly-free image from the simulated one with ``L_rec = l2 + (1 - SSIM)`` (DRAEM §3.1, eq. 1-2);
- discriminative: a U-Net (5 poolings, skip connections) on ``concat(input, reconstruction)``
  that segments the anomaly, trained with a focal loss (DRAEM §3.2, eq. 3, gamma = 2).

Image spaces (kept consistent everywhere in this module):
- the model *receives* ImageNet-normalised images (the kit's contract, ARCHITECTURE.md);
- the reconstructive sub-network takes the normalised input and *outputs an image in [0, 1]
  space* (DRAEM reconstructs raw images; SSIM's constants assume ``data_range = 1``); its target
  is ``denormalize(clean)``;
- the discriminative sub-network sees both images normalised: ``concat(input, normalize(rec))``.

The training loop feeds MemSeg's simulator; DRAEM's own setting (DTD textures only, Perlin masks,
texture opacity in [0.2, 1]) is ``DRAEMConfig(simulation_source="texture")``, which the training
loop applies by merging :meth:`DRAEM.simulation_overrides` into its ``SimulationConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from memseg.config import ConfigBase, as_size
from memseg.models.base import AnomalyModel
from memseg.models.ssim import ssim_loss
from memseg.utils import IMAGENET_MEAN, IMAGENET_STD, denormalize

SIMULATION_SOURCES = ("memseg", "texture", "structure")


@dataclass
class DRAEMConfig(ConfigBase):
    """DRAEM hyper-parameters. Defaults follow the paper (GPU); :meth:`quick_options` trains in minutes on CPU.

    - ``input_size``: (H, W), both multiples of 32 (the discriminative U-Net pools 5 times).
    - ``base_width``: reconstructive sub-network width (paper: 128; channels 1x,2x,4x,8x).
    - ``disc_base_width``: discriminative sub-network width (paper: 64).
    - ``simulation_source``: "memseg" (the kit's simulator as configured: DTD textures and
      structure sources), "texture" (DRAEM's own: DTD textures only, opacity in [0.2, 1]) or
      "structure" (MemSeg's structure source only). See :meth:`DRAEM.simulation_overrides`.
    - ``focal_gamma``, ``*_weight``: DRAEM's loss ``l2 + ssim + focal`` (all weights 1 in the paper).
    - ``score_pool``: image score = max of the anomaly map after a ``score_pool`` x ``score_pool``
      mean filter (DRAEM §3.4, 21 in the official code); see :meth:`DRAEM.image_score`.
    """

    input_size: tuple[int, int] = (256, 256)
    base_width: int = 128
    disc_base_width: int = 64
    simulation_source: str = "memseg"
    focal_gamma: float = 2.0
    l2_weight: float = 1.0
    ssim_weight: float = 1.0
    focal_weight: float = 1.0
    score_pool: int = 21

    def __post_init__(self) -> None:
        self.input_size = as_size(self.input_size, "DRAEMConfig.input_size", multiple_of=32,
                                  why="the discriminative U-Net pools 5 times")
        if self.simulation_source not in SIMULATION_SOURCES:
            raise ValueError(f"DRAEMConfig.simulation_source must be one of {SIMULATION_SOURCES}, got "
                             f"{self.simulation_source!r}")
        if self.base_width < 1 or self.disc_base_width < 1:
            raise ValueError(f"DRAEM widths must be >= 1, got base_width={self.base_width}, "
                             f"disc_base_width={self.disc_base_width}")
        if self.score_pool < 1 or self.score_pool % 2 == 0:
            raise ValueError(f"DRAEMConfig.score_pool must be a positive odd integer, got {self.score_pool}")

    @staticmethod
    def quick_options() -> dict[str, Any]:
        """``model_options`` of the quick (CPU) configuration: narrow sub-networks (16 / 16 channels)."""
        return {"base_width": 16, "disc_base_width": 16}

    @staticmethod
    def train_overrides(quick: bool = False) -> dict[str, Any]:
        """Suggested :class:`memseg.engine.training.TrainConfig` fields: DRAEM trains with Adam, lr 1e-4
        (paper); the quick configuration learns faster with lr 1e-3 over its few steps."""
        return {"optimizer": "adamw", "lr": 1e-3 if quick else 1e-4, "weight_decay": 0.0}



# ----------------------------------------------------------------------------------------------
# building blocks (official DRAEM layout: conv3x3-BN-ReLU pairs, bilinear upsampling)
# ----------------------------------------------------------------------------------------------
def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _double(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """conv-BN-ReLU x2: (B, cin, H, W) -> (B, cout, H, W)."""
    return nn.Sequential(*_cbr(cin, cmid), *_cbr(cmid, cout))


def _up(cin: int, cout: int) -> nn.Sequential:
    """x2 bilinear upsampling then conv-BN-ReLU: (B, cin, H, W) -> (B, cout, 2H, 2W)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_cbr(cin, cout))


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder without skips (DRAEM Fig. 2, left): (B, 3, H, W) normalised -> (B, 3, H, W) in image space."""

    def __init__(self, width: int = 128, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _double(in_channels, w, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            _double(w, 2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            _double(2 * w, 4 * w, 4 * w), nn.MaxPool2d(2),  # (B, 4w, H/8, W/8)
            _double(4 * w, 8 * w, 8 * w), nn.MaxPool2d(2),  # (B, 8w, H/16, W/16)
            _double(8 * w, 8 * w, 8 * w),  # bottleneck (B, 8w, H/16, W/16)
        )
        self.decoder = nn.Sequential(
            _up(8 * w, 8 * w), _double(8 * w, 8 * w, 4 * w),  # (B, 4w, H/8, W/8)
            _up(4 * w, 4 * w), _double(4 * w, 4 * w, 2 * w),  # (B, 2w, H/4, W/4)
            _up(2 * w, 2 * w), _double(2 * w, 2 * w, w),  # (B, w, H/2, W/2)
            _up(w, w), _double(w, w, w),  # (B, w, H, W)
            nn.Conv2d(w, out_channels, 3, padding=1),  # (B, 3, H, W), linear output as in DRAEM
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DiscriminativeSubNetwork(nn.Module):
    """U-Net with skips (DRAEM Fig. 2, right): (B, 6, H, W) -> logits (B, 2, H, W)."""

    def __init__(self, width: int = 64, in_channels: int = 6, out_channels: int = 2) -> None:
        super().__init__()
        w = width
        self.enc = nn.ModuleList([
            _double(in_channels, w, w),  # e1 (B, w, H, W)
            _double(w, 2 * w, 2 * w),  # e2 (B, 2w, H/2, W/2)
            _double(2 * w, 4 * w, 4 * w),  # e3 (B, 4w, H/4, W/4)
            _double(4 * w, 8 * w, 8 * w),  # e4 (B, 8w, H/8, W/8)
            _double(8 * w, 8 * w, 8 * w),  # e5 (B, 8w, H/16, W/16)
            _double(8 * w, 8 * w, 8 * w),  # e6 (B, 8w, H/32, W/32)
        ])
        self.pool = nn.MaxPool2d(2)
        # decoder stage i: upsample the previous stage, concatenate the matching encoder skip
        ups = [(8 * w, 8 * w), (8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)]
        skips = [8 * w, 8 * w, 4 * w, 2 * w, w]  # channels of e5, e4, e3, e2, e1
        self.ups = nn.ModuleList([_up(cin, cout) for cin, cout in ups])
        self.dec = nn.ModuleList([_double(cout + s, cout, cout) for (_, cout), s in zip(ups, skips)])
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)  # (B, 2, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        x = feats.pop()  # e6
        for up, dec in zip(self.ups, self.dec):
            x = dec(torch.cat([up(x), feats.pop()], dim=1))
        return self.head(x)


def focal_loss_2class(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """DRAEM's focal loss (DRAEM eq. 3; Lin et al. 2017) on 2-class logits (B, 2, H, W) vs masks (B, 1, H, W) in {0, 1}.

    ``FL = -(1 - p_t)^gamma * log(p_t)`` averaged over pixels (no class weighting, as in DRAEM).
    """
    target = (masks > 0.5).long()  # (B, 1, H, W)
    logp_t = F.log_softmax(logits, dim=1).gather(1, target)  # (B, 1, H, W)
    p_t = logp_t.exp()
    return (-((1.0 - p_t) ** gamma) * logp_t).mean()


def _normalize_unclamped(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation without clamping, so gradients reach the reconstruction everywhere."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


class DRAEM(AnomalyModel):
    """DRAEM in the kit's model interface (see ARCHITECTURE.md "memseg.models").

    ``forward(x)`` -> discriminative logits (B, 2, H, W); ``anomaly_map(x)`` -> softmax anomaly
    probability (B, 1, H, W) in [0, 1]. No pretrained weights are used.
    """

    name = "draem"
    needs_simulation = True
    weights_source = "random"  # no pretrained weights (for checkpoints' ``weights_source``)

    def __init__(self, config: DRAEMConfig | dict[str, Any] | None = None, init_weights: bool = True) -> None:
        """``init_weights`` is accepted for the registry's uniform interface; DRAEM has no pretrained weights."""
        super().__init__()
        if config is None or isinstance(config, dict):
            config = DRAEMConfig.from_dict(config)
        self.config = config
        self.reconstructive = ReconstructiveSubNetwork(config.base_width)
        self.discriminative = DiscriminativeSubNetwork(config.disc_base_width)

    # -- interface ------------------------------------------------------------------------------
    def simulation_overrides(self) -> dict[str, Any]:
        """Fields to merge into the training loop's ``SimulationConfig`` (``dataclasses.replace(cfg, **overrides)``).

        - "memseg": {} (the simulator as configured);
        - "texture": DRAEM's own setting, DTD textures only (``texture_prob=1``) with texture
          opacity in [0.2, 1] (DRAEM blends ``beta * I + (1 - beta) * texture``, beta ~ U[0, 0.8]);
        - "structure": MemSeg's structure source only (``texture_prob=0``).
        """
        src = self.config.simulation_source
        if src == "texture":
            return {"texture_prob": 1.0, "delta_range": (0.2, 1.0)}
        if src == "structure":
            return {"texture_prob": 0.0}
        return {}

    def _check_inputs(self, x: torch.Tensor, what: str = "inputs") -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DRAEM expects {what} of shape (B, 3, H, W) ImageNet-normalised, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"DRAEM expects {what} with H and W multiples of 32 "
                             f"(config.input_size={self.config.input_size}), got {h}x{w}")

    def forward(self, x: torch.Tensor, return_intermediates: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """x (B, 3, H, W) normalised -> logits (B, 2, H, W), or dict(logits, reconstruction in [0, 1] space)."""
        self._check_inputs(x)
        rec = self.reconstructive(x)  # (B, 3, H, W), image space
        logits = self.discriminative(torch.cat([x, _normalize_unclamped(rec)], dim=1))  # (B, 2, H, W)
        if return_intermediates:
            return {"logits": logits, "reconstruction": rec}
        return logits

    def compute_loss(self, inputs: torch.Tensor, masks: torch.Tensor,
                     clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DRAEM loss ``l2(rec, clean) + (1 - SSIM(rec, clean)) + focal(logits, masks)`` (DRAEM eq. 1-3).

        ``inputs`` (simulated) and ``clean`` are normalised (B, 3, H, W); masks (B, 1, H, W) in {0, 1}.
        """
        self._check_inputs(clean, "clean")
        if masks.shape[0] != inputs.shape[0] or masks.shape[1] != 1 or masks.shape[-2:] != inputs.shape[-2:]:
            raise ValueError(f"DRAEM expects masks of shape (B, 1, H, W) matching inputs {tuple(inputs.shape)}, got "
                             f"{tuple(masks.shape)}")
        out = self(inputs, return_intermediates=True)
        target = denormalize(clean)  # (B, 3, H, W) in [0, 1]: the anomaly-free image
        rec = out["reconstruction"].float()
        l2 = F.mse_loss(rec, target)  # eq. (1)
        l_ssim = ssim_loss(rec, target)  # eq. (2)
        focal = focal_loss_2class(out["logits"], masks, self.config.focal_gamma)  # eq. (3)
        c = self.config
        loss = c.l2_weight * l2 + c.ssim_weight * l_ssim + c.focal_weight * focal
        return loss, {"loss": loss.detach(), "l2": l2.detach(), "ssim": l_ssim.detach(), "focal": focal.detach()}

    @torch.no_grad()
    def anomaly_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """Anomaly probability (softmax channel 1 of the discriminative output), (B, 1, H, W) in [0, 1]."""
        logits = self(inputs)
        return torch.softmax(logits.float(), dim=1)[:, 1:2]

    @torch.no_grad()
    def reconstruct(self, inputs: torch.Tensor) -> torch.Tensor:
        """Reconstruction of normalised inputs, (B, 3, H, W) clamped to [0, 1] image space (for display)."""
        self._check_inputs(inputs)
        return self.reconstructive(inputs).clamp(0, 1)

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        """DRAEM's image score: max of the map after a ``score_pool``² mean filter. (B, 1, H, W) -> (B,)."""
        k = self.config.score_pool
        pooled = F.avg_pool2d(amap, k, stride=1, padding=k // 2, count_include_pad=False)
        return pooled.flatten(1).amax(1)

