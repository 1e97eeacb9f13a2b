"""Anomaly simulation strategy of MemSeg (paper §3.1, Fig. 3, eq. (1)-(2)).

Three steps, all batched torch ops on the simulator's device:

1. Mask: Perlin noise P binarised with threshold T gives M_P; the foreground mask M_I of the
   input image restricts it: M = M_P ⊙ M_I (`memseg.simulation.perlin`, `memseg.simulation.foreground`).
2. Noise foreground: the noise image I_n is a DTD texture (textural anomaly) or the input image
   after random mirror/rotation/brightness/saturation/hue with its 4×8 grid of tiles shuffled
   (structural anomaly); I'_n = δ(M ⊙ I_n) + (1 − δ)(M ⊙ I), δ ~ U[0.15, 1]          eq. (1)
3. Composite: I_A = M̄ ⊙ I + I'_n                                                    eq. (2)

Images are float tensors in [0, 1] and are **not** ImageNet-normalised here; normalisation
happens after compositing (PITFALLS). Anomalies are simulated at the final size (no crop that
could cut an anomaly away), and every simulated sample has a non-empty mask.

Speed (PITFALLS, "Speed"): textures are decoded once into a uint8 cache on the device; mirror,
quarter turns and the tile shuffle are integer index arithmetic (one gather, no per-sample
loops); and unless intermediates are requested, eq. (1)-(2) are evaluated only at the pixels
inside M (a few percent of the image), fetching each one's source pixel through that index
arithmetic, so the full noise image I_n is never built. Both paths give the same result.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from memseg.config import as_size
from memseg.simulation.foreground import ForegroundConfig, foreground_mask, foreground_preset
from memseg.simulation.perlin import perlin_mask, perlin_noise, random_uniform
from memseg.utils import select_device

__all__ = [
    "SimulationConfig",
    "SimulationResult",
    "AnomalySimulator",
    "find_texture_files",
    "load_textures",
    "colour_jitter_matrix",
    "random_mirror_rotate",
    "mirror_rotate_index",
    "gather_pixels",
    "structure_index",
    "shuffle_tiles",
    "structure_source",
    "StructureParams",
    "draw_structure_params",
    "render_structure",
    "default_dtd_root",
]

SOURCES = ("texture", "structure")
_TEXTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Start of the warning when no DTD root is given (callers that already said so in their own words filter it).
NO_DTD_WARNING = "no DTD root given (dtd_root=None)"


@dataclass
class SimulationConfig:
    """Parameters of the simulation; the first eight are the paper's/ARCHITECTURE.md's.

    threshold: Perlin threshold T (M_P = P > T); P is in about [-1, 1].
    delta_range: δ ~ U[delta_range] (eq. 1).
    scale_exp_range: Perlin period exponents per axis, inclusive (2^0..2^5 cells).
    grid: (rows, cols) of the structural tile shuffle (paper: 4×8).
    texture_prob: probability of a DTD texture source (else structural); 0 => structure only.
    rotate: rotate the Perlin sampling coordinates by a random angle.
    max_resample: how often an empty M is redrawn before falling back to a blob.
    foreground: ForegroundConfig for M_I; None => the category preset (or no mask).
    brightness, saturation: multiplicative factor ranges of the structural colour jitter.
    hue: hue rotation range, in turns (0.1 = 36°).
    mirror_prob: probability of each horizontal/vertical mirror (structure and texture).
    rot90: random multiples of 90° (180° only for non-square images).
    max_angle: extra small rotation of the structure source, ±degrees (0 = off; costs a resample).
    samples_per_cell: Perlin coarse-grid density (see `memseg.simulation.perlin.perlin_noise`).
    blob_radius: radius of the fallback blob as a fraction of min(H, W).
    sparse_max_fraction: composite only the masked pixels when M covers at most this fraction
        of the batch (same result, much faster); 0 = always build the full noise image.
    """

    threshold: float = 0.5
    delta_range: tuple[float, float] = (0.15, 1.0)
    scale_exp_range: tuple[int, int] = (0, 5)
    grid: tuple[int, int] = (4, 8)
    texture_prob: float = 0.5
    rotate: bool = True
    max_resample: int = 10
    foreground: ForegroundConfig | None = None
    brightness: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: tuple[float, float] = (-0.1, 0.1)
    mirror_prob: float = 0.5
    rot90: bool = True
    max_angle: float = 0.0
    samples_per_cell: float = 4.0
    blob_radius: float = 0.06
    sparse_max_fraction: float = 0.3

    def __post_init__(self) -> None:
        if isinstance(self.foreground, dict):  # from YAML / asdict
            self.foreground = ForegroundConfig(**self.foreground)
        self.delta_range = (float(self.delta_range[0]), float(self.delta_range[1]))
        self.scale_exp_range = (int(self.scale_exp_range[0]), int(self.scale_exp_range[1]))
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        lo, hi = self.delta_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"delta_range must satisfy 0 <= low <= high <= 1, got {self.delta_range}")
        if not 0.0 <= self.texture_prob <= 1.0:
            raise ValueError(f"texture_prob must be in [0, 1], got {self.texture_prob}")
        if min(self.grid) < 1:
            raise ValueError(f"grid must be (rows >= 1, cols >= 1), got {self.grid}")
        if self.max_resample < 0:
            raise ValueError(f"max_resample must be >= 0, got {self.max_resample}")


@dataclass
class SimulationResult:
    """Output of `AnomalySimulator.simulate`.

    images: I_A (B, 3, H, W) in [0, 1]; masks: M (B, 1, H, W) in {0, 1}; delta: δ (B,);
    source: "texture" | "structure" per sample; intermediates: None or a dict with
    P, M_P, M_I, M, I_n, I_n_prime, I_A (tensors) plus delta, source, threshold, scale_exp (B, 2),
    angle (B,), resampled (B,) redraw counts and fallback (B,) bool (blob used).
    """

    images: torch.Tensor
    masks: torch.Tensor
    delta: torch.Tensor
    source: list[str]
    intermediates: dict[str, Any] | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- texture source (DTD)


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


def _cover_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so the image covers (H, W) keeping its aspect ratio, then centre-crop."""
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
                arr = np.asarray(_cover_resize(img.convert("RGB"), (h, w)))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            warnings.warn(f"skipping texture {path}: cannot decode it as an RGB image ({err})", stacklevel=2)
            continue
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    if not out:
        return None
    return torch.stack(out).to(device)


