"""Anomaly-detection datasets on disk: MVTec AD, BTAD and a plain folder layout.

Labels, defect names and mask paths come from the *layout* (folder names relative to the
category folder), never from string tests on the full path, so a data root such as
``/data/test/good_runs`` works. Image files are those with a suffix in
:data:`memseg.data.io.IMAGE_SUFFIXES` (case-insensitive); other files (``.txt``, ``.json``, hidden
files) are ignored. A corrupt file *with* an image suffix is not ignored: it raises
:class:`memseg.data.io.ImageLoadError` naming it when loaded. Items are sorted by defect folder
name, then file name.

Accepted layouts (``<cat>`` = ``<root>/<category>``):

``mvtec`` (MVTec AD)::

    <cat>/train/good/*.png
    <cat>/test/good/*.png                  normal test images (label 0, defect "good")
    <cat>/test/<defect>/NNN.png            anomalous (label 1, defect = folder name)
    <cat>/ground_truth/<defect>/NNN_mask.png   required for every anomalous test image

``btad`` (BeanTech AD, categories 01, 02, 03)::

    <cat>/train/ok/*.bmp|png
    <cat>/test/ok/*                        normal (label 0, defect "good")
    <cat>/test/ko/*                        anomalous (label 1, defect "ko")
    <cat>/ground_truth/ko/<stem>.png|.bmp  same stem as the image; required

``folder`` (your own images)::

    normal training images, the first that exists of:
        <cat>/train/*   |   <cat>/good/*   |   <cat>/*   (images directly in the category folder)
    optional test split:
        <cat>/test/{good,ok,normal}/*      normal (label 0, defect "good")
        <cat>/test/<defect>/*              anomalous (label 1, defect = folder name)
    optional masks, mirroring test/ (the first of masks/ or ground_truth/ that exists):
        <cat>/masks/<defect>/<stem>.<image suffix>  or  <stem>_mask.<image suffix>

    Without a masks folder the anomalous records have ``mask_path=None`` (image-level labels
    only, ``AnomalyDataset.has_masks`` is False and items carry an all-zero mask). When the masks
    folder exists, every anomalous test image must have its mask.

``detect_layout`` picks ``mvtec`` when ``<cat>/train/good`` exists, ``btad`` when
``<cat>/train/ok`` exists, ``folder`` otherwise.

Errors: a missing root, category (the message lists the categories found), split folder or mask
raises ``FileNotFoundError``; an empty image folder or an unknown layout/split raises ``ValueError``.
Both name the path and the expected layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from memseg.config import SizeLike, as_size, check_fits_in_memory
from memseg.data.io import IMAGE_SUFFIXES, is_image_file, load_image, load_mask, resize_mask, to_tensor

LAYOUTS: tuple[str, ...] = ("mvtec", "btad", "folder")
NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "ok", "normal")
"""Folder names that mean "normal" in the ``folder`` layout's test split."""

_LAYOUT_HELP = {
    "mvtec": "MVTec AD layout <category>/{train/good, test/<defect>, ground_truth/<defect>/NNN_mask.png}",
    "btad": "BTAD layout <category>/{train/ok, test/{ok,ko}, ground_truth/ko/<stem>.png|.bmp}",
    "folder": "folder layout <category>/{train|good|<images>, test/<defect>, masks|ground_truth/<defect>}",
}


@dataclass(frozen=True)
class Record:
    """One image of a split: label 0 = normal (defect "good"), 1 = anomalous."""

    image_path: Path
    mask_path: Path | None
    label: int
    defect: str


# ---------------------------------------------------------------------------------------------
# folder scanning


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, hidden files skipped), sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)),
        key=lambda p: p.name,
    )


