"""Issue 21 (hardening, round two): one regression test (or more) per cause, each failing on the code before
the fix: concurrent runs into one folder, writes through links that leave --out, a full disk, resuming on other
data, non-finite or out-of-range inputs and values, the interrupt message, stale temp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny_data import make_tiny_dataset

from memseg.apps.cli import main as cli_main
from memseg.engine.train_config import TrainConfig
from memseg.engine.training import train

ROOT = Path(__file__).resolve().parents[1]
# the tiny fake category has no foreground preset; the simulator says so (expected here)
pytestmark = pytest.mark.filterwarnings("ignore:no foreground preset")


def _cfg(tmp_path: Path, out: str, **kw) -> TrainConfig:
    values = dict(
        data=str(tmp_path / "data"), category="tiny", size=32, steps=2, checkpoint_every=1, log_every=1,
        batch_normal=1, batch_anomalous=1, warmup_steps=1, device="cpu", val_fraction=0.0,
        model_options={"memory_size": 2, "weights": "random"}, out=str(tmp_path / out), checkpoint_minutes=10_000,
    )
    values.update(kw)
    return TrainConfig.from_dict(values)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    make_tiny_dataset(tmp_path / "data", n_train=8, size=(32, 32))
    return tmp_path


def _train_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("model_options: {memory_size: 2, weights: random}\nbatch_normal: 1\nbatch_anomalous: 1\n"
                   "val_fraction: 0.0\nwarmup_steps: 1\ncheckpoint_every: 1\n")
    return ["train", "--data", str(tmp_path / "data"), "--category", "tiny", "--config", str(cfg), "--size", "32",
            "--device", "cpu", "--out", str(out), *extra]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the holder exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


# ------------------------------------------------------------------ 1. concurrent runs into one folder
_HOLD_TRAINING = """
import json, sys, time
from pathlib import Path
from memseg.engine.training import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
def park(step, logs):  # a run in the middle of its training (last.pt at step 1): it holds the folder
    if step == 2:
        Path(sys.argv[2]).write_text("ready")
        time.sleep(600)
train(cfg, progress=False, callback=park)
"""


# two real trainings (about 7 s on a busy 2-core machine); the fast twin below holds with the lock alone
@pytest.mark.slow
def test_a_second_train_into_a_training_run_folder_fails_at_once_naming_the_folder_and_pid(tiny, capsys):
    """A run in progress holds its folder; `memseg train` into it (fresh, --overwrite or --resume) fails at once
    with one line naming the folder and the holder's PID and touches nothing; once the holder is killed
    (kill -9), the folder is free again: the lock dies with its process."""
    out = tiny / "run"
    ready = tiny / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_TRAINING, json.dumps(_cfg(tiny, "run", steps=5).to_dict()),
                             str(ready)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc)
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        for extra in ((), ("--overwrite",), ("--resume",)):
            assert cli_main(_train_args(tiny, out, "--steps", "1", *extra)) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"memseg train: error: run folder {out} is in use by another memseg run "
                                  f"(PID {proc.pid}, lock {out / '.memseg.lock'}); wait for it to finish, or choose "
                                  "another --out"), err
            assert len(err.strip().splitlines()) == 1
        with pytest.raises(RuntimeError, match=rf"run folder .* is in use by another memseg run \(PID {proc.pid},"):
            train(_cfg(tiny, "run", steps=1), progress=False, overwrite=True)
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    # killed: no stale lock; the next run takes the folder over
    assert cli_main(_train_args(tiny, out, "--steps", "1", "--overwrite")) == 0
    assert not (out / ".memseg.lock").exists() and (out / "final.pt").is_file()


_HOLD_FOLDER = """
import sys, time
from pathlib import Path
from memseg.engine.run_folder import hold_run_folder
with hold_run_folder(sys.argv[1], what=sys.argv[3]):
    Path(sys.argv[2]).write_text("ready")
    time.sleep(600)
"""


def _hold(folder: Path, ready: Path, what: str = "run folder") -> subprocess.Popen:
    """Another process holding ``folder`` as a run does, until killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(folder), str(ready), what], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(ready, proc)
    return proc


def test_train_into_a_held_run_folder_fails_at_once_and_a_killed_holder_leaves_no_stale_lock(tiny, capsys):
    out = tiny / "run"
    proc = _hold(out, tiny / "ready")
    try:
        assert cli_main(_train_args(tiny, out, "--steps", "1")) == 2
        assert capsys.readouterr().err == (
            f"memseg train: error: run folder {out} is in use by another memseg run (PID {proc.pid}, lock "
            f"{out / '.memseg.lock'}); wait for it to finish, or choose another --out\n")
        assert [p.name for p in out.iterdir()] == [".memseg.lock"]
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert (out / ".memseg.lock").exists()  # left by the killed holder, but no longer locked
    res = train(_cfg(tiny, "run", steps=1), progress=False)
    assert res.checkpoint.is_file() and not (out / ".memseg.lock").exists()


def test_a_second_benchmark_on_a_held_category_seed_fails_at_once(tiny, capsys):
    """`memseg benchmark` holds each (category, seed) folder while it trains and evaluates it: a second one on the
    same (category, seed) fails at once naming the folder and the PID, and trains nothing."""
    bench_out = tiny / "bench"
    seed_dir = bench_out / "tiny" / "seed0"
    proc = _hold(seed_dir, tiny / "ready", "benchmark run folder (tiny, seed 0)")
    try:
        args = ["benchmark", "--data", str(tiny / "data"), "--categories", "tiny", "--seeds", "0", "--out",
                str(bench_out), "--steps", "1", "--size", "32", "--weights", "random", "--device", "cpu"]
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"memseg benchmark: error: benchmark run folder (tiny, seed 0) {seed_dir} is in use by another "
                       f"memseg run (PID {proc.pid}, lock {seed_dir / '.memseg.lock'}); wait for it to finish, or "
                       "choose another --out")
        assert [p.name for p in seed_dir.iterdir()] == [".memseg.lock"]  # nothing trained
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


# ------------------------------------------------------------------ 2. writes through links that leave --out
@pytest.fixture
def trained(tiny: Path) -> Path:
    """A 1-step MemSeg run at 32 px on the tiny data: its final.pt."""
    return train(_cfg(tiny, "run", steps=1, val_fraction=0.25), progress=False).checkpoint


