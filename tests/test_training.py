"""Training: YAML config, schedule, splits, step logs, refusing to clobber a run, checkpoints by step and by
time, exact resume after a kill or Ctrl-C, the slim final.pt."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_data import make_tiny_dataset

from memseg.apps.cli import main as cli_main
from memseg.engine import training
from memseg.engine.checkpoint import is_slim, load_checkpoint, read_checkpoint, rng_state, set_rng_state
from memseg.engine.train_config import TrainConfig, load_config
from memseg.engine.training import (
    lr_factor,
    split_indices,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
# the tiny fake category has no foreground preset; the simulator says so (expected here)
pytestmark = pytest.mark.filterwarnings("ignore:no foreground preset")


# ------------------------------------------------------------------------------------------ config
def test_yaml_load_override_and_coercion(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("steps: 10\nlr: 4e-2\nmodel_options:\n  memory_size: 5\n  weights: random\nsize: [64, 96]\n")
    cfg = TrainConfig.from_yaml(p, steps=3, category="weave", seed=None, model_options={"use_memory": False})
    assert cfg.steps == 3  # flag overrides the file
    assert cfg.lr == pytest.approx(0.04) and isinstance(cfg.lr, float)  # YAML reads 4e-2 as a string
    assert cfg.category == "weave" and cfg.seed == 0  # None overrides are ignored
    assert cfg.model_options == {"memory_size": 5, "weights": "random", "use_memory": False}
    assert cfg.input_size == (64, 96)
    assert load_config(p).steps == 10


def test_unknown_key_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("steps: 10\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown TrainConfig key\(s\) \['learning_rate'\]"):
        TrainConfig.from_yaml(p)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bad, match", [
    ({"model": "resnet"}, "model must be one of"),
    ({"optimizer": "rmsprop"}, "optimizer must be"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"val_fraction": 1.5}, "val_fraction must be in"),
    ({"size": 8}, "at least 32"),
    ({"checkpoint_minutes": 0}, "checkpoint_minutes must be > 0"),
])
def test_invalid_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(bad)


def test_default_config_file_is_the_paper_setting():
    cfg = TrainConfig.from_yaml(ROOT / "configs" / "memseg_default.yaml")
    assert (cfg.steps, cfg.input_size, cfg.batch_normal, cfg.batch_anomalous) == (2700, (256, 256), 4, 4)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.04, 0.9, 5e-4)
    assert cfg.model_options["memory_size"] == 30 and cfg.top_k == 100
    # every TrainConfig field is spelled out in the default file except the per-run ones
    import yaml

    keys = set(yaml.safe_load((ROOT / "configs" / "memseg_default.yaml").read_text()))
    assert set(TrainConfig.field_names()) - keys == {"data", "category", "out", "simulation"}


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # cosine falls
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(50, TrainConfig(scheduler="constant")) == 1.0


def test_split_is_disjoint_and_seeded():
    cfg = TrainConfig(val_fraction=0.2, seed=3)
    s = split_indices(50, cfg, memory_size=5)
    assert len(s["val"]) == 10 and len(s["memory"]) == 5 and len(s["train"]) == 35
    assert set(s["val"]) | set(s["memory"]) | set(s["train"]) == set(range(50))
    assert not (set(s["val"]) & set(s["memory"])) and not (set(s["train"]) & set(s["memory"]))
    assert s == split_indices(50, cfg, memory_size=5)
    assert s != split_indices(50, TrainConfig(val_fraction=0.2, seed=4), memory_size=5)
    with pytest.raises(ValueError, match="memory bank needs N=60"):
        split_indices(50, cfg, memory_size=60)


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    g = torch.Generator().manual_seed(5)
    state = rng_state(g)
    torch.save(state, tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (torch.rand(3, generator=g), torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(state, g)
    got = (torch.rand(3, generator=g), torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert np.array_equal(got[2], expected[2]) and got[3] == expected[3]


# ---------------------------------------------------------------------------------------- training
def _fake_dtd(root: Path) -> Path:
    rng = np.random.default_rng(1)
    d = root / "images" / "striped"
    d.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"s{i}.jpg")
    return root


def _cfg(tmp_path: Path, out: str, **kw) -> TrainConfig:
    values = dict(
        data=str(tmp_path / "data"), category="tiny", size=64, steps=6, checkpoint_every=3, log_every=1,
        batch_normal=2, batch_anomalous=2, warmup_steps=2, device="cpu", val_fraction=0.2,
        model_options={"memory_size": 2, "weights": "random"}, dtd_root=str(tmp_path / "dtd"), out=str(tmp_path / out),
        checkpoint_minutes=10_000,  # checkpoints by step only, unless a test sets the clock
    )
    values.update(kw)
    return TrainConfig.from_dict(values)


@pytest.fixture
def tiny_setup(tmp_path):
    make_tiny_dataset(tmp_path / "data", n_train=12)
    _fake_dtd(tmp_path / "dtd")
    return tmp_path


_KILL_SCRIPT = """
import json, os, sys
from memseg.engine.training import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
def die(step, logs):
    if step == int(sys.argv[2]):
        os._exit(17)  # hard kill: no cleanup, no final checkpoint
