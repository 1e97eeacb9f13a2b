"""Benchmark (paper Tables 1–2): train + evaluate every category with its preset, for several seeds.

Each (category, seed) is one run folder ``<out>/<category>/seed<k>/`` (``memseg train``'s files) with
its test metrics in ``eval/`` (``memseg evaluate``'s files). The benchmark is resumable at that grain:

- ``eval/metrics.json`` exists              -> done, skipped (never trained or evaluated again);
- ``final.pt`` exists                        -> training finished, only evaluated;
- ``checkpoints/last.pt`` exists             -> interrupted, resumed with ``train(..., resume=True)``;
- otherwise                                  -> trained from scratch (a non-empty folder is refused by ``train``).

A run folder trained with other settings (steps, size, seed, memory size, weights) is an error, so
a table never mixes budgets. ``results.json`` and ``results.md`` are rebuilt from the metrics files
on disk after every call: re-running the command over all categories when every one is done only
rebuilds the table (how a SLURM array's per-category tasks are merged).

Presets (paper §4.2): the paper schedule (2700 steps, 256², batch 4 + 4, lr 0.04: the TrainConfig
defaults), N = 30 memory samples, more for screw and 10 for toothbrush (:data:`MEMORY_SIZES`), and
the foreground mask of the simulation, which ``train`` picks itself from the category
(``AnomalySimulator(..., category=cfg.category)`` -> :data:`memseg.simulation.foreground.FOREGROUND_PRESETS`).

Examples:
    >>> run_benchmark("/data/mvtec", "bench/mvtec", seeds=[0, 1, 2])            # doctest: +SKIP
    >>> run_benchmark("data/synthetic", "bench/tiny", ["washer"], steps=2, size=32)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from memseg.config import as_size, read_yaml_mapping
from memseg.config_schema import field_default
from memseg.data.datasets import find_records, list_categories
from memseg.engine.evaluation import METRICS_JSON, evaluate, pct
from memseg.engine.run_folder import CHECKPOINT_DIR, CONFIG_YAML, FINAL_CHECKPOINT, LAST_CHECKPOINT, hold_run_folder
from memseg.engine.train_config import TrainConfig
from memseg.engine.training import split_indices, train
from memseg.models.memseg import MemSegConfig
from memseg.simulation.foreground import FOREGROUND_PRESETS

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
EVAL_DIR = "eval"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
METRIC_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3"}

# Paper §4.2: "For most of the categories in both datasets, we randomly select 30 memory samples [...]
# since the orientation of the screws [...] is randomly arranged, we increased the number of their memory
# samples [...]; the sample size of toothbrushes in the training set is too small, so we use only 10".
# The paper gives no number for screw; 70 is the largest N of its Fig. 8 (N = 1, 15, 30, 70).
MEMORY_SIZE = field_default(MemSegConfig, "memory_size")  # the paper's 30, kept in MemSegConfig
MEMORY_SIZES = {"screw": 70, "toothbrush": 10}

PAPER_SOURCE = ("MemSeg, arXiv 2205.00908: Table 1 (MVTec AD) and Table 2 (BTAD), column 'Ours', "
                "(image AUROC %, pixel AUROC %); the paper reports no AUPRO")
# (image AUROC %, pixel AUROC %) as printed in the column "Ours" (Table 1's category labels are shifted by
# one row in the text: the values are transcribed row by row, texture and object averages left out).
PAPER_MEMSEG: dict[str, tuple[float, float]] = {
    # Table 1, MVTec AD: textures
    "carpet": (99.6, 99.2), "grid": (100.0, 99.3), "leather": (100.0, 99.7), "tile": (100.0, 99.5),
    "wood": (99.6, 98.0),
    # Table 1, MVTec AD: objects
    "bottle": (100.0, 99.3), "cable": (98.2, 97.4), "capsule": (100.0, 99.3), "hazelnut": (100.0, 98.8),
    "metal_nut": (100.0, 99.3), "pill": (99.0, 99.5), "screw": (97.8, 98.0), "toothbrush": (100.0, 99.4),
    "transistor": (99.2, 97.3), "zipper": (100.0, 98.8),
    # Table 2, BTAD (BeanTech)
    "01": (98.7, 98.9), "02": (87.0, 96.2), "03": (99.4, 96.3),
}
PAPER_MEAN = {"MVTec AD": (99.56, 98.84), "BTAD": (95.0, 97.1)}  # the paper's own "Average" / "Mean" rows


@dataclass
class BenchmarkSettings:
    """What every (category, seed) of one benchmark shares; None leaves the preset's value."""

    data: str
    out: str
    steps: int | None = None  # preset: 2700 (paper §4.2)
    size: int | None = None  # preset: 256
    weights: str | None = None  # encoder weights (TrainConfig.model_options["weights"]); preset: auto
    device: str = "auto"
    dtd: str | None = None  # DTD root; None: memseg.paths.locate_dtd's defaults
    progress: bool = True  # tqdm bars of train/evaluate


