"""``memseg predict``: score image files and folders, write heat-map overlays that mirror the inputs' folders
and ``predictions.csv``; files are created exclusively, never through a link that leaves ``--out``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from memseg.data.io import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageTooLargeError, is_image_file
from memseg.engine.inference import CSV_COLUMNS, OVERLAY_SUFFIX, PREDICTIONS_CSV, Prediction, Predictor
from memseg.utils import check_output_dir, create_free_file
from memseg.viz import overlay


# ------------------------------------------------------------------------------- memseg predict
def _free_path(path: Path) -> Path:
    """``path`` if free, else ``name-2.png``, ``name-3.png``, ... (never overwrite silently). A name held by
    anything is taken, a dangling link included (``exists()`` would call it free and a write would follow it)."""
    if not os.path.lexists(path):
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def _expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Paths as given; a folder expands to the image files directly inside it (sorted).

    Returns ``(files, problems)``: a folder without image files is a problem (a message naming it).
    """
    out: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q))
            if not found:
                problems.append(f"{p}: folder holds no image files (expected files ending in "
                                f"{', '.join(IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    return out, problems


def _mirror_root(paths: list[Path]) -> Path:
    """The deepest folder holding every input: overlays mirror the inputs' paths relative to it."""
    parents = [os.path.abspath(p.parent) for p in paths]
    try:
        return Path(os.path.commonpath(parents)) if parents else Path.cwd()
    except ValueError:  # e.g. different drives on Windows: no common folder
        return Path(os.path.abspath(os.sep))


def overlay_path(path: Path, root: Path, out: Path) -> Path:
    """``<out>/<path relative to root, folders kept>/<stem>_overlay.png``, a fresh ``-2`` ... name if taken.

    So ``bottle/test/crack/000.png`` and ``screw/test/crack/000.png`` give two overlays that map back
    to their inputs, instead of ``000_overlay.png`` and ``000_overlay-2.png``.
    """
    rel = Path(os.path.abspath(path)).relative_to(root)
    return _free_path(out / rel.parent / f"{rel.stem}{OVERLAY_SUFFIX}")


class _PredictionTable:
    """``predictions.csv`` (path, score, verdict, overlay) in the output folder, one flushed row per image.

    Created at the first row, so a run where every input failed writes no table; an existing table is
    never overwritten: the new one gets a fresh name (``predictions-2.csv`` ...).
    """

    def __init__(self, out: Path):
        self.out = out
        self.path: Path | None = None
        self._file = None
        self._writer = None

    def add(self, row: tuple) -> None:
        if self._writer is None:
            # created exclusively (O_EXCL, never through a link), a fresh name when taken
            self.path, self._file = create_free_file(self.out / PREDICTIONS_CSV, self.out, mode="w")
            self._writer = csv.writer(self._file)
            self._writer.writerow(CSV_COLUMNS)
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _write_overlay(image: np.ndarray, pred: Prediction, target: Path, out: Path) -> Path:
    """Write the overlay as a new file at ``target`` (a fresh ``-2`` ... name if taken meanwhile) under ``out``;
    never through a link (a planted ``target`` link, or a folder link that leads outside ``out``). Returns its path."""
    target, fh = create_free_file(target, out)
    with fh:
        Image.fromarray(overlay(image, pred.anomaly_map)).save(fh, format="PNG")
    return target


def _failure_message(path: Path, err: Exception) -> str:
    """One line naming the input file (and the flag that lifts a size limit)."""
    if isinstance(err, OSError) and err.strerror:  # e.g. PermissionError: "<path>: Permission denied"
        msg = f"{path}: {err.strerror}"
    else:
        msg = str(err) if str(path) in str(err) else f"{path}: {err}"
    if isinstance(err, ImageTooLargeError):
        msg += " (raise the limit with --max-pixels)"
    return f"memseg predict: error: {msg}"


def run_predict(args: argparse.Namespace) -> int:
    """`memseg predict`: score images; print ``path<TAB>score<TAB>verdict<TAB>overlay`` per image.

    Overlays mirror the inputs' paths (relative to their common folder) under ``--out``, next to
    ``predictions.csv`` (path, score, verdict, overlay; a fresh name if one exists). ``--out`` is
    checked before the model loads. Unreadable or unsupported images are reported on stderr (naming
    the file) and give exit code 2; the others are still scored. Where everything went is printed on
    stderr last, and only when something was written.
    """
    out = Path(args.out)
    check_output_dir(out, "--out")
    paths, problems = _expand(args.images)
    for msg in problems:
        print(f"memseg predict: error: {msg}", file=sys.stderr)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, backend=getattr(args, "backend", "auto"),
                                          max_pixels=getattr(args, "max_pixels", MAX_IMAGE_PIXELS),
                                          images=len(paths))  # the route follows the work (export or not)
    root = _mirror_root(paths)
    table = _PredictionTable(out)
    failed, written = len(problems), 0
    try:
        for path in paths:
            try:  # a bad input is reported and skipped; a failing write (disk full, ...) stops the run
                image = predictor.load(path)
                pred = predictor.predict(image)
            except (FileNotFoundError, PermissionError, ValueError) as err:
                print(_failure_message(path, err), file=sys.stderr)
                failed += 1
                continue
            target = _write_overlay(image, pred, overlay_path(path, root, out), out)
            verdict = "anomalous" if pred.is_anomalous else "normal"
            table.add((str(path), f"{pred.score:.6f}", verdict, str(target)))
            written += 1
            print(f"{path}\t{pred.score:.4f}\t{verdict}\t{target}", flush=True)
    finally:
        table.close()
    if not written:
        print(f"memseg predict: error: none of the {failed} input(s) could be scored; nothing was written",
              file=sys.stderr)
        return 2
    print(f"memseg predict: {written} overlay(s) under {out.absolute()}, table {table.path.absolute()} "
          f"(threshold {predictor.threshold:.4f}, {predictor.threshold_source}; run by {predictor.backend}"
          + (", scores near the threshold again in float32" if predictor.verdict_margin else "") + ")"
          + (f"; {failed} input(s) failed" if failed else ""), file=sys.stderr)
    return 2 if failed else 0
