"""Why a category's image AUROC stays low while its pixel AUROC is high: where the maps peak, per trained run.

For each finished run (a ``final.pt`` under ``--runs``, as :mod:`benchmarks.ablation` leaves them) it scores
the test split once and reports, per run:

- ``image``: image AUROC of the kit's score (mean of the top-k pixels, paper §4.1);
- ``peak in defect``: image AUROC if an anomalous image were scored only by the highest map value *inside
  its ground-truth region* and a normal image by its highest value anywhere. Low means the maps' peaks on
  normal images lie above the response on the real defects: no image score built from the map can
  separate them, whatever its k;
- ``defect share``: the share of anomalous images whose top pixel lies inside the defect;
- ``DI* at inference``: the largest change of any pixel's probability when DI* is set to zero and the
  attention maps are computed again from it (eq. 3-7) — how much the memory does at test time;
- per defect type, the image AUROC of the kit's score.

It reads the test split's masks to *explain* a result; nothing here chooses an option.

    .venv/bin/python benchmarks/defect_peaks.py --data ../shared/data/mvtec3d_tire --category tire \\
        --runs runs/abl-offline/tire --out docs/results/tire-defect-peaks
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def memory_effect(model, images) -> float | None:
    """Largest |Δp| over the images' pixels when DI* and the attention maps it feeds are zeroed (None: no memory)."""
    import torch

    from memseg.utils import normalize

    if getattr(model, "memory", None) is None:
        return None
    with torch.no_grad():
        stem, ii, di, _, maps = model.compare(normalize(images))
        use = model.config.use_spatial_attention
        full = model.segment(stem, ii, di, maps if use else None, images.shape[-2:])[0]
        zero_di = [torch.zeros_like(d) for d in di]
        zero_maps = [torch.zeros_like(m) for m in maps] if use else None
        none = model.segment(stem, ii, zero_di, zero_maps, images.shape[-2:])[0]
    p = [model.anomaly_probability(lg.float()) for lg in (full, none)]
    return float((p[0] - p[1]).abs().max())


def peak_statistics(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict:
    """``peak_in_defect`` (AUROC: an anomalous image's highest value inside its mask against a normal image's
    highest value), ``defect_share`` (share of anomalous images whose top pixel lies inside the mask) and
    ``defect_area`` (each anomalous image's mask area, as a share of the image).

    Examples:
        >>> maps = np.zeros((2, 4, 4)); masks = np.zeros((2, 4, 4), bool); masks[1, 0, 0] = True
        >>> maps[0, 3, 3] = 0.5; maps[1, 0, 0] = 0.9  # the normal image peaks at 0.5, the defect at 0.9
        >>> peak_statistics(maps, masks, np.array([0, 1]))
        {'peak_in_defect': 1.0, 'defect_share': 1.0, 'defect_area': [0.0625]}
    """
    from memseg.engine.metrics import image_auroc

    maps = np.asarray(maps).reshape(len(maps), -1)
    masks = np.asarray(masks).astype(bool).reshape(len(maps), -1)
    labels = np.asarray(labels)
    peak = maps.max(1)
    inside = np.array([m[k].max() if k.any() else p for m, k, p in zip(maps, masks, peak)])
    anomalous = labels == 1
    top_in_defect = [bool(masks[i, maps[i].argmax()]) for i in np.flatnonzero(anomalous)]
    return {"peak_in_defect": image_auroc(labels, np.where(anomalous, inside, peak)),
            "defect_share": float(np.mean(top_in_defect)) if top_in_defect else float("nan"),
            "defect_area": [float(a) for a in masks[anomalous].mean(1)]}


def diagnose(checkpoint: Path, data: str, category: str, top_k: int = 100) -> dict:
    import torch

    from memseg.data import load_split
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.engine.metrics import image_auroc
    from memseg.engine.scoring import collect_predictions

    model, info = load_checkpoint(checkpoint, device="cpu")
    model.eval()
    size = tuple(model.input_size)
    dataset = load_split(data, category, split="test", size=size)
    preds = collect_predictions(model, dataset, device="cpu", top_k=top_k, progress=False)
    labels = preds.labels
    n = min(len(dataset), 16)
    images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(n)]).float()
    images = images / 255.0 if float(images.max()) > 1.5 else images
    row = {
        "size": "×".join(map(str, size)),
        "image": image_auroc(labels, preds.scores),
        **peak_statistics(preds.maps, preds.masks, labels),
        "memory_effect": memory_effect(model, images),
        "per_defect": {},
    }
    defects = np.array(preds.defects)
    for d in sorted(set(preds.defects) - {"good"}):
        sel = (defects == d) | (labels == 0)
        row["per_defect"][d] = image_auroc(labels[sel], preds.scores[sel])
    return row


