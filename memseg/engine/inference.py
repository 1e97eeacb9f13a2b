"""Inference: score one image (any size) with a trained checkpoint (`Predictor`: `memseg predict`, the dashboard).

The image is resized to the model's input size, ImageNet-normalised, passed through the network;
the anomaly map is resized back to the ORIGINAL image size (bounded for huge images, see below).
The image score is the mean of the top-k pixel scores of the map at model resolution (same as
evaluation), and the verdict uses the decision threshold picked on the validation split during
training (0.5 when there is none).

Accepted sizes: each side at least :data:`MIN_IMAGE_SIDE` px and an aspect ratio (long side /
short side) of at most :data:`MAX_ASPECT_RATIO`; anything else raises ``ValueError`` saying so.

Large images: the model only ever sees its input size (128-256 px), so images above
:data:`memseg.data.io.DECODE_MAX_PIXELS` (4 Mpx) are decoded downscaled (JPEG draft mode, then a
resize; same aspect ratio) and their anomaly map comes back at that bounded size instead of the
original one (e.g. 2309 x 1732 for an 8000 x 6000 photo). Memory then stays bounded: through
``memseg predict`` a 48 Mpx JPEG or PNG peaks about 110 MB above a tiny image, a
100 Mpx RGBA PNG about 700 MB. ``memseg predict`` refuses files above ``--max-pixels`` (default
:data:`memseg.data.io.MAX_IMAGE_PIXELS`, 100 Mpx).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from memseg.data.io import (
    DECODE_MAX_PIXELS,
    MAX_IMAGE_PIXELS,
    bounded_size,
    load_image,
    pil_to_rgb_array,
    shrink_image,
)
from memseg.engine.backends import InferenceBackend, as_backend
from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.deploy_extra import say_once
from memseg.engine.scoring import score_images, score_maps
from memseg.utils import no_autocast, normalize, select_device

DEFAULT_THRESHOLD = 0.5

MIN_IMAGE_SIDE = 16
"""Smallest accepted image side in pixels: the model upsamples to its 128-256 px input, and a
smaller image holds too little detail for a defect map to mean anything."""

MAX_ASPECT_RATIO = 10.0
"""Largest accepted long side / short side: the model squashes every image to its square input,
so a 10:1 image already shrinks its long axis ten times more than its short one."""

OVERLAY_SUFFIX = "_overlay.png"
PREDICTIONS_CSV = "predictions.csv"
CSV_COLUMNS = ("path", "score", "verdict", "overlay")


def check_pixel_values(images: torch.Tensor, name: str | None = None) -> None:
    """Raise ``ValueError`` (prefixed by ``name``) unless float ``images`` are finite and within [0, 1].

    A NaN or infinite pixel gives a NaN score (every verdict "normal"), and an image in 0..255 or -1..1 is
    scored as if it were in 0..1: both are refused, saying what is accepted, before the model runs (so in
    every backend alike).
    """
    prefix = f"{name}: " if name else ""
    accepted = "expected finite float pixel values in [0, 1], or a uint8 image (0..255)"
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{prefix}{bad} of {finite.numel()} pixel values are NaN or infinite; {accepted}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (divide a 0..255 image by 255)" if hi > 1.0 and lo >= 0.0 else ""
        raise ValueError(f"{prefix}float pixel values span [{lo:g}, {hi:g}]; {accepted}{hint}")


def check_image_size(height: int, width: int, name: str | None = None) -> None:
    """Raise ``ValueError`` (prefixed by ``name``, e.g. the file) unless the model can score this size.

    Accepted: each side >= :data:`MIN_IMAGE_SIDE` px and long / short side <= :data:`MAX_ASPECT_RATIO`.
    """
    short, long = min(height, width), max(height, width)
    if short < MIN_IMAGE_SIDE or long > MAX_ASPECT_RATIO * short:
        raise ValueError(
            f"{name + ': ' if name else ''}image is {width}x{height} px (WxH); expected each side >= {MIN_IMAGE_SIDE} "
            f"px and an aspect ratio (long side / short side) of at most {MAX_ASPECT_RATIO:g}"
        )


EXPORT_WORTH_IMAGES = 200
"""From this many images a first ``Predictor`` on an uncached checkpoint exports its fast CPU route before scoring:
the export costs 10-20 s once, the route then saves about 45-100 ms an image over torch on a 2-core CPU (256²,
batch 1: 134 -> 89 ms float32, less on the bf16 route), so fewer images are answered sooner by torch."""


def _cpu_route_files(checkpoint: str | Path, record: CheckpointRecord) -> list[Path] | None:
    """The cache files the fast CPU route of ``checkpoint`` needs (the bf16 halves where that route applies, else the
    float32 graph); None where no export is involved (not a MemSeg checkpoint, or the deploy extra is missing)."""
    from memseg.engine.deploy_extra import DEPLOY_MODULES, missing_modules
    from memseg.engine.export import cache_key, cached_halves_paths, cached_onnx_path
    from memseg.engine.mixed_precision import route_applies
    from memseg.engine.onnx_runtime import EXPORTABLE

    if record.model_name not in EXPORTABLE or missing_modules(*DEPLOY_MODULES):
        return None
    key = cache_key(Path(checkpoint))
    if route_applies(record.model_name):
        return list(cached_halves_paths(checkpoint, key))
    return [cached_onnx_path(checkpoint, key)]


def onnxruntime_route(checkpoint: str | Path, backend: InferenceBackend,
                      threads: int | None = None) -> InferenceBackend:
    """A MemSeg checkpoint's torch ``backend`` moved onto its cached ONNX graph in onnxruntime (float32).

    Other models (DRAEM, MMR) come back unchanged. Without the ``deploy`` extra, or when the export
    or its parity check fails, the torch backend comes back too, and one stderr line says why.
    """
    from memseg.engine import export
    from memseg.engine.deploy_extra import DEPLOY_MODULES, missing_modules
    from memseg.engine.onnx_runtime import EXPORTABLE, load_onnx

    if backend.model_name not in EXPORTABLE:
        return backend
    missing = missing_modules(*DEPLOY_MODULES)
    if missing:
        say_once(f"memseg: {', '.join(missing)} not installed, so {checkpoint} runs with torch (slower on the CPU); "
                 "pip install 'memseg[deploy]' for the onnxruntime route")
        return backend
    try:
        fast, _record = load_onnx(export.cached_onnx(checkpoint), threads)
    except Exception as err:  # the exporter raises many kinds; torch still runs the checkpoint
        say_once(f"memseg: the onnxruntime route failed for {checkpoint} ({type(err).__name__}: "
                 f"{(str(err).splitlines() or [''])[0]}); running it with torch")
        return backend
    return fast


def _fast_cpu_route(checkpoint: str | Path, backend: InferenceBackend, threads: int | None) -> InferenceBackend:
    """The bf16 route where it applies, else onnxruntime float32, else (deploy extra missing, export failed) torch."""
    from memseg.engine.mixed_precision import mixed_precision_route

    routed = mixed_precision_route(checkpoint, backend, threads)
    return routed if routed is not None else onnxruntime_route(checkpoint, backend, threads)


class _BackgroundRoute:
    """The fast CPU route of a checkpoint exported into the cache by a separate, low-priority process
    (``python -m memseg.engine.inference <checkpoint>``): it outlives this process, so the export is never lost
    half-way, and a second predictor on the same checkpoint meanwhile waits for the same process. A watcher thread
    then opens the route's sessions and runs it once, so the call that moves onto it pays nothing."""

    _running: dict[tuple[str, ...], Any] = {}  # cache files -> the process exporting them

    def __init__(self, checkpoint: str | Path, files: list[Path], backend: InferenceBackend, threads: int | None):
        import subprocess
        import sys
        import threading

        self.checkpoint, self.files, self.threads = Path(checkpoint), files, threads
        self.routed: InferenceBackend | None = None
        self.error = ""
        key = tuple(map(str, files))
        self.log = files[0].with_name(files[0].name + ".export.log")  # the export's own output, beside its files
        proc = self._running.get(key)
        if proc is None or proc.poll() is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "memseg.engine.inference", str(checkpoint)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # not killed with this process (Ctrl-C, exit)
            self._running[key] = proc
        self.proc = proc
        self.thread = threading.Thread(target=self._watch, args=(backend,), daemon=True,
                                       name=f"memseg-route-{self.checkpoint.name}")
        self.thread.start()

    def _watch(self, backend: InferenceBackend) -> None:
        self.proc.wait()
        if not all(f.is_file() for f in self.files):
            self.error = self._log_tail()
            return
        try:
            fast = _fast_cpu_route(self.checkpoint, backend, self.threads)
            if fast.name == "torch":
                self.error = "its route could not be opened"
                return
            h, w = fast.input_size
            fast.anomaly_map(torch.zeros(1, 3, h, w))  # the first run's one-off costs, here and not in a call
        except Exception as err:  # noqa: BLE001 - the predictor keeps torch, and says why
            self.error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            return
        self.routed = fast
        try:
            self.log.unlink()
        except OSError:
            pass

    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return (lines[-1].strip()[:300] if lines else f"exit status {self.proc.returncode}") + f"; log: {self.log}"


