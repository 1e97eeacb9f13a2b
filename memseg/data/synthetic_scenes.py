"""The synthetic categories' scenes and defects, drawn with numpy and Pillow (see :mod:`memseg.data.synthetic`).

:func:`render_normal` draws a normal image of a category (and its foreground); :func:`render_defect`
draws one with a defect and returns the clean image and the exact mask (the pixels that changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from memseg.config import SizeLike, as_size

CATEGORIES: tuple[str, ...] = ("weave", "washer", "toys")
KINDS: dict[str, str] = {"weave": "texture", "washer": "object", "toys": "toy"}
DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("color", "hole", "scratch", "stain"),
    "washer": ("color", "extra_part", "hole", "missing_part", "scratch", "stain"),
    "toys": ("circle", "heart", "lightning", "rectangle", "star", "triangle"),
}
_MAX_TRIES = 25


def check_categories(categories: Sequence[str]) -> None:
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"available: {', '.join(CATEGORIES)}")


# ---------------------------------------------------------------------------------------------
# small helpers


def scene_size(size: SizeLike) -> tuple[int, int]:
    return as_size(size, "synthetic image size", min_side=32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random (cells+1)^2 grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)


def _draw_polygon(h: int, w: int, points: np.ndarray) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    return np.asarray(canvas) > 0


def _draw_line(h: int, w: int, points: np.ndarray, width: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in points.tolist()], fill=255, width=int(width), joint="curve")
    return np.asarray(canvas) > 0


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, rough: float = 0.25, n: int = 28) -> np.ndarray:
    """An irregular closed outline (n, 2) in (x, y): a circle whose radius wobbles smoothly."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    wobble = np.zeros_like(t)
    for k in (2, 3, 5):
        wobble += rng.normal(0.0, rough / k**0.5) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = radius * np.clip(1.0 + wobble, 0.45, 1.6)
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def _polyline(rng: np.random.Generator, x0: float, y0: float, length: float, segments: int = 4) -> np.ndarray:
    """A gently bending open polyline (segments + 1, 2) starting at (x0, y0)."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    pts = [(x0, y0)]
    step = length / segments
    for _ in range(segments):
        angle += rng.normal(0.0, 0.25)
        x, y = pts[-1]
        pts.append((x + step * math.cos(angle), y + step * math.sin(angle)))
    return np.asarray(pts, dtype=np.float64)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# normal images


@dataclass
class _Scene:
    """A rendered normal image plus what defect renderers need (float32 arrays, 0..255)."""

    image: np.ndarray  # (H, W, 3) float32
    fg: np.ndarray  # (H, W) bool, foreground (all True for textures)
    under: np.ndarray  # (H, W, 3) what shows through a hole: backing (weave) or background (washer)
    material: np.ndarray | None = None  # (H, W, 3) metal shading extended everywhere (washer)
    geometry: dict | None = None


def _weave_scene(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """Plain weave: warp and weft threads alternate over/under on a slightly rotated grid."""
    s = min(h, w)
    yy, xx = _grid(h, w)
    period = max(4.0, s * rng.uniform(0.034, 0.042))  # thread pitch in px
    ang = math.radians(float(np.clip(rng.normal(0.0, 1.5), -4.0, 4.0)))  # slight rotation
    c, sn = math.cos(ang), math.sin(ang)
    u = (xx * c + yy * sn) / period + rng.uniform(0.0, 2.0)  # thread phase
    v = (-xx * sn + yy * c) / period + rng.uniform(0.0, 2.0)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    pu, pv = np.sin(np.pi * fu), np.sin(np.pi * fv)
    warp_on_top = (iu + iv) % 2 == 0
    warp = pu**0.6 * (0.7 + 0.3 * pv)  # cross-section x curvature along the thread
    weft = pv**0.6 * (0.7 + 0.3 * pu)
    shade = np.where(warp_on_top, warp, weft)

    # per-thread brightness: each warp/weft thread is a slightly different yarn
    table = rng.normal(1.0, 0.035, size=64).astype(np.float32)
    thread = np.where(warp_on_top, table[iu.astype(np.int64) % 64], table[(iv.astype(np.int64) + 32) % 64])

    base = np.array([178.0, 158.0, 122.0]) * rng.uniform(0.93, 1.07) + rng.normal(0.0, 2.5, 3)  # small intra-class variance
    weft_col = base * np.array([0.93, 0.95, 0.99])
    colour = np.where(warp_on_top[..., None], base.astype(np.float32), weft_col.astype(np.float32))
    light = 1.0 + 0.05 * _smooth_noise(rng, h, w, 3)
    img = colour * ((0.3 + 0.7 * shade) * thread * light)[..., None]
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)

    backing = np.array([30.0, 26.0, 22.0], np.float32) * rng.uniform(0.8, 1.2)
    under = backing + rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return _Scene(np.clip(img, 0, 255).astype(np.float32), np.ones((h, w), bool), under.astype(np.float32),
                  geometry={"period": period})


def _washer_scene(rng: np.random.Generator, h: int, w: int) -> _Scene:
    """A machined metal washer centred (± a few px) on a plain dark background."""
    s = min(h, w)
    yy, xx = _grid(h, w)
    cx = (w - 1) / 2 + rng.uniform(-0.02, 0.02) * s
    cy = (h - 1) / 2 + rng.uniform(-0.02, 0.02) * s
    outer = s * rng.uniform(0.32, 0.36)
    inner = outer * rng.uniform(0.42, 0.48)
    theta = rng.uniform(0.0, 2.0 * np.pi)  # rotation of the part (groove mark, streaks)
    light = -0.75 * np.pi + rng.normal(0.0, 0.25)  # light direction
    gain = rng.uniform(0.9, 1.1)
    dx, dy = xx - cx, yy - cy
    rho = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)

    # plain dark background with slight vignetting
    bg = rng.uniform(18.0, 30.0) * (1.0 - 0.25 * (rho / s) ** 2)
    bg3 = bg[..., None] * np.array([1.0, 1.0, 1.05], np.float32)

    # metal shading, defined everywhere so that extra material (burrs) can be drawn outside
    metal = 165.0 * gain * (1.0 + 0.15 * np.cos(phi - light) * np.clip(rho / outer, 0.0, 1.3))
    metal += 5.0 * np.sin(2.0 * np.pi * rho / (s * 0.011) + rng.uniform(0, 2 * np.pi))  # machining rings
    streak = np.zeros_like(phi)
    for k in (7, 13, 23):  # brushed streaks that turn with the part
        streak += np.cos(k * (phi - theta) + rng.uniform(0, 2 * np.pi)) / k**0.5
    metal += 4.0 * streak
    band = max(1.5, 0.12 * (outer - inner))
    outer_edge = np.clip(1.0 - (outer - rho) / band, 0.0, 1.0)  # bevels catch or lose the light
    inner_edge = np.clip(1.0 - (rho - inner) / band, 0.0, 1.0)
    metal *= 1.0 + 0.35 * np.cos(phi - light) * (outer_edge - inner_edge)
    mid = (outer + inner) / 2
    dphi = np.angle(np.exp(1j * (phi - theta)))
    groove = (np.abs(dphi) < 0.26) & (np.abs(rho - mid) < max(1.0, s * 0.006))  # stamped arc
    metal = np.where(groove, metal * 0.72, metal)
    metal3 = metal[..., None] * np.array([1.0, 0.98, 0.94], np.float32)

    coverage = np.clip(outer - rho + 0.5, 0.0, 1.0) * np.clip(rho - inner + 0.5, 0.0, 1.0)  # antialiased ring
    noise = rng.normal(0.0, 2.5, size=(h, w, 3)).astype(np.float32)
    img = bg3 * (1.0 - coverage[..., None]) + metal3 * coverage[..., None] + noise
    under = bg3 + noise
    material = metal3 + noise
    geometry = {"cx": cx, "cy": cy, "outer": outer, "inner": inner, "theta": theta, "rho": rho,
                "phi": phi, "coverage": coverage}
    return _Scene(np.clip(img, 0, 255).astype(np.float32), coverage > 0.5, under.astype(np.float32),
                  material.astype(np.float32), geometry)


_SCENES: dict[str, Callable[[np.random.Generator, int, int], _Scene]] = {
    "weave": _weave_scene,
    "washer": _washer_scene,
    "toys": _weave_scene,  # §4.7: toy shapes on normal images
}


def render_normal(category: str, size: SizeLike, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A normal image ``uint8 (H, W, 3)`` and its foreground ``bool (H, W)`` (all True for textures)."""
    check_categories([category])
    h, w = scene_size(size)
    scene = _SCENES[category](rng, h, w)
    return _to_u8(scene.image), scene.fg


