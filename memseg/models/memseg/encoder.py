"""ResNet18 encoder of MemSeg (paper §3.2, Fig. 2) with a frozen stem and blocks 1-3.

The paper freezes blocks 1-3 "to ensure the unification of the memory information and the
high-level features of the input images". PITFALLS: the known kit freezes only the block
parameters, so the stem keeps training and the BatchNorm running statistics keep moving in
``train()`` mode, and the memory bank (extracted once) goes stale. Here the stem (conv1/bn1) and
blocks 1-3 have ``requires_grad=False``, run under ``torch.no_grad()`` (so they cost no backward
pass) and their BatchNorm layers stay in eval mode even when the model is in ``train()``.
Block 4 trains.

Weights are chosen explicitly (``weights``):
- ``"auto"`` (the default of the CLI, notebooks and demo): ImageNet weights when timm can get
  them (the local Hugging Face cache, or the hub when it answers within ``MEMSEG_HUB_TIMEOUT``
  seconds, default 3), else random initialisation with a loud one-line banner on stderr. The
  resolved source (``"imagenet"`` or ``"random"``) is what checkpoints and reports record.
  ``MEMSEG_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) skips the hub: only the cache is looked at;
- ``"imagenet"``: timm's pretrained resnet18 (needs hub access; offline this raises a clear
  ``RuntimeError``);
- a local file: a resnet18 state dict (timm or torchvision key names, optionally nested under
  ``state_dict``/``model`` or prefixed by ``module.``), loaded with ``torch.load(weights_only=True)``;
- ``"random"``: timm's initialisation with live residual branches (``zero_init_last=False``).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
from torch import nn

from memseg.utils import no_autocast, unreadable_reason

FROZEN_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3")
"""Stem and blocks 1-3: frozen, eval-mode BN (paper §3.2)."""

# (channels, stride) of the encoder outputs: stem, block 1, 2, 3, 4.
FEATURE_CHANNELS = (64, 64, 128, 256, 512)
FEATURE_STRIDES = (2, 4, 8, 16, 32)


def _create_timm_resnet18(pretrained: bool) -> nn.Module:
    import timm

    # zero_init_last=False: timm zeroes the last BN scale of every residual block by default (a
    # trick for training from scratch). Frozen, such an encoder is degenerate: blocks 1-3 reduce to
    # the max-pooled stem plus 1x1 projections, and DI* carries almost nothing. With pretrained
    # weights the flag is irrelevant (the loaded state dict overwrites it).
    return timm.create_model(
        "resnet18", features_only=True, pretrained=pretrained, out_indices=(0, 1, 2, 3, 4), zero_init_last=False
    )


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the resnet18 state dict inside a loaded object; strip common prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a resnet18 state dict (a dict of tensors with keys such as 'conv1.weight', "
            f"'layer1.0.conv1.weight'), found {type(obj).__name__}"
        )
    state = dict(obj)
    anchor = next((k for k in state if k.endswith("conv1.weight") and "layer" not in k), None)
    if anchor is None:
        raise ValueError(f"{path}: no stem weight 'conv1.weight' found; is this a resnet18 state dict? keys start with {sorted(state)[:5]}")
    prefix = anchor[: -len("conv1.weight")]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # the classifier (fc.*) is not part of a features_only encoder
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_resnet18_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local resnet18 state dict (timm or torchvision names) into ``backbone``, strictly.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state dict, missing/unexpected keys, or wrong shapes (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file not found: {path} (expected a resnet18 state dict saved with torch.save; "
            f"or use weights='imagenet' / 'random')"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-torch files
        raise ValueError(
            f"{path}: cannot be read as encoder weights: {unreadable_reason(path, err)}; expected a resnet18 "
            "state dict saved with torch.save(model.state_dict()) (timm or torchvision key names)"
        ) from None
    state = _unwrap_state_dict(obj, path)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a resnet18 state dict: {len(missing)} missing keys {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, {len(unexpected)} unexpected keys {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: resnet18 weights with wrong shapes (file vs model): {bad[:6]}")
    backbone.load_state_dict(state, strict=True)


WEIGHT_MODES = ("auto", "imagenet", "random")
"""Named encoder initialisations; anything else is a path to a local resnet18 state dict."""

TIMM_HUB_ID = "timm/resnet18.a1_in1k"  # timm's default pretrained tag for resnet18
HUB_HOST = ("huggingface.co", 443)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def imagenet_weights_cached() -> bool:
    """Whether timm's resnet18 ImageNet weights are in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(TIMM_HUB_ID, filename)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def hub_reachable(timeout: float | None = None) -> bool:
    """A TCP connection to the weights hub within ``timeout`` seconds ($MEMSEG_HUB_TIMEOUT, default 3)."""
    if timeout is None:
        timeout = float(os.environ.get("MEMSEG_HUB_TIMEOUT", "3"))
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_auto_weights() -> tuple[str, str]:
    """``weights="auto"`` -> ``("imagenet" | "random", reason)`` without downloading anything."""
    if imagenet_weights_cached():
        return "imagenet", "ImageNet weights found in the local cache"
    if _env_true("MEMSEG_OFFLINE") or _env_true("HF_HUB_OFFLINE"):
        return "random", "offline mode (MEMSEG_OFFLINE/HF_HUB_OFFLINE) and no cached ImageNet weights"
    if not hub_reachable():
        return "random", f"the weights hub ({HUB_HOST[0]}) cannot be reached and no ImageNet weights are cached"
    return "imagenet", "the weights hub is reachable"


