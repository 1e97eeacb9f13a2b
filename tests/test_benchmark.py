"""`memseg benchmark`: categories x seeds, resumable per (category, seed), the paper-style table.

Fast tests run tiny budgets (2-3 steps at 32 px) on two tiny categories; the ``slow`` test runs the
three synthetic categories plus the real MVTec 3D-AD tire (skipped when ../shared/data is absent).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny_data import make_tiny_dataset

from memseg.apps.cli import main
from memseg.engine import benchmark as bench
from memseg.engine.train_config import TrainConfig
from memseg.engine.training import train
from memseg.simulation.foreground import FOREGROUND_PRESETS

TINY = ["--steps", "2", "--size", "32", "--weights", "random", "--device", "cpu"]


@pytest.fixture()
def two_categories(tmp_path: Path) -> Path:
    """``bottle`` (has paper numbers) and ``tiny`` (has none), 12 train images each."""
    root = tmp_path / "data"
    make_tiny_dataset(root, "bottle", seed=0)
    make_tiny_dataset(root, "tiny", seed=1)
    return root


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def test_benchmark_writes_the_table_and_a_second_run_trains_nothing(two_categories, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(two_categories), "--categories", "bottle,tiny", "--seeds", "0,1",
            "--out", str(out), *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for cat in ("bottle", "tiny"):
        for seed in (0, 1):
            assert f"benchmark {cat} seed {seed}: image AUROC" in printed
            assert (out / cat / f"seed{seed}" / "final.pt").is_file()
            assert (out / cat / f"seed{seed}" / "eval" / "metrics.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert list(results["categories"]) == ["bottle", "tiny"] and results["seeds"] == [0, 1]
    for c in results["categories"].values():
        assert sorted(c["seeds"]) == ["0", "1"] and not c["missing_seeds"]
        assert c["seeds"]["0"]["step"] == 2 and c["seeds"]["0"]["input_size"] == [32, 32]
        assert all(_finite(c["mean"][m]) and _finite(c["std"][m]) for m in bench.METRICS)
        assert c["memory_size"] == 5  # 12 train images: 2 validation, half of the other 10
    assert results["categories"]["bottle"]["paper"] == {"image_auroc": 1.0, "pixel_auroc": 0.993}
    assert results["categories"]["tiny"]["paper"] is None
    assert results["mean"]["seeds"] == [0, 1] and all(_finite(results["mean"]["mean"][m]) for m in bench.METRICS)
    table = (out / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"bottle", "tiny", "**mean**"}
    assert "| 100.0 |" in rows["bottle"] and "| 99.3 |" in rows["bottle"] and " ± " in rows["bottle"]
    assert rows["tiny"].count("| – |") == 2
    assert "Table 1" in table and "arXiv 2205.00908" in table

    # Re-run over all categories (how a SLURM array is merged): every run is done -> nothing trains, table rebuilt.
    def refuse(*_a, **_k):
        raise AssertionError("a finished (category, seed) was trained or evaluated again")

    monkeypatch.setattr(bench, "train", refuse)
    monkeypatch.setattr(bench, "evaluate", refuse)
    (out / "results.md").unlink()
    assert main(["benchmark", "--data", str(two_categories), "--seeds", "0,1", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 4
    assert (out / "results.md").read_text() == table


def test_benchmark_resumes_an_interrupted_run_and_evaluates_a_finished_one(two_categories, tmp_path, capsys):
    out = tmp_path / "bench"
    settings = bench.BenchmarkSettings(str(two_categories), str(out), steps=3, size=32, weights="random", device="cpu",
                                       progress=False)

    def stop_after_first_step(step, _logs):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: train saves checkpoints/last.pt at step 1
        train(bench.category_config(settings, "tiny", 0), progress=False, callback=stop_after_first_step)
    run = out / "tiny" / "seed0"
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "final.pt").exists()
    capsys.readouterr()

    bench.run_benchmark(two_categories, out, ["tiny"], [0], steps=3, size=32, weights="random", device="cpu",
                        progress=False)
    assert "(resumed 3 steps, evaluated;" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    (run / "eval" / "metrics.json").unlink()  # killed between training and evaluation
    (run / "eval" / "metrics.md").unlink()
    final_mtime = (run / "final.pt").stat().st_mtime_ns
    bench.run_benchmark(two_categories, out, ["tiny"], [0], steps=3, size=32, weights="random", device="cpu",
                        progress=False)
    assert "(training done earlier, evaluated;" in capsys.readouterr().out
    assert (run / "final.pt").stat().st_mtime_ns == final_mtime and (run / "eval" / "metrics.json").is_file()


def test_benchmark_refuses_a_run_folder_of_another_budget(two_categories, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(two_categories), "--categories", "tiny", "--out", str(out), *TINY]) == 0
    final = out / "tiny" / "seed0" / "final.pt"
    before = final.stat().st_mtime_ns
    capsys.readouterr()
    args = ["benchmark", "--data", str(two_categories), "--categories", "tiny", "--out", str(out), *TINY, "--steps",
            "3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed0 was trained with other settings: steps 2 (asked: 3)" in err
    assert final.stat().st_mtime_ns == before


@pytest.mark.parametrize("flags, expected", [
    (["--categories", "bottle,nope"], "--categories: unknown category 'nope' under {data}; found: bottle, tiny"),
    (["--seeds", "0,x"], "--seeds expects a comma-separated list of ints, e.g. 0,1,2; got '0,x'"),
])
def test_benchmark_bad_flags_give_one_line(two_categories, tmp_path, capsys, flags, expected):
    rc = main(["benchmark", "--data", str(two_categories), "--out", str(tmp_path / "bench"), *TINY, *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"memseg benchmark: error: {expected.format(data=two_categories)}"
    assert not (tmp_path / "bench").exists()


def test_benchmark_data_without_categories(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["benchmark", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "bench"), *TINY]) == 2
    assert "no category folders found" in capsys.readouterr().err


def test_presets_follow_the_paper():
    cfg = TrainConfig(seed=0)
    assert bench.memory_size_for("screw", 320, cfg) == 70  # paper §4.2: more memory samples for screw
    assert bench.memory_size_for("toothbrush", 60, cfg) == 10  # ... only 10 for toothbrush
    assert bench.memory_size_for("bottle", 209, cfg) == 30  # ... 30 for the others
    assert bench.memory_size_for("bottle", 12, cfg) == 5  # small data: half of the images left after validation
    mvtec = [c for c in bench.PAPER_MEMSEG if not c.isdigit()]
    assert len(mvtec) == 15 and all(c in FOREGROUND_PRESETS for c in mvtec)
    assert sorted(c for c in bench.PAPER_MEMSEG if c.isdigit()) == ["01", "02", "03"]
    image = [bench.PAPER_MEMSEG[c][0] for c in mvtec]
    assert abs(sum(image) / 15 - bench.PAPER_MEAN["MVTec AD"][0]) < 0.05  # transcription matches the paper's average


def test_several_gpus_run_one_category_per_process(two_categories, tmp_path, capsys):
    """The pool path (one process per GPU id), exercised on CPU: same results as the sequential path."""
    kwargs = dict(seeds=[0], steps=2, size=32, weights="random", device="cpu", progress=False)
    pooled = bench.run_benchmark(two_categories, tmp_path / "pool", None, gpus=["0", "1"], **kwargs)
    in_turn = bench.run_benchmark(two_categories, tmp_path / "seq", None, gpus=[], **kwargs)
    for c in ("bottle", "tiny"):
        assert pooled["categories"][c]["mean"] == in_turn["categories"][c]["mean"]


# --------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_benchmark_synthetic_and_tire(synthetic_root, tire_root, tmp_path, capsys):
    """weave, washer, toys (synthetic) and the real tire at a tiny budget: a row per category, finite numbers."""
    data = tmp_path / "data"
    data.mkdir()
    for cat in ("weave", "washer", "toys"):
        (data / cat).symlink_to(synthetic_root / cat, target_is_directory=True)
    (data / "tire").symlink_to(tire_root / "tire", target_is_directory=True)
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(data), "--seeds", "0,1", "--steps", "5", "--size", "64",
            "--weights", "random", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    print(capsys.readouterr().out)  # shown with -s: the table of this run
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["categories"]) == ["tire", "toys", "washer", "weave"]
    for c in results["categories"].values():
        assert all(_finite(c["mean"][m]) for m in bench.METRICS)
    assert results["categories"]["tire"]["memory_size"] == 30
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    names = [r.split("|")[1].strip() for r in rows[1:]]
    assert names == ["tire", "toys", "washer", "weave", "**mean**"]
    assert all("n/a" not in r for r in rows)