def _export_in_background(checkpoint: str) -> int:
    """``python -m memseg.engine.inference CHECKPOINT``: export the fast CPU route of ``checkpoint`` into the cache
    at a low priority (what :class:`_BackgroundRoute` runs)."""
    import os

    from memseg.engine.backends import load_model

    try:
        os.nice(10)  # the predictor's own scoring comes first
    except OSError:
        pass
    backend, _record = load_model(checkpoint, device="cpu", backend="torch")
    return 0 if _fast_cpu_route(checkpoint, backend, None).name != "torch" else 1


@dataclass
class Prediction:
    """Result for one image."""

    score: float  # image anomaly score (mean of the top-k pixel scores)
    # float32 (H, W) in [0, 1] at the original image size; above DECODE_MAX_PIXELS at the image's
    # size bounded to that many pixels (same aspect ratio), see the module docstring
    anomaly_map: np.ndarray
    time_ms: float  # preprocessing + network + resize back
    is_anomalous: bool  # score >= threshold
    exact: bool = True  # float32 throughout (False: the bf16 route, and the score is not near the threshold)


_BATCH_ACCEPTS = ("float images (B, 3, H, W) in [0, 1] as a torch tensor or a NumPy array, or NumPy uint8 images "
                  "(B, H, W, 3)")


