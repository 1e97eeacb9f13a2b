"""The dashboard's callbacks and the demo's settings/prepare, without a browser.

A tiny MemSeg checkpoint is trained once per module (`memseg.apps.demo.prepare`: a few steps at 64x64 on
the synthetic fixture dataset); every test builds a fresh app on it with debounce 0 (updates run at
once) except the debounce test, which runs the app inside an asyncio loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ipywidgets")

from memseg.apps import demo  # noqa: E402
from memseg.apps.dashboard import (  # noqa: E402
    MAX_UPLOAD_BYTES,
    SCALE_CHECK_IMAGES,
    DashboardApp,
    UploadError,
    decode_upload,
)
from memseg.apps.demo import DemoSettings, load_settings  # noqa: E402

CATEGORY = "weave"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_demo(synthetic_root: Path, tmp_path_factory) -> DemoSettings:
    """Settings pointing at the synthetic fixture dataset, with a tiny demo model trained by `prepare`."""
    runs = tmp_path_factory.mktemp("runs")
    settings = DemoSettings(
        data=synthetic_root, category=CATEGORY, runs=runs, device="cpu", dtd=None,
        size=64, steps=3, batch_size=2, memory_size=2, seed=0, extra_train={"val_fraction": 0.0},
    )
    demo.prepare(settings, progress=False, log=lambda _msg: None)
    return settings


@pytest.fixture
def app(tiny_demo: DemoSettings) -> DashboardApp:
    return DashboardApp(tiny_demo, debounce_s=0)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # uint16 (H, W) -> a 16-bit grey PNG
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (pixel data absent): only the header is read before the check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def _anomalous_index(app: DashboardApp) -> int:
    return next(i for i, r in enumerate(app.state.records) if r.label == 1)


def _normal_index(app: DashboardApp) -> int:
    return next(i for i, r in enumerate(app.state.records) if r.label == 0)


# ------------------------------------------------------------------------------------ the app
def test_app_builds_on_the_checkpoint_and_shows_panels(app: DashboardApp, tiny_demo: DemoSettings) -> None:
    ckpt = demo.demo_checkpoint_path(tiny_demo)
    assert app.state.error_text == ""
    assert str(ckpt.resolve()) in [v for _, v in app.ui.checkpoint_dd.options]
    assert app.ui.category_dd.value == CATEGORY
    assert app.state.result is not None and 0.0 <= app.state.result.score <= 1.0 and app.state.result.time_ms > 0
    for key, img in app.ui.panels.items():
        assert img.value[:8] == b"\x89PNG\r\n\x1a\n", key
    assert app.state.verdict in ("normal", "anomalous")
    assert "inference" in app.ui.time_html.value and "ms" in app.ui.time_html.value
    assert "encoder weights" in app.ui.time_html.value and app.state.predictor.weights_source in app.ui.time_html.value


def test_selecting_another_image_changes_the_panels(app: DashboardApp) -> None:
    app.ui.image_dd.value = _normal_index(app)  # through the widget, as a click would
    before = {k: w.value for k, w in app.ui.panels.items()}
    assert not app.state.result.truth.any()  # a normal image has an empty ground truth
    j = _anomalous_index(app)
    app.ui.image_dd.value = j
    assert app.state.source.name == Path(app.state.records[j].image_path).name
    assert app.state.result.truth is not None and app.state.result.truth.any()
    assert app.ui.panels["input"].value != before["input"]
    assert app.ui.panels["truth"].value != before["truth"]
    assert app.ui.panels["heatmap"].value != before["heatmap"]
    # next/previous buttons walk the list
    app.ui.next_btn.click()
    assert app.ui.image_dd.value == (j + 1) % len(app.state.records)
    app.ui.prev_btn.click()
    assert app.ui.image_dd.value == j


def test_delta_changes_the_simulated_image_and_the_score(app: DashboardApp) -> None:
    app.ui.image_dd.value = _normal_index(app)
    real_input = app.ui.panels["input"].value
    app.set_simulation(threshold=0.3, delta=0.2, scale_exp=1, source="structure", seed=3)
    app.ui.tabs.selected_index = 1  # open "Simulate a defect"
    assert app.state.result.simulated and app.state.result.truth.any()  # the simulated mask M is the ground truth
    low = (app.ui.panels["input"].value, app.state.result.score, app.state.result.image.copy())
    assert low[0] != real_input
    runs = app.state.updates_run
    app.ui.delta.value = 1.0
    assert app.state.updates_run == runs + 1
    high = (app.ui.panels["input"].value, app.state.result.score, app.state.result.image.copy())
    assert high[0] != low[0]
    assert high[1] != low[1]
    # the change is inside the simulated mask only (eq. 1-2: outside M the image is untouched)
    m = app.state.result.truth
    diff = np.abs(high[2].astype(int) - low[2].astype(int)).max(axis=2)
    assert diff[m].mean() > diff[~m].mean() + 1
    # the same seed gives the same simulation (reproducible), another seed a different one
    app.ui.delta.value = 0.2
    assert app.ui.panels["input"].value == low[0]
    app.ui.seed.value = 4
    assert app.ui.panels["input"].value != low[0]
    # closing the tab goes back to the real image
    app.ui.tabs.selected_index = 0
    assert app.ui.panels["input"].value == real_input and not app.state.result.simulated


def test_threshold_changes_the_mask_and_the_verdict_without_rerunning(app: DashboardApp) -> None:
    app.ui.image_dd.value = _anomalous_index(app)
    runs, score = app.state.updates_run, app.state.result.score
    amap = app.state.result.anomaly_map
    lo, hi = float(amap.min()), float(amap.max())
    assert hi > lo
    app.ui.decision.value = round(max(0.0, score - 0.005), 3)
    assert app.state.verdict == "anomalous" and "ANOMALOUS" in app.ui.verdict_html.value
    mask_low, png_low = app.state.binary_mask.copy(), app.ui.panels["mask"].value
    app.ui.decision.value = round(min(1.0, score + 0.005), 3)
    assert app.state.verdict == "normal" and "NORMAL" in app.ui.verdict_html.value
    mask_high = app.state.binary_mask.copy()
    assert mask_high.sum() <= mask_low.sum()
    d = app.ui.decision  # spans the model's score range (see test_the_colour_scale_...)
    inside = amap[(amap >= d.min) & (amap <= d.max)]
    assert inside.size, "no pixel score inside the slider's range"
    mid = float(np.median(inside))
    app.set_threshold(mid)
    assert d.value == pytest.approx(mid)
    assert 0 < app.state.binary_mask.sum() < app.state.binary_mask.size
    assert np.array_equal(app.state.binary_mask, amap >= mid)
    app.set_threshold(d.max + 1.0)  # beyond the range: the slider's end
    assert d.value == d.max and np.array_equal(app.state.binary_mask, amap >= d.max)
    assert app.ui.panels["mask"].value != png_low or mask_low.sum() == app.state.binary_mask.sum()
    assert app.state.updates_run == runs  # the threshold only redraws


def test_a_decision_near_a_bf16_score_is_taken_on_the_float32_score(app: DashboardApp) -> None:
    """On the bf16 CPU route a slider value near the image's score scores it again in float32 (no new run)."""
    from memseg.engine import mixed_precision
    from memseg.engine.inference import Predictor

    app.state.predictor.wait_for_route(timeout=300)  # the route the dashboard exports in the background
    if app.state.predictor.backend != mixed_precision.MIXED_BACKEND:
        pytest.skip("the dashboard's model is not on the bf16 route (no native bf16 or no OpenVINO here)")
    app.ui.image_dd.value = _anomalous_index(app)
    app.state.predictor.threshold = 0.99  # far from the tiny model's scores: the run keeps its bf16 score
    app.state.run(None, app.ui.category_dd.value)
    r, runs = app.state.result, app.state.updates_run
    assert not r.exact
    app.set_threshold(r.score)
    exact = Predictor.from_checkpoint(app.state.checkpoint, device="cpu", backend="torch").predict(r.model_input)
    assert app.state.result.exact and app.state.updates_run == runs
    assert app.state.result.score == pytest.approx(exact.score, abs=1e-4)
    assert app.state.verdict == ("anomalous" if exact.score >= app.ui.decision.value else "normal")
    assert app.state.colour_scale.fmt(app.state.result.score) in app.ui.score_html.value  # the page shows it


