"""Table 5 in the notebooks: train and evaluate one model per ``model_options`` switch (memory, attention),
plot the result, and read the committed multi-seed ablation that ``benchmarks/ablation.py`` wrote.

Examples:
    >>> rows = [{"variant": "full", "auroc": 0.8}, {"variant": "full", "auroc": 0.9}]
    >>> s = summarise_runs(rows, ["auroc"], by=["variant"])[0]
    >>> (s["n"], round(s["auroc"], 2), round(s["auroc_std"], 3))
    (2, 0.85, 0.071)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memseg.notebook.figures import autosave
from memseg.notebook.quick import train_config
from memseg.notebook.settings import NotebookSettings
from memseg.paths import project_root

ABLATION_RESULTS = "docs/results/ablation-300-128"
"""The committed 3-seed ablation (``benchmarks/ablation.py``) that notebook 03 shows."""
METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3"}


def ablation_budget(settings: NotebookSettings) -> dict:
    """Steps and input size of each Table 5 ablation run: QUICK trains them small and short."""
    if settings.quick:
        return {"steps": min(60, settings.train_steps), "size": (64, 64)}
    return {"steps": settings.train_steps, "size": settings.size}


def run_ablations(settings: NotebookSettings, variants: dict[str, dict], steps: int,
                  size: tuple[int, int] | None = None,
                  progress: bool = True) -> list[dict]:
    """Train and evaluate one model per variant (``model_options`` switches of Table 5), same seed and steps.

    Each run goes to ``<runs>/ablation-<variant>-<category>`` (replaced on every call). Returns one dict per
    variant: variant, options, image_auroc, pixel_auroc, aupro, steps, size, seconds.
    """
    from memseg.engine.evaluation import evaluate
    from memseg.engine.training import train

    results = []
    for name, options in variants.items():
        slug = "".join(c if c.isalnum() else "_" for c in name.lower())
        cfg = train_config(settings, name=f"ablation-{slug}", steps=steps, size=size, model_options=options)
        t0 = time.perf_counter()
        run = train(cfg, progress=progress, overwrite=True)
        overall = evaluate(run.checkpoint, settings.data_root, settings.category, device=settings.device,
                           progress=False)["overall"]
        h, w = cfg.input_size
        results.append({"variant": name, "options": dict(options), **{k: float(overall[k]) for k in METRICS},
                        "steps": cfg.steps, "size": f"{h}×{w}", "seconds": time.perf_counter() - t0})
    return results


def plot_ablations(results: Sequence[dict], title: str | None = None):
    """Grouped bars of image / pixel AUROC per ablation variant (``results`` from :func:`run_ablations`)."""
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    if title is None:
        r0 = results[0]
        title = f"Table 5 ablations — {r0.get('steps', '?')} steps at {r0.get('size', '?')}, same seed"
    x = np.arange(len(names))
    w = 0.38
    fig, ax = plt.subplots(figsize=(max(10, 2.6 * len(names)), 5.5), layout="constrained")
    for off, key, color in ((-w / 2, "image_auroc", "#2e86ab"), (w / 2, "pixel_auroc", "#e4572e")):
        vals = [float(r.get(key, np.nan)) for r in results]
        bars = ax.bar(x + off, vals, w, label=METRICS[key], color=color)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=12)
    ax.set_xticks(x, names)
    ax.axhline(0.5, ls="--", color="gray", lw=1)
    ax.set_ylabel("AUROC")
    ax.set_ylim(0, 1.18)
    ax.legend(loc="upper center", ncol=2, frameon=False)
    ax.set_title(title)
    autosave(fig, "ablations")
    return fig


def summarise_runs(rows: Sequence[dict], metrics: Sequence[str],
                   by: Sequence[str] = ("category", "variant")) -> list[dict]:
    """Mean and sample std of ``metrics`` over runs grouped by ``by`` (e.g. seeds of one ablation row).

    Returns one dict per group, in first-seen order: the ``by`` keys, ``n`` (runs), and for each metric
    ``<metric>`` (mean) and ``<metric>_std`` (sample std, nan for a single run). None values are skipped.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        summary: dict = {**dict(zip(by, key)), "n": len(rs)}
        for m in metrics:
            v = np.asarray([r[m] for r in rs if r.get(m) is not None], dtype=float)
            summary[m] = float(v.mean()) if v.size else float("nan")
            summary[f"{m}_std"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        out.append(summary)
    return out


def committed_results(results: str | Path | None, default: str, script: str) -> list[dict]:
    """The rows of a committed ``results.json`` (a folder or the file; default: ``default`` under the project)."""
    path = Path(results) if results is not None else project_root() / default
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}; write them with benchmarks/{script} --out {path.parent}")
    return json.loads(path.read_text())


def measured_ablations(results: str | Path | None = None) -> list[dict]:
    """The committed multi-seed ablation as rows of mean ± std (%) per category and variant.

    Reads ``<results>/results.json`` written by ``benchmarks/ablation.py`` (default
    :data:`ABLATION_RESULTS` under the project folder).
    """
    rows = committed_results(results, ABLATION_RESULTS, "ablation.py")
    first = ["full", "literal eq. (5)-(7)", "attention off", "memory off"]
    rows.sort(key=lambda r: (r["category"], first.index(r["variant"]) if r["variant"] in first else len(first),
                             r["variant"]))
    table = []
    for s in summarise_runs(rows, list(METRICS)):
        row = {"category": s["category"], "variant": s["variant"], "seeds": s["n"]}
        for k, label in METRICS.items():
            std = "" if np.isnan(s[f"{k}_std"]) else f" ± {100 * s[f'{k}_std']:.1f}"
            row[label] = f"{100 * s[k]:.1f}{std}"
        table.append(row)
    return table


MEMORY_SIZE_RESULTS = "docs/results/memory-size-300-128"
"""The committed AUROC-against-N study (paper Fig. 8) that ``benchmarks/memory_size.py`` wrote."""


def memory_size_figure(results: str | Path | None = None, title: str | None = None):
    """Fig. 8: image and pixel AUROC (mean ± std over seeds) against the number of memory samples N.

    Reads ``results.json`` (one row per run, with ``memory_size``) written by ``benchmarks/memory_size.py``
    (default :data:`MEMORY_SIZE_RESULTS` under the project folder); trains nothing.

    Examples:
        >>> fig = memory_size_figure()  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    rows = committed_results(results, MEMORY_SIZE_RESULTS, "memory_size.py")
    categories = sorted({r["category"] for r in rows})
    fig, axes = plt.subplots(1, len(categories), figsize=(7 * len(categories), 5), layout="constrained", squeeze=False)
    for ax, category in zip(axes[0], categories):
        summary = sorted(summarise_runs([r for r in rows if r["category"] == category], list(METRICS),
                                        by=["memory_size"]),
                         key=lambda s: s["memory_size"])
        ns = [s["memory_size"] for s in summary]
        for key, color in (("image_auroc", "#2e86ab"), ("pixel_auroc", "#e4572e")):
            mean = np.array([100 * s[key] for s in summary])
            std = np.nan_to_num(np.array([100 * s[f"{key}_std"] for s in summary]))
            ax.errorbar(ns, mean, yerr=std, marker="o", capsize=4, lw=2, color=color, label=METRICS[key])
        ax.set_xticks(ns)
        ax.set_xlabel("memory samples N")
        ax.set_ylabel("AUROC (%)")
        ax.set_title(f"{category}: {summary[0]['n']} seeds, {rows[0]['steps']} steps at {rows[0]['size']} px")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    autosave(fig, "memory_size")
    return fig