train(cfg, progress=False, callback=die)
"""


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_after_kill_is_bit_identical(tiny_setup):
    tmp_path = tiny_setup
    # uninterrupted reference run
    seen: list[int] = []
    ref = train(_cfg(tmp_path, "ref"), progress=False, callback=lambda step, logs: seen.append(step))
    assert seen == [1, 2, 3, 4, 5, 6]
    assert [h["step"] for h in ref.history] == [1, 2, 3, 4, 5, 6]

    # a run killed during step 4 (after the step-3 checkpoint) in another process ...
    cfg = _cfg(tmp_path, "killed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, json.dumps(cfg.to_dict()), "4"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert read_checkpoint(Path(cfg.out) / "checkpoints" / "last.pt")["step"] == 3
    assert [r["step"] for r in _read_jsonl(Path(cfg.out) / "train_log.jsonl")] == [1, 2, 3, 4]  # step 4 got logged

    # ... resumed by a fresh config object
    res = train(_cfg(tmp_path, "killed"), progress=False, resume=True)
    assert [h["step"] for h in res.history] == [4, 5, 6]
    _assert_same_run(ref, res)


def _assert_same_run(ref, res) -> None:
    """``res`` (interrupted and resumed) ended bit-identical to ``ref`` (uninterrupted): weights, optimizer
    state, threshold, the slim final.pt and the logs."""
    a, b = read_checkpoint(ref.last), read_checkpoint(res.last)
    assert a["step"] == b["step"] == 6
    assert set(a["model_state"]) == set(b["model_state"])
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), f"{k} differs after resume"
    mom_a = [s["momentum_buffer"] for s in a["optimizer_state"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b["optimizer_state"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b))
    assert a["threshold"] == b["threshold"] and a["threshold"] is not None
    fa, fb = read_checkpoint(ref.checkpoint), read_checkpoint(res.checkpoint)
    assert all(torch.equal(v, fb["model_state"][k]) for k, v in fa["model_state"].items())
    assert torch.equal(fa["memory_images"], fb["memory_images"]) and fa["threshold"] == fb["threshold"]

    # the logs hold every step exactly once, with identical losses
    log_ref, log_res = _read_jsonl(ref.run_dir / "train_log.jsonl"), _read_jsonl(res.run_dir / "train_log.jsonl")
    assert [r["step"] for r in log_res] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log_res] == [r["loss"] for r in log_ref]
    with open(res.run_dir / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "l1", "focal", "lr", "seconds"} <= set(rows[0])
    assert float(rows[-1]["loss"]) == pytest.approx(log_ref[-1]["loss"])


def test_fresh_run_refuses_existing_checkpoints(tiny_setup):
    tmp_path = tiny_setup
    cfg = _cfg(tmp_path, "run", steps=2, checkpoint_every=5, val_fraction=0.0)
    first = train(cfg, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (first.checkpoint, first.last)}
    with pytest.raises(ValueError, match=r"already has checkpoints \(checkpoints/last\.pt\); pass --resume "
                                         r"\(resume=True\) "
                                         r"to continue it, --overwrite \(overwrite=True\) to start over"):
        train(_cfg(tmp_path, "run", steps=2, checkpoint_every=5, val_fraction=0.0), progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    notes: list[str] = []
    again = train(_cfg(tmp_path, "run", steps=2, checkpoint_every=5, val_fraction=0.0), progress=False, overwrite=True,
                  log=notes.append)
    notes = _without_recipe(notes)
    assert notes == [(f"overwrite: removing the previous run's files in {again.run_dir}: config.yaml, train_log.csv, "
                      "train_log.jsonl, final.pt, checkpoints/last.pt")]
    assert again.threshold is None  # no validation split -> no threshold
    ck = read_checkpoint(again.last)
    assert ck["threshold"] is None and ck["step"] == 2 and ck["config"]["steps"] == 2
    assert ck["extra"]["rng"]["generator"].dtype == torch.uint8
    assert [r["step"] for r in _read_jsonl(again.run_dir / "train_log.jsonl")] == [1, 2]


def test_non_empty_folder_without_checkpoints_is_refused_and_overwrite_names_what_it_removes(tiny_setup):
    """A folder with an earlier run's config and logs but no checkpoint (a run killed early) is not silently reused."""
    tmp_path = tiny_setup
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("config.yaml", "steps: 99\n"), ("train_log.jsonl", '{"step": 1}\n'), ("notes.txt", "mine\n")):
        (run / name).write_text(text)
    with pytest.raises(ValueError, match=r"run folder .*/run is not empty \(config.yaml, notes.txt, train_log.jsonl\) "
                                         r"and has no checkpoint to resume; pass --overwrite \(overwrite=True\)"):
        train(_cfg(tmp_path, "run", steps=1, val_fraction=0.0), progress=False)
    assert ((run / "config.yaml").read_text() == "steps: 99\n"
            and (run / "train_log.jsonl").read_text() == '{"step": 1}\n')
    notes: list[str] = []
    res = train(_cfg(tmp_path, "run", steps=1, val_fraction=0.0), progress=False, overwrite=True, log=notes.append)
    notes = _without_recipe(notes)
    assert notes[0] == f"overwrite: removing the previous run's files in {run}: config.yaml, train_log.jsonl"
    assert "kept 1 other entry" in notes[1] and "notes.txt" in notes[1]
    assert (run / "notes.txt").read_text() == "mine\n"  # not ours: kept
    assert [r["step"] for r in _read_jsonl(run / "train_log.jsonl")] == [1]
    assert read_checkpoint(res.checkpoint)["config"]["steps"] == 1


