"""benchmarks/run.py: suite orchestration, JSON keys, writer and table (with fast fake benchmarks).

The real `run.py --quick` takes minutes on the shared 2-core CPU, so it is not run here; the fake
benchmark functions below return known numbers, which makes the bookkeeping checkable exactly.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("run")


@pytest.fixture
def fake_benches(bench, monkeypatch):
    calls: list[tuple] = []

    def simulation(size, batch, threads, device, seconds):
        calls.append(("simulation", size, batch, threads, device))
        return 500.0 if threads == 1 else 800.0

    def inference(batch, size, device, dtype=None, iters=10, warmup=2):
        calls.append(("inference", batch, size, str(device), dtype))
        return {"img_per_s": 10.0 * batch, "p50_ms": 100.0, "p95_ms": 120.0}

    def train_step(batch, size, device, dtype=None, iters=3, warmup=1):
        calls.append(("train", batch, size, str(device), dtype))
        return 1.5

    def memory_size(ns, size, device, iters=5):
        calls.append(("memory", tuple(ns), size, str(device)))
        return [{"N": n, "bank_MiB": 0.5 * n, "img_per_s": 100.0 / n, "p50_ms": float(n), "p95_ms": float(n)}
                for n in ns]

    monkeypatch.setattr(bench, "_bench_functions", lambda: {
        "simulation": simulation, "inference": inference, "train_step": train_step, "memory_size": memory_size})
    monkeypatch.setattr(bench, "reference_resnet18", lambda device, size, **kw: 40.0)
    return calls


def test_suite_fills_every_key_on_cpu(bench, fake_benches):
    res = bench.run_suite(size=64, device="cpu", quick=True, progress=False)
    assert res["errors"] == []
    assert set(res) == set(bench._empty_results())
    assert res["meta"]["size"] == 64 and res["meta"]["quick"] is True and res["meta"]["gpu"] is None
    assert res["reference"]["resnet18_img_per_s"] == {"cpu": 40.0, "cuda": None}
    assert res["simulation"] == {"cpu_1_thread": 500.0, "cpu_all_threads": 800.0, "cuda_batched": None}
    assert res["inference"]["cpu"]["batch1"] == {"img_per_s": 10.0, "p50_ms": 100.0, "p95_ms": 120.0}
    assert res["inference"]["cpu"]["batch32"]["img_per_s"] == 320.0
    assert res["inference"]["cuda_bf16"] == {"batch1": None, "batch32": None}
    assert res["train_step"]["cpu"] == {"seconds": 1.5, "est_2700_steps_s": 2700 * 1.5}
    assert [r["N"] for r in res["memory"]["rows"]] == [1, 10, 30, 100]
    assert res["memory"]["rows"][2]["bank_bytes"] == 15 * 2**20  # 0.5 MiB x 30
    assert res["ratios"]["cpu_batch1_vs_resnet18"] == pytest.approx(10.0 / 40.0)
    assert res["ratios"]["cpu_batch32_vs_resnet18"] == pytest.approx(320.0 / 40.0)
    assert res["ratios"]["cuda_fp32_batch1_vs_resnet18"] is None
    assert res["metrics"]["compute_metrics_s"] > 0  # the real compute_metrics on 100 maps of 64x64
    # every benchmark ran at the requested size, on the CPU only
    assert all(c[2] == 64 for c in fake_benches if c[0] in ("inference", "train", "memory"))
    assert {c[1] for c in fake_benches if c[0] == "inference"} == {1, 32}
    assert not any("cuda" in str(c) for c in fake_benches)
    json.dumps(res, allow_nan=False)  # plain JSON


def test_failing_benchmark_is_reported_and_others_still_run(bench, fake_benches, monkeypatch):
    funcs = bench._bench_functions()

    def broken(**kw):
        raise ValueError("boom")

    monkeypatch.setattr(bench, "_bench_functions", lambda: {**funcs, "train_step": broken})
    res = bench.run_suite(size=64, device="cpu", quick=True, progress=False)
    assert res["errors"] == ["train step cpu: ValueError: boom"]
    assert res["train_step"]["cpu"] is None
    assert res["inference"]["cpu"]["batch1"] is not None


def test_cuda_request_without_cuda_is_a_clear_error(bench, fake_benches):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        bench.run_suite(size=64, device="cuda", quick=True, progress=False)


def test_table_rows_show_targets_for_gpu_results(bench):
    res = bench._empty_results()
    res["reference"]["resnet18_img_per_s"].update(cpu=40.0, cuda=4000.0)
    res["inference"]["cuda_bf16"]["batch32"] = {"img_per_s": 2500.0, "p50_ms": 12.8, "p95_ms": 13.5}
    res["inference"]["cuda_fp32"]["batch1"] = {"img_per_s": 350.0, "p50_ms": 2.86, "p95_ms": 3.1}
    res["train_step"]["cuda_bf16"] = {"seconds": 0.05, "est_2700_steps_s": 135.0}
    res["memory"] = {"device": "cuda:0", "rows": [{"N": 30, "img_per_s": 300.0, "bank_bytes": 3 * 2**20}]}
    res["ratios"] = bench.ratios(res)
    rows = bench.table_rows(res)
    text = "\n".join(" | ".join(r) for r in rows)
    assert "cuda bf16 batch 32" in text and "2,500.0 img/s" in text and "0.62x resnet18" in text
    assert "H100 bf16 >= 8,000 img/s" in text
    assert "H100 >= 667 (<= 1.5 ms); paper 3090 31.34" in text
    assert "2700 steps: 135 s" in text and "2700 steps <= 60 s" in text
    assert "N=30 (cuda:0)" in text and "bank 3.0 MiB" in text
    assert not any(r[0] == "simulation" for r in rows)  # nothing measured -> no row


def test_format_table_aligns_columns(bench):
    rows = [("a", "bb", "ccc", "d"), ("longer name", "x", "y", "")]
    lines = bench.format_table(rows, header=("w", "x", "y", "z")).splitlines()
    assert len(lines) == 4 and set(lines[1].replace(" ", "")) == {"-"}
    starts = [line.index("bb") for line in lines if "bb" in line]
    assert starts == [lines[3].index("x ")]  # second column starts at the same offset in every row
    assert lines[0].startswith("w" + " " * len("longer name"))


def test_write_json_and_never_overwrite(bench, tmp_path):
    res = {"meta": {"host": "h"}, "value": 1.5}
    path = bench.write_json(res, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == res
    with pytest.raises(FileExistsError, match="r.json already exists"):
        bench.write_json(res, path)
    p1 = bench.default_output_path(tmp_path, host="box", date="2026-01-02")
    assert p1.name == "2026-01-02-box.json"
    p1.write_text("{}")
    assert bench.default_output_path(tmp_path, host="box", date="2026-01-02").name == "2026-01-02-box-2.json"


def test_main_writes_json_and_prints_table(bench, fake_benches, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--device", "cpu", "--size", "64", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "inference" in printed and "yardstick resnet18" in printed and str(out) in printed
    data = json.loads(out.read_text())
    for key in ("meta", "targets", "reference", "simulation", "inference", "train_step", "memory", "ratios", "errors"):
        assert key in data
    # a second run with the same --out refuses to overwrite
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
