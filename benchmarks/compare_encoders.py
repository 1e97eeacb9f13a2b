"""Side by side: the same MemSeg variants with different frozen encoders (random, the kit's offline encoder, ...).

Reads the ``results.json`` that ``benchmarks/ablation.py`` writes for each encoder (one ablation page per
encoder, each 3 seeds, final checkpoints) and writes one page with a table per category: image AUROC,
pixel AUROC and AUPRO@0.3 as mean ± std over the seeds, one column group per encoder.

    python benchmarks/compare_encoders.py \\
        --results random=docs/results/ablation-300-128/results.json \\
                  offline=docs/results/ablation-offline-300-128/results.json \\
        --variants full "literal eq. (5)-(7)" --out docs/results/trained-encoder --notes notes.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3"}


def cell(values: list[float]) -> str:
    """mean ± sample std in %, over the seeds."""
    if not values:
        return "–"
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f} (1 seed)"


def table(sources: dict[str, list[dict]], category: str, variants: list[str]) -> str:
    lines = ["| encoder | variant | seeds | " + " | ".join(METRICS.values()) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for variant in variants:
        for name, rows in sources.items():
            runs = [r for r in rows if r["category"] == category and r["variant"] == variant]
            if runs:
                lines.append(f"| {name} | {variant} | {len(runs)} | "
                             + " | ".join(cell([r[k] for r in runs]) for k in METRICS) + " |")
    return "\n".join(lines)


def load_rows(path: Path) -> list[dict]:
    """An ablation page's ``results.json``, or an ablation ``--runs`` folder (every ``*/*/seed*/result.json``)."""
    if path.is_dir():
        return [json.loads(p.read_text()) for p in sorted(path.glob("*/*/seed*/result.json"))]
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", nargs="+", required=True, metavar="NAME=PATH",
                   help="per encoder: an ablation.py page's results.json or its --runs folder, named")
    p.add_argument("--variants", nargs="+", default=["full", "literal eq. (5)-(7)"])
    p.add_argument("--out", required=True, help="folder of the page (README.md)")
    p.add_argument("--title", default="MemSeg with a random and with trained frozen encoders, at a CPU budget")
    p.add_argument("--notes", default=None, help="markdown appended to the page")
    args = p.parse_args(argv)
    sources = {}
    for item in args.results:
        name, _, path = item.partition("=")
        if not path:
            p.error(f"--results: expected NAME=RESULTS_JSON, got {item!r}")
        sources.setdefault(name, []).extend(load_rows(Path(path)))  # a name may come from several places
    cats = sorted({r["category"] for rows in sources.values() for r in rows})
    command = shlex.join(["python", "benchmarks/compare_encoders.py", *(argv if argv is not None else sys.argv[1:])])
    parts = [f"# {args.title}", "",
             "300 steps, batch 4 normal + 4 simulated, 128×128, final checkpoint of every run; mean ± std over the "
             "seeds (in %). Each encoder's runs come from its own `benchmarks/ablation.py` page (the files below); "
             "this page was written by", "", f"    {command}"]
    for c in cats:
        parts += ["", f"## {c}", "", table(sources, c, args.variants)]
    if args.notes:
        parts += ["", Path(args.notes).read_text().strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"encoder": name, **r} for name, rs in sources.items() for r in rs]
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "README.md").write_text("\n".join(parts) + "\n")
    print(out / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
