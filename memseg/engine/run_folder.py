"""A training run's folder: what it holds, when a run may write in it, and its per-step logs.

Layout (``TrainConfig.out``, default ``runs/<category>-<model>``)::

    config.yaml  train_log.csv  train_log.jsonl  validation.json  final.pt  checkpoints/last.pt

Nothing is replaced silently: a non-empty folder is refused unless the run resumes it or
``overwrite`` says so, and then only the files a run writes are removed, each one named.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from memseg.utils import unwritable_folder


CHECKPOINT_DIR = "checkpoints"


LAST_CHECKPOINT = "last.pt"


FINAL_CHECKPOINT = "final.pt"


LOG_CSV = "train_log.csv"


LOG_JSONL = "train_log.jsonl"


CONFIG_YAML = "config.yaml"


VALIDATION_JSON = "validation.json"


# Files a run writes at the top of its folder (``--overwrite`` removes these and checkpoints/*.pt, nothing else).
RUN_FILES = (CONFIG_YAML, LOG_CSV, LOG_JSONL, VALIDATION_JSON, FINAL_CHECKPOINT)


class StepLog:
    """Appends one CSV row and one JSON line per step; on resume, drops lines past the checkpoint (said via ``log``).

    A fresh run starts with no logs (:func:`check_run_dir` refuses a folder that has some unless
    ``overwrite``, which removes them by name), so nothing is deleted here.
    """

    def __init__(self, run_dir: Path, resume_step: int | None, log: Callable[[str], None] = print):
        self.csv_path = run_dir / LOG_CSV
        self.jsonl_path = run_dir / LOG_JSONL
        self.fields: list[str] | None = None
        if resume_step is not None:
            dropped = self._truncate(resume_step)
            if dropped:
                log(f"resume: dropped the log lines of steps {dropped[0]}-{dropped[-1]} from {self.jsonl_path.name} and "
                    f"{self.csv_path.name} (logged after the checkpoint at step {resume_step}; they are trained again)")
        self.csv_fh = open(self.csv_path, "a", newline="")
        self.jsonl_fh = open(self.jsonl_path, "a")

    def _truncate(self, step: int) -> list[int]:
        """Keep only log lines of steps <= ``step`` (a killed run may have logged steps past its last checkpoint);
        returns the steps dropped."""
        dropped: list[int] = []
        if self.jsonl_path.exists():
            rows = [ln for ln in self.jsonl_path.read_text().splitlines() if ln.strip()]
            lines = [ln for ln in rows if json.loads(ln)["step"] <= step]
            dropped = sorted(json.loads(ln)["step"] for ln in rows if json.loads(ln)["step"] > step)
            self.jsonl_path.write_text("".join(ln + "\n" for ln in lines))
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                rows = list(csv.DictReader(fh))
                self.fields = list(rows[0].keys()) if rows else None
            rows = [r for r in rows if int(r["step"]) <= step]
            if self.fields:
                with open(self.csv_path, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)
            else:
                self.csv_path.unlink()  # a log without rows: write() starts it again with its header
        return dropped

    def write(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            csv.DictWriter(self.csv_fh, fieldnames=self.fields).writeheader()
        csv.DictWriter(self.csv_fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        self.jsonl_fh.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self.csv_fh.flush()
        self.jsonl_fh.flush()

    def close(self) -> None:
        self.csv_fh.close()
        self.jsonl_fh.close()


def existing_checkpoints(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / CHECKPOINT_DIR
    return sorted(d.glob("*.pt")) if d.is_dir() else []


# ------------------------------------------------------------------------------------ run folder
def check_run_dir_path(run_dir: Path) -> None:
    """The run folder must be a folder, or not exist yet under a writable folder: checked before any work.

    Raises:
        ValueError: one line naming the path (it, or a folder above it, is a file; or it cannot be written).
    """
    run_dir = Path(run_dir)
    found = unwritable_folder(run_dir)
    if found is None:
        return
    problem, p = found
    if problem == "permission":
        raise ValueError(f"run folder {run_dir}: cannot write in {p} (permission denied); choose another --out")
    where = "is a file" if p == run_dir else f"lies inside {p}, which is a file"
    raise ValueError(f"run folder {run_dir} {where}, not a folder; choose another --out (a folder, created when missing)")


def _rel(paths: list[Path], root: Path) -> str:
    return ", ".join(str(p.relative_to(root)) for p in paths)


def previous_run_files(run_dir: Path) -> list[Path]:
    """The files an earlier run wrote in ``run_dir`` (config, logs, validation, checkpoints, atomic-save leftovers)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    found += sorted(run_dir.glob(".*.tmp"))
    if ckpt_dir.is_dir():
        found += sorted(ckpt_dir.glob("*.pt")) + sorted(ckpt_dir.glob(".*.tmp"))
    return found


def check_run_dir(run_dir: Path, resume: bool = False, overwrite: bool = False) -> list[Path]:
    """Decide, before any work, whether a run may write in ``run_dir``; returns the files ``overwrite`` will remove.

    A fresh run needs a missing or empty folder; ``resume`` needs ``checkpoints/last.pt``; ``overwrite``
    accepts a non-empty folder and removes the previous run's files (:func:`previous_run_files`),
    by name, when the run starts writing (:func:`remove_previous_run`); other files are kept.

    Raises:
        ValueError: the path is a file, or the folder is not empty (without ``resume``/``overwrite``).
        FileNotFoundError: ``resume`` without ``checkpoints/last.pt``.
    """
    run_dir = Path(run_dir)
    check_run_dir_path(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite starts it over: pass one of them")
    if resume:
        ckpt = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} (start a fresh run without --resume)")
        return []
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    if not entries:
        return []
    if overwrite:
        return previous_run_files(run_dir)
    found = existing_checkpoints(run_dir)
    if found:
        raise ValueError(
            f"run folder {run_dir} already has checkpoints ({_rel(found, run_dir)}); pass --resume (resume=True) to "
            "continue it, --overwrite (overwrite=True) to start over, or choose another --out")
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:6]) + (
        f" and {len(entries) - 6} more" if len(entries) > 6 else "")
    raise ValueError(
        f"run folder {run_dir} is not empty ({shown}) and has no checkpoint to resume; pass --overwrite (overwrite=True) "
        "to start over in it (the previous run's files are removed, each one named), or choose another --out")


def remove_previous_run(run_dir: Path, files: list[Path], log: Callable[[str], None] = print) -> None:
    """``overwrite``: remove ``files`` (from :func:`check_run_dir`), saying which, and which other entries stay."""
    run_dir = Path(run_dir)
    if files:
        log(f"overwrite: removing the previous run's files in {run_dir}: {_rel(files, run_dir)}")
    for p in files:
        p.unlink(missing_ok=True)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()
    kept = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    if kept:
        log(f"overwrite: kept {len(kept)} other entr{'y' if len(kept) == 1 else 'ies'} in {run_dir} "
            f"(not written by memseg train): {', '.join(p.name for p in kept[:6])}{' ...' if len(kept) > 6 else ''}")
