"""What every teaching notebook resolves first: its parameters cell, overridden by ``MEMSEG_*`` variables.

:func:`setup` turns ``DATA_ROOT, CATEGORY, DEVICE, QUICK`` into a :class:`NotebookSettings` (paths taken
from the project root, the synthetic dataset generated when it is missing, textures located with
:func:`memseg.paths.locate_dtd`), so CI and a real dataset need no edits to the notebooks.

Examples:
    >>> from memseg.notebook.settings import setup
    >>> S = setup("data/synthetic", "washer", "auto", True)  # doctest: +SKIP
    >>> S.size, S.train_steps                                  # doctest: +SKIP
    ((128, 128), 300)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memseg.config import as_size
from memseg.config_schema import field_default
from memseg.engine.train_config import TrainConfig
from memseg.models.memseg import MemSegConfig
from memseg.paths import locate_dtd, project_root
from memseg.utils import check_device_name, seed_everything, select_device

DEFAULT_DATA = "data/synthetic"
ENV_DATA, ENV_CATEGORY, ENV_QUICK, ENV_DEVICE, ENV_RUNS, ENV_STEPS, ENV_WEIGHTS, ENV_TIRE = (
    "MEMSEG_DATA", "MEMSEG_CATEGORY", "MEMSEG_QUICK", "MEMSEG_DEVICE", "MEMSEG_RUNS", "MEMSEG_STEPS",
    "MEMSEG_WEIGHTS", "MEMSEG_TIRE",
)
# QUICK: what makes the notebooks' model train in minutes on a CPU; the full run keeps the training schema's defaults
QUICK_SIZE, QUICK_STEPS, QUICK_MEMORY_SIZE = (128, 128), 300, 10
FULL_SIZE = as_size(field_default(TrainConfig, "size"))


def env_flag(name: str, default: bool) -> bool:
    """Boolean environment variable: 1/true/yes/on or 0/false/no/off (case-insensitive)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


def env_int(name: str) -> int | None:
    """Positive integer environment variable, None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer")
    return value


@dataclass
class NotebookSettings:
    """What every notebook needs after its parameters cell (see :func:`setup`)."""

    data_root: Path
    category: str
    device: torch.device
    quick: bool
    repo: Path
    runs: Path
    dtd_root: Path | None
    seed: int = 0
    size: tuple[int, int] = FULL_SIZE
    synthetic: bool = False
    weights: str = field(default_factory=lambda: field_default(MemSegConfig, "weights"))
    steps: int | None = None  # $MEMSEG_STEPS: overrides train_steps

    @property
    def train_steps(self) -> int:
        """Training iterations of the notebooks' model (TrainConfig's, the paper's; QUICK: 300; ``$MEMSEG_STEPS``
        overrides)."""
        if self.steps is not None:
            return self.steps
        return QUICK_STEPS if self.quick else field_default(TrainConfig, "steps")

    @property
    def memory_size(self) -> int:
        """N memory samples (MemSegConfig's, the paper's; QUICK: 10)."""
        return QUICK_MEMORY_SIZE if self.quick else field_default(MemSegConfig, "memory_size")

    def describe(self) -> str:
        dtd = str(self.dtd_root) if self.dtd_root else "absent -> structural anomalies only (set MEMSEG_DTD)"
        return (
            f"data      {self.data_root}{'  (synthetic)' if self.synthetic else ''}\n"
            f"category  {self.category}\n"
            f"device    {self.device}\n"
            f"mode      {'QUICK' if self.quick else 'full'}: images {self.size[0]}×{self.size[1]}, "
            f"{self.train_steps} training steps, memory N = {self.memory_size}\n"
            f"DTD       {dtd}\n"
            f"encoder   weights {self.weights!r}\n"
            f"runs      {self.runs}"
        )


def shared_data(name: str) -> Path | None:
    """``<project>/../shared/data/<name>`` when present (e.g. ``mvtec3d_tire``), else None."""
    p = project_root().parent / "shared" / "data" / name
    return p if p.is_dir() else None


def project_path(p: str | Path, repo: Path) -> Path:
    """``p`` as given when absolute, else relative to the project folder ``repo`` (notebooks run in notebooks/)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else repo / p


