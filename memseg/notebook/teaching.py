"""Plot, widget and set-up helpers for the teaching notebooks (notebooks/01-05).

The notebooks hold the narrative and call into this module; nothing here is needed to
train or run MemSeg. Figures are sized and styled for a projector (large fonts, titles).

Sections:
    settings      :func:`setup` -> :class:`NotebookSettings` (parameters cell + env overrides)
    data          :func:`load_images`, :func:`quick_model` (a small trained model cached under runs/notebooks)
    01 simulation :func:`show_simulation_steps`, :class:`SimulationPanel`, :func:`simulation_gallery`
    02 model      :func:`show_stage_table`, :func:`plot_stage_costs`, :func:`show_memory_bank`, :func:`show_di_star`
    03 training   :class:`LiveLossPlot`, :func:`show_metrics`, :func:`prediction_grid`, :func:`run_ablations`, :func:`plot_ablations`
    04 t-SNE      :func:`tsne_groups`, :func:`tsne_figure`, :func:`thumbnail_grid`
    05 attention  :func:`attention_maps`, :func:`plot_spatial_attention`, :class:`AttentionBrowser`
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from memseg.utils import normalize, seed_everything, select_device

# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------

DEFAULT_DATA = "data/synthetic"
ENV_DATA, ENV_CATEGORY, ENV_QUICK, ENV_DEVICE, ENV_DTD, ENV_RUNS = (
    "MEMSEG_DATA",
    "MEMSEG_CATEGORY",
    "MEMSEG_QUICK",
    "MEMSEG_DEVICE",
    "MEMSEG_DTD",
    "MEMSEG_RUNS",
)


def repo_root(start: Path | None = None) -> Path:
    """The memseg-kit checkout: the first parent of ``start`` (default: cwd) holding
    ``pyproject.toml`` and ``memseg/``; otherwise the folder above this package."""
    here = Path(start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / "pyproject.toml").is_file() and (p / "memseg").is_dir():
            return p
    return Path(__file__).resolve().parents[1]


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


QUICK_SIZE, FULL_SIZE = (128, 128), (256, 256)


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
    weights: str = "auto"
    steps: int | None = None  # $MEMSEG_STEPS: overrides train_steps

    @property
    def train_steps(self) -> int:
        """Training iterations of the notebooks' model (paper: 2700; QUICK: 300; ``$MEMSEG_STEPS`` overrides)."""
        if self.steps is not None:
            return self.steps
        return 300 if self.quick else 2700

    @property
    def memory_size(self) -> int:
        """N memory samples (paper: 30)."""
        return 10 if self.quick else 30

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


def find_dtd(repo: Path | None = None) -> Path | None:
    """DTD root from ``$MEMSEG_DTD`` or the project defaults (see :func:`memseg.paths.locate_dtd`); None when absent."""
    from memseg.paths import dtd_root

    return dtd_root(None, root=repo or repo_root())


def shared_data(name: str, repo: Path | None = None) -> Path | None:
    """``<repo>/../shared/data/<name>`` when present (e.g. ``mvtec3d_tire``), else None."""
    p = (repo or repo_root()).parent / "shared" / "data" / name
    return p if p.is_dir() else None


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
    ``MEMSEG_QUICK`` (1/0), ``MEMSEG_STEPS`` (training steps), ``MEMSEG_DEVICE``, ``MEMSEG_DTD`` (texture source, default
    ``<repo>/../shared/data/dtd``), ``MEMSEG_WEIGHTS`` (encoder weights: auto, random, imagenet or a
    file; default auto: ImageNet when timm can get them, else random with a banner) and ``MEMSEG_RUNS`` (cache of the notebooks'
    model, default ``<repo>/runs/notebooks``).

    Relative paths are taken from the repository root (notebooks run with cwd = notebooks/).
    When the root lacks the category, the category is one of the synthetic dataset's and the root
    is missing or holds only synthetic categories, it is generated there with
    :func:`memseg.data.synthetic.ensure_synthetic` (nothing is ever written into a real dataset);
    otherwise a missing root or category is an error naming what was expected.
    """
    from memseg.data import synthetic as synth
    from memseg.data.datasets import list_categories

    repo = repo_root()
    if env_data:
        data_root = os.environ.get(ENV_DATA) or data_root
        category = os.environ.get(ENV_CATEGORY) or category
    device = os.environ.get(ENV_DEVICE) or device
    quick = env_flag(ENV_QUICK, quick)
    root = _repo_path(data_root, repo)
    runs = _repo_path(os.environ.get(ENV_RUNS) or repo / "runs" / "notebooks", repo)

    is_synth = category in synth.CATEGORIES
    existing = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    synthetic_root = all(name in synth.CATEGORIES for name in existing)  # never write into a real dataset
    if is_synth and synthetic_root and not (root / category).is_dir():
        if verbose:
            print(f"generating the synthetic category {category!r} into {root} (once, ~10 s) ...")
        synth.ensure_synthetic(root, categories=[category], seed=seed, progress=verbose)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} does not exist; set DATA_ROOT (or ${ENV_DATA}) to a folder in MVTec AD layout "
            f"(<root>/<category>/train/good, test/<defect>, ground_truth/<defect>) or to {DEFAULT_DATA!r} for the synthetic dataset"
        )
    found = list_categories(root)
    if category not in found:
        raise ValueError(f"unknown category {category!r} under {root}; found {found}")
    if style:
        use_projector_style()
    settings = NotebookSettings(
        data_root=root,
        category=category,
        device=select_device(device),
        quick=quick,
        repo=repo,
        runs=runs,
        dtd_root=find_dtd(repo),
        seed=seed,
        size=QUICK_SIZE if quick else FULL_SIZE,
        synthetic=is_synth,
        weights=os.environ.get("MEMSEG_WEIGHTS", "auto"),
        steps=_env_int("MEMSEG_STEPS"),
    )
    seed_everything(seed)
    if verbose:
        print(settings.describe())
    return settings


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer")
    return value


def _repo_path(p: str | Path, repo: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else repo / p


def tire_or(data_root: str, category: str, use_tire: bool) -> tuple[str, str, bool]:
    """``(root, category, use_tire)``: the MVTec 3D-AD tire data beside the project when
    ``use_tire`` (or ``$MEMSEG_TIRE=1``) and present; otherwise the given root and category."""
    use_tire = env_flag("MEMSEG_TIRE", use_tire)
    if not use_tire:
        return data_root, category, False
    tire = shared_data("mvtec3d_tire")
    if tire is None or not (tire / "tire").is_dir():
        print(f"USE_TIRE: {repo_root().parent / 'shared' / 'data' / 'mvtec3d_tire'} is absent; staying on {data_root} / {category}")
        return data_root, category, False
    print(f"USE_TIRE: real MVTec 3D-AD tire images from {tire}")
    return str(tire), "tire", True


# --------------------------------------------------------------------------------------------
# style and small drawing helpers
# --------------------------------------------------------------------------------------------


def use_projector_style() -> None:
    """Large fonts and figures that read well on a projector."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 110,
            "figure.figsize": (14, 6),
            "font.size": 14,
            "axes.titlesize": 16,
            "axes.titleweight": "bold",
            "axes.labelsize": 15,
            "figure.titlesize": 20,
            "figure.titleweight": "bold",
            "xtick.labelsize": 13,
            "ytick.labelsize": 13,
            "legend.fontsize": 13,
            "image.interpolation": "nearest",
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def to_numpy_image(x) -> np.ndarray:
    """(3, H, W)/(1, H, W)/(H, W) tensor or array in [0, 1] or uint8 -> (H, W, 3) or (H, W) float array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu()
        if x.dtype == torch.uint8:
            x = x / 255.0
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def _imshow(ax, img, title: str | None = None, cmap: str | None = None, vmin=None, vmax=None, colorbar: bool = False):
    arr = to_numpy_image(img)
    if arr.ndim == 2 and cmap is None:
        cmap = "gray"
    im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    return im


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``$MEMSEG_FIGDIR/<name>.png`` when that variable is set (used to review figures)."""
    folder = os.environ.get("MEMSEG_FIGDIR")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


