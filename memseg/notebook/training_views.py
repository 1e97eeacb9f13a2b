"""Notebook 03, training and evaluation (paper §4.1, eq. (8)-(10)): a live loss plot fed by the training
callback, the test-split metrics as bars and a table, and a grid of test predictions.

Every function takes plain values: a metrics dict from :func:`memseg.engine.evaluation.evaluate`, image
tensors and anomaly maps, or a checkpoint path with a dataset root and category.

Examples:
    >>> live = LiveLossPlot(every=1000)
    >>> live(1, {"loss": 1.0, "lr": 0.04}); live.history
    {'loss': [1.0]}
"""

from __future__ import annotations

import numpy as np

from memseg.notebook.data import load_images
from memseg.notebook.figures import autosave, html_table, show_image, to_numpy_image


def _ema(values: np.ndarray, alpha: float = 0.15) -> np.ndarray:
    """Exponential moving average (for readable loss curves)."""
    out = np.empty_like(values, dtype=float)
    acc = float(values[0]) if len(values) else 0.0
    for i, v in enumerate(values):
        acc = alpha * float(v) + (1 - alpha) * acc
        out[i] = acc
    return out


class LiveLossPlot:
    """A training callback that redraws the loss curve(s) in the notebook every ``every`` steps.

    Pass it as ``train(config, callback=LiveLossPlot())``; it accepts the callback's step
    record either as ``callback(step, logs)`` or ``callback(logs)`` with a ``"step"`` key.
    """

    IGNORED = ("step", "lr", "seconds", "time", "epoch")

    def __init__(self, every: int = 10, title: str = "training loss (eq. 10)"):
        self.every = max(1, int(every))
        self.title = title
        self.history: dict[str, list[float]] = {}
        self.steps: list[int] = []
        self._handle = None

    def __call__(self, step=None, logs: dict | None = None, **kwargs):
        if logs is None and isinstance(step, dict):
            logs, step = step, step.get("step")
        logs = dict(logs or {}, **{k: v for k, v in kwargs.items() if isinstance(v, (int, float))})
        if step is None:
            step = logs.get("step", len(self.steps) + 1)
        self.steps.append(int(step))
        for k, v in logs.items():
            if k in self.IGNORED or not isinstance(v, (int, float)):
                continue
            self.history.setdefault(k, []).append(float(v))
        if len(self.steps) % self.every == 0:
            self.draw()

    def figure(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 5), layout="constrained")
        colors = {"loss": "#222222", "l1": "#2e86ab", "focal": "#e4572e"}
        for k, vals in self.history.items():
            xs = np.asarray(self.steps[-len(vals) :])
            v = np.asarray(vals)
            main = k in ("loss", "total")
            ax.plot(xs, v, color=colors.get(k), alpha=0.25, lw=1)
            ax.plot(xs, _ema(v), color=colors.get(k), lw=2.6 if main else 1.8, label=f"{k} (smoothed)" if main else k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (log scale)")
        ax.set_title(self.title)
        if self.history:
            ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        return fig

    def draw(self) -> None:
        """(Re)draw the curves in place (one output that is updated, not a new figure per call)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)

    def finish(self) -> None:
        """Final redraw after training (also saved for review when ``$MEMSEG_FIGDIR`` is set)."""
        import matplotlib.pyplot as plt

        self.draw()
        fig = self.figure()
        autosave(fig, "loss")
        plt.close(fig)


def show_metrics(metrics: dict, title: str = "Evaluation on the test split"):
    """Bar chart of the overall metrics (values in [0, 1]) with the numbers written on the bars."""
    import matplotlib.pyplot as plt

    overall = metrics.get("overall", metrics)
    keys = [k for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max", "image_f1_max")
            if isinstance(overall.get(k), (int, float))]
    labels = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
              "f1_max": "image F1-max",
              "pixel_f1_max": "pixel F1-max", "image_f1_max": "image F1-max"}
    vals = [float(overall[k]) for k in keys]
    fig, ax = plt.subplots(figsize=(2.6 * max(3, len(keys)) + 1, 5), layout="constrained")
    bars = ax.bar([labels[k] for k in keys], vals,
                  color=["#2e86ab", "#e4572e", "#17bebb", "#f0a202", "#76b041", "#a23b72"][: len(keys)])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.015, f"{v:.3f}", ha="center", fontsize=15, fontweight="bold")
    ax.axhline(0.5, ls="--", color="gray", lw=1)
    ax.text(-0.45, 0.51, "chance (AUROC)", ha="left", color="dimgray", fontsize=12,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5))
    ax.set_ylim(0, 1.08)
    ax.set_title(title)
    autosave(fig, "metrics")
    return fig


def prediction_grid(images, masks, maps, scores=None, n: int = 4, title: str = "Test predictions"):
    """Rows of input | ground truth | heat map | overlay (``memseg.viz``) for ``n`` test images."""
    import matplotlib.pyplot as plt

    from memseg import viz

    n = min(n, len(images))
    fig, axes = plt.subplots(n, 4, figsize=(17, 4.2 * n), squeeze=False, layout="constrained")
    for i in range(n):
        img = to_numpy_image(images[i])
        amap = to_numpy_image(maps[i])
        show_image(axes[i, 0], img, "input" + (f"  (score {float(scores[i]):.2f})" if scores is not None else ""))
        show_image(axes[i, 1], masks[i], "ground truth", cmap="gray", vmin=0, vmax=1)
        show_image(axes[i, 2], amap, "anomaly map", cmap="jet", vmin=0, vmax=1)
        show_image(axes[i, 3], viz.overlay((img * 255).astype(np.uint8), amap), "overlay")
    fig.suptitle(title)
    autosave(fig, "predictions")
    return fig


def metrics_table(metrics: dict):
    """HTML table: overall and per-defect metrics (image/pixel AUROC, AUPRO@0.3) with image counts."""
    rows = []
    blocks = [("all defects", metrics["overall"])] + sorted(metrics.get("per_defect", {}).items())
    for name, m in blocks:
        rows.append({"defect": name, "anomalous / normal": f"{m.get('n_anomalous', '')} / {m.get('n_normal', '')}",
                     "image AUROC": float(m["image_auroc"]), "pixel AUROC": float(m["pixel_auroc"]),
                     "AUPRO@0.3": float(m["aupro"])})
    return html_table(rows, title="Test-split metrics (per defect: that defect's images + all normal ones)")


def predictions(checkpoint, data_root, category: str, device="auto", n_anomalous: int = 3, n_normal: int = 1) -> dict:
    """Anomaly maps of a few test images of ``<data_root>/<category>`` (different defect types first) with a checkpoint.

    Returns dict(images (N,3,H,W), masks (N,1,H,W), maps (N,H,W) np, scores (N,) np, defects, paths).
    """
    from memseg.data import load_split
    from memseg.data.datasets import AnomalyDataset
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.engine.scoring import collect_predictions

    model, info = load_checkpoint(checkpoint, device=device)
    size = tuple(info["model_config"]["input_size"])
    test = load_split(data_root, category, split="test", size=size)
    by_defect: dict[str, list[int]] = {}
    for i, r in enumerate(test.records):
        by_defect.setdefault(r.defect, []).append(i)
    chosen = []
    defects = sorted(d for d in by_defect if d != "good")
    k = 0
    while len(chosen) < n_anomalous and defects and k < max(len(v) for v in by_defect.values()):
        for d in defects:
            if len(chosen) < n_anomalous and k < len(by_defect[d]):
                chosen.append(by_defect[d][k])
        k += 1
    chosen += by_defect.get("good", [])[:n_normal]
    subset = AnomalyDataset([test.records[i] for i in chosen], size=size)
    preds = collect_predictions(model, subset, batch_size=8, device=device, progress=False)
    return {
        "images": load_images(subset), "masks": subset.load_masks(progress=False).float(),
        "maps": preds.maps, "scores": preds.scores, "defects": preds.defects, "paths": preds.paths,
    }
