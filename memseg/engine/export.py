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

Examples:
    >>> from memseg.engine.export import export_onnx
    >>> export_onnx("runs/bottle/final.pt", "bottle.onnx")      # doctest: +SKIP
    >>> from memseg.engine.inference import Predictor
    >>> Predictor.from_checkpoint("bottle.onnx").predict("img.png").score  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memseg.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BACKENDS", "METADATA_KEY", "OPSET", "OnnxRuntimeModel", "export_onnx", "is_onnx", "load_model", "load_onnx"]

METADATA_KEY = "memseg"
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "anomaly_map"
EXPORTABLE = ("memseg",)
BACKENDS = ("auto", "torch", "onnxruntime")


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
    """
    from memseg.engine.checkpoint import load_checkpoint

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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
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
    session = _session(path)
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


def _session(path: str | os.PathLike, threads: int | None = None):
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class _OnnxConfig:
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
        self.config = _OnnxConfig(tuple(int(v) for v in meta["input_size"]))
        self.name = f"{meta.get('model_name') or 'model'} (onnxruntime)"
        self.weights_source = meta.get("weights_source")
        self.session = _session(path, threads)

    # the torch-module calls Predictor / evaluate make on a model
    def to(self, *args: Any, **kwargs: Any) -> OnnxRuntimeModel:
        return self

    def eval(self) -> OnnxRuntimeModel:
        return self

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


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

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others on foreign files
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}); expected a file written by `memseg export`") from None
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if raw is None:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; expected a file written by `memseg export`")
    meta = json.loads(raw)
    del proto
    model = OnnxRuntimeModel(path, meta, threads)
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


def load_model(path: str | os.PathLike, device: str | torch.device = "auto", backend: str = "auto") -> tuple[Any, dict]:
    """A checkpoint (``.pt``, torch) or an exported model (``.onnx``, onnxruntime): ``(model, info)``.

    ``backend`` "auto" picks by the file's suffix; "torch" or "onnxruntime" insist, and a file of the
    other kind is an error that says what to do.
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
        return load_onnx(path)
    return load_checkpoint(path, device=device)