_SAVED: dict[str, int] = {}


def _autosave(fig, name: str) -> None:
    """When ``$MEMSEG_FIGDIR`` is set, save every teaching figure there as ``<name>-<n>.png`` (figure review)."""
    if not os.environ.get("MEMSEG_FIGDIR"):
        return
    _SAVED[name] = _SAVED.get(name, 0) + 1
    save_figure(fig, f"{os.environ.get('MEMSEG_FIGPREFIX', '')}{name}-{_SAVED[name]}")


def thumbnail_base64(image, size: int = 72) -> str:
    """A PNG data URI of a small thumbnail (for plotly hover/customdata and HTML tables)."""
    from PIL import Image

    arr = to_numpy_image(image)
    arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_table(rows: Sequence[dict], title: str | None = None, font_px: int = 16, number_format: str = "{:,}"):
    """An IPython HTML table (large font) from a list of dicts with the same keys."""
    from IPython.display import HTML

    if not rows:
        return HTML("<p><em>(empty table)</em></p>")
    keys = list(rows[0].keys())

    def fmt(v):
        if isinstance(v, bool):
            return "✓" if v else ""
        if isinstance(v, int):
            return number_format.format(v)
        if isinstance(v, float):
            return f"{v:.3f}"
        return html.escape(str(v))

    head = "".join(f"<th style='text-align:left;padding:4px 12px'>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left;padding:3px 12px'>{fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>"
        for r in rows
    )
    cap = f"<caption style='font-weight:bold;font-size:{font_px + 2}px;text-align:left'>{html.escape(title)}</caption>" if title else ""
    return HTML(f"<table style='font-size:{font_px}px;border-collapse:collapse'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


# --------------------------------------------------------------------------------------------
# data and the notebooks' shared model
# --------------------------------------------------------------------------------------------


def load_split(settings: NotebookSettings, split: str = "train", size: tuple[int, int] | None = None):
    """``memseg.data.load_split`` for the notebook's dataset and category (at ``settings.size``)."""
    from memseg.data.datasets import load_split as _load_split

    return _load_split(settings.data_root, settings.category, split=split, size=size or settings.size)


def pick_indices(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """``n`` distinct indices out of ``n_total`` (all when n is None or ≥ n_total), sorted, deterministic."""
    if n is None or n >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:n].tolist())


