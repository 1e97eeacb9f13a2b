"""How the teaching figures look and where they go: projector style, image panels, grids, HTML tables,
saving for review (``$MEMSEG_FIGDIR``) and the redraw-on-change widget base.

Every function takes plain arrays / tensors / dicts; nothing here knows about notebook settings.

Examples:
    >>> import numpy as np
    >>> to_numpy_image(np.zeros((3, 4, 5), np.uint8)).shape   # (C, H, W) uint8 -> (H, W, C) float
    (4, 5, 3)
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ENV_FIGDIR, ENV_FIGPREFIX = "MEMSEG_FIGDIR", "MEMSEG_FIGPREFIX"


def use_projector_style() -> None:
    """Large fonts and figures that read well on a projector."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 110,
            "figure.figsize": (14, 6),
            "font.size": 14,
            "axes.titlesize": 16,
            "axes.titleweight": "bold",
            "axes.labelsize": 15,
            "figure.titlesize": 20,
            "figure.titleweight": "bold",
            "xtick.labelsize": 13,
            "ytick.labelsize": 13,
            "legend.fontsize": 13,
            "image.interpolation": "nearest",
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def to_numpy_image(x) -> np.ndarray:
    """(3, H, W)/(1, H, W)/(H, W) tensor or array in [0, 1] or uint8 -> (H, W, 3) or (H, W) float array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def show_image(ax, img, title: str | None = None, cmap: str | None = None, vmin=None, vmax=None,
               colorbar: bool = False):
    """Draw one image on ``ax`` without ticks or frame (grey colour map for 2-D maps); returns the AxesImage."""
    arr = to_numpy_image(img)
    if arr.ndim == 2 and cmap is None:
        cmap = "gray"
    im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    return im


def new_or_cleared(fig, figsize: tuple[float, float]):
    """``fig`` emptied for a redraw, or a new constrained-layout figure of ``figsize`` when None."""
    import matplotlib.pyplot as plt

    if fig is None:
        return plt.figure(figsize=figsize, layout="constrained")
    fig.clear()
    return fig


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``$MEMSEG_FIGDIR/<name>.png`` when that variable is set (used to review figures)."""
    folder = os.environ.get(ENV_FIGDIR)
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


_SAVED: dict[str, int] = {}


def autosave(fig, name: str) -> None:
    """When ``$MEMSEG_FIGDIR`` is set, save every teaching figure there as ``<prefix><name>-<n>.png`` (figure
    review)."""
    if not os.environ.get(ENV_FIGDIR):
        return
    _SAVED[name] = _SAVED.get(name, 0) + 1
    save_figure(fig, f"{os.environ.get(ENV_FIGPREFIX, '')}{name}-{_SAVED[name]}")


def image_grid(images, titles: Sequence[str] | None = None, cols: int = 10, title: str | None = None,
               size: float = 1.9):
    """A simple grid of images (tensor (N, 3, H, W) or list)."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.9 if title else 0.2)), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i], titles[i] if titles else None)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    autosave(fig, "image_grid")
    return fig


def thumbnail_base64(image, size: int = 72) -> str:
    """A PNG data URI of a small thumbnail (for plotly hover/customdata and HTML tables)."""
    from PIL import Image

    arr = (np.clip(to_numpy_image(image), 0, 1) * 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(value, number_format: str) -> str:
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, int):
        return number_format.format(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def html_table(rows: Sequence[dict], title: str | None = None, font_px: int = 16, number_format: str = "{:,}"):
    """An IPython HTML table (large font) from a list of dicts with the same keys."""
    from IPython.display import HTML

    if not rows:
        return HTML("<p><em>(empty table)</em></p>")
    keys = list(rows[0].keys())
    head = "".join(f"<th style='text-align:left;padding:4px 12px'>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left;padding:3px 12px'>{_cell(r.get(k, ''), number_format)}</td>"
                         for k in keys) + "</tr>"
        for r in rows
    )
    cap = (f"<caption style='font-weight:bold;font-size:{font_px + 2}px;text-align:left'>{html.escape(title)}</caption>"
           if title else "")
    return HTML(f"<table style='font-size:{font_px}px;border-collapse:collapse'>{cap}<thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


class FigureWidget:
    """Base of the interactive figures: controls in ``self.widget``, the figure in the output ``self.out``.

    A subclass builds both in ``__init__`` and defines :meth:`draw_current` (the figure for the controls'
    present values); :meth:`update` redraws it in place and displaying the object shows the controls.
    """

    out = None
    widget = None

    def draw_current(self):
        raise NotImplementedError

    def update(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        with self.out:
            self.out.clear_output(wait=True)
            fig = self.draw_current()
            display(fig)
            plt.close(fig)

    def _ipython_display_(self):
        from IPython.display import display

        self.update()
        display(self.widget)
