"""Inference: Predictor from a checkpoint, every input kind, maps at the original size, errors,
the default CPU route (the checkpoint's cached ONNX graph in onnxruntime) and its torch fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_data import make_tiny_dataset

from memseg.data import ImageLoadError, load_split
from memseg.engine.checkpoint import save_checkpoint
from memseg.engine.inference import DEFAULT_THRESHOLD, EXPORT_WORTH_IMAGES, Prediction, Predictor
from memseg.engine.scoring import collect_predictions


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    """The exports of the default route go to a temporary cache, not the user's. This module tests
    the float32 route (CPUs without native bf16); tests/test_mixed_precision.py tests the bf16 one."""
    from memseg.engine import mixed_precision
    from memseg.engine.export import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("onnx-cache")
        mp.setenv(CACHE_ENV, str(folder))
        mp.setattr(mixed_precision, "native_bf16", lambda: False)
        yield folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("inf")
    model = tiny_model("memseg")  # 64 px, memory bank of 2 random images
    cfg = {"category": "tiny", "top_k": 100, "size": 64}
    with_thr = save_checkpoint(d / "with_thr.pt", model, config=cfg, step=5, threshold=0.25)
    without = save_checkpoint(d / "no_thr.pt", model, config=cfg, step=5)
    return with_thr, without


@pytest.fixture(scope="module")
def predictor(checkpoint):
    # a job worth exporting for
    return Predictor.from_checkpoint(checkpoint[0], device="cpu", images=EXPORT_WORTH_IMAGES)


def test_attributes(predictor, checkpoint):
    assert predictor.input_size == (64, 64)
    assert predictor.threshold == pytest.approx(0.25) and predictor.threshold_source == "validation split"
    assert predictor.category == "tiny" and predictor.model_name == "memseg" and predictor.weights_source == "random"
    assert Predictor.from_checkpoint(checkpoint[1], device="cpu").threshold == DEFAULT_THRESHOLD


def test_every_input_kind_gives_the_same_map_at_the_original_size(predictor, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)  # non-square, not the model size
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    preds = [
        predictor.predict(img),
        predictor.predict(Image.fromarray(img)),
        predictor.predict(path),
        predictor.predict(str(path)),
        predictor.predict(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0),
    ]
    for p in preds:
        assert isinstance(p, Prediction)
        assert p.anomaly_map.shape == (50, 70) and p.anomaly_map.dtype == np.float32
        assert 0.0 <= p.anomaly_map.min() and p.anomaly_map.max() <= 1.0
        assert p.time_ms > 0 and p.is_anomalous == (p.score >= predictor.threshold)
        np.testing.assert_allclose(p.anomaly_map, preds[0].anomaly_map, atol=1e-5)
        assert p.score == pytest.approx(preds[0].score, abs=1e-5)
    grey = predictor.predict(img[..., 0])  # (H, W) grey array is replicated to RGB
    assert grey.anomaly_map.shape == (50, 70)


def test_predict_batch_shapes(predictor):
    scores, maps = predictor.predict_batch(torch.rand(3, 3, 64, 64))
    assert scores.shape == (3,) and maps.shape == (3, 64, 64) and maps.dtype == np.float32
    scores2, maps2 = predictor.predict_batch(torch.rand(2, 3, 32, 48))
    assert maps2.shape == (2, 32, 48)
    with pytest.raises(ValueError, match="predict_batch expects"):
        predictor.predict_batch(torch.rand(3, 64, 64))


def test_score_matches_evaluation(predictor, tmp_path):
    """The same image scores the same through `predict` and through evaluation."""
    root = make_tiny_dataset(tmp_path / "d", size=(64, 64), n_good=1, n_defect=2)
    ds = load_split(root, "tiny", "test", size=(64, 64))
    ev = collect_predictions(predictor.model, ds, batch_size=4, device="cpu", top_k=100, progress=False)
    for path, score, amap in zip(ev.paths, ev.scores, ev.maps):
        p = predictor.predict(path)
        assert p.score == pytest.approx(float(score), abs=1e-5)
        np.testing.assert_allclose(p.anomaly_map, amap, atol=1e-5)


def test_bad_inputs_name_the_problem(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ImageLoadError, match="broken.png"):
        predictor.predict(broken)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((10, 10, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="float tensor"):
        predictor.predict(torch.zeros(4, 10, 10))
    with pytest.raises(ValueError, match="expects a path"):
        predictor.predict(12)


@pytest.mark.parametrize("shape", [(0, 0, 3), (1, 1, 3), (1, 5000, 3), (5000, 20, 3), (15, 64, 3)])
def test_unsupported_sizes_say_what_is_accepted(predictor, shape):
    from memseg.engine.inference import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE

    h, w = shape[:2]
    with pytest.raises(ValueError, match=rf"image is {w}x{h} px \(WxH\); expected each side >= {MIN_IMAGE_SIDE} px "
                                         r"and an aspect ratio \(long side / short side\) of at most "
                                         rf"{MAX_ASPECT_RATIO:g}"):
        predictor.predict(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=rf"image is {w}x{h} px"):
        predictor.predict(torch.zeros(3, h, w))


def test_sizes_at_the_limits_are_accepted(predictor, tmp_path):
    from memseg.engine.inference import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE

    long = int(MIN_IMAGE_SIDE * MAX_ASPECT_RATIO)
    for h, w in [(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), (MIN_IMAGE_SIDE, long), (long, MIN_IMAGE_SIDE)]:
        assert predictor.predict(np.full((h, w, 3), 90, np.uint8)).anomaly_map.shape == (h, w)
    path = tmp_path / "thin.png"
    Image.fromarray(np.zeros((2, 300, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=rf"^{path}: image is 300x2 px"):  # a file is named
        predictor.predict(path)


def test_large_images_are_decoded_downscaled_and_mapped_at_a_bounded_size(predictor, tmp_path):
    """An 8000x6000 (48 Mpx) PNG: decoded to <= DECODE_MAX_PIXELS, the map comes back at that size."""
    from memseg.data.io import DECODE_MAX_PIXELS, bounded_size

    big = np.zeros((6000, 8000, 3), np.uint8)
    big[:, :4000] = 255  # left half white: the layout must survive the downscale
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path, compress_level=1)
    bw, bh = bounded_size(8000, 6000, DECODE_MAX_PIXELS)
    assert (bw, bh) == (2309, 1732) and bw * bh <= DECODE_MAX_PIXELS
    decoded = predictor.load(path)
    assert decoded.shape == (bh, bw, 3)
    assert decoded[:, : bw // 2 - 2].min() == 255 and decoded[:, bw // 2 + 2:].max() == 0
    pred = predictor.predict(path)
    assert pred.anomaly_map.shape == (bh, bw)
    # the same bound for an in-memory array (downscaled while still uint8) and a float tensor
    assert predictor.predict(big).anomaly_map.shape == (bh, bw)
    _, maps = predictor.predict_batch(torch.zeros(1, 3, 3000, 2000))
    assert maps.shape == (1, *bounded_size(2000, 3000, DECODE_MAX_PIXELS)[::-1])


# ------------------------------------------------------------------ the default CPU route
def test_default_cpu_route_is_onnxruntime_with_the_maps_and_verdicts_of_torch(predictor, checkpoint, onnx_cache):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    by_torch = Predictor.from_checkpoint(checkpoint[0], device="cpu", backend="torch")
    assert predictor.backend == "onnxruntime" and by_torch.backend == "torch"
    assert str(predictor.model.path).startswith(str(onnx_cache)) and predictor.threshold == by_torch.threshold
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    images[3:, :, 20:40, 20:40] = 1.0  # a bright square: a different score range
    scores, maps = predictor.predict_batch(images)
    ref_scores, ref_maps = by_torch.predict_batch(images)
    assert float(np.abs(maps - ref_maps).max()) <= 1e-4 and float(np.abs(scores - ref_scores).max()) <= 1e-4
    threshold = float(np.median(ref_scores))  # verdicts at a threshold inside the scores' range
    assert list(scores >= threshold) == list(ref_scores >= threshold)
    single = predictor.predict(images[0])
    assert single.score == pytest.approx(float(ref_scores[0]), abs=1e-4)


def test_the_export_is_cached_by_content(checkpoint, onnx_cache, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from memseg.engine import export

    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint[1].read_bytes())
    first = Predictor.from_checkpoint(copy, device="cpu", images=EXPORT_WORTH_IMAGES)
    assert capsys.readouterr().err.strip() == (f"memseg: exporting {copy} for onnxruntime, once (cached as "
                                               f"{first.model.path})")
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("a cached graph was exported again"))
    again = Predictor.from_checkpoint(copy, device="cpu", images=1)  # cached: taken for any job
    assert again.model.path == first.model.path and capsys.readouterr().err == ""
    assert all(p.parent == onnx_cache / "onnx" for p in onnx_cache.rglob("*.onnx"))  # nothing beside the checkpoints
    assert list(tmp_path.iterdir()) == [copy]


def test_without_onnxruntime_the_default_route_is_torch_and_says_so_once(checkpoint, monkeypatch, capsys):
    from memseg.engine import deploy_extra

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails, find_spec says missing
    monkeypatch.setattr(deploy_extra, "_SAID", set())
    preds = [Predictor.from_checkpoint(checkpoint[0], device="cpu") for _ in range(2)]
    assert [p.backend for p in preds] == ["torch", "torch"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime not installed" in lines[0] and "pip install 'memseg[deploy]'" in lines[0]
    assert str(checkpoint[0]) in lines[0]
    assert preds[0].predict(np.full((64, 64, 3), 90, np.uint8)).anomaly_map.shape == (64, 64)


def test_a_failed_export_falls_back_to_torch_with_one_line(checkpoint, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from memseg.engine import deploy_extra, export

    def broken(path):
        raise RuntimeError("exporter crashed\nlong trace")

    monkeypatch.setattr(export, "cached_onnx", broken)
    monkeypatch.setattr(deploy_extra, "_SAID", set())
    assert Predictor.from_checkpoint(checkpoint[0], device="cpu", images=EXPORT_WORTH_IMAGES).backend == "torch"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"memseg: the onnxruntime route failed for {checkpoint[0]} (RuntimeError: exporter crashed); "
                     "running it with torch"]
