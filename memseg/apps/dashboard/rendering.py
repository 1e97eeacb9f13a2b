"""What the page shows, as PNG bytes and HTML strings: a :class:`Result` becomes the five panels and the result bar.

No widgets here (:mod:`memseg.apps.dashboard.widgets` puts these values into them): the heat map and the
overlay come from :mod:`memseg.viz`, coloured over the model's :class:`ScoreScale`; the masks are white
on black, with the image's own defect in orange under a simulation.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from memseg.apps.dashboard.state import Result, ScoreScale
from memseg.viz import heatmap, overlay

__all__ = [
    "PANELS",
    "REAL_DEFECT_RGB",
    "ResultView",
    "category_warning_html",
    "error_html",
    "legend_ramp_png",
    "legend_range_html",
    "panel_title_html",
    "render_result",
]

PANELS = {  # key -> title
    "input": "Input",
    "truth": "Ground truth",
    "heatmap": "Anomaly heat map",
    "overlay": "Overlay",
    "mask": "Binary mask",
}
REAL_DEFECT_RGB = (255, 140, 0)  # the source's own defect in the "Simulated mask M" panel (M itself is white)
OVERLAY_ALPHA = 0.6  # the overlay's tint at the scale's red end


@dataclass
class ResultView:
    """One :class:`Result` as the page shows it: a PNG per panel key (see :data:`PANELS`), titles and texts in HTML."""

    panels: dict[str, bytes]
    truth_title: str
    mask_title: str
    score_html: str
    verdict_html: str
    time_html: str
    caption_html: str


def _png(arr: np.ndarray) -> bytes:
    """uint8 (H, W[, 3]) -> PNG bytes (fast compression: the page redraws on every slider move)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


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


def panel_title_html(title: str) -> str:
    return f"<div class='memseg-panel-title'>{title}</div>"


def _truth_panel(r: Result) -> tuple[bytes, str]:
    """The ground-truth panel and its title: the dataset's mask, the simulated mask M (+ the own defect), or unknown."""
    if r.truth is None:
        return _png(_placeholder(r.image.shape[:2])), panel_title_html("Ground truth (unknown)")
    title = "Ground truth"
    if r.simulated:
        own = r.real_truth is not None and r.real_truth.any()
        title = "Simulated mask M + the image's own defect (orange)" if own else "Simulated mask M"
    return _png(_truth_rgb(r.truth, r.real_truth)), panel_title_html(title)


def render_result(
    r: Result, binary_mask: np.ndarray, verdict: str, threshold: float, scale: ScoreScale, weights: str,
) -> ResultView:
    """The panels and texts for `r` decided at `threshold` (`binary_mask`, `verdict`), coloured over `scale`.

    `weights`: where the encoder's weights came from (said beside the inference time).
    """
    truth_png, truth_title = _truth_panel(r)
    panels = {
        "input": _png(r.image),
        "truth": truth_png,
        "heatmap": _png(heatmap(r.anomaly_map, vmin=scale.lo, vmax=scale.hi)),
        "overlay": _png(overlay(r.image, r.anomaly_map, alpha=OVERLAY_ALPHA, vmin=scale.lo, vmax=scale.hi,
                                weighted=True)),
        "mask": _png(_mask_rgb(binary_mask)),
    }
    return ResultView(
        panels=panels,
        truth_title=truth_title,
        mask_title=panel_title_html(f"Binary mask (map &ge; {scale.fmt(threshold)})"),
        score_html=(f"image score <b class='memseg-score-value' data-score='{r.score!r}'>{r.score:.3f}</b> "
                    f"(threshold {scale.fmt(threshold)})"),
        verdict_html=f"<span class='memseg-badge {verdict}'>{verdict.upper()}</span>",
        time_html=(f"inference <b class='memseg-time-value'>{r.time_ms:.0f}</b> ms &middot; encoder weights "
                   f"<span class='memseg-weights'>{html.escape(weights)}</span>"),
        caption_html=f"<div class='memseg-note'>{html.escape(r.caption)}</div>",
    )


def legend_ramp_png() -> bytes:
    """The legend's colour bar: the heat map's colours from the scale's low end (left) to its high end."""
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :], (18, 1))  # (18, 256)
    return _png(heatmap(ramp))


def legend_range_html(scale: ScoreScale) -> str:
    """Under the colour bar: the scale's ends and where the range comes from."""
    lo, hi = scale.fmt(scale.lo), scale.fmt(scale.hi)
    return (
        "<div class='memseg-note' style='display:flex;justify-content:space-between'>"
        f"<span>&le; {lo} normal</span><span>&ge; {hi} anomalous</span></div>"
        f"<div class='memseg-note' style='line-height:1.4'>Pixel anomaly score, coloured over "
        f"{lo}&ndash;{hi}: the model's score range, {html.escape(scale.source)}.</div>")


def category_warning_html(trained_on: str | None, picked: str | None) -> str:
    """A banner when the picked category is not the one the model was trained on ("" otherwise)."""
    if not trained_on or not picked or trained_on == picked:
        return ""
    model, other = html.escape(trained_on), html.escape(picked)
    return (
        f"<div class='memseg-warning-box'>&#9888; This model was trained on <b>{model}</b>, "
        f"not <b>{other}</b>: it has never seen a normal {other} image, so it calls "
        f"most of them ANOMALOUS. Pick <b>{model}</b> (marked &ldquo;model&rdquo;) or a model "
        f"trained on {other}.</div>")


def error_html(message: str) -> str:
    """The error box ("" clears it)."""
    return f"<div class='memseg-error-box'>&#9888; {html.escape(message)}</div>" if message else ""
