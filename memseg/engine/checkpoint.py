"""Checkpoints: atomic save, safe load (`torch.load(weights_only=True)`), clear mismatch errors, and the RNG states that
make a resume exact.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``weights_only=True`` (no pickled classes):

- ``format_version`` (int) and ``kind == "memseg-kit-checkpoint"``: what this file is;
- ``model_name`` ("memseg" | "draem" | "mmr") and ``model_config`` (``asdict(model.config)``);
- ``model_state``: ``model.state_dict()`` — for MemSeg this includes the memory bank (buffers);
- ``optimizer_state`` / ``scheduler_state`` (or None), ``step``, ``config`` (the TrainConfig as a dict);
- ``weights_source``: what the encoder was initialised from ("random", "imagenet", a path);
- ``threshold``: image-level decision threshold picked on the validation split (or None);
- ``extra``: anything else, e.g. RNG states in weights_only-safe form (see :mod:`memseg.engine.training`).

Two kinds are written by ``memseg train``:

- the resumable ``<run>/checkpoints/last.pt`` (format 1): all of the above, optimizer and scheduler
  state and the memory bank's features included (172 MB for MemSeg at 256x256, N=30);
- the slim inference checkpoint ``<run>/final.pt`` (format 2): no optimizer/scheduler state, and instead
  of the bank's float32 features (55 MB at 256x256, N=30) the N source images it was built from
  (``memory_images``, (N, 3, H, W) uint8, 5.9 MB); :func:`load_checkpoint` rebuilds the bank from them
  with the stored frozen encoder: bit-identical to the trained bank on the same device (70 MB in all).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memseg.config import as_size
from memseg.engine.checkpoint_record import check_carried_values
from memseg.utils import check_fits_in_memory, select_device, unreadable_reason

FORMAT_VERSION = 2  # the newest format this code reads; 2 = the memory bank may be stored as its source images
KIND = "memseg-kit-checkpoint"
MEMORY_IMAGES = "memory_images"  # slim checkpoints: (N, 3, H, W) uint8 images the memory bank is rebuilt from


def _plain(value: Any) -> Any:
    """Convert config values (dataclasses, Paths, tuples) to weights_only-safe primitives."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def model_config_dict(model: nn.Module) -> dict:
    """The model's config as a plain dict (``asdict(model.config)``), ``{}`` when it has none."""
    if callable(getattr(model, "config_dict", None)):
        return _plain(model.config_dict())
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return _plain(dataclasses.asdict(cfg))
    return _plain(dict(cfg))


def free_bytes(folder: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``folder``."""
    st = os.statvfs(folder)
    return int(st.f_bavail) * int(st.f_frsize)


# Below this many free bytes after a failed write, the failure is taken for a full disk (torch's zip writer
# reports a short write as "unexpected pos ...", ONNX's as "problem writing element ...", without an errno).
DISK_FULL_MARGIN = 1 << 20


def disk_full_error(err: BaseException, path: str | Path, folder: str | Path | None = None) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``path`` when ``err`` (raised while writing it) comes from a full disk, else None.

    A full disk is ``err.errno == ENOSPC``, or a writer error without errno while the file system holding
    ``folder`` (default: ``path``'s) has less than :data:`DISK_FULL_MARGIN` left. Call it before removing what
    the failed write left behind (a partial temporary file still takes its space).
    """
    folder = Path(folder if folder is not None else Path(path).parent)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        full = True
    elif isinstance(err, (RuntimeError, OSError, ValueError)):
        try:
            full = free_bytes(folder) < DISK_FULL_MARGIN
        except OSError:
            full = False
    else:
        full = False
    if not full:
        return None
    return OSError(errno.ENOSPC, f"the disk is full (ENOSPC, no space left on device in {folder}); {Path(path).name} "
                                 "was not written", str(path))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it into place.

    A run killed mid-write, or a write that fails (a full disk: ``OSError(ENOSPC)`` naming ``path``, see
    :func:`disk_full_error`), leaves the previous file intact (never a truncated checkpoint) and no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        full = disk_full_error(err, path) if isinstance(err, Exception) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from None
        raise
    return path


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    config: Any = None,
    step: int = 0,
    extra: dict | None = None,
    threshold: float | None = None,
    weights_source: str | None = None,
    memory_images: torch.Tensor | None = None,
) -> Path:
    """Write a checkpoint atomically (tmp file + ``os.replace``); returns its path.

    Args:
        path: destination ``.pt`` file (parent folders are created).
        model: a memseg-kit model (has ``name`` and ``config``); its ``state_dict`` is stored,
            memory bank included.
        optimizer, scheduler: stored with ``state_dict()`` when given (for ``--resume``).
        config: the training config (dataclass or dict), stored as a plain dict.
        step: number of optimisation steps done.
        extra: more weights_only-safe values (e.g. RNG states, validation metrics).
        threshold: image-level decision threshold (from the validation split).
        weights_source: encoder initialisation ("random", "imagenet" or a path); defaults to
            ``model.config.weights`` when the model has one.
        memory_images: for a slim inference checkpoint: the (N, 3, H, W) uint8 images the model's
            memory bank was built from (``model.prepare(normalize(images / 255))``); they are stored
            instead of the bank's features, which :func:`load_checkpoint` rebuilds from them.
    """
    mcfg = model_config_dict(model)
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    if memory_images is not None:
        _check_memory_images(model, memory_images, "save_checkpoint(memory_images=...)")
        for key in memory_bank_keys(model):
            del state[key]
    ckpt = {
        "kind": KIND,
        "format_version": 1 if memory_images is None else 2,  # the oldest reader that understands the file
        "model_name": str(getattr(model, "name", type(model).__name__.lower())),
        "model_config": mcfg,
        "model_state": state,
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "config": _plain(config) if config is not None else {},
        "step": int(step),
        "weights_source": str(weights_source if weights_source is not None else mcfg.get("weights", "unknown")),
        "threshold": None if threshold is None else float(threshold),
        "extra": _plain(extra) if extra is not None else {},
        "torch_version": str(torch.__version__),
    }
    if memory_images is not None:
        ckpt[MEMORY_IMAGES] = memory_images.detach().cpu().contiguous()
    return atomic_torch_save(ckpt, path)