def load_images(dataset, n: int | None = None, seed: int = 0, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Images of a dataset as float (N, 3, H, W) in [0, 1] (not normalised): the given ``indices``,
    or ``n`` picked at random (seeded), or all."""
    idx = list(indices) if indices is not None else pick_indices(len(dataset), n, seed)
    return dataset.load_images(indices=idx, progress=False).float() / 255.0


def first_anomalous(dataset, defect: str | None = None) -> int:
    """Index of the first anomalous record (of ``defect`` when given)."""
    for i, r in enumerate(dataset.records):
        if r.label == 1 and (defect is None or r.defect == defect):
            return i
    raise ValueError(f"no anomalous image{' of defect ' + repr(defect) if defect else ''} in this split")


def make_simulator(settings: NotebookSettings, size: tuple[int, int] | None = None, **config):
    """An :class:`memseg.simulation.simulator.AnomalySimulator` for the notebook's category and size.

    Uses the DTD textures when present (``settings.dtd_root``); without them the simulator warns
    once and simulates structural anomalies only. ``config`` overrides :class:`SimulationConfig` fields.
    """
    from memseg.simulation.simulator import AnomalySimulator, SimulationConfig

    cfg = SimulationConfig(**config) if config else None
    with warnings.catch_warnings():
        if settings.dtd_root is None:
            warnings.simplefilter("ignore")  # reported by describe_texture_source instead
        sim = AnomalySimulator(cfg, dtd_root=settings.dtd_root, size=size or settings.size, device="cpu",
                               category=settings.category, max_textures=64 if settings.quick else 256, progress=False)
    return sim


def has_textures(simulator) -> bool:
    """True when the simulator has a texture source (DTD found)."""
    return bool(getattr(simulator, "has_textures", False))


def describe_texture_source(settings: NotebookSettings) -> str:
    """One line saying where textural anomalies come from (or that they are off)."""
    if settings.dtd_root is None:
        return ("DTD textures: NOT FOUND (looked at $MEMSEG_DTD and ../shared/data/dtd) -> only structural anomalies "
                "are simulated; point MEMSEG_DTD at a DTD folder (images/<category>/*.jpg) to add textural ones.")
    n = len(list(Path(settings.dtd_root).rglob("*.jpg")))
    return f"DTD textures: {n} images under {settings.dtd_root} (texture and structure sources, 50 % each)"


def train_config(settings: NotebookSettings, name: str, steps: int | None = None, size: tuple[int, int] | None = None,
                 model_options: dict | None = None, memory_size: int | None = None):
    """The :class:`memseg.engine.training.TrainConfig` of a notebook run (paper recipe; QUICK: small and short).

    The run folder is ``<runs>/<name>-<category>``.
    """
    from memseg.engine.training import TrainConfig

    opts = {"memory_size": memory_size or settings.memory_size, "weights": settings.weights, **(model_options or {})}
    steps = int(steps or settings.train_steps)
    return TrainConfig(
        data=str(settings.data_root), category=settings.category, size=list(size or settings.size), steps=steps,
        model_options=opts, seed=settings.seed, device=str(settings.device),
        dtd_root=str(settings.dtd_root) if settings.dtd_root else None,
        out=str(settings.runs / f"{name}-{settings.category}"), log_every=max(1, steps // 50),
        warmup_steps=min(100, max(1, steps // 10)), checkpoint_every=max(steps, 500),
    )


def quick_model(settings: NotebookSettings, callback: Callable | None = None, retrain: bool = False, progress: bool = True):
    """The small MemSeg model that notebooks 2-5 share: trained once, cached under ``<runs>/model-<category>``.

    The cache is reused only when its stored training config equals this one (same data, size,
    steps, seed, memory size, weights); otherwise, or with ``retrain=True``, it is trained again
    (the run folder is that of the notebooks' cache, nothing else is touched).
    ``callback(step, logs)`` gets every training step; with a cached model the stored per-step log
    is replayed into it, so a loss plot looks the same either way.

    Returns ``(model, info)`` from :func:`memseg.engine.checkpoint.load_checkpoint` (model in eval mode on
    ``settings.device``); ``info["cached"]`` says whether it was loaded from the cache.
    """
    from memseg.engine.checkpoint import load_checkpoint, read_checkpoint
    from memseg.engine.training import LAST_CHECKPOINT, LOG_JSONL, train

    cfg = train_config(settings, name="model")
    ckpt = Path(cfg.out) / "checkpoints" / LAST_CHECKPOINT
    cached = False
    if ckpt.is_file() and not retrain:
        try:
            stored = read_checkpoint(ckpt)
            cached = _same_config(stored.get("config", {}), cfg.to_dict()) and int(stored.get("step", -1)) == cfg.steps
        except (ValueError, FileNotFoundError):
            cached = False
    if cached:
        print(f"loaded the cached notebook model {ckpt} (delete {cfg.out} or pass retrain=True to train again)")
        log = Path(cfg.out) / LOG_JSONL
        if callback is not None and log.is_file():
            replay_log(log, callback)
    else:
        print(f"training the notebook model: {cfg.steps} steps at {cfg.input_size}, run folder {cfg.out}")
        train(cfg, progress=progress, callback=callback, overwrite=True)
    model, info = load_checkpoint(ckpt, device=settings.device)
    info["cached"] = cached
    return model, info


def replay_log(log: str | Path, callback: Callable) -> int:
    """Feed a run's per-step ``train_log.jsonl`` into ``callback(step, row)``; returns the rows replayed."""
    n = 0
    for line in Path(log).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            callback(int(row["step"]), row)
            n += 1
    return n


def _same_config(stored: dict, current: dict) -> bool:
    ignore = {"device", "log_every", "checkpoint_every", "checkpoint_minutes"}
    if current.get("dtd_root") is None:
        ignore.add("dtd_root")  # training resolves a default DTD folder itself
    keys = (set(stored) | set(current)) - ignore
    return all(json.dumps(stored.get(k), sort_keys=True) == json.dumps(current.get(k), sort_keys=True) for k in keys)


def memory_images(settings: NotebookSettings, info: dict) -> torch.Tensor:
    """The training images that form the model's memory bank, (N, 3, H, W) in [0, 1], in memory-slot order.

    The training run records their indices (``info["extra"]["splits"]["memory"]``).
    """
    try:
        idx = [int(i) for i in info["extra"]["splits"]["memory"]]
    except (KeyError, TypeError):
        raise KeyError("this checkpoint does not record which training images form its memory bank "
                       "(expected info['extra']['splits']['memory'], written by memseg.engine.training.train)") from None
    size = tuple(info.get("model_config", {}).get("input_size") or settings.size)
    return load_images(load_split(settings, "train", size=size), indices=idx)


def model_at_size(settings: NotebookSettings, size: tuple[int, int], memory: torch.Tensor):
    """A fresh (untrained) MemSeg at ``size`` whose memory bank holds ``memory`` (N, 3, H, W) in [0, 1]:
    for shapes and FLOPs at the paper's input size."""
    from memseg.models import build_model

    model = build_model("memseg", {"input_size": tuple(size), "memory_size": len(memory), "weights": settings.weights})
    model.to(settings.device).eval()
    model.prepare(normalize(memory.to(settings.device)))
    return model


def metrics_table(metrics: dict):
    """HTML table: overall and per-defect metrics (image/pixel AUROC, AUPRO@0.3) with image counts."""
    rows = []
    blocks = [("all defects", metrics["overall"])] + sorted(metrics.get("per_defect", {}).items())
    for name, m in blocks:
        rows.append({"defect": name, "anomalous / normal": f"{m.get('n_anomalous', '')} / {m.get('n_normal', '')}",
                     "image AUROC": float(m["image_auroc"]), "pixel AUROC": float(m["pixel_auroc"]),
                     "AUPRO@0.3": float(m["aupro"])})
    return html_table(rows, title="Test-split metrics (per defect: that defect's images + all normal ones)")


def predictions(checkpoint, settings: NotebookSettings, n_anomalous: int = 3, n_normal: int = 1, seed: int = 0) -> dict:
    """Anomaly maps of a few test images (different defect types first) with a checkpoint.

    Returns dict(images (N,3,H,W), masks (N,1,H,W), maps (N,H,W) np, scores (N,) np, defects, paths).
    """
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.data.datasets import AnomalyDataset
    from memseg.engine.evaluation import collect_predictions

    model, info = load_checkpoint(checkpoint, device=settings.device)
    size = tuple(info["model_config"]["input_size"])
    test = load_split(settings, "test", size=size)
    by_defect: dict[str, list[int]] = {}
    for i, r in enumerate(test.records):
        by_defect.setdefault(r.defect, []).append(i)
    chosen = []
    defects = sorted(d for d in by_defect if d != "good")
    k = 0
    while len(chosen) < n_anomalous and defects and k < max(len(v) for v in by_defect.values()):
        for d in defects:
            if len(chosen) < n_anomalous and k < len(by_defect[d]):
                chosen.append(by_defect[d][k])
        k += 1
    chosen += by_defect.get("good", [])[:n_normal]
    subset = AnomalyDataset([test.records[i] for i in chosen], size=size)
    preds = collect_predictions(model, subset, batch_size=8, device=settings.device, progress=False)
    return {
        "images": load_images(subset), "masks": subset.load_masks(progress=False).float(),
        "maps": preds.maps, "scores": preds.scores, "defects": preds.defects, "paths": preds.paths,
    }


def run_ablations(settings: NotebookSettings, variants: dict[str, dict], steps: int, size: tuple[int, int] | None = None,
                  progress: bool = True) -> list[dict]:
    """Train and evaluate one model per variant (``model_options`` switches of Table 5), same seed and steps.

    Each run goes to ``<runs>/ablation-<variant>-<category>`` (replaced on every call). Returns one dict per
    variant: variant, options, image_auroc, pixel_auroc, aupro, seconds.
    """
    import time

    from memseg.engine.evaluation import evaluate
    from memseg.engine.training import train

    results = []
    for name, options in variants.items():
        slug = "".join(c if c.isalnum() else "_" for c in name.lower())
        cfg = train_config(settings, name=f"ablation-{slug}", steps=steps, size=size, model_options=options)
        t0 = time.perf_counter()
        run = train(cfg, progress=progress, overwrite=True)
        metrics = evaluate(run.checkpoint, settings.data_root, settings.category, device=settings.device, progress=False)
        o = metrics["overall"]
        h, w = cfg.input_size
        results.append({"variant": name, "options": dict(options), "image_auroc": float(o["image_auroc"]),
                        "pixel_auroc": float(o["pixel_auroc"]), "aupro": float(o["aupro"]),
                        "steps": cfg.steps, "size": f"{h}×{w}", "seconds": time.perf_counter() - t0})
    return results


# --------------------------------------------------------------------------------------------
# 01 anomaly simulation (paper §3.1, Fig. 3, eq. 1-2)
# --------------------------------------------------------------------------------------------

STEP_TITLES = {
    "I": r"input $I$",
    "P": r"Perlin noise $P$",
    "M_P": r"$M_P = [P > T]$",
    "M_I": r"foreground $M_I$",
    "M": r"$M = M_P \odot M_I$",
    "I_n": r"noise image $I_n$",
    "I_n_prime": r"$I'_n = \delta M{\odot}I_n + (1{-}\delta) M{\odot}I$",
    "I_A": r"$I_A = \bar{M} \odot I + I'_n$",
}


def show_perlin_scales(size: tuple[int, int] = (256, 256), threshold: float = 0.5, seed: int = 0, exps: Sequence[int] = (1, 2, 3, 4)):
    """Perlin noise P at several scales (top) and its thresholded masks M_P = [P > T] (bottom)."""
    import matplotlib.pyplot as plt

    from memseg.simulation.perlin import perlin_mask, perlin_noise

    fig, axes = plt.subplots(2, len(exps), figsize=(4.4 * len(exps), 9), layout="constrained")
    for c, k in enumerate(exps):
        g = torch.Generator().manual_seed(seed)
        p = perlin_noise(1, size[0], size[1], generator=g, scale_exp=int(k))
        m = perlin_mask(p, threshold)
        _imshow(axes[0, c], p[0, 0], f"$P$, scale $2^{k}\\times2^{k}$ cells", cmap="viridis", vmin=-1, vmax=1)
        _imshow(axes[1, c], m[0, 0], f"$M_P = [P > {threshold}]$ ({100 * float(m.mean()):.0f}%)", cmap="gray", vmin=0, vmax=1)
    fig.suptitle("Perlin noise at four scales, and the masks it gives")
    _autosave(fig, "perlin_scales")
    return fig


def show_foreground(images: torch.Tensor, preset, title: str | None = None):
    """Images (top) and their foreground masks M_I (bottom) for a :class:`ForegroundConfig` (None: all ones)."""
    import matplotlib.pyplot as plt

    from memseg.simulation.foreground import foreground_mask

    m = foreground_mask(images, preset)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 8.6), squeeze=False, layout="constrained")
    for i in range(n):
        _imshow(axes[0, i], images[i], "input $I$")
        _imshow(axes[1, i], m[i], f"$M_I$ ({100 * float(m[i].mean()):.0f}% foreground)", cmap="gray", vmin=0, vmax=1)
    what = "no foreground mask for a texture: $M_I = 1$" if preset is None else (
        f"threshold {preset.threshold if isinstance(preset.threshold, str) else f'{preset.threshold:.2f}'}"
        f"{' (inverted)' if preset.invert else ''}, opening {preset.opening}, closing {preset.closing}")
    fig.suptitle(title or f"Foreground masks $M_I$ — {what}")
    _autosave(fig, "foreground")
    return fig


