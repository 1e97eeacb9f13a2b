"""The page's ipywidgets: the layout, the values the app puts into them, and their wiring to the app's methods.

Layout: a title; a sidebar (model and category pickers, test image picker with previous/next, the
"Inspect" / "Simulate a defect" tabs, the decision slider, the error box); beside it the category
warning, the result bar (verdict, score, time), a caption and a 3x2 grid of the five panels plus the legend.

Stable CSS classes for the browser test: ``memseg-app``, ``memseg-checkpoint``, ``memseg-category``,
``memseg-image``, ``memseg-prev``, ``memseg-next``, ``memseg-upload``, ``memseg-tabs``,
``memseg-sim-threshold``, ``memseg-delta``, ``memseg-scale``, ``memseg-source``, ``memseg-seed``,
``memseg-decision``, ``memseg-score``, ``memseg-verdict``, ``memseg-time``, ``memseg-caption``,
``memseg-error``, ``memseg-warning`` (the banner shown when the picked category is not the model's),
``memseg-legend-range`` (the colour scale's range in the legend),
``memseg-panel-<input|truth|heatmap|overlay|mask>`` (and ``memseg-image-<...>`` on the image inside
each panel).

Sliders use ``continuous_update=False``; while the app sets widget values itself (:meth:`DashboardWidgets.quietly`)
the observers stay silent, so only the user's changes call the app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as W

from memseg.apps.dashboard.rendering import (
    PANELS,
    ResultView,
    category_warning_html,
    error_html,
    legend_ramp_png,
    legend_range_html,
    panel_title_html,
)
from memseg.apps.dashboard.state import ScoreScale, SimulationParams
from memseg.apps.dashboard.upload import UPLOAD_SUFFIXES

__all__ = ["DashboardWidgets"]

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
_TITLE = (
    "<div class='memseg-title'><h1>MemSeg &mdash; anomaly segmentation</h1>"
    "<p>Memory-based segmentation network (Yang et al., arXiv 2205.00908): pick a model and an image, "
    "upload your own, or simulate a defect and watch the network find it.</p></div>"
)
_LEGEND_TEXT = (
    "<div class='memseg-note' style='margin-top:8px;line-height:1.4'>"
    "<b>Image score</b>: mean of the 100 highest pixel scores (paper §4.1); the image is called "
    "<b>anomalous</b> when it reaches the decision threshold, which also cuts the heat map into the "
    "binary mask. The overlay tints only where the score rises above the scale's low end.<br>"
    "<b>Ground truth</b>: the dataset's defect mask, or the simulated mask M "
    "(eq. 1&ndash;2, white) in the simulation tab, with the image's own defect in orange.</div>"
)
_STYLE = {"description_width": "95px"}


def _wide() -> W.Layout:
    return W.Layout(width="100%")


def _slider() -> dict[str, Any]:
    return {"continuous_update": False, "layout": _wide(), "style": _STYLE, "readout_format": ".2f"}


def _html(text: str, css_class: str | None = None) -> W.HTML:
    widget = W.HTML(text)
    if css_class:
        widget.add_class(css_class)
    return widget


def _styled(widget: W.Widget, *css_classes: str) -> W.Widget:
    for css_class in css_classes:
        widget.add_class(css_class)
    return widget


class DashboardWidgets:
    """Every widget of the page (attributes named as in the module docstring) and the page itself, :attr:`widget`.

    Args:
        have_dtd: DTD textures were found, so the simulation offers the "texture" source.
        max_upload_bytes, max_upload_pixels: the upload limits, said under the upload button.
    """

    def __init__(self, have_dtd: bool, max_upload_bytes: int, max_upload_pixels: int) -> None:
        self.silent = False  # True while the app sets widget values itself
        sidebar = self._sidebar(have_dtd, max_upload_bytes, max_upload_pixels)
        main = self._main()
        self.title = W.HTML(_CSS + _TITLE)
        self.widget = _styled(W.VBox([self.title, W.HBox([sidebar, main], layout=W.Layout(width="100%"))],
                                     layout=W.Layout(width="100%", padding="8px")), "memseg-app")

    # ------------------------------------------------------------------ layout
    def _sidebar(self, have_dtd: bool, max_upload_bytes: int, max_upload_pixels: int) -> W.VBox:
        """Model, image, the Inspect / Simulate tabs, the decision slider and the error box."""
        self.checkpoint_dd = _styled(W.Dropdown(description="Model", layout=_wide(), style=_STYLE), "memseg-checkpoint")
        self.category_dd = _styled(W.Dropdown(description="Category", layout=_wide(), style=_STYLE), "memseg-category")
        self.image_dd = _styled(W.Dropdown(description="Test image", layout=_wide(), style=_STYLE), "memseg-image")
        self.prev_btn = _styled(W.Button(description="◀ previous", layout=W.Layout(width="49%")), "memseg-prev")
        self.next_btn = _styled(W.Button(description="next ▶", layout=W.Layout(width="49%")), "memseg-next")
        self.tabs = _styled(W.Tab(children=[self._inspect_tab(max_upload_bytes, max_upload_pixels),
                                            self._simulate_tab(have_dtd)]), "memseg-tabs")
        self.tabs.titles = ("Inspect", "Simulate a defect")
        self.decision = _styled(W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="Decision",
                                              **_slider()),
                                "memseg-decision")
        self.error_html = _html("", "memseg-error")
        sidebar = W.VBox(
            [
                _html("<div class='memseg-section'>Model</div>"), self.checkpoint_dd, self.category_dd,
                _html("<div class='memseg-section'>Image</div>"), self.image_dd, W.HBox([self.prev_btn, self.next_btn]),
                self.tabs,
                _html("<div class='memseg-section'>Decision threshold (pixels and image score)</div>"), self.decision,
                self.error_html,
            ],
            layout=W.Layout(width="400px", min_width="360px", overflow="hidden"),
        )
        return _styled(sidebar, "memseg-sidebar")

    def _inspect_tab(self, max_upload_bytes: int, max_upload_pixels: int) -> W.VBox:
        self.upload_w = _styled(W.FileUpload(accept=",".join(UPLOAD_SUFFIXES), multiple=False,
                                             description="Upload an image", layout=W.Layout(width="auto")),
                                "memseg-upload")
        limits = f"PNG or JPEG, at most {max_upload_bytes / 2**20:.0f} MB and {max_upload_pixels / 1e6:.0f} Mpx."
        return W.VBox([_html("<div class='memseg-note'>Inspect the selected test image, or upload one:</div>"),
                       self.upload_w, _html(f"<div class='memseg-note'>{limits}</div>")],
                      layout=W.Layout(overflow="hidden"))

    def _simulate_tab(self, have_dtd: bool) -> W.VBox:
        """The anomaly simulation's controls (paper §3.1): Perlin threshold T, opacity δ (eq. 2), scale, source,
        seed."""
        self.sim_threshold = _styled(W.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="Perlin T",
                                                   **_slider()), "memseg-sim-threshold")
        self.delta = _styled(W.FloatSlider(value=0.6, min=0.15, max=1.0, step=0.05, description="δ (opacity)",
                                           **_slider()),
                             "memseg-delta")
        self.scale = _styled(W.IntSlider(value=2, min=0, max=5, step=1, description="Perlin scale",
                                         continuous_update=False, layout=_wide(), style=_STYLE), "memseg-scale")
        self.source_tb = _styled(W.ToggleButtons(
            options=[("texture (DTD)", "texture"), ("structure", "structure")] if have_dtd
            else [("structure", "structure")],
            value="texture" if have_dtd else "structure", description="Source", style=_STYLE,
        ), "memseg-source")
        self.seed = _styled(W.BoundedIntText(value=0, min=0, max=2**31 - 1, description="Seed",
                                             layout=W.Layout(width="64%"), style=_STYLE), "memseg-seed")
        self.reseed_btn = _styled(W.Button(description="new seed", layout=W.Layout(width="30%")), "memseg-reseed")
        self._simulation_controls = {"threshold": self.sim_threshold, "delta": self.delta, "scale_exp": self.scale,
                                     "source": self.source_tb, "seed": self.seed}  # SimulationParams' fields
        dtd_note = "" if have_dtd else "<div class='memseg-note'>No DTD textures found: structure source only.</div>"
        return W.VBox([
            _html("<div class='memseg-note'>Anomaly simulation (paper §3.1, eq. 1&ndash;2) on the current "
                  "image:</div>"),
            self.sim_threshold, self.delta, self.scale, self.source_tb, W.HBox([self.seed, self.reseed_btn]),
            _html(dtd_note),
        ], layout=W.Layout(overflow="hidden"))

    def _main(self) -> W.VBox:
        """The category warning, the result bar (verdict, score, time), the caption and the panel grid."""
        self.warning_html = _html("", "memseg-warning")
        self.verdict_html = _html("", "memseg-verdict")
        self.score_html = _html("", "memseg-score")
        self.time_html = _html("", "memseg-time")
        result_bar = _styled(W.HBox([self.verdict_html, self.score_html, self.time_html],
                                    layout=W.Layout(justify_content="space-between", align_items="center",
                                                    width="100%")),
                             "memseg-result")
        self.caption_html = _html("", "memseg-caption")
        return W.VBox([self.warning_html, result_bar, self.caption_html, self._grid()],
                      layout=W.Layout(flex="1 1 auto", padding="0 0 0 16px", max_width="1040px"))

    def _grid(self) -> W.GridBox:
        """The five panels (:data:`PANELS`, a title and an image each) and the legend, three per row."""
        self.panel_titles: dict[str, W.HTML] = {}
        self.panels: dict[str, W.Image] = {}
        boxes = []
        for key, title in PANELS.items():
            self.panel_titles[key] = W.HTML(panel_title_html(title))
            self.panels[key] = _styled(W.Image(format="png", layout=W.Layout(width="100%", height="auto", margin="0",
                                                                             object_fit="contain")),
                                       f"memseg-image-{key}")
            box = W.VBox([self.panel_titles[key], self.panels[key]],
                         layout=W.Layout(align_items="stretch", overflow="hidden"))
            boxes.append(_styled(box, "memseg-panel", f"memseg-panel-{key}"))
        boxes.append(self._legend())
        return W.GridBox(boxes, layout=W.Layout(grid_template_columns="repeat(3, minmax(200px, 330px))",
                                                grid_gap="12px", width="100%"))

    def _legend(self) -> W.VBox:
        """The sixth grid cell: how to read the panels, with the heat map's colour scale."""
        bar = W.Image(value=legend_ramp_png(), format="png", layout=W.Layout(width="100%", height="18px", margin="0"))
        self.legend_range_html = _html("", "memseg-legend-range")
        box = W.VBox([W.HTML(panel_title_html("How to read")), bar, self.legend_range_html, W.HTML(_LEGEND_TEXT)],
                     layout=W.Layout(overflow="hidden"))
        return _styled(box, "memseg-panel", "memseg-legend")

    # ------------------------------------------------------------------ values the app sets
    @contextmanager
    def quietly(self) -> Iterator[None]:
        """Within this block the app's own widget changes do not call the app back."""
        silent, self.silent = self.silent, True
        try:
            yield
        finally:
            self.silent = silent

    def set_quietly(self, widget: W.Widget, value: Any) -> None:
        with self.quietly():
            widget.value = value

    @property
    def simulating(self) -> bool:
        """True while the "Simulate a defect" tab is open: the model sees the simulated image."""
        return self.tabs.selected_index == 1

    def simulation_params(self) -> SimulationParams:
        return SimulationParams(**{name: w.value for name, w in self._simulation_controls.items()})

    def set_simulation_controls(self, enabled: bool | None = None, **params: Any) -> None:
        """Set simulation controls (threshold, delta, scale_exp, source, seed) and optionally open/close the tab."""
        unknown = set(params) - set(self._simulation_controls)
        if unknown:
            raise TypeError(f"set_simulation: unknown parameters {sorted(unknown)}; expected "
                            f"{sorted(self._simulation_controls)}")
        for name, value in params.items():
            self.set_quietly(self._simulation_controls[name], value)
        if enabled is not None:
            with self.quietly():
                self.tabs.selected_index = 1 if enabled else 0

    def show_checkpoints(self, paths: list[Path], runs: Path) -> None:
        """The model choices: each checkpoint path, relative to the runs folder where it lies inside it."""
        runs = Path(runs).resolve()
        with self.quietly():
            self.checkpoint_dd.options = [(str(p.relative_to(runs)) if p.is_relative_to(runs) else str(p), str(p))
                                          for p in paths]

    def show_categories(self, categories: list[str], model_category: str | None) -> None:
        """Category choices, the model's own one first and marked "(model)"; the selection is kept."""
        ordered = sorted(categories, key=lambda c: c != model_category)
        current = self.category_dd.value
        with self.quietly():
            self.category_dd.options = [(f"{c} (model)" if c == model_category else c, c) for c in ordered]
            self.category_dd.value = current if current in categories else None

    def show_images(self, records: list) -> None:
        """The test image choices ("<defect> / <file name>"), the first one selected."""
        with self.quietly():
            self.image_dd.options = [(f"{r.defect} / {Path(r.image_path).name}", i) for i, r in enumerate(records)]
            self.image_dd.value = 0

    def show_scale(self, scale: ScoreScale, threshold: float) -> None:
        """Make `scale` the colour scale: the decision slider spans it (at `threshold`), the legend names it."""
        value = min(max(threshold, scale.lo), scale.hi)  # the stored threshold as is: verdicts match `memseg predict`
        with self.quietly(), self.decision.hold_trait_notifications():  # min/max/value change together, validated once
            self.decision.min, self.decision.max = scale.lo, scale.hi
            self.decision.step = scale.step
            self.decision.readout_format = f".{scale.decimals}f"
            self.decision.value = value
        self.legend_range_html.value = legend_range_html(scale)

    def show_result(self, view: ResultView) -> None:
        for key, png in view.panels.items():
            self.panels[key].value = png
        self.panel_titles["truth"].value = view.truth_title
        self.panel_titles["mask"].value = view.mask_title
        self.score_html.value = view.score_html
        self.verdict_html.value = view.verdict_html
        self.time_html.value = view.time_html
        self.caption_html.value = view.caption_html

    def show_error(self, message: str) -> None:
        self.error_html.value = error_html(message)

    def show_category_warning(self, trained_on: str | None) -> None:
        self.warning_html.value = category_warning_html(trained_on, self.category_dd.value)

    # ------------------------------------------------------------------ wiring
    def connect(self, app: Any) -> None:
        """Make the user's changes call `app`'s methods (a :class:`DashboardApp`), each through ``app.guard``."""

        def on_change(widget: W.Widget, action: Callable[[Any], Any], accept: Callable[[Any], bool] = lambda _v: True,
                      names: str = "value") -> None:
            def observer(change: dict) -> None:
                if not self.silent and accept(change["new"]):
                    app.guard(action, change["new"])
            widget.observe(observer, names=names)

        on_change(self.checkpoint_dd, app.select_checkpoint, accept=bool)
        on_change(self.category_dd, app.select_category, accept=bool)
        on_change(self.image_dd, app.select_image, accept=lambda i: i is not None and i >= 0)
        on_change(self.upload_w, lambda files: app.upload(*self._take_upload(files)), accept=bool)
        for control in self._simulation_controls.values():
            on_change(control, lambda _v: app.request_update(), accept=lambda _v: self.simulating)
        on_change(self.tabs, lambda _v: app.request_update(), names="selected_index")
        on_change(self.decision, app.set_threshold)
        self.prev_btn.on_click(lambda _b: app.guard(app.step_image, -1))
        self.next_btn.on_click(lambda _b: app.guard(app.step_image, +1))
        self.reseed_btn.on_click(lambda _b: app.guard(app.set_simulation, seed=(self.seed.value * 7919 + 1) % 100_000))

    def _take_upload(self, files: tuple) -> tuple[str, Any]:
        """The first uploaded file's (name, content); the widget is emptied (frees the bytes; the same file can come
        again)."""
        item = files[0]  # ipywidgets 8: tuple of dicts {name, type, size, content (memoryview), last_modified}
        self.set_quietly(self.upload_w, ())
        return item.get("name", "upload"), item["content"]
