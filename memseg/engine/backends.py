"""What runs a trained network at inference: one protocol, :class:`InferenceBackend`, and the torch backend.

Three backends implement it, each in its own module, apart from the exporter (:mod:`memseg.engine.export`):

- :class:`TorchBackend` (here): the torch model itself, float32, on the CPU or a GPU;
- :class:`memseg.engine.onnx_runtime.OnnxRuntimeModel`: an exported graph in onnxruntime, float32, on the CPU;
- :class:`memseg.engine.mixed_precision.MixedPrecisionModel`: the bf16 CPU route (the memory comparison in
  float32, the segmentation in bf16; images near the threshold scored again in float32).

Scoring (:func:`memseg.engine.scoring.score_images`), :class:`memseg.engine.inference.Predictor`, ``memseg
evaluate`` and the dashboard call only what the protocol names. What a trained model carries besides its weights
(threshold, top-k, category, ...) is :class:`memseg.engine.checkpoint_record.CheckpointRecord`.

Examples:
    >>> backend, record = load_model("runs/bottle/final.pt", device="cpu")  # doctest: +SKIP
    >>> backend.name, backend.input_size, record.threshold                  # doctest: +SKIP
    ('torch', (256, 256), 0.42)
    >>> maps = backend.anomaly_map(normalize(images))  # (B, 1, H, W) in [0, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from memseg.config import as_size
from memseg.utils import select_device

__all__ = ["BACKENDS", "InferenceBackend", "TorchBackend", "as_backend", "is_onnx", "load_model"]

BACKENDS = ("auto", "torch", "onnxruntime")


@runtime_checkable
class InferenceBackend(Protocol):
    """A trained network ready to score normalised images.

    Attributes:
        name: what runs it: "torch", "onnxruntime" or "onnxruntime+openvino-bf16".
        model_name: the network ("memseg", "draem", "mmr").
        input_size: (H, W) the network takes.
        device: where :meth:`anomaly_map` expects its input and returns its maps.
        verdict_margin: scores within this distance of a threshold are not exact (0: float32 throughout);
            :meth:`exact_anomaly_map` scores them again.
        image_score: the network's own image score of maps, ``(B, 1, H, W) -> (B,)`` (DRAEM), or None: the mean
            of the top-k pixels (paper §4.1).
    """

    name: str
    model_name: str
    input_size: tuple[int, int]
    device: torch.device
    verdict_margin: float
    image_score: Callable[[torch.Tensor], torch.Tensor] | None

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised images (B, 3, H, W) at :attr:`input_size` -> anomaly maps (B, 1, H, W) in [0, 1]."""
        ...

    def exact_anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`anomaly_map`, float32 throughout."""
        ...


class TorchBackend:
    """A torch model (an ``nn.Module`` with ``anomaly_map``) as an :class:`InferenceBackend`: float32, exact.

    Args:
        module: the model; moved to ``device`` and put in eval mode.
        input_size: for a model without ``config.input_size`` (its own wins).

    Examples:
        >>> backend = TorchBackend(build_model("memseg", {"input_size": (64, 64)}), device="cpu")  # doctest: +SKIP
        >>> backend.anomaly_map(torch.zeros(1, 3, 64, 64)).shape                                  # doctest: +SKIP
        torch.Size([1, 1, 64, 64])
    """

    name = "torch"
    verdict_margin = 0.0

    def __init__(self, module: nn.Module, device: str | torch.device = "auto",
                 input_size: int | tuple[int, int] | None = None):
        self.device = select_device(device)
        self.module = module.to(self.device).eval()
        self.model_name = str(getattr(module, "name", type(module).__name__))
        size = getattr(getattr(module, "config", None), "input_size", None) or input_size
        self.input_size = as_size(size, "input size") if size is not None else None
        self.image_score = getattr(module, "image_score", None)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.anomaly_map(x)

    exact_anomaly_map = anomaly_map


def as_backend(model: Any, device: str | torch.device = "auto", input_size: Any = None) -> InferenceBackend:
    """``model`` as an :class:`InferenceBackend`: a backend as it is, a torch model as a :class:`TorchBackend`."""
    if isinstance(model, nn.Module):
        return TorchBackend(model, device, input_size)
    if isinstance(model, InferenceBackend):
        return model
    raise TypeError(f"expected a torch model with anomaly_map or an InferenceBackend, got {type(model).__name__}")


def is_onnx(path: str | os.PathLike) -> bool:
    """A path naming an exported model (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def load_model(path: str | os.PathLike, device: str | torch.device = "auto", backend: str = "auto",
               threads: int | None = None) -> tuple[InferenceBackend, Any]:
    """A checkpoint (``.pt``, torch) or an exported model (``.onnx``, onnxruntime): ``(backend, record)``.

    ``backend`` "auto" picks by the file's suffix; "torch" or "onnxruntime" insist, and a file of the
    other kind is an error that says what to do. ``threads``: onnxruntime's intra-op threads. The record is
    the file's :class:`memseg.engine.checkpoint_record.CheckpointRecord`.

    Examples:
        >>> backend, record = load_model("bottle.onnx")  # doctest: +SKIP
        >>> backend.name, record.category                # doctest: +SKIP
        ('onnxruntime', 'bottle')
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    onnx_file = is_onnx(path)
    if backend == "torch" and onnx_file:
        raise ValueError(f"--backend torch cannot run {path}: it is an exported ONNX model (use --backend onnxruntime "
                         "or auto)")
    if backend == "onnxruntime" and not onnx_file:
        raise ValueError(f"--backend onnxruntime runs exported models; export {path} first: "
                         f"memseg export --checkpoint {path} --out model.onnx")
    if onnx_file:
        from memseg.engine.onnx_runtime import load_onnx

        return load_onnx(path, threads)
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.engine.checkpoint_record import CheckpointRecord

    model, info = load_checkpoint(path, device=device)
    return TorchBackend(model, device), CheckpointRecord.from_checkpoint(info, path)
