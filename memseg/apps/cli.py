"""Console script `memseg`: synth, simulate, pretrain, train, evaluate, predict, export, benchmark.

Argument parsing lives here; what each sub-command does is a ``run_<command>`` handler in
:mod:`memseg.apps.commands`, imported after parsing so that ``memseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings

from memseg.data.io import DECODE_MAX_PIXELS, MAX_IMAGE_PIXELS

_WEIGHTS_HELP = ("encoder weights: auto (default: ImageNet when timm can get them, else the kit's offline encoder, "
                 "with a banner), imagenet (the paper's: torchvision's, timm:resnet18.tv_in1k), timm:<tag> (another "
                 "resnet18 tag of timm), offline (the kit's own, made by memseg pretrain), random, or a resnet18 file")
_LAYOUT_HELP = "dataset layout: auto picks mvtec when <category>/train/good exists, btad for train/ok, else folder"
_DTD_HELP = ("DTD root (folder holding images/<category>/*.jpg) for texture anomalies (default: $MEMSEG_DTD, "
             "else <project>/data/dtd, else <project>/../shared/data/dtd, else structure anomalies only)")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the default is None/False or already stated."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _number_in(low: float, high: float, low_open: bool = False, high_open: bool = False, why: str = ""):
    """argparse type: a finite float within [low, high] (``*_open``: that end excluded); argparse names the flag."""
    import math

    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = math.isfinite(value) and (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}{why}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memseg")
    except PackageNotFoundError:
        from memseg import __version__

        return __version__


def _device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (argparse names the flag in its error; as
    :func:`memseg.utils.check_device_name`, without importing torch while parsing)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this kit runs on; expected auto, cpu, cuda or "
                                         "cuda:<index>")
    return text.strip()


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=_device_name,
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:<index>")


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                   help="what runs the model: auto runs a .onnx file in onnxruntime, and a .pt checkpoint on the CPU "
                        "through its ONNX export (made once, cached in $MEMSEG_CACHE_DIR or ~/.cache/memseg; predict "
                        "exports only for 200 images or more and runs fewer in torch until it is cached; torch without "
                        "the deploy extra), on a GPU in torch; torch or onnxruntime insist on one. On a CPU with "
                        "native bf16, predict's auto route runs the decoder half in bf16 (OpenVINO) and scores images "
                        "near the threshold again in float32; --backend torch keeps everything in float32")


def _add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "btad", "folder"], help=_LAYOUT_HELP)


def _add_data(p: argparse.ArgumentParser, category_help: str = "category folder under --data") -> None:
    """--data, --category and --layout: the dataset a command reads."""
    p.add_argument("--data", required=True, help="dataset root (holds one folder per category)")
    p.add_argument("--category", required=True, help=category_help)
    _add_layout(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memseg", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the memseg version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)

    p = add("synth", "generate the procedural synthetic dataset (MVTec AD layout)")
    p.add_argument("--out", required=True, help="output root; one folder per category is written")
    p.add_argument("--categories", nargs="+", default=None, help="categories to generate (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same images)")
    p.add_argument("--size", type=_positive_int, default=256, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=None, help="normal training images per category (default: 80)")
    p.add_argument("--n-test", type=int, default=None,
                   help="test images per defect type and in test/good (default: 8 per defect type, 10 good)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing category folder")

    p = add("simulate", "simulate anomalies on a dataset's normal images (paper §3.1)")
    _add_data(p)
    p.add_argument("--n", type=_positive_int, default=16, help="number of simulated samples")
    p.add_argument("--out", default=None, help="output folder for PNGs and summary.json (required unless --no-save)")
    p.add_argument("--no-save", action="store_true", help="write nothing; print throughput (samples/s) last")
    p.add_argument("--threshold", type=_number_in(-1, 1, True, True, " (the Perlin noise P lies in about [-1, 1])"),
                   default=None, help="fix the Perlin threshold T, in (-1, 1) (default: 0.5)")
    p.add_argument("--delta", type=_number_in(0, 1), default=None, help="fix δ, in [0, 1] (default: δ ~ U[0.15, 1])")
    p.add_argument("--source", default=None, choices=["texture", "structure"],
                   help="fix the anomaly source (default: either, per the category's settings)")
    p.add_argument("--dtd", default=None, help=_DTD_HELP)
    p.add_argument("--size", type=_positive_int, default=256, help="side in pixels the images are resized to")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images simulated per batch")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same samples)")
    _add_device(p)

    p = add("pretrain", "make a ResNet18 encoder without downloading anything: stem and blocks 1-3 trained end to "
                        "end under MemSeg's objective on a category's normal images (resumable, with a time budget); "
                        "use the file with train --weights FILE")
    _add_data(p, "category folder under --data whose normal images it learns from")
    p.add_argument("--out", required=True, help="the encoder file to write (.pt; its provenance goes to the .json "
                   "beside it, the resumable run to <out>.run/)")
    p.add_argument("--steps", type=_positive_int, default=3000, help="length of the schedule")
    p.add_argument("--minutes", type=float, default=None, help="time budget: stop after it and write the encoder from "
                   "that step (--resume goes on)")
    p.add_argument("--size", type=_positive_int, default=128, help="input side in pixels (a multiple of 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--memory-size", type=_positive_int, default=30, help="N memory samples compared with every input")
    p.add_argument("--dtd", default=None, help=_DTD_HELP)
    p.add_argument("--resume", action="store_true", help="continue <out>.run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over (removes the previous run's files) and replace --out")
    _add_device(p)

    p = add("train", "train a model on a category")
    _add_data(p)
    p.add_argument("--model", default=None, choices=["memseg", "draem", "mmr"],
                   help="model to train (default: the --config file's, else memseg)")
    p.add_argument("--config", default=None, help="YAML file of options: TrainConfig keys, model_options: (the model's "
                   "config) and simulation: (SimulationConfig); see configs/memseg_default.yaml")
    p.add_argument("--set", action="append", default=None, metavar="KEY.PATH=VALUE",
                   help="set any option, typed by its field (repeatable), e.g. --set lr=1e-3 --set "
                        "model_options.attention=literal --set simulation.foreground.measure=warmth; precedence: "
                        "defaults < --config < --set < the flags above and below")
    p.add_argument("--out", default=None, help="run folder (checkpoints, logs) (default: runs/<category>-<model>)")
    p.add_argument("--steps", type=int, default=None,
                   help="training iterations (default: the --config file's, else 2700 as in the paper)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a non-empty run folder (removes the previous run's files, naming each)")
    p.add_argument("--weights", default=None, help=_WEIGHTS_HELP)
    p.add_argument("--dtd", default=None, help=_DTD_HELP)
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (default: the --config file's, else 256)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the --config file's, else 0)")
    _add_device(p)

    p = add("evaluate", "evaluate a checkpoint on the test split")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train: <run>/final.pt (or the resumable "
                                                       "<run>/checkpoints/last.pt)")
    _add_data(p)
    p.add_argument("--out", default=None, help="where to write metrics.json and metrics.md "
                   "(default: <run>/eval-<category>, or a fresh eval-<category>-2 ... when taken)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="test images per forward pass")
    _add_backend(p)
    _add_device(p)

    p = add("predict", "score images and write heat-map overlays and predictions.csv")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train: <run>/final.pt (or the resumable "
                                                       "<run>/checkpoints/last.pt)")
    p.add_argument("images", nargs="+", help="image files and/or folders (a folder: the image files directly in it)")
    p.add_argument("--out", default="predictions", help="folder for predictions.csv and the overlay PNGs, "
                   "which mirror the inputs' paths relative to their common folder")
    p.add_argument("--max-pixels", type=_positive_int, default=MAX_IMAGE_PIXELS,
                   help=f"refuse images with more pixels (width x height); images above {DECODE_MAX_PIXELS:,} px "
                        "are decoded downscaled and their overlays written at that bounded size")
    _add_backend(p)
    _add_device(p)

    p = add("export", "export a trained MemSeg checkpoint to ONNX (memory bank and DI* search included), "
                      "checked against PyTorch")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train: <run>/final.pt")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--out", required=True, help="the .onnx file to write (never replaced unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = add("benchmark", "train + evaluate every category with its preset for several seeds; a table like the "
                         "paper's Tables 1-2 (resumable: done runs are skipped, interrupted ones resumed)")
    p.add_argument("--data", required=True, help="dataset root (MVTec AD, BTAD, ...: one folder per category)")
    p.add_argument("--categories", default="all", help="comma-separated category folders under --data, or all")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (one run per category and seed)")
    p.add_argument("--out", required=True, help="benchmark folder: <out>/<category>/seed<k>/ (run + eval), "
                   "<out>/results.json and results.md")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training iterations (default: 2700 as in the paper)")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="input side in pixels (default: 256 as in the paper)")
    p.add_argument("--weights", default=None, help=_WEIGHTS_HELP)
    p.add_argument("--dtd", default=None, help=_DTD_HELP)
    _add_device(p)
    return parser


# what each command's memory grows with: named when an allocation fails although the estimate let it start
_MEMORY_FLAGS = {"synth": "--size", "simulate": "--size, --n or --batch-size", "pretrain": "--size or --memory-size",
                 "train": "--size (or model_options.memory_size, batch_normal, batch_anomalous)",
                 "evaluate": "--batch-size", "predict": "--max-pixels", "export": "the model's input size",
                 "benchmark": "--size"}


def _out_of_memory(err: BaseException, command: str) -> str | None:
    """One line for a failed allocation (``MemoryError``, torch's ``can't allocate memory``), else None."""
    import re

    text = " ".join(str(err).split())
    if not isinstance(err, MemoryError) and "can't allocate memory" not in text:
        return None
    from memseg.config import format_bytes, machine_memory

    asked = re.search(r"allocate (\d+) bytes", text)
    size = re.search(r"allocate ([\d.]+) ?([KMGTP]i?B)", text)
    amount = (format_bytes(int(asked.group(1))) if asked else f"{size.group(1).rstrip('.')} {size.group(2)}" if size
              else "more memory")
    total, what = machine_memory()
    return (f"out of memory: an allocation of {amount} failed (this machine has {format_bytes(total)} {what}); "
            f"lower {_MEMORY_FLAGS.get(command, 'the size')}")


def _error_text(err: BaseException, command: str = "") -> str:
    """One line for an error: an OSError as ``<path>: <reason>``, a failed allocation as what to lower, anything
    else as its message."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        target = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{err.filename}{target}: {err.strerror}"
    memory = _out_of_memory(err, command)
    if memory is not None:
        return memory
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())  # never more than one line