def test_predict_never_writes_through_a_link_that_leaves_out(trained, tiny, capsys):
    imgs, out, elsewhere = tiny / "imgs", tiny / "pred", tiny / "elsewhere"
    for sub in ("x", "y"):
        (imgs / sub).mkdir(parents=True)
        Image.open(tiny / "data" / "tiny" / "test" / "good" / "000.png").save(imgs / sub / "a.png")
    (out / "x").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "x" / "a_overlay.png").symlink_to(elsewhere / "planted.png")  # dangling: exists() is False
    (out / "predictions.csv").symlink_to(elsewhere / "table.csv")
    args = ["predict", "--checkpoint", str(trained), "--out", str(out), "--backend", "torch", "--device", "cpu"]
    assert cli_main([*args, str(imgs / "x" / "a.png"), str(imgs / "y" / "a.png")]) == 0  # overlays: <out>/x/, <out>/y/
    captured = capsys.readouterr()
    assert list(elsewhere.iterdir()) == []  # nothing written through the links
    assert (out / "x" / "a_overlay-2.png").is_file() and not (out / "x" / "a_overlay-2.png").is_symlink()
    assert f"\t{out / 'x' / 'a_overlay-2.png'}" in captured.out
    assert (out / "predictions-2.csv").read_text().splitlines()[1].endswith(str(out / "x" / "a_overlay-2.png"))

    # a folder link inside --out that leads outside it: refused, naming the link, and nothing is written there
    out2 = tiny / "pred2"
    out2.mkdir()
    (out2 / "y").symlink_to(elsewhere)
    args2 = ["predict", "--checkpoint", str(trained), "--out", str(out2), "--backend", "torch", "--device", "cpu"]
    assert cli_main([*args2, str(imgs / "x" / "a.png"), str(imgs / "y" / "a.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"memseg predict: error: {out2 / 'y'} is a link to {elsewhere}, outside --out {out2}; refusing to "
                   "write through it (remove the link or choose another --out)"]
    assert list(elsewhere.iterdir()) == [] and (out2 / "x" / "a_overlay.png").is_file()


def test_evaluate_never_writes_metrics_through_a_dangling_link(trained, tiny, capsys):
    from memseg.engine.evaluation import evaluate

    out, elsewhere = tiny / "eval", tiny / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "metrics.json").symlink_to(elsewhere / "metrics.json")
    args = ["evaluate", "--checkpoint", str(trained), "--data", str(tiny / "data"), "--category", "tiny",
            "--out", str(out), "--backend", "torch", "--device", "cpu"]
    assert cli_main(args) == 2
    assert capsys.readouterr().err.strip() == (f"memseg evaluate: error: {out / 'metrics.json'} already exists; choose "
                                               "another output folder (or overwrite=True)")
    evaluate(trained, tiny / "data", "tiny", out=out, overwrite=True, backend="torch", device="cpu", progress=False)
    assert list(elsewhere.iterdir()) == []  # the link itself was replaced, not followed
    assert (not (out / "metrics.json").is_symlink()
            and json.loads((out / "metrics.json").read_text())["category"] == "tiny")


def test_new_files_are_created_exclusively_and_never_through_links(tmp_path):
    """What simulate (and predict, evaluate) write with: O_EXCL | O_NOFOLLOW, folders checked against --out."""
    from memseg.utils import create_new_file

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "0000_image.png").symlink_to(elsewhere / "x.png")  # dangling, leads outside
    with pytest.raises(ValueError, match=r"0000_image.png is a link to .*elsewhere/x.png, outside --out"):
        create_new_file(out / "0000_image.png", out)
    (out / "0000_mask.png").symlink_to(out / "nowhere.png")  # dangling, inside: still never written through
    with pytest.raises(FileExistsError) as info:
        create_new_file(out / "0000_mask.png", out)
    assert info.value.filename == str(out / "0000_mask.png") and "is a link" in info.value.strerror
    assert not (out / "nowhere.png").exists()
    (out / "kept.json").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        create_new_file(out / "kept.json", out, mode="w")
    (out / "sub").symlink_to(elsewhere)
    with pytest.raises(ValueError,
                       match=r"sub is a link to .*elsewhere, outside --out .*; refusing to write through it"):
        create_new_file(out / "sub" / "deeper" / "a.png", out)
    assert list(elsewhere.iterdir()) == [] and (out / "kept.json").read_text() == "mine"
    (out / "inside").symlink_to(out / "real", target_is_directory=True)  # a link that stays inside --out is fine
    (out / "real").mkdir()
    with create_new_file(out / "inside" / "b.txt", out, mode="w") as fh:
        fh.write("ok")
    assert (out / "real" / "b.txt").read_text() == "ok"


# ------------------------------------------------------------------ 3. a full disk
def _disk_fills_after(monkeypatch, n_good: int, kind: str = "oserror") -> list[str]:
    """``torch.save`` as the checkpoint writer uses it: the first ``n_good`` saves work, the next ones hit a full
    disk after writing part of the file (an ``OSError(ENOSPC)``, or torch's zip writer's errno-less
    ``RuntimeError`` while the file system has no space left). Returns the names of the files it was asked to write."""
    import errno

    import torch

    from memseg.engine import checkpoint as ckpt_mod

    real_save, calls = torch.save, []

    def save(obj, fh, *a, **k):
        calls.append(Path(os.readlink(f"/proc/self/fd/{fh.fileno()}")).name)  # the temporary file written
        if len(calls) <= n_good:
            return real_save(obj, fh, *a, **k)
        fh.write(b"PK\x03\x04 partial")
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1344 vs 1306")

    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    if kind != "oserror":
        monkeypatch.setattr(ckpt_mod, "free_bytes", lambda folder: 4096)
    return calls


@pytest.mark.parametrize("kind", ["oserror", "torch-writer"])
def test_a_full_disk_at_the_end_keeps_the_last_good_checkpoint_and_says_so(tiny, capsys, monkeypatch, kind):
    """Steps 1-2 checkpoint fine; at the end of step 3 the disk is full: last.pt of step 2 stays intact, no
    temporary file is left, and the one-line error names the file, the full disk and the kept checkpoint."""
    from memseg.engine.checkpoint import read_checkpoint

    out = tiny / "run"
    calls = _disk_fills_after(monkeypatch, 2, kind)
    assert cli_main(_train_args(tiny, out, "--steps", "3")) == 2
    err = capsys.readouterr().err
    last = out / "checkpoints" / "last.pt"
    assert calls[-1].startswith(".last.pt.")
    assert [ln for ln in err.splitlines() if "error" in ln] == [  # (the progress bars share stderr)
        f"memseg train: error: {last}: the disk is full (ENOSPC, no space left on device in {last.parent}); last.pt "
        f"was not written; the last good checkpoint {last} (step 2) is kept: free some space, then continue with "
        "--resume"]
    assert read_checkpoint(last)["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"] and not (out / "final.pt").exists()
    monkeypatch.undo()
    assert cli_main(_train_args(tiny, out, "--steps", "3", "--resume")) == 0  # and the run goes on from it
    assert read_checkpoint(out / "final.pt")["step"] == 3