def memory_bank_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the memory bank's features (``memory.level1..3`` for MemSeg; none for a
    model without a bank): what a slim checkpoint replaces by the bank's source images."""
    bank = getattr(model, "memory", None)
    levels = getattr(bank, "levels", None)
    if bank is None or levels is None:
        return []
    return [f"memory.level{i}" for i in range(1, len(levels) + 1)]


def _check_memory_images(model: nn.Module, images: Any, what: str) -> None:
    """``images`` must be (N, 3, H, W) uint8 at the model's input size with N = its memory size."""
    if not memory_bank_keys(model):
        raise ValueError(f"{what}: the {getattr(model, 'name', type(model).__name__)!r} model has no memory bank to "
                         "rebuild")
    n = model.memory.memory_size
    h, w = (int(v) for v in model.config.input_size)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, h, w):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what}: expected the memory bank's source images as a ({n}, 3, {h}, {w}) uint8 tensor, "
                         f"got {got}")


def _rebuild_memory_bank(net: nn.Module, images: torch.Tensor, path: str | Path) -> None:
    """Fill ``net``'s memory bank from its stored source images (uint8), exactly as training built it."""
    from memseg.utils import normalize

    _check_memory_images(net, images, str(path))
    device = next(net.parameters()).device
    net.prepare(normalize(images.to(device).float().div_(255.0)))


