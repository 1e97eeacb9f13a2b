"""`memseg train | evaluate | predict` end to end on the synthetic fixture dataset (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memseg.apps.cli import main
from memseg.engine.checkpoint import read_checkpoint

CATEGORY = "weave"


def _small_config(tmp_path: Path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(
        "model_options: {memory_size: 2, weights: random}\n"
        "batch_normal: 2\nbatch_anomalous: 2\ncheckpoint_every: 2\nlog_every: 1\nwarmup_steps: 1\n"
        "val_fraction: 0.2\nsimulation: {texture_prob: 0.0}\n"
    )
    return p


def test_train_evaluate_predict_end_to_end(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    train_args = ["train", "--data", str(synthetic_root), "--category", CATEGORY, "--config",
                  str(_small_config(tmp_path)),
                  "--size", "64", "--steps", "4", "--out", str(run), "--device", "cpu"]
    assert main(train_args) == 0
    out = capsys.readouterr().out
    ckpt = run / "checkpoints" / "last.pt"
    assert f"checkpoint: {ckpt}" in out and f"run folder: {run}" in out
    info = read_checkpoint(ckpt)
    assert info["step"] == 4 and info["config"]["steps"] == 4 and info["config"]["category"] == CATEGORY
    assert info["weights_source"] == "random" and info["threshold"] is not None
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 4

    # a fresh run into the same folder is refused; --resume continues it to more steps
    assert main(train_args) == 2
    assert "already has checkpoints" in capsys.readouterr().err
    assert read_checkpoint(ckpt)["step"] == 4
    assert main(["train", "--data", str(synthetic_root), "--category", CATEGORY, "--out", str(run), "--resume",
                 "--steps", "6", "--device", "cpu"]) == 0
    capsys.readouterr()
    resumed = read_checkpoint(ckpt)
    assert resumed["step"] == 6 and resumed["config"]["batch_normal"] == 2  # the stored config was kept
    assert [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]

    # evaluate: metrics files; an existing --out is not overwritten
    ev = tmp_path / "eval"
    eval_args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(synthetic_root), "--category", CATEGORY,
                 "--out", str(ev), "--batch-size", "4", "--device", "cpu"]
    assert main(eval_args) == 0
    assert "image AUROC" in capsys.readouterr().out
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["category"] == CATEGORY
    assert metrics["overall"]["n_images"] > 0 and 0.0 <= metrics["overall"]["pixel_auroc"] <= 1.0
    assert "decision" in metrics  # at the validation threshold
    assert "| category | image AUROC | pixel AUROC | AUPRO@0.3 |" in (ev / "metrics.md").read_text()
    assert main(eval_args) == 2
    assert "already exists" in capsys.readouterr().err
    # default output folder next to the run, never reused
    default_args = eval_args[:eval_args.index("--out")] + eval_args[eval_args.index("--out") + 2:]
    assert main(default_args) == 0 and main(default_args) == 0
    capsys.readouterr()
    assert ((run / f"eval-{CATEGORY}" / "metrics.json").is_file()
            and (run / f"eval-{CATEGORY}-2" / "metrics.json").is_file())

    # predict: one TSV line per image (with its overlay), overlays mirror the inputs' folders, never overwritten
    good = sorted((synthetic_root / CATEGORY / "test" / "good").glob("*.png"))[0]
    defect_dir = next(d for d in sorted((synthetic_root / CATEGORY / "test").iterdir()) if d.name != "good")
    bad = sorted(defect_dir.glob("*.png"))[0]
    assert good.name == bad.name  # same file name in two folders: the overlays must still map back
    pred_out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), str(bad), "--out", str(pred_out), "--device",
                 "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, src in zip(lines, (good, bad)):
        path, score, verdict, overlay_file = line.split("\t")
        assert path == str(src) and 0.0 <= float(score) <= 1.0 and verdict in ("normal", "anomalous")
        assert overlay_file == str(pred_out / src.parent.name / f"{src.stem}_overlay.png")
    overlay = pred_out / "good" / f"{good.stem}_overlay.png"
    first_bytes = overlay.read_bytes()
    with Image.open(overlay) as im:
        assert im.size == Image.open(good).size and im.mode == "RGB"
    first_csv = (pred_out / "predictions.csv").read_text()
    assert main(["predict", "--checkpoint", str(ckpt), str(good), str(bad), "--out", str(pred_out), "--device",
                 "cpu"]) == 0
    capsys.readouterr()
    assert overlay.read_bytes() == first_bytes and (pred_out / "good" / f"{good.stem}_overlay-2.png").is_file()
    assert (pred_out / "predictions.csv").read_text() == first_csv and (pred_out / "predictions-2.csv").is_file()


def test_predict_bad_image_path_exits_2_naming_the_file(synthetic_root, tmp_path, capsys):
    import torch

    from memseg.engine.checkpoint import save_checkpoint
    from memseg.models import build_model
    from memseg.utils import normalize

    model = build_model("memseg", {"input_size": (64, 64), "memory_size": 2, "weights": "random"})
    model.prepare(normalize(torch.rand(2, 3, 64, 64)))
    ckpt = save_checkpoint(tmp_path / "ck.pt", model, config={"category": CATEGORY})
    missing = tmp_path / "no_such_image.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(good)
    rc = main(["predict", "--checkpoint", str(ckpt), str(missing), str(corrupt), str(good), "--out",
               str(tmp_path / "o"),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    assert str(missing) in captured.err and str(corrupt) in captured.err
    assert captured.out.startswith(f"{good}\t")  # the readable image is still scored
    assert (tmp_path / "o" / "ok_overlay.png").is_file()


def test_bad_inputs_to_train_and_evaluate_exit_2(synthetic_root, tmp_path, capsys):
    assert main(["train", "--data", str(synthetic_root), "--category", "nope", "--size", "64", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--weights", "random", "--device", "cpu"]) == 2
    assert "nope" in capsys.readouterr().err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("stepz: 3\n")
    assert main(["train", "--data", str(synthetic_root), "--category", CATEGORY, "--config", str(bad_cfg)]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(synthetic_root),
                 "--category", CATEGORY]) == 2
    assert "missing.pt" in capsys.readouterr().err


# ------------------------------------------------------------------------------- hardening (issue 12)
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """An untrained 64 px MemSeg checkpoint (memory bank of 2 random images, threshold 0.25)."""
    from memseg.engine.checkpoint import save_checkpoint

    model = tiny_model("memseg")
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck.pt", model, config={"category": CATEGORY},
                           threshold=0.25)


def _png(path: Path, h: int = 40, w: int = 56, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memseg {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_predict_out_is_a_file_fails_before_loading_the_model(tmp_path, capsys):
    out_file = tmp_path / "taken.txt"
    out_file.write_text("not a folder")
    image = _png(tmp_path / "img.png")
    # the checkpoint does not exist either: the --out error coming first shows nothing was loaded
    rc = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image), "--out", str(out_file), "--device",
               "cpu"])
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert rc == 2 and str(out_file) in line and "--out" in line and "missing.pt" not in line
    assert out_file.read_text() == "not a folder"
    # a file further up the path is named too
    rc = main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image), "--out", str(out_file / "sub"),
               "--device", "cpu"])
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert rc == 2 and f"{out_file} is a file" in line


def test_evaluate_out_is_a_file_fails_before_any_work(tmp_path, capsys):
    out_file = tmp_path / "metrics"
    out_file.write_text("x")
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "no_data"),
               "--category", CATEGORY, "--out", str(out_file), "--device", "cpu"])
    line = _one_error_line(capsys.readouterr().err, "evaluate")
    assert rc == 2 and str(out_file) in line and "missing.pt" not in line and "no_data" not in line


@pytest.mark.parametrize("error", [
    FileExistsError(17, "File exists", "/runs/x/metrics.json"),
    NotADirectoryError(20, "Not a directory", "/runs/file/sub"),
    PermissionError(13, "Permission denied", "/readonly/out"),
    IsADirectoryError(21, "Is a directory", "/data/folder"),
    OSError(28, "No space left on device", "/full/disk/overlay.png"),
])
def test_main_turns_every_oserror_into_one_line(monkeypatch, capsys, error):
    from memseg.apps import commands

    def fail(args):
        raise error

    monkeypatch.setattr(commands, "run_predict", fail)
    assert main(["predict", "--checkpoint", "ck.pt", "img.png"]) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert line == f"memseg predict: error: {error.filename}: {error.strerror}"


def test_evaluate_batch_size_zero_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", "ck.pt", "--data", str(tmp_path), "--category", CATEGORY, "--batch-size",
              "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --batch-size: expected an integer >= 1, got 0" in err and "Traceback" not in err


def test_predict_mirrors_input_folders_writes_csv_and_says_where(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import csv

    inputs = tmp_path / "mvtec"
    a = _png(inputs / "bottle" / "test" / "crack" / "000.png")
    b = _png(inputs / "screw" / "test" / "crack" / "000.png", value=200)
    c = _png(inputs / "screw" / "test" / "crack" / "001.png", value=30)
    monkeypatch.chdir(tmp_path)  # no --out: ./predictions
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(a), str(inputs / "screw" / "test" / "crack"),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    out = tmp_path / "predictions"
    expected = {a: out / "bottle/test/crack/000_overlay.png", b: out / "screw/test/crack/000_overlay.png",
                c: out / "screw/test/crack/001_overlay.png"}
    printed = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert [(p, Path(o)) for p, _, _, o in printed] == [(str(k), Path("predictions") / v.relative_to(out))
                                                        for k, v in expected.items()]
    for target in expected.values():
        assert target.is_file()
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(k) for k in expected]
    assert [(f"{float(r['score']):.4f}", r["verdict"]) for r in rows] == [(s, v) for _, s, v, _ in printed]
    assert all(r["overlay"] == o for r, (_, _, _, o) in zip(rows, printed))
    assert all((r["verdict"] == "anomalous") == (float(r["score"]) >= 0.25) for r in rows)
    summary = captured.err.strip().splitlines()[-1]
    assert f"3 overlay(s) under {out}" in summary and f"table {out / 'predictions.csv'}" in summary


def test_predict_reports_bad_sizes_and_limits_per_file(tiny_checkpoint, tmp_path, capsys):
    thin = _png(tmp_path / "thin.png", h=1, w=500)
    big = _png(tmp_path / "big.png", h=100, w=120)
    ok = _png(tmp_path / "ok.png")
    rc = main(["predict", "--checkpoint", str(tiny_checkpoint), str(thin), str(big), str(ok), "--out",
               str(tmp_path / "o"),
               "--max-pixels", "5000", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    assert f"{thin}: image is 500x1 px (WxH); expected each side >= 16 px" in captured.err
    assert (f"{big}: 120x100 = 0.0 Mpx is above the limit of 0.005 Mpx" in captured.err
            and "--max-pixels" in captured.err)
    assert captured.out.startswith(f"{ok}\t") and len(captured.out.strip().splitlines()) == 1
    assert "1 overlay(s) under" in captured.err and "2 input(s) failed" in captured.err


def test_predict_all_inputs_failing_writes_nothing_and_exits_2(tiny_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "o"
    rc = main(["predict", "--checkpoint", str(tiny_checkpoint), str(broken), str(tmp_path / "missing.png"),
               "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "overlay" not in captured.err and str(out) not in captured.err
    assert "none of the 2 input(s) could be scored; nothing was written" in captured.err
    assert not out.exists()


def test_every_option_has_help_and_defaults_are_shown(capsys):
    import argparse

    from memseg.apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"synth", "simulate", "pretrain", "train", "evaluate", "predict", "export", "benchmark"}
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), (f"memseg {name} {action.option_strings or action.dest}: no "
                                                         "help text")
        page = p.format_help()
        for action in p._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"default: {action.default}" in " ".join(page.split()), f"memseg {name} {action.option_strings}"
    assert "(default: 8)" in sub.choices["evaluate"].format_help()


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"memseg {version('memseg')}"


def test_train_with_a_text_file_as_weights_says_what_was_expected(synthetic_root, tmp_path, capsys):
    notes = tmp_path / "resnet18.txt"
    notes.write_text("download the weights from the model zoo\n")
    rc = main(["train", "--data", str(synthetic_root), "--category", CATEGORY, "--config", str(_small_config(tmp_path)),
               "--weights", str(notes), "--size", "32", "--steps", "1", "--out", str(tmp_path / "run"), "--device",
               "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{notes}: cannot be read as encoder weights: it is a text file; expected a resnet18 state dict" in err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err


def test_set_reaches_the_trained_model_and_the_simulation(synthetic_root, tmp_path, capsys):
    """`--set` values travel the same road as the --config file's: into the run's config and the built model."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_root), "--category", CATEGORY, "--config",
                 str(_small_config(tmp_path)),
                 "--size", "64", "--steps", "2", "--out", str(run), "--device", "cpu",
                 "--set", "model_options.attention=literal", "--set", "model_options.memory_shift=1",
                 "--set", "simulation.grid=[2,4]", "--set", "val_fraction=0", "--set", "steps=9"]) == 0
    capsys.readouterr()
    info = read_checkpoint(run / "checkpoints" / "last.pt")
    assert info["model_config"]["attention"] == "literal" and info["model_config"]["memory_shift"] == 1
    assert info["config"]["simulation"] == {"texture_prob": 0.0, "grid": [2, 4]}  # the file's key kept, --set's added
    assert info["config"]["val_fraction"] == 0.0 and info["step"] == 2  # --steps (a flag) wins over --set steps=9