# --------------------------------------------------------------------------- structure source


def _yiq() -> tuple[torch.Tensor, torch.Tensor]:
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    return rgb2yiq, torch.linalg.inv(rgb2yiq)


def colour_jitter_matrix(
    brightness: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Per-sample 3×3 RGB matrices (B, 3, 3) for brightness × saturation × hue.

    Saturation scales and hue (in turns) rotates the chroma plane (I, Q) of YIQ, keeping luma Y:
    the same saturation as torchvision's blend with the grey image, and a linear approximation
    of an HSV hue shift, so the whole jitter is one batched matrix product.
    """
    rgb2yiq, yiq2rgb = _yiq()
    ang = 2 * math.pi * hue.float().cpu()
    s = saturation.float().cpu()
    b = brightness.float().cpu()
    chroma = torch.zeros(len(s), 3, 3)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = s * torch.cos(ang), -s * torch.sin(ang)
    chroma[:, 2, 1], chroma[:, 2, 2] = s * torch.sin(ang), s * torch.cos(ang)
    return b.view(-1, 1, 1) * (yiq2rgb @ chroma @ rgb2yiq)


def _draw_mirror_rotate(
    batch: int, height: int, width: int, generator: torch.Generator | None, mirror_prob: float, rot90: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (hflip bool, vflip bool, quarter turns long), all (B,) on the CPU."""
    u = random_uniform((batch, 3), generator)
    hflip, vflip = u[:, 0] < mirror_prob, u[:, 1] < mirror_prob
    if not rot90:
        quarter = torch.zeros(batch, dtype=torch.long)
    elif height == width:
        quarter = (u[:, 2] * 4).long().clamp(max=3)
    else:  # keep the shape: 0° or 180° only
        quarter = 2 * (u[:, 2] * 2).long().clamp(max=1)
    return hflip, vflip, quarter


def mirror_rotate_index(
    hflip: torch.Tensor, vflip: torch.Tensor, quarter: torch.Tensor, height: int, width: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Flat source index (B, H, W) of `rot90(vflip(hflip(x)), quarter)` for each sample.

    `x.view(B, C, H*W).gather(2, index)` applies the transform: mirrors and quarter turns are
    integer affine maps of the pixel coordinates, so the index is one broadcast add
    `P*i + Q*j + C` instead of a flip/rotate pass over the image per sample.
    """
    p, q, c = _mirror_rotate_coef(hflip, vflip, quarter, height, width, device)
    i = torch.arange(height, device=device).view(1, -1, 1)
    j = torch.arange(width, device=device).view(1, 1, -1)
    return (p.view(-1, 1, 1) * i + c.view(-1, 1, 1)) + q.view(-1, 1, 1) * j


def _mirror_rotate_coef(hflip, vflip, quarter, height, width, device):
    """(P, Q, C), each (B,) long: the source flat index of output pixel (i, j) is P*i + Q*j + C."""
    if bool((quarter % 2 == 1).any()) and height != width:
        raise ValueError(f"90° rotations need a square image, got {height}x{width}")
    h1, w1 = height - 1, width - 1
    # (source row, source col) = A @ (i, j, 1) for torch.rot90(x, k, dims=(-2, -1)), k = 0..3
    rot = torch.tensor(
        [[[1, 0, 0], [0, 1, 0]], [[0, 1, 0], [-1, 0, w1]], [[-1, 0, h1], [0, -1, w1]], [[0, -1, h1], [1, 0, 0]]]
    )
    a = rot[quarter.cpu().long() % 4].clone()  # (B, 2, 3)
    v, hf = vflip.cpu().bool(), hflip.cpu().bool()
    a[v, 0] = -a[v, 0]  # vertical mirror: row -> H-1-row
    a[v, 0, 2] += h1
    a[hf, 1] = -a[hf, 1]  # horizontal mirror: col -> W-1-col
    a[hf, 1, 2] += w1
    coef = (a[:, 0] * width + a[:, 1]).to(device)  # flat = row * W + col
    return coef[:, 0], coef[:, 1], coef[:, 2]


def structure_index(
    hflip: torch.Tensor, vflip: torch.Tensor, quarter: torch.Tensor, perm: torch.Tensor,
    height: int, width: int, grid: tuple[int, int] = (4, 8), device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Flat source index (B, H, W) of `shuffle_tiles(rot90(vflip(hflip(x))), grid, perm)`.

    With the mirror/turn map flat = P*i + Q*j + C and output tile t taken from tile perm[t] at
    (row R, col K), the index is (P*R*th + Q*K*tw + C)[tile] + (P*di + Q*dj)[offset]: one
    broadcast add over the image (the remainder strip of a non-divisible size keeps P*i + Q*j + C).
    """
    gh, gw = grid
    th, tw = height // gh, width // gw
    if th == 0 or tw == 0:
        raise ValueError(f"image of size {height}x{width} is smaller than the tile grid {gh}x{gw}")
    b = perm.shape[0]
    p, q, c = (v.view(b, 1, 1) for v in _mirror_rotate_coef(hflip, vflip, quarter, height, width, device))
    perm = perm.to(device, torch.long).view(b, gh, gw)
    base = p * ((perm // gw) * th) + q * ((perm % gw) * tw) + c  # (B, gh, gw)
    di = torch.arange(th, device=device).view(1, -1, 1)
    dj = torch.arange(tw, device=device).view(1, 1, -1)
    offset = p * di + q * dj  # (B, th, tw)
    tiles = (base.view(b, gh, 1, gw, 1) + offset.view(b, 1, th, 1, tw)).view(b, gh * th, gw * tw)
    if gh * th == height and gw * tw == width:
        return tiles
    index = mirror_rotate_index(hflip, vflip, quarter, height, width, device)
    index[:, : gh * th, : gw * tw] = tiles
    return index


def gather_pixels(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, c, p] = images[b, c, index[b, p]] for images (B, C, H, W) and index (B, H, W)."""
    b, c, h, w = images.shape
    idx = index.reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)


def random_mirror_rotate(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    mirror_prob: float = 0.5,
    rot90: bool = True,
) -> torch.Tensor:
    """Random per-sample horizontal/vertical mirror and rotation by multiples of 90° (new tensor).

    Non-square images only get 0° or 180° so the shape is kept. Works for any dtype (uint8 too).
    """
    b, _, h, w = images.shape
    hflip, vflip, quarter = _draw_mirror_rotate(b, h, w, generator, mirror_prob, rot90)
    return gather_pixels(images, mirror_rotate_index(hflip, vflip, quarter, h, w, images.device))


def _small_rotation(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle in degrees (bilinear, reflection padding)."""
    b = images.shape[0]
    ang = degrees.float().cpu() * math.pi / 180
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang), -torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang), torch.cos(ang)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def shuffle_tiles(
    images: torch.Tensor,
    grid: tuple[int, int] = (4, 8),
    generator: torch.Generator | None = None,
    perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each image into a rows×cols grid and rearrange the tiles by a random permutation.

    images (B, C, H, W) -> (shuffled (B, C, H, W), perm LongTensor (B, rows*cols)); output tile k
    (row-major) is input tile perm[b, k]. When H or W is not divisible by the grid, the largest
    divisible top-left crop is shuffled and the remaining bottom/right strip is kept as is.
    """
    b, c, h, w = images.shape
    gh, gw = grid
    th, tw = h // gh, w // gw
    if th == 0 or tw == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than the tile grid {gh}x{gw}")
    n = gh * gw
    if perm is None:
        perm = torch.argsort(random_uniform((b, n), generator), dim=1)
    perm = perm.to(images.device, torch.long)
    if perm.shape != (b, n):
        raise ValueError(f"perm must have shape ({b}, {n}), got {tuple(perm.shape)}")
    hc, wc = gh * th, gw * tw
    # (B, C, gh*th, gw*tw) -> (B, gh*gw, C, th, tw)
    tiles = images[..., :hc, :wc].reshape(b, c, gh, th, gw, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, th, tw)
    tiles = tiles[torch.arange(b, device=images.device).view(-1, 1), perm]
    shuffled = tiles.view(b, gh, gw, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hc, wc)
    if hc == h and wc == w:
        return shuffled, perm
    out = images.clone()
    out[..., :hc, :wc] = shuffled
    return out, perm


@dataclass
class StructureParams:
    """Random draws of the structural source for n images (all on the CPU).

    colour (n, 3, 3) jitter matrices; flips = (hflip, vflip, quarter turns), each (n,);
    perm (n, rows*cols) tile permutations; angle (n,) degrees or None (config.max_angle = 0).
    """

    colour: torch.Tensor
    flips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    perm: torch.Tensor
    angle: torch.Tensor | None = None


def draw_structure_params(
    n: int, height: int, width: int, config: SimulationConfig, generator: torch.Generator | None = None
) -> StructureParams:
    """Draw colour jitter, mirror/quarter turn, optional small angle and tile permutation (in that order)."""
    u = random_uniform((n, 3), generator)
    lerp = lambda r, t: r[0] + (r[1] - r[0]) * t  # noqa: E731
    colour = colour_jitter_matrix(lerp(config.brightness, u[:, 0]), lerp(config.saturation, u[:, 1]), lerp(config.hue, u[:, 2]))
    flips = _draw_mirror_rotate(n, height, width, generator, config.mirror_prob, config.rot90)
    angle = random_uniform((n,), generator, "cpu", -config.max_angle, config.max_angle) if config.max_angle > 0 else None
    perm = torch.argsort(random_uniform((n, config.grid[0] * config.grid[1]), generator), dim=1)
    return StructureParams(colour, flips, perm, angle)


def render_structure(images: torch.Tensor, params: StructureParams, grid: tuple[int, int] = (4, 8)) -> torch.Tensor:
    """Structural noise image I_n for images (n, 3, H, W) in [0, 1] and drawn `params`.

    Colour is one batched 3×3 matrix product; mirror, quarter turns and the tile shuffle are
    composed into one pixel index (:func:`structure_index`) and gathered once.
    """
    b, _, h, w = images.shape
    mat = params.colour.to(images.device, images.dtype)
    x = torch.einsum("bij,bjp->bip", mat, images.reshape(b, 3, -1))  # einsum: much faster than bmm for K = 3
    x = x.view_as(images).clamp_(0, 1)
    if params.angle is not None:  # a resampling rotation sits between mirror/turn and shuffle
        x = _small_rotation(gather_pixels(x, mirror_rotate_index(*params.flips, h, w, images.device)), params.angle)
        return shuffle_tiles(x, grid, perm=params.perm)[0]
    return gather_pixels(x, structure_index(*params.flips, params.perm, h, w, grid, images.device))


def structure_source(
    images: torch.Tensor, config: SimulationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Structural noise image I_n (paper §3.1): random mirror, rotation, brightness, saturation and
    hue, then the grid shuffle. images (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
    b, _, h, w = images.shape
    return render_structure(images, draw_structure_params(b, h, w, config, generator), config.grid)


def _structure_index_at(
    params: StructureParams, grid: tuple[int, int], height: int, width: int,
    rows: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
) -> torch.Tensor:
    """:func:`structure_index` evaluated only at pixels (rows[k], i[k], j[k]) -> (K,) flat indices."""
    gh, gw = grid
    th, tw = height // gh, width // gw
    p, q, c = (v[rows] for v in _mirror_rotate_coef(*params.flips, height, width, rows.device))
    ti, tj = i // th, j // tw
    inside = (ti < gh) & (tj < gw)
    t = params.perm.to(rows.device)[rows, ti.clamp(max=gh - 1) * gw + tj.clamp(max=gw - 1)]
    si = torch.where(inside, (t // gw) * th + i % th, i)
    sj = torch.where(inside, (t % gw) * tw + j % tw, j)
    return p * si + q * sj + c


# --------------------------------------------------------------------------- simulator


class AnomalySimulator:
    """Batched MemSeg anomaly simulation (paper §3.1) with an in-memory texture cache.

    Args:
        config: SimulationConfig (default: the paper's settings).
        dtd_root: DTD folder (`<dtd_root>/images/<category>/*.jpg`, or `images/` itself). Missing or
            empty -> a warning naming the path, then structure-only anomalies.
        size: (H, W) of the cached textures (the training image size).
        device: "auto" | "cpu" | "cuda"; simulation runs there (textures are cached there).
        category: picks the foreground preset (`memseg.simulation.foreground.FOREGROUND_PRESETS`) unless
            `config.foreground` is set.
        textures: inject textures directly, uint8 (N, 3, H, W) or float in [0, 1] (tests, demos).
        max_textures: at most this many DTD files are decoded (evenly spaced, deterministic).
        progress: show a progress bar while decoding textures.

    Textures are decoded lazily on first use (or by `load()`), once.
    """

    def __init__(
        self,
        config: SimulationConfig | None = None,
        dtd_root: str | Path | None = None,
        size: int | Sequence[int] = (256, 256),
        device: str | torch.device = "cpu",
        category: str | None = None,
        *,
        textures: torch.Tensor | None = None,
        max_textures: int = 256,
        progress: bool = True,
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.size = as_size(size)
        self.device = select_device(device)
        self.category = category
        self.foreground = self.config.foreground if self.config.foreground is not None else foreground_preset(category)
        self.dtd_root = Path(dtd_root) if dtd_root is not None else None
        self.max_textures = max_textures
        self.progress = progress
        self._textures: torch.Tensor | None = None
        self._texture_files: list[Path] = []
        if textures is not None:
            self._textures = self._check_textures(textures)
        elif self.config.texture_prob > 0:
            self._texture_files = self._discover()

    @classmethod
    def for_category(
        cls,
        category: str,
        dtd_root: str | Path | None = None,
        size: int | Sequence[int] = (256, 256),
        device: str | torch.device = "cpu",
        config: SimulationConfig | None = None,
        **kwargs: Any,
    ) -> "AnomalySimulator":
        """Simulator with the foreground preset of `category` (textures: no foreground mask)."""
        return cls(config=config, dtd_root=dtd_root, size=size, device=device, category=category, **kwargs)

    # ---- textures
    def _discover(self) -> list[Path]:
        if self.dtd_root is None:
            warnings.warn(
                NO_DTD_WARNING + ": texture anomalies are disabled, simulating structural "
                "anomalies only. Pass dtd_root=<folder with images/<category>/*.jpg> or set texture_prob=0.",
                stacklevel=3,
            )
            return []
        files = find_texture_files(self.dtd_root)
        if not files:
            warnings.warn(
                f"no DTD textures found at {self.dtd_root} (expected {self.dtd_root}/images/<category>/*.jpg): "
                "texture anomalies are disabled, simulating structural anomalies only.",
                stacklevel=3,
            )
        return files

    def _check_textures(self, textures: torch.Tensor) -> torch.Tensor:
        if textures.dim() != 4 or textures.shape[1] != 3 or textures.shape[0] < 1:
            raise ValueError(f"textures must be a (N>=1, 3, H, W) tensor, got shape {tuple(textures.shape)}")
        if textures.dtype != torch.uint8:
            textures = (textures.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return textures.to(self.device)

    def load(self) -> "AnomalySimulator":
        """Decode the DTD textures now (otherwise on first use). Returns self."""
        if self._textures is None and self._texture_files:
            self._textures = load_textures(self._texture_files, self.size, self.max_textures, self.device, self.progress)
            self._texture_files = []
            if self._textures is None:
                warnings.warn(
                    f"none of the DTD textures under {self.dtd_root} could be decoded: structural anomalies only",
                    stacklevel=2,
                )
        return self

    @property
    def textures(self) -> torch.Tensor | None:
        """Cached textures, uint8 (N, 3, H, W) on the simulator's device, or None."""
        return self.load()._textures

    @property
    def has_textures(self) -> bool:
        """True when a texture bank is available (decodes pending DTD files first)."""
        return self.textures is not None

    # ---- per-sample choices
    def _sources(self, batch: int, source: str | Sequence[str] | None, generator: torch.Generator | None) -> list[str]:
        if source is None:
            prob = self.config.texture_prob if self.has_textures else 0.0
            u = random_uniform((batch,), generator)
            return ["texture" if float(v) < prob else "structure" for v in u]
        kinds = [source] * batch if isinstance(source, str) else list(source)
        if len(kinds) != batch or any(k not in SOURCES for k in kinds):
            raise ValueError(f"source must be 'texture', 'structure' or a list of {batch} of them, got {source!r}")
        if "texture" in kinds and not self.has_textures:
            where = self.dtd_root if self.dtd_root is not None else "dtd_root=None"
            raise ValueError(f"source='texture' was requested but no DTD textures are available ({where})")
        return kinds

    def _delta(self, batch: int, delta: float | torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        if delta is None:
            lo, hi = self.config.delta_range
            return random_uniform((batch,), generator, self.device, lo, hi)  # δ ~ U[0.15, 1], eq. (1)
        d = torch.as_tensor(delta, dtype=torch.float32).to(self.device).reshape(-1)
        d = d.expand(batch).clone() if d.numel() == 1 else d
        if d.shape != (batch,) or float(d.min()) < 0 or float(d.max()) > 1:
            raise ValueError(f"delta must be a float or a ({batch},) tensor with values in [0, 1], got {delta!r}")
        return d

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"simulate() expects images of shape (B, 3, H, W), got {shape}")
        images = images.to(self.device).contiguous()  # e.g. channels_last input -> plain NCHW
        if images.dtype == torch.uint8:
            return images.float().div_(255)
        images = images.float()
        lo, hi = torch.aminmax(images[..., ::4, ::4])  # a strided look suffices to catch normalised input
        if float(lo) < -1e-3 or float(hi) > 1 + 1e-3:
            raise ValueError(
                f"simulate() expects un-normalised images in [0, 1], got values in [{float(lo):.3f}, {float(hi):.3f}]; "
                "apply ImageNet normalisation after compositing, not before (PITFALLS)"
            )
        return images

    # ---- masks
    def _foreground(self, images: torch.Tensor, foreground: Any) -> torch.Tensor | None:
        """M_I (B, 1, H, W), or None for "no foreground mask" (all ones, not materialised)."""
        if isinstance(foreground, torch.Tensor):
            m = (foreground.to(self.device).float() > 0.5).float()
            if m.dim() == 3:
                m = m.unsqueeze(1)
            if m.shape != (images.shape[0], 1, *images.shape[-2:]):
                raise ValueError(f"foreground mask must have shape {(images.shape[0], 1, *images.shape[-2:])}, got {tuple(m.shape)}")
        else:
            if foreground is None:
                cfg = self.foreground
            elif foreground is False or foreground == "none":
                cfg = None
            elif isinstance(foreground, ForegroundConfig):
                cfg = foreground
            else:
                raise ValueError(f"foreground must be None, False/'none', a ForegroundConfig or a mask tensor, got {foreground!r}")
            if cfg is None:
                return None
            m = foreground_mask(images, cfg)
        # An image whose foreground vanished (odd lighting, wrong preset) is simulated without it.
        empty = m.amax(dim=(1, 2, 3)) == 0
        if bool(empty.any()):
            m = m.clone()
            m[empty] = 1.0
        return m

    def _perlin(self, n: int, h: int, w: int, generator, scale_exp, rows: torch.Tensor | None):
        if isinstance(scale_exp, torch.Tensor) and scale_exp.dim() == 2 and rows is not None:
            scale_exp = scale_exp[rows.cpu()]
        return perlin_noise(
            n, h, w, generator, self.device, self.config.scale_exp_range, scale_exp,
            rotate=self.config.rotate, samples_per_cell=self.config.samples_per_cell, return_params=True,
        )

    def _blob(self, m_i: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A disc centred on a random foreground pixel of each (n, 1, H, W) M_I (fallback mask)."""
        n, _, h, w = m_i.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        weights = m_i.reshape(n, -1).to(gen_device)
        centre = torch.multinomial(weights, 1, generator=generator).view(-1).to(self.device)
        cy, cx = (centre // w).float().view(-1, 1, 1, 1), (centre % w).float().view(-1, 1, 1, 1)
        r = max(1.5, self.config.blob_radius * min(h, w))
        ys = torch.arange(h, device=self.device, dtype=torch.float32).view(1, 1, -1, 1)
        xs = torch.arange(w, device=self.device, dtype=torch.float32).view(1, 1, 1, -1)
        return (((ys - cy) ** 2 + (xs - cx) ** 2) <= r * r).float()

    def _masks(self, m_i, shape, threshold, generator, scale_exp):
        """Step 1 of Fig. 3: P, M_P and M = M_P ⊙ M_I, redrawing empty masks, then the blob fallback.

        m_i None means no foreground restriction (M = M_P; the product is skipped).
        """
        b, h, w = shape
        p, params = self._perlin(b, h, w, generator, scale_exp, None)
        m_p = perlin_mask(p, threshold)
        m = m_p * m_i if m_i is not None else m_p  # M = M_P ⊙ M_I
        resampled = torch.zeros(b, dtype=torch.long)
        fallback = torch.zeros(b, dtype=torch.bool)
        thr_rows = lambda rows: threshold[rows] if isinstance(threshold, torch.Tensor) and threshold.dim() else threshold  # noqa: E731
        empty = torch.nonzero(m.amax(dim=(1, 2, 3)) == 0).view(-1).cpu()
        for _ in range(self.config.max_resample):
            if empty.numel() == 0:
                break
            rows = empty.to(self.device)
            p_new, par = self._perlin(len(empty), h, w, generator, scale_exp, empty)
            p[rows], m_p[rows] = p_new, perlin_mask(p_new, thr_rows(rows))
            if m_i is not None:
                m[rows] = m_p[rows] * m_i[rows]
            params["scale_exp"][empty], params["angle"][empty] = par["scale_exp"], par["angle"]
            resampled[empty] += 1
            empty = empty[(m[rows].amax(dim=(1, 2, 3)) == 0).cpu()]
        if empty.numel():  # still empty: a small blob inside the foreground
            rows = empty.to(self.device)
            fg = m_i[rows] if m_i is not None else torch.ones(len(empty), 1, h, w, device=self.device)
            m_p[rows] = self._blob(fg, generator)
            if m_i is not None:
                m[rows] = m_p[rows] * m_i[rows]
            fallback[empty] = True
        return p, m_p, m, params, resampled, fallback

    # ---- noise images (step 2 of Fig. 3)
    def _draw_noise(self, kinds: list[str], h: int, w: int, generator: torch.Generator | None) -> dict[str, Any]:
        """All random draws for I_n, in a fixed order (texture picks and mirror/turns, then the
        structural parameters), so the dense and the sparse compositing give the same result."""
        tex_rows = [i for i, k in enumerate(kinds) if k == "texture"]
        str_rows = [i for i, k in enumerate(kinds) if k == "structure"]
        plan: dict[str, Any] = {"tex_rows": torch.tensor(tex_rows, dtype=torch.long),
                                "str_rows": torch.tensor(str_rows, dtype=torch.long)}
        if tex_rows:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            n_bank = self.textures.shape[0]
            plan["tex_idx"] = torch.randint(n_bank, (len(tex_rows),), generator=generator, device=gen_device).cpu()
            plan["tex_flips"] = _draw_mirror_rotate(len(tex_rows), h, w, generator, self.config.mirror_prob, self.config.rot90)
        if str_rows:
            plan["structure"] = draw_structure_params(len(str_rows), h, w, self.config, generator)
        return plan

    def _noise_dense(self, images: torch.Tensor, plan: dict[str, Any]) -> torch.Tensor:
        """The full noise image I_n (B, 3, H, W) in [0, 1]."""
        b, _, h, w = images.shape
        tex_rows, str_rows = plan["tex_rows"].to(self.device), plan["str_rows"].to(self.device)
        tex = st = None
        if tex_rows.numel():
            x = self.textures[plan["tex_idx"].to(self.device)]  # uint8 (n, 3, Ht, Wt)
            if x.shape[-2:] != (h, w):  # images of another size than the cache: resize on the fly
                x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255).to(torch.uint8)
            tex = gather_pixels(x, mirror_rotate_index(*plan["tex_flips"], h, w, self.device)).float().div_(255)
        if str_rows.numel():
            st = render_structure(images if str_rows.numel() == b else images[str_rows], plan["structure"], self.config.grid)
        if st is None or tex is None:
            return tex if st is None else st
        i_n = torch.empty_like(images)
        i_n.index_copy_(0, tex_rows, tex)
        i_n.index_copy_(0, str_rows, st)
        return i_n

    def _composite_sparse(
        self, images: torch.Tensor, m: torch.Tensor, d: torch.Tensor, plan: dict[str, Any], inplace: bool = False
    ) -> torch.Tensor | None:
        """eq. (1)-(2) evaluated only at the K pixels inside M (I_A = I elsewhere).

        The noise image is never materialised: each masked pixel fetches its source pixel (texture
        or mirrored/turned/shuffled input) through the same index arithmetic as the dense path and
        applies the colour matrix there. Returns None when M is too large for this to pay off.
        """
        b, _, h, w = images.shape
        hw = h * w
        dev = self.device
        tex_rows, str_rows = plan["tex_rows"].to(dev), plan["str_rows"].to(dev)
        order = torch.cat([tex_rows, str_rows])  # texture rows first: each group is a contiguous run
        n_tex = tex_rows.numel()
        m_rows = m.view(b, hw) > 0.5
        if n_tex and n_tex < b:
            m_rows = m_rows[order]
        nz = m_rows.nonzero()  # (K, 2): position in `order`, flat pixel; sorted by the first column
        if nz.shape[0] > self.config.sparse_max_fraction * b * hw:
            return None
        slot, pix = nz[:, 0], nz[:, 1]
        rows = order[slot] if n_tex and n_tex < b else slot
        k_tex = int(torch.searchsorted(slot, torch.tensor([n_tex], device=dev))[0]) if 0 < n_tex < b else (nz.shape[0] if n_tex else 0)
        chan = torch.arange(3, device=dev) * hw
        dst = ((rows * (3 * hw) + pix).unsqueeze(1) + chan).view(-1)  # flat (K*3,) offsets into I
        flat = images.reshape(-1)
        vals = torch.empty(nz.shape[0], 3, device=dev, dtype=images.dtype)  # I_n at the masked pixels
        if k_tex:
            r, i, j = slot[:k_tex], pix[:k_tex] // w, pix[:k_tex] % w
            p, q, c = _mirror_rotate_coef(*plan["tex_flips"], h, w, dev)
            src = plan["tex_idx"].to(dev)[r] * (3 * hw) + p[r] * i + q[r] * j + c[r]
            bank = self.textures.reshape(-1)
            vals[:k_tex] = bank.index_select(0, (src.unsqueeze(1) + chan).view(-1)).view(-1, 3).to(images.dtype).div_(255)
        if k_tex < nz.shape[0]:
            r, px = slot[k_tex:] - n_tex, pix[k_tex:]
            params = plan["structure"]
            src = _structure_index_at(params, self.config.grid, h, w, r, px // w, px % w)
            src = rows[k_tex:] * (3 * hw) + src
            raw = flat.index_select(0, (src.unsqueeze(1) + chan).view(-1)).view(-1, 3)
            mat = params.colour.to(dev, images.dtype)[r]  # (K_s, 3, 3)
            vals[k_tex:] = torch.einsum("kij,kj->ki", mat, raw).clamp_(0, 1)
        cur = flat.index_select(0, dst).view(-1, 3)
        new = torch.lerp(cur, vals, d[rows].unsqueeze(1))  # eq. (1)-(2) inside M
        out = images if inplace else images.clone()
        out.view(-1).index_copy_(0, dst, new.view(-1))
        return out

    # ---- main entry point
    @torch.no_grad()
    def simulate(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        threshold: float | torch.Tensor | None = None,
        delta: float | torch.Tensor | None = None,
        source: str | Sequence[str] | None = None,
        scale_exp: int | tuple[int, int] | torch.Tensor | None = None,
        foreground: ForegroundConfig | torch.Tensor | bool | str | None = None,
        return_intermediates: bool = False,
    ) -> SimulationResult:
        """Simulate one anomaly per image (paper §3.1, Fig. 3, eq. (1)-(2)).

        Args:
            images: (B, 3, H, W) float in [0, 1] (or uint8), not normalised.
            generator: torch.Generator; same seed -> same result.
            threshold: Perlin threshold T (float or (B,)); default config.threshold.
            delta: δ, float or (B,) tensor; default δ ~ U[config.delta_range].
            source: "texture", "structure" or a per-sample list; default random (texture_prob).
            scale_exp: fix the Perlin period exponents (int, (exp_y, exp_x) or (B, 2)).
            foreground: override M_I: a ForegroundConfig, False/"none" (no mask) or a (B, 1, H, W) mask.
            return_intermediates: also return P, M_P, M_I, M, I_n, I_n_prime, I_A and parameters.
        """
        given = images
        images = self._check_images(images)
        # Composite in place only into a tensor this call made (a dtype/device/layout conversion).
        # Ownership is decided by storage identity, never by comparing devices: "cuda" != "cuda:0"
        # although `.to("cuda")` returns the caller's own storage.
        owned = not _shares_storage(images, given)
        b, _, h, w = images.shape
        thr = self.config.threshold if threshold is None else threshold
        if isinstance(thr, torch.Tensor):
            thr = thr.to(self.device, torch.float32)
        kinds = self._sources(b, source, generator)
        d = self._delta(b, delta, generator)
        m_i = self._foreground(images, foreground)
        p, m_p, m, params, resampled, fallback = self._masks(m_i, (b, h, w), thr, generator, scale_exp)
        plan = self._draw_noise(kinds, h, w, generator)
        sparse_ok = (
            not return_intermediates and self.config.sparse_max_fraction > 0 and self.config.max_angle == 0
            and (plan["tex_rows"].numel() == 0 or tuple(self.textures.shape[-2:]) == (h, w))
        )
        i_a = self._composite_sparse(images, m, d, plan, inplace=owned) if sparse_ok else None
        if i_a is not None:
            return SimulationResult(images=i_a, masks=m, delta=d, source=kinds)
        i_n = self._noise_dense(images, plan)
        # eq. (1)-(2) fused: I_A = I + δM(I_n − I), exactly I wherever M = 0.
        i_a = torch.lerp(images, i_n, d.view(b, 1, 1, 1) * m)
        inter = None
        if return_intermediates:
            if m_i is None:  # no foreground restriction: M_I is all ones and M a copy of M_P
                m_i, m = torch.ones_like(m_p), m_p.clone()
            dd = d.view(b, 1, 1, 1)
            inter = {
                "P": p, "M_P": m_p, "M_I": m_i, "M": m, "I_n": i_n,
                "I_n_prime": dd * (m * i_n) + (1 - dd) * (m * images),  # eq. (1)
                "I_A": i_a,  # eq. (2): (1 − M) ⊙ I + I'_n
                "I": images, "delta": d, "source": kinds, "threshold": thr,
                "scale_exp": params["scale_exp"], "angle": params["angle"],
                "resampled": resampled, "fallback": fallback,
            }
        return SimulationResult(images=i_a, masks=m, delta=d, source=kinds, intermediates=inter)

    __call__ = simulate

    def __repr__(self) -> str:
        n = self._textures.shape[0] if self._textures is not None else len(self._texture_files)
        return (f"AnomalySimulator(category={self.category!r}, size={self.size}, device={self.device}, "
                f"textures={n}, foreground={self.foreground})")


def _shares_storage(a: torch.Tensor, b: Any) -> bool:
    """Whether tensor ``a`` lives in the same memory as ``b`` (so writing into ``a`` changes ``b``)."""
    if not isinstance(b, torch.Tensor) or a.device != b.device:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# --------------------------------------------------------------------------- CLI


def default_dtd_root(explicit: str | Path | None = None) -> Path | None:
    """The DTD root a run uses: ``--dtd`` > ``$MEMSEG_DTD`` > the project defaults (see :func:`memseg.paths.locate_dtd`)."""
    from memseg.paths import dtd_root

    return dtd_root(explicit)
