"""Notebook 04 (paper Fig. 6): do simulated anomalies look like real ones to the network?

Pooled bottleneck features of three groups of images (normal, simulated anomaly, real anomaly),
their 2-D t-SNE map (an interactive plotly figure whose hover shows each point's image), who sits
next to whom in that map, and a static thumbnail grid.

Examples:
    >>> import numpy as np
    >>> x = np.array([[0.0, 0], [0, 1], [9, 9], [9, 10]])
    >>> names, share = neighbour_mix(x, ["a", "a", "b", "b"], k=1)
    >>> names, share.tolist()
    (['a', 'b'], [[1.0, 0.0], [0.0, 1.0]])
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from memseg.notebook.data import load_images, pick_indices
from memseg.notebook.figures import autosave, show_image, thumbnail_base64


def pooled_features(features: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, C, h, w) -> (B, C) by global average (``mean``), max (``max``) or both concatenated (``meanmax``)."""
    if features.dim() != 4:
        raise ValueError(f"pooled_features expects (B, C, h, w), got shape {tuple(features.shape)}")
    if how == "mean":
        return features.mean(dim=(2, 3))
    if how == "max":
        return features.amax(dim=(2, 3))
    if how == "meanmax":
        return torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"pooled_features: unknown pooling {how!r}; expected mean, max or meanmax")


@torch.no_grad()
def bottleneck_features(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 8,
    pool: str = "mean",
    key: str = "bottleneck",
    progress: bool = True,
) -> np.ndarray:
    """Pooled bottleneck features (paper Fig. 6) of normalised images, shape (N, C).

    ``model(x, return_intermediates=True)[key]`` is read for each batch (MemSeg's U-Net
    bottleneck by default) and globally pooled. The model is put in eval mode.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"bottleneck_features expects normalised images (N, 3, H, W), got {tuple(images.shape)}")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device)
        inter = model(batch, return_intermediates=True)
        if key not in inter:
            raise KeyError(f"model intermediates have no {key!r}; available: {sorted(inter)}")
        feats = inter[key]
        if isinstance(feats, (list, tuple)):
            feats = feats[-1]
        out.append(pooled_features(feats.float(), pool).cpu())
    return torch.cat(out).numpy()


def tsne_embed(features: np.ndarray, seed: int = 0, perplexity: float | None = None,
               standardize: bool = True) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of (N, D) features -> (N, 2).

    Perplexity defaults to ``min(30, (N - 1) / 3)`` so small sets (a quick run) stay valid;
    features are standardised per dimension first (bottleneck channels have very different scales).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"tsne_embed expects (N, D) features, got shape {x.shape}")
    n = len(x)
    if n < 4:
        raise ValueError(f"tsne_embed needs at least 4 samples, got {n}")
    if standardize:
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    if perplexity is None:
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return tsne.fit_transform(x)


def neighbour_mix(embedding: np.ndarray, groups: Sequence[str], k: int = 5, order: Sequence[str] | None = None):
    """How groups mix in an embedding: ``share[a, b]`` = mean fraction of the k nearest neighbours of a
    point of group ``a`` that belong to group ``b`` (rows sum to 1; the point itself is excluded).

    Returns ``(names, share)`` with ``share`` a (G, G) array.
    """
    x = np.asarray(embedding, dtype=np.float64)
    g = np.asarray(list(groups))
    if x.ndim != 2 or len(x) != len(g):
        raise ValueError(f"neighbour_mix: embedding {x.shape} and {len(g)} group labels do not match")
    names = list(order) if order is not None else list(dict.fromkeys(g.tolist()))
    k = int(min(k, len(x) - 1))
    if k < 1:
        raise ValueError("neighbour_mix needs at least 2 points")
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn_idx = np.argsort(d, axis=1)[:, :k]
    share = np.zeros((len(names), len(names)))
    for a, name_a in enumerate(names):
        rows = np.nonzero(g == name_a)[0]
        if len(rows) == 0:
            share[a] = np.nan
            continue
        neigh = g[nn_idx[rows]]  # (n_a, k)
        for b, name_b in enumerate(names):
            share[a, b] = float((neigh == name_b).mean())
    return names, share


GROUP_COLORS = {"normal": "#2e86ab", "simulated anomaly": "#f0a202", "real anomaly": "#e4572e"}


def normal_anomalous_separation(embedding: np.ndarray, groups: Sequence[str], k: int = 5) -> float:
    """How well an embedding separates normal from anomalous (simulated or real) images: the mean share
    of each point's k nearest neighbours that are on its own side, averaged over the two sides (so the
    larger side cannot win alone). 1: fully separated; about 0.5: mixed.

    Examples:
        >>> x = np.array([[0.0, 0], [0, 1], [9, 9], [9, 10]])
        >>> normal_anomalous_separation(x, ["normal", "normal", "real anomaly", "simulated anomaly"], k=1)
        1.0
    """
    side = ["normal" if g == "normal" else "anomalous" for g in groups]
    names, share = neighbour_mix(embedding, side, k=k, order=["normal", "anomalous"])
    return float(np.nanmean(np.diag(share)))


@dataclass
class EmbeddingSet:
    """Images and labels that go into the t-SNE figure."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    groups: list[str]
    names: list[str]
    features: np.ndarray | None = None  # (N, D)
    embedding: np.ndarray | None = None  # (N, 2)
    extra: dict = field(default_factory=dict)


