"""Settings and preparation for the Voila demo (`make demo`).

`python -m memseg.apps.demo prepare` makes sure the dashboard has something to show:

1. the dataset exists: the procedural synthetic dataset is generated when missing
   (:func:`memseg.data.synthetic.generate_synthetic_if_missing`, never into a real dataset);
2. a trained checkpoint exists: a configured one is used as given; otherwise the cached demo model
   `runs/demo/<category>/final.pt` is reused while its stored training config matches the settings, and
   trained (small, quick, with a progress bar) otherwise, by :func:`memseg.engine.cached_run.cached_training`,
   the builder the notebooks' model uses too. A second run therefore returns in seconds.

Settings come, lowest priority first, from the defaults below, a YAML file (`configs/demo.yaml`,
or the file named by env `MEMSEG_DEMO_CONFIG`), environment variables (`MEMSEG_DATA`,
`MEMSEG_CATEGORY`, `MEMSEG_CHECKPOINT`, `MEMSEG_LAYOUT`, `MEMSEG_RUNS`, `MEMSEG_DTD`,
`MEMSEG_DEVICE`) and, for `prepare`, command-line options. The notebook calls :func:`load_settings`
too, so the dashboard sees exactly what `prepare` prepared. Relative paths in the YAML file and in
the environment are taken relative to the project root (the Voila kernel runs in `notebooks/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from memseg.config import ConfigBase, read_yaml_mapping
from memseg.config_schema import coerce, parse_typed, schema_of
from memseg.paths import locate_dtd, project_root

__all__ = [
    "DemoSettings",
    "load_settings",
    "demo_checkpoint_path",
    "resolve_checkpoint",
    "find_checkpoints",
    "prepare",
    "main",
]

# env variable -> DemoSettings field
ENV_VARS: dict[str, str] = {
    "MEMSEG_DATA": "data",
    "MEMSEG_CATEGORY": "category",
    "MEMSEG_CHECKPOINT": "checkpoint",
    "MEMSEG_LAYOUT": "layout",
    "MEMSEG_RUNS": "runs",
    "MEMSEG_DTD": "dtd",
    "MEMSEG_DEVICE": "device",
}
_PATH_FIELDS = ("data", "checkpoint", "runs", "dtd")
DEFAULT_CONFIG = Path("configs") / "demo.yaml"


@dataclass
class DemoSettings(ConfigBase):
    """Everything the demo needs to know: where the data and the model are, and how to train one.

    The `size`, `steps`, `batch_size`, `memory_size`, `weights`, `lr`, `seed` and `extra_train` fields only matter
    when `prepare` has to train the quick demo model. They are a thin layer over the training schema: `size` and
    `steps` make the model quick on purpose; every other None leaves the option to its one default in
    :class:`memseg.engine.train_config.TrainConfig` or :class:`memseg.models.memseg.MemSegConfig`, and
    `extra_train` passes any further TrainConfig option (``model_options``, ``simulation`` included) as given.
    """

    data: Path = Path("data/synthetic")
    category: str = "toys"  # its quick model is right on ~98 % of its test images (README)
    checkpoint: Path | None = None  # None -> runs/demo/<category>/final.pt (trained by prepare)
    layout: str = "auto"
    runs: Path = Path("runs")  # the dashboard lists every *.pt under this folder
    dtd: Path | None = None  # None -> auto-detect data/dtd or ../shared/data/dtd, else structure-only
    device: str = "auto"
    size: int = 128  # the quick model: half the paper's side ...
    steps: int = 300  # ... and a ninth of its steps
    batch_size: int | None = None  # images per step, half normal and half simulated; None: TrainConfig's 4 + 4
    memory_size: int | None = None  # None: MemSegConfig's
    weights: str | None = None  # encoder init (MemSegConfig.weights); None: its default, auto
    lr: float | None = None  # None: TrainConfig's
    seed: int | None = None  # None: TrainConfig's (also seeds the synthetic data generated when missing)
    extra_train: dict[str, Any] = field(default_factory=dict)  # passed on to TrainConfig as given

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (paths as strings) for printing and logs."""
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _as_path(value: Any, root: Path) -> Path | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "null", "none", "None")):
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (root / p)


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML/env value to the type of the DemoSettings field `name` (a one-line error naming it)."""
    if name == "extra_train":
        if not isinstance(value, Mapping):
            raise ValueError(f"demo settings: 'extra_train' must be a mapping of TrainConfig options, got {value!r}")
        return dict(value)
    hint = schema_of(DemoSettings)[name]
    if name in _PATH_FIELDS or value is None:
        return value if value is None else str(value)
    try:
        return coerce(value, hint, f"demo settings: {name}")
    except ValueError:
        return parse_typed(str(value), hint, f"demo settings: {name}")


def load_settings(
    config: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    root: str | os.PathLike | None = None,
    **overrides: Any,
) -> DemoSettings:
    """Resolve the demo settings: defaults < YAML config < environment < `overrides`.

    Args:
        config: YAML file; default env `MEMSEG_DEMO_CONFIG`, else `<root>/configs/demo.yaml` when present.
        env: environment mapping (default `os.environ`).
        root: project root for relative paths (default :func:`project_root`).
        overrides: field values given explicitly (e.g. from the command line; `None` values are ignored).
            Relative paths here are taken relative to the current directory.

    Raises:
        FileNotFoundError: an explicitly named config file does not exist.
        ValueError: the config file holds unknown keys or is not a mapping.
    """
    env = os.environ if env is None else env
    root = Path(root).resolve() if root is not None else project_root()
    fields = DemoSettings.field_names()
    values: dict[str, Any] = {}

    cfg_path = config if config is not None else env.get("MEMSEG_DEMO_CONFIG")
    explicit = cfg_path is not None
    cfg = _as_path(cfg_path, root) if explicit else root / DEFAULT_CONFIG
    if cfg is not None and cfg.is_file():
        loaded = read_yaml_mapping(cfg, "demo settings")
        DemoSettings.check_keys(loaded, f"demo config {cfg}")
        values.update({k: _coerce(k, v) for k, v in loaded.items()})
    elif explicit:
        raise FileNotFoundError(f"demo config {cfg} (from MEMSEG_DEMO_CONFIG or --config) does not exist")

    for var, name in ENV_VARS.items():
        if env.get(var):
            values[name] = _coerce(name, env[var])
    for name in _PATH_FIELDS:
        if name in values:
            values[name] = _as_path(values[name], root)

    for name, value in overrides.items():
        if name not in fields:
            raise TypeError(f"load_settings: unknown setting {name!r}")
        if value is None:
            continue
        if name in _PATH_FIELDS:
            value = Path(value).expanduser().resolve()
        values[name] = _coerce(name, value) if name not in _PATH_FIELDS else value

    if "device" in values:  # named where it came from now, not by the training it would fail later
        from memseg.utils import check_device_name

        check_device_name(values["device"], "--device" if overrides.get("device") is not None else "MEMSEG_DEVICE"
                          if env.get("MEMSEG_DEVICE") else f"demo config {cfg}: device")
    settings = DemoSettings(**values)
    # Defaults are relative to the project root, not to wherever the kernel happens to run.
    if not settings.data.is_absolute():
        settings.data = root / settings.data
    if not settings.runs.is_absolute():
        settings.runs = root / settings.runs
    if settings.dtd is None:
        settings.dtd = locate_dtd(None, root=root).path  # $MEMSEG_DTD, else the project defaults
    return settings


def demo_checkpoint_path(settings: DemoSettings) -> Path:
    """Where `prepare` caches its quick model: `<runs>/demo/<category>/final.pt`."""
    return settings.runs / "demo" / settings.category / "final.pt"


def resolve_checkpoint(settings: DemoSettings) -> Path:
    """The configured checkpoint, else the cached demo model path (which may not exist yet)."""
    return settings.checkpoint if settings.checkpoint is not None else demo_checkpoint_path(settings)


def find_checkpoints(runs: str | os.PathLike, extra: list[str | os.PathLike | None] | None = None) -> list[Path]:
    """Every `*.pt` and exported `*.onnx` file under `runs` (`final.pt` files first, then by path), plus `extra` ones
    that exist.

    A run's resumable `checkpoints/last.pt` is left out when the run has its `final.pt` (the same model).
    """
    found: list[Path] = []
    for p in extra or []:
        if p is not None and Path(p).is_file():
            found.append(Path(p).resolve())
    runs = Path(runs)
    if runs.is_dir():
        pts = sorted((p for pattern in ("*.pt", "*.onnx") for p in runs.rglob(pattern)
                      if not (p.parent.name == "checkpoints" and (p.parent.parent / "final.pt").is_file())),
                     key=lambda p: (p.name != "final.pt", str(p)))
        found.extend(p.resolve() for p in pts)
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique


def _ensure_data(settings: DemoSettings, log: Callable[[str], None]) -> None:
    """Generate the synthetic dataset (all its categories, for the dashboard's list) when the data root lacks
    the category and it is a synthetic one; otherwise the category folder must exist."""
    from memseg.data.synthetic import CATEGORIES, generate_synthetic_if_missing

    folder = settings.data / settings.category
    t0 = time.perf_counter()
    seed = {} if settings.seed is None else {"seed": settings.seed}
    if generate_synthetic_if_missing(settings.data, settings.category, categories=CATEGORIES,
                                     log=lambda msg: log(f"data: {msg}"), **seed):
        log(f"data: done in {time.perf_counter() - t0:.1f} s")
    elif folder.is_dir():
        log(f"data: {folder} (found)")
    else:
        raise FileNotFoundError(
            f"data: category folder {folder} does not exist (the synthetic categories {', '.join(CATEGORIES)} are "
            "generated only into a missing or synthetic-only root); set MEMSEG_DATA / MEMSEG_CATEGORY to an MVTec AD "
            "style dataset (<root>/<category>/train/good, test/<defect>, ground_truth/<defect>)"
        )


def _train_config(settings: DemoSettings, out: Path):
    """The TrainConfig of the quick demo model (half normal, half simulated images per batch)."""
    from memseg.engine import train_config

    values: dict[str, Any] = {
        "data": str(settings.data),
        "category": settings.category,
        "layout": settings.layout,
        "out": str(out),
        "steps": settings.steps,
        "size": settings.size,
        "device": settings.device,
        "dtd_root": str(settings.dtd) if settings.dtd else None,
        "checkpoint_every": max(50, settings.steps // 4),
    }
    if settings.batch_size is not None:
        values.update(batch_normal=max(1, settings.batch_size // 2),
                      batch_anomalous=max(1, settings.batch_size - settings.batch_size // 2))
    values.update({k: v for k, v in (("lr", settings.lr), ("seed", settings.seed)) if v is not None})
    options = {k: v for k, v in (("memory_size", settings.memory_size), ("weights", settings.weights)) if v is not None}
    if options:
        values["model_options"] = options
    values = train_config.merge_overrides(values, settings.extra_train)
    return train_config.TrainConfig.from_dict(values, source="demo settings")


def prepare(
    settings: DemoSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Make sure the dataset and a checkpoint exist; returns the checkpoint path.

    A configured checkpoint (`settings.checkpoint`) must exist (it is never trained over). Without
    one, the cached demo model `<runs>/demo/<category>/final.pt` is reused when its stored training config
    matches the settings, and trained (or an interrupted run resumed) otherwise.

    Raises:
        FileNotFoundError: the configured checkpoint or a non-synthetic dataset is missing.
    """
    settings = settings or load_settings()
    t0 = time.perf_counter()
    _ensure_data(settings, log)

    if settings.checkpoint is not None:
        if not settings.checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint {settings.checkpoint} (from MEMSEG_CHECKPOINT, the demo config or --checkpoint) does not "
                "exist; unset it to let `prepare` train a quick demo model"
            )
        ckpt = settings.checkpoint
        log(f"model: using the configured checkpoint {ckpt}")
    else:
        from memseg.engine.cached_run import cached_training

        cfg = _train_config(settings, demo_checkpoint_path(settings).parent)
        ckpt, _ = cached_training(cfg, name="demo model", progress=progress, log=lambda msg: log(f"model: {msg}"))

    # Read it once (torch.load, weights_only): a corrupt or foreign file fails here with a clear message,
    # not in the page. The model itself is built by the dashboard.
    from memseg.engine.backends import is_onnx
    from memseg.engine.checkpoint import read_checkpoint
    from memseg.engine.onnx_runtime import load_onnx

    if is_onnx(ckpt):
        load_onnx(ckpt)  # an exported model: its metadata and the onnxruntime session
    else:
        read_checkpoint(ckpt)
    log(f"ready in {time.perf_counter() - t0:.1f} s: data {settings.data} category {settings.category} checkpoint "
        f"{ckpt}")
    return ckpt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memseg.apps.demo",
                                     description="prepare data and a model for the Voila demo")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="generate the synthetic data and train a quick model if none is cached")
    p.add_argument("--config", default=None, help="demo YAML (default: env MEMSEG_DEMO_CONFIG, else configs/demo.yaml)")
    p.add_argument("--data", default=None, help="dataset root (default: env MEMSEG_DATA, config, data/synthetic)")
    p.add_argument("--category", default=None)
    p.add_argument("--checkpoint", default=None, help="use this trained checkpoint instead of the demo model")
    p.add_argument("--steps", type=int, default=None, help="training steps for the quick demo model")
    p.add_argument("--size", type=int, default=None, help="image side for the quick demo model")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config, data=args.data, category=args.category, checkpoint=args.checkpoint,
            steps=args.steps, size=args.size, device=args.device,
        )
        env_data = os.environ.get("MEMSEG_DATA")
        if args.data and env_data and load_settings(args.config, data=None).data != settings.data:
            print(f"memseg demo: warning: --data {args.data} overrides MEMSEG_DATA={env_data} here, but the dashboard "
                  "reads MEMSEG_DATA; set both to the same folder", file=sys.stderr)
        print("memseg demo settings: "
              + ", ".join(f"{k}={v}" for k, v in settings.as_dict().items() if k != "extra_train"))
        prepare(settings, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"memseg demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
