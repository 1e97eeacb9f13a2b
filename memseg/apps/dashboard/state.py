"""What the dashboard holds and decides: the loaded model, the current image, the last result, the colour scale.

Plain Python, no widgets: :class:`DashboardState` loads a checkpoint (with a warm-up forward and the model's
:class:`ScoreScale`), lists a category's test images, takes the current image (a test image or an upload),
runs the model on it (or on a simulated defect, paper §3.1) and decides the binary mask and the verdict
at a threshold. :class:`memseg.apps.dashboard.DashboardApp` shows what it holds.

Colour scale: the heat map, the overlay and the decision slider span the model's score range, not a
fixed 0-1: the validation scores stored in the checkpoint, else the scores of a few test images of the
model's category (:func:`score_scale`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memseg.apps.demo import DemoSettings
from memseg.viz import resize_map, resize_mask, resize_rgb

if TYPE_CHECKING:
    from memseg.engine.inference import Predictor

__all__ = [
    "FULL_SCALE",
    "SCALE_CHECK_IMAGES",
    "SCALE_TOP_PERCENTILE",
    "CheckpointError",
    "DashboardState",
    "ImageSource",
    "Result",
    "ScoreScale",
    "SimulationParams",
    "display_hw",
    "score_scale",
]

SCALE_TOP_PERCENTILE = 90  # the colour scale's red end: this percentile of the model's scores
SCALE_CHECK_IMAGES = 16  # test images scored for the colour scale when the checkpoint stores no validation scores


@dataclass
class ImageSource:
    """The image the page currently works on.

    kind: "test" (from the test split) or "upload"; mask: ground truth (None when unknown);
    label: 0 normal, 1 anomalous, None unknown.
    """

    kind: str
    name: str
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray | None  # bool (H, W)
    label: int | None
    defect: str


@dataclass
class Result:
    """One model run: what was shown to the model and what it answered (all at display size)."""

    image: np.ndarray  # uint8 (h, w, 3): the real or simulated input
    truth: np.ndarray | None  # bool (h, w) or None
    anomaly_map: np.ndarray  # float32 (h, w) in [0, 1]
    score: float
    time_ms: float
    simulated: bool
    caption: str
    real_truth: np.ndarray | None = None  # bool (h, w): the source's own defect mask under a simulation
    model_input: Any = None  # what was passed to Predictor.predict (to score it again in float32)
    exact: bool = True  # float32 throughout (False on the bf16 route, away from the threshold)


@dataclass(frozen=True)
class SimulationParams:
    """The "Simulate a defect" controls: Perlin threshold T, opacity δ (eq. 2), Perlin scale 2^scale_exp, source,
    seed."""

    threshold: float
    delta: float
    scale_exp: int
    source: str  # "texture" (DTD) or "structure"
    seed: int

    def describe(self) -> str:
        return f"T={self.threshold:.2f}, δ={self.delta:.2f}, scale 2^{self.scale_exp}, {self.source}, seed {self.seed}"


@dataclass(frozen=True)
class ScoreScale:
    """The model's score range: colours run from `lo` (blue) to `hi` (red); the decision slider spans it.

    step: the slider's step; source: where the range comes from (said in the legend).
    """

    lo: float
    hi: float
    step: float
    source: str

    @property
    def decimals(self) -> int:
        """Digits needed to tell two slider steps apart."""
        return max(2, -int(np.floor(np.log10(self.step))))

    def fmt(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"


FULL_SCALE = ScoreScale(0.0, 1.0, 0.01, "fixed: no scores available to scale it")


def score_scale(scores: Any, source: str, threshold: float | None = None) -> ScoreScale:
    """The colour/slider range for a model whose image scores are `scores` (and decision `threshold`).

    The range runs from the lowest score to the 90th percentile (one outlier, e.g. a single
    simulated anomaly scoring 1.0, must not squeeze every other score into the blue end) and
    includes `threshold`; it is padded by 5 % of its span and at least 0.01 on each side, rounded
    outwards to a step of 1/50 to 1/500 of the span (a power of ten), and stays inside [0, 1].

    Examples:
        >>> scale = score_scale([0.10, 0.12, 0.15, 0.20, 0.25, 0.30], "validation scores", threshold=0.16)
        >>> scale.lo, scale.hi, scale.step, scale.fmt(0.16)
        (0.09, 0.285, 0.001, '0.160')
    """
    vals = np.asarray([float(v) for v in scores], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return FULL_SCALE
    lo, hi = float(vals.min()), float(np.percentile(vals, SCALE_TOP_PERCENTILE))
    if threshold is not None:
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    pad = max(0.05 * (hi - lo), 0.01)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    step = float(10.0 ** np.floor(np.log10((hi - lo) / 50.0)))
    lo = round(float(np.floor(lo / step) * step), 10)
    hi = round(float(np.ceil(hi / step) * step), 10)
    return ScoreScale(lo, hi, step, source)


def display_hw(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is `side` (the panels' size), aspect kept."""
    h, w = hw
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class CheckpointError(RuntimeError):
    """A checkpoint could not be loaded; the message names the file."""


