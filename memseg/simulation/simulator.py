"""Anomaly simulation strategy of MemSeg (paper §3.1, Fig. 3, eq. (1)-(2)): the composite.

Three steps, all batched torch ops on the simulator's device:

1. Mask: Perlin noise P binarised with threshold T gives M_P; the foreground mask M_I of the
   input image restricts it: M = M_P ⊙ M_I (`memseg.simulation.masks`).
2. Noise image I_n: a DTD texture (textural anomaly, `memseg.simulation.textures`) or the input
   image after random mirror/rotation/brightness/saturation/hue with its 4×8 grid of tiles
   shuffled (structural anomaly, `memseg.simulation.structure`).
3. Composite (:func:`composite`), with δ ~ U[0.15, 1]:
   I'_n = δ(M ⊙ I_n) + (1 − δ)(M ⊙ I)                                                eq. (1)
   I_A = M̄ ⊙ I + I'_n                                                                eq. (2)

Images are float tensors in [0, 1] and are **not** ImageNet-normalised here; normalisation
happens after compositing (blending normalised images would mix two colour scales). Anomalies are simulated at the final
size (no crop that could cut an anomaly away), and every simulated sample has a non-empty mask.

Speed (the public ports decode a texture file per sample): textures are decoded once into a uint8 cache on the device,
and I_n is a pixel look-up (`memseg.simulation.pixels.PixelSource`). Where M = 0, eq. (2) gives I_A = I,
so unless intermediates are requested the same equations are evaluated only at the pixels
inside M (a few percent of the image) and I_n is never built in full.

Examples:
    >>> sim = AnomalySimulator(size=64, textures=torch.rand(2, 3, 64, 64))
    >>> result = sim.simulate(torch.rand(4, 3, 64, 64), torch.Generator().manual_seed(0))
    >>> result.images.shape, result.masks.shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memseg.config import as_size
from memseg.simulation.foreground import ForegroundConfig, foreground_preset
from memseg.simulation.masks import draw_anomaly_masks, resolve_foreground
from memseg.simulation.pixels import PixelSource
from memseg.simulation.sampling import random_uniform
from memseg.simulation.simulation_config import (  # noqa: F401  (re-exported)
    THRESHOLD_RANGE,
    SimulationConfig,
    check_perlin_threshold,
)
from memseg.simulation.structure import draw_structure_params, structure_pixels
from memseg.simulation.textures import TextureBank, draw_texture_params, texture_pixels
from memseg.utils import select_device

__all__ = ["NO_DTD_WARNING", "SOURCES", "AnomalySimulator", "SimulationConfig", "SimulationResult", "composite"]

SOURCES = ("texture", "structure")
# Start of the warning when no DTD root is given (callers that already said so in their own words filter it).
NO_DTD_WARNING = "no DTD root given (dtd_root=None)"


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


def composite(
    image: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor | float, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1)-(2) of the paper -> (I_A, I'_n). Arguments broadcast: whole images or pixel lists.

    image I, noise I_n (..., 3, H, W) or (K, 3); mask M (..., 1, H, W), or 1.0 for pixels inside M;
    delta δ (B, 1, 1, 1) or (K, 1).
    """
    noise_foreground = delta * (mask * noise) + (1 - delta) * (mask * image)  # eq. (1): I'_n
    anomalous = (1 - mask) * image + noise_foreground  # eq. (2): I_A = M̄ ⊙ I + I'_n
    return anomalous, noise_foreground


