"""Visualisation helpers: heat maps, overlays and mask outlines as uint8 RGB arrays, and the one place that
resizes images, anomaly maps and masks for display (:func:`resize_rgb`, :func:`resize_map`, :func:`resize_mask`).

Dependency-light: numpy + PIL (+ scipy for the outline); matplotlib is used only for colormaps
other than the built-in ``"jet"`` and never touches pyplot state, so these helpers are safe in
Voila / worker threads.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "colormap_lut",
    "heatmap",
    "mask_outline",
    "normalise_map",
    "overlay",
    "resize_map",
    "resize_mask",
    "resize_rgb",
    "to_uint8",
]

# matplotlib's "jet" segment data (x, value) per channel; reproduced here so the default
# colormap needs no matplotlib (it is only an optional "notebooks" dependency).
_JET = {
    "r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


@lru_cache(maxsize=16)
def colormap_lut(name: str = "jet") -> np.ndarray:
    """256-entry RGB lookup table, uint8 array (256, 3), read-only.

    ``"jet"`` is computed here (same segment data as matplotlib); any other name is taken from
    ``matplotlib.colormaps`` (e.g. ``"inferno"``, ``"viridis"``, ``"turbo"``).
    """
    x = np.linspace(0.0, 1.0, 256)
    if name == "jet":
        rgb = np.stack([np.interp(x, *zip(*_JET[c])) for c in "rgb"], axis=1)
    else:
        try:
            import matplotlib
        except ImportError as e:  # pragma: no cover - matplotlib ships with the notebooks extra
            raise ImportError(f"colormap {name!r} needs matplotlib (pip install matplotlib); 'jet' works "
                              "without it") from e
        try:
            cmap = matplotlib.colormaps[name]
        except KeyError as e:
            raise ValueError(f"unknown colormap {name!r}; e.g. 'jet', 'inferno', 'viridis', 'turbo'") from e
        rgb = cmap.resampled(256)(np.arange(256))[:, :3]  # integer indices = the LUT entries themselves
    lut = np.round(rgb * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def to_uint8(x: Any) -> np.ndarray:
    """Image-like tensor/array -> uint8 numpy array, channels last.

    Accepts torch tensors or numpy arrays shaped (H, W), (H, W, 3|4|1), (3|1, H, W). Floats are taken
    as values in [0, 1] (clipped, scaled by 255, rounded); bool -> {0, 255}; uint8 is kept; other
    integer types must already lie in [0, 255]. (1, H, W) / (H, W, 1) become (H, W).
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"expected one image shaped (H, W), (H, W, 3) or (3, H, W); got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError("image contains NaN/inf values; expected floats in [0, 1]")
        return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"integer image of dtype {a.dtype} has values in [{a.min()}, {a.max()}]; "
                             "expected [0, 255]")
        return a.astype(np.uint8)
    raise ValueError(f"cannot convert dtype {a.dtype} to uint8")


