"""Training loop (paper §4.1): config, simulated-anomaly batches, logs, checkpoints, exact resume.

One step (paper §4.1): a batch of ``batch_normal`` normal + ``batch_anomalous`` simulated
anomalous train images (4 + 4), loss ``model.compute_loss`` (eq. 8-10 for MemSeg), SGD lr 0.04.

Design (each point fixes a slowness or a leak of the public ports):
- train/good images are decoded and resized ONCE into a uint8 tensor on the device; a step only
  indexes it (no decoding, no CPU<->GPU copies of the cache);
- anomalies are simulated batched on the device and images are ImageNet-normalised AFTER compositing;
- the memory bank uses N random train images (seeded) that are not trained on, and a held-back
  validation split (train/good + simulated anomalies) picks the decision threshold — the test
  set is never looked at;
- ``checkpoints/last.pt`` holds everything needed to continue bit-identically (model incl. memory
  bank, optimizer, scheduler, RNG states), written atomically every ``checkpoint_every`` steps, at
  least every ``checkpoint_minutes`` minutes, on Ctrl-C and at the end: a hard kill loses at most
  ``checkpoint_minutes`` (default 2) of training, Ctrl-C nothing;
- the finished model is also written as the slim inference checkpoint ``final.pt`` (no optimizer
  state; the memory bank as its N uint8 source images, see :mod:`memseg.engine.checkpoint`);
- a run folder that is not empty is refused unless the run resumes it or ``overwrite`` says so
  (then the previous run's files are removed, each one named): nothing is replaced silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from memseg.engine.checkpoint import read_checkpoint, rng_state, save_checkpoint, set_rng_state
from memseg.engine.interrupts import checkpoint_on_interrupt, stop_after_step, with_kept_checkpoint
from memseg.engine.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_YAML,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    VALIDATION_JSON,
    StepLog,
    check_run_dir,
    check_run_dir_path,
    hold_run_folder,
    remove_previous_run,
    remove_stale_temp_files,
)
from memseg.engine.train_config import TrainConfig, check_resume_config, model_config_for
from memseg.engine.validation import validate, validation_batches  # noqa: F401  (validation_batches: re-exported)
from memseg.utils import normalize, seed_everything, select_device


def _now() -> float:
    """Clock for time-based checkpoints (``time.monotonic``; tests replace this function)."""
    return time.monotonic()


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    checkpoint: Path  # <run>/final.pt: the slim inference checkpoint (evaluate, predict, the dashboard)
    history: list[dict]  # one dict per step done in this call (step, loss parts, lr, seconds)
    threshold: float | None = None  # image decision threshold from the validation split
    validation: dict | None = None  # validation-split metrics (simulated anomalies, never the test set)
    weights_source: str = "unknown"  # what the encoder was initialised from ("imagenet", "random", a path)
    last: Path | None = None  # <run>/checkpoints/last.pt: the resumable checkpoint (optimizer state, RNG states)
    recipe: dict = dataclasses.field(default_factory=dict)  # options resolved from the encoder (attention, head, ...)


# ---------------------------------------------------------------------------- building blocks
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier after ``step`` scheduler steps: linear warmup, then cosine to ``min_lr_ratio``."""
    if cfg.scheduler == "constant":
        return 1.0
    warm = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(cfg.steps - warm, 1)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """Optimizer over the trainable parameters + a LambdaLR scheduler (stepped once per iteration)."""
    params = model.trainable_parameters()
    if not params:
        raise ValueError(f"model {cfg.model!r} has no trainable parameters")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


