"""The structure source of anomaly simulation (paper §3.1: structural anomalies).

The noise image I_n of a structural anomaly is the input image itself after a random mirror,
rotation, brightness, saturation and hue change, cut into a 4×8 grid of tiles that are shuffled.
Colour is one per-sample 3×3 matrix; mirror, quarter turns and the tile shuffle compose into one
pixel index (:func:`structure_index`), so I_n is one gather, or a look-up at the masked pixels only
(:func:`structure_pixels`). An optional small extra rotation (``max_angle``) resamples the image and
is the only step that is not index arithmetic.

Examples:
    >>> x = torch.rand(2, 3, 32, 64)
    >>> shuffled, perm = shuffle_tiles(x, (4, 8), torch.Generator().manual_seed(0))
    >>> shuffled.shape, perm.shape
    (torch.Size([2, 3, 32, 64]), torch.Size([2, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from memseg.simulation.pixels import (
    CoordMap,
    PixelSource,
    draw_mirror_rotate,
    identity_map,
    mirror_rotate_map,
    pixel_grid,
)
from memseg.simulation.sampling import random_permutation, random_uniform

if TYPE_CHECKING:
    from memseg.simulation.simulation_config import SimulationConfig

__all__ = [
    "StructureParams", "colour_jitter_matrix", "draw_structure_params", "render_structure", "shuffle_tiles",
    "structure_index", "structure_pixels", "structure_source", "tile_shuffle_map",
]


def colour_jitter_matrix(
    brightness: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Per-sample 3×3 RGB matrices (B, 3, 3) for brightness × saturation × hue.

    Saturation scales and hue (in turns) rotates the chroma plane (I, Q) of YIQ, keeping luma Y:
    the same saturation as torchvision's blend with the grey image, and a linear approximation
    of an HSV hue shift, so the whole jitter is one batched matrix product.
    """
    rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    ang = 2 * math.pi * hue.float().cpu()
    s = saturation.float().cpu()
    b = brightness.float().cpu()
    chroma = torch.zeros(len(s), 3, 3)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = s * torch.cos(ang), -s * torch.sin(ang)
    chroma[:, 2, 1], chroma[:, 2, 2] = s * torch.sin(ang), s * torch.cos(ang)
    return b.view(-1, 1, 1) * (yiq2rgb @ chroma @ rgb2yiq)


# --------------------------------------------------------------------------- tile shuffle


def _tile_size(height: int, width: int, grid: tuple[int, int]) -> tuple[int, int]:
    th, tw = height // grid[0], width // grid[1]
    if th == 0 or tw == 0:
        raise ValueError(f"image of size {height}x{width} is smaller than the tile grid {grid[0]}x{grid[1]}")
    return th, tw


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
    th, tw = _tile_size(h, w, grid)
    n = gh * gw
    if perm is None:
        perm = random_permutation(b, n, generator)
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


def tile_shuffle_map(perm: torch.Tensor, height: int, width: int, grid: tuple[int, int] = (4, 8)) -> CoordMap:
    """Coordinates of :func:`shuffle_tiles`: output (i, j) of sample s reads (row, col) of its input.

    Output tile t = (i // th, j // tw) comes from tile perm[s, t]; the offset inside the tile is
    kept. Pixels of the remainder strip (H or W not divisible by the grid) read themselves.
    """
    gh, gw = grid
    th, tw = _tile_size(height, width, grid)

    def coords(s: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ti, tj = i // th, j // tw
        inside = (ti < gh) & (tj < gw)
        source_tile = perm[s, ti.clamp(max=gh - 1) * gw + tj.clamp(max=gw - 1)]
        row = torch.where(inside, (source_tile // gw) * th + i % th, i)
        col = torch.where(inside, (source_tile % gw) * tw + j % tw, j)
        return row, col

    return coords


def structure_index(
    hflip: torch.Tensor, vflip: torch.Tensor, quarter: torch.Tensor, perm: torch.Tensor,
    height: int, width: int, grid: tuple[int, int] = (4, 8), device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Flat source index (B, H, W) of `shuffle_tiles(rot90(vflip(hflip(x))), grid, perm)`.

    `gather_pixels(x, index)` applies mirror, quarter turns and tile shuffle in one gather.
    """
    shuffle = tile_shuffle_map(perm.to(device, torch.long), height, width, grid)
    index = mirror_rotate_map(hflip, vflip, quarter, height, width, device, then=shuffle)
    return index(*pixel_grid(len(perm), height, width, device))


# --------------------------------------------------------------------------- random draws and I_n


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

    def in_range(bounds: tuple[float, float], t: torch.Tensor) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * t

    colour = colour_jitter_matrix(in_range(config.brightness, u[:, 0]), in_range(config.saturation, u[:, 1]),
                                  in_range(config.hue, u[:, 2]))
    flips = draw_mirror_rotate(n, height, width, generator, config.mirror_prob, config.rot90)
    angle = (random_uniform((n,), generator, "cpu", -config.max_angle, config.max_angle) if config.max_angle > 0
             else None)
    perm = random_permutation(n, config.grid[0] * config.grid[1], generator)
    return StructureParams(colour, flips, perm, angle)


def _small_rotation(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle in degrees (bilinear, reflection padding)."""
    b = images.shape[0]
    ang = degrees.float().cpu() * math.pi / 180
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang), -torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang), torch.cos(ang)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def structure_pixels(
    images: torch.Tensor, rows: torch.Tensor, params: StructureParams, grid: tuple[int, int] = (4, 8)
) -> PixelSource:
    """Structural noise images I_n of samples `rows` of `images` (B, 3, H, W), as pixel look-ups.

    Colour jitter, then mirror/quarter turn, then the tile shuffle. With a small extra angle the
    rotation (a resampling) sits between turn and shuffle, so I_n is rendered in full first.
    """
    _, _, h, w = images.shape
    dev = images.device
    rows = rows.to(dev)
    if params.angle is None:
        shuffle = tile_shuffle_map(params.perm.to(dev, torch.long), h, w, grid)
        return PixelSource(images, rows, mirror_rotate_map(*params.flips, h, w, dev, then=shuffle), params.colour)
    turned = PixelSource(images, rows, mirror_rotate_map(*params.flips, h, w, dev), params.colour).render()
    shuffled = shuffle_tiles(_small_rotation(turned, params.angle), grid, perm=params.perm)[0]
    return PixelSource(shuffled, torch.arange(len(rows), device=dev), identity_map(w))


def render_structure(images: torch.Tensor, params: StructureParams, grid: tuple[int, int] = (4, 8)) -> torch.Tensor:
    """Structural noise image I_n (n, 3, H, W) in [0, 1] for images (n, 3, H, W) and drawn `params`."""
    return structure_pixels(images, torch.arange(len(images)), params, grid).render()


def structure_source(
    images: torch.Tensor, config: SimulationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Structural noise image I_n (paper §3.1): random mirror, rotation, brightness, saturation and
    hue, then the grid shuffle. images (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]."""
    b, _, h, w = images.shape
    return render_structure(images, draw_structure_params(b, h, w, config, generator), config.grid)

