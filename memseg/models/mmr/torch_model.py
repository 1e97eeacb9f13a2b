"""MMR baseline (Zhang, Wang, Kang, Xu, "Industrial anomaly detection with domain shift: a real-world
dataset and masked multi-scale reconstruction", arXiv 2304.02216), in the kit's model interface.

A frozen CNN *teacher* (timm ResNet-18 ``features_only``, blocks 1-3 at strides 4, 8, 16, eval-mode
BatchNorm) gives multi-scale features of a normal image. A ViT *student* sees the image with a
random subset of its patches masked (MMR's setting: ratio 0.4 during training) and, through a simple
feature pyramid built from its stride-16 tokens (ViTDet: deconvolutions up, pooling down), must
reconstruct the teacher's features at every scale (MMR Fig. 4). Because it only ever learns
normal images, features it cannot reconstruct mark anomalies.

- loss: sum over scales of the mean per-pixel cosine distance ``1 - cos(t_k, s_k)`` (MMR's training objective);
- anomaly map: mean over scales of ``1 - cos`` upsampled to the input, Gaussian-smoothed
  (sigma 4), divided by 2 (cosine distance lies in [0, 2]) so it is in [0, 1] with the *same*
  scale for every image (no per-image min-max: that would destroy image scores);
- inference is deterministic: no masking outside ``train()`` mode.

Deviation (documented): MMR uses an MAE encoder (masked tokens dropped). Here masked patch
embeddings are replaced by a learnable mask token and the ViT runs on all positions
(SimMIM-style), so the pyramid gets a full token grid with context-inferred features at masked
positions; no pretrained MAE weights are needed (none can be downloaded here).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from memseg.config import ConfigBase, as_size
from memseg.models.base import AnomalyModel


@dataclass
class MMRConfig(ConfigBase):
    """MMR hyper-parameters. Defaults: ViT-B-like student for GPU; :meth:`quick_options` trains in minutes on CPU.

    - ``input_size``: (H, W), multiples of ``patch_size`` and of 16 (teacher block 3 stride).
    - ``weights``: teacher (ResNet-18) initialisation, named as for MemSeg's encoder ("imagenet", "timm:<tag>",
      a local resnet18 state dict, "random"; reported in checkpoints as ``weights_source``), except that "auto"
      without ImageNet falls back to random, not to the kit's offline encoder (made for MemSeg). MMR itself uses
      an ImageNet teacher.
    - ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``: the ViT student.
    - ``mask_ratio``: fraction of patches masked during training (MMR: 0.4).
    - ``smoothing_sigma``: Gaussian sigma (pixels) applied to the anomaly map (4 as in MMR).
    """

    input_size: tuple[int, int] = (256, 256)
    weights: str = "random"
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.4
    smoothing_sigma: float = 4.0

    def __post_init__(self) -> None:
        self.weights = str(self.weights)
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"MMRConfig.patch_size must be a power of two, got {self.patch_size}")
        self.input_size = as_size(self.input_size, "MMRConfig.input_size", multiple_of=max(self.patch_size, 16),
                                  why=f"ViT patch {self.patch_size}, teacher stride 16")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MMRConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.embed_dim % 4:
            raise ValueError("MMRConfig.embed_dim must be a multiple of 4 (2-D sin-cos position embedding), got "
                             f"{self.embed_dim}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MMRConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.smoothing_sigma < 0:
            raise ValueError(f"MMRConfig.smoothing_sigma must be >= 0, got {self.smoothing_sigma}")

    @staticmethod
    def quick_options() -> dict[str, Any]:
        """``model_options`` of the quick (CPU) configuration: tiny ViT (embed 192, depth 4, heads 3, patch 16)."""
        return {"embed_dim": 192, "depth": 4, "num_heads": 3}

    @staticmethod
    def train_overrides(quick: bool = False) -> dict[str, Any]:
        """Suggested :class:`memseg.engine.training.TrainConfig` fields: AdamW with weight decay 0.05 as in MMR;
        lr 1e-4 for the ViT-B-like default, 1e-3 for the tiny quick student."""
        return {"optimizer": "adamw", "lr": 1e-3 if quick else 1e-4, "weight_decay": 0.05}



# ----------------------------------------------------------------------------------------------
# teacher
# ----------------------------------------------------------------------------------------------
class ResNetTeacher(nn.Module):
    """Frozen ResNet-18 stem + blocks 1-3 (eval-mode BN, no gradients), weights as for MemSeg's encoder.

    (B, 3, H, W) normalised -> [f1 (B, 64, H/4, W/4), f2 (B, 128, H/8, W/8), f3 (B, 256, H/16, W/16)].
    Block 4 is not kept (not used, not in the state dict).
    """

    channels = (64, 128, 256)
    strides = (4, 8, 16)

    def __init__(self, weights: str = "random") -> None:
        super().__init__()
        from memseg.models.encoder_weights import create_backbone

        # "auto" without ImageNet is random here: the kit's offline encoder was made for MemSeg (measured with MMR
        # in notebook 06's quick run: pixel AUROC 0.28 on washer, below chance)
        backbone, self.weights_source = create_backbone(weights, offline_fallback=False)
        for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3"):
            self.add_module(name, getattr(backbone, name))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ResNetTeacher":
        """Always eval mode: BatchNorm statistics stay fixed."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.layer1(self.maxpool(self.act1(self.bn1(self.conv1(x)))))  # (B, 64, H/4, W/4)   block 1
        f2 = self.layer2(f1)  # (B, 128, H/8, W/8)   block 2
        f3 = self.layer3(f2)  # (B, 256, H/16, W/16) block 3
        return [f1, f2, f3]


