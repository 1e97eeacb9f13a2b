"""Notebook 01, anomaly simulation (paper §3.1, Fig. 3, eq. (1)-(2)): Perlin noise at several scales,
foreground masks, every step of one simulated anomaly, an interactive panel and a gallery.

Every function takes plain tensors and a :class:`memseg.simulation.simulator.AnomalySimulator`.

Examples:
    >>> fig = show_perlin_scales(size=(64, 64), exps=(1, 2))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from memseg.notebook.data import has_textures
from memseg.notebook.figures import FigureWidget, autosave, new_or_cleared, show_image

STEP_TITLES = {
    "I": r"input $I$",
    "P": r"Perlin noise $P$",
    "M_P": r"$M_P = [P > T]$",
    "M_I": r"foreground $M_I$",
    "M": r"$M = M_P \odot M_I$",
    "I_n": r"noise image $I_n$",
    "I_n_prime": r"$I'_n = \delta M{\odot}I_n + (1{-}\delta) M{\odot}I$",
    "I_A": r"$I_A = \bar{M} \odot I + I'_n$",
}


def show_perlin_scales(size: tuple[int, int] = (256, 256), threshold: float = 0.5, seed: int = 0,
                       exps: Sequence[int] = (1, 2, 3, 4)):
    """Perlin noise P at several scales (top) and its thresholded masks M_P = [P > T] (bottom)."""
    import matplotlib.pyplot as plt

    from memseg.simulation.perlin import perlin_mask, perlin_noise

    fig, axes = plt.subplots(2, len(exps), figsize=(4.4 * len(exps), 9), layout="constrained")
    for c, k in enumerate(exps):
        g = torch.Generator().manual_seed(seed)
        p = perlin_noise(1, size[0], size[1], generator=g, scale_exp=int(k))
        m = perlin_mask(p, threshold)
        show_image(axes[0, c], p[0, 0], f"$P$, scale $2^{k}\\times2^{k}$ cells", cmap="viridis", vmin=-1, vmax=1)
        show_image(axes[1, c], m[0, 0], f"$M_P = [P > {threshold}]$ ({100 * float(m.mean()):.0f}%)", cmap="gray",
                   vmin=0, vmax=1)
    fig.suptitle("Perlin noise at four scales, and the masks it gives")
    autosave(fig, "perlin_scales")
    return fig


def show_foreground(images: torch.Tensor, preset, title: str | None = None):
    """Images (top) and their foreground masks M_I (bottom) for a :class:`ForegroundConfig` (None: all ones)."""
    import matplotlib.pyplot as plt

    from memseg.simulation.foreground import foreground_mask

    m = foreground_mask(images, preset)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 8.6), squeeze=False, layout="constrained")
    for i in range(n):
        show_image(axes[0, i], images[i], "input $I$")
        show_image(axes[1, i], m[i], f"$M_I$ ({100 * float(m[i].mean()):.0f}% foreground)", cmap="gray", vmin=0, vmax=1)
    what = "no foreground mask for a texture: $M_I = 1$" if preset is None else (
        f"threshold {preset.threshold if isinstance(preset.threshold, str) else f'{preset.threshold:.2f}'}"
        f"{' (inverted)' if preset.invert else ''}, opening {preset.opening}, closing {preset.closing}")
    fig.suptitle(title or f"Foreground masks $M_I$ — {what}")
    autosave(fig, "foreground")
    return fig


def show_simulation_steps(image: torch.Tensor, result, index: int = 0, title: str | None = None, fig=None):
    """Paper Fig. 3 as a 2×4 panel: I, P, M_P, M_I / M, I_n, I'_n, I_A for sample ``index``.

    ``result`` is a :class:`memseg.simulation.simulator.SimulationResult` made with ``return_intermediates=True``.
    """
    inter = result.intermediates
    if inter is None:
        raise ValueError("show_simulation_steps needs simulate(..., return_intermediates=True)")
    fig = new_or_cleared(fig, (18, 9.6))
    axes = fig.subplots(2, 4)
    delta = float(result.delta[index])
    source = result.source[index]
    panels = [
        ("I", image[index] if image.dim() == 4 else image, None),
        ("P", inter["P"][index], "viridis"),
        ("M_P", inter["M_P"][index], "gray"),
        ("M_I", inter["M_I"][index], "gray"),
        ("M", inter["M"][index], "gray"),
        ("I_n", inter["I_n"][index], None),
        ("I_n_prime", inter["I_n_prime"][index], None),
        ("I_A", inter["I_A"][index], None),
    ]
    for ax, (key, img, cmap) in zip(axes.flat, panels):
        vmin, vmax = (0, 1) if key in ("M_P", "M_I", "M") else (-1, 1) if key == "P" else (None, None)
        t = STEP_TITLES[key]
        if key == "I_n":
            t += f" ({source})"
        show_image(ax, img.cpu() if key == "P" else img.cpu().clamp(0, 1), t, cmap=cmap, vmin=vmin, vmax=vmax)
    area = float(inter["M"][index].float().mean()) * 100
    thr = inter.get("threshold", 0.5)
    thr = float(thr[index]) if isinstance(thr, torch.Tensor) and thr.dim() else float(thr)
    fig.suptitle(title or f"Fig. 3 step by step — T = {thr:.2f}, δ = {delta:.2f}, source = {source}, anomaly area "
                          f"{area:.1f}%")
    autosave(fig, "simulation_steps")
    return fig


class SimulationPanel(FigureWidget):
    """Interactive Fig. 3: sliders for T, δ, Perlin scale, foreground threshold, the source and the seed.

    Every change re-runs :meth:`AnomalySimulator.simulate` on one image with the chosen values
    and redraws all stages. Display it as the last expression of a cell (or ``display(panel)``);
    :meth:`render` draws one state without widgets (used by tests and static exports).
    """

    def __init__(self, simulator, images: torch.Tensor, foreground_preset=None, image_index: int = 0):
        import ipywidgets as w

        self.simulator = simulator
        self.images = images
        self.preset = foreground_preset
        n = len(images)
        style = {"description_width": "170px"}
        layout = w.Layout(width="440px")
        fg_thr = foreground_preset.threshold if foreground_preset is not None else "otsu"
        textures = has_textures(simulator)
        self.controls = {
            "threshold": w.FloatSlider(value=0.5, min=0.0, max=0.9, step=0.05, description="Perlin threshold T",
                                       style=style, layout=layout),
            "delta": w.FloatSlider(value=0.8, min=0.15, max=1.0, step=0.05, description="transparency δ", style=style,
                                   layout=layout),
            "scale_exp": w.IntSlider(value=3, min=0, max=5, description="Perlin scale k (2^k cells)", style=style,
                                     layout=layout),
            "use_foreground": w.Checkbox(value=foreground_preset is not None, description="foreground mask M_I",
                                         style=style),
            "otsu": w.Checkbox(value=fg_thr == "otsu", description="Otsu threshold (automatic)", style=style),
            "fg_threshold": w.FloatSlider(value=0.5 if fg_thr == "otsu" else float(fg_thr), min=0.0, max=1.0, step=0.02,
                                          description="foreground threshold τ", style=style, layout=layout),
            "source": w.ToggleButtons(options=["texture", "structure"] if textures else ["structure"],
                                      value="texture" if textures else "structure", description="source", style=style),
            "seed": w.IntSlider(value=0, min=0, max=99, description="seed", style=style, layout=layout),
            "image": w.IntSlider(value=image_index, min=0, max=max(0, n - 1), description="image", style=style,
                                 layout=layout),
        }
        self.out = w.Output()
        for c in self.controls.values():
            c.observe(lambda _change: self.update(), names="value")
        note = "" if textures else "<i>no DTD textures found: structure source only</i>"
        self.widget = w.HBox([w.VBox([*self.controls.values(), w.HTML(note)]), self.out])
        self.last = None

    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def render(self, threshold=0.5, delta=0.8, scale_exp=3, use_foreground=True, otsu=True, fg_threshold=0.5,
               source="structure", seed=0, image=0, fig=None):
        """Simulate one image with these values; returns (figure, SimulationResult)."""
        from memseg.simulation.foreground import ForegroundConfig

        fg = False
        if use_foreground:
            base = self.preset or ForegroundConfig()
            fg = ForegroundConfig(threshold="otsu" if otsu else float(fg_threshold), invert=base.invert,
                                  opening=base.opening, closing=base.closing)
        g = torch.Generator().manual_seed(int(seed))
        img = self.images[int(image) : int(image) + 1]
        result = self.simulator.simulate(img, generator=g, threshold=float(threshold), delta=float(delta),
                                         source=source,
                                         scale_exp=int(scale_exp), foreground=fg, return_intermediates=True)
        fig = show_simulation_steps(img, result, fig=fig)
        self.last = result
        return fig, result

    def draw_current(self):
        self.controls["fg_threshold"].disabled = (self.controls["otsu"].value
                                                  or not self.controls["use_foreground"].value)
        fig, _ = self.render(**self.values())
        return fig


def simulation_gallery(simulator, images: torch.Tensor, n: int = 16, seed: int = 0, cols: int = 4):
    """Simulate ``n`` anomalies (random T-blobs, scale, δ and source, as in training) and show each next to its mask.

    Returns (figure, SimulationResult). Images are reused cyclically when fewer than ``n`` are given
    (sample i comes from ``images[i % len(images)]``).
    """
    import matplotlib.pyplot as plt

    idx = torch.arange(n) % len(images)
    g = torch.Generator().manual_seed(seed)
    result = simulator.simulate(images[idx], generator=g)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.3 * cols, 2.45 * rows + 0.9), layout="constrained")
    axes = np.atleast_2d(axes)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        a_img, a_mask = axes[r, 2 * c], axes[r, 2 * c + 1]
        if i >= n:
            a_img.axis("off")
            a_mask.axis("off")
            continue
        area = float(result.masks[i].float().mean()) * 100
        show_image(a_img, result.images[i].cpu(), f"{result.source[i]}, δ={float(result.delta[i]):.2f}")
        show_image(a_mask, result.masks[i].cpu(), f"M ({area:.2f}%)" if area < 0.1 else f"M ({area:.1f}%)", cmap="gray",
                   vmin=0, vmax=1)
    fig.suptitle(f"{n} simulated training anomalies $I_A$, each next to its mask $M$")
    autosave(fig, "simulation_gallery")
    return fig, result
