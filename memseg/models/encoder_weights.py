"""Where the ResNet18 encoder's weights come from: names, the shipped offline encoder, files, the hub.

MemSeg (paper §3.2) freezes an ImageNet-pretrained ResNet18. The kit names its sources:

- ``"imagenet"``: the paper's weights, torchvision's ImageNet ResNet18, which timm calls
  ``resnet18.tv_in1k`` (timm's bare ``resnet18`` is today ``resnet18.a1_in1k``, another recipe);
- ``"timm:<tag>"``: any other pretrained resnet18 of timm by its tag, e.g. ``timm:resnet18.a1_in1k``;
- ``"offline"``: the kit's own encoder, made by ``memseg pretrain`` without any download and shipped
  as ``weights/memseg-resnet18-offline.pt`` (stem + blocks 1-3, the part MemSeg freezes; its
  provenance is the ``.json`` beside it);
- ``"random"``: timm's initialisation with live residual branches (``zero_init_last=False``);
- ``"auto"``: ImageNet when timm can get it (the local Hugging Face cache, or the hub when it answers
  within ``$MEMSEG_HUB_TIMEOUT`` seconds, default 3; ``MEMSEG_OFFLINE=1``/``HF_HUB_OFFLINE=1`` look at
  the cache only), else the shipped offline encoder, else random; a one-line banner says which;
- anything else: a path to a local resnet18 state dict (timm or torchvision key names, optionally
  nested under ``state_dict``/``model``, prefixed by ``module.``; a file holding only the stem and
  blocks 1-3 is accepted: block 4 trains anyway), read with ``torch.load(weights_only=True)``.

The resolved source is what models record (``weights_source``): ``"timm:resnet18.tv_in1k"``,
``"offline"``, ``"random"`` or a file's absolute path.

Examples:
    >>> resolve_name("imagenet")
    WeightSpec(kind='timm', tag='resnet18.tv_in1k', path=None)
    >>> resolve_name("timm:resnet18.a1_in1k").source
    'timm:resnet18.a1_in1k'
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memseg.utils import unreadable_reason

IMAGENET_TAG = "resnet18.tv_in1k"
"""The paper's encoder: torchvision's ImageNet ResNet18 (resnet18-5c106cde.pth) under timm's name."""

OFFLINE_FILE = "memseg-resnet18-offline.pt"
HUB_HOST = ("huggingface.co", 443)
FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
"""State-dict keys of the stem and blocks 1-3: what a partial (shipped) encoder file must hold."""


@dataclass(frozen=True)
class WeightSpec:
    """A resolved weight name: ``kind`` is "timm", "file", "random" or "auto"."""

    kind: str
    tag: str | None = None  # timm tag (kind "timm")
    path: Path | None = None  # local file (kind "file"); the shipped encoder for "offline"

    @property
    def source(self) -> str:
        """What a model records as its ``weights_source``."""
        if self.kind == "timm":
            return f"timm:{self.tag}"
        if self.kind == "file":
            return "offline" if self.path == offline_weights_path() else str(self.path.resolve())
        return self.kind


