"""AUPRO@0.3 of memseg.engine.metrics against maintained implementations: same inputs, value and time.

Compares :func:`memseg.engine.metrics.aupro` with

- anomalib's ``AUPRO`` metric, when ``anomalib`` is importable (it is not a memseg dependency:
  install it into a separate virtual environment that can also import memseg's dependencies);
- the kit's own binned variant (``num_thresholds=1000``), to show what threshold sampling changes;
- the official MVTec AD evaluation code (``pro_curve_util.compute_pro`` + ``generic_util.trapezoid``,
  BSD-3, not shipped with memseg), when ``--mvtec-eval`` names the folder that holds those two files.

Without either, only the kit's own numbers are printed. Inputs: random and smoothed-noise cases
at several sizes, the real ground truth of an MVTec-layout category (``--data``/``--category``)
with maps from a per-pixel colour z-score model and from smoothed noise, and edge cases (single
region, diagonally touching regions, constant map, heavy ties, FPR landing exactly on the limit,
no anomalous pixel). Every implementation runs in this process on one thread; each value is
timed ``--repeats`` times and the median is reported, with the ratio to the kit's median.
A second table times the kit's pixel AUROC / F1-max against scikit-learn.

    .venv/bin/python benchmarks/bench_aupro.py [--mvtec-eval /tmp/mvtec_eval] \\
        [--data ../shared/data/mvtec3d_tire --category tire] [--repeats 3] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from memseg.engine.metrics import aupro, f1_max, pixel_auroc

FPR_LIMIT = 0.3
Case = tuple[str, np.ndarray, np.ndarray]  # (name, masks bool (N, H, W), maps float32 (N, H, W))
Metric = Callable[[np.ndarray, np.ndarray], float]


# ------------------------------------------------------------------------------------- inputs
def blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size) bool: the first half of the images carry 1-3 rectangles of random size."""
    masks = np.zeros((n, size, size), bool)
    side = max(size // 8, 2)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - side, 2)
            h, w = rng.integers(1, side + 1, 2)
            masks[i, y : y + h, x : x + w] = True
    return masks


def smoothed_noise_maps(rng: np.random.Generator, masks: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Smoothed noise plus a smoothed copy of the mask: a plausible, imperfect anomaly map."""
    noise = ndimage.gaussian_filter(rng.standard_normal(masks.shape), sigma=(0, sigma, sigma))
    signal = ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, sigma / 2, sigma / 2))
    return (noise / noise.std() + 3.0 * signal).astype(np.float32)


def synthetic_cases(rng: np.random.Generator) -> list[Case]:
    masks = blob_masks(rng, 8, 64)
    ties = np.round(rng.random(masks.shape) * 0.8 + masks * rng.random(masks.shape) * 0.5, 1)
    cases = [("random 8x64x64, ties", masks, ties.astype(np.float32))]
    masks = blob_masks(rng, 32, 256)
    cont = rng.random(masks.shape) * 0.8 + masks * rng.random(masks.shape) * 0.5
    cases.append(("random 32x256x256", masks, cont.astype(np.float32)))
    masks = blob_masks(rng, 100, 256)
    cases.append(("smoothed noise 100x256x256", masks, smoothed_noise_maps(rng, masks)))
    return cases


def edge_cases(rng: np.random.Generator) -> list[Case]:
    one = np.zeros((4, 32, 32), bool)
    one[0, 10:16, 8:20] = True  # a single region
    diagonal = np.zeros((4, 32, 32), bool)
    diagonal[0, 4:8, 4:8] = diagonal[0, 8:12, 8:12] = True  # corners touch: 1 region (8-conn), 2 (4-conn)
    diagonal[1, 20:24, 2:30] = diagonal[1, 24:28, 10:14] = True  # edges touch: 1 region either way
    noise = rng.random(one.shape).astype(np.float32)
    diag_map = noise.copy()
    diag_map[0, 4:8, 4:8] += 1.0  # only one of the two diagonal squares is found
    # 100 normal pixels 0.00..0.99 and a 10-pixel region: FPR hits 0.30 exactly at a threshold
    exact = np.zeros((1, 11, 10), bool)
    exact[0, 10] = True
    exact_map = np.zeros((1, 11, 10), np.float32)
    exact_map[0, :10] = (np.arange(100) / 100.0).reshape(10, 10)
    exact_map[0, 10] = np.linspace(0.6, 0.9, 10)
    return [
        ("single region", one, noise + one * 0.3),
        ("touching regions (diagonal)", diagonal, diag_map),
        ("constant map", one, np.full(one.shape, 0.5, np.float32)),
        ("4 score levels (ties)", one, np.floor((noise + one * 0.5) * 2.0).astype(np.float32)),
        ("perfect map", one, one.astype(np.float32)),
        ("FPR exactly 0.3 at a threshold", exact, exact_map),
        ("no anomalous pixel", np.zeros_like(one), noise),
    ]


def category_cases(root: Path, category: str, size: int, rng: np.random.Generator) -> list[Case]:
    """Real ground truth of ``<root>/<category>/test`` with a colour z-score map and a noise map."""
    from memseg.data.datasets import find_records
    from memseg.data.io import load_image, load_mask, to_tensor

    def image(path: Path) -> np.ndarray:  # (3, size, size) float
        return to_tensor(load_image(path), (size, size)).numpy()

    train = np.stack([image(r.image_path) for r in find_records(root, category, "train")])
    mean, std = train.mean(0), train.std(0) + 1e-3
    test = find_records(root, category, "test")
    masks = np.stack([load_mask(r.mask_path, (size, size)) if r.mask_path else np.zeros((size, size), bool)
                      for r in test])
    z = np.stack([np.sqrt((((image(r.image_path) - mean) / std) ** 2).mean(0)) for r in test])
    zmap = ndimage.gaussian_filter(z, sigma=(0, 2, 2)).astype(np.float32)  # a simple per-pixel colour model
    n = len(test)
    return [(f"{category} z-score {n}x{size}x{size}", masks, zmap),
            (f"{category} smoothed noise {n}x{size}x{size}", masks, smoothed_noise_maps(rng, masks))]


# ------------------------------------------------------------------------------ implementations
def kit_aupro(masks: np.ndarray, maps: np.ndarray) -> float:
    return aupro(masks, maps, fpr_limit=FPR_LIMIT)


def kit_binned_aupro(masks: np.ndarray, maps: np.ndarray) -> float:
    """The kit's optional threshold sampling: 1000 equally spaced thresholds (shows what binning costs)."""
    return aupro(masks, maps, fpr_limit=FPR_LIMIT, num_thresholds=1000)


def anomalib_aupro() -> Metric | None:
    """anomalib's public ``AUPRO`` metric as a numpy function, or None when anomalib is missing."""
    try:
        import torch
        from anomalib.metrics import AUPRO
    except ImportError:
        return None

    def run(masks: np.ndarray, maps: np.ndarray) -> float:
        metric = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=FPR_LIMIT)
        metric.update(types.SimpleNamespace(anomaly_map=torch.from_numpy(maps),
                                            gt_mask=torch.from_numpy(masks.astype(np.float32))))
        return float(metric.compute())

    return run


def mvtec_aupro(folder: str | None) -> Metric | None:
    """The official MVTec AD evaluation (compute_pro + trapezoid up to the limit, / limit), or None."""
    if folder is None:
        return None
    if not (Path(folder) / "pro_curve_util.py").is_file():
        raise SystemExit(f"--mvtec-eval: {folder} holds no pro_curve_util.py (the MVTec AD evaluation code)")
    try:
        importlib.import_module("tifffile")
    except ImportError:  # generic_util imports tifffile for reading maps, which this comparison does not use
        sys.modules["tifffile"] = types.ModuleType("tifffile")
    sys.path.insert(0, str(folder))
    generic_util = importlib.import_module("generic_util")
    pro_curve_util = importlib.import_module("pro_curve_util")

    def run(masks: np.ndarray, maps: np.ndarray) -> float:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            fprs, pros = pro_curve_util.compute_pro(list(maps), list(masks.astype(np.uint8)))
            return float(generic_util.trapezoid(fprs, pros, x_max=FPR_LIMIT) / FPR_LIMIT)

    return run


# ---------------------------------------------------------------------------------- measuring
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], float], repeats: int, clock: str = "wall") -> tuple[float | str, float]:
    """(value or 'Error: ...', median seconds of ``clock`` over ``repeats`` calls)."""
    values, seconds = [], []
    tick = CLOCK[clock]
    for _ in range(repeats):
        t0 = tick()
        try:
            values.append(fn())
        except Exception as err:  # noqa: BLE001 - a reference that fails on an edge case is a result
            return f"{type(err).__name__}: {str(err).splitlines()[0][:40]}", float("nan")
        seconds.append(tick() - t0)
    return values[-1], float(np.median(seconds))