def test_a_full_disk_on_final_pt_keeps_last_pt_of_the_final_step(tiny, monkeypatch):
    from memseg.engine.checkpoint import read_checkpoint

    calls = _disk_fills_after(monkeypatch, 2)  # last.pt at steps 1 and 2 (the end), then final.pt fails
    with pytest.raises(OSError) as info:
        train(_cfg(tiny, "run", steps=2), progress=False)
    last = tiny / "run" / "checkpoints" / "last.pt"
    assert calls[-1].startswith(".final.pt.") and info.value.filename == str(tiny / "run" / "final.pt")
    assert info.value.strerror.endswith(f"the last good checkpoint {last} (step 2) is kept: free some space, then "
                                    "continue with resume=True")
    assert read_checkpoint(last)["step"] == 2 and sorted(p.name for p in (tiny / "run").iterdir()) == [
        "checkpoints", "config.yaml", "train_log.csv", "train_log.jsonl"]


def test_export_on_a_full_disk_names_the_file_and_leaves_nothing(trained, tiny, capsys, monkeypatch):
    import torch

    from memseg.engine import checkpoint as ckpt_mod

    def export(graph, args, path, **kw):
        Path(path).write_bytes(b"partial onnx")
        raise RuntimeError("problem writing element 105472 to file")

    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setattr(ckpt_mod, "free_bytes", lambda folder: 0)
    out = tiny / "exported" / "model.onnx"
    assert cli_main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"memseg export: error: {out}: the disk is full (ENOSPC, no space left on "
                                       f"device in {out.parent}); model.onnx was not written\n")
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------ 4. --resume with another --data
def test_resume_refuses_other_data_in_one_line_and_accepts_the_same_data_moved(tiny, capsys):
    import shutil

    import numpy as np

    from memseg.engine.checkpoint import read_checkpoint

    out = tiny / "run"
    assert cli_main(_train_args(tiny, out, "--steps", "1")) == 0
    record = read_checkpoint(out / "checkpoints" / "last.pt")["extra"]["data"]
    assert record["root"] == str(tiny / "data") and record["category"] == "tiny" and record["n_images"] == 8
    assert len(record["files_sha256"]) == 64
    capsys.readouterr()

    fewer = tiny / "fewer"  # fewer images: the stored splits would index past them (was an IndexError traceback)
    make_tiny_dataset(fewer, n_train=5, size=(32, 32))
    edited = tiny / "edited"  # as many images, one of them another file: would train silently on other images
    shutil.copytree(tiny / "data", edited)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(edited / "tiny" / "train" / "good" / "003.png")
    for other, n in ((fewer, 5), (edited, 8)):
        args = _train_args(tiny, out, "--steps", "2", "--resume")
        args[args.index("--data") + 1] = str(other)
        assert cli_main(args) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert len(err) == 1 and err[0].startswith(
            f"memseg train: error: --resume: {out / 'checkpoints' / 'last.pt'} was trained on 8 train/good images of "
            f"'tiny' under {tiny / 'data'}, but the data given ({other}) holds {n} with another file list (file list "
            f"sha256 {record['files_sha256'][:12]} vs "), err
        assert err[0].endswith("); resume with the data the run was trained on, or start a new run (another --out)")
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1

    moved = tiny / "moved"
    shutil.copytree(tiny / "data", moved)
    args = _train_args(tiny, out, "--steps", "2", "--resume")
    args[args.index("--data") + 1] = str(moved)
    assert cli_main(args) == 0
    assert f"resume: the data moved from {tiny / 'data'} to {moved} (the same 8 files)" in capsys.readouterr().out
    assert read_checkpoint(out / "final.pt")["extra"]["data"]["root"] == str(moved)


# ------------------------------------------------------------------ 5. non-finite and out-of-range images
def _check_refuses_bad_pixels(predictor) -> None:
    import numpy as np
    import torch

    good = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    cases = [(torch.full((3, 32, 32), float("nan")), r"predict: 3072 of 3072 pixel values are NaN or infinite"),
             (good.clone().index_put_((torch.tensor([0]),), torch.tensor(float("inf"))),
              r"predict: 1024 of 3072 pixel values are NaN"),
             (good * 255,
              r"predict: float pixel values span \[0\.\d+, 254\.\d+\]; .* \(divide a 0\.\.255 image by 255\)"),
             (good * 2 - 1,
              r"predict: float pixel values span \[-0\.\d+, 0\.\d+\]; expected finite float pixel values in "
              r"\[0, 1\], or a uint8 image \(0\.\.255\)$")]
    for image, match in cases:
        with pytest.raises(ValueError, match=match):
            predictor.predict(image)
        with pytest.raises(ValueError, match=match.replace("predict:", "predict_batch:")):
            predictor.predict_batch(image[None])
        with pytest.raises(ValueError, match=match.replace("predict:", "predict_batch:")):
            predictor.predict_batch(image[None].numpy())
    # NumPy batches are accepted: float (B, 3, H, W) in [0, 1] and uint8 (B, H, W, 3), scored like the tensor
    u8 = (good * 255).round().to(torch.uint8)
    ref_scores, ref_maps = predictor.predict_batch(u8[None].float() / 255)
    for batch in (u8[None].float().numpy() / 255, u8.permute(1, 2, 0)[None].numpy()):
        scores, maps = predictor.predict_batch(batch)
        assert np.allclose(scores, ref_scores, atol=1e-6) and np.allclose(maps, ref_maps, atol=1e-6)
    assert predictor.predict(good).score == pytest.approx(float(predictor.predict_batch(good[None])[0][0]), abs=1e-6)
    for bad, got in (([[0.5]], "got list"),
                     (np.zeros((32, 32, 3), np.uint8), r"got a uint8 NumPy array of shape \(32, 32, 3\)")):
        with pytest.raises(ValueError, match=r"predict_batch expects float images \(B, 3, H, W\) in \[0, 1\] as a "
                                             r"torch tensor or a NumPy array, or NumPy uint8 images \(B, H, W, 3\); "
                                             + got):
            predictor.predict_batch(bad)


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])  # export: ~9 s
def test_predict_refuses_nan_inf_and_out_of_range_floats_in_every_backend(trained, backend):
    from memseg.engine.inference import Predictor

    if backend == "onnxruntime":
        from memseg.engine.export import export_onnx

        trained = export_onnx(trained, trained.with_suffix(".onnx"), check=False)
    predictor = Predictor.from_checkpoint(trained, device="cpu", backend=backend)
    assert predictor.backend == backend
    _check_refuses_bad_pixels(predictor)