def _as_map(amap: Any) -> np.ndarray:
    """Anomaly map -> float32 (H, W) clipped to [0, 1]; accepts (H, W), (1, H, W), (1, 1, H, W)."""
    if hasattr(amap, "detach"):
        amap = amap.detach().cpu().float().numpy()
    a = np.asarray(amap, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected an anomaly map shaped (H, W); got shape {np.shape(amap)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("anomaly map contains NaN/inf values; expected floats in [0, 1]")
    return np.clip(a, 0.0, 1.0)


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, 3) image to ``size_hw`` = (h, w); the same array when already that size."""
    if image.shape[:2] == tuple(size_hw):
        return image
    return np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR))


def resize_map(amap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (H, W) anomaly map to ``size_hw`` = (h, w) -> float32 (h, w), clipped to [0, 1].

    Pillow's bilinear filter: the same values as ``F.interpolate(..., align_corners=False)`` when enlarging,
    antialiased when shrinking.

    Examples:
        >>> resize_map(np.array([[0.0, 1.0]], np.float32), (1, 4)).round(2).tolist()
        [[0.0, 0.25, 0.75, 1.0]]
    """
    a = np.asarray(amap, dtype=np.float32)
    if a.shape == tuple(size_hw):
        return a
    img = Image.fromarray(np.ascontiguousarray(a))  # float32 (H, W) -> PIL mode "F"
    out = np.asarray(img.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary (H, W) mask (``> 0`` is inside) to ``size_hw`` = (h, w) -> bool (h, w)."""
    m = np.asarray(mask) > 0
    if m.shape == tuple(size_hw):
        return m
    resized = Image.fromarray(m.astype(np.uint8) * 255).resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def normalise_map(amap: Any, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Anomaly map -> float32 (H, W) in [0, 1]: ``(amap - vmin) / (vmax - vmin)``, clipped.

    The colour scale of :func:`heatmap` and :func:`overlay`: a model's scores may fill only part of
    [0, 1] (e.g. 0.04-0.4), and scaling to that range lets normal regions be blue and defects red.
    """
    if not vmax > vmin:
        raise ValueError(f"colour scale needs vmin < vmax, got vmin={vmin}, vmax={vmax}")
    a = _as_map(amap)
    if (vmin, vmax) == (0.0, 1.0):
        return a
    return np.clip((a - np.float32(vmin)) / np.float32(vmax - vmin), 0.0, 1.0)


def heatmap(amap: Any, cmap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Colour an anomaly map (H, W) -> uint8 RGB (H, W, 3).

    ``vmin`` (and below) maps to the colormap's first colour (dark blue for jet), ``vmax`` (and
    above) to its last (dark red); the default scale is [0, 1].
    """
    idx = np.round(normalise_map(amap, vmin, vmax) * 255.0).astype(np.uint8)
    return colormap_lut(cmap)[idx]


def overlay(
    image: Any,
    amap: Any,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float = 0.0,
    vmax: float = 1.0,
    weighted: bool = False,
) -> np.ndarray:
    """Blend the heat map of ``amap`` over ``image``: ``(1 - a) * image + a * heatmap``.

    ``a`` is ``alpha`` everywhere, or with ``weighted=True`` ``alpha`` times the normalised map
    (see :func:`normalise_map`), so pixels at ``vmin`` or below keep the image untouched and only
    high scores are tinted. ``image``: uint8 (H, W, 3) (or anything :func:`to_uint8` accepts;
    greyscale is repeated to RGB). ``amap``: (h, w); bilinearly resized to (H, W) when its size
    differs. Returns uint8 (H, W, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _rgb(image)
    norm = normalise_map(resize_map(_as_map(amap), img.shape[:2]), vmin, vmax)
    heat = colormap_lut(cmap)[np.round(norm * 255.0).astype(np.uint8)]
    a = (alpha * norm)[..., None] if weighted else np.float32(alpha)
    out = (1.0 - a) * img.astype(np.float32) + a * heat.astype(np.float32)
    return np.round(out).astype(np.uint8)


def mask_outline(image: Any, mask: Any, color: tuple[int, int, int] = (255, 0, 0), thickness: int = 1) -> np.ndarray:
    """Draw the boundary of a binary mask (``> 0``) on a copy of ``image`` -> uint8 (H, W, 3).

    The boundary is the mask minus its erosion (``thickness`` pixels wide, inside the mask); a mask of
    another size is resized with nearest neighbour first.
    """
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    if len(color) != 3 or any(not 0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color must be three values in [0, 255], got {color!r}")
    img = _rgb(image).copy()
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"expected a mask shaped (H, W); got shape {m.shape}")
    m = resize_mask(m, img.shape[:2])
    inner = ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), iterations=thickness, border_value=0)
    img[m & ~inner] = np.asarray(color, dtype=np.uint8)
    return img


def _rgb(image: Any) -> np.ndarray:
    img = to_uint8(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[-1] == 4:
        img = img[..., :3]
    return img
