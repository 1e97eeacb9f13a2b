"""``memseg pretrain``: make a ResNet18 encoder without downloading anything.

MemSeg freezes an ImageNet ResNet18 (paper §3.2). Where no pretrained weights can be had, the kit
makes its own: the stem and blocks 1-3 are trained *end to end under MemSeg's own objective* (the
simulated anomalies of §3.1, the memory comparison of eq. 3-4, the loss of eq. 8-10) on normal images
(a category's own, or the procedural synthetic scenes), with the memory extracted again from the
current weights every ``memory_refresh_every`` steps. The stem and blocks 1-3 are then written as a
small state dict that ``memseg train --weights FILE`` freezes, with a provenance record beside it
(``<file>.json``: command, data, seed, steps, seconds, sha256).

The run is an ordinary training run (``<out>.run/``: progress bar, ``checkpoints/last.pt`` at least
every two minutes, Ctrl-C saves, ``resume`` continues bit-identically); ``minutes`` is a time budget:
when it is spent, the run stops after the step under way and the encoder is written from there
(``resume`` with a larger budget goes on along the same schedule).

Examples:
    >>> cfg = PretrainConfig(data="data/synthetic", category="washer", out="enc.pt", steps=3000, size=128)
    >>> cfg.run_dir().name
    'enc.run'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from memseg.config import ConfigBase, as_size
from memseg.engine.checkpoint import atomic_torch_save, read_checkpoint
from memseg.engine.run_folder import CHECKPOINT_DIR, LAST_CHECKPOINT
from memseg.engine.train_config import TrainConfig
from memseg.engine.training import train
from memseg.models.encoder_weights import PROVENANCE_MAKER, provenance_path
from memseg.models.memseg.encoder import FROZEN_MODULES

ENCODER_PREFIX = "encoder.backbone."


@dataclass
class PretrainConfig(ConfigBase):
    """What ``memseg pretrain`` needs; every field is a flag of the command."""

    data: str | None = None  # dataset root (one folder per category)
    category: str | None = None  # the category whose normal (train/good) images it learns from
    out: str | None = None  # the encoder file to write (.pt); the run folder is <out without .pt>.run
    layout: str = "auto"
    steps: int = 3000  # length of the schedule (warm-up + cosine)
    minutes: float | None = None  # time budget; None: run all steps
    size: int = 128  # input side (MemSeg's CPU budget; the paper trains at 256)
    seed: int = 0
    lr: float = 0.04
    memory_size: int = 30
    memory_refresh_every: int = 25
    dtd_root: str | None = None
    device: str = "auto"

    def validate(self, source: str = "pretrain") -> None:
        if not self.data or not self.category or not self.out:
            raise ValueError(f"{source}: data, category and out are required")
        if Path(self.out).suffix != ".pt":
            raise ValueError(f"{source}: --out must name a .pt file (the encoder's state dict), got {self.out}")
        if self.steps < 1:
            raise ValueError(f"{source}: --steps must be >= 1, got {self.steps}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"{source}: --minutes must be a number > 0, got {self.minutes}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{source}: --lr must be a number > 0, got {self.lr}")
        as_size(self.size, "--size", min_side=32, multiple_of=32, why="ResNet18 downsamples 32x")

    def run_dir(self) -> Path:
        return Path(self.out).with_suffix(".run")

    def train_config(self) -> TrainConfig:
        """The training run that makes the encoder: MemSeg with ``train_encoder`` from random weights."""
        return TrainConfig(
            data=self.data, category=self.category, layout=self.layout, model="memseg",
            model_options={"weights": "random", "train_encoder": True, "memory_size": self.memory_size,
                           "memory_refresh_every": self.memory_refresh_every,
                           "attention": "calibrated", "head": "no_relu"},
            size=self.size, steps=self.steps, lr=self.lr, seed=self.seed, device=self.device,
            dtd_root=self.dtd_root, out=str(self.run_dir()),
        )


@dataclass
class PretrainResult:
    weights: Path  # the encoder file
    provenance: Path  # <weights>.json
    steps_done: int
    steps: int
    seconds: float


def encoder_state_from_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The stem and blocks 1-3 (timm key names, float16) of a MemSeg training checkpoint, and its step."""
    stored = read_checkpoint(path)
    state = {k[len(ENCODER_PREFIX):]: v for k, v in stored["model_state"].items() if k.startswith(ENCODER_PREFIX)}
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()
             if k.split(".")[0] in FROZEN_MODULES}
    if not state:
        raise ValueError(f"{path}: holds no MemSeg encoder weights (keys {ENCODER_PREFIX}conv1.* ...)")
    return state, int(stored.get("step", 0))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain(config: PretrainConfig, progress: bool = True, *, resume: bool = False, overwrite: bool = False,
             log: Callable[[str], None] = print, command: str | None = None) -> PretrainResult:
    """Train an encoder under MemSeg's objective and write its stem + blocks 1-3 to ``config.out``.

    Args:
        config: the :class:`PretrainConfig`.
        progress: show the training run's progress bar.
        resume: continue ``<out>.run`` from its last checkpoint.
        overwrite: start the run folder over, and replace an existing encoder file.
        log: where notes go.
        command: the command line recorded in the provenance (default: ``sys.argv``).

    Raises:
        FileExistsError: the encoder file exists (without ``overwrite``).
        KeyboardInterrupt: Ctrl-C (``last.pt`` is saved; ``resume`` continues).
    """
    cfg = config
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tc = cfg.train_config()
    started = time.monotonic()
    budget = None if cfg.minutes is None else 60.0 * cfg.minutes

    spent = []

    def stop_when_spent(step: int, _row: dict) -> None:
        if budget is not None and time.monotonic() - started >= budget and step < cfg.steps:
            spent.append(step)
            raise KeyboardInterrupt  # train() saves last.pt at this step, as on Ctrl-C

    def quiet(line: str) -> None:  # train's "interrupted: ... --resume" note is not news when the budget stopped it
        if not (spent and line.startswith("interrupted")):
            log(line)

    last = tc.run_dir() / CHECKPOINT_DIR / LAST_CHECKPOINT
    try:
        train(tc, progress=progress, callback=stop_when_spent, resume=resume, overwrite=overwrite, log=quiet)
    except KeyboardInterrupt:
        if not spent:
            raise
    state, step = encoder_state_from_checkpoint(last)
    seconds = time.monotonic() - started
    atomic_torch_save(state, out)  # existence was checked before training (overwrite or refused)
    record = {
        "made_by": PROVENANCE_MAKER,
        "what": "ResNet18 stem + blocks 1-3 (timm key names, float16), trained end to end under MemSeg's objective "
                "(simulated anomalies, memory re-extracted every memory_refresh_every steps) from random weights",
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": dataclasses.asdict(cfg),
        "textures": tc.dtd_root,
        "steps_done": step, "steps": cfg.steps, "seconds_this_call": round(seconds, 1),
        "sha256": sha256(out), "bytes": out.stat().st_size,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    prov = provenance_path(out)
    prov.write_text(json.dumps(record, indent=2) + "\n")
    if step < cfg.steps:
        log(f"time budget of {cfg.minutes} min spent at step {step} of {cfg.steps}: the encoder is written from there; "
            "--resume with a larger --minutes goes on")
    return PretrainResult(weights=out, provenance=prov, steps_done=step, steps=cfg.steps, seconds=seconds)


__all__ = ["PretrainConfig", "PretrainResult", "encoder_state_from_checkpoint", "pretrain"]