# ------------------------------------------------------------------ 6. values a checkpoint or .onnx carries
@pytest.mark.parametrize("key, value, expected", [
    ("threshold", float("nan"), "stored threshold nan is not a finite number in [0, 1]"),
    ("threshold", "0.5", "stored threshold '0.5' is not a finite number in [0, 1]"),
    ("threshold", 7.0, "stored threshold 7.0 is not a finite number in [0, 1]"),
    ("input_size", [0, 32], "stored input size [0, 32] is not (H, W) of positive integers"),
    ("top_k", 0, "stored top_k 0 is not an integer >= 1"),
    ("category", 5, "stored category 5 is not a category name (a string)"),
])
def test_checkpoint_values_are_checked_on_load_naming_the_file(trained, tiny, capsys, key, value, expected):
    import torch

    from memseg.engine.checkpoint import read_checkpoint

    ckpt = dict(read_checkpoint(trained))
    if key == "threshold":
        ckpt["threshold"] = value
    elif key == "input_size":
        ckpt["model_config"] = {**ckpt["model_config"], "input_size": value}
    else:
        ckpt["config"] = {**ckpt["config"], key: value}
    bad = tiny / "bad.pt"
    torch.save(ckpt, bad)
    image = tiny / "data" / "tiny" / "test" / "good" / "000.png"
    line = (f"{bad}: {expected} (the decision threshold on the image score)" if key == "threshold"
            else f"{bad}: {expected}")
    for args in (["predict", "--checkpoint", str(bad), str(image), "--out", str(tiny / "p"), "--backend", "torch"],
                 ["evaluate", "--checkpoint", str(bad), "--data", str(tiny / "data"), "--category", "tiny", "--out",
                  str(tiny / "e"), "--backend", "torch"]):
        assert cli_main([*args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"memseg {args[0]}: error: {line}") and len(err.strip().splitlines()) == 1, err
        assert err.strip().endswith("the file is damaged or was edited (write it again with `memseg train` or `memseg "
                                    "export`)")
    assert not (tiny / "p").exists() and not (tiny / "e" / "metrics.json").exists()


def _tiny_onnx(path: Path, meta: dict, channels_out: int = 1, size: int = 32) -> Path:
    """A small ONNX graph shaped like memseg export's (input (B, 3, H, W) -> anomaly_map (B, 1, H, W): the channel
    mean), with memseg metadata."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["input", "axes"], ["anomaly_map"], keepdims=1) if channels_out == 1 else \
        helper.make_node("Identity", ["input"], ["anomaly_map"])
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])] if channels_out == 1 else []
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT,
                                                             ["batch", channels_out, size, size])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    helper.set_model_props(model, {"memseg": json.dumps(meta)})
    onnx.save(model, str(path))
    return path


def test_onnx_metadata_and_graph_are_checked_on_load_naming_the_file(tmp_path):
    from memseg.engine.onnx_runtime import load_onnx

    meta = {"format": "memseg-kit-onnx", "model_name": "memseg", "input_size": [32, 32], "top_k": 10, "threshold": 0.5,
            "category": "tiny"}
    model, record = load_onnx(_tiny_onnx(tmp_path / "ok.onnx", meta))  # what the kit writes: loads
    assert record.threshold == 0.5 and record.input_size == (32, 32)
    for name, changed, expected in (
            ("nan.onnx", {"threshold": float("nan")}, "stored threshold nan is not a finite number in [0, 1]"),
            ("text.onnx", {"threshold": "high"}, "stored threshold 'high' is not a finite number in [0, 1]"),
            ("topk.onnx", {"top_k": -3}, "stored top_k -3 is not an integer >= 1"),
            ("size.onnx", {"input_size": "big"}, "stored input size 'big' is not (H, W) of positive integers")):
        path = _tiny_onnx(tmp_path / name, {**meta, **changed})
        with pytest.raises(ValueError) as info:
            load_onnx(path)
        assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)
    path = _tiny_onnx(tmp_path / "shape.onnx", meta, channels_out=3)
    with pytest.raises(ValueError) as info:
        load_onnx(path)
    assert str(info.value) == (f"{path}: the model's graph takes input ('batch', 3, 32, 32) and gives anomaly_map "
                               "('batch', 3, 32, 32); expected input ('B', 3, 32, 32) -> anomaly_map ('B', 1, 32, 32) "
                               "as `memseg export` writes it (the model file does not fit its own metadata; export it "
                               "again)")
    path = _tiny_onnx(tmp_path / "other-size.onnx", {**meta, "input_size": [64, 64]})
    with pytest.raises(ValueError, match=r"takes input \('batch', 3, 32, 32\) .*expected input \('B', 3, 64, 64\)"):
        load_onnx(path)


# ------------------------------------------------------------------ 7. numeric options: finite and in range, up front
@pytest.mark.parametrize("yaml_text, expected", [
    ("lr: .nan\n", "lr must be a finite number, got nan"),
    ("lr: .inf\n", "lr must be a finite number, got inf"),
    ("momentum: .nan\n", "momentum must be a finite number, got nan"),
    ("warmup_steps: -5\n", "warmup_steps must be >= 0, got -5"),
    ("weight_decay: -0.1\n", "weight_decay must be >= 0, got -0.1"),
    ("min_lr_ratio: 2\n", "min_lr_ratio must be in [0, 1], got 2.0"),
    ("checkpoint_minutes: .inf\n", "checkpoint_minutes must be a finite number, got inf"),
    ("seed: -1\n", "seed must be in [0, 2**32), got -1"),
    ("simulation: {threshold: 2}\n", "simulation: threshold must be a finite number in (-1, 1) (the Perlin noise P "
                                     "lies in about [-1, 1]; the paper uses 0.5), got 2"),
    ("simulation: {delta_range: [.nan, 1]}\n",
     "simulation: delta_range must satisfy 0 <= low <= high <= 1, got (nan, 1.0)"),
])
def test_train_config_numbers_are_checked_before_any_work(tmp_path, capsys, monkeypatch, yaml_text, expected):
    import memseg.data

    def no_loading(*_a, **_k):
        raise AssertionError("the data was loaded although the config is invalid")

    monkeypatch.setattr(memseg.data, "load_split", no_loading)
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    args = ["train", "--data", str(tmp_path), "--category", "x", "--out", str(tmp_path / "r"), "--config", str(config)]
    assert cli_main(args) == 2
    assert capsys.readouterr().err == f"memseg train: error: {config}: {expected}\n"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--threshold", "2", "expected a finite number in (-1, 1) (the Perlin noise P lies in about [-1, 1]), got '2'"),
    ("--threshold", "nan", "expected a finite number in (-1, 1) (the Perlin noise P lies in about [-1, 1]), got 'nan'"),
    ("--delta", "nan", "expected a finite number in [0, 1], got 'nan'"),
    ("--delta", "1.5", "expected a finite number in [0, 1], got '1.5'"),
])
def test_simulate_numbers_are_checked_up_front(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as info:
        cli_main(["simulate", "--data", str(tmp_path), "--category", "x", "--out", str(tmp_path / "s"), flag, value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"memseg simulate: error: argument {flag}: {expected}"
    assert not (tmp_path / "s").exists()


def test_simulator_refuses_non_finite_threshold_and_delta():
    import torch

    from memseg.simulation import AnomalySimulator, SimulationConfig

    with pytest.raises(ValueError, match=r"threshold must be a finite number in \(-1, 1\) .*got nan"):
        SimulationConfig(threshold=float("nan"))
    sim = AnomalySimulator(SimulationConfig(texture_prob=0.0), size=(32, 32), device="cpu")
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^threshold must be a finite number, got nan"):
        sim.simulate(images, generator=torch.Generator().manual_seed(0), threshold=float("nan"))
    with pytest.raises(ValueError, match=r"delta must be a float or a \(2,\) tensor with values in \[0, 1\], got nan"):
        sim.simulate(images, generator=torch.Generator().manual_seed(0), delta=float("nan"))


# ------------------------------------------------------------------ 13. the interrupt message: the flag or the argument
def test_the_interrupt_note_names_the_flag_on_the_command_line_and_the_argument_in_the_api(tiny, capsys, monkeypatch):
    from memseg.engine import training

    real_step_batch, calls = training._step_batch, []

    def ctrl_c_in_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # in the middle of step 3: last.pt (step 2) stands
        return real_step_batch(*a, **k)

    monkeypatch.setattr(training, "_step_batch", ctrl_c_in_step_3)
    out = tiny / "cli"
    assert cli_main(_train_args(tiny, out, "--steps", "4")) == 130
    last = out / "checkpoints" / "last.pt"
    assert (f"interrupted: {last} holds step 2 of 4; continue with --resume and the same --out\n"
            in capsys.readouterr().out)

    calls.clear()
    notes: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny, "api", steps=4), progress=False, log=notes.append)
    last = tiny / "api" / "checkpoints" / "last.pt"
    assert notes[-1] == f"interrupted: {last} holds step 2 of 4; continue with resume=True and the same config (out)"

    calls.clear()
    calls.extend([1, 1])  # the first step is interrupted: nothing to resume
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny, "api0", steps=4), progress=False, log=notes.append)
    assert notes[-1] == "interrupted before the first step finished: nothing to resume; start again with overwrite=True"
    calls.clear()
    calls.extend([1, 1])
    assert cli_main(_train_args(tiny, tiny / "cli0", "--steps", "4")) == 130
    assert ("interrupted before the first step finished: nothing to resume; start again with --overwrite\n"
            in capsys.readouterr().out)


# ------------------------------------------------------------------ 12. stale temporary files of killed writes
def test_the_next_run_removes_temporary_files_left_by_killed_checkpoint_writes(tiny):
    from memseg.engine.checkpoint import read_checkpoint

    out = tiny / "run"
    train(_cfg(tiny, "run", steps=1), progress=False)
    stale = [out / "checkpoints" / ".last.pt.k3x_9q2a.tmp", out / ".final.pt.ab12cd34.tmp"]
    kept = [out / "checkpoints" / ".last.pt.notes.txt", out / ".other.tmp", out / "checkpoints" / "last.pt.tmp"]
    for p in stale + kept:
        p.write_bytes(b"\0" * 4096)
    notes: list[str] = []
    train(_cfg(tiny, "run", steps=2), progress=False, resume=True, log=notes.append)
    assert notes[0] == (f"removed 2 temporary files left by an interrupted checkpoint write in {out}: "
                        ".final.pt.ab12cd34.tmp, checkpoints/.last.pt.k3x_9q2a.tmp")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)  # only the kit's own naming
    assert read_checkpoint(out / "final.pt")["step"] == 2

    # a folder holding nothing but such a leftover (a run killed while writing its first checkpoint) starts fresh
    fresh = tiny / "fresh" / "checkpoints"
    fresh.mkdir(parents=True)
    (fresh / ".last.pt.zz99yy88.tmp").write_bytes(b"PK partial")
    notes.clear()
    res = train(_cfg(tiny, "fresh", steps=1), progress=False, log=notes.append)
    assert notes[0].startswith("removed 1 temporary file left by an interrupted checkpoint write in ")
    assert (sorted(p.name for p in (tiny / "fresh" / "checkpoints").iterdir()) == ["last.pt"]
            and res.checkpoint.is_file())


# -------------------------------------------------------------- 8. every message names its source and what is expected
@pytest.fixture
def no_data_loading(monkeypatch):
    """Any image loading fails the test: what is checked here must be refused before the data is touched."""
    import memseg.data

    def no_loading(*_a, **_k):
        raise AssertionError("the data was loaded although the input is invalid")

    monkeypatch.setattr(memseg.data, "load_split", no_loading)


@pytest.fixture
def eight_gb(monkeypatch):
    """The machine has 8 GB of RAM (so the estimates below are checked the same on every machine)."""
    import memseg.config

    monkeypatch.setattr(memseg.config, "machine_memory", lambda device="cpu": (8 * 10**9, "of RAM"), raising=False)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"memseg {command}: error: "), err
    return err.strip()[len(f"memseg {command}: error: "):]


def test_a_yaml_file_that_is_not_text_is_named_with_what_was_expected(tmp_path, capsys, no_data_loading):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"\x80\x81PK\x03\x04 binary")  # e.g. a checkpoint given as --config
    assert cli_main(["train", "--data", str(tmp_path), "--category", "x", "--config", str(config)]) == 2
    assert _one_error_line(capsys, "train") == (f"{config}: not a text file (byte 0 is not UTF-8); expected a YAML "
                                                "file of TrainConfig keys")
    config.write_text("a: [1\n")
    assert cli_main(["train", "--data", str(tmp_path), "--category", "x", "--config", str(config)]) == 2
    line = _one_error_line(capsys, "train")
    assert (line.startswith(f"{config}: not valid YAML: ")
            and line.endswith("; expected a YAML file of TrainConfig keys"))


def test_an_unknown_device_names_the_flag_or_file_and_the_accepted_names(tmp_path, capsys, no_data_loading):
    from memseg.utils import select_device

    with pytest.raises(SystemExit) as info:
        cli_main(["train", "--data", str(tmp_path), "--category", "x", "--device", "tpu"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "memseg train: error: argument --device: 'tpu' is not a device this kit runs on; expected auto, cpu, cuda or "
        "cuda:<index>")  # was torch's list of every backend it knows (ipu, xpu, mkldnn, ... privateuseone)
    config = tmp_path / "run.yaml"
    config.write_text("device: tpu\n")
    assert cli_main(["train", "--data", str(tmp_path), "--category", "x", "--config", str(config)]) == 2
    assert _one_error_line(capsys, "train") == (f"{config}: device 'tpu' is not a device this kit runs on; expected "
                                                "auto, cpu, cuda or cuda:<index>")
    with pytest.raises(ValueError, match=r"^device 'tpu' is not a device this kit runs on; expected auto, cpu, cuda"):
        select_device("tpu")


def test_a_bad_hub_timeout_variable_is_one_line_before_any_work(tiny, capsys, monkeypatch, no_data_loading):
    monkeypatch.setenv("MEMSEG_HUB_TIMEOUT", "abc")
    assert cli_main(_train_args(tiny, tiny / "run", "--steps", "1")) == 2
    assert _one_error_line(capsys, "train") == "MEMSEG_HUB_TIMEOUT must be a number of seconds > 0, got 'abc'"
    assert not (tiny / "run").exists()


@pytest.mark.parametrize("options, expected", [
    ("{foo: 1, weights: random}", "model_options: unknown key(s) ['foo'] for the memseg model; valid keys: input_size, "
                                  "memory_size, weights"),
    ("{memory_size: many}", "model_options: memory_size must be an integer, got 'many'"),
    ("{use_memory: maybe}", "model_options: use_memory must be true or false, got 'maybe'"),
    ("{head: weird}", "model_options: head must be auto or one of"),
])
def test_model_options_are_checked_before_any_work_naming_the_file(tmp_path, capsys, no_data_loading, options,
                                                                   expected):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_options: {options}\n")
    assert cli_main(["train", "--data", str(tmp_path), "--category", "x", "--config", str(config), "--size", "32",
                     "--out", str(tmp_path / "r")]) == 2
    assert _one_error_line(capsys, "train").startswith(f"{config}: {expected}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, expected", [
    (["train", "--size", "100000"], "--size 100000 (training memseg at 100000x100000 px, 8 images a batch) needs at "
                                    "least 9.4 TB of memory; this machine has 8.0 GB of RAM; lower the size"),
    (["pretrain", "--out", "enc.pt", "--size", "32", "--memory-size", "1000000"],
     "--size 32, --memory-size 1000000 (training memseg at 32x32 px, 8 images a batch, memory_size 1000000) needs at "
     "least 28.7 GB of memory; this machine has 8.0 GB of RAM; lower --size or --memory-size"),
    (["synth", "--size", "1000000"], "--size 1000000 (one 1000000x1000000 px scene) needs at least 24.0 TB of memory; "
                                     "this machine has 8.0 GB of RAM; choose a smaller --size (the default is 256)"),
])
def test_a_size_or_n_beyond_the_machine_is_refused_before_allocating_with_the_estimate(tmp_path, capsys, eight_gb,
                                                                                        no_data_loading, command,
                                                                                        expected):
    name, *flags = command
    where = ["--out", str(tmp_path / "s")] if name == "synth" else [
        "--data", str(tmp_path), "--category", "x", "--device", "cpu",
        *(["--out", str(tmp_path / "r")] if name == "train" else [])]
    flags = [str(tmp_path / f) if f.endswith(".pt") else f for f in flags]
    assert cli_main([name, *where, *flags]) == 2  # at once: was "can't allocate 240000000000 bytes" (or a traceback)
    assert _one_error_line(capsys, name).startswith(expected)
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_simulate_refuses_an_n_it_cannot_hold_before_simulating(tiny, capsys, eight_gb):
    args = ["simulate", "--data", str(tiny / "data"), "--category", "tiny", "--size", "256", "--device", "cpu"]
    assert cli_main([*args, "--n", "10000000", "--out", str(tiny / "s")]) == 2
    assert _one_error_line(capsys, "simulate") == (
        "--size 256, --n 10000000 (kept until written), --batch-size 32 (8 images decoded at 256x256 px) needs at "
        "least 10.5 TB of memory; this machine has 8.0 GB of RAM; lower --size, --n or --batch-size (--no-save keeps "
        "nothing)")
    assert not (tiny / "s").exists()


def test_an_allocation_that_fails_anyway_is_one_line_naming_what_to_lower():
    import numpy as np
    import torch

    from memseg.apps.cli import _error_text

    with pytest.raises(MemoryError) as info:
        np.empty((10**7, 10**7))  # 728 TiB: numpy's own MemoryError (was a traceback: not caught)
    assert _error_text(info.value, "synth").startswith("out of memory: an allocation of 728 TiB failed "
                                                       "(this machine has ")
    assert _error_text(info.value, "synth").endswith("; lower --size")
    with pytest.raises(RuntimeError) as info:
        torch.empty(10**13, dtype=torch.uint8)
    assert _error_text(info.value, "simulate").startswith("out of memory: an allocation of 10.0 TB failed")
    assert _error_text(info.value, "simulate").endswith("; lower --size, --n or --batch-size")


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(model_config=[1, 2]), "stored model_config and model_state are list and dict, not the mappings "
                                              "`memseg train` writes; the file is damaged or was edited"),
    (lambda c: c.update(model_state=[1]), "stored model_config and model_state are dict and list, not the mappings"),
    (lambda c: c["model_config"].update(foo=1), "stored model_config: unknown key(s) ['foo'] for the memseg model; "
                                                "valid keys: input_size, memory_size"),
    (lambda c: c["model_config"].update(memory_size="abc"),
     "stored model_config: memory_size must be an integer, got 'abc'"),
    (lambda c: c["model_config"].update(head="weird"), "stored model_config: head must be auto or one of"),
    (lambda c: c["model_config"].update(input_size=[100000, 100000]),
     "its memseg model (input size [100000, 100000], memory_size 2) needs at least 563.3 GB of memory; this machine "
     "has 8.0 GB of RAM; the stored model_config asks for more than this machine has"),
])
def test_checkpoint_content_errors_name_the_file_and_what_is_expected(trained, tiny, capsys, eight_gb, edit, expected):
    import copy

    import torch

    from memseg.engine.checkpoint import read_checkpoint

    ckpt = copy.deepcopy(dict(read_checkpoint(trained)))
    edit(ckpt)
    bad = tiny / "bad.pt"
    torch.save(ckpt, bad)
    image = tiny / "data" / "tiny" / "test" / "good" / "000.png"
    assert cli_main(["predict", "--checkpoint", str(bad), str(image), "--out", str(tiny / "p"), "--backend", "torch",
                     "--device", "cpu"]) == 2  # was a TypeError traceback, "invalid literal for int()", can't allocate
    assert _one_error_line(capsys, "predict").startswith(f"{bad}: {expected}")
    assert not (tiny / "p").exists()


def test_an_onnx_file_onnxruntime_cannot_load_or_run_is_named(tmp_path, capsys, eight_gb):
    import onnx
    import torch

    from memseg.engine.onnx_runtime import load_onnx

    meta = {"format": "memseg-kit-onnx", "model_name": "memseg", "input_size": [32, 32], "top_k": 10, "threshold": 0.5}
    path = _tiny_onnx(tmp_path / "broken.onnx", meta)
    proto = onnx.load(str(path))
    proto.graph.node[0].op_type = "NoSuchOp"  # the graph's inputs and outputs still fit: onnxruntime refuses it
    onnx.save(proto, str(path))
    with pytest.raises(ValueError) as info:  # was onnxruntime's InvalidGraph (an Exception: a raw traceback in the CLI)
        load_onnx(path)
    assert str(info.value).startswith(f"{path}: onnxruntime cannot load the model (")
    assert str(info.value).endswith("expected a file written by `memseg export` (export it again)")
    assert len(str(info.value).splitlines()) == 1

    model, _ = load_onnx(_tiny_onnx(tmp_path / "ok.onnx", meta))
    with pytest.raises(RuntimeError) as info:  # a graph that fails while running names the model file, not the image
        model.anomaly_map(torch.zeros(1, 2, 32, 32))
    assert str(info.value).startswith(f"{tmp_path / 'ok.onnx'}: onnxruntime could not run the model (")

    big = _tiny_onnx(tmp_path / "big.onnx", {**meta, "input_size": [100000, 100000]}, size=100000)
    with pytest.raises(ValueError, match=r"big\.onnx: its stored input size \[100000, 100000\] .* needs at least "
                                         r"160\.0 GB"):
        load_onnx(big)


# ---------------------------------------------------------------- 9. the command line shows warnings as one plain line
def _warning_lines(err: str, command: str) -> list[str]:
    assert "UserWarning" not in err and ".py:" not in err, err  # no category, no file:line, no source line
    return [ln for ln in err.replace("\r", "\n").splitlines() if "warning" in ln.lower()]


def test_cli_warnings_are_one_plain_line_in_cli_terms_and_the_api_keeps_its_warnings(tiny, capsys):
    import warnings

    from memseg.simulation import AnomalySimulator
    from memseg.simulation.foreground import FOREGROUND_PRESETS

    # ignored elsewhere in this module; the subject here
    warnings.filterwarnings("default", message="no foreground preset")
    args = ["simulate", "--data", str(tiny / "data"), "--category", "tiny", "--no-save", "--n", "2", "--size", "32",
            "--device", "cpu", "--source", "structure"]
    before = warnings.showwarning
    assert cli_main(args) == 0
    assert _warning_lines(capsys.readouterr().err, "simulate") == [
        "memseg simulate: warning: no foreground preset for category 'tiny' (known: "
        f"{', '.join(sorted(FOREGROUND_PRESETS))}); using none (M_I = all ones); simulated anomalies may land anywhere "
        "in the image"]  # no API advice
    assert warnings.showwarning is before  # the API, in the same process, keeps Python's warnings and their advice
    with pytest.warns(UserWarning, match=r"Pass foreground=ForegroundConfig\(\.\.\.\) to restrict anomalies"):
        AnomalySimulator.for_category("tiny", size=(32, 32), device="cpu")


@pytest.mark.filterwarnings("default")
def test_evaluate_warns_in_one_plain_line_naming_the_checkpoint(trained, tiny, capsys):
    make_tiny_dataset(tiny / "data", category="other", n_train=2, size=(32, 32))
    args = ["evaluate", "--checkpoint", str(trained), "--data", str(tiny / "data"), "--category", "other",
            "--out", str(tiny / "e"), "--backend", "torch", "--device", "cpu"]
    assert cli_main(args) == 0  # was "commands.py:252: UserWarning: ... result = evaluate(..." on stderr
    assert _warning_lines(capsys.readouterr().err, "evaluate") == [
        f"memseg evaluate: warning: {trained} was trained on category 'tiny', evaluating it on 'other'"]


# --------------------------------------------------------- 10. the dashboard: uploads it cannot score, bad model files
@pytest.fixture
def onnx_app(tiny):
    """The dashboard on the tiny data and a small ONNX graph shaped like memseg export's (no training, no export)."""
    pytest.importorskip("ipywidgets")
    from memseg.apps.dashboard import DashboardApp
    from memseg.apps.demo import DemoSettings

    meta = {"format": "memseg-kit-onnx", "model_name": "memseg", "input_size": [32, 32], "top_k": 10, "threshold": 0.5,
            "category": "tiny"}
    runs = tiny / "runs"
    runs.mkdir()
    model = _tiny_onnx(runs / "model.onnx", meta)
    settings = DemoSettings(data=tiny / "data", category="tiny", checkpoint=model, runs=runs, device="cpu", dtd=None,
                            size=32)
    app = DashboardApp(settings, debounce_s=0)
    assert app.state.error_text == "" and app.state.result is not None
    return app


def _png(width: int, height: int) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _page(app) -> tuple:
    return (app.state.source.name, app.state.result.score, app.state.result.caption, app.ui.panels["input"].value,
            app.ui.image_dd.value)


@pytest.mark.parametrize("name, width, height, size", [("tiny8.png", 8, 8, "8x8"), ("strip.png", 1000, 16, "1000x16")])
def test_the_dashboard_refuses_an_upload_it_cannot_score_naming_the_file_and_keeps_the_page(onnx_app, name, width,
                                                                                             height, size):
    app = onnx_app
    before = _page(app)
    assert app.upload(name, _png(width, height)) is False  # was accepted: every later action then failed again
    assert app.state.error_text == (f"upload rejected: {name}: image is {size} px (WxH); expected each side >= 16 px "
                                    "and an aspect ratio (long side / short side) of at most 10")
    assert _page(app) == before  # the panels, the caption and the picker still show the previous image
    app.set_threshold(0.3)  # later actions work on the image the page shows
    app.ui.next_btn.click()
    assert app.state.error_text == "" and app.state.source.name != before[0]


def test_a_failed_model_run_names_the_image_and_the_page_goes_back_to_the_shown_one(onnx_app, monkeypatch):
    app = onnx_app
    before = _page(app)
    real_predict = app.state.predictor.predict

    def refuse(image, threshold=None):
        if getattr(image, "shape", (0, 0))[:2] == (48, 64):
            raise ValueError("float pixel values span [0, 3]; expected finite float pixel values in [0, 1]")
        return real_predict(image, threshold)

    monkeypatch.setattr(app.state.predictor, "predict", refuse)
    assert app.upload("mine.png", _png(64, 48)) is True
    assert app.state.error_text == ("mine.png: float pixel values span [0, 3]; expected finite float pixel values in "
                                    "[0, 1]")
    assert _page(app) == before and app.state.source is app.state.shown_source
    app.set_simulation(enabled=False)  # the next action does not fail again: it runs on the shown image
    assert app.state.error_text == "" and app.state.source.name == before[0]


def test_a_bad_onnx_in_the_model_picker_is_one_line_and_no_traceback(onnx_app, tiny, capsys):
    app = onnx_app
    model, before = app.state.predictor, _page(app)
    meta = {"format": "memseg-kit-onnx", "model_name": "memseg", "input_size": [32, 32], "top_k": 10, "threshold": 0.5}
    for name, changed in (("scores.onnx", {"validation_scores": ["high"]}), ("count.onnx", {"validation_scores": 5})):
        bad = _tiny_onnx(tiny / name, {**meta, **changed})
        capsys.readouterr()
        app.select_checkpoint(bad)  # was "ValueError: could not convert string to float" / a TypeError, and a traceback
        assert app.state.error_text.startswith(f"cannot load model: {bad}: stored validation scores "), \
            app.state.error_text
        assert len(app.state.error_text.splitlines()) == 1
        assert "Traceback" not in capsys.readouterr().err
        assert app.state.predictor is model and _page(app) == before
    bad = tiny / "foreign.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf of a model")
    app.select_checkpoint(bad)
    assert app.state.error_text == (f"cannot load model: {bad} is not an ONNX model (DecodeError); expected a file "
                                    "written by `memseg export`")