# API advice inside the kit's warnings, in command-line terms (the API keeps the original wording)
_CLI_WORDING = (
    (". Pass foreground=ForegroundConfig(...) to restrict anomalies to the object.",
     "; simulated anomalies may land anywhere in the image"),
    (". Pass dtd_root=<folder with images/<category>/*.jpg> or set texture_prob=0.",
     " (pass --dtd DIR or set MEMSEG_DTD: a folder holding images/<category>/*.jpg)"),
)


def _plain_warnings(command: str):
    """A ``warnings.showwarning`` for the command line: each warning once, as one plain line
    ``memseg <command>: warning: <message>`` (no category, file or source line; API advice in CLI terms)."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        text = " ".join(str(message).split())
        for api, cli in _CLI_WORDING:
            text = text.replace(api, cli)
        if text not in seen:
            seen.add(text)
            print(f"memseg {command}: warning: {text}", file=sys.stderr, flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["memseg", *(sys.argv[1:] if argv is None else argv)])  # for provenance records
    from memseg.apps import commands

    handler = {
        "synth": commands.run_synth,
        "simulate": commands.run_simulate,
        "pretrain": commands.run_pretrain,
        "train": commands.run_train,
        "evaluate": commands.run_evaluate,
        "predict": commands.run_predict,
        "export": commands.run_export,
        "benchmark": commands.run_benchmark,
    }[args.command]
    try:
        with warnings.catch_warnings():  # restored on return: API callers in this process keep Python's warnings
            warnings.showwarning = _plain_warnings(args.command)
            return int(handler(args) or 0)
    except (OSError, ValueError, RuntimeError, ImportError, MemoryError) as err:
        # Bad input or an unusable path (missing file, a file where a folder should be, no permission,
        # disk full, not enough memory ...) gets a clear one-line message naming the path, not a traceback.
        print(f"memseg {args.command}: error: {_error_text(err, args.command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