# ----------------------------------------------------------------------------------------------
# student: ViT + simple feature pyramid
# ----------------------------------------------------------------------------------------------
def sincos_pos_embed(dim: int, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE), (1, h*w, dim), for any grid size."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    out = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]  # (h*w, dim/4)
        out += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(out, dim=1)[None]  # (1, h*w, dim)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map (ViTDet's pyramid norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def pyramid_branch(dim: int, scale: float, out_channels: int) -> nn.Sequential:
    """ViTDet simple-feature-pyramid branch: (B, dim, h, w) -> (B, out_channels, h*scale, w*scale).

    ``scale`` 4: two 2x2 deconvolutions; 2: one; 1: identity; 1/2, 1/4: max-pooling; then a 1x1
    projection to the teacher's channels, LayerNorm, GELU and a 3x3 conv.
    """
    layers: list[nn.Module] = []
    c = dim
    s = scale
    while s > 1:
        layers += [nn.ConvTranspose2d(c, c // 2, 2, stride=2)]
        c //= 2
        s /= 2
        if s > 1:
            layers += [LayerNorm2d(c), nn.GELU()]
    while s < 1:
        layers += [nn.MaxPool2d(2)]
        s *= 2
    layers += [nn.Conv2d(c, out_channels, 1), LayerNorm2d(out_channels), nn.GELU(),
               nn.Conv2d(out_channels, out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class MaskedViTStudent(nn.Module):
    """ViT encoder on patch tokens, optional random patch masking, simple feature pyramid.

    (B, 3, H, W) normalised -> list of (B, C_k, H/r_k, W/r_k), one per teacher scale.
    """

    def __init__(self, cfg: MMRConfig, out_channels: list[int], strides: list[int]) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        d = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)  # (B, d, H/p, W/p)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([
            Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(cfg.depth)
        ])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pyramid = nn.ModuleList([pyramid_branch(d, cfg.patch_size / r, c) for c, r in zip(out_channels, strides)])
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns (pyramid features, patch mask (B, h, w) bool, True = masked)."""
        tokens = self.patch_embed(x)  # (B, d, h, w)
        b, d, h, w = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, d), N = h*w
        n = h * w
        mask = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        n_mask = int(round(mask_ratio * n))
        if n_mask > 0:
            noise = torch.rand(b, n, generator=generator,
                               device="cpu" if generator is not None else x.device).to(x.device)
            idx = noise.argsort(dim=1)[:, :n_mask]  # (B, n_mask) random patches per image
            mask.scatter_(1, idx, True)
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype).expand(b, n, d), tokens)
        tokens = tokens + sincos_pos_embed(d, h, w, x.device).to(tokens.dtype)
        for blk in self.blocks:
            tokens = blk(tokens)
        grid = self.norm(tokens).transpose(1, 2).reshape(b, d, h, w)  # (B, d, H/p, W/p)
        return [branch(grid) for branch in self.pyramid], mask.view(b, h, w)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, H, W), radius 4 sigma (scipy's default truncation)."""
    if sigma <= 0:
        return x
    radius = int(4.0 * sigma + 0.5)
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(coords**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x


class MMR(AnomalyModel):
    """MMR in the kit's model interface (see ARCHITECTURE.md "memseg.models").

    ``needs_simulation = False``: it trains on normal images only (``compute_loss`` uses ``clean``).
    """

    name = "mmr"
    needs_simulation = False

    def __init__(self, config: MMRConfig | dict[str, Any] | None = None, init_weights: bool = True) -> None:
        """``init_weights=False``: the teacher is not initialised from ``config.weights`` (random init)
        but ``config.weights`` is kept as the recorded source, for rebuilding a model whose weights
        come from a checkpoint right after (no download, no file needed) — as for MemSeg."""
        super().__init__()
        if config is None or isinstance(config, dict):
            config = MMRConfig.from_dict(config)
        self.config = config
        self.teacher = ResNetTeacher(config.weights if init_weights else "random")
        if init_weights:
            self.config.weights = self.teacher.weights_source  # a local file becomes an absolute path
        self.weights_source: str = self.config.weights
        self.student = MaskedViTStudent(config, list(ResNetTeacher.channels), list(ResNetTeacher.strides))
        self._mult = max(config.patch_size, max(ResNetTeacher.strides))

    # -- interface ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "MMR":
        """The teacher stays in eval mode (frozen BatchNorm statistics) whatever ``mode`` is."""
        super().train(mode)
        self.teacher.eval()  # ResNetTeacher.train() keeps it in eval mode anyway
        return self

    def _check_inputs(self, x: torch.Tensor, what: str = "inputs") -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MMR expects {what} of shape (B, 3, H, W) ImageNet-normalised, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self._mult or w % self._mult:
            raise ValueError(f"MMR expects {what} with H and W multiples of {self._mult} "
                             f"(config.input_size={self.config.input_size}), got {h}x{w}")

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frozen teacher features, list of (B, C_k, H/r_k, W/r_k) (ResNet blocks 1-3: C 64/128/256, r 4/8/16)."""
        return self.teacher(x)

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None) -> dict[str, Any]:
        """x (B, 3, H, W) normalised -> dict(teacher, student: lists of feature maps, mask (B, h, w) bool).

        ``mask_ratio`` defaults to ``config.mask_ratio`` in training mode and 0 in eval mode.
        """
        self._check_inputs(x)
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio if self.training else 0.0
        teacher = self.teacher_features(x)
        student, mask = self.student(x, mask_ratio)
        return {"teacher": teacher, "student": student, "mask": mask}

    @staticmethod
    def cosine_distance(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-pixel ``1 - cos`` over channels for each scale, list of (B, 1, h_k, w_k) in [0, 2] (MMR's anomaly
        measure)."""
        return [(1.0 - F.cosine_similarity(t.float(), s.float(), dim=1, eps=1e-6)).unsqueeze(1)
                for t, s in zip(teacher, student)]

    def compute_loss(self, inputs: torch.Tensor, masks: torch.Tensor,
                     clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over scales of the mean cosine distance between teacher and student features (MMR's objective).

        MMR learns normal images only: it reconstructs ``clean`` (normalised, (B, 3, H, W));
        ``inputs`` and ``masks`` are accepted for the shared interface and ignored.
        """
        out = self(clean)
        dists = self.cosine_distance(out["teacher"], out["student"])
        per_scale = [d.mean() for d in dists]
        loss = torch.stack(per_scale).sum()
        info = {"loss": loss.detach()}
        for block, d in enumerate(per_scale, start=1):
            info[f"cos_block{block}"] = d.detach()
        return loss, info

    @torch.no_grad()
    def anomaly_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean over scales of ``1 - cos`` at input size, Gaussian-smoothed (sigma 4), divided by 2.

        (B, 3, H, W) normalised -> (B, 1, H, W) in [0, 1]. No masking (deterministic); the fixed
        division by 2 (the range of the cosine distance) keeps maps comparable across images.
        """
        out = self(inputs, mask_ratio=0.0)
        size = tuple(inputs.shape[-2:])
        dists = self.cosine_distance(out["teacher"], out["student"])
        with torch.autocast(inputs.device.type, enabled=False):  # float32 maps (no bf16 ties)
            amap = torch.stack([F.interpolate(d, size=size, mode="bilinear", align_corners=False)
                                for d in dists]).mean(0)
            amap = gaussian_blur(amap, self.config.smoothing_sigma)  # (B, 1, H, W) in [0, 2]
        return (amap / 2.0).clamp(0.0, 1.0)  # fixed, image-independent scaling to [0, 1]