def show(value: float | str) -> str:
    return f"{value:.6f}" if isinstance(value, float) else value


def compare(cases: list[Case], impls: dict[str, Metric], repeats: int, clock: str) -> None:
    names = list(impls)
    print(f"AUPRO@{FPR_LIMIT} (median of {repeats} runs, {clock} seconds; diff = |value - kit|)")
    print("| case | " + " | ".join(f"{n} | s" for n in names) + " | " + " | ".join(
        f"diff {n} | time {n}/kit" for n in names[1:]) + " |")
    worst = {n: 0.0 for n in names[1:]}
    for case, masks, maps in cases:
        results = {n: timed(functools.partial(f, masks, maps), repeats, clock) for n, f in impls.items()}
        kit_value, kit_s = results[names[0]]
        cells = [f"{show(v)} | {s:.3f}" for v, s in results.values()]
        for n in names[1:]:
            value, s = results[n]
            both = isinstance(value, float) and isinstance(kit_value, float)
            diff = abs(value - kit_value) if both else float("nan")
            if both and np.isfinite(diff):
                worst[n] = max(worst[n], diff)
            cells.append(f"{diff:.2e} | {s / kit_s:.2f}" if both else "- | -")
        print(f"| {case} | " + " | ".join(cells) + " |")
    for n, d in worst.items():
        print(f"max |{n} - kit| over the cases where both give a number: {d:.2e}")