def checkpoint_error_text(path: Path, err: BaseException) -> str:
    """One line: why the model file ``path`` cannot be used (the kit's own messages name the file already)."""
    text = " ".join(str(err).split())
    if isinstance(err, (OSError, ValueError, RuntimeError)) and text:
        return f"cannot load model: {text}" if str(path) in text else f"cannot load model {path}: {text}"
    return (f"cannot load model {path}: its content is not what `memseg train` or `memseg export` writes "
            f"({type(err).__name__}: {text or 'no detail'})")


class DashboardState:
    """The page's model, images and last result.

    Args:
        settings: the demo settings (dataset, layout, device, DTD folder).
        display_side: longest side of the shown images in pixels (:class:`Result` is at that size).

    Attributes: :attr:`predictor` (None until a checkpoint loads), :attr:`records` (the picked category's
    test images), :attr:`source` (the current image), :attr:`result` (the last model run),
    :attr:`binary_mask` and :attr:`verdict` (decided at the threshold), :attr:`colour_scale`,
    :attr:`error_text` (what the page's error box says), :attr:`updates_run` (model runs so far).
    """

    def __init__(self, settings: DemoSettings, display_side: int = 300) -> None:
        self.settings = settings
        self.display_side = int(display_side)
        self.predictor: Predictor | None = None
        self.checkpoint: Path | None = None
        self.input_size: tuple[int, int] = (settings.size, settings.size)
        self.categories: list[str] = []  # the dataset's categories (the picker's values)
        self.records: list = []
        self.source: ImageSource | None = None
        self.result: Result | None = None
        self.binary_mask: np.ndarray | None = None
        self.verdict: str | None = None
        self.colour_scale: ScoreScale = FULL_SCALE  # the model's score range (see score_scale)
        self.error_text = ""
        self.updates_run = 0  # how many model runs happened (the debounce test counts them)
        self.warmup_ms: float | None = None  # the loaded model's warm-up forward (see load_checkpoint)
        self.shown_source: ImageSource | None = None  # the image of :attr:`result`
        self._simulators: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ model
    def find_categories(self) -> str:
        """Fill :attr:`categories` from the dataset (plus the configured one when its folder exists).

        Returns the error to show when the dataset cannot be read, else "".
        """
        from memseg.data import list_categories

        s, error = self.settings, ""
        try:
            cats = list_categories(s.data, layout=s.layout)
        except (FileNotFoundError, ValueError) as err:
            cats, error = [], f"dataset {s.data}: {err}"
        if s.category not in cats and (Path(s.data) / s.category).is_dir():
            cats = [*cats, s.category]
        self.categories = cats
        return error

    def load_checkpoint(self, path: Path, picked_category: str | None) -> None:
        """Load the model from `path`, warm it up and take its colour scale; a failed load changes nothing.

        `picked_category` (the page's category) scores the colour scale when the model's own category is
        not in the dataset. Raises :class:`CheckpointError` naming `path` when it cannot be loaded.
        """
        from memseg.engine.inference import Predictor

        try:  # loading, the warm-up and the colour scale all read the file's content: any failure is the file's
            predictor = Predictor.from_checkpoint(path, device=self.settings.device)
            warmup_ms = self._warm_up(predictor)
            scale = self._model_scale(predictor, picked_category)
        except Exception as err:  # noqa: BLE001 - one line naming the file, never a traceback in the page's log
            raise CheckpointError(checkpoint_error_text(path, err)) from None
        self.warmup_ms = warmup_ms
        self.predictor, self.checkpoint = predictor, path
        self.input_size = tuple(predictor.input_size)
        self._simulators.clear()
        self.colour_scale = scale

    @staticmethod
    def _warm_up(predictor: Predictor) -> float:
        """One dummy forward at the model's input size; returns its time in ms.

        The first forward of a fresh process pays one-off costs (thread pools, kernel selection,
        allocator growth: several times a later forward); paying
        them here, while the model loads, keeps the presenter's first view and click as fast as the rest.
        """
        h, w = predictor.input_size
        t0 = time.perf_counter()
        scores, _ = predictor.predict_batch(torch.zeros(1, 3, h, w))
        # the bf16 route scores images near the threshold again in float32: warm that path as well
        predictor.predict_batch(torch.zeros(1, 3, h, w), threshold=float(scores[0]))
        return 1000.0 * (time.perf_counter() - t0)

    def _model_scale(self, predictor: Predictor, picked_category: str | None) -> ScoreScale:
        """The model's score range: its stored validation scores, else scores of its category's test images."""
        scores = list(predictor.record.validation_scores)
        threshold = float(predictor.threshold) if predictor.threshold_source == "validation split" else None
        if scores:
            return score_scale(scores, f"lowest to {SCALE_TOP_PERCENTILE}th percentile of the checkpoint's "
                               f"{len(scores)} validation scores", threshold)
        category = predictor.category if predictor.category in self.categories else picked_category
        scores = self._score_test_images(predictor, category) if category else []
        if not scores:
            return FULL_SCALE
        return score_scale(scores, f"lowest to {SCALE_TOP_PERCENTILE}th percentile of the scores of {len(scores)} "
                           f"{category} test images", threshold)

    def _score_test_images(self, predictor: Predictor, category: str) -> list[float]:
        """Image scores of up to SCALE_CHECK_IMAGES test images of `category`, spread over the split."""
        from memseg.data import find_records
        from memseg.data.io import load_image, to_tensor

        try:
            records = find_records(self.settings.data, category, "test", layout=self.settings.layout)
        except (FileNotFoundError, ValueError):
            return []
        if not records:
            return []
        picks = np.unique(np.linspace(0, len(records) - 1, min(SCALE_CHECK_IMAGES, len(records))).round().astype(int))
        images = []
        for i in picks:
            try:
                images.append(to_tensor(load_image(records[i].image_path), predictor.input_size))
            except (FileNotFoundError, ValueError):
                continue  # an unreadable test image is reported when it is shown, not here
        if not images:
            return []
        scores, _maps = predictor.predict_batch(torch.stack(images))
        return [float(v) for v in scores]

    # ------------------------------------------------------------------ images
    def load_records(self, category: str) -> None:
        """The test split of `category` becomes :attr:`records`."""
        from memseg.data import find_records

        self.records = find_records(self.settings.data, category, "test", layout=self.settings.layout)

    def load_test_image(self, index: int) -> None:
        """Test record `index` (with its ground truth) becomes the current image."""
        from memseg.data.io import load_image, load_mask

        if not 0 <= index < len(self.records):
            raise IndexError(f"test image index {index} out of range (0..{len(self.records) - 1})")
        r = self.records[index]
        image = load_image(r.image_path)
        h, w = image.shape[:2]
        if r.mask_path is not None:
            mask = load_mask(r.mask_path, size=(h, w))
        elif r.label == 0:
            mask = np.zeros((h, w), bool)
        else:
            mask = None
        self.source = ImageSource("test", Path(r.image_path).name, image, mask, int(r.label), r.defect)

    def use_upload(self, name: str, image: np.ndarray) -> None:
        """A decoded upload (uint8 (H, W, 3), see :func:`decode_upload`) becomes the current image."""
        self.source = ImageSource("upload", name, image, None, None, "unknown")

    # ------------------------------------------------------------------ model runs
    def _simulator(self, category: str | None) -> Any:
        import warnings

        from memseg.simulation.simulator import AnomalySimulator

        key = (self.input_size, category, str(self.settings.dtd))
        if key not in self._simulators:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # missing DTD is said in the page (structure only)
                self._simulators[key] = AnomalySimulator(
                    dtd_root=self.settings.dtd, size=self.input_size, device="cpu",
                    category=category, max_textures=64, progress=False)
        return self._simulators[key]

    def simulate(self, params: SimulationParams, category: str | None) -> tuple[torch.Tensor, np.ndarray]:
        """The current image with a simulated defect at the model's input size: (float (3, H, W) in [0, 1], bool mask
        (H, W))."""
        from memseg.data.io import to_tensor

        assert self.source is not None
        x = to_tensor(self.source.image, self.input_size)[None].contiguous()  # (1, 3, H, W) in [0, 1]
        g = torch.Generator().manual_seed(int(params.seed))
        res = self._simulator(category).simulate(
            x, generator=g, threshold=float(params.threshold), delta=float(params.delta),
            source=params.source, scale_exp=int(params.scale_exp),
        )
        return res.images[0].clamp(0, 1).cpu(), res.masks[0, 0].cpu().numpy() > 0.5

    def run(self, simulation: SimulationParams | None, category: str | None) -> None:
        """Run the model on the current image, or on it with a simulated defect, into :attr:`result`.

        `category` picks the simulator's foreground rule (paper §3.1); needs a model and a current image.
        """
        src = self.source
        hw = display_hw(src.image.shape[:2], self.display_side)  # the source's aspect, also for simulations
        real = None if src.mask is None else resize_mask(src.mask, hw)
        if simulation is not None:
            x, sim_mask = self.simulate(simulation, category)
            image = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # for display
            caption = f"simulated defect on {src.name}: {simulation.describe()}"
            # The image's own defect is still there: the ground truth is M plus it (else a hit on it looks false).
            truth = resize_mask(sim_mask, hw)
            if real is not None and real.any():
                truth = truth | real
                caption += f" (the image's own {src.defect} defect is shown in orange)"
            elif src.mask is None:
                caption += " (the image's own defects, if any, are unknown)"
        else:
            x, image, truth = src.image, src.image, real
            kind = "uploaded" if src.kind == "upload" else f"test image ({src.defect})"
            caption = f"{kind}: {src.name}"
        pred = self.predictor.predict(x)
        self.updates_run += 1
        self.shown_source = src  # the image the panels show (a failed run leaves the previous one)
        self.result = Result(
            image=resize_rgb(image, hw),
            truth=truth,
            anomaly_map=resize_map(np.asarray(pred.anomaly_map, dtype=np.float32), hw),
            score=float(pred.score),
            time_ms=float(pred.time_ms),
            simulated=simulation is not None,
            caption=caption,
            real_truth=real if simulation is not None else None,
            model_input=x,
            exact=pred.exact,
        )

    def decide(self, threshold: float) -> None:
        """The binary mask (map >= threshold) and the verdict (score >= threshold) of :attr:`result`."""
        r = self.result
        if not r.exact and not self.predictor.is_exact_at(r.score, threshold):
            # the bf16 route near this threshold: score the image again in float32 (its verdict is then exact)
            pred = self.predictor.predict(r.model_input, threshold=threshold)
            hw = r.anomaly_map.shape
            r = self.result = replace(r, anomaly_map=resize_map(np.asarray(pred.anomaly_map, dtype=np.float32), hw),
                                                  score=float(pred.score), exact=pred.exact)
        self.binary_mask = r.anomaly_map >= threshold
        self.verdict = "anomalous" if r.score >= threshold else "normal"