def _train_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("model_options: {memory_size: 2, weights: random}\nbatch_normal: 2\nbatch_anomalous: 2\n"
                   f"val_fraction: 0.0\nwarmup_steps: 1\ndtd_root: {tmp_path / 'dtd'}\n")
    return ["train", "--data", str(tmp_path / "data"), "--category", "tiny", "--config", str(cfg), "--size", "64",
            "--device", "cpu", "--out", str(out), *extra]


def test_cli_out_that_is_a_file_fails_before_loading_anything(tiny_setup, capsys, monkeypatch):
    import memseg.data

    def no_loading(*_a, **_k):
        raise AssertionError("the data was loaded although --out is a file")

    monkeypatch.setattr(memseg.data, "load_split", no_loading)
    out = tiny_setup / "results.txt"
    out.write_text("keep me\n")
    for extra in ((), ("--resume",), ("--overwrite",)):
        assert cli_main(_train_args(tiny_setup, out, "--steps", "1", *extra)) == 2
        err = capsys.readouterr().err
        assert err == (f"memseg train: error: run folder {out} is a file, not a folder; choose another --out "
                       "(a folder, created when missing)\n")
    assert cli_main(_train_args(tiny_setup, out / "run", "--steps", "1")) == 2
    assert f"run folder {out / 'run'} lies inside {out}, which is a file" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"