def show_simulation_steps(image: torch.Tensor, result, index: int = 0, title: str | None = None, fig=None):
    """Paper Fig. 3 as a 2×4 panel: I, P, M_P, M_I / M, I_n, I'_n, I_A for sample ``index``.

    ``result`` is a :class:`memseg.simulation.simulator.SimulationResult` made with ``return_intermediates=True``.
    """
    import matplotlib.pyplot as plt

    inter = result.intermediates
    if inter is None:
        raise ValueError("show_simulation_steps needs simulate(..., return_intermediates=True)")
    if fig is None:
        fig = plt.figure(figsize=(18, 9.6), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(2, 4)
    delta = float(result.delta[index])
    source = result.source[index]
    panels = [
        ("I", image[index] if image.dim() == 4 else image, None),
        ("P", inter["P"][index], "viridis"),
        ("M_P", inter["M_P"][index], "gray"),
        ("M_I", inter["M_I"][index], "gray"),
        ("M", inter["M"][index], "gray"),
        ("I_n", inter["I_n"][index], None),
        ("I_n_prime", inter["I_n_prime"][index], None),
        ("I_A", inter["I_A"][index], None),
    ]
    for ax, (key, img, cmap) in zip(axes.flat, panels):
        vmin, vmax = (0, 1) if key in ("M_P", "M_I", "M") else (-1, 1) if key == "P" else (None, None)
        t = STEP_TITLES[key]
        if key == "I_n":
            t += f" ({source})"
        _imshow(ax, img.cpu() if key == "P" else img.cpu().clamp(0, 1), t, cmap=cmap, vmin=vmin, vmax=vmax)
    area = float(inter["M"][index].float().mean()) * 100
    thr = inter.get("threshold", 0.5)
    thr = float(thr[index]) if isinstance(thr, torch.Tensor) and thr.dim() else float(thr)
    fig.suptitle(title or f"Fig. 3 step by step — T = {thr:.2f}, δ = {delta:.2f}, source = {source}, anomaly area {area:.1f}%")
    _autosave(fig, "simulation_steps")
    return fig


class SimulationPanel:
    """Interactive Fig. 3: sliders for T, δ, Perlin scale, foreground threshold, the source and the seed.

    Every change re-runs :meth:`AnomalySimulator.simulate` on one image with the chosen values
    and redraws all stages. Display it as the last expression of a cell (or ``display(panel)``);
    :meth:`render` draws one state without widgets (used by tests and static exports).
    """

    def __init__(self, simulator, images: torch.Tensor, foreground_preset=None, image_index: int = 0):
        import ipywidgets as w

        self.simulator = simulator
        self.images = images
        self.preset = foreground_preset
        n = len(images)
        style = {"description_width": "170px"}
        layout = w.Layout(width="440px")
        fg_thr = foreground_preset.threshold if foreground_preset is not None else "otsu"
        textures = has_textures(simulator)
        self.controls = {
            "threshold": w.FloatSlider(value=0.5, min=0.0, max=0.9, step=0.05, description="Perlin threshold T", style=style, layout=layout),
            "delta": w.FloatSlider(value=0.8, min=0.15, max=1.0, step=0.05, description="transparency δ", style=style, layout=layout),
            "scale_exp": w.IntSlider(value=3, min=0, max=5, description="Perlin scale k (2^k cells)", style=style, layout=layout),
            "use_foreground": w.Checkbox(value=foreground_preset is not None, description="foreground mask M_I", style=style),
            "otsu": w.Checkbox(value=fg_thr == "otsu", description="Otsu threshold (automatic)", style=style),
            "fg_threshold": w.FloatSlider(value=0.5 if fg_thr == "otsu" else float(fg_thr), min=0.0, max=1.0, step=0.02,
                                          description="foreground threshold τ", style=style, layout=layout),
            "source": w.ToggleButtons(options=["texture", "structure"] if textures else ["structure"],
                                      value="texture" if textures else "structure", description="source", style=style),
            "seed": w.IntSlider(value=0, min=0, max=99, description="seed", style=style, layout=layout),
            "image": w.IntSlider(value=image_index, min=0, max=max(0, n - 1), description="image", style=style, layout=layout),
        }
        self.out = w.Output()
        for c in self.controls.values():
            c.observe(lambda _change: self.update(), names="value")
        note = "" if textures else "<i>no DTD textures found: structure source only</i>"
        self.widget = w.HBox([w.VBox([*self.controls.values(), w.HTML(note)]), self.out])
        self.last = None

    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def render(self, threshold=0.5, delta=0.8, scale_exp=3, use_foreground=True, otsu=True, fg_threshold=0.5,
               source="structure", seed=0, image=0, fig=None):
        """Simulate one image with these values; returns (figure, SimulationResult)."""
        from memseg.simulation.foreground import ForegroundConfig

        fg = False
        if use_foreground:
            base = self.preset or ForegroundConfig()
            fg = ForegroundConfig(threshold="otsu" if otsu else float(fg_threshold), invert=base.invert,
                                  opening=base.opening, closing=base.closing)
        g = torch.Generator().manual_seed(int(seed))
        img = self.images[int(image) : int(image) + 1]
        result = self.simulator.simulate(img, generator=g, threshold=float(threshold), delta=float(delta), source=source,
                                         scale_exp=int(scale_exp), foreground=fg, return_intermediates=True)
        fig = show_simulation_steps(img, result, fig=fig)
        self.last = result
        return fig, result

    def update(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.controls["fg_threshold"].disabled = self.controls["otsu"].value or not self.controls["use_foreground"].value
        with self.out:
            self.out.clear_output(wait=True)
            fig, _ = self.render(**self.values())
            display(fig)
            plt.close(fig)

    def _ipython_display_(self):
        from IPython.display import display

        self.update()
        display(self.widget)


def simulation_gallery(simulator, images: torch.Tensor, n: int = 16, seed: int = 0, cols: int = 4):
    """Simulate ``n`` anomalies (random T-blobs, scale, δ and source, as in training) and show each next to its mask.

    Returns (figure, SimulationResult). Images are reused cyclically when fewer than ``n`` are given
    (sample i comes from ``images[i % len(images)]``).
    """
    import matplotlib.pyplot as plt

    idx = torch.arange(n) % len(images)
    g = torch.Generator().manual_seed(seed)
    result = simulator.simulate(images[idx], generator=g)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.3 * cols, 2.45 * rows + 0.9), layout="constrained")
    axes = np.atleast_2d(axes)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        a_img, a_mask = axes[r, 2 * c], axes[r, 2 * c + 1]
        if i >= n:
            a_img.axis("off")
            a_mask.axis("off")
            continue
        area = float(result.masks[i].float().mean()) * 100
        _imshow(a_img, result.images[i].cpu(), f"{result.source[i]}, δ={float(result.delta[i]):.2f}")
        _imshow(a_mask, result.masks[i].cpu(), f"M ({area:.2f}%)" if area < 0.1 else f"M ({area:.1f}%)", cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"{n} simulated training anomalies $I_A$, each next to its mask $M$")
    _autosave(fig, "simulation_gallery")
    return fig, result


