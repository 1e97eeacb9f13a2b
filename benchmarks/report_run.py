"""Write a results page for a finished training run: metrics table, loss curve, prediction grid.

The page reports what `memseg evaluate` measured on the test split for the run's *final*
checkpoint (no model selection on the test set) and how long training took, so a long run
(e.g. the paper's 2700 steps) leaves a reviewable record. Nothing is trained or re-measured
except the few test predictions drawn in ``predictions.png``.

    .venv/bin/python benchmarks/report_run.py --run runs/tire --metrics runs/tire/eval-tire/metrics.json \
        --data ../shared/data/mvtec3d_tire --category tire --out docs/results/tire-2700-random

Writes ``<out>/README.md``, ``<out>/loss.png`` and ``<out>/predictions.png``; an existing page
is an error unless ``--overwrite``. ``--predictions 0`` leaves the prediction grid out: it shows test
images, so leave it out of pages committed next to data whose licence differs from the project's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.engine.run_folder import LOG_JSONL  # noqa: E402


def run_timing(log: Path) -> dict:
    """Steps logged and seconds per step (median, total) from a run's per-step JSONL log."""
    seconds = [json.loads(line)["seconds"] for line in log.read_text().splitlines() if line.strip()]
    if not seconds:
        raise ValueError(f"{log}: the training log has no steps")
    ordered = sorted(seconds)
    return {"steps": len(seconds), "total_s": float(sum(seconds)), "median_step_s": float(ordered[len(ordered) // 2])}


def write_report(run: Path, metrics_json: Path, data: Path, category: str, out: Path, commands: list[str],
                 n_predictions: int = 4, overwrite: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memseg.engine.cached_run import replay_log
    from memseg.engine.evaluation import metrics_markdown
    from memseg.notebook.training_views import LiveLossPlot, prediction_grid, predictions

    page = out / "README.md"
    if page.exists() and not overwrite:
        raise ValueError(f"{page} already exists; choose another --out (or --overwrite)")
    result = json.loads(metrics_json.read_text())
    checkpoint = Path(result["checkpoint"])
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{metrics_json} names the checkpoint {checkpoint}, which does not exist")
    out.mkdir(parents=True, exist_ok=True)

    live = LiveLossPlot(every=10**9, title=f"training loss, {category} (eq. 10)")
    replay_log(run / LOG_JSONL, live)
    fig = live.figure()
    fig.savefig(out / "loss.png", dpi=80)
    plt.close(fig)

    if n_predictions:
        preds = predictions(checkpoint, data, category, n_anomalous=n_predictions - 1, n_normal=1)
        titles = [str(d) for d in preds["defects"]]
        fig = prediction_grid(preds["images"], preds["masks"], preds["maps"], preds["scores"], n=len(titles),
                              title=f"{category}: final checkpoint on test images ({', '.join(titles)})")
        fig.savefig(out / "predictions.png", dpi=50)
        plt.close(fig)

    timing = run_timing(run / LOG_JSONL)
    lines = [
        metrics_markdown(result).replace(str(checkpoint), checkpoint.name),
        "## Training",
        "",
        f"{timing['steps']} steps logged, {timing['total_s'] / 60:.1f} min of step time "
        f"(median {timing['median_step_s']:.2f} s per batch-8 step) on {platform.machine()} "
        f"CPU only; evaluation {result.get('ms_per_image', float('nan')):.0f} ms per test image.",
        "",
        "![loss](loss.png)",
        "",
        *(["![predictions](predictions.png)", ""] if n_predictions else []),
        "## Commands",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="run folder (config.yaml, train_log.jsonl, checkpoints/)")
    p.add_argument("--metrics", required=True, type=Path, help="metrics.json written by `memseg evaluate`")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--command", action="append", default=[],
                   help="a command that made the run (repeatable; shown on the page)")
    p.add_argument("--predictions", type=int, default=4, help="test images in predictions.png (0: no prediction grid)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    page = write_report(args.run, args.metrics, args.data, args.category, args.out, args.command,
                        n_predictions=args.predictions, overwrite=args.overwrite)
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
