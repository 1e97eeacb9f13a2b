"""Procedural synthetic anomaly dataset in MVTec AD layout, deterministic from a seed.

Three categories, drawn with numpy and Pillow only (no torch, no downloads):

- ``weave`` (texture): a plain-woven fabric; every image varies in thread phase, a slight
  rotation (about ±2°, at most 4°), thread period, colour and brightness, per-thread shading, low-
  frequency lighting and pixel noise. Defects: ``color`` (a spot of foreign-coloured thread),
  ``hole`` (torn fabric showing the dark backing), ``scratch`` (pulled / abraded thread line),
  ``stain`` (a brownish smudge).
- ``washer`` (object): a metal washer centred on a plain dark background (grey ~18-30, the
  washer ~85-230, so a grey-level or Otsu threshold separates them; see
  ``memseg.simulation.foreground.FOREGROUND_PRESETS["washer"]``), with position jitter of a few pixels,
  size, rotation (a stamped groove arc and brushed streaks turn with it) and lighting direction.
  Defects: ``color`` (paint spot), ``extra_part`` (a burr on the rim), ``hole`` (a drilled hole
  through the ring), ``missing_part`` (a chip out of the rim), ``scratch``, ``stain``.
- ``toys``: the paper's §4.7 toy anomalies (Fig. 10): regular shapes of random size, colour,
  position, angle and aspect ratio pasted on normal (weave) images, one defect folder per shape:
  ``circle``, ``heart``, ``lightning``, ``rectangle``, ``star``, ``triangle``.

Ground-truth masks are *exact*: a defect is rendered inside a region, and the mask is the set
of pixels of that region whose 8-bit value actually changed (``mask == any(defect != clean)``);
:func:`render_defect` returns the clean image too, so this can be checked.

Every image has its own random stream ``SeedSequence([seed, category, split, defect, index])``,
so changing ``n_train`` does not change the test images. Output (per category)::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png      (L mode, 0 / 255)
    <out>/<category>/dataset.json                            (seed, size, counts, version)

A category is written to a temporary sibling folder and moved into place at the end, so an
interrupted run never leaves a half-written category behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from memseg.config import SizeLike, check_fits_in_memory
from memseg.data.synthetic_scenes import CATEGORIES, DEFECTS, KINDS, check_categories, render_defect, render_normal, scene_size

VERSION = 1
DEFAULT_SIZE = 256
DEFAULT_N_TRAIN = 80
DEFAULT_N_TEST_GOOD = 10
DEFAULT_N_TEST_DEFECT = 8

_CATEGORY_IDS = {"weave": 1, "washer": 2, "toys": 3}  # stable stream ids (never hash())
_SPLIT_IDS = {"train": 0, "test": 1}


def _rng(seed: int, category: str, split: str, defect_id: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _CATEGORY_IDS[category], _SPLIT_IDS[split], defect_id, index]))


class OutputExistsError(FileExistsError, ValueError):
    """A category folder already holds data and ``overwrite`` was not given (a ValueError too, so the CLI reports it)."""


# ---------------------------------------------------------------------------------------------
# writing the dataset


def _plan(category: str, seed: int, size: tuple[int, int], n_train: int | None, n_test: int | None) -> dict:
    """The dataset.json content that a generation with these parameters writes."""
    n_train = DEFAULT_N_TRAIN if n_train is None else int(n_train)
    n_good = DEFAULT_N_TEST_GOOD if n_test is None else int(n_test)
    n_defect = DEFAULT_N_TEST_DEFECT if n_test is None else int(n_test)
    if n_train < 1 or n_good < 1 or n_defect < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got n_train={n_train}, n_test={n_test}")
    counts = {"train/good": n_train, "test/good": n_good, **{f"test/{d}": n_defect for d in DEFECTS[category]}}
    return {
        "generator": "memseg.data.synthetic",
        "version": VERSION,
        "category": category,
        "kind": KINDS[category],
        "seed": int(seed),
        "size": [size[0], size[1]],
        "n_train": n_train,
        "n_test_good": n_good,
        "n_test_per_defect": n_defect,
        "defects": list(DEFECTS[category]),
        "counts": counts,
        "n_masks": n_defect * len(DEFECTS[category]),
    }


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=4)


def _write_category(folder: Path, plan: dict, progress: bool) -> None:
    category, seed, size = plan["category"], plan["seed"], tuple(plan["size"])
    total = sum(plan["counts"].values())
    bar = tqdm(total=total, desc=f"synth {category}", disable=not progress, leave=False)
    (folder / "train" / "good").mkdir(parents=True)
    (folder / "test" / "good").mkdir(parents=True)
    for i in range(plan["n_train"]):
        image, _ = render_normal(category, size, _rng(seed, category, "train", 0, i))
        _save_png(image, folder / "train" / "good" / f"{i:03d}.png")
        bar.update()
    for i in range(plan["n_test_good"]):
        image, _ = render_normal(category, size, _rng(seed, category, "test", 0, i))
        _save_png(image, folder / "test" / "good" / f"{i:03d}.png")
        bar.update()
    for d_id, defect in enumerate(plan["defects"], start=1):
        (folder / "test" / defect).mkdir()
        (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(plan["n_test_per_defect"]):
            _, image, mask = render_defect(category, defect, size, _rng(seed, category, "test", d_id, i))
            _save_png(image, folder / "test" / defect / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}_mask.png")
            bar.update()
    bar.close()
    (folder / "dataset.json").write_text(json.dumps(plan, indent=2) + "\n")


SCENE_BYTES_PER_PIXEL = 24
"""A lower bound of what rendering one scene holds per pixel: its coordinate grid (int64, then float32)."""


def check_scene_memory(hw: tuple[int, int], source: str = "size") -> None:
    """Refuse, before rendering, a scene size whose memory (at least :data:`SCENE_BYTES_PER_PIXEL` per pixel)
    exceeds the machine's: one line naming ``source`` (``--size`` on the command line) with the estimate."""
    h, w = hw
    check_fits_in_memory(SCENE_BYTES_PER_PIXEL * h * w, f"{source} {h if h == w else (h, w)} (one {w}x{h} px scene)",
                         f"choose a smaller {source} (the default is {DEFAULT_SIZE})")


