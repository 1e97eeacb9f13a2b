"""The fast CPU route: MemSeg's compare half in float32, its segment half in bf16 (OpenVINO), and the
Predictor's verdict guard that scores images near the threshold again in float32."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_model

from memseg.engine import mixed_precision
from memseg.engine.backends import InferenceBackend
from memseg.engine.checkpoint import save_checkpoint
from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.export import export_halves
from memseg.engine.inference import EXPORT_WORTH_IMAGES, Predictor
from memseg.engine.onnx_runtime import ort_session
from memseg.engine.scoring import image_scores
from memseg.models import build_model
from memseg.utils import normalize


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """The route's exports go to a temporary cache, not the user's."""
    from memseg.engine.export import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("export-cache")
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("memseg", memory_size=3)  # the shared tiny MemSeg (tests/tiny_data.py)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "model.pt"
    return save_checkpoint(path, model, config={"category": "tiny", "top_k": 100, "size": 64}, step=5, threshold=0.5)


def _images(n: int = 4) -> torch.Tensor:
    x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    x[n // 2:, :, 16:40, 16:40] = 1.0  # a bright square on half of them
    return x


def test_compare_and_segment_are_the_forward_pass(model):
    x = normalize(_images())
    with torch.no_grad():
        stem, ii, di_star, index, maps = model.compare(x)
        logits = model.segment(stem, ii, di_star, maps, x.shape[-2:])[0]
        full = model(x, return_intermediates=True)
    assert torch.equal(logits, full["logits"]) and torch.equal(index, full["memory_index"])
    # anomaly_map is softmax(logits)[:, 1], written as sigmoid(l1 - l0)
    assert torch.allclose(model.anomaly_map(x), torch.softmax(logits, dim=1)[:, 1:2], atol=1e-6)


def test_halves_in_float32_give_the_maps_of_torch(model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    compare, segment = tmp_path / "c.onnx", tmp_path / "s.onnx"
    export_halves(model, compare, segment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx", "s.onnx"]  # weights inside, no leftovers
    front, back = ort_session(compare), ort_session(segment)
    x = normalize(_images(5))
    halves = front.run(None, {"input": x.numpy()})
    got = back.run(None, {i.name: h for i, h in zip(back.get_inputs(), halves)})[0]
    with torch.no_grad():
        ref = model.anomaly_map(x).numpy()
    assert got.shape == (5, 1, 64, 64) and float(np.abs(got - ref).max()) <= 1e-4


@pytest.mark.parametrize("options", [{"use_memory": False}, {"use_spatial_attention": False}])
def test_halves_of_the_ablations_give_the_maps_of_torch(options, tmp_path):
    """Without memory the compare half has no DI* and no M; without spatial attention no M."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(1)
    m = build_model("memseg", {"input_size": (64, 64), "memory_size": 2, "weights": "random", **options}).eval()
    m.prepare(normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
    export_halves(m, tmp_path / "c.onnx", tmp_path / "s.onnx")  # raises unless within 1e-4

    n_halves = len(ort_session(tmp_path / "s.onnx").get_inputs())
    assert n_halves == (4 if not options.get("use_memory", True) else 7)


needs_bf16 = pytest.mark.skipif(not mixed_precision.native_bf16(),
                                reason="OpenVINO is not installed or this CPU has no native bf16 (AMX / AVX-512 BF16)")


@needs_bf16
def test_default_cpu_route_is_mixed_precision_and_its_verdicts_are_float32(checkpoint, export_cache):
    fast = Predictor.from_checkpoint(checkpoint, device="cpu", images=EXPORT_WORTH_IMAGES)
    exact = Predictor.from_checkpoint(checkpoint, device="cpu", backend="torch")
    assert fast.backend == mixed_precision.MIXED_BACKEND and all(str(export_cache) in path for path in fast.model.paths)
    x = _images(6)
    with torch.no_grad():
        bf16_scores = image_scores(fast.model.anomaly_map(normalize(x)), 100).numpy()
    ref_scores, ref_maps = exact.predict_batch(x)
    # bf16 moves scores a little
    assert 0 < float(np.abs(bf16_scores - ref_scores).max()) < mixed_precision.VERDICT_MARGIN
    compare_runs = []
    run = fast.model.compare.run
    fast.model.compare = type("Counting", (), {"run": lambda self, *a: compare_runs.append(1) or run(*a)})()
    for i in range(len(x)):
        # a threshold right at the bf16 score: the image is scored again in float32 ...
        compare_runs.clear()
        pred = fast.predict(x[i], threshold=float(bf16_scores[i]))
        assert len(compare_runs) == 1  # ... by the segment half only: the compare half ran once
        assert pred.exact and pred.score == pytest.approx(float(ref_scores[i]), abs=1e-4)
        assert float(np.abs(pred.anomaly_map - ref_maps[i]).max()) <= 1e-4
        assert pred.is_anomalous == (ref_scores[i] >= float(bf16_scores[i]))
        far = fast.predict(x[i], threshold=float(bf16_scores[i]) + 2 * mixed_precision.VERDICT_MARGIN)
        assert not far.exact and not far.is_anomalous and far.score == pytest.approx(float(bf16_scores[i]), abs=1e-6)


class _OffByOne:
    """A backend whose fast map is its exact map + 0.02 (what the bf16 route looks like to the Predictor)."""

    name, model_name, input_size, device = "off-by-one", "memseg", (32, 32), torch.device("cpu")
    verdict_margin = 0.05
    image_score = None

    def __init__(self, value: float):
        self.value = value
        self.exact_calls = 0

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.exact_anomaly_map(x, count=False) + 0.02

    def exact_anomaly_map(self, x: torch.Tensor, count: bool = True) -> torch.Tensor:
        self.exact_calls += int(count) * len(x)
        return torch.full((len(x), 1, *x.shape[-2:]), self.value)


@pytest.mark.parametrize("value, threshold, rescored",
                         [(0.49, 0.5, True), (0.40, 0.5, False), (0.52, 0.5, True), (0.60, 0.5, False)])
def test_the_guard_scores_again_only_near_the_threshold(value, threshold, rescored):
    model = _OffByOne(value)
    assert isinstance(model, InferenceBackend)
    pred = Predictor(model, device="cpu", threshold=threshold)
    out = pred.predict(torch.rand(3, 32, 32))
    assert model.exact_calls == int(rescored) and out.exact == rescored
    assert out.score == pytest.approx(value if rescored else value + 0.02)
    assert out.is_anomalous == (out.score >= threshold)
    assert pred.is_exact_at(value + 0.02, threshold) == (not rescored)
    # no margin: exact
    assert Predictor(torch.nn.Identity(), CheckpointRecord("identity", (32, 32)), device="cpu").is_exact_at(0.5, 0.5)


def test_without_openvino_the_route_is_onnxruntime_float32(checkpoint, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails, find_spec says missing
    assert not mixed_precision.native_bf16()
    pred = Predictor.from_checkpoint(checkpoint, device="cpu", images=EXPORT_WORTH_IMAGES)
    assert pred.backend == "onnxruntime" and getattr(pred.model, "verdict_margin", 0.0) == 0.0


def test_a_failed_export_of_the_halves_falls_back_with_one_line(checkpoint, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from memseg.engine import deploy_extra

    def broken(path, model):
        raise RuntimeError("exporter crashed\nlong trace")

    monkeypatch.setattr(mixed_precision, "native_bf16", lambda: True)
    monkeypatch.setattr(mixed_precision, "missing_modules", lambda *modules: [])
    monkeypatch.setattr(mixed_precision, "cached_halves", broken)
    monkeypatch.setattr(deploy_extra, "_SAID", set())
    pred = Predictor.from_checkpoint(checkpoint, device="cpu", images=EXPORT_WORTH_IMAGES)
    assert pred.backend == "onnxruntime"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (f"memseg: the bf16 CPU route failed for {checkpoint} (RuntimeError: exporter crashed); "
                        "running it in float32")