# --------------------------------------------------------------------------------------------
# 02 model overview (paper Fig. 2)
# --------------------------------------------------------------------------------------------


def show_stage_table(rows, flops=None, title: str = "MemSeg stages"):
    """HTML table of :func:`memseg.notebook.analysis.stage_table` rows (+ GFLOPs per stage when given)."""
    from memseg.notebook.analysis import stage_flops

    table = []
    for r in rows:
        d = {"stage": r.name, "module": r.kind, "input": r.input_shape, "output": r.output_shape,
             "trainable params": r.trainable, "frozen params": r.frozen}
        if r.name.startswith("memory"):
            d["frozen params"] = f"{r.buffers:,} stored floats (memory bank)"
        if flops is not None:
            d["GFLOPs"] = round(stage_flops(flops, r) / 1e9, 3)
        table.append(d)
    return html_table(table, title=title, font_px=15)


def plot_stage_costs(rows, flops=None, title: str = "Where the parameters are"):
    """Horizontal bars: frozen vs trainable parameters per stage, and FLOPs per stage when given."""
    import matplotlib.pyplot as plt

    from memseg.notebook.analysis import stage_flops

    names = [r.name for r in rows]
    y = np.arange(len(rows))
    ncols = 2 if flops is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(10 * ncols, 0.48 * len(rows) + 2.2), sharey=True, squeeze=False, layout="constrained")
    ax = axes[0, 0]
    tr = np.array([r.trainable for r in rows]) / 1e6
    fr = np.array([r.frozen for r in rows]) / 1e6
    ax.barh(y, fr, color="#9aa5b1", label=f"frozen ({fr.sum():.1f} M)")
    ax.barh(y, tr, left=fr, color="#e4572e", label=f"trainable ({tr.sum():.1f} M)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.legend(loc="lower right")
    ax.set_title("parameters per stage")
    if flops is not None:
        ax2 = axes[0, 1]
        fl = np.array([stage_flops(flops, r) for r in rows]) / 1e9
        ax2.barh(y, fl, color="#17bebb")
        for yi, v in zip(y, fl):
            if v > 0:
                ax2.text(v, yi, f" {v:.2f}", va="center", fontsize=12)
        ax2.set_xlabel("GFLOPs (one image)")
        ax2.set_title(f"FLOPs per stage — total {flops.gflops:.2f} GFLOPs")
    fig.suptitle(title)
    _autosave(fig, "stage_costs")
    return fig


def image_grid(images, titles: Sequence[str] | None = None, cols: int = 10, title: str | None = None, size: float = 1.9):
    """A simple grid of images (tensor (N, 3, H, W) or list)."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.9 if title else 0.2)), squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < n:
            _imshow(ax, images[i], titles[i] if titles else None)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    _autosave(fig, "image_grid")
    return fig


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): mean over channels (eq. 5-7's 1/C Σ)."""
    return x.float().mean(dim=1)


@torch.no_grad()
def forward_intermediates(model, images: torch.Tensor) -> dict:
    """``model(normalize(images), return_intermediates=True)`` on the model's device, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return model(normalize(images.to(device)), return_intermediates=True)


def show_di_star(model, image: torch.Tensor, memory_images: torch.Tensor, title: str | None = None):
    """Input, its closest memory sample (eq. 4) and the channel means of DI*_1..3 (eq. 3)."""
    import matplotlib.pyplot as plt

    inter = forward_intermediates(model, image[None] if image.dim() == 3 else image)
    k = int(torch.as_tensor(inter["memory_index"]).flatten()[0])
    dis = inter["DI_star"]
    fig, axes = plt.subplots(1, 2 + len(dis), figsize=(4.4 * (2 + len(dis)), 5), layout="constrained")
    _imshow(axes[0], image if image.dim() == 3 else image[0], "input $I$")
    _imshow(axes[1], memory_images[k], f"closest memory sample\n(memory slot {k})")
    for j, d in enumerate(dis):
        m = channel_mean(d)[0]
        _imshow(axes[2 + j], m, rf"mean of $DI^*_{j + 1}$ ({m.shape[0]}×{m.shape[1]})", cmap="magma", colorbar=True)
    fig.suptitle(title or r"Best difference information $DI^* = \mathrm{argmin}_{DI_i} \sum DI_i$ (eq. 3-4)")
    _autosave(fig, "di_star")
    return fig, k, inter


# --------------------------------------------------------------------------------------------
# 03 training and evaluation
# --------------------------------------------------------------------------------------------


def _ema(values: np.ndarray, alpha: float = 0.15) -> np.ndarray:
    """Exponential moving average (for readable loss curves)."""
    out = np.empty_like(values, dtype=float)
    acc = float(values[0]) if len(values) else 0.0
    for i, v in enumerate(values):
        acc = alpha * float(v) + (1 - alpha) * acc
        out[i] = acc
    return out


class LiveLossPlot:
    """A training callback that redraws the loss curve(s) in the notebook every ``every`` steps.

    Pass it as ``train(config, callback=LiveLossPlot())``; it accepts the callback's step
    record either as ``callback(step, logs)`` or ``callback(logs)`` with a ``"step"`` key.
    """

    IGNORED = ("step", "lr", "seconds", "time", "epoch")

    def __init__(self, every: int = 10, title: str = "training loss (eq. 10)"):
        self.every = max(1, int(every))
        self.title = title
        self.history: dict[str, list[float]] = {}
        self.steps: list[int] = []
        self._handle = None

    def __call__(self, step=None, logs: dict | None = None, **kwargs):
        if logs is None and isinstance(step, dict):
            logs, step = step, step.get("step")
        logs = dict(logs or {}, **{k: v for k, v in kwargs.items() if isinstance(v, (int, float))})
        if step is None:
            step = logs.get("step", len(self.steps) + 1)
        self.steps.append(int(step))
        for k, v in logs.items():
            if k in self.IGNORED or not isinstance(v, (int, float)):
                continue
            self.history.setdefault(k, []).append(float(v))
        if len(self.steps) % self.every == 0:
            self.draw()

    def figure(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 5), layout="constrained")
        colors = {"loss": "#222222", "l1": "#2e86ab", "focal": "#e4572e"}
        for k, vals in self.history.items():
            xs = np.asarray(self.steps[-len(vals) :])
            v = np.asarray(vals)
            main = k in ("loss", "total")
            ax.plot(xs, v, color=colors.get(k), alpha=0.25, lw=1)
            ax.plot(xs, _ema(v), color=colors.get(k), lw=2.6 if main else 1.8, label=f"{k} (smoothed)" if main else k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (log scale)")
        ax.set_title(self.title)
        if self.history:
            ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        return fig

    def draw(self) -> None:
        """(Re)draw the curves in place (one output that is updated, not a new figure per call)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)

    def finish(self) -> None:
        """Final redraw after training (also saved for review when ``$MEMSEG_FIGDIR`` is set)."""
        import matplotlib.pyplot as plt

        self.draw()
        fig = self.figure()
        _autosave(fig, "loss")
        plt.close(fig)


