"""The texture source of anomaly simulation (paper §3.1: textural anomalies come from the DTD dataset).

DTD images are found under ``<dtd_root>/images/<category>/``, decoded and cover-resized once into a
uint8 bank (N, 3, H, W) on the simulator's device (:class:`TextureBank`). For each texture sample
the simulator picks a bank image and a random mirror/quarter turn (:func:`draw_texture_params`);
:func:`texture_pixels` turns that into a :class:`memseg.simulation.pixels.PixelSource`, the noise
image I_n of eq. (1) as pixel look-ups.

Examples:
    >>> bank = TextureBank.from_tensor(torch.rand(4, 3, 32, 32))
    >>> len(bank), bank.load().dtype
    (4, torch.uint8)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from memseg.simulation.pixels import PixelSource, draw_mirror_rotate, mirror_rotate_map
from memseg.simulation.sampling import random_int

__all__ = [
    "TextureBank", "TextureParams", "cover_resize", "draw_texture_params", "find_texture_files", "load_textures",
    "texture_pixels",
]

_TEXTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def find_texture_files(dtd_root: str | Path) -> list[Path]:
    """Sorted texture files under `<dtd_root>/images/<category>/`; dtd_root may be `images/` itself.

    A folder of images without category sub-folders is accepted too. Returns [] when missing.
    """
    root = Path(dtd_root).expanduser()
    images = root / "images" if (root / "images").is_dir() else root
    if not images.is_dir():
        return []
    files = [p for p in images.glob("*/*") if p.suffix.lower() in _TEXTURE_SUFFIXES and p.is_file()]
    if not files:
        files = [p for p in images.glob("*") if p.suffix.lower() in _TEXTURE_SUFFIXES and p.is_file()]
    return sorted(files)


def cover_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so the image covers (H, W) keeping its aspect ratio, then centre-crop to (H, W)."""
    h, w = size
    scale = max(w / img.width, h / img.height)
    nw, nh = max(w, math.ceil(img.width * scale)), max(h, math.ceil(img.height * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0)
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


def load_textures(
    files: Sequence[Path],
    size: tuple[int, int],
    max_textures: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor | None:
    """Decode and resize textures once -> uint8 Tensor (N, 3, H, W) on `device` (None if none load).

    At most `max_textures` files, picked evenly spaced over the sorted list (deterministic and
    spread across DTD categories). Unreadable files are skipped with a warning naming them.
    """
    files = list(files)
    if len(files) > max_textures > 0:
        picks = np.unique(np.linspace(0, len(files) - 1, max_textures).round().astype(int))
        files = [files[i] for i in picks]
    h, w = size
    out = []
    for path in tqdm(files, desc="DTD textures", disable=not progress, leave=False):
        try:
            with Image.open(path) as img:
                img.draft("RGB", (w, h))  # JPEG: decode at a reduced scale when possible
                arr = np.asarray(cover_resize(img.convert("RGB"), (h, w)))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            warnings.warn(f"skipping texture {path}: cannot decode it as an RGB image ({err})", stacklevel=2)
            continue
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    if not out:
        return None
    return torch.stack(out).to(device)


class TextureBank:
    """The textures of one simulator: DTD files decoded once, on first use, into uint8 (N, 3, H, W).

    Build it with :meth:`from_folder` (DTD files) or :meth:`from_tensor` (injected images).
    """

    def __init__(
        self,
        files: Sequence[Path] = (),
        size: tuple[int, int] = (256, 256),
        device: str | torch.device = "cpu",
        max_textures: int = 256,
        progress: bool = True,
        root: Path | None = None,
    ) -> None:
        self.files, self.size, self.device = list(files), size, device
        self.max_textures, self.progress, self.root = max_textures, progress, root
        self._images: torch.Tensor | None = None

    @classmethod
    def from_folder(cls, root: Path, size: tuple[int, int], device: str | torch.device = "cpu",
                    max_textures: int = 256, progress: bool = True) -> TextureBank:
        """The texture files under `root` (not decoded yet); warns, naming `root`, when there are none."""
        files = find_texture_files(root)
        if not files:
            warnings.warn(
                f"no DTD textures found at {root} (expected {root}/images/<category>/*.jpg): "
                "texture anomalies are disabled, simulating structural anomalies only.",
                stacklevel=3,
            )
        return cls(files, size, device, max_textures, progress, root)

    @classmethod
    def from_tensor(cls, textures: torch.Tensor, device: str | torch.device = "cpu") -> TextureBank:
        """Injected textures: uint8 (N, 3, H, W) or float in [0, 1] (tests, demos)."""
        if textures.dim() != 4 or textures.shape[1] != 3 or textures.shape[0] < 1:
            raise ValueError(f"textures must be a (N>=1, 3, H, W) tensor, got shape {tuple(textures.shape)}")
        if textures.dtype != torch.uint8:
            textures = (textures.float().clamp(0, 1) * 255).round().to(torch.uint8)
        bank = cls(size=tuple(textures.shape[-2:]), device=device)
        bank._images = textures.to(device)
        return bank

    def load(self) -> torch.Tensor | None:
        """The decoded bank, uint8 (N, 3, H, W) on the device, or None when no texture decodes."""
        if self._images is None and self.files:
            self._images = load_textures(self.files, self.size, self.max_textures, self.device, self.progress)
            self.files = []
            if self._images is None:
                warnings.warn(
                    f"none of the DTD textures under {self.root} could be decoded: structural anomalies only",
                    stacklevel=3,
                )
        return self._images

    def __len__(self) -> int:
        return len(self._images) if self._images is not None else len(self.files)


@dataclass
class TextureParams:
    """Random draws of the texture source for n samples (CPU): bank image (n,) and (hflip, vflip, quarter)."""

    index: torch.Tensor
    flips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def draw_texture_params(
    n: int, n_bank: int, height: int, width: int, generator: torch.Generator | None = None,
    mirror_prob: float = 0.5, rot90: bool = True,
) -> TextureParams:
    """Pick a bank image, then a mirror/quarter turn, per sample (in that order)."""
    index = random_int(0, n_bank, (n,), generator)
    return TextureParams(index, draw_mirror_rotate(n, height, width, generator, mirror_prob, rot90))


def texture_pixels(bank: torch.Tensor, params: TextureParams, size: tuple[int, int]) -> PixelSource:
    """Texture noise images I_n of size (H, W) as pixel look-ups into the uint8 `bank` (N, 3, Ht, Wt).

    A bank of another size than the images (e.g. a simulator reused at a new size) has its picked
    textures resized on the fly.
    """
    h, w = size
    rows = params.index.to(bank.device)
    if tuple(bank.shape[-2:]) != (h, w):
        picked = F.interpolate(bank[rows].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        bank, rows = picked.round_().clamp_(0, 255).to(torch.uint8), torch.arange(len(rows), device=bank.device)
    return PixelSource(bank, rows, mirror_rotate_map(*params.flips, h, w, bank.device))
