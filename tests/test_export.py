"""ONNX export: the whole network (memory bank and DI* search included) runs in onnxruntime like PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_dataset

from memseg.apps.cli import main as cli_main
from memseg.engine.backends import InferenceBackend
from memseg.engine.checkpoint import load_checkpoint
from memseg.engine.evaluation import evaluate
from memseg.engine.export import export_onnx
from memseg.engine.inference import Predictor
from memseg.engine.onnx_runtime import load_onnx
from memseg.engine.scoring import score_images
from memseg.engine.training import TrainConfig, train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MAX_MAP_DIFF = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A MemSeg run of a few steps on the tiny dataset: (data root, final.pt)."""
    root = tmp_path_factory.mktemp("export")
    data = make_tiny_dataset(root / "data", n_train=12, n_good=3, n_defect=4)
    cfg = TrainConfig.from_dict(dict(
        data=str(data), category="tiny", size=64, steps=8, batch_normal=2, batch_anomalous=2, warmup_steps=2,
        device="cpu", val_fraction=0.25, model_options={"memory_size": 2, "weights": "random"}, out=str(root / "run"),
        log_every=4, simulation={"texture_prob": 0.0}))
    return data, train(cfg, progress=False).checkpoint


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    return export_onnx(trained[1], tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_maps_match_pytorch_at_any_batch_size(trained, exported):
    torch_model, info = load_checkpoint(trained[1], device="cpu")
    onnx_model, record = load_onnx(exported)
    assert isinstance(onnx_model, InferenceBackend) and onnx_model.input_size == (64, 64)
    assert record.threshold == pytest.approx(info["threshold"]) and record.backend == "onnxruntime"
    assert record.category == "tiny" and record.weights_source == info["weights_source"]
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 2, 7):  # the batch axis is dynamic
        images = torch.rand(batch, 3, 64, 64, generator=gen)
        ref_maps, ref_scores = score_images(torch_model, images, 100)
        maps, scores = score_images(onnx_model, images, 100)
        assert maps.shape == ref_maps.shape == (batch, 1, 64, 64)
        assert float((maps - ref_maps).abs().max()) <= MAX_MAP_DIFF
        assert float((scores - ref_scores).abs().max()) <= MAX_MAP_DIFF


def test_predict_and_evaluate_run_the_exported_model_like_the_checkpoint(trained, exported):
    data, ckpt = trained
    by_torch = evaluate(ckpt, data, "tiny", device="cpu", progress=False)
    by_onnx = evaluate(exported, data, "tiny", device="cpu", progress=False)
    assert by_onnx["n_images"] == by_torch["n_images"] == 7
    for key in ("image_auroc", "pixel_auroc"):
        assert by_onnx["overall"][key] == pytest.approx(by_torch["overall"][key], abs=1e-6)
    assert by_onnx["decision"]["accuracy"] == by_torch["decision"]["accuracy"]

    images = sorted((Path(data) / "tiny" / "test").rglob("*.png"))
    torch_pred = Predictor.from_checkpoint(ckpt, device="cpu", backend="torch")
    onnx_pred = Predictor.from_checkpoint(exported)
    assert onnx_pred.threshold == pytest.approx(torch_pred.threshold)
    t_scores = np.array([torch_pred.predict(p).score for p in images])
    o_scores = np.array([onnx_pred.predict(p).score for p in images])
    np.testing.assert_allclose(o_scores, t_scores, atol=MAX_MAP_DIFF)
    assert list(np.argsort(o_scores, kind="stable")) == list(np.argsort(t_scores, kind="stable"))  # same ranking


def test_cli_export_then_predict_with_onnxruntime(trained, tmp_path, capsys):
    data, ckpt = trained
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "maps match PyTorch within 1e-4" in capsys.readouterr().out and out.is_file()
    assert list(tmp_path.iterdir()) == [out]  # no temporary file (or its weights) is left beside it
    image = next((Path(data) / "tiny" / "test" / "spot").glob("*.png"))
    assert cli_main(["predict", "--checkpoint", str(out), "--backend", "onnxruntime", str(image),
                     "--out", str(tmp_path / "pred")]) == 0
    row = capsys.readouterr().out.strip().split("\t")
    assert row[0] == str(image) and row[2] in ("normal", "anomalous")
    by_torch = Predictor.from_checkpoint(ckpt, device="cpu", backend="torch")
    assert float(row[1]) == pytest.approx(by_torch.predict(image).score, abs=1e-4)