class AnomalySimulator:
    """Batched MemSeg anomaly simulation (paper §3.1) with an in-memory texture cache.

    Args:
        config: SimulationConfig (default: the paper's settings).
        dtd_root: DTD folder (`<dtd_root>/images/<category>/*.jpg`, or `images/` itself). Missing or
            empty -> a warning naming the path, then structure-only anomalies. Resolve a `--dtd`
            flag / `$MEMSEG_DTD` with :func:`memseg.paths.locate_dtd` first.
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
        if textures is not None:
            self.bank = TextureBank.from_tensor(textures, self.device)
        elif self.config.texture_prob > 0 and self.dtd_root is not None:
            self.bank = TextureBank.from_folder(self.dtd_root, self.size, self.device, max_textures, progress)
        else:
            if self.config.texture_prob > 0:
                warnings.warn(
                    NO_DTD_WARNING + ": texture anomalies are disabled, simulating structural "
                    "anomalies only. Pass dtd_root=<folder with images/<category>/*.jpg> or set texture_prob=0.",
                    stacklevel=2,
                )
            self.bank = TextureBank(size=self.size, device=self.device)  # empty: structure only

    @classmethod
    def for_category(
        cls,
        category: str,
        dtd_root: str | Path | None = None,
        size: int | Sequence[int] = (256, 256),
        device: str | torch.device = "cpu",
        config: SimulationConfig | None = None,
        **kwargs: Any,
    ) -> AnomalySimulator:
        """Simulator with the foreground preset of `category` (textures: no foreground mask)."""
        return cls(config=config, dtd_root=dtd_root, size=size, device=device, category=category, **kwargs)

    # ---- textures
    def load(self) -> AnomalySimulator:
        """Decode the DTD textures now (otherwise on first use). Returns self."""
        self.bank.load()
        return self

    @property
    def textures(self) -> torch.Tensor | None:
        """Cached textures, uint8 (N, 3, H, W) on the simulator's device, or None."""
        return self.bank.load()

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
        if d.shape != (batch,) or not bool(torch.isfinite(d).all()) or float(d.min()) < 0 or float(d.max()) > 1:
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
                "apply ImageNet normalisation after compositing, not before"
            )
        return images

    # ---- step 2 of Fig. 3: the noise images
    def _noise_sources(
        self, images: torch.Tensor, kinds: list[str], generator: torch.Generator | None
    ) -> list[tuple[torch.Tensor, PixelSource]]:
        """I_n of every sample as pixel look-ups: (batch rows (n,), PixelSource) per source kind.

        The random draws come in a fixed order: texture picks and mirror/turns, then the
        structural parameters.
        """
        _, _, h, w = images.shape
        cfg = self.config
        groups = []
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == "texture"], dtype=torch.long, device=self.device)
        if len(rows):
            params = draw_texture_params(len(rows), len(self.textures), h, w, generator, cfg.mirror_prob, cfg.rot90)
            groups.append((rows, texture_pixels(self.textures, params, (h, w))))
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == "structure"], dtype=torch.long, device=self.device)
        if len(rows):
            params = draw_structure_params(len(rows), h, w, cfg, generator)
            groups.append((rows, structure_pixels(images, rows, params, cfg.grid)))
        return groups

    @staticmethod
    def _render_noise(images: torch.Tensor, groups: list[tuple[torch.Tensor, PixelSource]]) -> torch.Tensor:
        """The full noise images I_n (B, 3, H, W)."""
        i_n = torch.empty_like(images)
        for rows, source in groups:
            i_n[rows] = source.render()
        return i_n

    @staticmethod
    def _composite_inside_mask(
        images: torch.Tensor, m: torch.Tensor, d: torch.Tensor, groups: list[tuple[torch.Tensor, PixelSource]],
        inplace: bool,
    ) -> torch.Tensor:
        """I_A by eq. (1)-(2) evaluated only at the K pixels inside M (I_A = I wherever M = 0)."""
        b, _, h, w = images.shape
        out = images if inplace else images.clone()
        inside = m.view(b, h * w) > 0.5
        channel = torch.arange(3, device=images.device) * (h * w)
        for rows, source in groups:
            s, pixel = inside[rows].nonzero().unbind(1)  # (K,) each: sample of the group, flat pixel
            sample = rows[s]
            at = ((sample * (3 * h * w) + pixel).unsqueeze(1) + channel).view(-1)  # (K*3,) offsets into I
            image = images.reshape(-1).index_select(0, at).view(-1, 3)  # I at those pixels
            noise = source.at(s, pixel // w, pixel % w)  # I_n at those pixels (K, 3)
            anomalous, _ = composite(image, noise, 1.0, d[sample].unsqueeze(1))  # M = 1 there
            out.view(-1).index_copy_(0, at, anomalous.view(-1))
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
        if threshold is not None:
            check_perlin_threshold(threshold, "threshold", finite_only=True)  # NaN would leave every mask empty
        if isinstance(thr, torch.Tensor):
            thr = thr.to(self.device, torch.float32)
        kinds = self._sources(b, source, generator)
        d = self._delta(b, delta, generator)
        m_i = resolve_foreground(images, foreground, self.foreground)  # M_I
        masks = draw_anomaly_masks(m_i, (b, h, w), thr, generator, scale_exp, self.config, self.device)  # step 1
        m = masks.mask  # M = M_P ⊙ M_I
        groups = self._noise_sources(images, kinds, generator)  # step 2
        inside_only = float(m.mean()) <= self.config.sparse_max_fraction  # M covers a small part of the batch
        if inside_only and not return_intermediates:  # step 3 where M = 1 (I_A = I elsewhere)
            i_a = self._composite_inside_mask(images, m, d, groups, inplace=owned)
            return SimulationResult(images=i_a, masks=m, delta=d, source=kinds)
        i_n = self._render_noise(images, groups)
        i_a, i_n_prime = composite(images, i_n, m, d.view(b, 1, 1, 1))  # step 3: eq. (1)-(2)
        inter = None
        if return_intermediates:
            if m_i is None:  # no foreground restriction: M_I is all ones and M a copy of M_P
                m_i, m = torch.ones_like(masks.perlin), masks.perlin.clone()
            inter = {
                "P": masks.noise, "M_P": masks.perlin, "M_I": m_i, "M": m, "I_n": i_n, "I_n_prime": i_n_prime,
                "I_A": i_a, "I": images, "delta": d, "source": kinds, "threshold": thr,
                "scale_exp": masks.scale_exp, "angle": masks.angle, "resampled": masks.resampled,
                "fallback": masks.fallback,
            }
        return SimulationResult(images=i_a, masks=m, delta=d, source=kinds, intermediates=inter)

    __call__ = simulate

    def __repr__(self) -> str:
        return (f"AnomalySimulator(category={self.category!r}, size={self.size}, device={self.device}, "
                f"textures={len(self.bank)}, foreground={self.foreground})")


def _shares_storage(a: torch.Tensor, b: Any) -> bool:
    """Whether tensor ``a`` lives in the same memory as ``b`` (so writing into ``a`` changes ``b``)."""
    if not isinstance(b, torch.Tensor) or a.device != b.device:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
