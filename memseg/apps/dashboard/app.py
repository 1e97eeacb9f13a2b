"""The Voila inference dashboard: pick a model and an image (or upload one, or simulate a defect), see the maps.

:class:`DashboardApp` only orchestrates: :class:`~memseg.apps.dashboard.state.DashboardState` holds the model,
the image and the result, :mod:`~memseg.apps.dashboard.rendering` turns a result into PNGs and HTML, and
:class:`~memseg.apps.dashboard.widgets.DashboardWidgets` shows them and calls the app's methods back. Every
action is a plain method, so the page is tested without a browser (`tests/test_dashboard.py`). The notebook
`notebooks/[demo] model inference.ipynb` builds the app from :func:`memseg.apps.demo.load_settings`.

Responsiveness: every change goes through :meth:`DashboardApp.request_update`, which restarts a short
timer on the kernel's event loop; only the latest request runs (each carries a generation number; a
stale one is dropped), so a burst of slider events gives one redraw, not a queue of stale ones. Without
a running event loop (tests) the update runs at once.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memseg.apps.dashboard.rendering import render_result
from memseg.apps.dashboard.state import CheckpointError, DashboardState
from memseg.apps.dashboard.upload import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    UploadError,
    decode_upload,
)
from memseg.apps.demo import (
    DemoSettings,
    find_checkpoints,
    load_settings,
    resolve_checkpoint,
)

__all__ = ["DashboardApp", "build_app"]


class DashboardApp:
    """The dashboard: :attr:`state` (model, image, result), :attr:`ui` (the widgets) and the actions between them.

    Args:
        settings: demo settings (default :func:`memseg.apps.demo.load_settings`).
        debounce_s: coalescing delay for updates when an event loop is running (0: update at once).
        max_upload_bytes, max_upload_pixels: upload limits.
        display_side: longest side of the panels in pixels.

    Actions (each is what a widget calls): :meth:`select_checkpoint`, :meth:`select_category`,
    :meth:`select_image`, :meth:`step_image`, :meth:`upload`, :meth:`set_threshold`, :meth:`set_simulation`,
    :meth:`request_update`, :meth:`update`, :meth:`render`. The page itself is :attr:`widget`.
    """

    def __init__(
        self,
        settings: DemoSettings | None = None,
        debounce_s: float = 0.15,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_upload_pixels: int = MAX_UPLOAD_PIXELS,
        display_side: int = 300,
    ) -> None:
        from memseg.apps.dashboard.widgets import (
            DashboardWidgets,  # ipywidgets: the notebooks extra
        )

        self.settings = settings or load_settings()
        self.debounce_s = float(debounce_s)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_pixels = int(max_upload_pixels)
        self.state = DashboardState(self.settings, display_side)
        have_dtd = bool(self.settings.dtd and Path(self.settings.dtd).is_dir())
        self.ui = DashboardWidgets(have_dtd, self.max_upload_bytes, self.max_upload_pixels)
        self.widget = self.ui.widget
        self._generation = 0
        self._run_failed = False  # the error box holds a failed model run's message
        self._timer: asyncio.TimerHandle | None = None
        self.ui.connect(self)
        self._populate()

    def _ipython_display_(self) -> None:  # pragma: no cover - display hook for notebooks
        from IPython.display import display

        display(self.widget)

    def _populate(self) -> None:
        """The first view: the checkpoints and categories to pick from, the configured model and category."""
        s = self.settings
        configured = resolve_checkpoint(s)
        ckpts = find_checkpoints(s.runs, [configured])
        self.ui.show_checkpoints(ckpts, s.runs)
        error = self.state.find_categories()
        if error:
            self.show_error(error)
        self.ui.show_categories(self.state.categories, None)
        self.ui.set_quietly(self.ui.category_dd, s.category if s.category in self.state.categories else None)
        if not ckpts:
            self.show_error(f"no checkpoint found: {configured} does not exist and {s.runs} holds no *.pt; "
                            "run `python -m memseg.apps.demo prepare` first")
        else:
            target = str(configured.resolve()) if configured.is_file() else str(ckpts[0])
            self.ui.set_quietly(self.ui.checkpoint_dd, target)
            self.guard(self.select_checkpoint, target, refresh=False)
        if not self.state.records and s.category in self.state.categories:  # the checkpoint did not pick one
            self.ui.set_quietly(self.ui.category_dd, s.category)
            self.guard(self.select_category, s.category)

    # ------------------------------------------------------------------ actions
    def guard(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a callback; any unexpected exception becomes the error text instead of killing the page."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the page must stay usable
            self.show_error(f"{type(err).__name__}: {err}")
            traceback.print_exc()
            return None

    def show_error(self, message: str) -> None:
        """Show `message` in the page's error box (class `memseg-error`); empty clears it."""
        self.state.error_text = message
        self.ui.show_error(message)

    def select_checkpoint(self, path: str | Path, refresh: bool = True) -> None:
        """Load the model from `path`; on failure the error is shown and the previous model stays."""
        try:
            self.state.load_checkpoint(Path(path), self.ui.category_dd.value)
        except CheckpointError as err:
            self.show_error(str(err))
            return
        predictor = self.state.predictor
        self.ui.show_scale(self.state.colour_scale, float(predictor.threshold))
        self.show_error("")
        cat = predictor.category
        self.ui.show_categories(self.state.categories, cat)
        if cat and cat in self.state.categories and cat != self.ui.category_dd.value:
            self.ui.category_dd.value = cat  # triggers select_category -> select_image -> update
        else:
            self.ui.show_category_warning(cat)
            if refresh and self.state.source is not None:
                self.request_update()

    def select_category(self, name: str) -> None:
        """List the test images of category `name` and show the first."""
        self.state.load_records(name)
        self.ui.show_category_warning(getattr(self.state.predictor, "category", None))
        if not self.state.records:
            self.show_error(f"{self.settings.data}/{name}: the test split is empty")
            return
        self.ui.show_images(self.state.records)
        self.select_image(0)

    def select_image(self, index: int) -> None:
        """Make test record `index` the current image (with its ground truth) and run the model."""
        self.state.load_test_image(index)
        if self.ui.image_dd.value != index:
            self.ui.set_quietly(self.ui.image_dd, index)
        self.show_error("")
        self.request_update()

    def step_image(self, step: int) -> None:
        """Previous (-1) / next (+1) test image, wrapping around."""
        if not self.state.records:
            return
        current = self.ui.image_dd.value if isinstance(self.ui.image_dd.value, int) else -1
        self.select_image((current + step) % len(self.state.records))

    def upload(self, name: str, content: bytes | memoryview) -> bool:
        """Use an uploaded file as the current image. A bad file shows an error and changes nothing else.

        Returns True when the image was accepted.
        """
        try:
            image = decode_upload(name, content, self.max_upload_bytes, self.max_upload_pixels)
        except UploadError as err:
            self.show_error(f"upload rejected: {err}")
            return False
        self.state.use_upload(name, image)
        self.ui.set_quietly(self.ui.image_dd, None)
        self.show_error("")
        self.request_update()
        return True

    def set_threshold(self, value: float) -> None:
        """Decision threshold for the binary mask and the verdict (no model run needed)."""
        if abs(self.ui.decision.value - value) > 1e-9:
            self.ui.set_quietly(self.ui.decision, value)
        self.render()

    def set_simulation(self, enabled: bool | None = None, **params: Any) -> None:
        """Set simulation controls (threshold, delta, scale_exp, source, seed) and optionally open/close the tab."""
        self.ui.set_simulation_controls(enabled, **params)
        self.request_update()

    # ------------------------------------------------------------------ updates
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
        self.guard(self.update)

    def update(self) -> None:
        """Run the model on the current (real or simulated) image and redraw every panel.

        An image the model cannot score is named in the error box, and the page goes back to the image its
        panels show (so the next action works on that one instead of failing again)."""
        if self.state.predictor is not None and self.state.source is not None:
            simulation = self.ui.simulation_params() if self.ui.simulating else None
            source = self.state.source
            try:
                self.state.run(simulation, self.ui.category_dd.value)
            except ValueError as err:  # the image's fault (size, values): the model and the page stay as they were
                text = " ".join(str(err).split())
                self.show_error(text if source.name in text else f"{source.name}: {text}")
                self._run_failed = True
                self._back_to_shown()
                return
            if self._run_failed:  # the page works again: the failed image's error is no longer news
                self._run_failed = False
                self.show_error("")
        self.render()

    def _back_to_shown(self) -> None:
        """The current image becomes the one the panels show again (the picker too)."""
        shown = self.state.shown_source
        self.state.source = shown
        index = None
        if shown is not None and shown.kind == "test":
            names = [Path(r.image_path).name for r in self.state.records]
            index = names.index(shown.name) if shown.name in names else None
        self.ui.set_quietly(self.ui.image_dd, index)

    def render(self) -> None:
        """Draw the panels, score, verdict and timing from the state's result at the current threshold."""
        if self.state.result is None:
            return
        threshold = float(self.ui.decision.value)
        self.state.decide(threshold)
        r = self.state.result  # near the threshold on the bf16 route, decide scored it again in float32
        weights = getattr(self.state.predictor, "weights_source", None) or "unknown"
        self.ui.show_result(render_result(r, self.state.binary_mask, self.state.verdict, threshold,
                                          self.state.colour_scale, str(weights)))


def build_app(settings: DemoSettings | None = None, **kwargs: Any) -> DashboardApp:
    """Build the dashboard from the demo settings (env/config, see :func:`memseg.apps.demo.load_settings`)."""
    return DashboardApp(settings or load_settings(), **kwargs)
