"""The fast CPU route: MemSeg in two halves, the memory comparison exact and the segmentation in bf16.

:meth:`MemSeg.compare` (encoder blocks 1-3, the DI* search and the attention maps, eq. 3-7) runs in
float32 through onnxruntime: DI* is the difference of nearby features, and in bf16 it loses most
of its digits (the whole network in bf16 moved image scores by up to 0.18 on the tire models and
flipped up to 5 of 112 verdicts; ``docs/results/cpu-inference``). :meth:`MemSeg.segment` (block 4,
MSFF, the decoder: about 70 % of the operations) runs in bf16 through OpenVINO, where the CPU has
native bf16 (AMX or AVX-512 BF16).

The two halves are exported from the checkpoint once into the export cache by
:func:`memseg.engine.export.cached_halves`, parity-checked in float32 against torch (maps within 1e-4).
:class:`MixedPrecisionModel` runs them as an :class:`memseg.engine.backends.InferenceBackend`.

**Verdicts are the float32 verdicts.** bf16 moves image scores a little (at most 0.012 on the
twelve trained benchmark models, see ``docs/results/cpu-inference``); an image whose bf16 score lies
within :data:`VERDICT_MARGIN` of the decision threshold is scored again with the segmentation half
in float32 (:meth:`MixedPrecisionModel.exact_anomaly_map`), so its score, map and verdict are those of
float32 (within 1e-4; a score that close to the threshold, such as the validation image whose score
became the threshold, can land on either side in any two float32 backends).
:class:`memseg.engine.inference.Predictor` does this for its threshold.

Why two runtimes: OpenVINO alone (the compare half in float32 too) measured slower than onnxruntime for that half,
and onnxruntime is the float32 runtime of the other routes (``benchmarks/bench_model.py --what runtimes`` runs them
side by side). Its speed against the float32 routes and the known public kit: ``benchmarks/bench_public_kit.py``.

Examples:
    >>> from memseg.engine.mixed_precision import mixed_precision_route, native_bf16
    >>> native_bf16()                                                    # doctest: +SKIP
    True
    >>> backend, record = load_model("runs/bottle/final.pt", device="cpu")  # doctest: +SKIP
    >>> fast = mixed_precision_route("runs/bottle/final.pt", backend)      # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from memseg.engine.deploy_extra import missing_modules, say_once
from memseg.engine.export import cached_halves
from memseg.engine.onnx_runtime import ort_session

__all__ = ["MIXED_BACKEND", "VERDICT_MARGIN", "MixedPrecisionModel", "mixed_precision_route", "native_bf16",
           "route_applies"]

MIXED_BACKEND = "onnxruntime+openvino-bf16"
VERDICT_MARGIN = 0.03
"""Image scores within this distance of the threshold are scored again in float32: 2.5 times the
largest bf16 score change measured on the trained benchmark models (0.012)."""
ROUTE_MODULES = ("onnx", "onnxscript", "onnxruntime", "openvino")
KEEP_HALVES_UP_TO = 8
"""Batches up to this size keep their compare-half outputs (~8 MB per image at 256²) until the next
call, so the verdict guard re-runs only the segment half."""


def native_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (AMX or AVX-512 BF16); False without OpenVINO."""
    if missing_modules("openvino"):
        return False
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no CPU plugin: nothing to run bf16 on
        return False


def route_applies(model_name: str) -> bool:
    """Whether :func:`mixed_precision_route` applies to a ``model_name`` checkpoint on this machine."""
    return model_name == "memseg" and not missing_modules(*ROUTE_MODULES) and native_bf16()


class MixedPrecisionModel:
    """The two halves as an :class:`memseg.engine.backends.InferenceBackend`.

    :meth:`anomaly_map` runs the compare half in float32 (onnxruntime) and the segment half in bf16 (OpenVINO);
    :meth:`exact_anomaly_map` runs both in float32 (onnxruntime): the maps of torch within 1e-4. Images scored
    within :attr:`verdict_margin` of a threshold are scored again by it (:class:`memseg.engine.inference.Predictor`).
    """

    name = MIXED_BACKEND
    device = torch.device("cpu")
    verdict_margin = VERDICT_MARGIN
    image_score = None  # the mean of the top-k pixels (paper §4.1)

    def __init__(self, compare: str | os.PathLike, segment: str | os.PathLike, input_size: tuple[int, int],
                 model_name: str = "memseg", threads: int | None = None):
        import openvino as ov

        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.model_name = model_name
        self.paths = (str(compare), str(segment))
        self.compare = ort_session(compare, threads)
        self.segment_exact = ort_session(segment, threads)
        self.inputs = [i.name for i in self.segment_exact.get_inputs()]
        core = ov.Core()
        options = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            options["INFERENCE_NUM_THREADS"] = int(threads)
        self.segment_bf16 = core.compile_model(core.read_model(str(segment)), "CPU", options)
        self._last: tuple[np.ndarray, list[np.ndarray]] | None = None  # the last anomaly_map's inputs and halves

    def _halves(self, x: torch.Tensor) -> list[np.ndarray]:
        """The compare half's outputs for ``x``; images of the last :meth:`anomaly_map` call are not run again
        (the verdict guard scores some of them again, and the compare half is float32 either way)."""
        inputs = x.detach().float().cpu().contiguous().numpy()
        if self._last is not None:
            seen, halves = self._last
            rows = [next((j for j in range(len(seen)) if np.array_equal(seen[j], image)), None) for image in inputs]
            if all(r is not None for r in rows):
                return [h[rows] for h in halves]
        return self.compare.run(None, {"input": inputs})

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, 1, H, W): compare half float32, segment half bf16."""
        self._last = None
        halves = self._halves(x)
        if len(x) <= KEEP_HALVES_UP_TO:
            self._last = (x.detach().float().cpu().numpy().copy(), halves)
        out = self.segment_bf16(halves)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def exact_anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, 1, H, W), both halves in float32."""
        out = self.segment_exact.run(None, dict(zip(self.inputs, self._halves(x))))[0]
        return torch.from_numpy(out).to(x.device)


def mixed_precision_route(checkpoint: str | os.PathLike, backend: Any, threads: int | None = None) -> Any | None:
    """``checkpoint``'s torch ``backend`` (:class:`memseg.engine.backends.TorchBackend`) as a
    :class:`MixedPrecisionModel`, or None where the route does not apply.

    It applies to MemSeg checkpoints on a CPU with native bf16, with the ``deploy`` extra installed.
    When the export or its parity check fails, one stderr line says so and None comes back.
    """
    if not route_applies(backend.model_name):
        return None
    try:
        compare, segment = cached_halves(checkpoint, backend.module.to("cpu"))
        return MixedPrecisionModel(compare, segment, backend.input_size, backend.model_name, threads)
    except Exception as err:  # the exporter and OpenVINO raise many kinds; onnxruntime float32 still runs it
        say_once(f"memseg: the bf16 CPU route failed for {checkpoint} ({type(err).__name__}: "
                 f"{(str(err).splitlines() or [''])[0]}); running it in float32")
        return None
