"""Train once, reuse after: a run folder whose ``final.pt`` is reused while its stored training config
still matches. The one builder of the small cached models of the notebooks and the Voila demo.

Examples:
    >>> from memseg.engine.cached_run import cached_training
    >>> checkpoint, cached = cached_training(config, name="demo model")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

# TrainConfig fields that do not change the trained model (or that training resolves itself).
_NOT_COMPARED = {"device", "log_every", "checkpoint_every", "checkpoint_minutes"}


def same_config(stored: dict, current: dict) -> bool:
    """Whether a checkpoint's stored TrainConfig dict trains the same model as ``current``'s
    (device and logging/checkpoint intervals aside; a ``dtd_root`` left to training's default is not compared)."""
    ignore = set(_NOT_COMPARED) | ({"dtd_root"} if current.get("dtd_root") is None else set())
    if current.get("dtd_root") is not None:  # training records the resolved folder
        current = {**current, "dtd_root": str(Path(current["dtd_root"]).expanduser().resolve())}
    keys = (set(stored) | set(current)) - ignore
    return all(json.dumps(stored.get(k), sort_keys=True) == json.dumps(current.get(k), sort_keys=True) for k in keys)


def _stored_step(checkpoint: Path, cfg) -> int | None:
    """The step a checkpoint holds when it was trained with ``cfg``'s settings, else None (also when unreadable)."""
    from memseg.engine.checkpoint import read_checkpoint

    if not checkpoint.is_file():
        return None
    try:
        stored = read_checkpoint(checkpoint)
    except (ValueError, FileNotFoundError):
        return None
    return int(stored.get("step", -1)) if same_config(stored.get("config", {}), cfg.to_dict()) else None


def replay_log(log: str | Path, callback: Callable) -> int:
    """Feed a run's per-step ``train_log.jsonl`` into ``callback(step, row)``; returns the rows replayed."""
    n = 0
    for line in Path(log).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            callback(int(row["step"]), row)
            n += 1
    return n


def cached_training(cfg, name: str = "model", retrain: bool = False, progress: bool = True,
                    callback: Callable | None = None, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Train ``cfg`` (a :class:`memseg.engine.train_config.TrainConfig`) into its run folder once; returns
    ``(final.pt path, cached)``.

    ``<out>/final.pt`` is reused when its stored config matches ``cfg`` (:func:`same_config`, same steps) and
    ``retrain`` is False; then the stored per-step log is replayed into ``callback(step, logs)``, so a loss plot
    looks the same either way. Otherwise an interrupted run of the same config (``checkpoints/last.pt``) is
    resumed, or the run folder's previous run is replaced. A finished run keeps only its slim ``final.pt``.
    """
    from memseg.engine import training
    from memseg.engine.run_folder import CHECKPOINT_DIR, FINAL_CHECKPOINT, LAST_CHECKPOINT, LOG_JSONL

    run = cfg.run_dir()
    final = run / FINAL_CHECKPOINT
    if not retrain and _stored_step(final, cfg) == cfg.steps:
        log(f"reusing the cached {name} {final} (delete it to retrain)")
        if callback is not None and (run / LOG_JSONL).is_file():
            replay_log(run / LOG_JSONL, callback)
        return final, True
    resume = not retrain and _stored_step(run / CHECKPOINT_DIR / LAST_CHECKPOINT, cfg) is not None
    h, w = cfg.input_size
    log(f"no cached {name} at {final}; {'resuming' if resume else 'training'} a quick {name} ({cfg.steps} steps, "
        f"{h}x{w}, batch {cfg.batch_normal} + {cfg.batch_anomalous}, weights "
        f"{cfg.model_options.get('weights', 'default')}, device {cfg.device}) ...")
    t0 = time.perf_counter()
    result = training.train(cfg, progress=progress, callback=callback, resume=resume, overwrite=not resume, log=log)
    # final.pt (the cache marker) exists only once the run finished; its resumable twin is not needed any more
    # (and would show up as a second model in the dashboard's list).
    result.last.unlink()
    if not any(result.last.parent.iterdir()):
        result.last.parent.rmdir()
    log(f"trained in {time.perf_counter() - t0:.1f} s -> {result.checkpoint} "
        f"(removed the resumable {result.last.relative_to(run)}: the run is finished)")
    return result.checkpoint, False