def split_indices(n: int, cfg: TrainConfig, memory_size: int) -> dict[str, list[int]]:
    """Seeded disjoint split of the n train/good images into validation, memory and training pools.

    Uses its own generator so the split depends only on the seed (identical on resume).
    """
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    perm = torch.randperm(n, generator=g).tolist()
    n_val = int(round(n * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0 and n_val < 2 and n >= 8:
        n_val = 2
    val, rest = perm[:n_val], perm[n_val:]
    if memory_size > len(rest):
        raise ValueError(
            f"{cfg.category}: only {len(rest)} train/good images remain after holding back {n_val} for validation, "
            f"but the memory bank needs N={memory_size}; lower model_options.memory_size or val_fraction"
        )
    memory = rest[:memory_size]
    pool = rest[memory_size:]
    if len(pool) < 1:
        # Tiny datasets: train on the memory images too rather than not at all (warned).
        warnings.warn(
            f"{cfg.category}: no train/good image left for training after {n_val} validation and {memory_size} memory "
            "images; training on the memory images as well", stacklevel=3)
        pool = list(memory)
    return {"val": sorted(val), "memory": memory, "train": sorted(pool)}


def model_recipe(model) -> dict:
    """The options that follow the encoder's weights, as resolved in the model (recorded in its checkpoint)."""
    return {k: getattr(model.config, k) for k in ("attention", "head", "train_encoder") if hasattr(model.config, k)}


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# ------------------------------------------------------------------------------------- training
def _set_up_device(cfg: TrainConfig) -> torch.device:
    """The run's device, with the determinism (or cuDNN autotuning) the config asks for, and all RNGs seeded."""
    device = select_device(cfg.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    return device


def _train_images(cfg: TrainConfig, device: torch.device, progress: bool) -> torch.Tensor:
    """The category's train/good images decoded and resized ONCE: uint8 (N, 3, H, W) on ``device`` (a step only indexes
    it)."""
    from memseg.data import load_split

    dataset = load_split(cfg.data, cfg.category, split="train", size=cfg.input_size, layout=cfg.layout)
    if len(dataset) == 0:
        raise ValueError(f"{cfg.data}: category {cfg.category!r} has no train/good images")
    return dataset.load_images(progress=progress).to(device)


def train_data_record(cfg: TrainConfig) -> dict:
    """What a run trains on, recorded in its checkpoints: the data root, category, layout, the number of
    train/good images and a SHA-256 of their file list (paths relative to the category folder, with sizes)."""
    import hashlib
    import os

    from memseg.data.datasets import find_records

    records = find_records(cfg.data, cfg.category, split="train", layout=cfg.layout)
    cat = Path(cfg.data) / cfg.category
    digest = hashlib.sha256()
    for r in records:
        name = Path(os.path.relpath(r.image_path, cat)).as_posix()
        digest.update(f"{name}\t{os.path.getsize(r.image_path)}\n".encode())
    return {"root": str(cfg.data), "category": str(cfg.category), "layout": str(cfg.layout), "n_images": len(records),
            "files_sha256": digest.hexdigest()}


def check_resume_data(stored: dict, current: dict, path: Path, log: Callable[[str], None] = print) -> None:
    """``--resume`` on the data the run was trained on, else one line naming both (the stored splits index
    the old file list: other data would fail, or train silently on other images).

    Checkpoints written before the record existed are checked by their image count only.
    """
    extra = stored.get("extra") or {}
    before = extra.get("data") or {}
    n_before = before.get("n_images", extra.get("n_train_images"))
    root_before = before.get("root", (stored.get("config") or {}).get("data"))
    same = ((before["files_sha256"] == current["files_sha256"]) if "files_sha256" in before
            else n_before in (None, current["n_images"]))
    if not same:
        hashes = (f" (file list sha256 {before['files_sha256'][:12]} vs "
                  f"{current['files_sha256'][:12]})") if "files_sha256" in before else ""
        raise ValueError(
            f"--resume: {path} was trained on {n_before} train/good images of {current['category']!r} under "
            f"{root_before}, but the data given ({current['root']}) holds {current['n_images']} with another file "
            f"list{hashes}; resume with the data the run was trained on, or start a new run (another --out)")
    if root_before is not None and str(root_before) != current["root"]:
        log(f"resume: the data moved from {root_before} to {current['root']} (the same {current['n_images']} files)")


def _build_model(cfg: TrainConfig, stored: dict | None, cache: torch.Tensor, device: torch.device):
    """The model on ``device`` (its memory bank filled) and the run's image split; from ``stored`` on resume."""
    from memseg.models import build_model

    if stored is None:
        model = build_model(cfg.model, model_config_for(cfg))
    else:  # the stored model config; weights come from the checkpoint (no download, no file)
        model = build_model(stored["model_name"], stored["model_config"], init_weights=False)
    splits = split_indices(cache.shape[0], cfg, model.memory_size) if stored is None else stored["extra"]["splits"]
    model.to(device)
    if model.memory_size:
        # Memory bank from N train images, no simulation (paper §3.2). On resume the stored bank
        # replaces it; building it anyway keeps lazily registered buffers loadable.
        mem = cache[torch.as_tensor(splits["memory"], device=device)].float().div_(255.0)
        model.prepare(normalize(mem))
    model.train()
    return model, splits


def _build_simulator(model, cfg: TrainConfig, device: torch.device, progress: bool):
    """The anomaly simulator of the run (paper §3.1) with the model's own recipe applied."""
    from memseg.paths import locate_dtd
    from memseg.simulation import NO_DTD_WARNING, AnomalySimulator, SimulationConfig

    # the model's own recipe (e.g. DRAEM's texture-only simulation); explicit `simulation` keys still win
    overrides = {k: v for k, v in model.simulation_overrides().items() if k not in cfg.simulation}
    sim_cfg = dataclasses.replace(SimulationConfig(**cfg.simulation), **overrides)
    if cfg.dtd_root is None and model.needs_simulation:
        warnings.warn(locate_dtd(None).describe(), stacklevel=3)  # where it looked, and how to give textures
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(NO_DTD_WARNING))  # said above, in CLI terms
        return AnomalySimulator(sim_cfg, dtd_root=cfg.dtd_root, size=cfg.input_size, device=device,
                                category=cfg.category, progress=progress)


def _step_batch(images_u8: torch.Tensor, n_normal: int, simulator, gen: torch.Generator, channels_last: bool):
    """One step's batch: the first ``n_normal`` images as they are, the rest with simulated anomalies.

    Returns normalised ``(inputs, masks, clean)``: (B, 3, H, W), (B, 1, H, W) in {0, 1}, (B, 3, H, W).
    """
    clean = images_u8.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    masks = clean.new_zeros(clean.shape[0], 1, *clean.shape[-2:])
    inputs = clean
    if clean.shape[0] > n_normal:
        sim = simulator.simulate(clean[n_normal:], generator=gen)  # eq. (1)-(2), unnormalised images
        inputs = torch.cat([clean[:n_normal], sim.images], dim=0)
        masks[n_normal:] = sim.masks
    x, c = normalize(inputs), normalize(clean)  # normalise AFTER compositing: textures and blends live in [0, 1]
    if channels_last:
        x, c = x.contiguous(memory_format=torch.channels_last), c.contiguous(memory_format=torch.channels_last)
    return x, masks, c


def train(
    config: TrainConfig,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    wording: str = "api",
) -> TrainResult:
    """Train ``config.model`` on ``config.category``; returns the run folder, checkpoints and history.

    Writes ``<run>/checkpoints/last.pt`` (resumable: every ``checkpoint_every`` steps, at least every
    ``checkpoint_minutes`` minutes, on Ctrl-C and at the end) and, when training finishes, the slim
    inference checkpoint ``<run>/final.pt`` (``TrainResult.checkpoint``).

    Args:
        config: the run's :class:`TrainConfig`.
        progress: show a tqdm bar with the live loss.
        callback: called as ``callback(step, logs)`` after every step (logs: loss parts, lr, seconds).
        resume: continue from ``<run>/checkpoints/last.pt`` (weights, optimizer, scheduler and RNG
            states restored: the result is bit-identical to an uninterrupted run on the same device).
        overwrite: start fresh in a run folder that is not empty: the previous run's files are
            removed (each one named through ``log``), other files are kept.
        log: where the run's notes go (files removed by ``overwrite``, log lines dropped on resume,
            the checkpoint written on Ctrl-C).
        wording: how the notes say to go on: "api" names this function's arguments (``resume=True``),
            "cli" the ``memseg train`` flags (``--resume``).

    Raises:
        ValueError: the run folder is a file or is not empty (without ``resume``/``overwrite``), or the
            resumed config differs from the stored one, or the data is unusable.
        FileNotFoundError: ``resume`` without a checkpoint, missing dataset.
        RunFolderInUse: another run (another process) holds the run folder (names the folder and its PID).
        KeyboardInterrupt: after saving ``last.pt`` at the last completed step (resume continues it).
    """
    if wording not in ("api", "cli"):
        raise ValueError(f"wording must be 'api' or 'cli', got {wording!r}")
    cfg = config
    cfg.validate()
    run_dir = cfg.run_dir()
    check_run_dir_path(run_dir)
    with hold_run_folder(run_dir):  # for the run's whole life: a second run into the folder fails at once
        return _train_held(cfg, progress, callback, resume=resume, overwrite=overwrite, log=log, wording=wording)


def _train_held(cfg: TrainConfig, progress: bool, callback: Callable[[int, dict], None] | None, *, resume: bool,
                overwrite: bool, log: Callable[[str], None], wording: str = "api") -> TrainResult:
    """:func:`train`, once its run folder is held."""
    from tqdm.auto import tqdm

    from memseg.paths import locate_dtd

    run_dir = cfg.run_dir()
    ckpt_path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    remove_stale_temp_files(run_dir, log)  # the folder is held: no live run writes these
    to_remove = check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # before any work
    stored = None
    if resume:
        stored = read_checkpoint(ckpt_path)
        check_resume_config(stored.get("config", {}), cfg, ckpt_path)
    if not cfg.data or not cfg.category:
        raise ValueError("TrainConfig needs data (dataset root) and category")
    trained_on = train_data_record(cfg)  # file names and sizes: no image decoded yet
    if stored is not None:
        check_resume_data(stored, trained_on, ckpt_path, log)
    if cfg.dtd_root is None and stored is not None:
        cfg.dtd_root = stored.get("config", {}).get("dtd_root")  # same textures as before the interruption
    else:  # --dtd / dtd_root > $MEMSEG_DTD > the project defaults (memseg.paths); recorded in the config
        cfg.dtd_root = str_or_none(locate_dtd(cfg.dtd_root, flag="--dtd (dtd_root)").path)
    device = _set_up_device(cfg)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cache = _train_images(cfg, device, progress)  # (N, 3, H, W) uint8 on the device, decoded once
    n_images = cache.shape[0]

    # --- model (+ its memory bank from N train images, paper §3.2), optimizer, simulator
    model, splits = _build_model(cfg, stored, cache, device)
    recipe = model_recipe(model)
    if recipe:
        log(f"recipe for encoder weights {model.weights_source}: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
    optimizer, scheduler = build_optimizer(model, cfg)
    start = 0
    if stored is not None:
        model.load_state_dict({k: v.to(device) for k, v in stored["model_state"].items()})
        optimizer.load_state_dict(stored["optimizer_state"])
        scheduler.load_state_dict(stored["scheduler_state"])
        start = int(stored["step"])
    simulator = _build_simulator(model, cfg, device, progress) if model.needs_simulation or splits["val"] else None
    train_idx = torch.as_tensor(splits["train"], device=device)
    refresh = getattr(model, "memory_refresh_every", 0)
    memory_idx = torch.as_tensor(splits["memory"], device=device) if refresh else None
    if stored is not None:
        set_rng_state(stored["extra"]["rng"], gen)  # after all set-up that may draw random numbers

    if overwrite:
        remove_previous_run(run_dir, to_remove, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    if stored is None:
        cfg.to_yaml(run_dir / CONFIG_YAML)
    steplog = StepLog(run_dir, resume_step=start if stored is not None else None, log=log)
    weights_source = model.weights_source
    if stored is not None:
        weights_source = stored.get("weights_source", weights_source)
    base_extra = {"splits": splits, "n_train_images": n_images, "data": trained_on}
    saved = start  # the step last.pt holds (0: none yet)

    def checkpoint(step: int, threshold: float | None = None, validation: dict | None = None) -> Path:
        nonlocal saved
        steplog.flush()
        extra = {**base_extra, "rng": rng_state(gen)}
        if validation is not None:
            extra["validation"] = validation
        try:
            path = save_checkpoint(ckpt_path, model, optimizer, scheduler, config=cfg.to_dict(), step=step,
                                   extra=extra, threshold=threshold, weights_source=weights_source)
        except OSError as err:
            raise with_kept_checkpoint(err, ckpt_path, saved, wording) from None
        saved = step
        return path

    history: list[dict] = []
    bn, ba = cfg.batch_normal, cfg.batch_anomalous
    if not model.needs_simulation:
        bn, ba = bn + ba, 0  # e.g. MMR trains on normal images only
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"train {cfg.model}/{cfg.category}",
               dynamic_ncols=True)
    done: int | None = start  # the last step whose update is complete; None while a step is under way
    channels_last = bool(getattr(model.config, "channels_last", False))  # the model's memory format, for its inputs
    last_save = _now()
    try:
        with stop_after_step() as stop:
            for step in range(start + 1, cfg.steps + 1):
                done = None  # from here until the step's log line is written, the state is half a step
                t0 = time.perf_counter()
                idx = train_idx[torch.randint(len(train_idx), (bn + ba,), generator=gen, device=device)]
                x, masks, c = _step_batch(cache[idx], bn, simulator, gen, channels_last)
                with _autocast(device, cfg.amp):
                    loss, parts = model.compute_loss(x, masks, c)  # eq. (8)-(10) for MemSeg
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if refresh and step % refresh == 0:  # a trainable encoder: memory features from the current weights
                    model.prepare(normalize(cache[memory_idx].float().div_(255.0)))
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                names = [k for k in parts if k != "loss"]
                values = torch.stack([loss.detach().float(), *(parts[k].float() for k in names)]).tolist()  # one sync
                row = {"step": step, "loss": values[0], **dict(zip(names, values[1:]))}
                row.update({"lr": lr, "seconds": round(time.perf_counter() - t0, 4)})
                steplog.write(row)
                history.append(row)
                done = step
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.3g}")
                    steplog.flush()
                if callback is not None:
                    callback(step, row)
                if stop.requested and step != cfg.steps:  # Ctrl-C / SIGTERM came during this step, now complete
                    raise KeyboardInterrupt
                if step != cfg.steps and (step % cfg.checkpoint_every == 0
                                          or _now() - last_save >= 60 * cfg.checkpoint_minutes):
                    checkpoint(step)
                    last_save = _now()
        bar.close()
        threshold, validation = None, None
        if splits["val"] and simulator is not None:
            val_imgs = cache[torch.as_tensor(splits["val"], device=device)]
            validation = validate(model, val_imgs, simulator, cfg, device)
            threshold = validation["threshold"]
            (run_dir / VALIDATION_JSON).write_text(json.dumps(validation, indent=2))
        last = checkpoint(cfg.steps, threshold, validation)
        memory_images = cache[torch.as_tensor(splits["memory"], device=device)].cpu() if model.memory_size else None
        try:
            final = save_checkpoint(run_dir / FINAL_CHECKPOINT, model, config=cfg.to_dict(), step=cfg.steps,
                                    extra={**base_extra, **({"validation": validation} if validation else {})},
                                    threshold=threshold, weights_source=weights_source, memory_images=memory_images)
        except OSError as err:
            raise with_kept_checkpoint(err, ckpt_path, saved, wording) from None
    except KeyboardInterrupt:
        bar.close()
        checkpoint_on_interrupt(done, saved, cfg.steps, ckpt_path, checkpoint, log, wording)
        raise
    finally:
        bar.close()
        steplog.close()
    return TrainResult(run_dir=run_dir, checkpoint=final, history=history, threshold=threshold, validation=validation,
                       weights_source=weights_source, last=last, recipe=recipe)


def str_or_none(path: Path | None) -> str | None:
    return str(path) if path is not None else None
