"""Console script `memseg`: synth, simulate, train, evaluate, predict.

Each sub-command is a thin wrapper: argument parsing lives here, the work lives in the
package module named in `_HANDLERS` (a plain Python function the notebooks can call too).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> "module:function"; the function takes the parsed argparse.Namespace and
# returns an exit code. Modules are imported lazily so `memseg --help` stays fast.
_HANDLERS = {
    "synth": "memseg.data.synthetic:cli_synth",
    "simulate": "memseg.simulation:cli_simulate",
    "train": "memseg.training:cli_train",
    "evaluate": "memseg.evaluation:cli_evaluate",
    "predict": "memseg.inference:cli_predict",
}


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the procedural synthetic dataset (MVTec AD layout)")
    p.add_argument("--out", required=True, help="output root; one folder per category is written")
    p.add_argument("--categories", nargs="+", default=None, help="categories to generate (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=None, help="normal training images per category")
    p.add_argument("--n-test", type=int, default=None, help="test images per defect type")
    p.add_argument("--overwrite", action="store_true", help="replace an existing category folder")

    p = sub.add_parser("simulate", help="simulate anomalies on a dataset's normal images (paper §3.1)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--category", required=True)
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "btad", "folder"])
    p.add_argument("--n", type=int, default=16, help="number of simulated samples")
    p.add_argument("--out", default=None, help="output folder for PNGs and summary.json")
    p.add_argument("--no-save", action="store_true", help="write nothing; print throughput (samples/s) last")
    p.add_argument("--threshold", type=float, default=None, help="fix the Perlin threshold T (default: 0.5)")
    p.add_argument("--delta", type=float, default=None, help="fix δ (default: δ ~ U[0.15, 1])")
    p.add_argument("--source", default=None, choices=["texture", "structure"], help="fix the anomaly source")
    p.add_argument("--dtd", default=None, help="DTD root (folder holding images/<category>/*.jpg)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)

    p = sub.add_parser("train", help="train a model on a category")
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "btad", "folder"])
    p.add_argument("--model", default="memseg", choices=["memseg", "draem", "mmr"])
    p.add_argument("--config", default=None, help="YAML file with training/model options")
    p.add_argument("--out", default=None, help="run folder (checkpoints, logs)")
    p.add_argument("--steps", type=int, default=None, help="training iterations (paper: 2700)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--weights", default=None, help="encoder weights: auto (default: ImageNet when timm can get them, else random with a banner), "
                   "imagenet, random, or a local resnet18 file")
    p.add_argument("--dtd", default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    _add_device(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "btad", "folder"])
    p.add_argument("--out", default=None, help="where to write metrics.json and metrics.md")
    p.add_argument("--batch-size", type=int, default=8)
    _add_device(p)

    p = sub.add_parser("predict", help="score images and write heat-map overlays")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="predictions", help="folder for overlay PNGs")
    _add_device(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, func_name = _HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Bad input gets a clear one-line message naming the file, not a traceback.
        print(f"memseg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
