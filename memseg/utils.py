"""Small shared helpers: device selection, seeding, ImageNet normalisation."""

from __future__ import annotations

import contextlib
import os
import random
import re

import numpy as np
import torch

from memseg.config import NotEnoughMemoryError, check_fits_in_memory, format_bytes, machine_memory  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cpu`/`cuda`/`cuda:1` are taken as given.

    Asking for cuda on a machine without it is an error, not a silent fallback; a name other than auto, cpu, cuda
    or cuda:N is a one-line ``ValueError`` (:func:`check_device_name`), not torch's list of every backend.
    A CUDA device always comes back with its index (``cuda:0``, not ``cuda``), so it compares equal
    to the ``.device`` of the tensors placed on it.
    """
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device) if isinstance(device, torch.device) else torch.device(check_device_name(device))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} was requested but CUDA is not available on this machine; use "
                               "--device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


DEVICE_NAMES = "auto, cpu, cuda or cuda:<index>"


def check_device_name(device: object, source: str = "device") -> str:
    """``device`` if it names a device the kit runs on (auto, cpu, cuda, cuda:N); else a one-line ``ValueError``
    starting with ``source`` (the flag, file or argument it came from), never torch's list of every backend."""
    text = str(device).strip() if isinstance(device, (str, torch.device)) else None
    if text is None or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise ValueError(f"{source} {device!r} is not a device this kit runs on; expected {DEVICE_NAMES}")
    return text


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU torch.Generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of images in [0, 1], shape (B, 3, H, W) or (3, H, W).

    Applied *after* anomaly compositing, never before: the blend of eq. (2) mixes images in [0, 1].
    """
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """A region that runs in float32 even inside an autocast region (e.g. bf16 training on CUDA)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def nearest_existing(path: str | os.PathLike):
    """``path`` itself when it exists, else its nearest existing parent (what decides whether it can be written)."""
    from pathlib import Path

    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def unwritable_folder(path: str | os.PathLike):
    """Why ``path`` cannot become a folder to write into: ``("file", p)`` when ``p``, the nearest
    existing part of it, is a file; ``("permission", p)`` when ``p`` is a folder it may not write in;
    ``None`` when it can. Nothing is created."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        return "file", existing
    if not os.access(existing, os.W_OK | os.X_OK):
        return "permission", existing
    return None


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail at once, before any work, when ``path`` cannot become a folder to write into.

    Raises ``NotADirectoryError`` when ``path`` (or the nearest part of it that exists) is a file and
    ``PermissionError`` when that existing folder is not writable; both name the path and ``flag``.
    Nothing is created: the command makes the folder when it first writes.
    """
    from pathlib import Path

    target = Path(path)
    problem, existing = unwritable_folder(target) or (None, None)
    if problem == "file":
        what = "is a file" if existing == target else f"is a file, so {target} cannot be created"
        raise NotADirectoryError(f"{existing} {what}; {flag} must be a folder (new or existing)")
    if problem == "permission":
        raise PermissionError(f"{existing}: no permission to write there; choose another folder for {flag}")


def _escaping_link(path: str | os.PathLike, root: str | os.PathLike):
    """The first link on the way from ``root`` down to ``path`` (``path`` included) that leads outside ``root``,
    as ``(link, where it leads)``; None when there is none (parts that do not exist yet are not links)."""
    from pathlib import Path

    root_real = os.path.realpath(root)
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    part = Path(os.path.abspath(root))
    for name in rel.parts:
        part = part / name
        if os.path.islink(part):
            target = os.path.realpath(part)
            if os.path.commonpath([root_real, target]) != root_real:
                return part, target
    return None


def create_new_file(path: str | os.PathLike, root: str | os.PathLike, flag: str = "--out", mode: str = "wb"):
    """Open ``path``, a file to be written under the output folder ``root``, as a NEW file; returns the open file.

    Never writes through a link: the file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (an existing
    file or link at ``path``, even a dangling one, raises ``FileExistsError`` naming it), and the folders on
    the way are created only when no link among them leads outside ``root``.

    Raises:
        FileExistsError: ``path`` exists (a file, a folder or a link).
        ValueError: one line naming the link on the way to ``path`` that leads outside ``root`` (``flag``).
    """
    import errno
    from pathlib import Path

    path = Path(path)
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise ValueError(f"{path} is not inside {flag} {root}; refusing to write it") from None
    escaping = _escaping_link(path, root)
    if escaping is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        escaping = _escaping_link(path, root)  # a link planted while the folders were made
    if escaping is not None:
        link, target = escaping
        raise ValueError(f"{link} is a link to {target}, outside {flag} {root}; refusing to write through it "
                         f"(remove the link or choose another {flag})")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        what = "is a link" if os.path.islink(path) else "already exists"
        raise FileExistsError(errno.EEXIST, f"{what}; refusing to overwrite it or write through it",
                              str(path)) from None
    return os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {}))


def create_free_file(path: str | os.PathLike, root: str | os.PathLike, flag: str = "--out", mode: str = "wb"):
    """:func:`create_new_file` at ``path``, else at the first free ``name-2.ext``, ``name-3.ext`` ... (a name
    held by anything, a dangling link included, is taken); returns ``(path, open file)``."""
    from pathlib import Path

    path = Path(path)
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
        if os.path.lexists(candidate):
            continue
        try:
            return candidate, create_new_file(candidate, root, flag, mode)
        except FileExistsError:
            continue  # taken meanwhile: the next name


def _looks_like_text(path: str | os.PathLike) -> bool:
    """The file's first 4 KiB are UTF-8 text without NUL bytes (a YAML, a note, a URL list ...)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def unreadable_reason(path: str | os.PathLike, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` could not read ``path``, in plain words.

    torch's own message advises re-running with ``weights_only=False``, which would run arbitrary
    code from the file; it is never passed on.
    """
    text = str(err)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return f"it holds a pickled Python object ({pickled.group(1)}), not a plain state dict of tensors"
    if _looks_like_text(path):
        return "it is a text file"
    if "zip archive" in text or isinstance(err, EOFError):
        return "it is truncated or corrupt (an incomplete torch.save archive)"
    return "it is not a file written by torch.save"
