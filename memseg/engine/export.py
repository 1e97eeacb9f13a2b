"""Deploy a trained MemSeg model as ONNX and run it with onnxruntime (no torch model code needed).

The exported graph is the whole network of :meth:`MemSeg.anomaly_map`, memory bank and DI* search
(eq. 3-4) included: ImageNet-normalised images ``input`` (B, 3, H, W) float32 at the model's input
size -> ``anomaly_map`` (B, 1, H, W) float32 in [0, 1], with a dynamic batch axis. What a deployer
needs besides the graph (input size, normalisation, the decision threshold picked on the validation
split, top-k of the image score, category, encoder weights) is stored in the file's metadata under
the key ``memseg``, as JSON.

:func:`load_onnx` returns an :class:`OnnxRuntimeModel` that scores exactly like the torch model in
:func:`memseg.engine.scoring.score_images`, so ``memseg predict``, ``memseg evaluate`` and the dashboard
accept a ``.onnx`` file wherever they accept a checkpoint.

The float32 CPU route: :func:`onnxruntime_route` runs a ``.pt`` checkpoint through its exported graph,
exported once (parity-checked) into a cache keyed by the checkpoint's bytes, the model code and the
torch version (:func:`cache_dir`); :meth:`memseg.engine.inference.Predictor.from_checkpoint` takes
it by default on a CPU without native bf16 (256², batch 1, 2-core development CPU: 89 ms on 1 thread,
58 ms on 2, against 134 and 77 ms in torch eager; maps within 1e-4; ``benchmarks/bench_public_kit.py``),
and falls back to torch with one stderr line when the ``deploy`` extra is missing or the export fails. A checkpoint
not exported yet is exported first only for a job worth it (``images`` >= ``EXPORT_WORTH_IMAGES``); fewer images
run in torch, and an unknown amount of work (the dashboard) runs in torch while a background process exports it.
Where the CPU has native bf16, :mod:`memseg.engine.mixed_precision` is the default route instead.

Examples:
    >>> from memseg.engine.export import export_onnx
    >>> export_onnx("runs/bottle/final.pt", "bottle.onnx")      # doctest: +SKIP
    >>> from memseg.engine.inference import Predictor
    >>> Predictor.from_checkpoint("bottle.onnx").predict("img.png").score  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memseg.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BACKENDS", "CACHE_ENV", "METADATA_KEY", "OPSET", "GraphConfig", "OnnxRuntimeModel", "cache_dir", "cache_key",
           "cached_onnx", "export_onnx", "is_onnx", "load_model", "load_onnx", "missing_modules", "onnxruntime_route",
           "ort_session", "say_once"]

METADATA_KEY = "memseg"
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "anomaly_map"
EXPORTABLE = ("memseg",)
BACKENDS = ("auto", "torch", "onnxruntime")
CACHE_ENV = "MEMSEG_CACHE_DIR"
DEPLOY_MODULES = ("onnx", "onnxscript", "onnxruntime")


def is_onnx(path: str | os.PathLike) -> bool:
    """A path naming an exported model (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


class _AnomalyMapGraph(nn.Module):
    """What is exported: normalised images (B, 3, H, W) -> anomaly map (B, 1, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.anomaly_map(x).float().clamp(0.0, 1.0)


def _metadata(info: dict, input_size: tuple[int, int]) -> dict:
    """The deployment facts stored beside the graph (JSON-safe)."""
    cfg = info.get("config") or {}
    validation = (info.get("extra") or {}).get("validation") or {}
    return {
        "format": "memseg-kit-onnx",
        "model_name": info.get("model_name"),
        "input_size": list(input_size),
        "input": f"{INPUT_NAME}: float32 (B, 3, H, W), RGB in [0, 1] normalised with mean {list(IMAGENET_MEAN)} "
                 f"and std {list(IMAGENET_STD)}",
        "output": f"{OUTPUT_NAME}: float32 (B, 1, H, W) in [0, 1]; image score = mean of the top_k highest pixels",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "top_k": int(cfg.get("top_k") or 100),
        "threshold": info.get("threshold"),
        "category": cfg.get("category"),
        "weights_source": info.get("weights_source"),
        "step": info.get("step"),
        "validation_scores": [float(v) for v in validation.get("scores", [])],
    }


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
        ImportError: ``onnx``/``onnxscript`` are not installed (``pip install memseg-kit[deploy]``).
        OSError: ``ENOSPC`` naming ``out`` when the disk is full (nothing is left behind).
    """
    from memseg.engine.checkpoint import disk_full_error, load_checkpoint

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out (or pass --overwrite)")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; --out must name the .onnx file to write")
    _require("onnx", "onnxscript")
    model, info = load_checkpoint(checkpoint, device="cpu")
    if info.get("model_name") not in EXPORTABLE:
        raise ValueError(f"{checkpoint}: export supports {', '.join(EXPORTABLE)} checkpoints, got {info.get('model_name')!r}")
    h, w = model.config.input_size
    graph = _AnomalyMapGraph(model).eval()
    example = torch.randn(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=4096)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's own progress chatter
            torch.onnx.export(graph, (example,), tmp, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}}, verbose=False)
        _write_metadata(tmp, _metadata(info, (h, w)))
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


