"""Notebook 02, the model (paper Fig. 2 and eq. (3)-(4)): the stage table, parameters and FLOPs per stage,
and the best difference information DI* of an input against the memory bank.

Every function takes a model, tensors or the rows of :func:`memseg.notebook.stages.memseg_stage_table`.

Examples:
    >>> rows = memseg_stage_table(model, x)                   # doctest: +SKIP
    >>> show_stage_table(rows); plot_stage_costs(rows)         # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from memseg.notebook.figures import autosave, html_table, show_image
from memseg.notebook.stages import stage_flops
from memseg.utils import normalize


def show_stage_table(rows, flops=None, title: str = "MemSeg stages"):
    """HTML table of :func:`memseg.notebook.stages.stage_table` rows (+ GFLOPs per stage when given)."""
    table = []
    for r in rows:
        d = {"stage": r.name, "module": r.kind, "input": r.input_shape, "output": r.output_shape,
             "trainable params": r.trainable, "frozen params": r.frozen}
        if r.name.startswith("memory"):
            d["frozen params"] = f"{r.buffers:,} stored floats (memory bank)"
        if flops is not None:
            d["GFLOPs"] = round(stage_flops(flops, r) / 1e9, 3)
        table.append(d)
    return html_table(table, title=title, font_px=15)


def plot_stage_costs(rows, flops=None, title: str = "Where the parameters are"):
    """Horizontal bars: frozen vs trainable parameters per stage, and FLOPs per stage when given."""
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    y = np.arange(len(rows))
    ncols = 2 if flops is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(10 * ncols, 0.48 * len(rows) + 2.2), sharey=True, squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    tr = np.array([r.trainable for r in rows]) / 1e6
    fr = np.array([r.frozen for r in rows]) / 1e6
    ax.barh(y, fr, color="#9aa5b1", label=f"frozen ({fr.sum():.1f} M)")
    ax.barh(y, tr, left=fr, color="#e4572e", label=f"trainable ({tr.sum():.1f} M)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.legend(loc="lower right")
    ax.set_title("parameters per stage")
    if flops is not None:
        ax2 = axes[0, 1]
        fl = np.array([stage_flops(flops, r) for r in rows]) / 1e9
        ax2.barh(y, fl, color="#17bebb")
        for yi, v in zip(y, fl):
            if v > 0:
                ax2.text(v, yi, f" {v:.2f}", va="center", fontsize=12)
        ax2.set_xlabel("GFLOPs (one image)")
        ax2.set_title(f"FLOPs per stage — total {flops.gflops:.2f} GFLOPs")
    fig.suptitle(title)
    autosave(fig, "stage_costs")
    return fig


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): mean over channels (eq. 5-7's 1/C Σ)."""
    return x.float().mean(dim=1)


@torch.no_grad()
def forward_intermediates(model, images: torch.Tensor) -> dict:
    """``model(normalize(images), return_intermediates=True)`` on the model's device, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return model(normalize(images.to(device)), return_intermediates=True)


def show_di_star(model, image: torch.Tensor, memory_images: torch.Tensor, title: str | None = None):
    """Input, its closest memory sample (eq. 4) and the channel means of DI*_1..3 (eq. 3)."""
    import matplotlib.pyplot as plt

    inter = forward_intermediates(model, image[None] if image.dim() == 3 else image)
    k = int(torch.as_tensor(inter["memory_index"]).flatten()[0])
    dis = inter["DI_star"]
    fig, axes = plt.subplots(1, 2 + len(dis), figsize=(4.4 * (2 + len(dis)), 5), layout="constrained")
    show_image(axes[0], image if image.dim() == 3 else image[0], "input $I$")
    show_image(axes[1], memory_images[k], f"closest memory sample\n(memory slot {k})")
    for j, d in enumerate(dis):
        m = channel_mean(d)[0]
        show_image(axes[2 + j], m, rf"mean of $DI^*_{j + 1}$ ({m.shape[0]}×{m.shape[1]})", cmap="magma", colorbar=True)
    fig.suptitle(title or r"Best difference information $DI^* = \mathrm{argmin}_{DI_i} \sum DI_i$ (eq. 3-4)")
    autosave(fig, "di_star")
    return fig, k, inter



def model_at_size(size: tuple[int, int], memory: torch.Tensor, weights: str = "auto", device="cpu"):
    """A fresh (untrained) MemSeg at ``size`` whose memory bank holds ``memory`` (N, 3, H, W) in [0, 1]:
    for shapes and FLOPs at the paper's input size."""
    from memseg.models import build_model

    model = build_model("memseg", {"input_size": tuple(size), "memory_size": len(memory), "weights": weights})
    model.to(device).eval()
    model.prepare(normalize(memory.to(device)))
    return model