def tsne_groups(train_ds, test_ds, simulator, n_per_group: int | None = 40, seed: int = 0) -> EmbeddingSet:
    """Three groups of images for Fig. 6, at the datasets' size:

    * ``normal``: normal test images, topped up with normal *training* images when the test split has
      fewer than ``n_per_group`` (their names say ``train/``);
    * ``simulated anomaly``: anomalies simulated on other normal training images (as in training);
    * ``real anomaly``: anomalous test images.
    """
    labels = [int(r.label) for r in test_ds.records]
    normal_idx = [i for i, y in enumerate(labels) if y == 0]
    real_idx = [i for i, y in enumerate(labels) if y == 1]
    normal_idx = [normal_idx[i] for i in pick_indices(len(normal_idx), n_per_group, seed)]
    real_idx = [real_idx[i] for i in pick_indices(len(real_idx), n_per_group, seed + 1)]
    n_target = n_per_group or max(len(normal_idx), len(real_idx))
    perm = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed + 2)).tolist()
    n_top = max(0, min(n_target - len(normal_idx), len(perm) // 2))
    train_normal, sim_src = sorted(perm[:n_top]), sorted(perm[n_top : n_top + n_target])
    test_imgs = load_images(test_ds, indices=normal_idx + real_idx)
    top_imgs = load_images(train_ds, indices=train_normal) if train_normal else test_imgs[:0]
    sim = simulator.simulate(load_images(train_ds, indices=sim_src), generator=torch.Generator().manual_seed(seed))
    images = torch.cat([test_imgs[: len(normal_idx)], top_imgs, sim.images.cpu(), test_imgs[len(normal_idx) :]])
    n_normal = len(normal_idx) + len(train_normal)
    groups = ["normal"] * n_normal + ["simulated anomaly"] * len(sim_src) + ["real anomaly"] * len(real_idx)
    rec, trec = test_ds.records, train_ds.records
    names = (
        [f"test/{rec[i].defect}/{Path(rec[i].image_path).name}" for i in normal_idx]
        + [f"train/good/{Path(trec[i].image_path).name}" for i in train_normal]
        + [f"{s} anomaly on train/good/{Path(trec[i].image_path).name}" for s, i in zip(sim.source, sim_src)]
        + [f"test/{rec[i].defect}/{Path(rec[i].image_path).name}" for i in real_idx]
    )
    return EmbeddingSet(images=images, groups=groups, names=names)


def tsne_figure(emb: EmbeddingSet, title: str = "t-SNE of bottleneck features (paper Fig. 6)", thumb_px: int = 112):
    """Interactive plotly scatter; hover shows group and file name, customdata carries a base64 thumbnail.

    Returns a ``plotly.graph_objects.Figure``. :func:`tsne_hover_browser` adds a live image preview.
    """
    import plotly.graph_objects as go

    if emb.embedding is None:
        raise ValueError("tsne_figure: compute emb.embedding first (tsne_embed)")
    thumbs = [thumbnail_base64(im, thumb_px) for im in emb.images]
    fig = go.Figure()
    for group, color in GROUP_COLORS.items():
        idx = [i for i, g in enumerate(emb.groups) if g == group]
        if not idx:
            continue
        fig.add_trace(
            go.Scatter(
                x=emb.embedding[idx, 0], y=emb.embedding[idx, 1], mode="markers", name=f"{group} ({len(idx)})",
                marker=dict(size=13, color=color, line=dict(width=1, color="white"), opacity=0.85),
                customdata=np.array([[emb.names[i], thumbs[i], i] for i in idx], dtype=object),
                hovertemplate="<b>%{customdata[0]}</b><br>" + group + "<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text=title, font=dict(size=22)), width=950, height=700, font=dict(size=16),
        legend=dict(font=dict(size=16), itemsizing="constant"), xaxis_title="t-SNE 1", yaxis_title="t-SNE 2",
        template="plotly_white",
    )
    return fig


_HOVER_JS = """
var gd = document.getElementById('{plot_id}');
gd.on('plotly_hover', function (ev) {
  var p = ev.points[0];
  var img = document.getElementById('UID-img');
  var cap = document.getElementById('UID-cap');
  if (!img || !p.customdata) { return; }
  img.src = p.customdata[1];
  img.style.borderColor = p.fullData.marker.color;
  cap.innerHTML = '<b>' + p.fullData.name + '</b><br>' + p.customdata[0];
});
"""


_PLACEHOLDER = "data:image/svg+xml;base64," + base64.b64encode(
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect width='10' height='10' "
    b"fill='#f4f4f4'/></svg>"
).decode("ascii")


def plotly_with_thumbnails(fig, preview_px: int = 240) -> str:
    """HTML of a plotly figure whose hover shows the point's image (``customdata[1]``, a data URI)
    in a preview box beside the plot. plotly.js is inlined, so it works offline (JupyterLab, Voila,
    exported HTML)."""
    import uuid

    uid = "tsne-" + uuid.uuid4().hex[:8]
    plot = fig.to_html(full_html=False, include_plotlyjs=True, post_script=_HOVER_JS.replace("UID", uid),
                       config={"displaylogo": False})
    box = (f"<div style='width:{preview_px + 20}px;font-family:sans-serif;font-size:15px'>"
           f"<img id='{uid}-img' src='{_PLACEHOLDER}' style='width:{preview_px}px;height:{preview_px}px;"
           f"border:4px solid #ccc;background:#f4f4f4' alt=''/>"
           f"<div id='{uid}-cap' style='margin-top:6px'><i>hover a point to see its image</i></div></div>")
    return f"<div style='display:flex;gap:18px;align-items:flex-start'>{plot}{box}</div>"


def show_plotly_with_thumbnails(fig, preview_px: int = 240):
    """Display :func:`plotly_with_thumbnails` in the notebook (returns the IPython HTML object)."""
    from IPython.display import HTML

    return HTML(plotly_with_thumbnails(fig, preview_px))


def plot_neighbour_mix(emb: EmbeddingSet, k: int = 5, title: str | None = None):
    """Heat map of :func:`neighbour_mix` on the embedding: row group → share of neighbours per group."""
    import matplotlib.pyplot as plt

    names, share = neighbour_mix(emb.embedding, emb.groups, k=k, order=[g for g in GROUP_COLORS if g in emb.groups])
    fig, ax = plt.subplots(figsize=(8.5, 6.5), layout="constrained")
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for a in range(len(names)):
        for b in range(len(names)):
            v = share[a, b]
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=18, fontweight="bold",
                    color="white" if v > 0.55 else "black")
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names])
    ax.set_yticks(range(len(names)), [n.replace(" ", "\n") for n in names])
    ax.set_xlabel(f"group of the {k} nearest neighbours")
    ax.set_ylabel("group of the point")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or f"Who sits next to whom in the t-SNE map ({k}-NN)")
    autosave(fig, "neighbour_mix")
    return fig


