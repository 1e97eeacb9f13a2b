"""Checkpoints: atomic write, round trip with torch.load(weights_only=True), every error case."""

from __future__ import annotations

import os

import pytest
import torch

from memseg.checkpoint import FORMAT_VERSION, atomic_torch_save, load_checkpoint, read_checkpoint, save_checkpoint
from memseg.models import build_model
from memseg.utils import normalize


def _tiny_memseg(seed: int = 0, size: int = 64, memory_size: int = 2):
    torch.manual_seed(seed)
    model = build_model("memseg", {"input_size": (size, size), "memory_size": memory_size, "weights": "random"})
    g = torch.Generator().manual_seed(seed)
    model.prepare(normalize(torch.rand(memory_size, 3, size, size, generator=g)))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_memseg()


def test_round_trip_restores_weights_memory_and_metadata(tmp_path, tiny_model):
    opt = torch.optim.SGD([p for p in tiny_model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "run" / "ck.pt", tiny_model, optimizer=opt, config={"steps": 7, "category": "x"},
                           step=7, extra={"note": "hello", "t": torch.arange(3)}, threshold=0.42)
    assert path.is_file()
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must load in the safe mode
    assert raw["format_version"] == FORMAT_VERSION and raw["model_name"] == "memseg"
    model, info = load_checkpoint(path, device="cpu")
    ref = tiny_model.state_dict()
    got = model.state_dict()
    assert set(got) == set(ref)
    assert any("memory" in k for k in got), "the memory bank must be part of the state dict"
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert info["step"] == 7 and info["threshold"] == pytest.approx(0.42)
    assert info["config"]["category"] == "x" and info["extra"]["note"] == "hello"
    assert info["weights_source"] == "random" and info["optimizer_state"] is not None
    x = normalize(torch.rand(2, 3, 64, 64))
    assert torch.allclose(model.anomaly_map(x), tiny_model.anomaly_map(x))
    assert not model.training


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model, step=1)
    before = path.read_bytes()

    def exploding_save(obj, fh, *a, **k):
        fh.write(b"partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"], "temporary file must be cleaned up"
    assert read_checkpoint(path)["step"] == 1


def test_atomic_torch_save_replaces_in_place(tmp_path):
    p = atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    atomic_torch_save({"a": 2}, p)
    assert torch.load(p, weights_only=True) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.pt"]


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "last.pt"
    with pytest.raises(FileNotFoundError, match="nope/last.pt"):
        load_checkpoint(missing, device="cpu")


@pytest.mark.parametrize("content", [b"", b"this is a text file\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_non_checkpoint_files_are_rejected(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.pt is not a memseg checkpoint"):
        load_checkpoint(p, device="cpu")


def test_foreign_torch_file_is_rejected(tmp_path, tiny_model):
    p = tmp_path / "plain_state_dict.pt"
    torch.save(tiny_model.state_dict(), p)  # a bare state dict, not a memseg-kit checkpoint
    with pytest.raises(ValueError, match="is not a memseg checkpoint"):
        load_checkpoint(p, device="cpu")


def test_truncated_checkpoint_is_rejected(tmp_path, tiny_model):
    p = save_checkpoint(tmp_path / "ck.pt", tiny_model)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a memseg checkpoint"):
        load_checkpoint(p, device="cpu")


def test_newer_format_is_rejected(tmp_path, tiny_model):
    p = save_checkpoint(tmp_path / "ck.pt", tiny_model)
    ck = torch.load(p, weights_only=True)
    ck["format_version"] = FORMAT_VERSION + 1
    torch.save(ck, p)
    with pytest.raises(ValueError, match=f"format_version={FORMAT_VERSION + 1}"):
        load_checkpoint(p, device="cpu")


def test_mismatches_name_stored_and_expected_values(tmp_path, tiny_model):
    p = save_checkpoint(tmp_path / "ck.pt", tiny_model)
    with pytest.raises(ValueError, match=r"input size \(64, 64\).*input size \(256, 256\) was expected"):
        load_checkpoint(p, device="cpu", input_size=256)
    with pytest.raises(ValueError, match=r"N=2 samples.*N=30 was expected"):
        load_checkpoint(p, device="cpu", memory_size=30)
    with pytest.raises(ValueError, match=r"'memseg' model.*'draem' model was expected"):
        load_checkpoint(p, device="cpu", model="draem")
    model, _ = load_checkpoint(p, device="cpu", model="memseg", input_size=(64, 64), memory_size=2)
    assert model.config.memory_size == 2


def test_weights_that_do_not_fit_the_stored_config(tmp_path, tiny_model):
    p = save_checkpoint(tmp_path / "ck.pt", tiny_model)
    ck = torch.load(p, weights_only=True)
    ck["model_config"]["memory_size"] = 3  # config says N=3, stored bank has N=2
    torch.save(ck, p)
    with pytest.raises(ValueError, match="stored weights do not fit"):
        load_checkpoint(p, device="cpu")


def test_checkpoint_from_before_the_head_and_attention_options_loads_as_the_paper_model(tmp_path):
    """A checkpoint written before `head`, `attention` and the reference scales existed holds the paper's
    head and literal attention: it loads as such, and its memory's scales are rebuilt from the bank."""
    torch.manual_seed(0)
    old = build_model("memseg", {"input_size": (64, 64), "memory_size": 2, "weights": "random",
                                 "head": "paper", "attention": "literal"})
    old.prepare(normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))))
    path = save_checkpoint(tmp_path / "old.pt", old.eval())
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("head", "attention"):
        raw["model_config"].pop(key)
    raw["model_state"] = {k: v for k, v in raw["model_state"].items() if ".scale" not in k}
    torch.save(raw, path)
    model, _ = load_checkpoint(path, device="cpu")
    assert model.config.head == "paper" and model.config.attention == "literal"
    x = normalize(torch.rand(1, 3, 64, 64))
    assert torch.equal(model.anomaly_map(x), old.anomaly_map(x))
    assert all(torch.allclose(a, b) for a, b in zip(model.memory.scales, old.memory.scales))