def weights_dir() -> Path:
    """The kit's ``weights/`` folder ($MEMSEG_WEIGHTS_DIR, else beside the package in the project)."""
    env = os.environ.get("MEMSEG_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def offline_weights_path() -> Path:
    """The shipped offline encoder (made by ``memseg pretrain``; see its provenance ``.json``)."""
    return weights_dir() / OFFLINE_FILE


def resolve_name(weights: str | os.PathLike) -> WeightSpec:
    """A weight name -> :class:`WeightSpec`, without touching the network or the file system.

    Raises:
        ValueError: ``timm:`` without a tag, or a tag that is not a resnet18.
    """
    w = str(weights)
    if w == "imagenet":
        return WeightSpec("timm", IMAGENET_TAG)
    if w.startswith("timm:"):
        return WeightSpec("timm", timm_tag(w[len("timm:"):].strip()))
    if w == "offline":
        return WeightSpec("file", path=offline_weights_path())
    if w in ("random", "auto"):
        return WeightSpec(w)
    return WeightSpec("file", path=Path(w))


def timm_tag(name: str) -> str:
    """The full timm tag a resnet18 name stands for: ``resnet18`` alone is timm's default tag.

    Raises:
        ValueError: not a resnet18 tag that timm knows (the known ones are listed).
    """
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

    known = list(get_arch_pretrained_cfgs("resnet18"))
    if name == "resnet18":
        return get_pretrained_cfg("resnet18").hf_hub_id.split("/", 1)[1]  # timm's default, today resnet18.a1_in1k
    if name not in known:
        raise ValueError(f"--weights timm:{name}: MemSeg's encoder is a resnet18; expected one of timm's tags "
                         f"{', '.join('timm:' + k for k in known)}")
    return name


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_weights_cached(tag: str = IMAGENET_TAG) -> bool:
    """Whether timm's weights for ``tag`` are in the local Hugging Face cache (``timm/<tag>``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(f"timm/{tag}", filename)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def hub_timeout() -> float:
    """$MEMSEG_HUB_TIMEOUT in seconds (default 3); a bad value is a one-line error naming the variable."""
    text = os.environ.get("MEMSEG_HUB_TIMEOUT", "3")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"MEMSEG_HUB_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def hub_reachable(timeout: float | None = None) -> bool:
    """A TCP connection to the weights hub within ``timeout`` seconds ($MEMSEG_HUB_TIMEOUT, default 3)."""
    try:
        with socket.create_connection(HUB_HOST, timeout=hub_timeout() if timeout is None else timeout):
            return True
    except OSError:
        return False


def resolve_auto(offline_fallback: bool = True) -> tuple[WeightSpec, str]:
    """``"auto"`` -> (ImageNet | the shipped offline encoder | random, why), without downloading anything.

    ``offline_fallback=False`` (a model the offline encoder was not made for, e.g. MMR's teacher) skips the
    shipped encoder: ImageNet, else random.
    """
    imagenet = resolve_name("imagenet")
    if hub_weights_cached(IMAGENET_TAG):
        return imagenet, "ImageNet weights found in the local cache"
    if _env_true("MEMSEG_OFFLINE") or _env_true("HF_HUB_OFFLINE"):
        why = "offline mode (MEMSEG_OFFLINE/HF_HUB_OFFLINE) and no cached ImageNet weights"
    elif not hub_reachable():
        why = f"the weights hub ({HUB_HOST[0]}) cannot be reached and no ImageNet weights are cached"
    else:
        return imagenet, "the weights hub is reachable"
    if not offline_fallback:
        return WeightSpec("random"), why
    if offline_weights_path().is_file():
        return resolve_name("offline"), why
    return WeightSpec("random"), f"{why}, and the kit's offline encoder {OFFLINE_FILE} is missing"


def fallback_banner(spec: WeightSpec, reason: str) -> str:
    """The one line ``auto`` prints when it does not get ImageNet weights."""
    if spec.kind == "random":
        return (f"memseg: RANDOM ENCODER WEIGHTS ({reason}); results will be far below the paper's "
                "(pass --weights /path/to/resnet18.pth for a local ImageNet file)")
    return (f"memseg: encoder weights 'offline', the kit's own pretrained encoder, not ImageNet ({reason}); "
            "pass --weights imagenet when online, or --weights /path/to/resnet18.pth")


PROVENANCE_MAKER = "memseg pretrain"


def provenance_path(weights_file: str | os.PathLike) -> Path:
    """The provenance record beside an encoder file ``memseg pretrain`` wrote: ``<file>.json``."""
    return Path(weights_file).with_suffix(".json")


def kit_made(weights_source: str) -> bool:
    """Whether ``weights_source`` is a file that ``memseg pretrain`` wrote (its provenance says so)."""
    record = provenance_path(weights_source)
    try:
        return json.loads(record.read_text()).get("made_by") == PROVENANCE_MAKER
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------- loading
def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the resnet18 state dict inside a loaded object; strip common prefixes and ``fc.*``."""
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
        raise ValueError(f"{path}: no stem weight 'conv1.weight' found; is this a resnet18 state dict? keys start with "
                         f"{sorted(state)[:5]}")
    prefix = anchor[: -len("conv1.weight")]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not part of the encoder


def load_resnet18_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local resnet18 state dict (timm or torchvision names) into ``backbone``.

    The file must hold at least the stem and blocks 1-3 (what MemSeg freezes); a file without
    block 4 leaves block 4 as initialised (it trains). Half-precision files are cast.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state dict, missing/unexpected keys, or wrong shapes (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file not found: {path} (expected a resnet18 state dict saved with torch.save; "
            f"or use weights='imagenet', 'offline' or 'random')"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-torch files
        raise ValueError(
            f"{path}: cannot be read as encoder weights: {unreadable_reason(path, err)}; expected a resnet18 "
            "state dict saved with torch.save(model.state_dict()) (timm or torchvision key names)"
        ) from None
    state = unwrap_state_dict(obj, path)
    expected = backbone.state_dict()
    required = {k for k in expected if k.startswith(FROZEN_PREFIXES)}
    if not any(k.startswith("layer4.") for k in state):
        expected = {k: v for k, v in expected.items() if k in required}  # stem + blocks 1-3 only
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(backbone.state_dict()))
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a resnet18 state dict: {len(missing)} missing keys {missing[:6]}"
            f"{'...' if len(missing) > 6 else ''}, {len(unexpected)} unexpected keys {unexpected[:6]}"
            f"{'...' if len(unexpected) > 6 else ''}"
        )
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: resnet18 weights with wrong shapes (file vs model): {bad[:6]}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    backbone.load_state_dict(state, strict=False)


def create_timm_resnet18(tag: str | None) -> nn.Module:
    """timm's resnet18 as a ``features_only`` backbone; ``tag`` loads that pretrained tag, None is random."""
    import timm

    # zero_init_last=False: timm zeroes the last BN scale of every residual block by default (a trick
    # for training from scratch). Frozen, such an encoder is degenerate: blocks 1-3 reduce to the
    # max-pooled stem plus 1x1 projections. With pretrained weights the loaded state dict overwrites it.
    return timm.create_model(tag or "resnet18", features_only=True, pretrained=tag is not None,
                             out_indices=(0, 1, 2, 3, 4), zero_init_last=False)


def create_backbone(weights: str | os.PathLike = "auto", offline_fallback: bool = True) -> tuple[nn.Module, str]:
    """Build timm's resnet18 (``features_only``) with the named weights.

    Returns:
        ``(backbone, weights_source)``: the resolved source (see the module docstring).

    Examples:
        >>> backbone, source = create_backbone("random")
        >>> source
        'random'
    """
    spec = resolve_name(weights)
    if spec.kind == "auto":
        spec, reason = resolve_auto(offline_fallback)
        if spec.kind == "timm":
            try:
                return create_timm_resnet18(spec.tag), spec.source
            except Exception as err:  # the hub answered but the download failed
                reason = f"the ImageNet download failed: {type(err).__name__}"
                spec = (resolve_name("offline") if offline_fallback and offline_weights_path().is_file()
                        else WeightSpec("random"))
        print(fallback_banner(spec, reason), file=sys.stderr, flush=True)
    if spec.kind == "random":
        return create_timm_resnet18(None), "random"
    if spec.kind == "timm":
        try:
            return create_timm_resnet18(spec.tag), spec.source
        except Exception as err:
            raise RuntimeError(
                f"could not load the pretrained weights {spec.source} through timm (no hub access? "
                f"{type(err).__name__}: {' '.join(str(err).split())[:200]}). Pass a local weights file "
                "(weights='/path/to/resnet18.pth', timm or torchvision state dict), weights='offline' or "
                "weights='random'."
            ) from err
    backbone = create_timm_resnet18(None)
    load_resnet18_weights(backbone, spec.path)
    return backbone, spec.source


__all__ = ["IMAGENET_TAG", "WeightSpec", "create_backbone", "load_resnet18_weights", "offline_weights_path",
           "resolve_auto", "resolve_name"]
