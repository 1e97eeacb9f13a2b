"""`memseg train | evaluate | predict` end to end on the synthetic fixture dataset (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from memseg.checkpoint import read_checkpoint
from memseg.cli import main

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
    train_args = ["train", "--data", str(synthetic_root), "--category", CATEGORY, "--config", str(_small_config(tmp_path)),
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
    assert (run / f"eval-{CATEGORY}" / "metrics.json").is_file() and (run / f"eval-{CATEGORY}-2" / "metrics.json").is_file()

    # predict: one TSV line per image, overlays written, never overwritten
    good = sorted((synthetic_root / CATEGORY / "test" / "good").glob("*.png"))[0]
    defect_dir = next(d for d in sorted((synthetic_root / CATEGORY / "test").iterdir()) if d.name != "good")
    bad = sorted(defect_dir.glob("*.png"))[0]
    pred_out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), str(bad), "--out", str(pred_out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, src in zip(lines, (good, bad)):
        path, score, verdict = line.split("\t")
        assert path == str(src) and 0.0 <= float(score) <= 1.0 and verdict in ("normal", "anomalous")
    overlay = pred_out / f"{good.stem}_overlay.png"
    first_bytes = overlay.read_bytes()
    with Image.open(overlay) as im:
        assert im.size == Image.open(good).size and im.mode == "RGB"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), "--out", str(pred_out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert overlay.read_bytes() == first_bytes and (pred_out / f"{good.stem}_overlay-2.png").is_file()


def test_predict_bad_image_path_exits_2_naming_the_file(synthetic_root, tmp_path, capsys):
    import torch

    from memseg.checkpoint import save_checkpoint
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
    rc = main(["predict", "--checkpoint", str(ckpt), str(missing), str(corrupt), str(good), "--out", str(tmp_path / "o"),
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