def read_checkpoint(path: str | Path) -> dict:
    """Load the raw checkpoint dict with ``weights_only=True`` (tensors stay on the CPU).

    Raises:
        FileNotFoundError: the file does not exist (names it).
        ValueError: the file is not a memseg-kit checkpoint, or has a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .pt file written by `memseg train`)")
    try:
        # mmap: tensors are read from the file as they are copied into the model, not held twice in memory
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # the unpickler raises many types on foreign/corrupt files (IndexError, EOFError, ...)
        raise ValueError(
            f"{path} is not a memseg checkpoint: {unreadable_reason(path, err)}; expected a .pt file written by "
            "`memseg train` (<run>/final.pt or <run>/checkpoints/last.pt)"
        ) from None  # torch's own text advises loading unsafely: never passed on
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND or "model_state" not in ckpt:
        raise ValueError(
            f"{path} is not a memseg checkpoint (expected a dict with kind={KIND!r}, model_state, model_config; "
            f"found {type(ckpt).__name__}{' with keys ' + str(sorted(ckpt)[:8]) if isinstance(ckpt, dict) else ''})"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format_version={version!r}; this memseg-kit reads up to "
                         f"{FORMAT_VERSION}")
    mcfg = ckpt.get("model_config") if isinstance(ckpt.get("model_config"), dict) else {}
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    check_carried_values(path, ckpt.get("threshold"), mcfg.get("input_size"), cfg.get("top_k"), cfg.get("category"))
    return ckpt


def is_slim(ckpt: dict) -> bool:
    """Whether a checkpoint dict is a slim inference checkpoint (memory bank stored as its source images)."""
    return ckpt.get(MEMORY_IMAGES) is not None


def check_expected(ckpt: dict, path: str | Path, model: str | None = None, input_size: Any = None,
                   memory_size: int | None = None) -> None:
    """Raise ``ValueError`` naming stored and expected values when the checkpoint does not match."""
    stored_name = ckpt.get("model_name")
    if model is not None and stored_name != model:
        raise ValueError(f"{path} holds a {stored_name!r} model, but a {model!r} model was expected")
    mcfg = ckpt.get("model_config") or {}
    if input_size is not None:
        stored = as_size(mcfg["input_size"], "input_size") if mcfg.get("input_size") is not None else None
        if stored != as_size(input_size, "input_size"):
            raise ValueError(f"{path} was trained at input size {stored} (H, W), but input size {as_size(input_size)} "
                             "was expected")
    if memory_size is not None:
        stored_n = mcfg.get("memory_size")
        if stored_n != memory_size:
            raise ValueError(f"{path} has a memory bank of N={stored_n} samples, but N={memory_size} was expected")


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "auto",
    model: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    memory_size: int | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model from the stored config and load its weights (memory bank included).

    Args:
        path: checkpoint file.
        device: "auto" | "cpu" | "cuda".
        model, input_size, memory_size: optional expectations; a mismatch raises ``ValueError``
            naming the stored and the expected value.

    Returns:
        ``(model, info)``: the model in eval mode on ``device``; ``info`` is the checkpoint dict
        without ``model_state`` (step, config, threshold, weights_source, optimizer/scheduler state, extra...)
        plus ``path``. A slim checkpoint's memory bank is rebuilt here from its stored source images
        (one encoder pass over N images on ``device``).
    """
    import inspect

    from memseg.models import MODEL_REGISTRY, build_model

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("model_config") or {}, dict) or not isinstance(ckpt["model_state"], dict):
        raise ValueError(f"{path}: stored model_config and model_state are {type(ckpt.get('model_config')).__name__} "
                         f"and {type(ckpt['model_state']).__name__}, not the mappings `memseg train` writes; the file "
                         "is damaged or was edited")
    check_expected(ckpt, path, model=model, input_size=input_size, memory_size=memory_size)
    ckpt = migrate_checkpoint(ckpt)
    mcfg = dict(ckpt.get("model_config") or {})
    name = ckpt["model_name"]
    try:
        accepts_init = "init_weights" in inspect.signature(MODEL_REGISTRY[name].__init__).parameters
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} holds an unknown model kind {name!r}; this memseg-kit knows "
                         f"{sorted(MODEL_REGISTRY)}") from err
    if not accepts_init and "weights" in mcfg:
        # The stored state replaces every weight: no need to load (or download) the initial ones.
        mcfg["weights"] = "random"
    dev = select_device(device)
    # built on the meta device first: a bad stored config is named with the file, and a size that needs more
    # memory than the machine has is refused with the estimate before anything is allocated
    state_bytes = model_state_bytes(name, mcfg, f"{path}: stored model_config")
    check_fits_in_memory(state_bytes, f"{path}: its {name} model (input size {mcfg.get('input_size')}, memory_size "
                         f"{mcfg.get('memory_size')})", "the stored model_config asks for more than this machine has "
                         "(use a machine with more memory, or a checkpoint trained at a smaller size)", dev)
    net = build_model(name, mcfg, init_weights=False)
    state = ckpt["model_state"]
    if is_slim(ckpt):  # the bank's features (and scales) are rebuilt below; keep load_state_dict strict about the rest
        current = net.state_dict()
        rebuilt = memory_bank_keys(net) + [k.replace("level", "scale") for k in memory_bank_keys(net)]
        state = {**state, **{k: current[k] for k in rebuilt if k not in state}}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) < 600 else detail[:600] + " ..."
        raise ValueError(f"{path}: stored weights do not fit the {ckpt['model_name']!r} model built from its config: "
                         f"{detail}") from err
    net.to(dev).eval()
    if is_slim(ckpt):
        _rebuild_memory_bank(net, ckpt[MEMORY_IMAGES], path)
    info = {k: v for k, v in ckpt.items() if k != "model_state"}
    info["path"] = str(path)
    return net, info


