"""Notebook 05, the spatial attention maps (paper §3.2, eq. (5)-(7), Fig. 9): the channel means of DI*_1..3,
the maps M3 -> M2 -> M1 built from them, how much more they weigh the defect than the rest of the image,
and a browser over test images.

Examples:
    >>> maps = attention_maps(model, image)                   # doctest: +SKIP
    >>> plot_spatial_attention(image, mask, maps)              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memseg import viz
from memseg.notebook.figures import FigureWidget, autosave, new_or_cleared, show_image, to_numpy_image
from memseg.notebook.model_views import channel_mean, forward_intermediates


def attention_maps(model, image: torch.Tensor, attention: str | None = None) -> dict[str, np.ndarray]:
    """Channel means of DI*_1..3, M3, M2, M1 and the prediction for one image (3, H, W) in [0, 1].

    Keys: ``DI1, DI2, DI3`` (h_n, w_n), ``M1, M2, M3`` (h_n, w_n), ``prediction`` (H, W) in [0, 1],
    ``memory_index`` (int), ``attention`` ("calibrated" or "literal") and ``scales`` (the spatial means of
    the memory's reference differences S_1..S_3 that calibrated attention reads DI* on).

    ``attention`` recomputes M1..M3 from the same DI* in the other form (the prediction stays the
    model's own), e.g. to see what the literal eq. (5)-(7) would give for this model.
    """
    from memseg.models.memseg.attention import spatial_attention_maps

    inter = forward_intermediates(model, image[None] if image.dim() == 3 else image)
    mode = attention or getattr(model.config, "attention", "literal")
    if mode != getattr(model.config, "attention", "literal"):
        maps = spatial_attention_maps(inter["DI_star"], model.memory.scales if mode == "calibrated" else None)
        inter.update(zip(("M1", "M2", "M3"), maps))
    out = {}
    for j, d in enumerate(inter["DI_star"]):
        out[f"DI{j + 1}"] = channel_mean(d)[0].cpu().numpy()
    for k in ("M1", "M2", "M3"):
        m = inter[k]
        out[k] = (m[0, 0] if m.dim() == 4 else m[0]).float().cpu().numpy()
    out["prediction"] = torch.softmax(inter["logits"].float(), dim=1)[0, 1].cpu().numpy()
    out["memory_index"] = int(torch.as_tensor(inter["memory_index"]).flatten()[0])
    out["attention"] = mode
    out["scales"] = [float(s.mean()) for s in model.memory.scales]
    return out


def attention_contrast(model, dataset, indices: Sequence[int]) -> list[dict]:
    """Where the attention goes: per anomalous image, the mean of DI*_1 (channel mean) and of M1 inside
    the ground-truth defect vs outside it (mask resized to the map by area), and their ratios.

    A ratio above 1 means the memory comparison points at the defect; maps that were the same
    everywhere would give exactly 1.
    """
    import torch.nn.functional as F

    rows = []
    for i in indices:
        item = dataset[int(i)]
        maps = attention_maps(model, item["image"])
        mask = item["mask"].float().reshape(1, 1, *item["mask"].shape[-2:])
        inside = F.interpolate(mask, size=maps["M1"].shape, mode="area")[0, 0].numpy() > 0.5
        if not inside.any() or inside.all():
            continue
        row = {"image": f"{item['defect']}/{Path(item['path']).name}"}
        for key in ("DI1", "M1"):
            m = maps[key]
            row[f"{key} in defect"] = float(m[inside].mean())
            row[f"{key} elsewhere"] = float(m[~inside].mean())
            row[f"{key} ratio"] = row[f"{key} in defect"] / max(row[f"{key} elsewhere"], 1e-12)
        rows.append(row)
    return rows


def plot_spatial_attention(image, mask, maps: dict, title: str | None = None, fig=None):
    """Fig. 9: top row DI*_3 → DI*_2 → DI*_1 (channel means), bottom row M3 → M2 → M1;
    input, ground truth and the final prediction on the right."""
    fig = new_or_cleared(fig, (20, 9))
    axes = fig.subplots(2, 5)
    show_image(axes[0, 0], image, "input")
    show_image(axes[1, 0], mask, "ground truth", cmap="gray", vmin=0, vmax=1)
    for c, n in enumerate((3, 2, 1)):
        d, m = maps[f"DI{n}"], maps[f"M{n}"]
        show_image(axes[0, c + 1], d, rf"channel mean of $DI^*_{n}$ ({d.shape[0]}×{d.shape[1]})", cmap="magma")
        eq = {3: "(5)", 2: r"(6): $\cdot M_3^U$", 1: r"(7): $\cdot M_2^U$"}[n]
        how = f"on $S_{n}$ (mean {maps['scales'][n - 1]:.2g}), " if maps.get("attention") == "calibrated" else ""
        show_image(axes[1, c + 1], m, f"$M_{n}$  eq. {eq}\n{how}range [{m.min():.2g}, {m.max():.2g}]", cmap="magma")
    show_image(axes[0, 4], maps["prediction"], "final prediction", cmap="jet", vmin=0, vmax=1)
    img = to_numpy_image(image)
    show_image(axes[1, 4], viz.overlay((img * 255).astype(np.uint8), maps["prediction"]), "overlay")
    fig.suptitle(title or "How the spatial attention maps are built (paper Fig. 9)")
    autosave(fig, "spatial_attention")
    return fig


class AttentionBrowser(FigureWidget):
    """A dropdown of test images; choosing one redraws :func:`plot_spatial_attention` for it."""

    def __init__(self, model, dataset, indices: Sequence[int]):
        import ipywidgets as w

        self.model = model
        self.dataset = dataset
        options = [(f"{dataset.records[i].defect}/{Path(dataset.records[i].image_path).name}", int(i)) for i in indices]
        self.dropdown = w.Dropdown(options=options, description="test image", style={"description_width": "90px"},
                                   layout=w.Layout(width="480px"))
        self.out = w.Output()
        self.dropdown.observe(lambda _c: self.update(), names="value")
        self.widget = w.VBox([self.dropdown, self.out])
        self.last = None

    def render(self, index: int):
        item = self.dataset[int(index)]
        maps = attention_maps(self.model, item["image"])
        fig = plot_spatial_attention(item["image"], item["mask"], maps,
                                     title=f"{item['defect']}: {Path(item['path']).name}")
        self.last = maps
        return fig, maps

    def draw_current(self):
        fig, _ = self.render(self.dropdown.value)
        return fig