def test_cli_predict_runs_a_checkpoint_through_its_cached_graph(trained, tmp_path, monkeypatch, capsys):
    """The default route of `memseg predict` on a .pt: exported once into the cache, then reused; a
    retrained (changed) checkpoint gets a fresh export. The float32 route (a CPU without native bf16;
    tests/test_mixed_precision.py checks the bf16 one)."""
    from memseg.engine import inference, mixed_precision
    from memseg.engine.checkpoint import save_checkpoint
    from memseg.engine.export import CACHE_ENV, cached_onnx

    monkeypatch.setattr(mixed_precision, "native_bf16", lambda: False)
    monkeypatch.setattr(inference, "EXPORT_WORTH_IMAGES", 1)  # one image is a job worth exporting for, here
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data, ckpt = trained
    image = next((Path(data) / "tiny" / "test" / "spot").glob("*.png"))
    for run, says in ((1, "exporting"), (2, None)):
        assert cli_main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / f"p{run}"),
                         "--device", "cpu"]) == 0
        captured = capsys.readouterr()
        assert (says in captured.err) if says else ("exporting" not in captured.err)
        row = captured.out.strip().split("\t")
        torch_score = Predictor.from_checkpoint(ckpt, device="cpu", backend="torch").predict(image).score
        assert float(row[1]) == pytest.approx(torch_score, abs=1e-4)
    model, info = load_checkpoint(ckpt, device="cpu")
    changed = save_checkpoint(tmp_path / ckpt.name, model, config=info["config"], threshold=0.123)
    assert cached_onnx(changed) != cached_onnx(ckpt) and cached_onnx(ckpt).parent == tmp_path / "cache" / "onnx"
    assert sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir()) == sorted([cached_onnx(ckpt).name,
                                                                                      cached_onnx(changed).name])


def test_cli_errors_are_one_line(trained, exported, tmp_path, capsys):
    data, ckpt = trained
    before = exported.read_bytes()
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(exported)]) == 2  # never replaced silently
    err = capsys.readouterr().err
    assert err.startswith("memseg export: error:") and "already exists" in err and len(err.strip().splitlines()) == 1
    assert exported.read_bytes() == before
    image = str(next((Path(data) / "tiny" / "test" / "good").glob("*.png")))
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--backend", "onnxruntime", image, "--out",
                     str(tmp_path / "a")]) == 2
    assert "memseg export --checkpoint" in capsys.readouterr().err
    assert cli_main(["predict", "--checkpoint", str(exported), "--backend", "torch", image, "--out",
                     str(tmp_path / "b")]) == 2
    assert "exported ONNX model" in capsys.readouterr().err
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model\n")
    assert cli_main(["predict", "--checkpoint", str(fake), image, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "memseg export" in err and len(err.strip().splitlines()) == 1


def test_benchmark_measures_onnxruntime_beside_torch_in_one_run(load_benchmark, capsys):
    bench = load_benchmark("bench_model")
    assert bench.main(["--what", "infer", "--backend", "torch", "onnxruntime", "--device", "cpu", "--size", "64",
                       "--batch", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    measured = {r["backend"]: r for r in rows if r.get("bench") == "inference"}
    assert set(measured) == {"torch", "onnxruntime"} and all(r["img_per_s"] > 0 for r in measured.values())
    ratio = next(r for r in rows if r.get("bench") == "inference_ratio")
    assert ratio["torch_over_onnxruntime"] == pytest.approx(
        measured["torch"]["p50_ms"] / measured["onnxruntime"]["p50_ms"], rel=0.02)
    with pytest.raises(ValueError, match="onnxruntime is measured on the CPU in float32"):
        bench.bench_inference(batch=1, size=64, device="cpu", dtype=torch.bfloat16, backend="onnxruntime")