def migrate_checkpoint(ckpt: dict) -> dict:
    """A checkpoint dict written by an older memseg-kit in the current layout (a new dict; the file is untouched).

    The one home of checkpoint migrations, each undone here and nowhere else:

    - MemSeg checkpoints from before the ``head`` and ``attention`` options ran the paper's head and literal
      attention: their ``model_config`` gets ``head="paper"``, ``attention="literal"``;
    - MemSeg checkpoints from before the reference scales ``memory.scale1..3`` (calibrated attention, see
      :meth:`memseg.models.memseg.memory.MemoryBank.reference_differences`): the scales are computed from the
      stored bank as :meth:`MemoryBank.fill` does (a slim checkpoint's bank and scales are rebuilt on load).

    Examples:
        >>> ckpt = migrate_checkpoint(read_checkpoint("runs/old/last.pt"))  # doctest: +SKIP
        >>> ckpt["model_config"]["attention"]                               # doctest: +SKIP
        'literal'
    """
    if ckpt.get("model_name") != "memseg":
        return ckpt
    ckpt = dict(ckpt)
    ckpt["model_config"] = {"head": "paper", "attention": "literal", **(ckpt.get("model_config") or {})}
    state = ckpt["model_state"]
    levels = [state.get(f"memory.level{i}") for i in (1, 2, 3)]
    if any(f"memory.scale{i}" in state for i in (1, 2, 3)) or any(v is None for v in levels):
        return ckpt
    from memseg.models.memseg.memory import MemoryBank
    from memseg.models.memseg.model import MemSegConfig

    def option(key: str) -> Any:  # the stored value, else the default of MemSegConfig
        return ckpt["model_config"].get(key, getattr(MemSegConfig, key))

    bank = MemoryBank(len(levels[0]), [tuple(v.shape[1:]) for v in levels], option("distance"),
                      option("memory_chunk_size"), option("memory_shift"))
    if bool(state.get("memory.memory_ready", False)):  # an empty bank keeps the neutral scales (ones)
        bank.fill([v.float() for v in levels])
    ckpt["model_state"] = {**state, **{f"memory.scale{i}": s for i, s in enumerate(bank.scales, start=1)}}
    return ckpt


def check_model_options(name: str, options: Any, source: str) -> None:
    """Model ``name``'s options (a ``model_config`` or ``model_options`` mapping): known keys, each of its field's
    kind (an integer where the default is one, true/false, a number, a name, a list); else a one-line
    ``ValueError`` starting with ``source`` (the file, flag or option they came from) saying what is expected."""
    from memseg.models import MODEL_CONFIGS

    if not isinstance(options, dict):
        raise ValueError(f"{source}: expected a mapping of {name} model options, got {type(options).__name__}")
    fields = {f.name: f for f in dataclasses.fields(MODEL_CONFIGS[name])}
    unknown = sorted(map(str, set(options) - set(fields)))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for the {name} model; valid keys: {', '.join(fields)}")
    for key, value in options.items():
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = (("true or false", lambda v: isinstance(v, bool)) if isinstance(default, bool) else
                ("an integer", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool))
                if isinstance(default, int) else
                ("a number", lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
                if isinstance(default, float) else
                ("a name (a string)", lambda v: isinstance(v, str)) if isinstance(default, str) else
                ("a list", lambda v: isinstance(v, (list, tuple))) if isinstance(default, tuple) else None)
        if kind is not None and key != "input_size" and not kind[1](value):
            raise ValueError(f"{source}: {key} must be {kind[0]}, got {value!r}")


def model_state_bytes(name: str, options: dict, source: str) -> int:
    """Bytes of model ``name``'s parameters and buffers (memory bank included) for ``options``, found by building it on
    the meta device (nothing is allocated). Options that cannot build the model are a one-line ``ValueError``
    starting with ``source`` (the file or the option they came from) and saying what is expected."""
    from memseg.models import build_model

    check_model_options(name, options, source)
    try:
        with torch.device("meta"):
            net = build_model(name, options, init_weights=False)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{source}: {detail} (building the {name!r} model)") from None
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


# ------------------------------------------------------------------------------------ RNG states (exact resume)
def rng_state(generator: torch.Generator) -> dict:
    """All RNG states in weights_only-safe form (tensors, ints, floats, strings)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "generator": generator.get_state(),  # uint8 tensor
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_cpu"].cpu())
    if state.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