def variant_label(run: Path, folder: str) -> str:
    """The row's label: the variant name that ``benchmarks/ablation.py`` wrote in ``result.json``, else the folder."""
    try:
        return str(json.loads((run / "result.json").read_text())["variant"])
    except (OSError, ValueError, KeyError, TypeError):
        return folder


def _fmt(values: list[float | None]) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    if np.all(np.isnan(v)):
        return "–"
    v = v[~np.isnan(v)]
    if len(v) == 1:
        return f"{100 * v[0]:.1f}"
    return f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1):.1f}"  # sample std, as benchmarks/ablation.py


def write_page(results: dict[str, list[dict]], out: Path, command: str, category: str, notes: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    defects = sorted({d for rows in results.values() for r in rows for d in r["per_defect"]})
    head = ["variant", "seeds", "image AUROC", "peak in defect", "top pixel in defect", "max Δp, DI* and M zeroed",
            *[f"image AUROC, {d}" for d in defects]]
    lines = [
        f"# Where the maps peak: `{category}`",
        "",
        f"Made by `{command}` on {platform.machine()} ({platform.system()}), Python {platform.python_version()}.",
        "All numbers in %, mean ± sample std over the seeds; final checkpoints; the test split's masks are read only",
        "to explain the results (no option is chosen here). Columns: the docstring of `benchmarks/defect_peaks.py`.",
    ]
    areas = next((r["defect_area"] for rows in results.values() for r in rows), [])
    if areas:
        p10, p50, p90 = (100 * np.quantile(areas, q) for q in (0.1, 0.5, 0.9))
        lines.append(f"The real defects cover {p50:.2f} % of the image (median; 10th–90th percentile "
                     f"{p10:.2f}–{p90:.2f} %).")
    lines += [
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for variant, rows in results.items():
        cells = [variant, str(len(rows)), _fmt([r["image"] for r in rows]), _fmt([r["peak_in_defect"] for r in rows]),
                 _fmt([r["defect_share"] for r in rows]), _fmt([r["memory_effect"] for r in rows]),
                 *[_fmt([r["per_defect"].get(d) for r in rows]) for d in defects]]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", notes.strip()]
    page = out / "README.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset root (MVTec AD layout)")
    p.add_argument("--category", required=True)
    p.add_argument("--runs", required=True, nargs="+",
                   help="folders of <variant>/seed<k>/final.pt (benchmarks/ablation.py's --runs/<category>)")
    p.add_argument("--variants", nargs="+", default=None, help="variant folders to read (default: all)")
    p.add_argument("--out", required=True, help="results page folder")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--notes", default=None, help="a markdown file appended to the page (the reading of the table)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    notes = ""
    if args.notes:
        try:
            notes = Path(args.notes).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            p.error(f"--notes {args.notes}: cannot read it as UTF-8 text ({err.__class__.__name__})")
    for runs in map(Path, args.runs):
        if not runs.is_dir():
            p.error(f"--runs {runs}: no such folder (expected <variant>/seed<k>/final.pt under it)")
    results: dict[str, list[dict]] = {}
    for runs in map(Path, args.runs):
        for name in args.variants or sorted(d.name for d in runs.iterdir() if d.is_dir()):
            for ckpt in sorted((runs / name).glob("seed*/final.pt")):
                row = diagnose(ckpt, args.data, args.category, args.top_k)
                label = f"{variant_label(ckpt.parent, name)}, {row['size']}"
                results.setdefault(label, []).append(row)
                print(f"{label} {ckpt.parent.name}: image {100 * row['image']:.1f} peak-in-defect "
                      f"{100 * row['peak_in_defect']:.1f} memory effect {row['memory_effect']}", flush=True)
    if not results:
        p.error(f"--runs {' '.join(args.runs)}: no <variant>/seed<k>/final.pt found")
    command = "python benchmarks/defect_peaks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_page(results, Path(args.out), command, args.category, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