def _require_images(folder: Path, layout: str, what: str, category: str) -> list[Path]:
    """The images directly in ``folder``; an error naming the folder, its role and the category otherwise."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found (expected {_LAYOUT_HELP[layout]})")
    images = list_images(folder)
    if not images:
        subdirs = [f"{d.name}/" for d in _visible_dirs(folder)]
        inside = f"; it holds only the sub-folder(s) {', '.join(subdirs[:5])}" if subdirs else ""
        raise ValueError(
            f"{folder}: the {what} folder of category {category!r} holds no images{inside} (expected files "
            f"ending in {', '.join(IMAGE_SUFFIXES)} directly in it; {_LAYOUT_HELP[layout]})"
        )
    return images


def _looks_like(cat: Path, layout: str) -> bool:
    if layout == "mvtec":
        return (cat / "train" / "good").is_dir()
    if layout == "btad":
        return (cat / "train" / "ok").is_dir()
    # folder: any of the accepted train places holds images, or a test/ folder exists
    for sub in (cat / "train", cat / "good", cat):
        if sub.is_dir() and list_images(sub):
            return True
    return (cat / "test").is_dir()


def _check_root(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(f"{root}: data root does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root is not a folder")


def _check_layout(layout: str) -> None:
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"unknown layout {layout!r}; expected one of auto, {', '.join(LAYOUTS)}")


def list_categories(root: str | Path, layout: str = "auto") -> list[str]:
    """Sorted names of the category folders under ``root`` that match ``layout`` (any layout for auto)."""
    root = Path(root)
    _check_root(root)
    _check_layout(layout)
    wanted = LAYOUTS if layout == "auto" else (layout,)
    return [d.name for d in _visible_dirs(root) if any(_looks_like(d, lay) for lay in wanted)]


def _category_dir(root: Path, category: str) -> Path:
    _check_root(root)
    cat = root / category
    if not category or Path(category).name != category or not cat.is_dir():
        found = list_categories(root)
        raise FileNotFoundError(
            f"unknown category {category!r}: {cat} is not a folder; categories found under {root}: "
            f"{', '.join(found) if found else '(none)'}"
        )
    return cat


def detect_layout(root: str | Path, category: str) -> str:
    """``mvtec`` if ``<root>/<category>/train/good`` exists, ``btad`` if ``train/ok`` exists, else ``folder``."""
    cat = _category_dir(Path(root), category)
    for layout in ("mvtec", "btad"):
        if _looks_like(cat, layout):
            return layout
    return "folder"


# ---------------------------------------------------------------------------------------------
# per-layout record builders


def _find_mask(folder: Path, stems: Iterable[str]) -> Path | None:
    """First existing ``folder/<stem><suffix>`` for the given stems and the image suffixes."""
    if not folder.is_dir():
        return None
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            hit = by_name.get(f"{stem}{suffix}".lower())
            if hit is not None:
                return hit
    return None


def _require_mask(img: Path, folder: Path, stems: Iterable[str], expected: str) -> Path:
    """The mask of anomalous test image ``img`` (:func:`_find_mask`); missing -> one line naming what was expected."""
    mask = _find_mask(folder, stems)
    if mask is None:
        raise FileNotFoundError(f"{img}: anomalous test image has no mask; expected {expected}")
    return mask


def _test_folders(test_dir: Path, layout: str) -> list[Path]:
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: test folder not found (expected {_LAYOUT_HELP[layout]})")
    folders = _visible_dirs(test_dir)
    loose = list_images(test_dir)
    if loose:
        raise ValueError(
            f"{test_dir}: holds images directly ({loose[0].name}, ...); expected them in sub-folders "
            f"good/ and <defect>/ ({_LAYOUT_HELP[layout]})"
        )
    if not folders:
        raise ValueError(f"{test_dir}: test folder has no sub-folders (expected {_LAYOUT_HELP[layout]})")
    return folders


def _mvtec_records(cat: Path, split: str) -> list[Record]:
    if split == "train":
        return [Record(p, None, 0, "good") for p in _require_images(cat / "train" / "good", "mvtec", "train/good", cat.name)]
    records: list[Record] = []
    for folder in _test_folders(cat / "test", "mvtec"):
        defect = folder.name
        for img in _require_images(folder, "mvtec", f"test/{defect}", cat.name):
            if defect == "good":
                records.append(Record(img, None, 0, "good"))
                continue
            gt_dir = cat / "ground_truth" / defect
            mask = _require_mask(img, gt_dir, (f"{img.stem}_mask",),
                                 f"{gt_dir / (img.stem + '_mask.png')} ({_LAYOUT_HELP['mvtec']})")
            records.append(Record(img, mask, 1, defect))
    return records


def _btad_records(cat: Path, split: str) -> list[Record]:
    if split == "train":
        return [Record(p, None, 0, "good") for p in _require_images(cat / "train" / "ok", "btad", "train/ok", cat.name)]
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: test folder not found (expected {_LAYOUT_HELP['btad']})")
    records: list[Record] = []
    for name in ("ko", "ok"):  # sorted folder order, as in the other layouts
        folder = test_dir / name
        if not folder.is_dir():
            continue
        for img in _require_images(folder, "btad", f"test/{name}", cat.name):
            if name == "ok":
                records.append(Record(img, None, 0, "good"))
                continue
            gt_dir = cat / "ground_truth" / "ko"
            mask = _require_mask(img, gt_dir, (img.stem,), f"{gt_dir / (img.stem + '.png')} (or .bmp) ({_LAYOUT_HELP['btad']})")
            records.append(Record(img, mask, 1, "ko"))
    if not records:
        raise ValueError(f"{test_dir}: no test/ok or test/ko folder (expected {_LAYOUT_HELP['btad']})")
    return records


def _folder_records(cat: Path, split: str) -> list[Record]:
    if split == "train":
        for sub, what in ((cat / "train", "train"), (cat / "good", "good")):
            if sub.is_dir():
                return [Record(p, None, 0, "good") for p in _require_images(sub, "folder", what, cat.name)]
        return [Record(p, None, 0, "good") for p in _require_images(cat, "folder", "category", cat.name)]
    mask_root = next((cat / n for n in ("masks", "ground_truth") if (cat / n).is_dir()), None)
    records: list[Record] = []
    for folder in _test_folders(cat / "test", "folder"):
        normal = folder.name.lower() in NORMAL_FOLDER_NAMES
        defect = "good" if normal else folder.name
        for img in _require_images(folder, "folder", f"test/{folder.name}", cat.name):
            if normal:
                records.append(Record(img, None, 0, "good"))
                continue
            mask = None
            if mask_root is not None:
                mask = _require_mask(img, mask_root / folder.name, (img.stem, f"{img.stem}_mask"),
                                     f"{mask_root / folder.name / (img.stem + '.png')} (or {img.stem}_mask.png) "
                                     f"since {mask_root} exists ({_LAYOUT_HELP['folder']})")
            records.append(Record(img, mask, 1, defect))
    return records


_BUILDERS = {"mvtec": _mvtec_records, "btad": _btad_records, "folder": _folder_records}


def find_records(root: str | Path, category: str, split: str = "train", layout: str = "auto") -> list[Record]:
    """The sorted :class:`Record` list of a split, without decoding any image."""
    root = Path(root)
    _check_layout(layout)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    cat = _category_dir(root, category)
    if layout == "auto":
        layout = detect_layout(root, category)
    return _BUILDERS[layout](cat, split)


# ---------------------------------------------------------------------------------------------
# the dataset


class AnomalyDataset(Dataset):
    """Images (and masks) of one split, decoded lazily and resized to ``size`` = (H, W).

    Item: ``dict(image FloatTensor (3, H, W) in [0, 1], mask FloatTensor (1, H, W) in {0, 1},
    label int, defect str, path str)``. Images are resized bilinear with antialias, masks with
    nearest neighbour; a mask whose native size differs from its image's raises ``ValueError``.
    """

    def __init__(self, records: Sequence[Record], size: SizeLike = (256, 256)) -> None:
        self.records: list[Record] = list(records)
        self.size: tuple[int, int] = as_size(size)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def defects(self) -> list[str]:
        return [r.defect for r in self.records]

    @property
    def paths(self) -> list[str]:
        return [str(r.image_path) for r in self.records]

    @property
    def has_masks(self) -> bool:
        """True when every anomalous record has a ground-truth mask (pixel metrics possible)."""
        return all(r.mask_path is not None for r in self.records if r.label == 1)

    def _mask(self, record: Record, native_hw: tuple[int, int]) -> np.ndarray:
        """bool (H, W) at ``self.size``; zeros for normal images and images without a mask."""
        if record.mask_path is None:
            return np.zeros(self.size, dtype=bool)
        mask = load_mask(record.mask_path)
        if mask.shape != native_hw:
            raise ValueError(
                f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{record.image_path} is {native_hw[1]}x{native_hw[0]}; expected the same size"
            )
        return resize_mask(mask, self.size)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = load_image(record.image_path)  # uint8 (H0, W0, 3)
        mask = self._mask(record, image.shape[:2])
        return {
            "image": to_tensor(image, self.size),  # (3, H, W) in [0, 1]
            "mask": torch.from_numpy(mask).float()[None],  # (1, H, W) in {0, 1}
            "label": int(record.label),
            "defect": record.defect,
            "path": str(record.image_path),
        }

    def load_images(self, indices: Sequence[int] | None = None, progress: bool = True) -> torch.Tensor:
        """Decode and resize the images once: ``uint8 Tensor (N, 3, H, W)`` (training cache, memory bank)."""
        idx = range(len(self)) if indices is None else list(indices)
        h, w = self.size
        check_fits_in_memory(len(idx) * 3 * h * w, f"size {(h, w)}: {len(idx)} images decoded at {w}x{h} px (uint8)",
                             "choose a smaller size")  # before allocating: one line with the estimate
        out = torch.empty((len(idx), 3, *self.size), dtype=torch.uint8)
        for row, i in enumerate(tqdm(idx, desc="loading images", disable=not progress, leave=False)):
            x = to_tensor(load_image(self.records[i].image_path), self.size)  # (3, H, W)
            out[row] = x.mul_(255.0).round_().to(torch.uint8)
        return out

    def load_masks(self, indices: Sequence[int] | None = None, progress: bool = True) -> torch.Tensor:
        """All masks at ``size``: ``uint8 Tensor (N, 1, H, W)`` in {0, 1} (zeros for normal images)."""
        idx = range(len(self)) if indices is None else list(indices)
        out = torch.zeros((len(idx), 1, *self.size), dtype=torch.uint8)
        for row, i in enumerate(tqdm(idx, desc="loading masks", disable=not progress, leave=False)):
            record = self.records[i]
            if record.mask_path is not None:
                out[row, 0] = torch.from_numpy(load_mask(record.mask_path, self.size).astype(np.uint8))
        return out


def load_split(
    root: str | Path,
    category: str,
    split: str = "train",
    size: SizeLike = (256, 256),
    layout: str = "auto",
) -> AnomalyDataset:
    """The ``train`` or ``test`` split of ``<root>/<category>`` as an :class:`AnomalyDataset`."""
    return AnomalyDataset(find_records(root, category, split, layout), size=size)