def random_weights_banner(reason: str) -> str:
    return (f"memseg: RANDOM ENCODER WEIGHTS ({reason}); results will be far below the paper's "
            "(pass --weights /path/to/resnet18.pth for a local ImageNet file)")


def create_backbone(weights: str | Path = "auto") -> tuple[nn.Module, str]:
    """Build timm's resnet18 (``features_only``) with the requested weights.

    Returns:
        ``(backbone, weights_source)`` where ``weights_source`` is ``"random"``, ``"imagenet"``
        or the resolved path of the local file (``"auto"`` resolves to one of the first two).

    Examples:
        >>> backbone, source = create_backbone("random")
        >>> source
        'random'
    """
    w = str(weights)
    if w == "auto":
        w, reason = resolve_auto_weights()
        if w == "imagenet":
            try:
                return _create_timm_resnet18(pretrained=True), "imagenet"
            except Exception as err:  # hub answered but the download failed
                reason = f"the ImageNet download failed: {type(err).__name__}"
                w = "random"
        print(random_weights_banner(reason), file=sys.stderr, flush=True)
    if w == "random":
        return _create_timm_resnet18(pretrained=False), "random"
    if w == "imagenet":
        try:
            return _create_timm_resnet18(pretrained=True), "imagenet"
        except Exception as err:
            raise RuntimeError(
                "could not load ImageNet weights for resnet18 through timm (no hub access? "
                f"{type(err).__name__}: {str(err)[:200]}). Pass a local weights file "
                "(weights='/path/to/resnet18.pth', timm or torchvision state dict) or weights='random'."
            ) from err
    backbone = _create_timm_resnet18(pretrained=False)
    load_resnet18_weights(backbone, w)
    return backbone, str(Path(w).resolve())


class ResNet18Encoder(nn.Module):
    """ResNet18 with frozen stem + blocks 1-3 and a trainable block 4.

    ``forward_frozen(x)`` -> [stem (B,64,H/2,W/2), f1 (B,64,H/4,W/4), f2 (B,128,H/8,W/8),
    f3 (B,256,H/16,W/16)] computed under ``no_grad``; ``forward_block4(f3)`` -> (B,512,H/32,W/32).
    """

    def __init__(self, weights: str | Path = "auto") -> None:
        super().__init__()
        self.backbone, self.weights_source = create_backbone(weights)
        for name in FROZEN_MODULES:
            for p in getattr(self.backbone, name).parameters():
                p.requires_grad_(False)
        self.train(True)

    def frozen_modules(self) -> list[nn.Module]:
        return [getattr(self.backbone, n) for n in FROZEN_MODULES]

    def train(self, mode: bool = True) -> "ResNet18Encoder":
        """Set train/eval mode; the frozen stem and blocks 1-3 always stay in eval mode (BN stats fixed)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    @torch.no_grad()
    def forward_frozen(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and blocks 1-3 in float32, even inside an autocast region: they cost no backward,
        and the memory bank (extracted in float32) must meet live features of the same precision."""
        b = self.backbone
        with no_autocast(x.device.type):
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