# ------------------------------------------------------------------------------------ presets
def resolve_categories(data: str | Path, categories: Sequence[str] | None) -> list[str]:
    """``categories`` checked against the folders under ``data`` (None or ``["all"]``: every one found).

    Raises:
        ValueError: one line naming the unknown categories and those found.
    """
    found = list_categories(data)
    if not found:
        raise ValueError(f"--data {data}: no category folders found (expected <data>/<category>/train/...)")
    if categories is None or list(categories) == ["all"]:
        return found
    unknown = [c for c in categories if c not in found]
    if unknown:
        raise ValueError(f"--categories: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))} under {data}; found: {', '.join(found)}")
    return list(dict.fromkeys(categories))


def memory_size_for(category: str, n_train: int, cfg: TrainConfig) -> int:
    """Paper N for ``category`` (§4.2), capped at half of the train/good images left after validation.

    The cap (so at least as many images are left to train on, "while ensuring adequate training
    samples") only bites on small data sets: every MVTec AD category keeps its paper N.
    """
    n_rest = n_train - len(split_indices(n_train, cfg, 0)["val"])
    return max(1, min(MEMORY_SIZES.get(category, MEMORY_SIZE), n_rest // 2))


def category_config(settings: BenchmarkSettings, category: str, seed: int) -> TrainConfig:
    """The TrainConfig of one (category, seed): the preset, then the settings' overrides."""
    values = {"data": str(settings.data), "category": category, "seed": seed, "device": settings.device,
              "dtd_root": settings.dtd, "out": str(seed_dir(settings.out, category, seed))}
    values.update({k: v for k, v in (("steps", settings.steps), ("size", settings.size)) if v is not None})
    cfg = TrainConfig.from_dict(values, source="memseg benchmark")
    n_train = len(find_records(settings.data, category, "train"))
    cfg.model_options = {"memory_size": memory_size_for(category, n_train, cfg)}
    if settings.weights is not None:
        cfg.model_options["weights"] = settings.weights
    return cfg


def foreground_text(category: str) -> str:
    """How the simulation restricts anomalies for ``category`` (what ``train`` picks from the category)."""
    if category not in FOREGROUND_PRESETS:
        return "no preset: anomalies anywhere"
    fg = FOREGROUND_PRESETS[category]
    if fg is None:
        return "texture: anomalies anywhere"
    level = fg.threshold if isinstance(fg.threshold, str) else f"{fg.threshold:.3f}"
    measure = "grey" if fg.measure == "grey" else "R - B"
    return f"{measure} {'<' if fg.invert else '>'} {level}"


# ------------------------------------------------------------------------------ one (category, seed)
def seed_dir(out: str | Path, category: str, seed: int) -> Path:
    return Path(out) / category / f"seed{seed}"


def _check_same_settings(run: Path, cfg: TrainConfig) -> None:
    """A run folder written with other settings is an error (the table would mix budgets)."""
    if not (run / CONFIG_YAML).is_file():
        return
    stored = read_yaml_mapping(run / CONFIG_YAML, "TrainConfig keys")
    wanted = cfg.to_dict()
    diffs = [f"{k} {stored.get(k)!r} (asked: {wanted[k]!r})"
             for k in ("category", "model", "steps", "seed", "model_options")
             if json.dumps(stored.get(k), sort_keys=True) != json.dumps(wanted[k], sort_keys=True)]
    if as_size(stored.get("size", 256)) != cfg.input_size:
        diffs.append(f"size {stored.get('size')!r} (asked: {cfg.size!r})")
    if diffs:
        raise ValueError(f"{run} was trained with other settings: {', '.join(diffs)}; "
                         "use the same flags to continue it, or another --out")


def run_seed(settings: BenchmarkSettings, category: str, seed: int) -> dict:
    """Train (or resume) and evaluate one (category, seed) unless done; prints one line; returns its overall metrics."""
    cfg = category_config(settings, category, seed)
    run = cfg.run_dir()
    metrics_path = run / EVAL_DIR / METRICS_JSON
    _check_same_settings(run, cfg)
    t0 = time.perf_counter()
    if metrics_path.is_file():
        status = "done earlier, skipped"
    else:
        # held from the decision (train, resume or evaluate) to the metrics: a second benchmark on the same
        # (category, seed) fails at once instead of training into the same folder
        with hold_run_folder(run, what=f"benchmark run folder ({category}, seed {seed})"):
            _check_same_settings(run, cfg)  # again: another benchmark may have finished it with other settings
            final = run / FINAL_CHECKPOINT
            if metrics_path.is_file():
                status = "done meanwhile by another run, skipped"
            elif final.is_file():
                status = "training done earlier, evaluated"
            else:
                resume = (run / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
                train(cfg, progress=settings.progress, resume=resume)
                status = f"{'resumed' if resume else 'trained'} {cfg.steps} steps, evaluated"
            if not metrics_path.is_file():
                evaluate(final, settings.data, category, out=run / EVAL_DIR, device=settings.device,
                         progress=settings.progress)
    overall = json.loads(metrics_path.read_text())["overall"]
    scores = "  ".join(f"{METRIC_NAMES[m]} {pct(overall.get(m))}" for m in METRICS)
    print(f"benchmark {category} seed {seed}: {scores}  ({status}; N={cfg.model_options['memory_size']}, "
          f"{time.perf_counter() - t0:.0f} s) {run}", flush=True)
    return overall


def run_category(settings: BenchmarkSettings, category: str, seeds: Sequence[int]) -> None:
    """Every seed of one category, in turn (one task of the GPU pool)."""
    for seed in seeds:
        run_seed(settings, category, seed)


def _claim_gpu(gpu_ids) -> None:
    """Pool worker initialiser: this process sees one GPU only (``cuda`` is that GPU)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())


def gpus_for(device: str) -> list[str]:
    """The GPUs to run categories on at once: all visible ones when there are several and ``device`` allows."""
    if device not in ("auto", "cuda") or torch.cuda.device_count() < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return ids[: torch.cuda.device_count()]


def run_benchmark(data: str | Path, out: str | Path, categories: Sequence[str] | None = None,
                  seeds: Sequence[int] = (0,),
                  steps: int | None = None, size: int | None = None, weights: str | None = None, device: str = "auto",
                  dtd: str | None = None, progress: bool = True, gpus: Sequence[str] | None = None) -> dict:
    """Train + evaluate ``categories`` x ``seeds`` under ``out``; write and return the results table.

    Args:
        categories: category folders under ``data``; None or ``["all"]``: every one found.
        steps, size, weights: override the preset (2700 steps, 256², weights auto).
        gpus: GPU ids to run one category per GPU at once (default: every visible GPU when there are
            several and ``device`` is auto/cuda; with one or none, categories run in turn here).

    Returns:
        The content of ``<out>/results.json`` (see :func:`collect_results`).
    """
    cats = resolve_categories(data, categories)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    settings = BenchmarkSettings(str(data), str(out), steps, size, weights, device, dtd, progress)
    for c in cats:  # before any work: no run folder of another budget
        for s in seeds:
            cfg = category_config(settings, c, s)
            _check_same_settings(cfg.run_dir(), cfg)
    gpus = list(gpus_for(device) if gpus is None else gpus)
    if len(gpus) > 1 and len(cats) > 1:  # one category per GPU at once, each in a process that sees one GPU
        ctx = multiprocessing.get_context("spawn")
        gpu_ids = ctx.Queue()
        for gpu in gpus:
            gpu_ids.put(gpu)
        quiet = replace(settings, progress=False)  # bars of several processes would interleave
        with ProcessPoolExecutor(min(len(gpus), len(cats)), mp_context=ctx, initializer=_claim_gpu,
                                 initargs=(gpu_ids,)) as pool:
            for job in [pool.submit(run_category, quiet, c, seeds) for c in cats]:
                job.result()  # re-raises a worker's error here
    else:
        for c in cats:
            run_category(settings, c, seeds)
    results = collect_results(out, cats, seeds)
    write_results(out, results)
    return results


# ------------------------------------------------------------------------------------ the table
def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the finite values; std None below two values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def collect_results(out: str | Path, categories: Sequence[str], seeds: Sequence[int]) -> dict:
    """Per category and seed metrics read back from ``<out>/<category>/seed<k>/eval/metrics.json``, with
    mean ± std over seeds, the paper's numbers and a mean row (fractions in [0, 1], as in metrics.json)."""
    per_cat: dict[str, dict] = {}
    for c in categories:
        runs = {}
        for s in seeds:
            path = seed_dir(out, c, s) / EVAL_DIR / METRICS_JSON
            if path.is_file():
                m = json.loads(path.read_text())
                runs[str(s)] = {**{k: m["overall"].get(k) for k in (*METRICS, "f1_max")}, "step": m.get("step"),
                                "weights_source": m.get("weights_source"), "input_size": m.get("input_size")}
        config = seed_dir(out, c, seeds[0]) / CONFIG_YAML
        stats = {m: _mean_std([r[m] for r in runs.values()]) for m in METRICS}
        paper = PAPER_MEMSEG.get(c)
        per_cat[c] = {
            "memory_size": read_yaml_mapping(config).get("model_options", {}).get("memory_size") if config.is_file()
            else None,
            "foreground": foreground_text(c),
            "seeds": runs, "missing_seeds": [s for s in seeds if str(s) not in runs],
            "mean": {m: v[0] for m, v in stats.items()}, "std": {m: v[1] for m, v in stats.items()},
            "paper": None if paper is None else {"image_auroc": paper[0] / 100, "pixel_auroc": paper[1] / 100},
        }
    # mean row: per seed the mean over categories (seeds every category has), then mean ± std over those seeds
    full = [str(s) for s in seeds if all(str(s) in per_cat[c]["seeds"] for c in categories)]
    by_seed = {m: [_mean_std([per_cat[c]["seeds"][s][m] for c in categories])[0] for s in full] for m in METRICS}
    stats = {m: _mean_std(v) for m, v in by_seed.items()}
    with_paper = [c for c in categories if per_cat[c]["paper"]]
    paper_mean = {m: _mean_std([per_cat[c]["paper"][m] for c in with_paper])[0] for m in ("image_auroc", "pixel_auroc")}
    return {
        "out": str(out), "seeds": list(seeds), "categories": per_cat, "paper_source": PAPER_SOURCE,
        "mean": {"mean": {m: v[0] for m, v in stats.items()}, "std": {m: v[1] for m, v in stats.items()},
                 "seeds": [int(s) for s in full], "paper": paper_mean, "paper_categories": with_paper},
    }


def _cell(mean: float | None, std: float | None) -> str:
    """``98.1 ± 0.4`` in %; no ``±`` with one seed; ``n/a`` without a value."""
    return pct(mean) if std is None or mean is None else f"{pct(mean)} ± {100 * std:.1f}"


def _paper_cell(paper: dict | None, metric: str) -> str:
    return "–" if not paper or paper.get(metric) is None else f"{100 * paper[metric]:.1f}"


def results_markdown(results: dict) -> str:
    """The table of paper Tables 1–2: ours (mean ± std over seeds) beside MemSeg's published numbers, in %."""
    cats = results["categories"]
    first = next((r for c in cats.values() for r in c["seeds"].values()), {})
    lines = [
        "# MemSeg benchmark (paper Tables 1–2)", "",
        f"Seeds {', '.join(map(str, results['seeds']))}; steps {first.get('step')}, input {first.get('input_size')}, "
        f"encoder weights {first.get('weights_source')}. Ours: mean ± sample std over seeds, in %. "
        f"Paper: {results['paper_source']}; '–': no paper number for the category.", "",
        "| category | N | foreground | image AUROC | paper | pixel AUROC | paper | AUPRO@0.3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cats.items():
        mean, std = c["mean"], c["std"]
        missing = f" (missing seeds: {', '.join(map(str, c['missing_seeds']))})" if c["missing_seeds"] else ""
        lines.append(f"| {name}{missing} | {c['memory_size']} | {c['foreground']} | "
                     f"{_cell(mean['image_auroc'], std['image_auroc'])} | {_paper_cell(c['paper'], 'image_auroc')} | "
                     f"{_cell(mean['pixel_auroc'], std['pixel_auroc'])} | {_paper_cell(c['paper'], 'pixel_auroc')} | "
                     f"{_cell(mean['aupro'], std['aupro'])} |")
    m = results["mean"]
    lines += [
        f"| **mean** | | | {_cell(m['mean']['image_auroc'], m['std']['image_auroc'])} | "
        f"{_paper_cell(m['paper'], 'image_auroc')} | {_cell(m['mean']['pixel_auroc'], m['std']['pixel_auroc'])} | "
        f"{_paper_cell(m['paper'], 'pixel_auroc')} | {_cell(m['mean']['aupro'], m['std']['aupro'])} |", "",
        f"Mean row: per seed ({', '.join(map(str, m['seeds'])) or 'none complete'}) the mean over the categories, then "
        f"mean ± std over seeds; the paper column is the mean of the paper's numbers of the "
        f"{len(m['paper_categories'])} categories above that have one (the paper's own averages: "
        + "; ".join(f"{k} {v[0]} / {v[1]}" for k, v in PAPER_MEAN.items()) + ").",
        "N: memory samples (paper §4.2: 30, more for screw, 10 for toothbrush; at most half the train/good "
        "images left after validation). Foreground: where simulated anomalies may go (paper §3.1).", "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename: concurrent runs (a SLURM array) never leave half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: str | Path, results: dict) -> tuple[Path, Path]:
    """``<out>/results.json`` and ``<out>/results.md``, rebuilt from the metrics files every time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / RESULTS_JSON, json.dumps(results, indent=2))
    _write_atomic(out / RESULTS_MD, results_markdown(results))
    return out / RESULTS_JSON, out / RESULTS_MD