def generate(
    out: str | Path,
    categories: Sequence[str] | None = None,
    seed: int = 0,
    size: SizeLike = DEFAULT_SIZE,
    n_train: int | None = None,
    n_test: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic dataset under ``out`` (one MVTec AD folder per category); returns ``out``.

    ``n_train`` normal training images (default 80); ``n_test`` test images per defect type *and*
    good test images (default 8 per defect, 10 good). Refuses to replace a non-empty category
    folder unless ``overwrite=True``.
    """
    out = Path(out)
    categories = list(CATEGORIES if categories is None else categories)
    check_categories(categories)
    hw = scene_size(size)
    check_scene_memory(hw)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: output root exists and is not a folder")
    plans = {c: _plan(c, seed, hw, n_train, n_test) for c in categories}
    for c in categories:
        target = out / c
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise OutputExistsError(f"{target}: category folder already exists and is not empty; "
                                  f"pass overwrite=True (--overwrite) to replace it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for c in categories:
        target = out / c
        tmp = Path(tempfile.mkdtemp(prefix=f".{c}.tmp-", dir=out))
        try:
            _write_category(tmp, plans[c], progress)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _matches(folder: Path, plan: dict) -> bool:
    """True when ``folder/dataset.json`` equals ``plan`` and the image counts on disk agree."""
    meta = folder / "dataset.json"
    if not meta.is_file():
        return False
    try:
        found = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    if found != plan:
        return False
    for split_defect, n in plan["counts"].items():
        if len(list((folder / split_defect).glob("*.png"))) != n:
            return False
    return all(len(list((folder / "ground_truth" / d).glob("*_mask.png"))) == plan["n_test_per_defect"] for d in plan["defects"])


def ensure_synthetic(
    root: str | Path = "data/synthetic",
    categories: Sequence[str] | None = None,
    size: SizeLike = DEFAULT_SIZE,
    seed: int = 0,
    **kw,
) -> Path:
    """Generate the categories that are missing under ``root``; reuse those whose dataset.json matches.

    Extra keywords (``n_train``, ``n_test``, ``overwrite``, ``progress``) go to :func:`generate`. An
    existing category generated with other parameters is an error unless ``overwrite=True``.
    """
    root = Path(root)
    categories = list(CATEGORIES if categories is None else categories)
    check_categories(categories)
    hw = scene_size(size)
    missing = [c for c in categories if not _matches(root / c, _plan(c, seed, hw, kw.get("n_train"), kw.get("n_test")))]
    if missing:
        try:
            generate(root, missing, seed=seed, size=size, **kw)
        except OutputExistsError as err:
            raise OutputExistsError(f"{err} (its dataset.json does not match seed={seed}, size={hw}, "
                                  f"n_train={kw.get('n_train')}, n_test={kw.get('n_test')})") from err
    return root


def generate_synthetic_if_missing(root: str | Path, category: str, seed: int = 0,
                                  categories: Sequence[str] | None = None,
                                  log: Callable[[str], None] | None = print) -> bool:
    """Generate the synthetic dataset into ``root`` when it lacks ``category`` and that is a synthetic one.

    Nothing is ever written into a real dataset: ``root`` must be missing or hold synthetic categories
    only. ``categories`` are the ones generated (default: ``[category]``), with
    :func:`ensure_synthetic`. Returns True when something was generated.
    """
    root = Path(root)
    if (root / category).is_dir() or category not in CATEGORIES:
        return False
    existing = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    if not all(name in CATEGORIES for name in existing):
        return False
    if log is not None:
        log(f"generating the synthetic dataset ({', '.join(categories or [category])}) into {root} (seed {seed}) ...")
    ensure_synthetic(root, categories=list(categories or [category]), seed=seed, progress=log is not None)
    return True