def thumbnail_grid(emb: EmbeddingSet, per_group: int = 8, title: str = "What the three groups look like"):
    """A static matplotlib grid: one row of thumbnails per group (the hover fallback)."""
    import matplotlib.pyplot as plt

    groups = [g for g in GROUP_COLORS if g in emb.groups]
    fig, axes = plt.subplots(len(groups), per_group, figsize=(2.1 * per_group, 2.4 * len(groups) + 0.6), squeeze=False,
                             layout="constrained")
    for r, g in enumerate(groups):
        idx = [i for i, x in enumerate(emb.groups) if x == g][:per_group]
        for c in range(per_group):
            ax = axes[r, c]
            if c < len(idx):
                show_image(ax, emb.images[idx[c]])
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color(GROUP_COLORS[g])
                    s.set_linewidth(4)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(g.replace(" ", "\n"), fontsize=15, color=GROUP_COLORS[g], fontweight="bold")
    fig.suptitle(title)
    autosave(fig, "tsne_thumbnails")
    return fig


def separation_by_encoder(settings, groups: EmbeddingSet, weights: Sequence[str] = ("random", "auto"), k: int = 5,
                          progress: bool = False) -> list[dict]:
    """The same three groups of images, embedded through notebook models that differ only in their encoder
    weights (each trained once and cached like the notebooks' model): the normal-vs-anomalous
    :func:`normal_anomalous_separation` of each t-SNE map, and the neighbour shares behind it.
    """
    from memseg.engine.cached_run import cached_training
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.notebook.quick import train_config
    from memseg.utils import normalize

    rows = []
    for w in weights:
        # the notebooks' own model when the weights are the notebooks' (one cache, one training)
        cfg = train_config(settings, name="model" if w == settings.weights else f"model-{w}",
                           model_options={"weights": w})
        checkpoint, _ = cached_training(cfg, name=f"notebook model ({w} encoder)", progress=progress)
        model, info = load_checkpoint(checkpoint, device=settings.device)
        features = bottleneck_features(model, normalize(groups.images), progress=progress)
        embedding = tsne_embed(features, seed=settings.seed)
        names, share = neighbour_mix(embedding, groups.groups, k=k, order=list(GROUP_COLORS))
        rows.append({"weights": info.get("weights_source", w),
                     "separation": normal_anomalous_separation(embedding, groups.groups, k),
                     **{f"{a} → {b}": float(share[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)
                        if i == j}})
    return rows


def separation_table(rows: list[dict]):
    """:func:`separation_by_encoder`'s rows as a table in the notebook (IPython Markdown)."""
    from IPython.display import Markdown

    keys = [k for k in rows[0] if k != "weights"]
    lines = ["| encoder | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r['weights']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |" for r in rows]
    return Markdown("\n".join(lines))
