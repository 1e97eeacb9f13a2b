"""The fast CPU route: MemSeg in two halves, the memory comparison exact and the segmentation in bf16.

:meth:`MemSeg.compare` (encoder blocks 1-3, the DI* search and the attention maps, eq. 3-7) runs in
float32 through onnxruntime: DI* is the difference of nearby features, and in bf16 it loses most
of its digits (the whole network in bf16 moved image scores by up to 0.18 on the tire models and
flipped up to 5 of 112 verdicts; ``docs/results/cpu-inference``). :meth:`MemSeg.segment` (block 4,
MSFF, the decoder: about 70 % of the operations) runs in bf16 through OpenVINO, where the CPU has
native bf16 (AMX or AVX-512 BF16).

The two halves are exported from the checkpoint once into the export cache
(:func:`memseg.engine.export.cache_dir`), parity-checked in float32 against torch (maps within 1e-4).

**Verdicts are the float32 verdicts.** bf16 moves image scores a little (at most 0.012 on the
twelve trained benchmark models, see ``docs/results/cpu-inference``); an image whose bf16 score lies
within :data:`VERDICT_MARGIN` of the decision threshold is scored again with the segmentation half
in float32 (:meth:`MixedPrecisionModel.exact_anomaly_map`), so its score, map and verdict are those of
float32 (within 1e-4; a score that close to the threshold, such as the validation image whose score
became the threshold, can land on either side in any two float32 backends).
:class:`memseg.engine.inference.Predictor` does this for its threshold.

256², batch 1, on the 2-core development CPU: 53 ms on one thread and 37 ms on two (the compare half
about 35 and 24 of them), against 90 and 60 ms for the whole graph in onnxruntime float32 and 285 and
148 ms for the known public kit (``benchmarks/bench_public_kit.py``).

Examples:
    >>> from memseg.engine.mixed_precision import mixed_precision_route, native_bf16
    >>> native_bf16()                                                    # doctest: +SKIP
    True
    >>> model, info = load_checkpoint("runs/bottle/final.pt", device="cpu")  # doctest: +SKIP
    >>> fast, info = mixed_precision_route("runs/bottle/final.pt", model, info)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memseg.engine.export import OPSET, GraphConfig, cache_dir, cache_key, missing_modules, ort_session, say_once

__all__ = ["MIXED_BACKEND", "VERDICT_MARGIN", "MixedPrecisionModel", "cached_halves", "export_halves",
           "mixed_precision_route", "native_bf16"]

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


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: str, names: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in args)
    if isinstance(module, _SegmentHalf):
        dynamic = (dynamic,)  # one *halves argument
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own progress chatter
        torch.onnx.export(module, args, path, dynamo=True, opset_version=OPSET, input_names=names,
                          dynamic_shapes=dynamic, verbose=False)


def export_halves(model: nn.Module, compare_out: str | os.PathLike, segment_out: str | os.PathLike, tol: float = 1e-4) -> None:
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
            _export(module, args, tmp, input_names)
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
                raise ValueError(f"the exported halves disagree with PyTorch at batch {b}: max abs difference {diff:.2e} (allowed {tol:g})")
        os.replace(tmps[0], compare_out)
        os.replace(tmps[1], segment_out)
    finally:
        for tmp in tmps:
            for leftover in (tmp, tmp + ".data"):  # the exporter writes the weights beside its file first
                if os.path.exists(leftover):
                    os.unlink(leftover)


def route_applies(info: dict) -> bool:
    """Whether :func:`mixed_precision_route` applies to a checkpoint with this ``info`` on this machine."""
    return info.get("model_name") == "memseg" and not missing_modules(*ROUTE_MODULES) and native_bf16()


def cached_halves_paths(checkpoint: str | os.PathLike, key: str | None = None) -> tuple[Path, Path]:
    """Where :func:`cached_halves` keeps ``checkpoint``'s two halves (``key``: its :func:`cache_key`, computed when None)."""
    checkpoint = Path(checkpoint)
    stem = cache_dir() / f"{checkpoint.stem}-{key or cache_key(checkpoint)}"
    return stem.with_name(stem.name + ".compare.onnx"), stem.with_name(stem.name + ".segment.onnx")


def cached_halves(checkpoint: str | os.PathLike, model: nn.Module) -> tuple[Path, Path]:
    """``checkpoint``'s two halves (``model``, loaded from it) exported by :func:`export_halves` into the export cache, once."""
    checkpoint = Path(checkpoint)
    compare, segment = cached_halves_paths(checkpoint)
    if not (compare.is_file() and segment.is_file()):
        stem = compare.with_name(compare.name[: -len(".compare.onnx")])
        print(f"memseg: exporting {checkpoint} for the CPU route, once (cached as {stem}.*.onnx)", file=sys.stderr, flush=True)
        export_halves(model, compare, segment)
    return compare, segment


class MixedPrecisionModel:
    """The two halves behind the interface the kit's scoring uses (``anomaly_map``, ``config``, ``name``).

    ``anomaly_map`` runs the compare half in float32 (onnxruntime) and the segment half in bf16
    (OpenVINO); ``exact_anomaly_map`` runs both in float32 (onnxruntime): the maps of torch within 1e-4.
    """

    verdict_margin = VERDICT_MARGIN

    def __init__(self, compare: str | os.PathLike, segment: str | os.PathLike, input_size: tuple[int, int],
                 name: str = "memseg", threads: int | None = None):
        import openvino as ov

        self.config = GraphConfig(tuple(int(v) for v in input_size))
        self.name = f"{name} ({MIXED_BACKEND})"
        self.compare = ort_session(compare, threads)
        self.segment_exact = ort_session(segment, threads)
        self.inputs = [i.name for i in self.segment_exact.get_inputs()]
        core = ov.Core()
        options = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            options["INFERENCE_NUM_THREADS"] = int(threads)
        self.segment_bf16 = core.compile_model(core.read_model(str(segment)), "CPU", options)
        self._last: tuple[np.ndarray, list[np.ndarray]] | None = None  # the last anomaly_map's inputs and halves

    def to(self, *args: Any, **kwargs: Any) -> MixedPrecisionModel:
        return self

    def eval(self) -> MixedPrecisionModel:
        return self

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


def mixed_precision_route(checkpoint: str | os.PathLike, model: nn.Module, info: dict,
                          threads: int | None = None) -> tuple[Any, dict] | None:
    """``checkpoint`` as a :class:`MixedPrecisionModel`, or None where the route does not apply.

    It applies to MemSeg checkpoints on a CPU with native bf16, with the ``deploy`` extra installed.
    When the export or its parity check fails, one stderr line says so and None comes back.
    """
    if not route_applies(info):
        return None
    try:
        compare, segment = cached_halves(checkpoint, model.to("cpu"))
        fast = MixedPrecisionModel(compare, segment, model.config.input_size, info["model_name"], threads)
    except Exception as err:  # the exporter and OpenVINO raise many kinds; onnxruntime float32 still runs it
        say_once(f"memseg: the bf16 CPU route failed for {checkpoint} ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}); "
                  "running it in float32")
        return None
    return fast, {**info, "backend": MIXED_BACKEND, "onnx_path": str(compare), "segment_path": str(segment)}