def missing_modules(*modules: str) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def _require(*modules: str) -> None:
    missing = missing_modules(*modules)
    if missing:
        raise ImportError(f"ONNX export/runtime needs {', '.join(missing)}: pip install 'memseg-kit[deploy]' "
                          "(onnx, onnxscript, onnxruntime)")


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


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` None: onnxruntime's default (one per physical core)."""
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    # idle threads sleep instead of spinning: on the 2-core development CPU shared with other jobs,
    # 256² batch 1 took 119 vs 146 ms on 1 thread and 146 vs 203 ms on 2 (load average 0.6-1.6)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class GraphConfig:
    """The bits of a model config the kit reads (``input_size``)."""

    input_size: tuple[int, int]


class OnnxRuntimeModel:
    """An exported model behind the interface the kit's scoring uses (``anomaly_map``, ``config``, ``name``).

    ``anomaly_map(x)`` takes normalised images on any device and returns a float32 map on that
    device; the graph runs on the CPU through onnxruntime.
    """

    def __init__(self, path: str | os.PathLike, meta: dict, threads: int | None = None):
        self.path = Path(path)
        self.meta = meta
        self.config = GraphConfig(tuple(int(v) for v in meta["input_size"]))
        self.name = f"{meta.get('model_name') or 'model'} (onnxruntime)"
        self.weights_source = meta.get("weights_source")
        self.session = ort_session(path, threads)

    # the torch-module calls Predictor / evaluate make on a model
    def to(self, *args: Any, **kwargs: Any) -> OnnxRuntimeModel:
        return self

    def eval(self) -> OnnxRuntimeModel:
        return self

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()})[0]
        except Exception as err:  # onnxruntime's own exception types derive from Exception only
            raise RuntimeError(f"{self.path}: onnxruntime could not run the model ({_first_line(err)}); the model file "
                               "is damaged or was not written by `memseg export` (export it again)") from None
        return torch.from_numpy(out).to(x.device)


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (onnxruntime's messages run over several lines)."""
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {' '.join(text.split())[:300]}"


def _check_graph_io(proto: Any, path: str | os.PathLike, input_size: tuple[int, int]) -> None:
    """The graph takes ``input`` (B, 3, H, W) at its stored input size and gives ``anomaly_map`` (B, 1, H, W), as
    :func:`export_onnx` writes it; anything else is the model file's fault (one line naming it), not the image's."""
    def dims(value: Any) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    expected_in, expected_out = ["B", 3, *input_size], ["B", 1, *input_size]
    inputs = [(v.name, dims(v)) for v in proto.graph.input]
    outputs = [(v.name, dims(v)) for v in proto.graph.output]

    def fits(found: list, name: str, shape: list) -> bool:
        return (len(found) == 1 and found[0][0] == name and len(found[0][1]) == 4
                and all(isinstance(a, str) or a == b for a, b in zip(found[0][1][1:], shape[1:])))

    if not (fits(inputs, INPUT_NAME, expected_in) and fits(outputs, OUTPUT_NAME, expected_out)):
        def show(found: list) -> str:
            return ", ".join(f"{n} {tuple(d)}" for n, d in found) or "none"

        raise ValueError(f"{path}: the model's graph takes {show(inputs)} and gives {show(outputs)}; expected "
                         f"{INPUT_NAME} {tuple(expected_in)} -> {OUTPUT_NAME} {tuple(expected_out)} as `memseg export` "
                         "writes it (the model file does not fit its own metadata; export it again)")


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxRuntimeModel, dict]:
    """Open an exported model: ``(model, info)`` shaped like :func:`memseg.engine.checkpoint.load_checkpoint`'s.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a model exported by ``memseg export`` (no ``memseg`` metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path} (write one with `memseg export`)")
    _require("onnx", "onnxruntime")
    import onnx

    from memseg.config import as_size
    from memseg.engine.checkpoint import check_carried_values

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others on foreign files
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}); expected a file written by `memseg export`") from None
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if raw is None:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; expected a file written by `memseg export`")
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("input_size") is None:
        raise ValueError(f"{path}: its '{METADATA_KEY}' metadata is not the JSON object `memseg export` writes "
                         "(with input_size, threshold, top_k); export the model again")
    check_carried_values(path, meta.get("threshold"), meta.get("input_size"), meta.get("top_k"), meta.get("category"))
    scores = meta.get("validation_scores", [])
    if not isinstance(scores, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
        raise ValueError(f"{path}: stored validation scores {str(scores)[:80]} are not a list of numbers (the image scores "
                         "of the validation split); the file is damaged or was edited (export it again)")
    h, w = as_size(meta["input_size"])
    _check_graph_io(proto, path, (h, w))
    del proto
    from memseg.config import check_fits_in_memory

    check_fits_in_memory(h * w * 4 * 4, f"{path}: its stored input size {[h, w]} (one image and its map, float32)",
                         "the model's metadata asks for more than this machine has; export it again")
    try:
        model = OnnxRuntimeModel(path, meta, threads)
    except ImportError:
        raise
    except Exception as err:  # onnxruntime's InvalidGraph, Fail, NoSuchFile ... (they derive from Exception only)
        raise ValueError(f"{path}: onnxruntime cannot load the model ({_first_line(err)}); expected a file written by "
                         "`memseg export` (export it again)") from None
    info = {
        "model_name": meta.get("model_name"),
        "threshold": meta.get("threshold"),
        "weights_source": meta.get("weights_source"),
        "step": meta.get("step"),
        "config": {"category": meta.get("category"), "top_k": meta.get("top_k"), "size": list(meta["input_size"])},
        "extra": {"validation": {"scores": meta.get("validation_scores", [])}},
        "backend": "onnxruntime",
        "path": str(path),
    }
    return model, info


def load_model(path: str | os.PathLike, device: str | torch.device = "auto", backend: str = "auto",
               threads: int | None = None) -> tuple[Any, dict]:
    """A checkpoint (``.pt``, torch) or an exported model (``.onnx``, onnxruntime): ``(model, info)``.

    ``backend`` "auto" picks by the file's suffix; "torch" or "onnxruntime" insist, and a file of the
    other kind is an error that says what to do. ``threads``: onnxruntime's intra-op threads.
    """
    from memseg.engine.checkpoint import load_checkpoint

    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    onnx_file = is_onnx(path)
    if backend == "torch" and onnx_file:
        raise ValueError(f"--backend torch cannot run {path}: it is an exported ONNX model (use --backend onnxruntime or auto)")
    if backend == "onnxruntime" and not onnx_file:
        raise ValueError(f"--backend onnxruntime runs exported models; export {path} first: "
                         f"memseg export --checkpoint {path} --out model.onnx")
    if onnx_file:
        return load_onnx(path, threads)
    return load_checkpoint(path, device=device)


# ------------------------------------------------------------------ the cached fast CPU route
def cache_dir() -> Path:
    """Folder of the cached exports: ``$MEMSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/memseg`` or ``~/.cache/memseg``; + ``onnx``."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memseg"
    return Path(root) / "onnx"


def cache_key(checkpoint: Path) -> str:
    """sha256 of the checkpoint's bytes, the model and export code, torch and the opset: no stale graph is reused."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    code = Path(__file__).resolve().parents[1] / "models" / "memseg"
    for source in [*sorted(code.glob("*.py")), Path(__file__).resolve(), Path(__file__).resolve().with_name("mixed_precision.py")]:
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


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """One stderr line, once per process."""
    if message not in _SAID:
        _SAID.add(message)
        print(message, file=sys.stderr, flush=True)


def onnxruntime_route(checkpoint: str | os.PathLike, model: Any, info: dict, threads: int | None = None) -> tuple[Any, dict]:
    """A loaded MemSeg checkpoint moved onto its cached ONNX graph in onnxruntime: ``(model, info)``.

    Other models (DRAEM, MMR) come back unchanged. Without the ``deploy`` extra, or when the export
    or its parity check fails, the torch model comes back too, and one stderr line says why.
    ``info`` gains ``backend`` ("onnxruntime") and ``onnx_path``.
    """
    if info.get("model_name") not in EXPORTABLE:
        return model, info
    missing = missing_modules(*DEPLOY_MODULES)
    if missing:
        say_once(f"memseg: {', '.join(missing)} not installed, so {checkpoint} runs with torch (slower on the CPU); "
                  "pip install 'memseg-kit[deploy]' for the onnxruntime route")
        return model, info
    try:
        path = cached_onnx(checkpoint)
        fast, _meta = load_onnx(path, threads)
    except Exception as err:  # the exporter raises many kinds; torch still runs the checkpoint
        say_once(f"memseg: the onnxruntime route failed for {checkpoint} ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}); "
                  "running it with torch")
        return model, info
    return fast, {**info, "backend": "onnxruntime", "onnx_path": str(path)}