def show_metrics(metrics: dict, title: str = "Evaluation on the test split"):
    """Bar chart of the overall metrics (values in [0, 1]) with the numbers written on the bars."""
    import matplotlib.pyplot as plt

    overall = metrics.get("overall", metrics)
    keys = [k for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max", "image_f1_max") if isinstance(overall.get(k), (int, float))]
    labels = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3", "f1_max": "image F1-max",
              "pixel_f1_max": "pixel F1-max", "image_f1_max": "image F1-max"}
    vals = [float(overall[k]) for k in keys]
    fig, ax = plt.subplots(figsize=(2.6 * max(3, len(keys)) + 1, 5), layout="constrained")
    bars = ax.bar([labels[k] for k in keys], vals, color=["#2e86ab", "#e4572e", "#17bebb", "#f0a202", "#76b041", "#a23b72"][: len(keys)])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.015, f"{v:.3f}", ha="center", fontsize=15, fontweight="bold")
    ax.axhline(0.5, ls="--", color="gray", lw=1)
    ax.text(-0.45, 0.51, "chance (AUROC)", ha="left", color="dimgray", fontsize=12,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5))
    ax.set_ylim(0, 1.08)
    ax.set_title(title)
    _autosave(fig, "metrics")
    return fig


def prediction_grid(images, masks, maps, scores=None, n: int = 4, title: str = "Test predictions"):
    """Rows of input | ground truth | heat map | overlay (``memseg.viz``) for ``n`` test images."""
    import matplotlib.pyplot as plt

    from memseg import viz

    n = min(n, len(images))
    fig, axes = plt.subplots(n, 4, figsize=(17, 4.2 * n), squeeze=False, layout="constrained")
    for i in range(n):
        img = to_numpy_image(images[i])
        amap = to_numpy_image(maps[i])
        _imshow(axes[i, 0], img, "input" + (f"  (score {float(scores[i]):.2f})" if scores is not None else ""))
        _imshow(axes[i, 1], masks[i], "ground truth", cmap="gray", vmin=0, vmax=1)
        _imshow(axes[i, 2], amap, "anomaly map", cmap="jet", vmin=0, vmax=1)
        _imshow(axes[i, 3], viz.overlay((img * 255).astype(np.uint8), amap), "overlay")
    fig.suptitle(title)
    _autosave(fig, "predictions")
    return fig


def plot_ablations(results: Sequence[dict], title: str | None = None):
    """Grouped bars of image / pixel AUROC per ablation variant (``results`` from :func:`run_ablations`)."""
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    if title is None:
        r0 = results[0]
        title = f"Table 5 ablations — {r0.get('steps', '?')} steps at {r0.get('size', '?')}, same seed"
    x = np.arange(len(names))
    w = 0.38
    fig, ax = plt.subplots(figsize=(max(10, 2.6 * len(names)), 5.5), layout="constrained")
    for off, key, label, color in ((-w / 2, "image_auroc", "image AUROC", "#2e86ab"), (w / 2, "pixel_auroc", "pixel AUROC", "#e4572e")):
        vals = [float(r.get(key, np.nan)) for r in results]
        bars = ax.bar(x + off, vals, w, label=label, color=color)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=12)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.1)
    ax.axhline(0.5, ls="--", color="gray", lw=1)
    ax.set_ylabel("AUROC")
    ax.set_ylim(0, 1.18)
    ax.legend(loc="upper center", ncol=2, frameon=False)
    ax.set_title(title)
    _autosave(fig, "ablations")
    return fig


ABLATION_RESULTS = "docs/results/ablation-300-128"
"""The committed 3-seed ablation (``benchmarks/ablation.py``) that notebook 03 shows."""


def measured_ablations(results: str | Path | None = None, repo: Path | None = None) -> list[dict]:
    """The committed multi-seed ablation as rows of mean ± std (%) per category and variant.

    Reads ``<results>/results.json`` written by ``benchmarks/ablation.py`` (default
    :data:`ABLATION_RESULTS` under the repository).
    """
    from memseg.notebook.analysis import summarise_runs

    path = Path(results) if results is not None else repo_root(repo) / ABLATION_RESULTS
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no ablation results at {path}; write them with benchmarks/ablation.py --out {path.parent}")
    rows = json.loads(path.read_text())
    keys = ("image_auroc", "pixel_auroc", "aupro")
    first = ["full", "literal eq. (5)-(7)", "attention off", "memory off"]
    rows.sort(key=lambda r: (r["category"], first.index(r["variant"]) if r["variant"] in first else len(first), r["variant"]))
    table = []
    for s in summarise_runs(rows, keys):
        row = {"category": s["category"], "variant": s["variant"], "seeds": s["n"]}
        for k, label in zip(keys, ("image AUROC", "pixel AUROC", "AUPRO@0.3")):
            std = "" if np.isnan(s[f"{k}_std"]) else f" ± {100 * s[f'{k}_std']:.1f}"
            row[label] = f"{100 * s[k]:.1f}{std}"
        table.append(row)
    return table


# --------------------------------------------------------------------------------------------
# 04 t-SNE of simulated vs real anomalies (paper Fig. 6)
# --------------------------------------------------------------------------------------------

GROUP_COLORS = {"normal": "#2e86ab", "simulated anomaly": "#f0a202", "real anomaly": "#e4572e"}


