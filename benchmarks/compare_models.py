"""Train MemSeg, DRAEM and MMR with the same budget on one category and compare them.

Same data, same image size, same number of steps and batch (4 normal + 4 simulated), same
honest protocol (final checkpoints, no test-set selection, AUPRO@0.3). Each model uses its own
optimiser settings (``<Config>.train_overrides``) and, with ``--small``, its CPU-sized variant.

    .venv/bin/python benchmarks/compare_models.py --data ../shared/data/mvtec3d_tire --category tire \
        --size 128 --steps 300 --small --out runs/compare-tire

Prints a markdown table and writes ``<out>/comparison.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memseg.engine.evaluation import evaluate
from memseg.engine.train_config import TrainConfig
from memseg.engine.training import train
from memseg.notebook.baselines import comparison_configs


def budget_configs(data: str, category: str, size: int, steps: int, out: Path, small: bool, weights: str,
                   dtd: str | None, seed: int, device: str) -> dict[str, TrainConfig]:
    """The three runs (:func:`memseg.notebook.baselines.comparison_configs`, the recipe notebook 06 uses too)."""
    base = TrainConfig(data=data, category=category, size=size, steps=steps, seed=seed, device=device,
                       dtd_root=dtd, checkpoint_every=max(steps, 1))
    return comparison_configs(base, quick=small, weights=weights, out=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--small", action="store_true", help="CPU-sized DRAEM/MMR variants (quick mode)")
    p.add_argument("--weights", default="random", help="encoder/teacher weights for MemSeg and MMR")
    p.add_argument("--dtd", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", default=["MemSeg", "DRAEM", "MMR"])
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)

    out = Path(args.out)
    configs = budget_configs(args.data, args.category, args.size, args.steps, out, args.small, args.weights,
                             args.dtd, args.seed, args.device)
    rows = []
    for name in args.models:
        cfg = configs[name]
        t0 = time.perf_counter()
        # resume a killed run, else start over (train names what it removes)
        last = Path(cfg.out) / "checkpoints" / "last.pt"
        result = train(cfg, progress=True, resume=last.is_file(), overwrite=not last.is_file())
        seconds = time.perf_counter() - t0
        m = evaluate(result.checkpoint, args.data, args.category, device=args.device, progress=True,
                     out=Path(cfg.out) / "eval", overwrite=True)["overall"]
        rows.append({"model": name, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                     "aupro": m["aupro"], "f1_max": m["f1_max"], "train_seconds": round(seconds, 1),
                     "steps": cfg.steps, "size": args.size, "optimizer": cfg.optimizer, "lr": cfg.lr,
                     "model_options": cfg.model_options})
        print(f"{name}: image AUROC {m['image_auroc']:.3f} pixel AUROC {m['pixel_auroc']:.3f} "
              f"AUPRO@0.3 {m['aupro']:.3f} ({seconds:.0f} s)", flush=True)

    print(f"\n{args.category}: {args.steps} steps, batch 8, {args.size}x{args.size}, weights {args.weights}, seed "
          f"{args.seed}\n")
    print("| model | image AUROC | pixel AUROC | AUPRO@0.3 | F1-max | train s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | "
              f"{r['f1_max']:.3f} | {r['train_seconds']:.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
