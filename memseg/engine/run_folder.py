"""A training run's folder: what it holds, when a run may write in it, and its per-step logs.

Layout (``TrainConfig.out``, default ``runs/<category>-<model>``)::

    config.yaml  train_log.csv  train_log.jsonl  validation.json  final.pt  checkpoints/last.pt

Nothing is replaced silently: a non-empty folder is refused unless the run resumes it or
``overwrite`` says so, and then only the files a run writes are removed, each one named.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import threading
from pathlib import Path
from typing import Callable, Iterator

from memseg.utils import unwritable_folder

CHECKPOINT_DIR = "checkpoints"


LAST_CHECKPOINT = "last.pt"


FINAL_CHECKPOINT = "final.pt"


LOG_CSV = "train_log.csv"


LOG_JSONL = "train_log.jsonl"


CONFIG_YAML = "config.yaml"


VALIDATION_JSON = "validation.json"


# Held (``fcntl.flock``) by the process that runs in the folder, for the run's whole life; it holds that
# process's PID. The OS drops the lock when the process ends, however it ends: a killed run never leaves a
# stale lock (a leftover file without a holder is taken over by the next run).
LOCK_FILE = ".memseg.lock"


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
                log(f"resume: dropped the log lines of steps {dropped[0]}-{dropped[-1]} from {self.jsonl_path.name} "
                    f"and {self.csv_path.name} (logged after the checkpoint at step {resume_step}; they are trained "
                    "again)")
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


# ------------------------------------------------------------------------------------ run folder lock
class RunFolderInUse(RuntimeError):
    """Another process (or thread) holds the run folder: one line naming the folder and the holder's PID."""


_HELD: dict[str, list] = {}  # realpath of a folder this process holds -> [fd, depth, thread id]
_HELD_GUARD = threading.Lock()


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def hold_run_folder(run_dir: str | Path, what: str = "run folder", flag: str = "--out") -> Iterator[Path]:
    """Hold ``run_dir`` for as long as the ``with`` block runs: an ``fcntl.flock`` on ``<run_dir>/.memseg.lock``.

    A second run (another process, or another thread of this one) that asks for the folder meanwhile fails at
    once with :class:`RunFolderInUse` naming the folder and the PID holding it. The same thread may nest holds
    (``memseg benchmark`` holds a (category, seed) folder and ``train`` holds it again). The lock dies with its
    process, so a killed run leaves no stale lock; on release the lock file is removed, and the folder too when
    this call created it and it is empty.
    """
    run_dir = Path(run_dir)
    created = not run_dir.is_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[2] == threading.get_ident():
            held[1] += 1
            nested = True
        elif held is not None:
            raise RunFolderInUse(f"{what} {run_dir} is in use by another run in this process (PID {os.getpid()}); "
                                 f"wait for it to finish, or choose another {flag}")
        else:
            nested = False
    if nested:
        try:
            yield run_dir
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    lock = run_dir / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another process holds it
            pid = _holder_pid(fd)
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            raise RunFolderInUse(f"{what} {run_dir} is in use by another memseg run (PID {pid}, lock {lock}); wait for "
                                 f"it to finish, or choose another {flag}") from None
        try:  # the holder may have released and removed the file between our open and our lock: try again
            same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    with _HELD_GUARD:
        _HELD[key] = [fd, 1, threading.get_ident()]
    try:
        yield run_dir
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(OSError):
            lock.unlink()  # still locked while removed: a run waiting on the old file notices and tries again
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty: the run failed before writing anything


# A checkpoint write's temporary file (memseg.engine.checkpoint.atomic_torch_save: tempfile.mkstemp's name).
_STALE_TMP = re.compile(r"^\.(?:" + "|".join(re.escape(n) for n in (LAST_CHECKPOINT, FINAL_CHECKPOINT))
                        + r")\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temp_files(run_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Remove what killed checkpoint writes left in ``run_dir``: ``.last.pt.*.tmp`` / ``.final.pt.*.tmp`` (up to a
    checkpoint's size each), naming them through ``log``; returns them. Only while the folder is held
    (:func:`hold_run_folder`): then no live run is writing them. Nothing else is touched; an emptied
    ``checkpoints/`` folder is removed."""
    run_dir = Path(run_dir)
    found = [p for d in (run_dir, run_dir / CHECKPOINT_DIR) if d.is_dir()
             for p in sorted(d.iterdir()) if _STALE_TMP.match(p.name) and p.is_file() and not p.is_symlink()]
    for p in found:
        p.unlink(missing_ok=True)
    if found:
        log(f"removed {len(found)} temporary file{'s' if len(found) > 1 else ''} left by an interrupted checkpoint "
            f"write in {run_dir}: {_rel(found, run_dir)}")
        ckpt_dir = run_dir / CHECKPOINT_DIR
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
    return found


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
    raise ValueError(f"run folder {run_dir} {where}, not a folder; choose another --out (a folder, created when "
                     "missing)")


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
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []
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
        f"run folder {run_dir} is not empty ({shown}) and has no checkpoint to resume; pass --overwrite "
        "(overwrite=True) to start over in it (the previous run's files are removed, each one named), or choose "
        "another --out")


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
    kept = sorted(p for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []
    if kept:
        log(f"overwrite: kept {len(kept)} other entr{'y' if len(kept) == 1 else 'ies'} in {run_dir} "
            f"(not written by memseg train): {', '.join(p.name for p in kept[:6])}{' ...' if len(kept) > 6 else ''}")