def test_cli_refuses_a_non_empty_folder_and_overwrite_says_what_it_removes(tiny_setup, capsys):
    run = tiny_setup / "run"
    run.mkdir()
    (run / "train_log.csv").write_text("step,loss\n1,0.5\n")
    assert cli_main(_train_args(tiny_setup, run, "--steps", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memseg train: error: run folder {run} is not empty (train_log.csv) and has no checkpoint")
    assert "--overwrite" in err and "overwrite=True" in err and len(err.strip().splitlines()) == 1
    assert (run / "train_log.csv").read_text() == "step,loss\n1,0.5\n"
    assert cli_main(_train_args(tiny_setup, run, "--steps", "1", "--overwrite")) == 0
    out = capsys.readouterr().out
    assert f"overwrite: removing the previous run's files in {run}: train_log.csv" in out
    assert f"final model: {run / 'final.pt'}" in out and ("resumable checkpoint: "
                                                          f"{run / 'checkpoints' / 'last.pt'}") in out
    assert is_slim(read_checkpoint(run / "final.pt")) and read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


def test_cli_says_which_textures_the_run_uses(tiny_setup, capsys, monkeypatch):
    monkeypatch.delenv("MEMSEG_DTD", raising=False)
    dtd = (tiny_setup / "dtd").resolve()
    assert cli_main(_train_args(tiny_setup, tiny_setup / "a", "--steps", "1", "--dtd", str(dtd))) == 0
    assert f"textures: DTD at {dtd} (--dtd)" in capsys.readouterr().out
    assert read_checkpoint(tiny_setup / "a" / "final.pt")["config"]["dtd_root"] == str(dtd)

    # no flag, no env, no project default: one plain line saying where it looked, no API warning
    monkeypatch.setenv("MEMSEG_ROOT", str(tiny_setup / "project"))
    args = _train_args(tiny_setup, tiny_setup / "b", "--steps", "1")
    cfg_file = Path(args[args.index("--config") + 1])
    cfg_file.write_text("\n".join(line for line in cfg_file.read_text().splitlines()
                                  if not line.startswith("dtd_root")))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert f"textures: no DTD found (looked in {tiny_setup / 'project' / 'data' / 'dtd'}" in captured.out
    assert "--dtd" in captured.out and "dtd_root=None" not in captured.err
    assert not [w for w in record if "DTD" in str(w.message)]


@pytest.mark.parametrize("flags, yaml_text, expected", [
    (["--steps", "0"], "", "memseg train: error: --steps must be >= 1, got 0"),
    (["--size", "8"], "", "memseg train: error: --size must be at least 32 pixels per side, got (8, 8)"),
    ([], "steps: 0\n", "memseg train: error: {config}: steps must be >= 1, got 0"),
    (["--steps", "0"], "lr: -1\n", "memseg train: error: --steps must be >= 1, got 0"),
    (["--steps", "3"], "lr: -1\n", "memseg train: error: {config}: lr must be > 0, got -1.0"),
])
def test_cli_config_errors_name_the_flag_or_the_file(tmp_path, capsys, flags, yaml_text, expected):
    """A bad value is blamed on where it came from: the flag, or the --config file."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text or "seed: 1\n")
    args = ["train", "--data", str(tmp_path), "--category", "x", "--out", str(tmp_path / "r"), "--config", str(config),
            *flags]
    assert cli_main(args) == 2
    assert capsys.readouterr().err.strip() == expected.format(config=config)


def test_checkpoint_by_time_before_checkpoint_every(tiny_setup, monkeypatch):
    """With a clock that advances 50 s per step, the default 2-minute interval writes last.pt after step 3,
    long before checkpoint_every (1000); a frozen clock writes it only at the end."""
    clock = [0.0]
    monkeypatch.setattr(training, "_now", lambda: clock[0])
    for advance, expected in ((50.0, [None, None, None, 3, 3, 3]), (0.0, [None] * 6)):
        cfg = _cfg(tiny_setup, f"timed{advance:.0f}", checkpoint_every=1000, checkpoint_minutes=2.0, val_fraction=0.0)
        last = Path(cfg.out) / "checkpoints" / "last.pt"
        seen: list[int | None] = []

        def tick(step, logs, last=last, seen=seen, advance=advance):
            seen.append(read_checkpoint(last)["step"] if last.is_file() else None)  # before this step's own check
            clock[0] += advance

        res = train(cfg, progress=False, callback=tick)
        assert seen == expected
        assert read_checkpoint(res.last)["step"] == 6


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "callback"])
def test_interrupt_saves_the_completed_step_and_resume_is_bit_identical(tiny_setup, monkeypatch, how):
    """Ctrl-C (SIGINT) or SIGTERM arriving in the middle of step 4 of 6, with no checkpoint due, lets step 4
    finish, writes last.pt at step 4 and says how to go on; so does a KeyboardInterrupt raised after step 4
    (a callback). Resuming ends exactly where an uninterrupted run ends."""
    tmp_path = tiny_setup
    ref = train(_cfg(tmp_path, "ref", checkpoint_every=1000), progress=False)
    armed = [False]
    real_normalize = training.normalize

    def normalize_then_signal(x):  # called inside every training step, before the forward pass
        if armed[0]:
            armed[0] = False
            os.kill(os.getpid(), getattr(signal, how))
        return real_normalize(x)

    def after_step(step, logs):
        if step == 3 and how != "callback":
            armed[0] = True  # the signal comes in the middle of step 4
        if step == 4 and how == "callback":
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "normalize", normalize_then_signal)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    notes: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "stopped", checkpoint_every=1000), progress=False, callback=after_step, log=notes.append)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    last = tmp_path / "stopped" / "checkpoints" / "last.pt"
    assert read_checkpoint(last)["step"] == 4 and not (tmp_path / "stopped" / "final.pt").exists()
    assert _without_recipe(notes) == [f"interrupted: saved {last} at step 4 of 6; continue with resume=True and the "
                                      "same config (out)"]
    assert [r["step"] for r in _read_jsonl(tmp_path / "stopped" / "train_log.jsonl")] == [1, 2, 3, 4]
    monkeypatch.undo()
    res = train(_cfg(tmp_path, "stopped", checkpoint_every=1000), progress=False, resume=True)
    assert [h["step"] for h in res.history] == [5, 6]
    _assert_same_run(ref, res)


def test_final_checkpoint_is_slim_and_predicts_like_the_resumable_one(tiny_setup):
    res = train(_cfg(tiny_setup, "run"), progress=False)
    assert res.checkpoint == res.run_dir / "final.pt" and res.last == res.run_dir / "checkpoints" / "last.pt"
    final, last = read_checkpoint(res.checkpoint), read_checkpoint(res.last)
    assert is_slim(final) and final["optimizer_state"] is None and final["scheduler_state"] is None
    assert "rng" not in final["extra"] and final["extra"]["splits"] == last["extra"]["splits"]
    assert final["threshold"] == last["threshold"] == res.threshold is not None
    assert final["extra"]["validation"]["f1_max"] == res.validation["f1_max"]
    assert final["config"] == last["config"] and final["weights_source"] == last["weights_source"] == "random"
    assert res.checkpoint.stat().st_size < res.last.stat().st_size
    a, _ = load_checkpoint(res.checkpoint, device="cpu")
    b, _ = load_checkpoint(res.last, device="cpu")
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k


def test_demo_prepare_resumes_an_interrupted_run_and_keeps_only_final_pt(tiny_setup):
    """`prepare` continues a demo model whose training was interrupted (last.pt, no final.pt) and ends with
    the slim final.pt as the cached model."""
    from memseg.apps import demo

    settings = demo.DemoSettings(data=tiny_setup / "data", category="tiny", runs=tiny_setup / "runs", device="cpu",
                                 dtd=tiny_setup / "dtd", size=64, steps=4, batch_size=4, memory_size=2,
                                 weights="random",
                                 extra_train={"val_fraction": 0.0})
    cfg = demo._train_config(settings, demo.demo_checkpoint_path(settings).parent)

    def ctrl_c(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callback=ctrl_c, log=lambda _m: None)
    lines: list[str] = []
    ckpt = demo.prepare(settings, progress=False, log=lines.append)
    assert ckpt == demo.demo_checkpoint_path(settings) and is_slim(read_checkpoint(ckpt))
    assert any("resuming a quick demo model" in line for line in lines)
    assert [r["step"] for r in _read_jsonl(ckpt.parent / "train_log.jsonl")] == [1, 2, 3, 4]
    assert not (ckpt.parent / "checkpoints").exists()


def test_resume_checks(tiny_setup):
    tmp_path = tiny_setup
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(tmp_path, "none"), progress=False, resume=True)
    train(_cfg(tmp_path, "r", steps=1, val_fraction=0.0), progress=False)
    with pytest.raises(ValueError, match=r"config differs.*lr: stored 0.04, given 0.1"):
        train(_cfg(tmp_path, "r", steps=2, val_fraction=0.0, lr=0.1), progress=False, resume=True)


@pytest.mark.parametrize("name, options", [
    ("draem", {"base_width": 8, "disc_base_width": 8, "simulation_source": "structure"}),
    ("mmr", {"embed_dim": 32, "depth": 1, "num_heads": 2, "weights": "random"}),
])
def test_baseline_models_train_and_reload(tiny_setup, name, options):
    """DRAEM and MMR go through the same loop, checkpoint and predictor."""
    from memseg.engine.inference import Predictor

    tmp_path = tiny_setup
    cfg = _cfg(tmp_path, name, model=name, model_options=options, steps=2, optimizer="adamw", lr=1e-3)
    res = train(cfg, progress=False)
    assert [h["step"] for h in res.history] == [1, 2] and all(np.isfinite(h["loss"]) for h in res.history)
    ck = read_checkpoint(res.checkpoint)
    assert ck["model_name"] == name and ck["step"] == 2 and ck["extra"]["splits"]["memory"] == []
    pred = Predictor.from_checkpoint(res.checkpoint, device="cpu")
    out = pred.predict(np.zeros((40, 48, 3), np.uint8))
    assert out.anomaly_map.shape == (40, 48) and 0.0 <= out.score <= 1.0


# ------------------------------------------------------------------------------------- slow: learning
SLOW_SIZE, SLOW_STEPS = 96, 250
SLOW_MIN_PIXEL_AUROC = 0.80  # measured 0.929 (SGD lr 0.04, this config); structure-only simulation: ~0.40
SLOW_MIN_IMAGE_AUROC = 0.70  # measured 0.826


def _procedural_textures(root: Path, n: int = 24, size: int = 96, seed: int = 0) -> Path:
    """A DTD-layout folder (images/procedural/*.jpg) of procedural textures: flat colour with grain,
    smooth colour fields, stripes, checkers. Keeps the slow test independent of the real DTD."""
    rng = np.random.default_rng(seed)
    d = root / "images" / "procedural"
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if i % 4 == 0:
            img = c1 + rng.normal(0, 8, (size, size, 3))
        elif i % 4 == 1:
            low = (rng.uniform(0, 1, (4, 4, 3)) * 255).astype(np.uint8)
            img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), float)
        elif i % 4 == 2:
            a, f = rng.uniform(0, np.pi), rng.uniform(3, 12)
            img = np.where((np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy)) > 0)[..., None], c1, c2)
        else:
            f = int(rng.integers(3, 9))
            img = np.where(((((xx * f).astype(int) + (yy * f).astype(int)) % 2) == 0)[..., None], c1, c2)
            img = img + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"t{i:02d}.jpg", quality=92)
    return root


@pytest.mark.slow
def test_short_memseg_training_beats_chance_on_real_test_defects(tmp_path):
    """A short real MemSeg run learns to localise the synthetic dataset's REAL test defects
    (colour spots, holes, scratches, stains: never simulated, never seen in training).

    Settings: weave at 96x96, 40 train/good images (4 validation, N=10 memory, 26 training), random
    encoder weights (no download), anomalies simulated with procedural textures and the structure
    source, 250 steps of 4 normal + 4 simulated images. Chance is 0.5.
    Measured on the 2-core development CPU with the current defaults (calibrated attention, no-ReLU head,
    live random encoder; 2026-11-27): pixel AUROC 0.929, image AUROC 0.826, AUPRO@0.3 0.705 (per defect
    pixel AUROC: color 0.930, hole 0.996, scratch 0.872, stain 0.933); on its validation split the stored
    threshold through Predictor gave recall 1.00 / specificity 0.25, and 0.09 % of anomalous test pixels
    sat at the largest p (1.000). With the earlier defaults (literal attention, paper head): 0.971 / 0.944
    / 0.857; with AdamW lr 1e-3 instead: 0.960 / 1.000. Without texture sources (structure-only) the same run stays
    below chance (pixel AUROC ~0.40), which is why the procedural textures are part of the setting.
    """
    from memseg.data.synthetic import generate
    from memseg.engine.evaluation import evaluate

    root = generate(tmp_path / "data", categories=["weave"], size=SLOW_SIZE, n_train=40, n_test=6, progress=False)
    cfg = TrainConfig(data=str(root), category="weave", size=SLOW_SIZE, steps=SLOW_STEPS, checkpoint_every=10**6,
                      warmup_steps=20, model_options={"memory_size": 10, "weights": "random"},
                      dtd_root=str(_procedural_textures(tmp_path / "textures", size=SLOW_SIZE)),
                      device="cpu", out=str(tmp_path / "run"), val_fraction=0.1)
    result = train(cfg, progress=False)
    metrics = evaluate(result.checkpoint, root, "weave", progress=False, device="cpu")
    o = metrics["overall"]
    print(f"\nshort MemSeg run on synthetic weave: pixel AUROC {o['pixel_auroc']:.3f}, image AUROC "
          f"{o['image_auroc']:.3f}, AUPRO {o['aupro']:.3f}; per defect: "
          + ", ".join(f"{k} {v['pixel_auroc']:.3f}" for k, v in metrics["per_defect"].items()))
    assert o["pixel_auroc"] >= SLOW_MIN_PIXEL_AUROC
    assert o["image_auroc"] >= SLOW_MIN_IMAGE_AUROC
    _stored_threshold_separates_the_validation_split(cfg, result)
    _no_probability_ceiling(result.checkpoint, root, "weave")


def _validation_split_through_predictor(cfg: TrainConfig, result):
    """Rebuild the validation split a run picked its threshold on and score it through Predictor:
    in float32 (torch) the scores must equal the ones training stored (same precision, same score
    definition); the default CPU route (bf16 where the CPU has it) must give the same verdicts."""
    from memseg.data import load_split
    from memseg.engine.inference import Predictor
    from memseg.engine.training import validation_batches
    from memseg.simulation.simulator import AnomalySimulator, SimulationConfig

    predictor = Predictor.from_checkpoint(result.checkpoint, device="cpu", backend="torch")
    default = Predictor.from_checkpoint(result.checkpoint, device="cpu")
    assert (predictor.threshold_source == "validation split"
            and predictor.threshold == result.threshold == default.threshold)
    splits = read_checkpoint(result.checkpoint)["extra"]["splits"]
    images = load_split(cfg.data, cfg.category, split="train", size=cfg.input_size).load_images(progress=False)
    simulator = AnomalySimulator(SimulationConfig(**cfg.simulation), dtd_root=cfg.dtd_root, size=cfg.input_size,
                                 category=cfg.category, progress=False)
    scores, fast = [], []
    for clean, simulated, _ in validation_batches(images[splits["val"]], simulator, cfg, torch.device("cpu")):
        scores += [*predictor.predict_batch(clean)[0], *predictor.predict_batch(simulated)[0]]
        fast += [*default.predict_batch(clean)[0], *default.predict_batch(simulated)[0]]
    scores, fast, labels = np.asarray(scores), np.asarray(fast), np.asarray(result.validation["labels"])
    np.testing.assert_allclose(scores, result.validation["scores"], atol=1e-5)
    # the same verdicts, except at a tie: the F1-max threshold IS one validation image's score, and float32
    # backends (torch, onnxruntime) differ in the last digits, so an image within 1e-4 of it can land on either side
    decided = np.abs(scores - result.threshold) > 1e-4
    assert list((fast >= result.threshold)[decided]) == list((scores >= result.threshold)[decided])
    assert np.abs(fast - scores)[~decided].max(initial=0.0) <= 1e-4  # ... and those were scored again in float32
    return predictor, scores, labels


def test_predictor_scores_the_validation_split_exactly_as_training_did(tiny_setup):
    cfg = _cfg(tiny_setup, "run")
    result = train(cfg, progress=False)
    assert result.validation["n_normal"] > 0 and len(result.validation["scores"]) == len(result.validation["labels"])
    _validation_split_through_predictor(cfg, result)


def _stored_threshold_separates_the_validation_split(cfg: TrainConfig, result) -> None:
    """The threshold stored by training, applied through Predictor, means what it says: it flags some
    of the validation split's simulated anomalies and passes some of its normal images."""
    predictor, scores, labels = _validation_split_through_predictor(cfg, result)
    flagged = scores >= predictor.threshold
    recall, specificity = flagged[labels == 1].mean(), (~flagged[labels == 0]).mean()
    print(f"validation split through Predictor: recall {recall:.2f}, specificity {specificity:.2f}")
    assert recall > 0 and specificity > 0


def _no_probability_ceiling(checkpoint: Path, root: Path, category: str) -> None:
    """No learned hard ceiling: almost no anomalous pixel sits exactly at the largest probability
    (the paper head's last ReLU made 28 % of them tie there after 2700 steps on a GPU)."""
    from memseg.data import load_split
    from memseg.engine.checkpoint import load_checkpoint
    from memseg.engine.scoring import collect_predictions

    model, _ = load_checkpoint(checkpoint, device="cpu")
    preds = collect_predictions(model, load_split(root, category, split="test", size=SLOW_SIZE), device="cpu",
                                progress=False)
    anomalous = preds.masks.astype(bool)
    share = float((preds.maps[anomalous] >= preds.maps.max()).mean())
    print(f"largest p {preds.maps.max():.4f}; anomalous pixels at it: {100 * share:.2f} %")
    assert share <= 0.01


def _without_recipe(notes: list[str]) -> list[str]:
    """train's notes less the first one, which says the recipe its encoder resolved to (tested in test_pretrain)."""
    assert notes and notes[0].startswith("recipe for encoder weights "), notes[:1]
    return notes[1:]


def test_a_category_preset_sets_model_options_that_model_options_override():
    from memseg.engine.training import model_config_for

    tire = TrainConfig(data="d", category="tire", size=64)
    assert model_config_for(tire)["attention"] == "literal"  # pose-varying tyre: eq. (5)-(7) as written
    assert model_config_for(tire)["train_encoder"] is True  # blocks 1-3 train with the rest on tire
    assert model_config_for(TrainConfig(data="d", category="tire", size=64,
                                        model_options={"train_encoder": False}))["train_encoder"] is False
    assert "train_encoder" not in model_config_for(TrainConfig(data="d", category="washer", size=64))
    assert model_config_for(TrainConfig(data="d", category="tire", size=64,
                                        model_options={"attention": "calibrated"}))["attention"] == "calibrated"
    assert "attention" not in model_config_for(TrainConfig(data="d", category="washer", size=64))
    assert "attention" not in model_config_for(TrainConfig(data="d", category="tire", size=64, model="draem"))
