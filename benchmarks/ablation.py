"""Ablation of MemSeg's memory and attention (paper Table 5) at one fixed CPU budget, several seeds.

Every variant is trained with the same data, steps, batch (4 normal + 4 simulated), input size and
seeds, then its *final* checkpoint is evaluated on the test split (never used for any choice).
Besides image AUROC / pixel AUROC / AUPRO@0.3, each run reports what says whether the memory path
and the head do work:

- ``ceiling``: the share of anomalous ground-truth pixels whose probability equals the largest
  value of all test maps (a learned hard ceiling shows up as a large share), and that value;
- ``tied_images``: the share of anomalous test images whose image score ties with another one;
- ``M1``: median and 99th percentile of the spatial attention map M1 on the test images.

    .venv/bin/python benchmarks/ablation.py --data ../shared/data/mvtec3d_tire --category tire \\
        --steps 300 --size 128 --seeds 0 1 2 --runs runs/ablation --out docs/results/ablation-300-128

Runs are resumable: each finished run leaves ``<runs>/<category>/<variant>/seed<k>/result.json``,
which a rerun reuses. ``--before`` records the rows of another checkout (e.g. ``git worktree``
of an older commit, given as ``PYTHONPATH``) under its own label. The page is
``<out>/README.md`` with ``<out>/results.json``; it collects every ``result.json`` under ``--runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.simulation.foreground import TIRE  # noqa: E402

FULL = {"attention": "calibrated", "head": "no_relu"}
VARIANTS: dict[str, dict] = {
    "full": FULL,
    "literal eq. (5)-(7)": {**FULL, "attention": "literal"},
    "attention off": {**FULL, "use_spatial_attention": False},
    "memory off": {**FULL, "use_memory": False},
    "paper head (last ReLU)": {**FULL, "head": "paper"},
    "blocks 1-3 train too": {**FULL, "train_encoder": True},
    "memory shift 1": {**FULL, "memory_shift": 1},
    "literal, memory shift 1": {**FULL, "attention": "literal", "memory_shift": 1},
    "tyre foreground": {**FULL, "simulation": {"foreground": dataclasses.asdict(TIRE)}},
    "literal, tyre foreground": {**FULL, "attention": "literal",
                                 "simulation": {"foreground": dataclasses.asdict(TIRE)}},
    "tyre foreground, memory shift 1": {**FULL, "memory_shift": 1,
                                        "simulation": {"foreground": dataclasses.asdict(TIRE)}},
    "literal, tyre foreground, blocks 1-3 train too": {
        **FULL, "attention": "literal", "train_encoder": True, "simulation": {"foreground": dataclasses.asdict(TIRE)}
    },
    "tire preset, memory off": {
        **FULL, "attention": "literal", "train_encoder": True, "use_memory": False,
        "simulation": {"foreground": dataclasses.asdict(TIRE)},
    },
    "tire preset, small defects": {
        **FULL, "attention": "literal", "train_encoder": True,
        "simulation": {"foreground": dataclasses.asdict(TIRE), "threshold": 0.7, "scale_exp_range": [1, 3]},
    },
    "calibrated, tyre foreground, blocks 1-3 train too, small defects": {
        **FULL, "train_encoder": True,
        "simulation": {"foreground": dataclasses.asdict(TIRE), "threshold": 0.7, "scale_exp_range": [1, 3]},
    },
}
"""Rows of the table: explicit ``model_options`` (so the rows keep their meaning if defaults change)."""

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def ceiling_figures(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict:
    """How many anomalous pixels / images sit at a shared ceiling value (ties are a symptom, not chance)."""
    top = float(maps.max())
    anomalous = masks.astype(bool)
    n_px = int(anomalous.sum())
    at_top = int((maps[anomalous] >= top).sum()) if n_px else 0
    s = scores[labels == 1]
    _, counts = np.unique(s, return_counts=True)
    tied = int(counts[counts > 1].sum())
    return {"max_p": top, "ceiling_share": at_top / max(n_px, 1), "tied_images": tied / max(len(s), 1)}


def attention_stats(model, dataset) -> dict:
    """Median and 99th percentile of M1 over (up to 32) test images; None without memory."""
    import torch

    from memseg.utils import normalize

    if getattr(model, "memory", None) is None:
        return {"M1_median": None, "M1_p99": None}
    n = min(len(dataset), 32)
    x = torch.stack([dataset[i]["image"] for i in range(n)]).to(next(model.parameters()).device)
    with torch.no_grad():
        m1 = model(normalize(x), return_intermediates=True)["M1"].float().flatten().cpu().numpy()
    return {"M1_median": float(np.median(m1)), "M1_p99": float(np.quantile(m1, 0.99))}


def run_one(args, label: str, options: dict, seed: int) -> dict:
    from memseg.data import load_split
    from memseg.engine.metrics import compute_metrics
    from memseg.engine.scoring import collect_predictions
    from memseg.engine.train_config import TrainConfig
    from memseg.engine.training import train

    run_dir = Path(args.runs) / args.category / slug(label) / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    opts = {"weights": args.weights, **options}
    simulation = opts.pop("simulation", {})  # a variant may change the simulation (e.g. the foreground mask M_I)
    cfg = TrainConfig(data=args.data, category=args.category, size=args.size, steps=args.steps, seed=seed,
                      device=args.device, dtd_root=args.dtd, out=str(run_dir), model_options=opts,
                      simulation=simulation,
                      checkpoint_every=max(args.steps // 3, 1), log_every=max(args.steps // 20, 1))
    t0 = time.perf_counter()
    ckpt = run_dir / "checkpoints" / "last.pt"
    # resumable: continue a killed run; a folder left without last.pt starts over (train names what it removes)
    result = train(cfg, progress=not args.quiet, resume=ckpt.is_file(), overwrite=not ckpt.is_file())
    train_s = time.perf_counter() - t0

    from memseg.engine.checkpoint import load_checkpoint

    model, info = load_checkpoint(result.checkpoint, device=args.device)
    dataset = load_split(args.data, args.category, split="test", size=cfg.input_size)
    preds = collect_predictions(model, dataset, device=args.device, top_k=cfg.top_k, progress=False)
    m = compute_metrics(preds.labels, preds.scores, preds.masks, preds.maps, defects=preds.defects)["overall"]
    row = {
        "variant": label, "options": {**opts, **({"simulation": simulation} if simulation else {})}, "seed": seed,
        "category": args.category, "steps": args.steps,
        "size": args.size, "weights_source": info.get("weights_source"),
        **{k: float(m[k]) for k in METRICS},
        **ceiling_figures(preds.maps, preds.masks, preds.scores, preds.labels),
        **attention_stats(model, dataset),
        "validation_image_auroc": (result.validation or {}).get("image_auroc"),
        "train_seconds": round(train_s, 1),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=2))
    return row


def _pct(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" if np.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def head_votes(checkpoint: Path) -> dict:
    """The decoder head's last conv: how many input channels vote 'anomalous' (weight sum of class 1 minus
    class 0 > 0) and p = softmax(bias)[1]. With no channel voting 'anomalous' behind a ReLU, that p is a hard
    ceiling: the most any pixel can reach."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_state"]
    w, b = state["decoder.head.1.weight"], state["decoder.head.1.bias"]
    votes = (w[1] - w[0]).sum(dim=(1, 2))
    return {"anomalous_channels": int((votes > 0).sum()), "head_channels": int(votes.numel()),
            "bias_p": float(torch.sigmoid(b[1] - b[0]))}