def _upload(app: DashboardApp, name: str, data: bytes) -> None:
    """Upload through the widget, in ipywidgets 8's value format."""
    app.ui.upload_w.value = ({"name": name, "type": "", "size": len(data), "content": memoryview(data),
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


@pytest.mark.parametrize(
    "name,data,expect",
    [
        ("notes.png", b"this is plain text, not a picture\n" * 20, "not an image"),
        ("empty.png", b"", "empty"),
        ("huge.png", b"\0" * (MAX_UPLOAD_BYTES + 1), "MB limit"),
        ("giant.png", _png_header_only(10_000, 6_000), "Mpx limit"),
    ],
    ids=["not-an-image", "empty", "over-20MB", "over-50Mpx"],
)
def test_bad_upload_shows_an_error_and_leaves_the_app_usable(app: DashboardApp, name: str, data: bytes,
                                                             expect: str) -> None:
    before = (app.state.source.name, app.state.result.score, app.ui.panels["input"].value)
    _upload(app, name, data)
    assert name in app.state.error_text and expect in app.state.error_text
    assert "memseg-error-box" in app.ui.error_html.value and name in app.ui.error_html.value
    # nothing else changed
    assert (app.state.source.name, app.state.result.score, app.ui.panels["input"].value) == before
    app.ui.next_btn.click()  # still usable; a good action clears the error
    assert app.state.error_text == "" and app.state.source.name != before[0]


def test_truncated_and_wrong_format_uploads_are_rejected(app: DashboardApp) -> None:
    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    png = _png_bytes(rgb)
    assert app.upload("cut.png", png[: len(png) // 2]) is False
    assert "cut.png" in app.state.error_text and "truncated or corrupt" in app.state.error_text
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, format="GIF")
    assert app.upload("anim.gif", gif.getvalue()) is False
    assert "GIF" in app.state.error_text and "PNG or JPEG" in app.state.error_text


def test_good_uploads_are_converted_and_predicted(app: DashboardApp) -> None:
    rgb = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    _upload(app, "mine.png", _png_bytes(rgb))
    assert app.state.error_text == ""
    assert app.state.source.kind == "upload" and app.state.source.image.shape == (48, 64, 3)
    assert np.array_equal(app.state.source.image, rgb)
    assert app.state.result.truth is None and "unknown" in app.ui.panel_titles["truth"].value
    assert app.state.result.image.shape[:2] == (225, 300)  # display size keeps the 3:4 aspect
    # grey 16-bit PNG and RGBA PNG come out as RGB; JPEG is accepted
    grey16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 1)
    assert app.upload("grey16.png", _png_bytes(grey16)) is True and app.state.source.image.shape == (48, 64, 3)
    rgba = np.dstack([rgb, np.full((48, 64), 255, np.uint8)])
    assert app.upload("alpha.png", _png_bytes(rgba)) is True and np.array_equal(app.state.source.image, rgb)
    jpg = io.BytesIO()
    Image.fromarray(rgb).save(jpg, format="JPEG")
    assert app.upload("photo.jpg", jpg.getvalue()) is True and app.state.source.name == "photo.jpg"


def test_decode_upload_limits_are_parameters() -> None:
    rgb = np.zeros((40, 50, 3), np.uint8)
    png = _png_bytes(rgb)
    assert decode_upload("a.png", png).shape == (40, 50, 3)
    with pytest.raises(UploadError, match=r"a\.png.*limit"):
        decode_upload("a.png", png, max_bytes=len(png) - 1)
    with pytest.raises(UploadError, match=r"a\.png.*Mpx"):
        decode_upload("a.png", png, max_pixels=40 * 50 - 1)


def test_a_bad_checkpoint_shows_an_error_and_keeps_the_model(app: DashboardApp, tmp_path: Path) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    model = app.state.predictor
    app.select_checkpoint(bad)
    assert "junk.pt" in app.state.error_text
    assert app.state.predictor is model
    app.ui.next_btn.click()
    assert app.state.error_text == "" and app.state.result is not None


def test_debounce_coalesces_a_burst_into_one_latest_update(tiny_demo: DemoSettings) -> None:
    async def scenario() -> tuple[int, int, float, float]:
        app = DashboardApp(tiny_demo, debounce_s=0.05)  # built inside a running loop: updates are scheduled
        await asyncio.sleep(0.5)
        app.set_simulation(enabled=True, threshold=0.3, delta=0.2, scale_exp=1, source="structure", seed=3)
        await asyncio.sleep(0.5)
        start = app.state.updates_run
        for d in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):  # a burst of slider events
            app.ui.delta.value = d
        burst_runs = app.state.updates_run - start  # nothing ran yet: all events are pending on the timer
        await asyncio.sleep(0.5)
        latest_score = app.state.result.score
        app_now = DashboardApp(tiny_demo, debounce_s=0)
        return burst_runs, app.state.updates_run - start, latest_score, _score_at(app_now, 1.0)

    def _score_at(fresh: DashboardApp, delta: float) -> float:
        fresh.set_simulation(enabled=True, threshold=0.3, delta=delta, scale_exp=1, source="structure", seed=3)
        return fresh.state.result.score

    burst_runs, total_runs, latest, expected = asyncio.run(scenario())
    assert burst_runs == 0
    assert total_runs == 1  # eight events, one model run
    assert latest == pytest.approx(expected, abs=1e-6)  # ... for the latest value (δ = 1.0)


# ------------------------------------------------------------------------------------ presenter-proofing (issue 12)
def test_loading_a_checkpoint_runs_a_warm_up_forward_first(app: DashboardApp, tiny_demo: DemoSettings,
                                                           monkeypatch) -> None:
    from memseg.engine.inference import Predictor

    calls: list[torch.Tensor] = []
    original = Predictor.predict_batch

    def counting(self, images, threshold=None):
        calls.append(images.detach().clone())
        return original(self, images, threshold)

    monkeypatch.setattr(Predictor, "predict_batch", counting)
    app.state.warmup_ms = None
    app.select_checkpoint(demo.demo_checkpoint_path(tiny_demo), refresh=False)  # same category: no page update
    assert app.state.error_text == "" and calls, "loading the checkpoint ran no forward"
    first = calls[0]  # the warm-up: one dummy image at the model's input size, before anything else
    assert tuple(first.shape) == (1, 3, *app.state.input_size) and not first.any()
    assert app.state.warmup_ms is not None and app.state.warmup_ms > 0


def _checkpoint_with_validation(tiny_demo: DemoSettings, tmp_path: Path, scores: list[float], threshold: float) -> Path:
    """A copy of the tiny demo checkpoint whose stored validation scores and threshold are `scores`, `threshold`."""
    ckpt = torch.load(demo.demo_checkpoint_path(tiny_demo), map_location="cpu", weights_only=True)
    ckpt.setdefault("extra", {})["validation"] = {"scores": scores, "labels": [0] * len(scores), "threshold": threshold}
    ckpt["threshold"] = threshold
    path = tmp_path / "with-validation.pt"
    torch.save(ckpt, path)
    return path


def test_the_colour_scale_and_the_decision_slider_follow_the_models_scores(
        app: DashboardApp, tiny_demo: DemoSettings, tmp_path: Path) -> None:
    scores = [0.10, 0.12, 0.15, 0.20, 0.25, 0.30]
    app.select_checkpoint(_checkpoint_with_validation(tiny_demo, tmp_path, scores, 0.16))
    assert app.state.error_text == ""
    d = app.ui.decision
    # lowest score .. 90th percentile (0.275), padded by max(5 % of the span, 0.01), on a 0.001 grid
    assert (d.min, d.max, d.step) == (pytest.approx(0.090), pytest.approx(0.285), pytest.approx(0.001))
    assert d.value == pytest.approx(0.16)  # the stored threshold, not a rounded one
    legend = app.ui.legend_range_html.value
    assert "0.090" in legend and "0.285" in legend and "6 validation scores" in legend
    assert "0.160" in app.ui.score_html.value and "0.160" in app.ui.panel_titles["mask"].value
    # one outlier (a simulated anomaly at 1.0) does not squeeze the others into the blue end
    many = [float(v) for v in np.linspace(0.10, 0.30, 15)]
    app.select_checkpoint(_checkpoint_with_validation(tiny_demo, tmp_path, many + [1.0], 0.16))
    assert app.ui.decision.max < 0.5
    # without stored validation scores (the fixture trains without a validation split) the range comes from
    # test images of the model's category, and the legend says so
    app.select_checkpoint(demo.demo_checkpoint_path(tiny_demo))
    assert f"{min(len(app.state.records), SCALE_CHECK_IMAGES)} {CATEGORY} test images" in app.ui.legend_range_html.value
    app.ui.image_dd.value = 0  # the first test image is always among those scored
    assert app.ui.decision.min <= app.state.result.score and app.ui.decision.max > app.ui.decision.min


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_overlay_leaves_low_scores_untinted_and_colours_high_ones(app: DashboardApp) -> None:
    from memseg.viz import colormap_lut

    lo, hi = app.state.colour_scale.lo, app.state.colour_scale.hi
    assert hi > lo
    base = app.state.result
    app.state.result = dataclasses.replace(base, anomaly_map=np.full_like(base.anomaly_map, lo))
    app.render()
    assert np.array_equal(_decode(app.ui.panels["overlay"].value), base.image)  # a normal map: no tint at all
    assert (_decode(app.ui.panels["heatmap"].value) == colormap_lut()[0]).all()  # the scale's blue end
    app.state.result = dataclasses.replace(base, anomaly_map=np.full_like(base.anomaly_map, hi))
    app.render()
    assert (_decode(app.ui.panels["heatmap"].value) == colormap_lut()[255]).all()  # the scale's red end
    tinted = _decode(app.ui.panels["overlay"].value).astype(int)
    assert np.abs(tinted - base.image.astype(int)).mean() > 20


def test_the_models_category_comes_first_and_another_one_shows_a_warning_banner(app: DashboardApp) -> None:
    labels = [label for label, _value in app.ui.category_dd.options]
    assert labels[0] == f"{CATEGORY} (model)" and app.ui.category_dd.value == CATEGORY
    assert app.ui.warning_html.value == "" and "memseg-warning" in app.ui.warning_html._dom_classes
    other = next(v for _label, v in app.ui.category_dd.options if v != CATEGORY)
    app.ui.category_dd.value = other  # as a pick in the page would
    banner = app.ui.warning_html.value
    assert ("memseg-warning-box" in banner and f"trained on <b>{CATEGORY}</b>" in banner
            and f"not <b>{other}</b>" in banner)
    # the page still works on the other category
    assert app.state.source.defect is not None and app.state.result is not None
    app.ui.category_dd.value = CATEGORY
    assert app.ui.warning_html.value == ""


def test_simulating_on_a_defective_image_keeps_its_real_defect_in_the_mask(app: DashboardApp) -> None:
    app.ui.image_dd.value = _anomalous_index(app)
    real = app.state.result.truth.copy()
    assert real.any()
    app.set_simulation(enabled=True, threshold=0.3, delta=0.6, scale_exp=1, source="structure", seed=3)
    r = app.state.result
    assert r.simulated and np.array_equal(r.real_truth, real)
    assert (r.truth & real).sum() == real.sum()  # the real defect stays in the shown mask ...
    assert r.truth.sum() > real.sum()  # ... beside the simulated one
    shown = _decode(app.ui.panels["truth"].value)
    assert (shown[real] == np.array([255, 140, 0])).all()  # real defect in orange
    assert (shown[r.truth & ~real] == 255).all()  # simulated mask M in white
    assert "own defect" in app.ui.panel_titles["truth"].value and "orange" in app.ui.caption_html.value
    # on a normal image the mask is M alone, in white
    app.ui.image_dd.value = _normal_index(app)
    assert not app.state.result.real_truth.any() and app.ui.panel_titles["truth"].value.count("Simulated mask M") == 1
    assert "own defect" not in app.ui.panel_titles["truth"].value


# ------------------------------------------------------------------------------------ server settings and container
ROOT = Path(__file__).resolve().parent.parent


def test_voila_json_kernel_culling_reaches_the_kernel_manager() -> None:
    """voila.json's keys are real options of the installed voila/jupyter_server, and Voila applies them."""
    pytest.importorskip("voila")
    settings = json.loads((ROOT / "voila.json").read_text())
    probe = """
import json, sys
from traitlets.config import Configurable
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
from voila.app import Voila
from voila.configuration import VoilaConfiguration
known = {"Voila": Voila, "VoilaConfiguration": VoilaConfiguration, "MappingKernelManager": MappingKernelManager}
settings = json.loads(open("voila.json").read())
unknown = [f"{section}.{key}" for section, values in settings.items() for key in values
           if section not in known or key not in known[section].class_traits(config=True)]
app = Voila()
app.initialize(["notebooks/[demo] model inference.ipynb", "--no-browser"])
app.init_settings()  # builds the kernel manager from the loaded config; starts no kernel
km = app.kernel_manager
print(json.dumps({"unknown": unknown, "kernel_manager": type(km).__mro__[1].__name__,
                  "cull": [km.cull_idle_timeout, km.cull_interval, km.cull_connected, km.cull_busy]}))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["unknown"] == []
    cull = settings["MappingKernelManager"]
    assert got["cull"] == [cull["cull_idle_timeout"], cull["cull_interval"], cull["cull_connected"], cull["cull_busy"]]
    # closed pages go soon, open ones stay
    assert 0 < cull["cull_idle_timeout"] <= 300 and cull["cull_connected"] is False
    assert not settings["Voila"].get("tornado_settings", {}).get("disable_check_xsrf")  # XSRF protection stays on


def _voila_token(tmp_path: Path) -> str | None:
    """The JUPYTER_TOKEN the stubbed voila of the last :func:`_run_entrypoint` had in its environment."""
    path = tmp_path / "voila-token"
    return path.read_text() if path.exists() else None


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str] | None]:
    """Run docker/entrypoint.sh with `python -m memseg.apps.demo` and `voila` stubbed: (result, voila's argv or None);
    :func:`_voila_token` gives the token voila found in its environment."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    argv_file = tmp_path / "voila-argv"
    (stubs / "python").write_text(  # the real python for the token; the demo's heavy steps are stubbed
        f'#!/bin/sh\ncase "$*" in *secrets*) exec "{sys.executable}" "$@";; esac\necho "stub python $*"\n')
    (stubs / "voila").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{argv_file}"\n'
                                 f'printf "%s" "${{JUPYTER_TOKEN:-}}" > "{tmp_path / "voila-token"}"\n')
    for stub in ("python", "voila"):
        (stubs / stub).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEMSEG_", "VOILA_"))}
    run_env = {**base, "PATH": f"{stubs}:{base.get('PATH', '')}", "PORT": "9999", **env}
    for leftover in (argv_file, tmp_path / "voila-token"):
        leftover.unlink(missing_ok=True)
    res = subprocess.run([bash, str(ROOT / "docker" / "entrypoint.sh"), "--debug"], env=run_env,
                         capture_output=True, text=True, timeout=60, check=False)
    argv = argv_file.read_text().splitlines() if argv_file.exists() else None
    return res, argv


def test_the_container_entrypoint_requires_a_token_unless_opted_out(tmp_path: Path) -> None:
    # default: a generated token, printed with the URL, and given to voila through its environment
    res, argv = _run_entrypoint(tmp_path, {})
    assert res.returncode == 0, res.stderr
    token = _voila_token(tmp_path)
    assert token and len(token) >= 24 and "--Voila.auto_token=True" in argv
    assert not [a for a in argv if token in a or a.startswith("--token")]  # never on the command line (process list)
    assert f"http://localhost:9999/?token={token}" in res.stdout
    assert "--Voila.ip=0.0.0.0" in argv and "--port=9999" in argv and argv[-1] == "--debug"
    _res, argv2 = _run_entrypoint(tmp_path, {})
    assert _voila_token(tmp_path) != token  # a new one per start
    # a token from the environment is used as given and not echoed
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_TOKEN": "room-42.demo-0123"})
    assert _voila_token(tmp_path) == "room-42.demo-0123" and not [a for a in argv if "room-42" in a]
    assert "room-42.demo-0123" not in res.stdout and "<your MEMSEG_TOKEN>" in res.stdout
    res, argv = _run_entrypoint(tmp_path, {"VOILA_TOKEN": "v-token-0123456789"})
    assert _voila_token(tmp_path) == "v-token-0123456789"
    # explicit opt-out: no token, and a warning
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_NO_TOKEN": "1", "JUPYTER_TOKEN": "inherited-0123456789"})
    assert res.returncode == 0 and not [a for a in argv if "token" in a] and _voila_token(tmp_path) == ""
    assert "WITHOUT a token" in res.stdout
    # a bad setting stops before any work, with one line naming it
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_NO_TOKEN": "maybe"})
    assert res.returncode == 2 and argv is None and "stub python" not in res.stdout
    assert res.stderr.strip() == ("memseg demo: error: MEMSEG_NO_TOKEN=maybe; expected 1 (serve without a token) "
                                  "or unset (require one)")
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_TOKEN": "has space and more than 16"})
    assert res.returncode == 2 and argv is None and "MEMSEG_TOKEN" in res.stderr and len(res.stderr.splitlines()) == 1
    # `make demo`'s default loopback host: only this machine can connect, no token; any other host needs one
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_HOST": "127.0.0.1"})
    assert res.returncode == 0 and "--Voila.ip=127.0.0.1" in argv and not [a for a in argv if "token" in a]
    assert "http://127.0.0.1:9999/" in res.stdout
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_HOST": "192.168.1.5"})
    assert "--Voila.ip=192.168.1.5" in argv and len(_voila_token(tmp_path)) >= 24


@pytest.mark.parametrize("value", ["maybe", "true", "yes", "TRUE", "0", "no", " 1"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_memseg_no_token_must_be_exactly_1_or_unset_on_every_host(tmp_path: Path, value: str, host: str) -> None:
    """README: MEMSEG_NO_TOKEN=1 serves without a token; any other value stops the container at once (a loopback
    host used to skip the check and accept anything)."""
    res, argv = _run_entrypoint(tmp_path, {"MEMSEG_NO_TOKEN": value, "MEMSEG_HOST": host})
    assert res.returncode == 2 and argv is None and "stub python" not in res.stdout
    assert res.stderr.strip() == (f"memseg demo: error: MEMSEG_NO_TOKEN={value}; expected 1 (serve without a token) "
                                  "or unset (require one)")


@pytest.mark.parametrize("variable", ["MEMSEG_TOKEN", "VOILA_TOKEN"])
def test_a_token_shorter_than_16_characters_is_refused(tmp_path: Path, variable: str) -> None:
    res, argv = _run_entrypoint(tmp_path, {variable: "short-token-15ch"[:15]})
    assert res.returncode == 2 and argv is None and "stub python" not in res.stdout
    assert res.stderr.strip() == (f"memseg demo: error: {variable} is 15 characters long; expected at least 16 "
                                  "(letters, digits and - _ . ~), or unset it for a generated one")
    res, argv = _run_entrypoint(tmp_path, {variable: "exactly-16-chars"})
    assert res.returncode == 0 and _voila_token(tmp_path) == "exactly-16-chars"


def test_the_entrypoint_protects_the_real_voila_with_a_token_kept_out_of_the_process_list(tmp_path: Path) -> None:
    """docker/entrypoint.sh (demo preparation stubbed) starting the real voila on a non-loopback-listed address: without
    the token the server sends to the login form, with it not; the token is not on voila's command line (the process
    list, readable by every user of the machine; it was ``--token=...``)."""
    import http.client
    import socket
    import time

    bash, bin_dir = shutil.which("bash"), Path(sys.executable).parent
    if bash is None or not (bin_dir / "voila").exists():
        pytest.skip("bash or voila not found")
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))  # a loopback address the entrypoint does not exempt: a token is required
        port = sock.getsockname()[1]
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python").write_text('#!/bin/sh\necho "stub python $*"\n')  # the demo's preparation
    (stubs / "python").chmod(0o755)
    token = "t0ken-from-the-environment"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEMSEG_", "VOILA_", "JUPYTER_TOKEN"))}
    env = {**base, "PATH": f"{stubs}:{bin_dir}:{base.get('PATH', '')}", "PORT": str(port), "MEMSEG_HOST": "127.0.0.2",
           "MEMSEG_TOKEN": token}
    proc = subprocess.Popen([bash, str(ROOT / "docker" / "entrypoint.sh")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # bash execs voila: proc.pid becomes voila's

    def redirect(path: str) -> str:
        """Where the server sends a GET of ``path`` (no redirect followed; no kernel is started)."""
        conn = http.client.HTTPConnection("127.0.0.2", port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().getheader("Location") or ""
        finally:
            conn.close()

    try:
        t0 = time.monotonic()
        while True:
            try:
                login = redirect("/api/kernels")
                break
            except OSError:
                if time.monotonic() - t0 > 60 or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert "/login" in login
        assert "/login" not in redirect(f"/api/kernels?token={token}")
        assert "/login" in redirect("/api/kernels?token=another-token-0123456789")
        assert token not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_make_demo_serves_through_the_entrypoint() -> None:
    """`make demo HOST=0.0.0.0` gets the container's token rule, not a bare voila on the network."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo\s*:.*\n((?:\t.*\n?)+)", text, flags=re.M).group(1)
    assert "docker/entrypoint.sh" in recipe and 'MEMSEG_HOST="$(HOST)"' in recipe
    assert "voila " not in recipe  # no second way to start the server


# ------------------------------------------------------------------------------------ demo settings / prepare
def test_settings_precedence_defaults_config_env_overrides(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "configs").mkdir(parents=True)
    s = load_settings(env={}, root=root)
    assert s.data == root / "data" / "synthetic" and s.category == "toys" and s.checkpoint is None
    assert demo.resolve_checkpoint(s) == root / "runs" / "demo" / "toys" / "final.pt"
    cfg = root / "configs" / "demo.yaml"
    cfg.write_text("data: my/data\ncategory: washer\nsteps: 12\ncheckpoint: runs/x.pt\n")
    s = load_settings(env={}, root=root)
    assert (s.data, s.category, s.steps, s.checkpoint) == (root / "my/data", "washer", 12, root / "runs/x.pt")
    s = load_settings(env={"MEMSEG_CATEGORY": "toys", "MEMSEG_DATA": "/abs/mvtec", "MEMSEG_CHECKPOINT": ""}, root=root)
    assert (s.data, s.category, s.checkpoint) == (Path("/abs/mvtec"), "toys", root / "runs/x.pt")
    s = load_settings(env={"MEMSEG_CATEGORY": "toys"}, root=root, category="bottle", steps=None)
    assert s.category == "bottle" and s.steps == 12  # None overrides are ignored
    other = tmp_path / "other.yaml"
    other.write_text("category: screw\n")
    assert load_settings(env={"MEMSEG_DEMO_CONFIG": str(other)}, root=root).category == "screw"


def test_settings_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings(config=tmp_path / "missing.yaml", env={}, root=tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("categroy: weave\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*categroy"):
        load_settings(config=bad, env={}, root=tmp_path)


def test_prepare_reuses_the_cached_model_without_training(tiny_demo: DemoSettings, monkeypatch) -> None:
    from memseg.engine import run_folder, training

    def no_training(*_a, **_k):
        raise AssertionError("prepare trained again although a model is cached")

    monkeypatch.setattr(training, "train", no_training)
    lines: list[str] = []
    ckpt = demo.prepare(tiny_demo, progress=False, log=lines.append)
    assert ckpt == demo.demo_checkpoint_path(tiny_demo) and ckpt.is_file()
    assert any("reusing" in line for line in lines)
    assert not (ckpt.parent / run_folder.CHECKPOINT_DIR / run_folder.LAST_CHECKPOINT).exists()  # moved, not duplicated


def test_prepare_refuses_a_missing_configured_checkpoint(tiny_demo: DemoSettings, tmp_path: Path) -> None:
    s = DemoSettings(**{**tiny_demo.__dict__, "checkpoint": tmp_path / "nope.pt"})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        demo.prepare(s, progress=False, log=lambda _m: None)


def test_prepare_refuses_an_unknown_non_synthetic_category(tmp_path: Path) -> None:
    s = DemoSettings(data=tmp_path / "mvtec", category="bottle", runs=tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="bottle"):
        demo.prepare(s, progress=False, log=lambda _m: None)


def test_demo_cli_reports_errors_without_a_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MEMSEG_RUNS", str(tmp_path / "runs"))
    rc = demo.main(["prepare", "--data", str(tmp_path / "nothing"), "--category", "bottle", "--no-progress"])
    assert rc == 2
    assert "bottle" in capsys.readouterr().err


def test_find_checkpoints_lists_final_models_first_and_hides_their_resumable_copy(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for rel in ("a/final.pt", "a/checkpoints/last.pt", "b/checkpoints/last.pt", "c/mine.pt"):
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_bytes(b"")
    found = [p.relative_to(runs.resolve()).as_posix() for p in demo.find_checkpoints(runs)]
    # a's last.pt is the same model as its final.pt; b was never finished, so its last.pt is all there is
    assert found == ["a/final.pt", "b/checkpoints/last.pt", "c/mine.pt"]
