"""Image / pixel AUROC against the number of memory samples N (paper Fig. 8) at one fixed CPU budget.

The paper trains with N = 1, 15, 30 and 70 memory samples and reports the mean AUC over MVTec AD: more
samples locate anomalies better up to a point, after which the images kept for the memory are missing
from training. This script trains the kit's default model once per (N, seed) — everything else equal —
and evaluates the *final* checkpoint of each run on the test split (never used for any choice):

    .venv/bin/python benchmarks/memory_size.py --data data/synthetic --category washer \\
        --sizes 1 15 30 70 --seeds 0 1 2 --runs runs/memory-size --out docs/results/memory-size-300-128

Runs are resumable (``<runs>/<category>/n-<N>/seed<k>/result.json``, reused by a rerun); ``--page-only``
rewrites the page from finished runs. The page is ``<out>/README.md`` with ``<out>/results.json`` (one row
per run) and ``<out>/fig8.png``; notebook 02 plots ``results.json`` with
:func:`memseg.notebook.ablations.memory_size_figure`, training nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablation import FULL, METRICS, _pct, run_one  # noqa: E402


def label(n: int) -> str:
    return f"N={n}"


def summary_table(rows: list[dict]) -> str:
    from memseg.notebook.ablations import summarise_runs

    lines = []
    for category in sorted({r["category"] for r in rows}):
        mine = [r for r in rows if r["category"] == category]
        summary = {s["variant"]: s for s in summarise_runs(mine, list(METRICS))}
        lines += [f"## {category}", "", "| N | seeds | image AUROC | pixel AUROC | AUPRO@0.3 |",
                  "| --- | --- | --- | --- | --- |"]
        for n in sorted({r["memory_size"] for r in mine}):
            s = summary[label(n)]
            lines.append(f"| {n} | {s['n']} | " + " | ".join(_pct(s[k], s[f'{k}_std']) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def write_page(rows: list[dict], out: Path, command: str, notes: str) -> Path:
    from memseg.notebook.ablations import memory_size_figure

    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    results.write_text(json.dumps(rows, indent=2) + "\n")
    fig = memory_size_figure(results)
    fig.savefig(out / "fig8.png", dpi=110, bbox_inches="tight")
    r0 = rows[0]
    page = [
        "# Image and pixel AUROC against the memory size N (paper Fig. 8) at a CPU budget",
        "",
        f"{r0['steps']} steps, batch 4 normal + 4 simulated, {r0['size']}×{r0['size']}, encoder weights "
        f"`{r0['weights_source']}`, the kit's default recipe for them, final checkpoint of every run; only N changes. "
        "Numbers are mean ± std over the seeds (in %). Written by `benchmarks/memory_size.py`:",
        "",
        f"    {command}",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}.",
        "",
        summary_table(rows),
        "![AUROC against N](fig8.png)",
        "",
        notes,
    ]
    (out / "README.md").write_text("\n".join(page).rstrip() + "\n")
    return out / "README.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset root (MVTec AD layout)")
    p.add_argument("--category")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 15, 30, 70], help="memory sizes N (paper: 1 15 30 70)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", default="offline", help="encoder weights (offline: the kit's shipped encoder)")
    p.add_argument("--dtd", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs/memory-size")
    p.add_argument("--out", default=None, help="results page folder (default: no page)")
    p.add_argument("--notes", default=None, help="a markdown file appended to the page (the reading)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--page-only", action="store_true", help="train nothing: write the page from the finished runs")
    args = p.parse_args(argv)
    if not args.page_only and not (args.data and args.category):
        p.error("--data and --category are required (unless --page-only)")
    if any(n < 1 for n in args.sizes):
        p.error(f"--sizes: every N must be at least 1, got {args.sizes}")

    if not args.page_only:
        for n in args.sizes:
            for seed in args.seeds:
                r = run_one(args, label(n), {**FULL, "memory_size": n}, seed)
                print(f"{args.category} | N={n} | seed {seed}: image {r['image_auroc']:.3f} pixel "
                      f"{r['pixel_auroc']:.3f} AUPRO {r['aupro']:.3f} | {r['train_seconds']:.0f} s", flush=True)
    if args.out:
        rows = []
        for path in sorted(Path(args.runs).glob("*/n-*/seed*/result.json")):
            row = json.loads(path.read_text())
            row["memory_size"] = int(row["options"]["memory_size"])
            rows.append(row)
        if not rows:
            p.error(f"--runs {args.runs}: no finished run (no */n-*/seed*/result.json) to write a page from")
        command = " ".join(["python", "benchmarks/memory_size.py", *(argv if argv is not None else sys.argv[1:])])
        notes = Path(args.notes).read_text() if args.notes else ""
        print(write_page(rows, Path(args.out), command, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