def _batch_tensor(images: Any) -> torch.Tensor:
    """:meth:`Predictor.predict_batch`'s input as a float tensor (B, 3, H, W); anything else raises saying what it
    takes."""
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3:
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if np.issubdtype(images.dtype, np.floating) and images.ndim == 4 and images.shape[1] == 3:
            return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        raise ValueError(f"predict_batch expects {_BATCH_ACCEPTS}; got a {images.dtype} NumPy array of shape "
                         f"{images.shape}")
    raise ValueError(f"predict_batch expects {_BATCH_ACCEPTS}; got {type(images).__name__}")


class Predictor:
    """A trained model ready to score images.

    Attributes: ``model`` (the :class:`memseg.engine.backends.InferenceBackend` running the network),
    ``record`` (the :class:`memseg.engine.checkpoint_record.CheckpointRecord` of what the file carries),
    ``input_size`` (H, W), ``threshold``, ``category``, ``model_name``, ``weights_source``, ``top_k``, ``device``,
    ``max_pixels`` (image files with more pixels are refused; None: Pillow's own limit).

    Args:
        model: a torch model (run as a :class:`memseg.engine.backends.TorchBackend` on ``device``) or a backend.
        record: what the checkpoint carries; None: the model's own input size and the defaults.
        threshold, top_k: override the record's.
    """

    def __init__(self, model: torch.nn.Module | InferenceBackend, record: CheckpointRecord | None = None,
                 device: str | torch.device = "auto", threshold: float | None = None, top_k: int | None = None,
                 max_pixels: int | None = MAX_IMAGE_PIXELS):
        self.device = select_device(device)
        self.model = as_backend(model, self.device)
        if record is None:
            record = CheckpointRecord(model_name=self.model.model_name, input_size=self.model.input_size)
        self.record = record
        self.input_size: tuple[int, int] = self.model.input_size or record.input_size
        stored = record.threshold
        self.threshold: float = float(threshold if threshold is not None else stored if stored is not None
                                      else DEFAULT_THRESHOLD)
        self.threshold_source = ("given" if threshold is not None else "validation split" if stored is not None
                                 else "default 0.5")
        self.category: str | None = record.category
        self.model_name: str = record.model_name
        self.weights_source: str | None = record.weights_source
        self.top_k: int = int(top_k) if top_k is not None else record.top_k
        self.max_pixels = max_pixels
        self._pending: _BackgroundRoute | None = None  # a background export of the fast CPU route (from_checkpoint)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", backend: str = "auto",
                        threads: int | None = None, images: int | None = None, **kwargs: Any) -> "Predictor":
        """Load a checkpoint written by :func:`memseg.engine.training.train`, or a model written by ``memseg export``
        (``.onnx``, run by onnxruntime; see :func:`memseg.engine.backends.load_model` for ``backend``).

        On the CPU, ``backend="auto"`` runs a MemSeg checkpoint by the fastest route that keeps its
        verdicts: where the CPU has native bf16 and OpenVINO is installed, the memory comparison in
        float32 and the segmentation half in bf16, images near the threshold scored again in float32
        (:func:`memseg.engine.mixed_precision.mixed_precision_route`); else its whole graph in
        onnxruntime float32 (:func:`onnxruntime_route`; maps within 1e-4 of torch).
        Both are exported once into a cache; without the ``deploy`` extra it stays on torch and says so
        once. ``backend="torch"`` keeps torch. ``threads``: the runtimes' intra-op threads (None: their default).

        The export takes 10-20 s, once per checkpoint; where it is not cached yet, the route follows the work
        (``images``: how many images this predictor will score; one stderr line says which route and why):

        - ``images`` >= :data:`EXPORT_WORTH_IMAGES`: exported now (it pays off over the job);
        - fewer: torch, no export (a few images are answered before the export would have finished);
        - None (unknown: an interactive session, the dashboard): torch at once, while a low-priority process
          exports the route in the background; the predictor moves onto it at its first call after the
          export is ready (:meth:`wait_for_route` waits for it). The export survives this process, so the
          next one finds it cached.
        """
        from memseg.engine.backends import is_onnx, load_model

        model, record = load_model(path, device=device, backend=backend, threads=threads)
        pending = None
        if backend == "auto" and not is_onnx(path) and select_device(device).type == "cpu":
            files = _cpu_route_files(path, record)
            if files is None or all(f.is_file() for f in files) or (images is not None
                                                                    and images >= EXPORT_WORTH_IMAGES):
                model = _fast_cpu_route(path, model, threads)  # exports now unless cached
            elif images is not None:
                say_once(f"memseg: {images} image{'s' if images != 1 else ''}: {path} runs with torch (exporting it "
                     f"for the faster CPU route takes 10-20 s, once; that pays off from {EXPORT_WORTH_IMAGES} images)")
            else:
                pending = _BackgroundRoute(path, files, model, threads)
                say_once(f"memseg: {path} runs with torch while its faster CPU route is exported in the background "
                     "(10-20 s, once; cached for the next run)")
        predictor = cls(model, record, device=device, **kwargs)
        predictor._pending = pending
        return predictor

    def wait_for_route(self, timeout: float | None = None) -> str:
        """Wait (up to ``timeout`` s) for a background export started by :meth:`from_checkpoint` and move onto
        its route; returns :attr:`backend` ("torch" while it is not ready, or when it failed)."""
        if self._pending is not None:
            self._pending.wait(timeout)
            self._adopt_route()
        return self.backend

    def _adopt_route(self) -> None:
        """Move onto the background export's route once it is ready (between two calls: a call in progress keeps
        the model it started with); a failed export leaves torch and says so once."""
        pending = self._pending
        if pending is None or not pending.done():
            return
        self._pending = None
        if pending.routed is None:
            say_once(f"memseg: the background export of {pending.checkpoint} failed ({pending.error}); it keeps "
                 "running with torch")
            return
        self.model = pending.routed
        say_once(f"memseg: {pending.checkpoint} now runs with {self.backend} (exported in the background)")

    @property
    def backend(self) -> str:
        """What runs the network: "torch", "onnxruntime" or "onnxruntime+openvino-bf16"."""
        return self.model.name

    # ------------------------------------------------------------------------------- inputs
    def load(self, path: str | Path) -> np.ndarray:
        """Decode an image file as :meth:`predict` does: uint8 (H, W, 3), downscaled above DECODE_MAX_PIXELS."""
        return load_image(path, max_pixels=self.max_pixels, max_decoded_pixels=DECODE_MAX_PIXELS)

    def _to_tensor(self, image: Any) -> torch.Tensor:
        """Any supported input -> float (1, 3, H, W) in [0, 1]; the size is checked before any conversion.

        Paths are decoded downscaled above DECODE_MAX_PIXELS; so are larger PIL images and arrays
        (while still uint8), so the float copy stays bounded too.
        """
        name = None
        if isinstance(image, (str, Path)):
            name = str(image)
            image = self.load(image)  # raises naming the file
        elif isinstance(image, Image.Image):
            check_image_size(image.height, image.width, name)
            image = pil_to_rgb_array(shrink_image(image, DECODE_MAX_PIXELS))
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"predict expects a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
            check_image_size(image.shape[0], image.shape[1], name)
            if image.shape[0] * image.shape[1] > DECODE_MAX_PIXELS:
                image = pil_to_rgb_array(shrink_image(Image.fromarray(image), DECODE_MAX_PIXELS))
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 4 else image[None]
            if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError("predict expects a float tensor (3, H, W) or (1, 3, H, W) in [0, 1], got "
                                 f"{image.dtype} {tuple(image.shape)}")
            check_image_size(x.shape[2], x.shape[3], name)
            check_pixel_values(x, "predict")
            return x.float()
        raise ValueError("predict expects a path, PIL image, uint8 (H, W, 3) array or float tensor, got "
                         f"{type(image).__name__}")

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)

    # ------------------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor | np.ndarray, threshold: float | None = None) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
        """Score a batch ``float (B, 3, H, W)`` in [0, 1] (not normalised): a torch tensor or a NumPy array,
        or NumPy ``uint8 (B, H, W, 3)`` images (0..255). NaN, infinite or out-of-range values raise ``ValueError``.

        Returns ``(scores float32 (B,), maps float32 (B, h, w))``: maps at the input's H, W, or
        bounded to DECODE_MAX_PIXELS (same aspect ratio) for larger inputs. Sizes are checked
        as in :func:`check_image_size`. On the bf16 route, images scored near ``threshold``
        (default: :attr:`threshold`) are scored again in float32, so their verdicts are exact.
        """
        images = _batch_tensor(images)
        if images.is_floating_point():
            check_pixel_values(images, "predict_batch")
        scores, maps, _ = self._predict_batch(images, self.threshold if threshold is None else float(threshold))
        return scores, maps

    def _predict_batch(self, images: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_batch` and, per image, whether its map and score are float32 throughout."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"predict_batch expects float images (B, 3, H, W) in [0, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")
        h, w = images.shape[-2:]
        check_image_size(h, w, "predict_batch")
        bw, bh = bounded_size(w, h, DECODE_MAX_PIXELS)
        if self._pending is not None:
            self._adopt_route()  # a background export became ready: from this call on, its route
        model = self.model  # one model for the whole call
        x = self._resize(images.to(self.device, torch.float32), self.input_size)
        amap, scores = score_images(model, x, self.top_k)  # (B, 1, h, w), (B,): as in validation
        amap, scores, exact = self._exact_near(model, x, amap, scores, threshold)
        if (bh, bw) != tuple(amap.shape[-2:]):
            amap = F.interpolate(amap, size=(bh, bw), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return scores.cpu().numpy().astype(np.float32), amap[:, 0].cpu().numpy().astype(np.float32), exact

    def _exact_near(self, model: Any, x: torch.Tensor, amap: torch.Tensor, scores: torch.Tensor,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The bf16 route's verdict guard: images scored within the backend's ``verdict_margin`` of
        ``threshold`` are scored again by its ``exact_anomaly_map`` (float32)."""
        margin = float(model.verdict_margin)
        if not margin:
            return amap, scores, np.ones(len(scores), dtype=bool)
        near = (scores.float() - threshold).abs() < margin
        if bool(near.any()):
            with no_autocast(x.device.type):
                exact_maps = model.exact_anomaly_map(normalize(x[near].float())).float().clamp_(0.0, 1.0)
            amap, scores = amap.clone(), scores.clone()
            amap[near] = exact_maps.to(amap.dtype)
            scores[near] = score_maps(model, exact_maps, self.top_k).to(scores.dtype)
        return amap, scores, near.cpu().numpy()

    @property
    def verdict_margin(self) -> float:
        """How close to a threshold a score is scored again in float32 (0: the model is float32 throughout)."""
        return float(self.model.verdict_margin)

    def is_exact_at(self, score: float, threshold: float) -> bool:
        """Whether a verdict at ``threshold`` from ``score`` is the float32 verdict without scoring again."""
        return not self.verdict_margin or abs(float(score) - float(threshold)) >= self.verdict_margin

    def predict(self, image: Any, threshold: float | None = None) -> Prediction:
        """Score one image: path, PIL image, uint8 (H, W, 3) array or float tensor (3, H, W) in [0, 1].

        ``threshold`` (default: :attr:`threshold`) decides the verdict. Raises ``ValueError`` for
        unsupported inputs and sizes (see :func:`check_image_size`),
        :class:`memseg.data.io.ImageLoadError` / ``FileNotFoundError`` naming an unreadable file.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        t0 = time.perf_counter()
        x = self._to_tensor(image)
        scores, maps, exact = self._predict_batch(x, threshold)
        ms = 1000.0 * (time.perf_counter() - t0)
        score = float(scores[0])
        return Prediction(score=score, anomaly_map=maps[0], time_ms=ms, is_anomalous=score >= threshold,
                          exact=bool(exact[0]))


if __name__ == "__main__":  # the background export of Predictor.from_checkpoint (see _BackgroundRoute)
    import sys

    sys.exit(_export_in_background(sys.argv[1]))