def compare_auroc_f1(masks: np.ndarray, maps: np.ndarray, repeats: int, clock: str) -> None:
    """The kit's pixel AUROC and F1-max against scikit-learn (the reference its tests use)."""
    try:
        from sklearn.metrics import precision_recall_curve, roc_auc_score
    except ImportError:
        print("scikit-learn not importable: AUROC/F1 comparison skipped")
        return

    def sk_f1(y: np.ndarray, s: np.ndarray) -> float:
        p, r, _ = precision_recall_curve(y, s)
        return float(np.max(2 * p * r / np.maximum(p + r, 1e-300)))

    y, s = masks.reshape(-1), maps.reshape(-1)
    rows = [("pixel AUROC", lambda: pixel_auroc(masks, maps), lambda: float(roc_auc_score(y, s))),
            ("pixel F1-max", lambda: f1_max(y, s)[0], lambda: sk_f1(y, s))]
    print(f"\nkit vs scikit-learn on {masks.shape[0]}x{masks.shape[1]}x{masks.shape[2]} "
          f"(median of {repeats}, {clock} s)")
    print("| metric | kit | s | sklearn | s | diff | time sklearn/kit |")
    for name, kit_fn, sk_fn in rows:
        (kv, ks), (sv, ss) = timed(kit_fn, repeats, clock), timed(sk_fn, repeats, clock)
        print(f"| {name} | {kv:.8f} | {ks:.3f} | {sv:.8f} | {ss:.3f} | {abs(kv - sv):.1e} | {ss / ks:.2f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mvtec-eval", default=None, help="folder with the MVTec AD evaluation code (pro_curve_util.py)")
    p.add_argument("--data", default=None, help="dataset root in MVTec layout, e.g. ../shared/data/mvtec3d_tire")
    p.add_argument("--category", default="tire")
    p.add_argument("--size", type=int, default=256, help="side the category's masks and images are resized to")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                   help="cpu: process time (steadier on a busy machine)")
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cases = synthetic_cases(rng)
    if args.data is not None:
        cases += category_cases(Path(args.data), args.category, args.size, rng)
    cases += edge_cases(rng)
    impls: dict[str, Metric] = {"kit": kit_aupro, "kit-1000bins": kit_binned_aupro}
    for name, impl in (("anomalib", anomalib_aupro()), ("mvtec", mvtec_aupro(args.mvtec_eval))):
        if impl is None:
            print(f"{name}: not available (see the module docstring); skipped")
        else:
            impls[name] = impl
    compare(cases, impls, args.repeats, args.clock)
    big = next(c for c in cases if c[0].startswith("smoothed noise 100"))
    compare_auroc_f1(big[1], big[2], args.repeats, args.clock)


if __name__ == "__main__":
    main()
