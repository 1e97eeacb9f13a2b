"""The Voila inference dashboard: pick a model and an image (or upload one, or simulate a defect), see the maps.

Everything the page does is a plain method of :class:`DashboardApp`, so it is tested without a
browser (`tests/test_dashboard.py`); the widgets only call those methods. The notebook
`notebooks/[demo] model inference.ipynb` builds the app from :func:`memseg.apps.demo.load_settings`.

Responsiveness: sliders use ``continuous_update=False`` and every change goes through
:meth:`DashboardApp.request_update`, which restarts a short timer on the kernel's event loop; only the
latest request runs (each carries a generation number; a stale one is dropped), so a burst of slider
events gives one redraw, not a queue of stale ones. Without a running event loop (tests) the update
runs at once.

Stable CSS classes for the browser test: ``memseg-app``, ``memseg-checkpoint``, ``memseg-category``,
``memseg-image``, ``memseg-prev``, ``memseg-next``, ``memseg-upload``, ``memseg-tabs``,
``memseg-sim-threshold``, ``memseg-delta``, ``memseg-scale``, ``memseg-source``, ``memseg-seed``,
``memseg-decision``, ``memseg-score``, ``memseg-verdict``, ``memseg-time``, ``memseg-caption``,
``memseg-error``, ``memseg-warning`` (the banner shown when the picked category is not the model's),
``memseg-legend-range`` (the colour scale's range in the legend),
``memseg-panel-<input|truth|heatmap|overlay|mask>`` (and ``memseg-image-<...>`` on the image inside
each panel).

Colour scale: the heat map, the overlay and the decision slider span the model's score range (see
:class:`ScoreScale`), not a fixed 0-1: the validation scores stored in the checkpoint, else the scores
of a few test images of the model's category. The overlay tints in proportion to the scaled map, so
normal regions keep their own colours.
"""

from __future__ import annotations

import asyncio
import html
import io
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from memseg.apps.demo import DemoSettings, find_checkpoints, load_settings, resolve_checkpoint

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "UploadError",
    "decode_upload",
    "ImageSource",
    "Result",
    "ScoreScale",
    "score_scale",
    "DashboardApp",
    "build_app",
]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MiB
MAX_UPLOAD_PIXELS = 50_000_000  # 50 Mpx
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg")
PANELS = {  # key -> title
    "input": "Input",
    "truth": "Ground truth",
    "heatmap": "Anomaly heat map",
    "overlay": "Overlay",
    "mask": "Binary mask",
}

_CSS = """
<style>
.memseg-app { font-family: "Helvetica Neue", Arial, sans-serif; font-size: 16px; color: #1d2330; }
.memseg-app .widget-label, .memseg-app .widget-readout, .memseg-app .widget-dropdown select,
.memseg-app .widget-button, .memseg-app .widget-toggle-button, .memseg-app .p-TabBar-tabLabel,
.memseg-app .lm-TabBar-tabLabel { font-size: 15px; }
.memseg-title h1 { font-size: 30px; margin: 4px 0 0 0; }
.memseg-title p { font-size: 16px; margin: 2px 0 8px 0; color: #4a5365; }
.memseg-sidebar { background: #f3f5f9; border-radius: 10px; padding: 10px; }
.memseg-section { font-weight: 600; font-size: 16px; margin-top: 6px; }
.memseg-panel { background: #ffffff; border: 1px solid #d9dee8; border-radius: 10px; padding: 6px; }
.memseg-panel-title { font-weight: 600; font-size: 17px; text-align: center; }
.memseg-panel img { border-radius: 6px; }
.memseg-result { font-size: 20px; }
.memseg-badge { display: inline-block; padding: 4px 14px; border-radius: 16px; color: white; font-weight: 700; }
.memseg-badge.normal { background: #1f8a4c; }
.memseg-badge.anomalous { background: #c0392b; }
.memseg-error-box { color: #9b1c1c; background: #fdecec; border: 1px solid #f5b5b5; border-radius: 8px;
                    padding: 6px 10px; font-size: 15px; }
.memseg-note { color: #4a5365; font-size: 14px; }
.memseg-warning-box { color: #6b4100; background: #fff4d6; border: 2px solid #e0a100; border-radius: 8px;
                      padding: 8px 12px; font-size: 17px; font-weight: 600; margin: 4px 0; }
</style>
"""


class UploadError(ValueError):
    """An uploaded file was rejected; the message names the file and what was expected."""