def collect(runs: Path) -> list[dict]:
    rows = []
    for p in sorted(runs.glob("*/*/seed*/result.json")):
        row = json.loads(p.read_text())
        ckpt = p.parent / "checkpoints" / "last.pt"
        if "bias_p" not in row and ckpt.is_file():
            row.update(head_votes(ckpt))
        rows.append(row)
    return rows


def table(rows: list[dict], category: str, order: list[str]) -> str:
    from memseg.notebook.ablations import summarise_runs

    keys = [*METRICS, "ceiling_share", "max_p", "bias_p", "anomalous_channels", "tied_images", "M1_median", "M1_p99"]
    summary = {s["variant"]: s for s in summarise_runs([r for r in rows if r["category"] == category], keys)}
    lines = [
        "| variant | seeds | image AUROC | pixel AUROC | AUPRO@0.3 | anomalous px at the max (%) | largest p | "
        "softmax(head bias) | head channels voting 'anomalous' | tied anomalous images (%) | M1 median | M1 p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in [v for v in order if v in summary] + sorted(set(summary) - set(order)):
        s = summary[v]
        m1 = "– | –" if np.isnan(s["M1_median"]) else f"{s['M1_median']:.2g} | {s['M1_p99']:.2g}"
        lines.append(f"| {v} | {s['n']} | " + " | ".join(_pct(s[k], s[f'{k}_std']) for k in METRICS)
                     + f" | {100 * s['ceiling_share']:.2f} | {s['max_p']:.3f} | {s['bias_p']:.3f}"
                     + f" | {s['anomalous_channels']:.1f} / 16"
                     + f" | {_pct(s['tied_images'], s['tied_images_std'])} | {m1} |")
    return "\n".join(lines)


def attention_figure(runs: Path, out: Path, categories: list[str] | None = None,
                     variants: tuple[str, ...] = ("full", "literal eq. (5)-(7)"), seed: int = 0) -> Path | None:
    """One anomalous test image per category: input, ground truth, then M1 and the anomaly map of each variant.

    ``categories`` limits the figure (it shows test images: leave out data whose licence differs from the project's).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from memseg.data import load_split
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.utils import normalize

    cats = sorted(p.name for p in runs.iterdir() if (p / slug(variants[0]) / f"seed{seed}" / "result.json").is_file()
                  and (categories is None or p.name in categories))
    if not cats:
        return None
    fig, axes = plt.subplots(len(cats), 2 + 2 * len(variants), figsize=(3.0 * (2 + 2 * len(variants)), 3.2 * len(cats)),
                             squeeze=False, layout="constrained")
    for row, cat in zip(axes, cats):
        for ax in row:
            ax.axis("off")
        item = None
        for j, v in enumerate(variants):
            ckpt = runs / cat / slug(v) / f"seed{seed}" / "checkpoints" / "last.pt"
            if not ckpt.is_file():
                continue
            model, info = load_checkpoint(ckpt, device="cpu")
            if item is None:
                cfg = info["config"]
                test = load_split(cfg["data"], cat, split="test", size=model.config.input_size)
                masks = [float(test[i]["mask"].float().mean()) if test.labels[i] else 0.0 for i in range(len(test))]
                item = test[int(np.argsort(masks)[len(masks) // 2 + len(masks) // 4])]  # a mid-to-large defect
                row[0].imshow(item["image"].permute(1, 2, 0).numpy())
                row[0].set_title(f"{cat}: {item['defect']}")
                row[1].imshow(item["mask"].reshape(item["mask"].shape[-2:]).numpy(), cmap="gray", vmin=0, vmax=1)
                row[1].set_title("ground truth")
            with torch.no_grad():
                o = model(normalize(item["image"][None]), return_intermediates=True)
            m1 = o["M1"][0, 0].numpy()
            p = torch.softmax(o["logits"], 1)[0, 1].numpy()
            row[2 + 2 * j].imshow(m1, cmap="magma")
            row[2 + 2 * j].set_title(f"{v}: M1 [{m1.min():.2g}, {m1.max():.2g}]", fontsize=9)
            row[3 + 2 * j].imshow(p, cmap="jet", vmin=0, vmax=1)
            row[3 + 2 * j].set_title(f"{v}: anomaly map", fontsize=9)
    path = out / "attention.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def _weights_name(source: str) -> str:
    """A weights source as the page names it: a file by its name, not the machine's path."""
    return Path(source).name if ("/" in source or "\\" in source) else source


def write_page(rows: list[dict], out: Path, command: str, order: list[str], notes: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    cats = sorted({r["category"] for r in rows})
    r0 = rows[0]
    parts = [
        "# Ablation of MemSeg's memory and attention (paper Table 5) at a CPU budget, encoder "
        f"`{_weights_name(r0['weights_source'])}`",
        "",
        f"{r0['steps']} steps, batch 4 normal + 4 simulated, {r0['size']}×{r0['size']}, encoder weights "
        f"`{_weights_name(r0['weights_source'])}` (no ImageNet weights can be downloaded on the development machine: "
        "every row is ImageNet-free), final checkpoint of every run (no checkpoint or setting picked on a test split "
        "per run). Numbers are mean ± std over the seeds (in %). Written by `benchmarks/ablation.py`:",
        "",
        f"    {command}",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}.",
        "",
        "Columns beyond the three metrics: *anomalous px at the max*: share of anomalous ground-truth pixels whose "
        "probability equals the largest value of all test maps; *largest p*: that value; *softmax(head bias)* and "
        "*head channels voting 'anomalous'*: the last conv of the decoder head — when no channel votes 'anomalous' "
        "behind a ReLU (the paper's head), softmax(bias)[1] is a hard ceiling that no pixel can pass; "
        "*tied anomalous images*: share of anomalous images whose score ties with another's; *M1*: the finest "
        "spatial attention map on test images (literal eq. (5)–(7) gives ~0, which multiplies the MSFF outputs away).",
    ]
    for c in cats:
        parts += ["", f"## {c}", "", table(rows, c, order)]
    if notes:
        parts += ["", notes.strip()]
    page = out / "README.md"
    page.write_text("\n".join(parts) + "\n")
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset root (MVTec AD layout)")
    p.add_argument("--category")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"rows to run, of {list(VARIANTS)}")
    p.add_argument("--weights", default="random", help="encoder weights (random keeps the table reproducible offline)")
    p.add_argument("--dtd", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs/ablation")
    p.add_argument("--out", default=None, help="results page folder (default: no page)")
    p.add_argument("--before", default=None, metavar="LABEL",
                   help="run the default model of whatever memseg is importable under this label (an older checkout)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--page-only", action="store_true", help="train nothing: write the page from the finished runs")
    p.add_argument("--notes", default=None, help="a markdown file appended to the page (the reading of the table)")
    p.add_argument("--figure-categories", nargs="+", default=None,
                   help="categories shown in attention.png (default all; it shows test images, so leave out data "
                        "whose licence differs from the project's)")
    args = p.parse_args(argv)
    if not args.page_only and not (args.data and args.category):
        p.error("--data and --category are required (unless --page-only)")

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    jobs = [] if args.page_only else [(args.before, {})] if args.before else [(v, VARIANTS[v]) for v in args.variants]
    for label, options in jobs:
        for seed in args.seeds:
            r = run_one(args, label, options, seed)
            print(f"{args.category} | {label} | seed {seed}: image {r['image_auroc']:.3f} pixel {r['pixel_auroc']:.3f} "
                  f"AUPRO {r['aupro']:.3f} | max p {r['max_p']:.3f}, at max {100 * r['ceiling_share']:.1f} % | "
                  f"M1 median {r['M1_median']} | {r['train_seconds']:.0f} s", flush=True)
    if args.out:
        rows = collect(Path(args.runs))
        command = " ".join(["python", "benchmarks/ablation.py", *(argv if argv is not None else sys.argv[1:])])
        order = [*(r["variant"] for r in rows if r["variant"] not in VARIANTS), *VARIANTS]
        notes = Path(args.notes).read_text() if args.notes else ""
        page = write_page(rows, Path(args.out), command, list(dict.fromkeys(order)), notes)
        figure = attention_figure(Path(args.runs), Path(args.out), args.figure_categories)
        if figure is not None:
            page.write_text(page.read_text() + f"\n![M1 and anomaly maps, seed 0]({figure.name})\n")
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
