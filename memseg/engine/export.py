"""Export a trained MemSeg model as ONNX: the whole graph (``memseg export``) or the two halves of the bf16 route.

The exported graph is the whole network of :meth:`MemSeg.anomaly_map`, memory bank and DI* search
(eq. 3-4) included: ImageNet-normalised images ``input`` (B, 3, H, W) float32 at the model's input
size -> ``anomaly_map`` (B, 1, H, W) float32 in [0, 1], with a dynamic batch axis. What a deployer
needs besides the graph (input size, normalisation, the decision threshold picked on the validation
split, top-k of the image score, category, encoder weights) is stored in the file's metadata under
the key ``memseg``, as JSON (:meth:`memseg.engine.checkpoint_record.CheckpointRecord.onnx_metadata`).

Every export is run once against torch before it is kept (maps within 1e-4). What runs the files is
elsewhere: :mod:`memseg.engine.onnx_runtime` (the whole graph) and :mod:`memseg.engine.mixed_precision`
(the halves), both :class:`memseg.engine.backends.InferenceBackend`. The export cache (:func:`cache_dir`)
holds the exports of the fast CPU routes, keyed by the checkpoint's bytes, the model code and the torch version.

Examples:
    >>> from memseg.engine.export import export_onnx
    >>> export_onnx("runs/bottle/final.pt", "bottle.onnx")      # doctest: +SKIP
    >>> from memseg.engine.inference import Predictor
    >>> Predictor.from_checkpoint("bottle.onnx").predict("img.png").score  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from memseg.engine.deploy_extra import require_modules
from memseg.engine.onnx_runtime import EXPORTABLE, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ort_session
from memseg.models.memseg.memory import MemoryBank, difference
from memseg.utils import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from memseg.engine.checkpoint_record import CheckpointRecord

__all__ = ["CACHE_ENV", "METADATA_KEY", "OPSET", "cache_dir", "cache_key", "cached_halves", "cached_onnx",
           "export_halves", "export_onnx", "exportable"]

OPSET = 18
CACHE_ENV = "MEMSEG_CACHE_DIR"


class _AnomalyMapGraph(nn.Module):
    """What is exported: normalised images (B, 3, H, W) -> anomaly map (B, 1, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.anomaly_map(x).float().clamp(0.0, 1.0)


def _metadata(record: CheckpointRecord) -> dict:
    """The deployment facts stored beside the graph (JSON-safe): the record, and how to feed the graph."""
    return {
        "format": "memseg-kit-onnx",
        **record.onnx_metadata(),
        "input": f"{INPUT_NAME}: float32 (B, 3, H, W), RGB in [0, 1] normalised with mean {list(IMAGENET_MEAN)} "
                 f"and std {list(IMAGENET_STD)}",
        "output": f"{OUTPUT_NAME}: float32 (B, 1, H, W) in [0, 1]; image score = mean of the top_k highest pixels",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def exported_distances(bank: MemoryBank, features: list[torch.Tensor]) -> torch.Tensor:
    """:meth:`MemoryBank.distances` (Σ DI_n over all levels, eq. 3-4) as an exportable graph: ONNX has no cdist.

    The same sums, written out one memory sample at a time, so each difference (B, D_l) stays in the CPU cache,
    and the (B, N) result is stacked, not written into slices (which onnxruntime runs as ScatterND).
    """
    b = features[0].shape[0]
    xs = [f.float().reshape(b, -1) for f in features]  # II_l: (B, D_l)
    mems = [mem.float().reshape(bank.memory_size, -1) for mem in bank.levels]  # MI_l: (N, D_l)
    columns = []
    for n in range(bank.memory_size):
        total = None
        for x, m in zip(xs, mems):
            d = difference(m[n], x, bank.distance).sum(dim=-1)  # Σ DI_n over level l: (B,)
            total = d if total is None else total + d
        columns.append(total)
    return torch.stack(columns, dim=1)  # (B, N)


@contextlib.contextmanager
def exportable(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its DI* search replaced by :func:`exported_distances` while it is exported (restored after).

    Examples:
        >>> with exportable(model):                                        # doctest: +SKIP
        ...     torch.onnx.export(_AnomalyMapGraph(model), (x,), "m.onnx", dynamo=True)
    """
    bank = getattr(model, "memory", None)
    if bank is None:
        yield model
        return
    bank.distances = functools.partial(exported_distances, bank)  # an instance attribute shadows the method
    try:
        yield model
    finally:
        del bank.distances


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                opset: int = OPSET, check: bool = True) -> Path:
    """Export a MemSeg checkpoint to ONNX at ``out``; returns ``out``.

    Args:
        checkpoint: ``final.pt`` or ``last.pt`` written by ``memseg train``.
        overwrite: replace an existing ``out`` (otherwise that is an error, before any work).
        check: run the exported file once with onnxruntime on random images and compare it with
            PyTorch (max abs difference of the maps <= 1e-4), so a bad export never reaches a user.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError: not a MemSeg checkpoint, or the exported graph disagrees with PyTorch.
        ImportError: ``onnx``/``onnxscript`` are not installed (``pip install 'memseg[deploy]'``).
        OSError: ``ENOSPC`` naming ``out`` when the disk is full (nothing is left behind).
    """
    from memseg.engine.checkpoint import disk_full_error, load_checkpoint
    from memseg.engine.checkpoint_record import CheckpointRecord

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out (or pass --overwrite)")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; --out must name the .onnx file to write")
    require_modules("onnx", "onnxscript")
    model, info = load_checkpoint(checkpoint, device="cpu")
    record = CheckpointRecord.from_checkpoint(info, checkpoint)
    if record.model_name not in EXPORTABLE:
        raise ValueError(f"{checkpoint}: export supports {', '.join(EXPORTABLE)} checkpoints, got "
                         f"{record.model_name!r}")
    h, w = model.config.input_size
    graph = _AnomalyMapGraph(model).eval()
    example = torch.randn(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=4096)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad(), exportable(model):
            warnings.simplefilter("ignore")  # the exporter's own progress chatter
            torch.onnx.export(graph, (example,), tmp, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}}, verbose=False)
        _write_metadata(tmp, _metadata(record))
        if check:
            _check_parity(graph, tmp, (h, w))
        os.replace(tmp, out)
    except Exception as err:
        full = disk_full_error(err, out)  # before the partial files below are removed (they hold the space)
        if full is not None:
            raise full from None
        raise
    finally:
        for leftover in (tmp, tmp + ".data"):  # the exporter writes the weights beside its file first
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out


def _write_metadata(path: str, meta: dict) -> None:
    import onnx

    proto = onnx.load(path)
    entry = next((p for p in proto.metadata_props if p.key == METADATA_KEY), None) or proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(proto, path)


def _check_parity(graph: nn.Module, path: str, input_size: tuple[int, int], tol: float = 1e-4) -> None:
    """Run the exported file on random images at two batch sizes and compare with PyTorch."""
    session = ort_session(path)
    gen = torch.Generator().manual_seed(0)
    for b in (1, 3):
        x = torch.randn(b, 3, *input_size, generator=gen)
        with torch.no_grad():
            ref = graph(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        if got.shape != ref.shape or not diff <= tol:
            raise ValueError(f"the exported graph disagrees with PyTorch at batch {b}: max abs difference {diff:.2e} "
                             f"(allowed {tol:g}), shapes {got.shape} vs {ref.shape}")


# ------------------------------------------------------------------ the cached fast CPU route
def cache_dir() -> Path:
    """Folder of the cached exports: ``$MEMSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/memseg`` or ``~/.cache/memseg``; +
    ``onnx``."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memseg"
    return Path(root) / "onnx"


def cache_key(checkpoint: Path) -> str:
    """sha256 of the checkpoint's bytes, the model and export code, torch and the opset: no stale graph is reused."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    code = Path(__file__).resolve().parents[1] / "models" / "memseg"
    for source in [*sorted(code.glob("*.py")), Path(__file__).resolve(),
                   Path(__file__).resolve().with_name("mixed_precision.py")]:
        digest.update(source.read_bytes())
    digest.update(f"torch {torch.__version__} opset {OPSET}".encode())
    return digest.hexdigest()[:20]


def cached_onnx_path(checkpoint: str | os.PathLike, key: str | None = None) -> Path:
    """Where :func:`cached_onnx` keeps ``checkpoint``'s graph (``key``: its :func:`cache_key`, computed when None)."""
    checkpoint = Path(checkpoint)
    return cache_dir() / f"{checkpoint.stem}-{key or cache_key(checkpoint)}.onnx"


def cached_onnx(checkpoint: str | os.PathLike) -> Path:
    """``checkpoint`` exported by :func:`export_onnx` (parity-checked) into :func:`cache_dir`, once.

    The file is named ``<stem>-<key>.onnx`` after :func:`cache_key`, so a retrained checkpoint,
    changed model code or another torch gets a fresh export; nothing outside the cache is written.
    """
    checkpoint = Path(checkpoint)
    out = cached_onnx_path(checkpoint)
    if not out.is_file():
        print(f"memseg: exporting {checkpoint} for onnxruntime, once (cached as {out})", file=sys.stderr, flush=True)
        export_onnx(checkpoint, out, overwrite=True)  # the cache's own name: a concurrent export may land first
    return out


# ------------------------------------------------------------------ the two halves of the bf16 CPU route
class _CompareHalf(nn.Module):
    """x (B, 3, H, W) -> stem, II (3), then DI* (3) and M (3) when the model uses them, all float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stem, ii, di_star, _, maps = self.model.compare(x)
        out = [stem, *ii]
        if di_star is not None:
            out += [d.float() for d in di_star]
        if maps is not None and self.model.config.use_spatial_attention:
            out += [m.float() for m in maps]
        return tuple(t.float() for t in out)


class _SegmentHalf(nn.Module):
    """The compare half's outputs -> anomaly map (B, 1, H, W) in [0, 1], as :meth:`MemSeg.anomaly_map`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *halves: torch.Tensor) -> torch.Tensor:
        stem, ii, rest = halves[0], list(halves[1:4]), list(halves[4:])
        di_star = rest[:3] if self.model.memory is not None else None
        weights = rest[3:6] if len(rest) == 6 else None
        logits = self.model.segment(stem, ii, di_star, weights, self.model.config.input_size)[0]
        return self.model.anomaly_probability(logits).clamp(0.0, 1.0)  # as MemSeg.anomaly_map


def _export_half(module: nn.Module, args: tuple[torch.Tensor, ...], path: str, names: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in args)
    if isinstance(module, _SegmentHalf):
        dynamic = (dynamic,)  # one *halves argument
    with warnings.catch_warnings(), torch.no_grad(), exportable(module.model):
        warnings.simplefilter("ignore")  # the exporter's own progress chatter
        torch.onnx.export(module, args, path, dynamo=True, opset_version=OPSET, input_names=names,
                          dynamic_shapes=dynamic, verbose=False)


def export_halves(model: nn.Module, compare_out: str | os.PathLike, segment_out: str | os.PathLike,
                  tol: float = 1e-4) -> None:
    """Export a MemSeg model's two halves to ONNX and check them together in float32 against torch.

    Raises:
        ValueError: the halves, run one after the other by onnxruntime, disagree with
            ``model.anomaly_map`` by more than ``tol`` (batch 1 and 3).
    """
    import onnx

    model = model.eval()
    h, w = model.config.input_size
    compare, segment = _CompareHalf(model).eval(), _SegmentHalf(model).eval()
    example = torch.randn(2, 3, h, w)
    with torch.no_grad():
        halves = compare(example)
    names = [f"half{i}" for i in range(len(halves))]
    folder = Path(compare_out).parent
    folder.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for module, args, input_names in ((compare, (example,), ["input"]), (segment, halves, names)):
            fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
            os.close(fd)
            tmps.append(tmp)
            _export_half(module, args, tmp, input_names)
            onnx.save(onnx.load(tmp), tmp)  # the weights into the file (the exporter writes them beside it)
        front, back = ort_session(tmps[0]), ort_session(tmps[1])
        gen = torch.Generator().manual_seed(0)
        for b in (1, 3):
            x = torch.randn(b, 3, h, w, generator=gen)
            with torch.no_grad():
                ref = model.anomaly_map(x).float().clamp(0.0, 1.0).numpy()
            got = back.run(None, dict(zip(names, front.run(None, {"input": x.numpy()}))))[0]
            diff = float(np.abs(got - ref).max())
            if got.shape != ref.shape or not diff <= tol:
                raise ValueError(f"the exported halves disagree with PyTorch at batch {b}: max abs difference "
                                 f"{diff:.2e} (allowed {tol:g})")
        os.replace(tmps[0], compare_out)
        os.replace(tmps[1], segment_out)
    finally:
        for tmp in tmps:
            for leftover in (tmp, tmp + ".data"):  # the exporter writes the weights beside its file first
                if os.path.exists(leftover):
                    os.unlink(leftover)


def cached_halves_paths(checkpoint: str | os.PathLike, key: str | None = None) -> tuple[Path, Path]:
    """Where :func:`cached_halves` keeps ``checkpoint``'s two halves (``key``: its :func:`cache_key`, computed when
    None)."""
    checkpoint = Path(checkpoint)
    stem = cache_dir() / f"{checkpoint.stem}-{key or cache_key(checkpoint)}"
    return stem.with_name(stem.name + ".compare.onnx"), stem.with_name(stem.name + ".segment.onnx")


def cached_halves(checkpoint: str | os.PathLike, model: nn.Module) -> tuple[Path, Path]:
    """``checkpoint``'s two halves (``model``, loaded from it) exported by :func:`export_halves` into the export cache,
    once."""
    checkpoint = Path(checkpoint)
    compare, segment = cached_halves_paths(checkpoint)
    if not (compare.is_file() and segment.is_file()):
        stem = compare.with_name(compare.name[: -len(".compare.onnx")])
        print(f"memseg: exporting {checkpoint} for the CPU route, once (cached as {stem}.*.onnx)", file=sys.stderr,
              flush=True)
        export_halves(model, compare, segment)
    return compare, segment