def decode_upload(
    name: str,
    data: bytes | memoryview,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> np.ndarray:
    """Decode an uploaded PNG/JPEG to ``uint8 (H, W, 3)`` RGB, checking size limits before decoding.

    Grey, palette, alpha and 16-bit images are converted like :func:`memseg.data.io.load_image`.
    Images above :data:`memseg.data.io.DECODE_MAX_PIXELS` (4 Mpx) are decoded downscaled (JPEG draft
    mode, then a resize; same aspect ratio), as ``memseg predict`` does: the page shows them at a
    bounded display size anyway, and a 50 Mpx upload then costs tens of MB, not gigabytes.

    Raises:
        UploadError: empty, too large (bytes or pixels), not a PNG/JPEG, truncated or corrupt data,
            or an image mode that cannot be shown as RGB.
    """
    from memseg.data.io import DECODE_MAX_PIXELS, ImageLoadError, decode_bounded, pil_to_rgb_array

    expected = "a PNG or JPEG image"
    size = len(data)
    if size == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes); expected {expected}")
    if size > max_bytes:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB is larger than the {max_bytes / 2**20:.0f} MB limit; expected {expected}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            w, h = img.size  # header only, nothing decoded yet
            if w * h > max_pixels:
                raise UploadError(
                    f"{name}: {w}x{h} = {w * h / 1e6:.0f} Mpx is larger than the {max_pixels / 1e6:.0f} Mpx limit; "
                    f"expected {expected}"
                )
            if img.format not in ("PNG", "JPEG", "MPO"):
                raise UploadError(f"{name}: a {img.format} file; expected {expected}")
            img = decode_bounded(img, DECODE_MAX_PIXELS)  # full (downscaled) decode: truncated data fails here
    except UploadError:
        raise
    except UnidentifiedImageError as err:
        raise UploadError(f"{name}: not an image (Pillow cannot identify it); expected {expected}") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadError(f"{name}: image too large to decode safely ({err}); expected {expected}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UploadError(f"{name}: truncated or corrupt image data ({err}); expected {expected}") from err
    try:
        return pil_to_rgb_array(img, name)
    except ImageLoadError as err:
        raise UploadError(str(err)) from err
    finally:
        img.close()


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


SCALE_TOP_PERCENTILE = 90  # the colour scale's red end: this percentile of the model's scores
SCALE_CHECK_IMAGES = 16  # test images scored for the colour scale when the checkpoint stores no validation scores
REAL_DEFECT_RGB = (255, 140, 0)  # the source's own defect in the "Simulated mask M" panel (M itself is white)


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


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def _resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if amap.shape == hw:
        return amap.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 0


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> white-on-black uint8 RGB."""
    return np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)


def _truth_rgb(truth: np.ndarray, real: np.ndarray | None) -> np.ndarray:
    """Ground-truth panel: `truth` white on black, with the part in `real` (the image's own defect) in orange."""
    rgb = _mask_rgb(truth)
    if real is not None:
        rgb[real] = REAL_DEFECT_RGB
    return rgb


def _placeholder(hw: tuple[int, int]) -> np.ndarray:
    """A light grey hatched tile for "not known"."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    tile = np.where(((xx + yy) // 12) % 2 == 0, 225, 236).astype(np.uint8)
    return np.repeat(tile[:, :, None], 3, axis=2)


def _display_hw(hw: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = hw
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class DashboardApp:
    """The dashboard: widgets plus plain-Python callbacks (testable without a browser).

    Args:
        settings: demo settings (default :func:`memseg.apps.demo.load_settings`).
        debounce_s: coalescing delay for updates when an event loop is running (0: update at once).
        max_upload_bytes, max_upload_pixels: upload limits.
        display_side: longest side of the panels in pixels.

    Main methods (each is what a widget calls): :meth:`select_checkpoint`, :meth:`select_category`,
    :meth:`select_image`, :meth:`upload`, :meth:`set_threshold`, :meth:`set_simulation`,
    :meth:`request_update`, :meth:`update`. State: :attr:`source`, :attr:`result`,
    :attr:`binary_mask`, :attr:`verdict`, :attr:`error_text`.
    """

    def __init__(
        self,
        settings: DemoSettings | None = None,
        debounce_s: float = 0.15,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_upload_pixels: int = MAX_UPLOAD_PIXELS,
        display_side: int = 300,
    ) -> None:
        self.settings = settings or load_settings()
        self.debounce_s = float(debounce_s)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_pixels = int(max_upload_pixels)
        self.display_side = int(display_side)

        self.predictor: Any = None
        self.checkpoint: Path | None = None
        self.checkpoint_info: dict = {}
        self.input_size: tuple[int, int] = (self.settings.size, self.settings.size)
        self.records: list = []
        self.categories: list[str] = []  # the dataset's categories (the picker's values)
        self.source: ImageSource | None = None
        self.result: Result | None = None
        self.binary_mask: np.ndarray | None = None
        self.verdict: str | None = None
        self.error_text: str = ""
        self.updates_run = 0  # how many model runs happened (the debounce test counts them)
        self.warmup_ms: float | None = None  # the loaded model's warm-up forward (see select_checkpoint)
        self.colour_scale: ScoreScale = FULL_SCALE  # the model's score range (see score_scale)
        self._generation = 0
        self._timer: asyncio.TimerHandle | None = None
        self._simulators: dict[tuple, Any] = {}
        self._silent = False  # True while the app sets widget values itself

        self._build_widgets()
        self._populate()

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        import ipywidgets as W

        s = self.settings
        self.title = W.HTML(
            _CSS + "<div class='memseg-title'><h1>MemSeg &mdash; anomaly segmentation</h1>"
            "<p>Memory-based segmentation network (Yang et al., arXiv 2205.00908): pick a model and an image, "
            "upload your own, or simulate a defect and watch the network find it.</p></div>"
        )
        wide = W.Layout(width="100%")
        style = {"description_width": "95px"}
        self.checkpoint_dd = W.Dropdown(description="Model", layout=wide, style=style)
        self.checkpoint_dd.add_class("memseg-checkpoint")
        self.category_dd = W.Dropdown(description="Category", layout=wide, style=style)
        self.category_dd.add_class("memseg-category")
        self.image_dd = W.Dropdown(description="Test image", layout=wide, style=style)
        self.image_dd.add_class("memseg-image")
        self.prev_btn = W.Button(description="◀ previous", layout=W.Layout(width="49%"))
        self.prev_btn.add_class("memseg-prev")
        self.next_btn = W.Button(description="next ▶", layout=W.Layout(width="49%"))
        self.next_btn.add_class("memseg-next")
        self.upload_w = W.FileUpload(accept=",".join(UPLOAD_SUFFIXES), multiple=False, description="Upload an image",
                                     layout=W.Layout(width="auto"))
        self.upload_w.add_class("memseg-upload")

        slider = dict(continuous_update=False, layout=wide, style=style, readout_format=".2f")
        self.sim_threshold = W.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="Perlin T", **slider)
        self.sim_threshold.add_class("memseg-sim-threshold")
        self.delta = W.FloatSlider(value=0.6, min=0.15, max=1.0, step=0.05, description="δ (opacity)", **slider)
        self.delta.add_class("memseg-delta")
        self.scale = W.IntSlider(value=2, min=0, max=5, step=1, description="Perlin scale",
                                 continuous_update=False, layout=wide, style=style)
        self.scale.add_class("memseg-scale")
        have_dtd = bool(s.dtd and Path(s.dtd).is_dir())
        self.source_tb = W.ToggleButtons(
            options=[("texture (DTD)", "texture"), ("structure", "structure")] if have_dtd else [("structure", "structure")],
            value="texture" if have_dtd else "structure", description="Source", style=style,
        )
        self.source_tb.add_class("memseg-source")
        self.seed = W.BoundedIntText(value=0, min=0, max=2**31 - 1, description="Seed", layout=W.Layout(width="64%"), style=style)
        self.seed.add_class("memseg-seed")
        self.reseed_btn = W.Button(description="new seed", layout=W.Layout(width="30%"))
        self.reseed_btn.add_class("memseg-reseed")

        self.decision = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="Decision",
                                      **{**slider, "readout_format": ".2f"})
        self.decision.add_class("memseg-decision")
        self.error_html = W.HTML("")
        self.error_html.add_class("memseg-error")
        self.warning_html = W.HTML("")
        self.warning_html.add_class("memseg-warning")

        note = "<div class='memseg-note'>PNG or JPEG, at most {:.0f} MB and {:.0f} Mpx.</div>".format(
            self.max_upload_bytes / 2**20, self.max_upload_pixels / 1e6)
        inspect_tab = W.VBox([W.HTML("<div class='memseg-note'>Inspect the selected test image, or upload one:</div>"),
                              self.upload_w, W.HTML(note)], layout=W.Layout(overflow="hidden"))
        dtd_note = "" if have_dtd else "<div class='memseg-note'>No DTD textures found: structure source only.</div>"
        sim_tab = W.VBox([
            W.HTML("<div class='memseg-note'>Anomaly simulation (paper §3.1, eq. 1&ndash;2) on the current image:</div>"),
            self.sim_threshold, self.delta, self.scale, self.source_tb, W.HBox([self.seed, self.reseed_btn]), W.HTML(dtd_note),
        ], layout=W.Layout(overflow="hidden"))
        self.tabs = W.Tab(children=[inspect_tab, sim_tab])
        self.tabs.titles = ("Inspect", "Simulate a defect")
        self.tabs.add_class("memseg-tabs")

        sidebar = W.VBox(
            [
                W.HTML("<div class='memseg-section'>Model</div>"), self.checkpoint_dd, self.category_dd,
                W.HTML("<div class='memseg-section'>Image</div>"), self.image_dd, W.HBox([self.prev_btn, self.next_btn]),
                self.tabs,
                W.HTML("<div class='memseg-section'>Decision threshold (pixels and image score)</div>"), self.decision,
                self.error_html,
            ],
            layout=W.Layout(width="400px", min_width="360px", overflow="hidden"),
        )
        sidebar.add_class("memseg-sidebar")

        self.score_html = W.HTML("")
        self.score_html.add_class("memseg-score")
        self.verdict_html = W.HTML("")
        self.verdict_html.add_class("memseg-verdict")
        self.time_html = W.HTML("")
        self.time_html.add_class("memseg-time")
        self.caption_html = W.HTML("")
        self.caption_html.add_class("memseg-caption")
        result_bar = W.HBox([self.verdict_html, self.score_html, self.time_html],
                            layout=W.Layout(justify_content="space-between", align_items="center", width="100%"))
        result_bar.add_class("memseg-result")

        self.panel_titles: dict[str, Any] = {}
        self.panels: dict[str, Any] = {}
        boxes = []
        for key, title in PANELS.items():
            t = W.HTML(f"<div class='memseg-panel-title'>{title}</div>")
            img = W.Image(format="png", layout=W.Layout(width="100%", height="auto", margin="0", object_fit="contain"))
            img.add_class(f"memseg-image-{key}")
            box = W.VBox([t, img], layout=W.Layout(align_items="stretch", overflow="hidden"))
            box.add_class("memseg-panel")
            box.add_class(f"memseg-panel-{key}")
            self.panel_titles[key], self.panels[key] = t, img
            boxes.append(box)
        boxes.append(self._legend())
        self.grid = W.GridBox(boxes, layout=W.Layout(grid_template_columns="repeat(3, minmax(200px, 330px))",
                                                      grid_gap="12px", width="100%"))
        main = W.VBox([self.warning_html, result_bar, self.caption_html, self.grid],
                      layout=W.Layout(flex="1 1 auto", padding="0 0 0 16px", max_width="1040px"))
        self.widget = W.VBox([self.title, W.HBox([sidebar, main], layout=W.Layout(width="100%"))],
                             layout=W.Layout(width="100%", padding="8px"))
        self.widget.add_class("memseg-app")

        self.checkpoint_dd.observe(self._on_checkpoint, names="value")
        self.category_dd.observe(self._on_category, names="value")
        self.image_dd.observe(self._on_image, names="value")
        self.prev_btn.on_click(lambda _b: self._guard(self.step_image, -1))
        self.next_btn.on_click(lambda _b: self._guard(self.step_image, +1))
        self.upload_w.observe(self._on_upload, names="value")
        for w in (self.sim_threshold, self.delta, self.scale, self.source_tb, self.seed):
            w.observe(self._on_sim_param, names="value")
        self.reseed_btn.on_click(lambda _b: self._guard(self.set_simulation, seed=(self.seed.value * 7919 + 1) % 100_000))
        self.tabs.observe(self._on_tab, names="selected_index")
        self.decision.observe(self._on_decision, names="value")

    def _legend(self) -> Any:
        """The sixth grid cell: how to read the panels, with the heat map's colour scale."""
        import ipywidgets as W
        from memseg.viz import heatmap

        ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :], (18, 1))
        bar = W.Image(value=_png(heatmap(ramp)), format="png", layout=W.Layout(width="100%", height="18px", margin="0"))
        self.legend_range_html = W.HTML("")
        self.legend_range_html.add_class("memseg-legend-range")
        text = W.HTML(
            "<div class='memseg-note' style='margin-top:8px;line-height:1.4'>"
            "<b>Image score</b>: mean of the 100 highest pixel scores (paper §4.1); the image is called "
            "<b>anomalous</b> when it reaches the decision threshold, which also cuts the heat map into the "
            "binary mask. The overlay tints only where the score rises above the scale's low end.<br>"
            "<b>Ground truth</b>: the dataset's defect mask, or the simulated mask M "
            "(eq. 1&ndash;2, white) in the simulation tab, with the image's own defect in orange.</div>")
        box = W.VBox([W.HTML("<div class='memseg-panel-title'>How to read</div>"), bar, self.legend_range_html, text],
                     layout=W.Layout(overflow="hidden"))
        box.add_class("memseg-panel")
        box.add_class("memseg-legend")
        return box

    def _ipython_display_(self) -> None:  # pragma: no cover - display hook for notebooks
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ widget -> method glue
    def _guard(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a callback; any unexpected exception becomes the error text instead of killing the page."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the page must stay usable
            self.show_error(f"{type(err).__name__}: {err}")
            traceback.print_exc()
            return None

    def _on_checkpoint(self, change: dict) -> None:
        if not self._silent and change["new"]:
            self._guard(self.select_checkpoint, change["new"])

    def _on_category(self, change: dict) -> None:
        if not self._silent and change["new"]:
            self._guard(self.select_category, change["new"])

    def _on_image(self, change: dict) -> None:
        if not self._silent and change["new"] is not None and change["new"] >= 0:
            self._guard(self.select_image, change["new"])

    def _on_upload(self, change: dict) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0]  # ipywidgets 8: tuple of dicts {name, type, size, content (memoryview), last_modified}
        name, content = item.get("name", "upload"), item["content"]
        self._set_silently(self.upload_w, ())  # free the bytes; the same file can be uploaded again
        self._guard(self.upload, name, content)

    def _on_sim_param(self, change: dict) -> None:
        if not self._silent and self.simulating:
            self._guard(self.request_update)

    def _on_tab(self, change: dict) -> None:
        if not self._silent:
            self._guard(self.request_update)

    def _on_decision(self, change: dict) -> None:
        if not self._silent:
            self._guard(self.set_threshold, change["new"])

    # ------------------------------------------------------------------ state setup
    def _populate(self) -> None:
        s = self.settings
        configured = resolve_checkpoint(s)
        ckpts = find_checkpoints(s.runs, [configured])
        self._silent = True
        try:
            self.checkpoint_dd.options = [(self._ckpt_label(p), str(p)) for p in ckpts]
            try:
                from memseg.data import list_categories

                cats = list_categories(s.data, layout=s.layout)
            except (FileNotFoundError, ValueError) as err:
                cats = []
                self.show_error(f"dataset {s.data}: {err}")
            if s.category not in cats and (Path(s.data) / s.category).is_dir():
                cats = [*cats, s.category]
            self.categories = cats
            self._label_categories(None)
            self.category_dd.value = s.category if s.category in cats else None
        finally:
            self._silent = False
        if not ckpts:
            self.show_error(f"no checkpoint found: {configured} does not exist and {s.runs} holds no *.pt; "
                            "run `python -m memseg.apps.demo prepare` first")
        else:
            target = str(configured.resolve()) if configured.is_file() else str(ckpts[0])
            self._silent = True
            self.checkpoint_dd.value = target
            self._silent = False
            self._guard(self.select_checkpoint, target, refresh=False)
        if not self.records and s.category in self.categories:  # the checkpoint did not pick one
            self._set_silently(self.category_dd, s.category)
            self._guard(self.select_category, s.category)

    def _label_categories(self, model_category: str | None) -> None:
        """Category choices, the model's own one first and marked "(model)"; the selection is kept."""
        ordered = sorted(self.categories, key=lambda c: c != model_category)
        labels = [(f"{c} (model)" if c == model_category else c, c) for c in ordered]
        current, silent = self.category_dd.value, self._silent
        self._silent = True
        try:
            self.category_dd.options = labels
            self.category_dd.value = current if current in self.categories else None
        finally:
            self._silent = silent

    def _ckpt_label(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path(self.settings.runs).resolve()))
        except ValueError:
            return str(path)

    def _set_silently(self, widget: Any, value: Any) -> None:
        self._silent = True
        try:
            widget.value = value
        finally:
            self._silent = False

    # ------------------------------------------------------------------ callbacks (plain methods)
    @property
    def simulating(self) -> bool:
        """True while the "Simulate a defect" tab is open: the model sees the simulated image."""
        return self.tabs.selected_index == 1

    def show_error(self, message: str) -> None:
        """Show `message` in the page's error box (class `memseg-error`); empty clears it."""
        self.error_text = message
        self.error_html.value = (f"<div class='memseg-error-box'>&#9888; {html.escape(message)}</div>" if message else "")

    def select_checkpoint(self, path: str | Path, refresh: bool = True) -> None:
        """Load the model from `path`; on failure the error is shown and the previous model stays."""
        from memseg.engine.inference import Predictor

        path = Path(path)
        try:
            predictor = Predictor.from_checkpoint(path, device=self.settings.device)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            self.show_error(f"cannot load checkpoint {path}: {err}")
            return
        self.warmup_ms = self._warm_up(predictor)
        self.predictor, self.checkpoint = predictor, path
        self.checkpoint_info = dict(predictor.info or {})
        self.input_size = tuple(predictor.input_size)
        self._simulators.clear()
        self._set_scale(self._model_scale(predictor), float(predictor.threshold))
        self.show_error("")
        cat = predictor.category
        self._label_categories(cat)
        if cat and cat in self.categories and cat != self.category_dd.value:
            self.category_dd.value = cat  # triggers select_category -> select_image -> update
        else:
            self._show_category_warning()
            if refresh and self.source is not None:
                self.request_update()

    @staticmethod
    def _warm_up(predictor: Any) -> float:
        """One dummy forward at the model's input size; returns its time in ms.

        The first forward of a fresh process pays one-off costs (thread pools, kernel selection,
        allocator growth; on a 2-core CPU at 128x128 about 0.3-1 s against 40-90 ms later); paying
        them here, while the model loads, keeps the presenter's first view and click as fast as the rest.
        """
        h, w = predictor.input_size
        t0 = time.perf_counter()
        predictor.predict_batch(torch.zeros(1, 3, h, w))
        return 1000.0 * (time.perf_counter() - t0)

    def _model_scale(self, predictor: Any) -> ScoreScale:
        """The model's score range: its stored validation scores, else scores of its category's test images."""
        validation = ((predictor.info or {}).get("extra") or {}).get("validation") or {}
        scores = validation.get("scores")
        threshold = float(predictor.threshold) if predictor.threshold_source == "validation split" else None
        if scores:
            return score_scale(scores, f"lowest to {SCALE_TOP_PERCENTILE}th percentile of the checkpoint's "
                               f"{len(scores)} validation scores", threshold)
        category = predictor.category if predictor.category in self.categories else self.category_dd.value
        scores = self._score_test_images(predictor, category) if category else []
        if not scores:
            return FULL_SCALE
        return score_scale(scores, f"lowest to {SCALE_TOP_PERCENTILE}th percentile of the scores of {len(scores)} "
                           f"{category} test images", threshold)

    def _score_test_images(self, predictor: Any, category: str) -> list[float]:
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

    def _set_scale(self, scale: ScoreScale, threshold: float) -> None:
        """Make `scale` the colour scale: the decision slider spans it, the legend names it."""
        self.colour_scale = scale
        value = min(max(threshold, scale.lo), scale.hi)  # the stored threshold as is: verdicts match `memseg predict`
        self._silent = True
        try:
            with self.decision.hold_trait_notifications():  # min/max/value change together, validated once
                self.decision.min, self.decision.max = scale.lo, scale.hi
                self.decision.step = scale.step
                self.decision.readout_format = f".{scale.decimals}f"
                self.decision.value = value
        finally:
            self._silent = False
        self.legend_range_html.value = (
            "<div class='memseg-note' style='display:flex;justify-content:space-between'>"
            f"<span>&le; {scale.fmt(scale.lo)} normal</span><span>&ge; {scale.fmt(scale.hi)} anomalous</span></div>"
            f"<div class='memseg-note' style='line-height:1.4'>Pixel anomaly score, coloured over "
            f"{scale.fmt(scale.lo)}&ndash;{scale.fmt(scale.hi)}: the model's score range, {html.escape(scale.source)}.</div>")

    def _show_category_warning(self) -> None:
        """A banner when the picked category is not the one the model was trained on (empty otherwise)."""
        trained_on = getattr(self.predictor, "category", None)
        picked = self.category_dd.value
        if not trained_on or not picked or trained_on == picked:
            self.warning_html.value = ""
            return
        self.warning_html.value = (
            f"<div class='memseg-warning-box'>&#9888; This model was trained on <b>{html.escape(trained_on)}</b>, "
            f"not <b>{html.escape(picked)}</b>: it has never seen a normal {html.escape(picked)} image, so it calls "
            f"most of them ANOMALOUS. Pick <b>{html.escape(trained_on)}</b> (marked &ldquo;model&rdquo;) or a model "
            f"trained on {html.escape(picked)}.</div>")

    def select_category(self, name: str) -> None:
        """List the test images of category `name` and show the first."""
        from memseg.data import find_records

        self.records = find_records(self.settings.data, name, "test", layout=self.settings.layout)
        self._show_category_warning()
        if not self.records:
            self.show_error(f"{self.settings.data}/{name}: the test split is empty")
            return
        options = [(f"{r.defect} / {Path(r.image_path).name}", i) for i, r in enumerate(self.records)]
        self._silent = True
        try:
            self.image_dd.options = options
            self.image_dd.value = 0
        finally:
            self._silent = False
        self.select_image(0)

    def select_image(self, index: int) -> None:
        """Make test record `index` the current image (with its ground truth) and run the model."""
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
        if self.image_dd.value != index:
            self._set_silently(self.image_dd, index)
        self.show_error("")
        self.request_update()

    def step_image(self, step: int) -> None:
        """Previous (-1) / next (+1) test image, wrapping around."""
        if not self.records:
            return
        current = self.image_dd.value if isinstance(self.image_dd.value, int) else -1
        self.select_image((current + step) % len(self.records))

    def upload(self, name: str, content: bytes | memoryview) -> bool:
        """Use an uploaded file as the current image. A bad file shows an error and changes nothing else.

        Returns True when the image was accepted.
        """
        try:
            image = decode_upload(name, content, self.max_upload_bytes, self.max_upload_pixels)
        except UploadError as err:
            self.show_error(f"upload rejected: {err}")
            return False
        self.source = ImageSource("upload", name, image, None, None, "unknown")
        self._set_silently(self.image_dd, None)
        self.show_error("")
        self.request_update()
        return True

    def set_threshold(self, value: float) -> None:
        """Decision threshold for the binary mask and the verdict (no model run needed)."""
        if abs(self.decision.value - value) > 1e-9:
            self._set_silently(self.decision, value)
        self.render()

    def set_simulation(self, enabled: bool | None = None, **params: Any) -> None:
        """Set simulation controls (threshold, delta, scale_exp, source, seed) and optionally open/close the tab."""
        widgets = {"threshold": self.sim_threshold, "delta": self.delta, "scale_exp": self.scale,
                   "source": self.source_tb, "seed": self.seed}
        unknown = set(params) - set(widgets)
        if unknown:
            raise TypeError(f"set_simulation: unknown parameters {sorted(unknown)}; expected {sorted(widgets)}")
        for k, v in params.items():
            self._set_silently(widgets[k], v)
        if enabled is not None:
            self._silent = True
            try:
                self.tabs.selected_index = 1 if enabled else 0
            finally:
                self._silent = False
        self.request_update()

    # ------------------------------------------------------------------ update scheduling
    def request_update(self) -> None:
        """Ask for a model run; bursts within `debounce_s` coalesce into one (latest request wins)."""
        self._generation += 1
        generation = self._generation
        if self.debounce_s <= 0:
            self._run(generation)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run(generation)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.debounce_s, self._run, generation)

    def _run(self, generation: int) -> None:
        if generation != self._generation:
            return  # a newer request superseded this one
        self._timer = None
        self._guard(self.update)

    def _simulator(self) -> Any:
        from memseg.simulation.simulator import AnomalySimulator

        key = (self.input_size, self.category_dd.value, str(self.settings.dtd))
        if key not in self._simulators:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # missing DTD is said in the page (structure only)
                self._simulators[key] = AnomalySimulator(
                    dtd_root=self.settings.dtd, size=self.input_size, device="cpu",
                    category=self.category_dd.value, max_textures=64, progress=False)
        return self._simulators[key]

    def simulate(self) -> tuple[torch.Tensor, np.ndarray]:
        """The current image with a simulated defect at the model's input size: (float (3, H, W) in [0, 1], bool mask (H, W))."""
        from memseg.data.io import to_tensor

        assert self.source is not None
        x = to_tensor(self.source.image, self.input_size)[None].contiguous()  # (1, 3, H, W) in [0, 1]
        g = torch.Generator().manual_seed(int(self.seed.value))
        res = self._simulator().simulate(
            x, generator=g, threshold=float(self.sim_threshold.value), delta=float(self.delta.value),
            source=self.source_tb.value, scale_exp=int(self.scale.value),
        )
        return res.images[0].clamp(0, 1).cpu(), res.masks[0, 0].cpu().numpy() > 0.5

    def update(self) -> None:
        """Run the model on the current (real or simulated) image and redraw every panel."""
        if self.predictor is None or self.source is None:
            self.render()
            return
        src = self.source
        hw = _display_hw(src.image.shape[:2], self.display_side)  # the source's aspect, also for simulations
        real = None if src.mask is None else _resize_mask(src.mask, hw)
        if self.simulating:
            x, sim_mask = self.simulate()
            image = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # for display
            caption = (f"simulated defect on {src.name}: T={self.sim_threshold.value:.2f}, δ={self.delta.value:.2f}, "
                       f"scale 2^{self.scale.value}, {self.source_tb.value}, seed {self.seed.value}")
            # The image's own defect is still there: the ground truth is M plus it (else a hit on it looks false).
            truth = _resize_mask(sim_mask, hw)
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
        self.result = Result(
            image=_resize_rgb(image, hw),
            truth=truth,
            anomaly_map=_resize_map(np.asarray(pred.anomaly_map, dtype=np.float32), hw),
            score=float(pred.score),
            time_ms=float(pred.time_ms),
            simulated=self.simulating,
            caption=caption,
            real_truth=real if self.simulating else None,
        )
        self.render()

    # ------------------------------------------------------------------ drawing
    def render(self) -> None:
        """Draw the panels, score, verdict and timing from :attr:`result` at the current threshold."""
        from memseg.viz import heatmap, overlay

        r = self.result
        if r is None:
            return
        thr = float(self.decision.value)
        hw = r.image.shape[:2]
        self.binary_mask = r.anomaly_map >= thr
        self.verdict = "anomalous" if r.score >= thr else "normal"
        self.panels["input"].value = _png(r.image)
        if r.truth is None:
            self.panels["truth"].value = _png(_placeholder(hw))
            self.panel_titles["truth"].value = "<div class='memseg-panel-title'>Ground truth (unknown)</div>"
        else:
            self.panels["truth"].value = _png(_truth_rgb(r.truth, r.real_truth))
            title = "Ground truth"
            if r.simulated:
                own = r.real_truth is not None and r.real_truth.any()
                title = "Simulated mask M + the image's own defect (orange)" if own else "Simulated mask M"
            self.panel_titles["truth"].value = f"<div class='memseg-panel-title'>{title}</div>"
        sc = self.colour_scale
        self.panels["heatmap"].value = _png(heatmap(r.anomaly_map, vmin=sc.lo, vmax=sc.hi))
        self.panels["overlay"].value = _png(overlay(r.image, r.anomaly_map, alpha=0.6, vmin=sc.lo, vmax=sc.hi, weighted=True))
        self.panels["mask"].value = _png(_mask_rgb(self.binary_mask))
        self.panel_titles["mask"].value = f"<div class='memseg-panel-title'>Binary mask (map &ge; {sc.fmt(thr)})</div>"
        self.score_html.value = (f"image score <b class='memseg-score-value' data-score='{r.score!r}'>{r.score:.3f}</b> "
                                 f"(threshold {sc.fmt(thr)})")
        self.verdict_html.value = f"<span class='memseg-badge {self.verdict}'>{self.verdict.upper()}</span>"
        weights = getattr(self.predictor, "weights_source", None) or "unknown"
        self.time_html.value = (f"inference <b class='memseg-time-value'>{r.time_ms:.0f}</b> ms &middot; encoder weights "
                                f"<span class='memseg-weights'>{html.escape(str(weights))}</span>")
        self.caption_html.value = f"<div class='memseg-note'>{html.escape(r.caption)}</div>"


def build_app(settings: DemoSettings | None = None, **kwargs: Any) -> DashboardApp:
    """Build the dashboard from the demo settings (env/config, see :func:`memseg.apps.demo.load_settings`)."""
    return DashboardApp(settings or load_settings(), **kwargs)
