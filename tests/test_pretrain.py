"""`memseg pretrain`: an encoder made without any download, resumable, and what the kit ships."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from tiny_data import make_tiny_dataset

from memseg.apps.cli import main
from memseg.engine.checkpoint import load_checkpoint
from memseg.models.encoder_weights import FROZEN_PREFIXES, kit_made, offline_weights_path, provenance_path
from memseg.models.memseg import MemSeg, MemSegConfig
from memseg.utils import normalize, seed_everything

ARGS = ["--category", "tiny", "--size", "32", "--memory-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("pretrain") / "data", n_train=10)


def test_pretrain_writes_an_encoder_that_train_freezes(tiny: Path, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "enc.pt"
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "4", "--out", str(out)]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state and all(k.startswith(FROZEN_PREFIXES) for k in state)  # stem + blocks 1-3 only
    assert state["layer1.0.conv1.weight"].dtype == torch.float16
    record = json.loads(provenance_path(out).read_text())
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and record["steps_done"] == 4
    assert record["config"]["seed"] == 0 and "memseg pretrain" in record["command"] and kit_made(str(out))

    # the blocks were trained (they moved away from the random start of the run's seed)
    run = load_checkpoint(out.with_suffix(".run") / "final.pt", device="cpu")[0]
    seed_everything(0)
    start = MemSeg(MemSegConfig(input_size=(32, 32), memory_size=2, weights="random", train_encoder=True))
    assert run.config.train_encoder
    moved = (run.encoder.backbone.layer3[0].conv1.weight - start.encoder.backbone.layer3[0].conv1.weight).abs().max()
    assert 0 < moved < 0.5 * start.encoder.backbone.layer3[0].conv1.weight.abs().max()

    # memseg train freezes it, and the recipe of a kit-made encoder is the offline one
    model = MemSeg(MemSegConfig(input_size=(32, 32), memory_size=2, weights=str(out)))
    assert model.weights_source == str(out.resolve())
    assert torch.equal(model.encoder.backbone.layer2[1].conv2.weight, state["layer2.1.conv2.weight"].float())
    assert not any(p.requires_grad for p in model.encoder.backbone.layer3.parameters())

    # nothing is overwritten silently
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "4", "--out", str(out)]) == 2


def test_pretrain_stops_at_its_time_budget_and_resumes(tiny: Path, tmp_path: Path, one_thread,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from memseg.engine import pretrain as pt

    clock = iter(range(0, 10_000, 30))  # every reading of the clock is 30 s later: the budget of 1 min ends early
    monkeypatch.setattr(pt.time, "monotonic", lambda: float(next(clock)))
    out = tmp_path / "enc.pt"
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "6", "--minutes", "1", "--out", str(out)]) == 0
    first = json.loads(provenance_path(out).read_text())["steps_done"]
    assert 1 <= first < 6 and "time budget of 1.0 min spent" in capsys.readouterr().out
    monkeypatch.setattr(pt.time, "monotonic", lambda: 0.0)
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "6", "--out", str(out), "--resume",
                 "--overwrite"]) == 2
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "6", "--out", str(tmp_path / "other.pt")]) == 0
    out.unlink()
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--steps", "6", "--out", str(out), "--resume"]) == 0
    assert json.loads(provenance_path(out).read_text())["steps_done"] == 6


def test_pretrain_refuses_bad_options(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--out", str(tmp_path / "enc.pth")]) == 2
    assert "--out must name a .pt file" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tiny), *ARGS, "--minutes", "nan", "--out", str(tmp_path / "e.pt")]) == 2
    assert "--minutes must be a number > 0" in capsys.readouterr().err


def test_the_shipped_offline_encoder_is_what_its_provenance_says() -> None:
    path = offline_weights_path()
    if not path.is_file():
        pytest.fail(f"the kit ships its offline encoder at {path} (weights/ in the project)")
    record = json.loads(provenance_path(path).read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size <= 8 * 2**20 and record["made_by"] == "memseg pretrain"
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {k for k in MemSeg(MemSegConfig(input_size=(32, 32), memory_size=1, weights="random"))
                .encoder.backbone.state_dict() if k.startswith(FROZEN_PREFIXES)}
    assert set(state) == expected
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    model = MemSeg(MemSegConfig(input_size=(32, 32), memory_size=1, weights="offline"))
    assert model.weights_source == "offline"


def test_the_memory_follows_a_trainable_encoder(tiny: Path, tmp_path: Path, one_thread) -> None:
    """With blocks 1-3 training, the memory bank is extracted again from the current weights (every
    memory_refresh_every steps); a stale bank would hold the first weights' features."""
    from memseg.engine.checkpoint import read_checkpoint
    from memseg.engine.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data=str(tiny), category="tiny", out=str(tmp_path / "enc.pt"), steps=4, size=32,
                         memory_size=2, memory_refresh_every=2, device="cpu")
    pretrain(cfg, progress=False, command="test")
    stored = read_checkpoint(tmp_path / "enc.run" / "checkpoints" / "last.pt")
    model = MemSeg(MemSegConfig(**{**stored["model_config"], "weights": "random"}), init_weights=False).eval()
    model.load_state_dict(stored["model_state"])
    images = read_checkpoint(tmp_path / "enc.run" / "final.pt")["memory_images"]  # the memory's N source images
    bank = model.memory.level1.clone()
    model.prepare(normalize(images.float() / 255))
    assert torch.allclose(bank, model.memory.level1, atol=1e-5)

    seed_everything(0)  # the first weights' features differ: the check above can fail
    first = MemSeg(MemSegConfig(**{**stored["model_config"], "weights": "random"})).eval()
    first.prepare(normalize(images.float() / 255))
    assert not torch.allclose(bank, first.memory.level1, atol=1e-3)


@pytest.mark.parametrize("weights", ["random", "kit-made"])
def test_train_prints_and_records_the_recipe_its_encoder_resolves_to(weights: str, tiny: Path, tmp_path: Path,
                                                                     one_thread, capsys: pytest.CaptureFixture) -> None:
    from memseg.engine.checkpoint import read_checkpoint
    from memseg.models.memseg.model import recipe_for

    if weights == "kit-made":  # a file memseg pretrain wrote: its provenance says so, the offline recipe applies
        enc = tmp_path / "enc.pt"
        torch.save(MemSeg(MemSegConfig(input_size=(32, 32), memory_size=1,
                                       weights="random")).encoder.frozen_state_dict(), enc)
        provenance_path(enc).write_text(json.dumps({"made_by": "memseg pretrain"}))
        weights, family = str(enc), "offline"
    else:
        family = "random"
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny), "--category", "tiny", "--size", "32", "--steps", "2", "--weights",
                 weights,
                 "--out", str(run), "--device", "cpu", "--config", str(_config(tmp_path))]) == 0
    recipe = recipe_for(family)
    out = capsys.readouterr().out
    assert f"attention={recipe['attention']}, head={recipe['head']}, train_encoder=False" in out
    stored = read_checkpoint(run / "final.pt")["model_config"]
    assert (stored["attention"], stored["head"]) == (recipe["attention"], recipe["head"])


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text("model_options: {memory_size: 2}\nbatch_normal: 2\nbatch_anomalous: 2\n")
    return path