# ---------------------------------------------------------------------------------------------
# defects: each returns (region bool (H, W), new values float (H, W, 3)); only region pixels change


def _scratch(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = min(h, w)
    width = max(1, int(round(s / 256 * rng.uniform(1.5, 3.5))))
    if scene.geometry and "outer" in scene.geometry:  # start on the ring
        g = scene.geometry
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(g["inner"] + 2, g["outer"] - 2)
        x0, y0 = g["cx"] + r * math.cos(a), g["cy"] + r * math.sin(a)
        length = s * rng.uniform(0.12, 0.25)
    else:
        x0, y0 = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        length = s * rng.uniform(0.2, 0.45)
    region = _draw_line(h, w, _polyline(rng, x0, y0, length), width) & scene.fg
    img = scene.image
    if rng.random() < 0.5:  # bright (abraded) or dark (groove) scratch
        new = img * 0.35 + 235.0 * 0.65
    else:
        new = img * rng.uniform(0.35, 0.5)
    return region, new


def _hole(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = min(h, w)
    if scene.geometry and "outer" in scene.geometry:  # drilled through the ring
        g = scene.geometry
        a = rng.uniform(0, 2 * np.pi)
        mid, band = (g["outer"] + g["inner"]) / 2, g["outer"] - g["inner"]
        outline = _blob(rng, g["cx"] + mid * math.cos(a), g["cy"] + mid * math.sin(a),
                        band * rng.uniform(0.2, 0.32), rough=0.05)
    else:  # torn fabric
        outline = _blob(rng, rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h, s * rng.uniform(0.035, 0.07), rough=0.3)
    return _draw_polygon(h, w, outline) & scene.fg, scene.under


def _stain(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = min(h, w)
    if scene.geometry and "outer" in scene.geometry:
        g = scene.geometry
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(g["inner"], g["outer"])
        cx, cy = g["cx"] + r * math.cos(a), g["cy"] + r * math.sin(a)
        radius = s * rng.uniform(0.05, 0.09)
    else:
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        radius = s * rng.uniform(0.05, 0.1)
    region = _draw_polygon(h, w, _blob(rng, cx, cy, radius)) & scene.fg
    yy, xx = _grid(h, w)
    # opacity 0.45..0.85, strongest in the middle; brownish tint multiplies the surface
    dist = np.hypot(xx - cx, yy - cy) / radius
    alpha = (0.45 + 0.4 * np.clip(1.0 - dist, 0.0, 1.0) * rng.uniform(0.7, 1.0))[..., None]
    tint = np.array([0.55, 0.42, 0.3], np.float32) * rng.uniform(0.8, 1.1)
    new = scene.image * (1.0 - alpha * (1.0 - tint))
    return region, new


_SPOT_COLOURS = np.array([[200, 40, 40], [40, 90, 200], [40, 160, 60], [220, 190, 30], [150, 50, 170]], np.float32)


def _color(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = min(h, w)
    if scene.geometry and "outer" in scene.geometry:
        g = scene.geometry
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(g["inner"] + 3, g["outer"] - 3)
        cx, cy = g["cx"] + r * math.cos(a), g["cy"] + r * math.sin(a)
    else:
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    region = _draw_polygon(h, w, _blob(rng, cx, cy, s * rng.uniform(0.025, 0.05), rough=0.2)) & scene.fg
    colour = _SPOT_COLOURS[rng.integers(len(_SPOT_COLOURS))] * rng.uniform(0.85, 1.1)
    lum = scene.image.mean(axis=2, keepdims=True)
    shading = lum / max(float(lum[scene.fg].mean()), 1.0)  # keep the surface relief
    new = 0.15 * scene.image + 0.85 * colour * shading
    return region, new


def _missing_part(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s, g = min(h, w), scene.geometry
    a = rng.uniform(0, 2 * np.pi)
    r = g["outer"] - rng.uniform(0.0, 0.03) * s
    outline = _blob(rng, g["cx"] + r * math.cos(a), g["cy"] + r * math.sin(a), s * rng.uniform(0.06, 0.1), rough=0.3)
    region = _draw_polygon(h, w, outline) & (g["coverage"] > 0)
    return region, scene.under


def _extra_part(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s, g = min(h, w), scene.geometry
    a = rng.uniform(0, 2 * np.pi)
    half = rng.uniform(0.08, 0.18)  # half angular width of the burr's base
    reach = g["outer"] + s * rng.uniform(0.04, 0.09)
    angles = [a - half, a - half * rng.uniform(0.2, 0.6), a + half * rng.uniform(-0.3, 0.3),
              a + half * rng.uniform(0.2, 0.6), a + half]
    radii = [g["outer"] - 2, reach * rng.uniform(0.9, 1.0), reach, reach * rng.uniform(0.9, 1.0), g["outer"] - 2]
    outline = np.array([(g["cx"] + r * math.cos(t), g["cy"] + r * math.sin(t)) for t, r in zip(angles, radii)])
    region = _draw_polygon(h, w, outline) & (g["coverage"] < 1.0)
    return region, scene.material * rng.uniform(0.85, 1.0)


# -- toy shapes (§4.7, Fig. 10): unit outlines centred on 0, then scaled, stretched, rotated


def _unit_shape(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    if name == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6]) + rng.normal(0, 0.15, 3)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "star":
        t = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "lightning":
        pts = np.array([[0.05, -1], [0.6, -1], [0.2, -0.15], [0.55, -0.15], [-0.4, 1], [-0.05, 0.15], [-0.45, 0.15]])
        return pts
    raise ValueError(f"unknown toy shape {name!r}")


_TOY_COLOURS = np.array(
    [[230, 30, 30], [30, 180, 40], [30, 60, 230], [245, 220, 20], [20, 210, 220],
     [220, 40, 210], [250, 140, 20], [250, 250, 250], [10, 10, 10], [130, 40, 200]], np.float32)


def _toy(shape: str) -> Callable[[np.random.Generator, _Scene, int, int], tuple[np.ndarray, np.ndarray]]:
    def render(rng: np.random.Generator, scene: _Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        s = min(h, w)
        unit = _unit_shape(shape, rng)
        size = s * rng.uniform(0.05, 0.13)  # half extent in px
        aspect = rng.uniform(0.8, 1.25) if shape == "circle" else rng.uniform(0.6, 1.6)
        ang = rng.uniform(0, 2 * np.pi)
        pts = unit * size * np.array([aspect**0.5, aspect**-0.5])
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        pts = pts @ rot.T + np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
        colour = np.clip(_TOY_COLOURS[rng.integers(len(_TOY_COLOURS))] + rng.normal(0, 8, 3), 0, 255)
        new = np.broadcast_to(colour.astype(np.float32), scene.image.shape)
        return _draw_polygon(h, w, pts), new

    return render


_DEFECT_RENDERERS: dict[str, Callable] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "color": _color,
    "missing_part": _missing_part,
    "extra_part": _extra_part,
    **{shape: _toy(shape) for shape in DEFECTS["toys"]},
}


def render_defect(category: str, defect: str, size: SizeLike, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean uint8 (H, W, 3), defective uint8 (H, W, 3), mask bool (H, W))``.

    The mask is exactly the pixels that differ between ``clean`` and ``defective``; draws whose
    changed area is too small (e.g. a shape mostly off the part) are redrawn.
    """
    check_categories([category])
    if defect not in DEFECTS[category]:
        raise ValueError(f"unknown defect {defect!r} for category {category!r}; expected one of {', '.join(DEFECTS[category])}")
    h, w = scene_size(size)
    scene = _SCENES[category](rng, h, w)
    clean = _to_u8(scene.image)
    min_area = max(8, int(0.0008 * h * w))
    for _ in range(_MAX_TRIES):
        region, new = _DEFECT_RENDERERS[defect](rng, scene, h, w)
        out = clean.copy()
        out[region] = _to_u8(new[region] + rng.normal(0.0, 2.0, size=(int(region.sum()), 3)))
        mask = (out != clean).any(axis=2)  # exact: only changed pixels
        if mask.sum() >= min_area:
            return clean, out, mask
    raise RuntimeError(f"could not draw a visible {defect!r} defect on {category!r} at {(h, w)} in {_MAX_TRIES} tries")