# ----------------------------------------------- 14. the first predict on a new checkpoint: the route follows the work
@pytest.fixture
def no_export_here(monkeypatch, tmp_path):
    """A fresh export cache, and any export in this process fails the test (pytest.fail is no Exception: the
    routes' fallbacks cannot swallow it)."""
    from memseg.engine import deploy_extra, export

    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(deploy_extra, "_SAID", set())
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("exported before scoring a small job"))
    monkeypatch.setattr(export, "export_halves", lambda *a, **k: pytest.fail("exported before scoring a small job"))


def _stop_background(predictor) -> None:
    """End a background export a test started (it would otherwise outlive the test: that is its point)."""
    pending = getattr(predictor, "_pending", None)
    if pending is not None and pending.proc.poll() is None:
        pending.proc.kill()
        pending.proc.wait()


def test_predict_on_a_few_images_of_a_new_checkpoint_answers_in_torch_without_exporting(trained, tiny, capsys,
                                                                                       no_export_here):
    from memseg.engine.inference import Predictor

    images = sorted((tiny / "data" / "tiny" / "test" / "good").glob("*.png"))[:2]
    args = ["predict", "--checkpoint", str(trained), *map(str, images), "--out", str(tiny / "p"), "--device", "cpu"]
    assert cli_main(args) == 0  # was: 10-20 s exporting ONNX graphs before the first score
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (f"memseg: 2 images: {trained} runs with torch (exporting it for the faster "
                                            "CPU route takes 10-20 s, once; that pays off from 200 images)")
    assert "run by torch" in captured.err.splitlines()[-1] and not (tiny / "fresh-cache").exists()
    torch_score = Predictor.from_checkpoint(trained, device="cpu", backend="torch").predict(images[0]).score
    assert float(captured.out.splitlines()[0].split("\t")[1]) == pytest.approx(torch_score, abs=1e-4)


