"""Noise images as pixel look-ups (paper §3.1, step 2 of Fig. 3), fast enough to simulate on the fly.

A noise image I_n is never warped pass by pass. Each of its pixels (i, j) reads one pixel of a
source image, and mirrors, quarter turns and the tile shuffle are integer arithmetic on that
pixel's flat index. A :class:`PixelSource` holds such an index map plus an optional per-sample
colour matrix, and evaluates I_n either on the whole H×W grid or only at chosen pixels (those
inside the anomaly mask M, a few percent of the image).

Pixel coordinates broadcast: ``(s, i, j)`` is either the full grid from :func:`pixel_grid`,
shapes (n, 1, 1), (1, H, 1), (1, 1, W), or three (K,) lists (sample, row, column).

Examples:
    >>> x = torch.arange(12.0).view(1, 1, 3, 4)
    >>> flip = mirror_rotate_index(torch.tensor([True]), torch.tensor([False]), torch.tensor([0]), 3, 4)
    >>> torch.equal(gather_pixels(x, flip), x.flip(-1))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from memseg.simulation.sampling import random_uniform

__all__ = [
    "CoordMap", "IndexMap", "PixelSource", "draw_mirror_rotate", "gather_pixels", "identity_map", "mirror_rotate_index",
    "mirror_rotate_map", "pixel_grid", "random_mirror_rotate",
]

IndexMap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(sample s, row i, column j) -> flat source pixel index (row * W + col), broadcast over the inputs."""
CoordMap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(sample s, row i, column j) -> (source row, source column), broadcast over the inputs."""


def pixel_grid(
    n: int, height: int, width: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, i, j) of every pixel of n images, broadcastable: (n, 1, 1), (1, H, 1), (1, 1, W)."""
    s = torch.arange(n, device=device).view(-1, 1, 1)
    i = torch.arange(height, device=device).view(1, -1, 1)
    j = torch.arange(width, device=device).view(1, 1, -1)
    return s, i, j


def identity_map(width: int) -> IndexMap:
    """Each pixel reads itself."""
    return lambda s, i, j: i * width + j


# --------------------------------------------------------------------------- mirrors and quarter turns


def draw_mirror_rotate(
    batch: int, height: int, width: int, generator: torch.Generator | None, mirror_prob: float, rot90: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (hflip bool, vflip bool, quarter turns long), all (B,) on the CPU.

    Non-square images only get 0 or 2 quarter turns, so the shape is kept.
    """
    u = random_uniform((batch, 3), generator)
    hflip, vflip = u[:, 0] < mirror_prob, u[:, 1] < mirror_prob
    if not rot90:
        quarter = torch.zeros(batch, dtype=torch.long)
    elif height == width:
        quarter = (u[:, 2] * 4).long().clamp(max=3)
    else:  # keep the shape: 0° or 180° only
        quarter = 2 * (u[:, 2] * 2).long().clamp(max=1)
    return hflip, vflip, quarter


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


def mirror_rotate_map(
    hflip: torch.Tensor, vflip: torch.Tensor, quarter: torch.Tensor, height: int, width: int,
    device: str | torch.device = "cpu", then: CoordMap | None = None,
) -> IndexMap:
    """Index map of `rot90(vflip(hflip(x)), quarter)` per sample, optionally followed by `then`.

    Mirrors and quarter turns are integer affine maps of the pixel coordinates, so the source of
    (i, j) is P*i + Q*j + C. `then(s, i, j) -> (row, col)` is a second rearrangement applied to the
    mirrored/turned image (e.g. the tile shuffle): output (i, j) reads its pixel (row, col).
    """
    p, q, c = _mirror_rotate_coef(hflip, vflip, quarter, height, width, device)

    def index(s: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        if then is not None:
            i, j = then(s, i, j)
        return p[s] * i + q[s] * j + c[s]

    return index


def mirror_rotate_index(
    hflip: torch.Tensor, vflip: torch.Tensor, quarter: torch.Tensor, height: int, width: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Flat source index (B, H, W) of `rot90(vflip(hflip(x)), quarter)` for each sample.

    `gather_pixels(x, index)` applies the transform in one gather, with no per-sample loop.
    """
    index = mirror_rotate_map(hflip, vflip, quarter, height, width, device)
    return index(*pixel_grid(len(hflip), height, width, device))


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
    hflip, vflip, quarter = draw_mirror_rotate(b, h, w, generator, mirror_prob, rot90)
    return gather_pixels(images, mirror_rotate_index(hflip, vflip, quarter, h, w, images.device))


# --------------------------------------------------------------------------- the noise image as look-ups


@dataclass
class PixelSource:
    """Noise images of n samples: I_n[s, :, i, j] = colour[s] @ images[rows[s], :, index(s, i, j)].

    images: (N, 3, H, W), float in [0, 1] or uint8 (read as value / 255); the same H×W as I_n.
    rows: (n,) long, the image each sample reads. index: :data:`IndexMap`.
    colour: (n, 3, 3) per-sample colour matrices (result clamped to [0, 1]), or None.
    """

    images: torch.Tensor
    rows: torch.Tensor
    index: IndexMap
    colour: torch.Tensor | None = None

    def at(self, s: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """I_n at pixels (s, i, j) (broadcast shapes ...) -> float (..., 3) in [0, 1]."""
        _, _, h, w = self.images.shape
        channel = torch.arange(3, device=self.images.device) * (h * w)
        first = self.rows[s] * (3 * h * w) + self.index(s, i, j)  # flat offset of channel 0, (...)
        offsets = first.unsqueeze(-1) + channel  # (..., 3)
        values = self.images.reshape(-1).index_select(0, offsets.reshape(-1)).view(offsets.shape)
        values = values.float().div_(255) if values.dtype == torch.uint8 else values.float()
        if self.colour is None:
            return values
        colour = self.colour.to(values.device, values.dtype)[s]  # (..., 3, 3)
        return torch.einsum("...ij,...j->...i", colour, values).clamp_(0, 1)

    def render(self) -> torch.Tensor:
        """The whole noise image I_n, float (n, 3, H, W) in [0, 1]."""
        _, _, h, w = self.images.shape
        values = self.at(*pixel_grid(len(self.rows), h, w, self.images.device))  # (n, H, W, 3)
        return values.permute(0, 3, 1, 2).contiguous()
