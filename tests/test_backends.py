"""The inference protocol, the typed checkpoint record, the one checkpoint migration and the exported DI* search."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_data import make_tiny_model

from memseg.engine.backends import InferenceBackend, TorchBackend, as_backend
from memseg.engine.checkpoint import load_checkpoint, migrate_checkpoint, read_checkpoint, save_checkpoint
from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.export import exportable, exported_distances
from memseg.engine.train_config import TrainConfig
from memseg.utils import normalize


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("memseg", memory_size=3)  # the shared tiny MemSeg (tests/tiny_data.py)


def test_a_torch_model_is_an_inference_backend(model):
    backend = as_backend(model, "cpu")
    assert isinstance(backend, TorchBackend) and isinstance(backend, InferenceBackend)
    assert as_backend(backend) is backend  # a backend passes through
    assert (backend.name, backend.model_name, backend.input_size) == ("torch", "memseg", (64, 64))
    assert backend.verdict_margin == 0.0 and backend.image_score is None  # float32; the top-k image score
    x = normalize(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(backend.anomaly_map(x), model.anomaly_map(x))
    with pytest.raises(TypeError, match="InferenceBackend"):
        as_backend(object())


def test_the_record_of_a_checkpoint_is_typed_and_round_trips_through_onnx_metadata(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, config={"category": "tiny", "top_k": 7, "steps": 9}, step=4,
                           threshold=0.25, extra={"validation": {"scores": [0.1, 0.2]}})
    record = CheckpointRecord.from_checkpoint(read_checkpoint(path), path)
    assert (record.model_name, record.input_size, record.top_k, record.threshold) == ("memseg", (64, 64), 7, 0.25)
    assert (record.category, record.step, record.steps_planned, record.path) == ("tiny", 4, 9, str(path))
    assert record.validation_scores == (0.1, 0.2) and record.model_config["memory_size"] == 3
    back = CheckpointRecord.from_onnx_metadata(record.onnx_metadata(), path)
    expected = {**record.__dict__, "model_config": {}, "steps_planned": None, "backend": "onnxruntime"}
    assert back == CheckpointRecord(**expected)  # what an exported model keeps, run by onnxruntime


def test_the_record_refuses_what_scoring_cannot_use_naming_the_file():
    assert CheckpointRecord("memseg", [32, 48]).top_k == TrainConfig.top_k  # the default has one home
    for changes, what in (({"threshold": math.nan}, "threshold nan"), ({"threshold": 1.5}, "threshold 1.5"),
                          ({"top_k": 0}, "top_k 0"), ({"input_size": (0, 32)}, "input size"),
                          ({"category": 3}, "category 3"), ({"validation_scores": ["x"]}, "validation scores"),
                          ({"input_size": None}, "no input size")):
        with pytest.raises(ValueError, match=f"^bad.pt: stor.*{what}"):
            CheckpointRecord(**{"model_name": "memseg", "input_size": (32, 32), "path": "bad.pt", **changes})


def test_old_checkpoints_are_migrated_in_one_place(model, tmp_path):
    state = {k: v for k, v in model.state_dict().items() if ".scale" not in k}
    config = {k: v for k, v in model.config_dict().items() if k not in ("head", "attention")}
    old = {"model_name": "memseg", "model_config": config, "model_state": state}
    new = migrate_checkpoint(old)
    assert (new["model_config"]["head"], new["model_config"]["attention"]) == ("paper", "literal")
    assert all(torch.allclose(new["model_state"][f"memory.scale{i}"], s) for i, s in enumerate(model.memory.scales, 1))
    assert "memory.scale1" not in old["model_state"] and "head" not in old["model_config"]  # the input is untouched
    current = {"model_name": "memseg", "model_config": model.config_dict(), "model_state": model.state_dict()}
    assert migrate_checkpoint(current)["model_config"] == current["model_config"]
    assert migrate_checkpoint({"model_name": "draem", "model_state": {}}) == {"model_name": "draem", "model_state": {}}
    # loading goes through it: a checkpoint written before the scales loads with them rebuilt
    path = save_checkpoint(tmp_path / "old.pt", model)
    raw = torch.load(path, weights_only=True)
    raw["model_state"] = state
    torch.save(raw, path)
    loaded, _ = load_checkpoint(path, device="cpu")
    assert loaded.memory.ready and all(torch.allclose(a, b) for a, b in zip(loaded.memory.scales, model.memory.scales))


def test_the_exported_search_is_the_search_and_is_put_back(model):
    features = model.encoder.forward_frozen(normalize(torch.rand(2, 3, 64, 64)))[1:4]
    bank = model.memory
    assert torch.allclose(exported_distances(bank, features), bank.distances(features), rtol=1e-5)
    with exportable(model):
        assert bank.distances.func is exported_distances  # what torch.onnx.export traces
    assert bank.distances.__func__ is type(bank).distances  # the model's own search again