def test_a_large_job_or_a_cached_export_takes_the_fast_route(trained, monkeypatch, no_export_here):
    from memseg.engine import inference

    taken: list[str] = []

    def fast_route(checkpoint, backend, threads):
        taken.append(str(checkpoint))
        backend.name = "fast"
        return backend

    monkeypatch.setattr(inference, "_fast_cpu_route", fast_route)
    big = inference.Predictor.from_checkpoint(trained, device="cpu", images=inference.EXPORT_WORTH_IMAGES)
    assert big.backend == "fast" and taken == [str(trained)]  # worth exporting for: exported (here: faked) first
    files = inference._cpu_route_files(trained, big.record)
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"cached")
    assert inference.Predictor.from_checkpoint(trained, device="cpu", images=1).backend == "fast"  # cached: any job
    assert inference.Predictor.from_checkpoint(trained, device="cpu", images=1, backend="torch").backend == "torch"


def test_unknown_work_answers_in_torch_at_once_while_the_export_runs_in_another_process(trained, capsys,
                                                                                       no_export_here):
    import time

    import numpy as np

    from memseg.engine.inference import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(trained, device="cpu")  # images=None: an interactive session
    try:
        score = predictor.predict(np.full((32, 32, 3), 90, np.uint8)).score
        assert time.perf_counter() - t0 < 8  # no export in the way (it takes 10-20 s)
        assert predictor.backend == "torch" and 0.0 <= score <= 1.0
        assert capsys.readouterr().err.splitlines() == [
            f"memseg: {trained} runs with torch while its faster CPU route is exported in the background (10-20 s, "
            "once; cached for the next run)"]
        assert predictor._pending.proc.poll() is None  # a separate, low-priority process exports it
    finally:
        _stop_background(predictor)