def setup(
    data_root: str | Path = DEFAULT_DATA,
    category: str = "washer",
    device: str = "auto",
    quick: bool = True,
    seed: int = 0,
    env_data: bool = True,
    style: bool = True,
    verbose: bool = True,
) -> NotebookSettings:
    """Resolve a notebook's parameters cell into :class:`NotebookSettings`.

    Environment variables override the arguments (so CI and a real dataset need no edits):
    ``MEMSEG_DATA`` (dataset root) and ``MEMSEG_CATEGORY`` (unless ``env_data=False``),
    ``MEMSEG_QUICK`` (1/0), ``MEMSEG_STEPS`` (training steps), ``MEMSEG_DEVICE``, ``MEMSEG_DTD`` (texture source,
    see :func:`memseg.paths.locate_dtd`), ``MEMSEG_WEIGHTS`` (encoder weights: auto, random, imagenet or a
    file; default auto: ImageNet when timm can get them, else random with a banner) and ``MEMSEG_RUNS`` (cache of
    the notebooks' model, default ``<project>/runs/notebooks``).

    Relative paths are taken from the project root (:func:`memseg.paths.project_root`). A missing synthetic
    category is generated with :func:`memseg.data.synthetic.generate_synthetic_if_missing` (never into a real
    dataset); otherwise a missing root or category is an error naming what was expected.
    """
    from memseg.data.datasets import list_categories
    from memseg.data.synthetic import CATEGORIES as SYNTHETIC_CATEGORIES
    from memseg.data.synthetic import generate_synthetic_if_missing
    from memseg.notebook.figures import use_projector_style

    repo = project_root()
    if env_data:
        data_root = os.environ.get(ENV_DATA) or data_root
        category = os.environ.get(ENV_CATEGORY) or category
    device = check_device_name(os.environ[ENV_DEVICE], ENV_DEVICE) if os.environ.get(ENV_DEVICE) else device
    quick = env_flag(ENV_QUICK, quick)
    root = project_path(data_root, repo)
    runs = project_path(os.environ.get(ENV_RUNS) or repo / "runs" / "notebooks", repo)
    generate_synthetic_if_missing(root, category, seed=seed, log=print if verbose else None)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} does not exist; set DATA_ROOT (or ${ENV_DATA}) to a folder in MVTec AD layout "
            f"(<root>/<category>/train/good, test/<defect>, ground_truth/<defect>) or to {DEFAULT_DATA!r} for the "
            "synthetic dataset"
        )
    found = list_categories(root)
    if category not in found:
        raise ValueError(f"unknown category {category!r} under {root}; found {found}")
    if style:
        use_projector_style()
    settings = NotebookSettings(
        data_root=root, category=category, device=select_device(device), quick=quick, repo=repo, runs=runs,
        dtd_root=locate_dtd(None, root=repo).path, seed=seed, size=QUICK_SIZE if quick else FULL_SIZE,
        synthetic=category in SYNTHETIC_CATEGORIES, steps=env_int(ENV_STEPS),
        weights=os.environ.get(ENV_WEIGHTS) or field_default(MemSegConfig, "weights"),
    )
    seed_everything(seed)
    if verbose:
        print(settings.describe())
    return settings


def tire_or(data_root: str, category: str, use_tire: bool) -> tuple[str, str, bool]:
    """``(root, category, use_tire)``: the MVTec 3D-AD tire data beside the project when
    ``use_tire`` (or ``$MEMSEG_TIRE=1``) and present; otherwise the given root and category."""
    use_tire = env_flag(ENV_TIRE, use_tire)
    if not use_tire:
        return data_root, category, False
    tire = shared_data("mvtec3d_tire")
    if tire is None or not (tire / "tire").is_dir():
        print(f"USE_TIRE: {project_root().parent / 'shared' / 'data' / 'mvtec3d_tire'} is absent; staying on "
              f"{data_root} / {category}")
        return data_root, category, False
    print(f"USE_TIRE: real MVTec 3D-AD tire images from {tire}")
    return str(tire), "tire", True
