"""benchmarks/report_run.py: the results page of a finished run (tiny real run, no fakes of the model)."""

from __future__ import annotations

import json

import pytest
from tiny_data import make_tiny_dataset

from memseg.engine.evaluation import evaluate
from memseg.engine.training import TrainConfig, train


@pytest.fixture(scope="module")
def report(load_benchmark):
    return load_benchmark("report_run")


def test_run_timing_reads_the_step_log(report, tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(json.dumps({"step": i + 1, "loss": 1.0, "seconds": s})
                             for i, s in enumerate([3.0, 1.0, 2.0])) + "\n")
    assert report.run_timing(log) == {"steps": 3, "total_s": 6.0, "median_step_s": 2.0}
    log.write_text("")
    with pytest.raises(ValueError, match="no steps"):
        report.run_timing(log)


@pytest.mark.filterwarnings("ignore:no foreground preset")
def test_report_of_a_tiny_run(report, tmp_path, one_thread):
    data = make_tiny_dataset(tmp_path / "data", n_train=12)
    cfg = TrainConfig.from_dict(dict(
        data=str(data), category="tiny", size=64, steps=3, log_every=1, batch_normal=2, batch_anomalous=2,
        warmup_steps=1, device="cpu", val_fraction=0.2, model_options={"memory_size": 2, "weights": "random"},
        out=str(tmp_path / "run"),
    ))
    result = train(cfg, progress=False)
    metrics = evaluate(result.checkpoint, data, "tiny", out=tmp_path / "eval", progress=False, device="cpu")
    out = tmp_path / "page"
    page = report.write_report(result.run_dir, tmp_path / "eval" / "metrics.json", data, "tiny", out,
                               ["memseg train ...", "memseg evaluate ..."], n_predictions=2)
    text = page.read_text()
    o = metrics["overall"]
    row = f"| tiny | {100 * o['image_auroc']:.1f} | {100 * o['pixel_auroc']:.1f} | {100 * o['aupro']:.1f} |"
    assert row in text  # the measured numbers, as `memseg evaluate` wrote them
    assert "3 steps logged" in text and "memseg evaluate ..." in text
    assert str(tmp_path) not in text  # no machine-local checkpoint path on a committed page
    for png in ("loss.png", "predictions.png"):
        assert (out / png).stat().st_size > 1000 and (out / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="already exists"):
        report.write_report(result.run_dir, tmp_path / "eval" / "metrics.json", data, "tiny", out, [])
    bare = report.write_report(result.run_dir, tmp_path / "eval" / "metrics.json", data, "tiny", tmp_path / "bare", [],
                               n_predictions=0)
    assert "predictions.png" not in bare.read_text() and not (tmp_path / "bare" / "predictions.png").exists()
    assert (tmp_path / "bare" / "loss.png").is_file()
