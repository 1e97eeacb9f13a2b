"""Checkpoints: atomic write, round trip with torch.load(weights_only=True), every error case."""

from __future__ import annotations

import os

import pytest
import torch

from memseg.engine.checkpoint import (
    FORMAT_VERSION,
    MEMORY_IMAGES,
    atomic_torch_save,
    is_slim,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from memseg.models import build_model
from memseg.utils import normalize


@pytest.fixture(scope="module")
def tiny_model(tiny_model):
    """This module's model: the shared factory's (conftest) 64 px MemSeg, memory bank of 2 random images."""
    return tiny_model("memseg")


def test_round_trip_restores_weights_memory_and_metadata(tmp_path, tiny_model):
    opt = torch.optim.SGD([p for p in tiny_model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "run" / "ck.pt", tiny_model, optimizer=opt, config={"steps": 7, "category": "x"},
                           step=7, extra={"note": "hello", "t": torch.arange(3)}, threshold=0.42)
    assert path.is_file()
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must load in the safe mode
    assert raw["format_version"] == 1 and raw["model_name"] == "memseg"  # full checkpoints keep format 1
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
    with pytest.raises(ValueError, match=r"bad\.pt is not a memseg checkpoint") as err:
        load_checkpoint(p, device="cpu")
    message = str(err.value)
    assert "weights_only=False" not in message and "Re-running" not in message  # never advice to load unsafely
    assert len(message.splitlines()) == 1 and "memseg train" in message
    if content.startswith(b"this is a text"):
        assert "it is a text file" in message


class _Pickled:  # a class pickled into a .pt file: weights_only=True refuses to unpickle it
    pass


def test_pickled_object_is_named_without_unsafe_advice(tmp_path):
    p = tmp_path / "pickled.pt"
    torch.save({"obj": _Pickled()}, p)
    with pytest.raises(ValueError, match="pickled Python object") as err:
        load_checkpoint(p, device="cpu")
    assert "weights_only=False" not in str(err.value)


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


# ------------------------------------------------------------------------ slim inference checkpoints
def _memseg_with_image_bank(size: int = 64, memory_size: int = 3):
    """A MemSeg whose bank is built from uint8 images, as training builds it; returns (model, images)."""
    torch.manual_seed(3)
    model = build_model("memseg", {"input_size": (size, size), "memory_size": memory_size, "weights": "random"})
    images = torch.randint(0, 256, (memory_size, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    model.prepare(normalize(images.float().div_(255.0)))
    return model.eval(), images


def test_slim_checkpoint_stores_images_not_bank_and_rebuilds_it_exactly(tmp_path):
    model, images = _memseg_with_image_bank()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    full = save_checkpoint(tmp_path / "last.pt", model, optimizer=opt, step=5, threshold=0.3)
    slim = save_checkpoint(tmp_path / "final.pt", model, config={"steps": 5}, step=5, threshold=0.3,
                           extra={"validation": {"f1_max": 0.5}}, weights_source="random", memory_images=images)
    raw = torch.load(slim, map_location="cpu", weights_only=True)  # the safe mode
    assert is_slim(raw) and not is_slim(torch.load(full, weights_only=True))
    assert raw["format_version"] == 2 <= FORMAT_VERSION
    assert raw["optimizer_state"] is None and raw["scheduler_state"] is None
    assert not any(k.startswith("memory.level") for k in raw["model_state"])
    assert raw[MEMORY_IMAGES].dtype == torch.uint8 and torch.equal(raw[MEMORY_IMAGES], images)
    bank_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
                     if k.startswith("memory.level"))
    assert full.stat().st_size - slim.stat().st_size >= bank_bytes - images.numel()  # the bank is not in the file

    rebuilt, info = load_checkpoint(slim, device="cpu")
    reference, _ = load_checkpoint(full, device="cpu")
    assert info["threshold"] == pytest.approx(0.3) and info["extra"]["validation"] == {"f1_max": 0.5}
    assert info["weights_source"] == "random" and info["step"] == 5
    for k, v in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), f"{k} differs after rebuilding the bank"
    x = normalize(torch.rand(2, 3, 64, 64))
    assert torch.equal(rebuilt.anomaly_map(x), reference.anomaly_map(x))


def test_slim_checkpoint_memory_images_are_checked(tmp_path):
    model, images = _memseg_with_image_bank()
    with pytest.raises(ValueError,
                       match=r"expected the memory bank's source images as a \(3, 3, 64, 64\) uint8 tensor"):
        save_checkpoint(tmp_path / "bad.pt", model, memory_images=images.float())
    p = save_checkpoint(tmp_path / "final.pt", model, memory_images=images)
    ck = torch.load(p, weights_only=True)
    ck[MEMORY_IMAGES] = ck[MEMORY_IMAGES][:2]  # a damaged file: N=2 images for a bank of N=3
    torch.save(ck, p)
    with pytest.raises(ValueError, match=r"final\.pt: expected the memory bank's source images as a \(3, 3, 64, 64\)"):
        load_checkpoint(p, device="cpu")