@dataclass
class EmbeddingSet:
    """Images and labels that go into the t-SNE figure."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    groups: list[str]
    names: list[str]
    features: np.ndarray | None = None  # (N, D)
    embedding: np.ndarray | None = None  # (N, 2)
    extra: dict = field(default_factory=dict)


def tsne_groups(train_ds, test_ds, simulator, n_per_group: int | None = 40, seed: int = 0) -> EmbeddingSet:
    """Three groups of images for Fig. 6, at the datasets' size:

    * ``normal``: normal test images, topped up with normal *training* images when the test split has
      fewer than ``n_per_group`` (their names say ``train/``);
    * ``simulated anomaly``: anomalies simulated on other normal training images (as in training);
    * ``real anomaly``: anomalous test images.
    """
    labels = [int(r.label) for r in test_ds.records]
    normal_idx = [i for i, y in enumerate(labels) if y == 0]
    real_idx = [i for i, y in enumerate(labels) if y == 1]
    normal_idx = [normal_idx[i] for i in pick_indices(len(normal_idx), n_per_group, seed)]
    real_idx = [real_idx[i] for i in pick_indices(len(real_idx), n_per_group, seed + 1)]
    n_target = n_per_group or max(len(normal_idx), len(real_idx))
    perm = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed + 2)).tolist()
    n_top = max(0, min(n_target - len(normal_idx), len(perm) // 2))
    train_normal, sim_src = sorted(perm[:n_top]), sorted(perm[n_top : n_top + n_target])
    test_imgs = load_images(test_ds, indices=normal_idx + real_idx)
    top_imgs = load_images(train_ds, indices=train_normal) if train_normal else test_imgs[:0]
    sim = simulator.simulate(load_images(train_ds, indices=sim_src), generator=torch.Generator().manual_seed(seed))
    images = torch.cat([test_imgs[: len(normal_idx)], top_imgs, sim.images.cpu(), test_imgs[len(normal_idx) :]])
    n_normal = len(normal_idx) + len(train_normal)
    groups = ["normal"] * n_normal + ["simulated anomaly"] * len(sim_src) + ["real anomaly"] * len(real_idx)
    rec, trec = test_ds.records, train_ds.records
    names = (
        [f"test/{rec[i].defect}/{Path(rec[i].image_path).name}" for i in normal_idx]
        + [f"train/good/{Path(trec[i].image_path).name}" for i in train_normal]
        + [f"{s} anomaly on train/good/{Path(trec[i].image_path).name}" for s, i in zip(sim.source, sim_src)]
        + [f"test/{rec[i].defect}/{Path(rec[i].image_path).name}" for i in real_idx]
    )
    return EmbeddingSet(images=images, groups=groups, names=names)


def tsne_figure(emb: EmbeddingSet, title: str = "t-SNE of bottleneck features (paper Fig. 6)", thumb_px: int = 112):
    """Interactive plotly scatter; hover shows group and file name, customdata carries a base64 thumbnail.

    Returns a ``plotly.graph_objects.Figure``. :func:`tsne_hover_browser` adds a live image preview.
    """
    import plotly.graph_objects as go

    if emb.embedding is None:
        raise ValueError("tsne_figure: compute emb.embedding first (memseg.notebook.analysis.tsne_embed)")
    thumbs = [thumbnail_base64(im, thumb_px) for im in emb.images]
    fig = go.Figure()
    for group, color in GROUP_COLORS.items():
        idx = [i for i, g in enumerate(emb.groups) if g == group]
        if not idx:
            continue
        fig.add_trace(
            go.Scatter(
                x=emb.embedding[idx, 0], y=emb.embedding[idx, 1], mode="markers", name=f"{group} ({len(idx)})",
                marker=dict(size=13, color=color, line=dict(width=1, color="white"), opacity=0.85),
                customdata=np.array([[emb.names[i], thumbs[i], i] for i in idx], dtype=object),
                hovertemplate="<b>%{customdata[0]}</b><br>" + group + "<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text=title, font=dict(size=22)), width=950, height=700, font=dict(size=16),
        legend=dict(font=dict(size=16), itemsizing="constant"), xaxis_title="t-SNE 1", yaxis_title="t-SNE 2",
        template="plotly_white",
    )
    return fig


_HOVER_JS = """
var gd = document.getElementById('{plot_id}');
gd.on('plotly_hover', function (ev) {
  var p = ev.points[0];
  var img = document.getElementById('UID-img');
  var cap = document.getElementById('UID-cap');
  if (!img || !p.customdata) { return; }
  img.src = p.customdata[1];
  img.style.borderColor = p.fullData.marker.color;
  cap.innerHTML = '<b>' + p.fullData.name + '</b><br>' + p.customdata[0];
});
"""


_PLACEHOLDER = "data:image/svg+xml;base64," + base64.b64encode(
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect width='10' height='10' fill='#f4f4f4'/></svg>"
).decode("ascii")


def plotly_with_thumbnails(fig, preview_px: int = 240) -> str:
    """HTML of a plotly figure whose hover shows the point's image (``customdata[1]``, a data URI)
    in a preview box beside the plot. plotly.js is inlined, so it works offline (JupyterLab, Voila,
    exported HTML)."""
    import uuid

    uid = "tsne-" + uuid.uuid4().hex[:8]
    plot = fig.to_html(full_html=False, include_plotlyjs=True, post_script=_HOVER_JS.replace("UID", uid),
                       config={"displaylogo": False})
    box = (f"<div style='width:{preview_px + 20}px;font-family:sans-serif;font-size:15px'>"
           f"<img id='{uid}-img' src='{_PLACEHOLDER}' style='width:{preview_px}px;height:{preview_px}px;"
           f"border:4px solid #ccc;background:#f4f4f4' alt=''/>"
           f"<div id='{uid}-cap' style='margin-top:6px'><i>hover a point to see its image</i></div></div>")
    return f"<div style='display:flex;gap:18px;align-items:flex-start'>{plot}{box}</div>"


def show_plotly_with_thumbnails(fig, preview_px: int = 240):
    """Display :func:`plotly_with_thumbnails` in the notebook (returns the IPython HTML object)."""
    from IPython.display import HTML

    return HTML(plotly_with_thumbnails(fig, preview_px))


def plot_neighbour_mix(emb: EmbeddingSet, k: int = 5, title: str | None = None):
    """Heat map of :func:`memseg.notebook.analysis.neighbour_mix` on the embedding: row group → share of neighbours per group."""
    import matplotlib.pyplot as plt

    from memseg.notebook.analysis import neighbour_mix

    names, share = neighbour_mix(emb.embedding, emb.groups, k=k, order=[g for g in GROUP_COLORS if g in emb.groups])
    fig, ax = plt.subplots(figsize=(8.5, 6.5), layout="constrained")
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for a in range(len(names)):
        for b in range(len(names)):
            v = share[a, b]
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=18, fontweight="bold",
                    color="white" if v > 0.55 else "black")
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names])
    ax.set_yticks(range(len(names)), [n.replace(" ", "\n") for n in names])
    ax.set_xlabel(f"group of the {k} nearest neighbours")
    ax.set_ylabel("group of the point")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or f"Who sits next to whom in the t-SNE map ({k}-NN)")
    _autosave(fig, "neighbour_mix")
    return fig


def thumbnail_grid(emb: EmbeddingSet, per_group: int = 8, title: str = "What the three groups look like"):
    """A static matplotlib grid: one row of thumbnails per group (the hover fallback)."""
    import matplotlib.pyplot as plt

    groups = [g for g in GROUP_COLORS if g in emb.groups]
    fig, axes = plt.subplots(len(groups), per_group, figsize=(2.1 * per_group, 2.4 * len(groups) + 0.6), squeeze=False, layout="constrained")
    for r, g in enumerate(groups):
        idx = [i for i, x in enumerate(emb.groups) if x == g][:per_group]
        for c in range(per_group):
            ax = axes[r, c]
            if c < len(idx):
                _imshow(ax, emb.images[idx[c]])
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color(GROUP_COLORS[g])
                    s.set_linewidth(4)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(g.replace(" ", "\n"), fontsize=15, color=GROUP_COLORS[g], fontweight="bold")
    fig.suptitle(title)
    _autosave(fig, "tsne_thumbnails")
    return fig


# --------------------------------------------------------------------------------------------
# 05 spatial attention maps (paper §3.2 eq. 5-7, Fig. 9)
# --------------------------------------------------------------------------------------------


def attention_maps(model, image: torch.Tensor, attention: str | None = None) -> dict[str, np.ndarray]:
    """Channel means of DI*_1..3, M3, M2, M1 and the prediction for one image (3, H, W) in [0, 1].

    Keys: ``DI1, DI2, DI3`` (h_n, w_n), ``M1, M2, M3`` (h_n, w_n), ``prediction`` (H, W) in [0, 1],
    ``memory_index`` (int), ``attention`` ("calibrated" or "literal") and ``scales`` (the spatial means of
    the memory's reference differences S_1..S_3 that calibrated attention reads DI* on).

    ``attention`` recomputes M1..M3 from the same DI* in the other form (the prediction stays the
    model's own), e.g. to see what the literal eq. (5)-(7) would give for this model.
    """
    from memseg.models.memseg.attention import spatial_attention_maps

    inter = forward_intermediates(model, image[None] if image.dim() == 3 else image)
    mode = attention or getattr(model.config, "attention", "literal")
    if mode != getattr(model.config, "attention", "literal"):
        maps = spatial_attention_maps(inter["DI_star"], model.memory.scales if mode == "calibrated" else None)
        inter.update(zip(("M1", "M2", "M3"), maps))
    out = {}
    for j, d in enumerate(inter["DI_star"]):
        out[f"DI{j + 1}"] = channel_mean(d)[0].cpu().numpy()
    for k in ("M1", "M2", "M3"):
        m = inter[k]
        out[k] = (m[0, 0] if m.dim() == 4 else m[0]).float().cpu().numpy()
    out["prediction"] = torch.softmax(inter["logits"].float(), dim=1)[0, 1].cpu().numpy()
    out["memory_index"] = int(torch.as_tensor(inter["memory_index"]).flatten()[0])
    out["attention"] = mode
    out["scales"] = [float(s.mean()) for s in model.memory.scales]
    return out


def attention_contrast(model, dataset, indices: Sequence[int]) -> list[dict]:
    """Where the attention goes: per anomalous image, the mean of DI*_1 (channel mean) and of M1 inside
    the ground-truth defect vs outside it (mask resized to the map by area), and their ratios.

    A ratio above 1 means the memory comparison points at the defect; maps that were the same
    everywhere would give exactly 1.
    """
    import torch.nn.functional as F

    rows = []
    for i in indices:
        item = dataset[int(i)]
        maps = attention_maps(model, item["image"])
        mask = item["mask"].float().reshape(1, 1, *item["mask"].shape[-2:])
        inside = F.interpolate(mask, size=maps["M1"].shape, mode="area")[0, 0].numpy() > 0.5
        if not inside.any() or inside.all():
            continue
        row = {"image": f"{item['defect']}/{Path(item['path']).name}"}
        for key in ("DI1", "M1"):
            m = maps[key]
            row[f"{key} in defect"] = float(m[inside].mean())
            row[f"{key} elsewhere"] = float(m[~inside].mean())
            row[f"{key} ratio"] = row[f"{key} in defect"] / max(row[f"{key} elsewhere"], 1e-12)
        rows.append(row)
    return rows


def plot_spatial_attention(image, mask, maps: dict, title: str | None = None, fig=None):
    """Fig. 9: top row DI*_3 → DI*_2 → DI*_1 (channel means), bottom row M3 → M2 → M1;
    input, ground truth and the final prediction on the right."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(20, 9), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(2, 5)
    _imshow(axes[0, 0], image, "input")
    _imshow(axes[1, 0], mask, "ground truth", cmap="gray", vmin=0, vmax=1)
    for c, n in enumerate((3, 2, 1)):
        d, m = maps[f"DI{n}"], maps[f"M{n}"]
        _imshow(axes[0, c + 1], d, rf"channel mean of $DI^*_{n}$ ({d.shape[0]}×{d.shape[1]})", cmap="magma")
        eq = {3: "(5)", 2: r"(6): $\cdot M_3^U$", 1: r"(7): $\cdot M_2^U$"}[n]
        how = f"on $S_{n}$ (mean {maps['scales'][n - 1]:.2g}), " if maps.get("attention") == "calibrated" else ""
        _imshow(axes[1, c + 1], m, f"$M_{n}$  eq. {eq}\n{how}range [{m.min():.2g}, {m.max():.2g}]", cmap="magma")
    _imshow(axes[0, 4], maps["prediction"], "final prediction", cmap="jet", vmin=0, vmax=1)
    from memseg import viz

    img = to_numpy_image(image)
    _imshow(axes[1, 4], viz.overlay((img * 255).astype(np.uint8), maps["prediction"]), "overlay")
    fig.suptitle(title or "How the spatial attention maps are built (paper Fig. 9)")
    _autosave(fig, "spatial_attention")
    return fig


class AttentionBrowser:
    """A dropdown of test images; choosing one redraws :func:`plot_spatial_attention` for it."""

    def __init__(self, model, dataset, indices: Sequence[int]):
        import ipywidgets as w

        self.model = model
        self.dataset = dataset
        options = [(f"{dataset.records[i].defect}/{Path(dataset.records[i].image_path).name}", int(i)) for i in indices]
        self.dropdown = w.Dropdown(options=options, description="test image", style={"description_width": "90px"},
                                   layout=w.Layout(width="480px"))
        self.out = w.Output()
        self.dropdown.observe(lambda _c: self.update(), names="value")
        self.widget = w.VBox([self.dropdown, self.out])
        self.last = None

    def render(self, index: int):
        item = self.dataset[int(index)]
        maps = attention_maps(self.model, item["image"])
        fig = plot_spatial_attention(item["image"], item["mask"], maps, title=f"{item['defect']}: {Path(item['path']).name}")
        self.last = maps
        return fig, maps

    def update(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        with self.out:
            self.out.clear_output(wait=True)
            fig, _ = self.render(self.dropdown.value)
            display(fig)
            plt.close(fig)

    def _ipython_display_(self):
        from IPython.display import display

        self.update()
        display(self.widget)


__all__ = [
    "NotebookSettings", "setup", "tire_or", "repo_root", "env_flag", "find_dtd", "shared_data", "use_projector_style",
    "save_figure", "thumbnail_base64", "html_table", "load_split", "load_images", "pick_indices", "first_anomalous",
    "make_simulator", "has_textures", "measured_ablations", "attention_contrast", "describe_texture_source", "train_config", "quick_model", "replay_log", "memory_images",
    "model_at_size", "metrics_table", "predictions", "run_ablations", "show_perlin_scales", "show_foreground",
    "show_simulation_steps", "SimulationPanel", "simulation_gallery", "show_stage_table", "plot_stage_costs",
    "image_grid", "show_di_star", "LiveLossPlot", "show_metrics", "prediction_grid", "plot_ablations",
    "EmbeddingSet", "GROUP_COLORS", "tsne_groups", "tsne_figure", "plotly_with_thumbnails",
    "show_plotly_with_thumbnails", "plot_neighbour_mix", "thumbnail_grid", "attention_maps", "plot_spatial_attention",
    "AttentionBrowser",
]


def ablation_budget(settings: NotebookSettings) -> dict:
    """Steps and input size of each Table 5 ablation run: QUICK trains them small and short."""
    if settings.quick:
        return {"steps": min(60, settings.train_steps), "size": (64, 64)}
    return {"steps": settings.train_steps, "size": settings.size}
