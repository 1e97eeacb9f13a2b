"""The onnxruntime backend: an exported MemSeg graph run in float32 on the CPU (no torch model code needed).

:func:`load_onnx` opens a file written by ``memseg export`` (:mod:`memseg.engine.export`) as an
:class:`OnnxRuntimeModel`, an :class:`memseg.engine.backends.InferenceBackend` that scores exactly like the torch
model (maps within 1e-4), so ``memseg predict``, ``memseg evaluate`` and the dashboard accept a ``.onnx`` file
wherever they accept a checkpoint; it also runs a ``.pt`` checkpoint's graph exported into the export cache, the
float32 CPU route of :class:`memseg.engine.inference.Predictor` on a CPU without native bf16.

Examples:
    >>> model, record = load_onnx("bottle.onnx")                       # doctest: +SKIP
    >>> model.anomaly_map(normalize(images)).shape, record.threshold  # doctest: +SKIP
    (torch.Size([1, 1, 256, 256]), 0.42)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.deploy_extra import require_modules

__all__ = ["EXPORTABLE", "INPUT_NAME", "METADATA_KEY", "OUTPUT_NAME", "OnnxRuntimeModel", "load_onnx", "ort_session"]

INPUT_NAME, OUTPUT_NAME = "input", "anomaly_map"  # the exported graph: (B, 3, H, W) -> (B, 1, H, W)
METADATA_KEY = "memseg"  # the file's metadata entry holding its CheckpointRecord (JSON)
EXPORTABLE = ("memseg",)  # models `memseg export` writes


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` None: onnxruntime's default (one per physical core)."""
    require_modules("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    # idle threads sleep instead of spinning: on the 2-core development CPU shared with other jobs,
    # 256² batch 1 took 119 vs 146 ms on 1 thread and 146 vs 203 ms on 2 (load average 0.6-1.6)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel:
    """An exported graph in onnxruntime as an :class:`memseg.engine.backends.InferenceBackend` (float32, exact).

    ``anomaly_map(x)`` takes normalised images on any device and returns a float32 map on that device; the graph
    runs on the CPU.
    """

    name = "onnxruntime"
    device = torch.device("cpu")
    verdict_margin = 0.0
    image_score = None  # the mean of the top-k pixels (paper §4.1): only MemSeg is exported

    def __init__(self, path: str | os.PathLike, record: CheckpointRecord, threads: int | None = None):
        self.path = Path(path)
        self.model_name = record.model_name
        self.input_size = record.input_size
        self.session = ort_session(path, threads)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()})[0]
        except Exception as err:  # onnxruntime's own exception types derive from Exception only
            raise RuntimeError(f"{self.path}: onnxruntime could not run the model ({_first_line(err)}); the model file "
                               "is damaged or was not written by `memseg export` (export it again)") from None
        return torch.from_numpy(out).to(x.device)

    exact_anomaly_map = anomaly_map


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


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxRuntimeModel, CheckpointRecord]:
    """Open an exported model: ``(model, record)``, the record read from its ``memseg`` metadata.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a model exported by ``memseg export`` (no ``memseg`` metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path} (write one with `memseg export`)")
    require_modules("onnx", "onnxruntime")
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others on foreign files
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}); expected a file written by `memseg "
                         "export`") from None
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
    record = CheckpointRecord.from_onnx_metadata(meta, path)  # checks the values scoring reads (one line if bad)
    h, w = record.input_size
    _check_graph_io(proto, path, (h, w))
    del proto
    from memseg.config import check_fits_in_memory

    check_fits_in_memory(h * w * 4 * 4, f"{path}: its stored input size {[h, w]} (one image and its map, float32)",
                         "the model's metadata asks for more than this machine has; export it again")
    try:
        model = OnnxRuntimeModel(path, record, threads)
    except ImportError:
        raise
    except Exception as err:  # onnxruntime's InvalidGraph, Fail, NoSuchFile ... (they derive from Exception only)
        raise ValueError(f"{path}: onnxruntime cannot load the model ({_first_line(err)}); expected a file written by "
                         "`memseg export` (export it again)") from None
    return model, record