@pytest.mark.slow  # a real export in the background process (10-20 s)
def test_the_background_export_is_adopted_between_calls_and_cached_for_the_next_run(trained, tmp_path, monkeypatch,
                                                                                    capsys):
    import numpy as np

    from memseg.engine import deploy_extra, export
    from memseg.engine.inference import Predictor

    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(deploy_extra, "_SAID", set())
    image = np.full((32, 32, 3), 90, np.uint8)
    predictor = Predictor.from_checkpoint(trained, device="cpu")
    try:
        first = predictor.predict(image).score
        assert predictor.wait_for_route(timeout=300) != "torch"
        assert predictor.predict(image).score == pytest.approx(first, abs=1e-4)  # the same answer, faster route
        assert (f"memseg: {trained} now runs with {predictor.backend} (exported in the "
                "background)") in capsys.readouterr().err
        assert Predictor.from_checkpoint(trained, device="cpu").backend == predictor.backend  # cached: at once
    finally:
        _stop_background(predictor)


def test_the_dashboards_first_click_does_not_wait_for_an_export(trained, tiny, no_export_here):
    import time

    pytest.importorskip("ipywidgets")
    from memseg.apps.dashboard import DashboardApp
    from memseg.apps.demo import DemoSettings

    settings = DemoSettings(data=tiny / "data", category="tiny", checkpoint=trained, runs=tiny / "none", device="cpu",
                            dtd=None, size=32)
    t0 = time.perf_counter()
    app = DashboardApp(settings, debounce_s=0)  # was: the checkpoint exported (10-20 s) before the first view
    try:
        assert app.state.error_text == "" and app.state.predictor.backend == "torch" and app.state.result is not None
        app.ui.next_btn.click()  # the first click
        assert app.state.error_text == "" and app.state.updates_run >= 2
        assert time.perf_counter() - t0 < 10
    finally:
        _stop_background(app.state.predictor)
