"""memseg-kit benchmark suite (`make bench`): one run, one table, one JSON file.

Measures at 256x256 (``--size``):
- anomaly simulation, samples/s: CPU one thread, CPU all threads, CUDA batched (when present);
- MemSeg inference, img/s and per-batch latency p50/p95: batch 1 and 32 on the CPU, and fp32 / bf16
  autocast on CUDA (when present);
- seconds per training step at batch 8 (CPU; CUDA with bf16 autocast when present);
- memory-module cost as N grows (N = 1, 10, 30, 100): img/s and bytes of the memory bank;
- evaluation metrics: seconds of `compute_metrics` (image/pixel AUROC, AUPRO@0.3, F1) on 100 maps;
- a yardstick in the same run: plain timm resnet18 feature extraction (random weights, batch 8),
  img/s, so that numbers from noisy or different machines compare as ratios.

Usage::

    python benchmarks/run.py                    # full run, CPU + CUDA when available
    python benchmarks/run.py --quick            # fewer repetitions (smoke test)
    python benchmarks/run.py --device cpu --out /tmp/bench.json

The JSON goes to ``benchmarks/results/<date>-<host>.json`` (git-ignored; an existing file is never
overwritten: a numeric suffix is added). Nothing is asserted here: the targets are printed beside the
measurements.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from memseg.utils import select_device  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
MEMORY_NS = (1, 10, 30, 100)
INFER_BATCHES = (1, 32)
TRAIN_BATCH = 8
REFERENCE_BATCH = 8

# Targets printed beside the measurements (paper, project goals, the known public kit on the 2-core CPU).
TARGETS: dict[str, dict[str, Any]] = {
    "paper_rtx3090_batch1_img_per_s": {"value": 31.34, "note": "MemSeg paper, RTX 3090, batch 1"},
    "gpu_batch1_img_per_s": {"value": 667.0, "note": "project goal: batch-1 latency <= 1.5 ms on an H100 (667 img/s)"},
    "gpu_batched_bf16_img_per_s": {"value": 8000.0, "note": "project goal: >= 8,000 img/s batched bf16 on an H100"},
    "gpu_train_2700_steps_s": {"value": 60.0,
                               "note": "project goal: 2700 steps (paper schedule) <= 60 s wall on an H100"},
    "cpu_train_step_s": {"value": 2.1, "note": "project goal on the 2-core CPU (known kit: 6.3 s)"},
    "cpu_infer_ms_per_img": {"value": 100.0, "note": "project goal on the 2-core CPU (known kit: ~200 ms)"},
    "cpu_sim_1thread_samples_per_s": {"value": 400.0, "note": "project goal per CPU thread (known kit: ~40)"},
}


# --------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def reference_resnet18(device: torch.device, size: int, batch: int = REFERENCE_BATCH, iters: int = 10,
                       warmup: int = 2) -> float:
    """Yardstick: img/s of timm resnet18 feature extraction (random weights, eval, fp32)."""
    import timm

    model = timm.create_model("resnet18", pretrained=False, features_only=True).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        times = _timed(lambda: model(x), device, iters, warmup)
    return batch / statistics.median(times)


def bench_metrics(size: int = 256, n_images: int = 100, seed: int = 0) -> float:
    """Seconds of `memseg.engine.metrics.compute_metrics` on n random maps with rectangular defects (2 types)."""
    import numpy as np

    from memseg.engine.metrics import compute_metrics

    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), bool)
    for i in range(n_images // 2):
        y, x = rng.integers(0, size - size // 4, 2)
        masks[i, y : y + size // 8, x : x + size // 6] = True
    maps = (rng.random(masks.shape, dtype=np.float32) * 0.7 + masks * 0.3).astype(np.float32)
    labels = masks.reshape(n_images, -1).any(1).astype(int)
    defects = ["a" if i < n_images // 4 else "b" if lab else "good" for i, lab in enumerate(labels)]
    t0 = time.perf_counter()
    compute_metrics(labels, maps.reshape(n_images, -1).max(1), masks, maps, defects=defects)
    return time.perf_counter() - t0


def _fallback_bench_simulation(size: int = 256, batch: int = 32, threads: int | None = 1, device: str = "cpu",
                               seconds: float = 3.0) -> float:
    """samples/s of `AnomalySimulator.simulate` on cached images and procedural textures (no decoding)."""
    from memseg.simulation.simulator import AnomalySimulator

    dev = select_device(device)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        textures = (torch.rand(16, 3, size, size, generator=g) * 255).to(torch.uint8)
        sim = AnomalySimulator(size=(size, size), device=dev, textures=textures, progress=False)
        images = torch.rand(batch, 3, size, size, generator=g).to(dev)
        gen = torch.Generator(device=dev).manual_seed(1) if dev.type == "cuda" else torch.Generator().manual_seed(1)
        sim.simulate(images, generator=gen)  # warm-up
        n, t0 = 0, time.perf_counter()
        while True:
            sim.simulate(images, generator=gen)
            _sync(dev)
            n += batch
            if time.perf_counter() - t0 >= seconds:
                break
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def _bench_functions() -> dict[str, Callable[..., Any]]:
    """The simulation and model benchmarks of the other rooms (benchmarks/bench_*.py)."""
    funcs: dict[str, Callable[..., Any]] = {}
    try:
        from benchmarks.bench_simulation import bench_simulation

        funcs["simulation"] = bench_simulation
    except ImportError:  # the simulation room's script is not there (yet): measure here
        funcs["simulation"] = _fallback_bench_simulation
    from benchmarks.bench_model import bench_inference, bench_memory_size, bench_train_step

    funcs.update(inference=bench_inference, train_step=bench_train_step, memory_size=bench_memory_size)
    return funcs


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(size: int, quick: bool, cuda: torch.device | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(cuda) if cuda is not None else None,
        "size": size,
        "quick": quick,
        "commit": _git_commit(),
    }
    try:
        import timm
        import torchvision

        info["torchvision"], info["timm"] = torchvision.__version__, timm.__version__
    except ImportError:
        pass
    return info


def _empty_results() -> dict[str, Any]:
    """Every key the JSON always has (values stay None where a device is missing or a step failed)."""
    return {
        "meta": {},
        "targets": TARGETS,
        "reference": {"resnet18_img_per_s": {"cpu": None, "cuda": None}, "batch": REFERENCE_BATCH},
        "simulation": {"cpu_1_thread": None, "cpu_all_threads": None, "cuda_batched": None},
        "inference": {
            dev: {f"batch{b}": None for b in INFER_BATCHES} for dev in ("cpu", "cuda_fp32", "cuda_bf16")
        },
        "train_step": {"cpu": None, "cuda_bf16": None, "batch": TRAIN_BATCH},
        "memory": {"device": None, "rows": []},
        "metrics": {"compute_metrics_s": None, "n_images": 100},
        "ratios": {},
        "errors": [],
    }


# ----------------------------------------------------------------------------------------- suite
def run_suite(size: int = 256, device: str = "auto", quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every benchmark; returns the results dict (see :func:`_empty_results` for its keys)."""
    from tqdm.auto import tqdm

    cuda: torch.device | None = None
    if device != "cpu":
        dev = select_device(device)  # "cuda" without CUDA -> a clear error
        cuda = dev if dev.type == "cuda" else None
    cpu = torch.device("cpu")
    iters, warmup = (2, 1) if quick else (20, 3)
    sim_seconds = 0.5 if quick else 3.0
    train_iters = 1 if quick else 5
    funcs = _bench_functions()
    res = _empty_results()
    res["meta"] = machine_info(size, quick, cuda)

    steps: list[tuple[str, Callable[[], None]]] = []

    def add(name: str, fn: Callable[[], None]) -> None:
        steps.append((name, fn))

    def ref(key: str, d: torch.device) -> None:
        res["reference"]["resnet18_img_per_s"][key] = reference_resnet18(d, size, iters=iters, warmup=warmup)

    def sim(key: str, threads: int | None, d: str) -> None:
        batch = 32 if d == "cpu" else 256
        res["simulation"][key] = float(funcs["simulation"](size=size, batch=batch, threads=threads, device=d,
                                                           seconds=sim_seconds))

    def infer(key: str, d: torch.device, batch: int, dtype: torch.dtype | None) -> None:
        n = iters if d.type == "cuda" or batch == 1 else max(1, iters // 4)  # big CPU batches: fewer repeats
        r = funcs["inference"](batch=batch, size=size, device=d, dtype=dtype, iters=n,
                               warmup=1 if d.type == "cpu" else warmup)
        res["inference"][key][f"batch{batch}"] = {k: float(v) for k, v in r.items()}

    def train(key: str, d: torch.device, dtype: torch.dtype | None) -> None:
        s = float(funcs["train_step"](batch=TRAIN_BATCH, size=size, device=d, dtype=dtype, iters=train_iters, warmup=1))
        res["train_step"][key] = {"seconds": s, "est_2700_steps_s": 2700 * s}

    def memory(d: torch.device) -> None:
        rows = funcs["memory_size"](ns=MEMORY_NS, size=size, device=d, iters=iters)
        res["memory"] = {"device": str(d), "rows": [_memory_row(r) for r in rows]}

    add("reference resnet18 (cpu)", lambda: ref("cpu", cpu))
    add("simulation cpu 1 thread", lambda: sim("cpu_1_thread", 1, "cpu"))
    add("simulation cpu all threads", lambda: sim("cpu_all_threads", None, "cpu"))
    for b in INFER_BATCHES:
        add(f"inference cpu batch {b}", lambda b=b: infer("cpu", cpu, b, None))
    add("train step cpu", lambda: train("cpu", cpu, None))
    if cuda is not None:
        add("reference resnet18 (cuda)", lambda: ref("cuda", cuda))
        add("simulation cuda batched", lambda: sim("cuda_batched", None, "cuda"))
        for b in INFER_BATCHES:
            add(f"inference cuda fp32 batch {b}", lambda b=b: infer("cuda_fp32", cuda, b, None))
            add(f"inference cuda bf16 batch {b}", lambda b=b: infer("cuda_bf16", cuda, b, torch.bfloat16))
        add("train step cuda bf16", lambda: train("cuda_bf16", cuda, torch.bfloat16))
    add("memory bank N=" + ",".join(map(str, MEMORY_NS)), lambda: memory(cuda or cpu))

    def metrics() -> None:
        res["metrics"]["compute_metrics_s"] = bench_metrics(size, res["metrics"]["n_images"])

    add("metrics (100 maps)", metrics)

    bar = tqdm(steps, desc="benchmarks", unit="step", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        try:
            fn()
        except Exception as e:  # one broken benchmark must not hide the others; it is reported
            res["errors"].append(f"{name}: {type(e).__name__}: {e}")
    res["ratios"] = ratios(res)
    return res


def _memory_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (float(v) if isinstance(v, float) else v) for k, v in row.items()}
    if "bank_bytes" not in out and "bank_MiB" in out:
        out["bank_bytes"] = int(round(out["bank_MiB"] * 2**20))
    return out


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    """MemSeg throughput as a multiple of the resnet18 yardstick measured on the same device."""
    out: dict[str, float | None] = {}
    ref = res["reference"]["resnet18_img_per_s"]
    for key, dev in (("cpu", "cpu"), ("cuda_fp32", "cuda"), ("cuda_bf16", "cuda")):
        for b in INFER_BATCHES:
            r = res["inference"][key][f"batch{b}"]
            out[f"{key}_batch{b}_vs_resnet18"] = r["img_per_s"] / ref[dev] if r and ref[dev] else None
    return out


# ----------------------------------------------------------------------------------- presentation
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"
    return str(v)


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, setting, measured, target/reference) rows for the printed table."""
    rows: list[tuple[str, str, str, str]] = []
    t = {k: v["value"] for k, v in res["targets"].items()}
    ref = res["reference"]["resnet18_img_per_s"]
    for dev in ("cpu", "cuda"):
        if ref[dev] is not None:
            rows.append(("yardstick resnet18", f"{dev} batch {res['reference']['batch']}", f"{_fmt(ref[dev])} img/s",
                         "ratios below"))
    simulation = res["simulation"]
    sim_target = f">= {_fmt(t['cpu_sim_1thread_samples_per_s'], 0)} /s"
    for key, label, target in (("cpu_1_thread", "cpu 1 thread", sim_target), ("cpu_all_threads", "cpu all threads", ""),
                               ("cuda_batched", "cuda batched", "")):
        if simulation[key] is not None:
            rows.append(("simulation", label, f"{_fmt(simulation[key])} samples/s", target))
    for key, label in (("cpu", "cpu fp32"), ("cuda_fp32", "cuda fp32"), ("cuda_bf16", "cuda bf16")):
        for b in INFER_BATCHES:
            r = res["inference"][key][f"batch{b}"]
            if r is None:
                continue
            if key == "cpu":
                target = f"<= {_fmt(t['cpu_infer_ms_per_img'], 0)} ms/img" if b == 1 else ""
            elif b == 1:
                target = (f"H100 >= {_fmt(t['gpu_batch1_img_per_s'], 0)} (<= 1.5 ms); paper 3090 "
                          f"{t['paper_rtx3090_batch1_img_per_s']}")
            else:
                target = f"H100 bf16 >= {_fmt(t['gpu_batched_bf16_img_per_s'], 0)} img/s" if key == "cuda_bf16" else ""
            ratio = res["ratios"].get(f"{key}_batch{b}_vs_resnet18")
            measured = f"{_fmt(r['img_per_s'])} img/s, p50 {_fmt(r['p50_ms'])} / p95 {_fmt(r['p95_ms'])} ms per batch"
            if ratio is not None:
                measured += f", {ratio:.2f}x resnet18"
            rows.append(("inference", f"{label} batch {b}", measured, target))
    for key, label, target in (
        ("cpu", "cpu fp32", f"<= {t['cpu_train_step_s']} s/step"),
        ("cuda_bf16", "cuda bf16", f"2700 steps <= {_fmt(t['gpu_train_2700_steps_s'], 0)} s"),
    ):
        r = res["train_step"][key]
        if r is not None:
            measured = f"{_fmt(r['seconds'], 3)} s/step (2700 steps: {_fmt(r['est_2700_steps_s'], 0)} s)"
            rows.append(("train step", f"{label} batch {res['train_step']['batch']}", measured, target))
    m = res.get("metrics", {})
    if m.get("compute_metrics_s") is not None:
        rows.append(("metrics", f"compute_metrics, {m['n_images']} maps", f"{_fmt(m['compute_metrics_s'], 2)} s",
                     "AUROCs, AUPRO@0.3, F1, per defect"))
    for r in res["memory"]["rows"]:
        measured = f"{_fmt(r.get('img_per_s'))} img/s, bank {_fmt(r.get('bank_bytes', 0) / 2**20, 1)} MiB"
        rows.append(("memory bank", f"N={r.get('N')} ({res['memory']['device']})", measured, ""))
    return rows


def format_table(rows: list[tuple[str, ...]],
                 header: tuple[str, ...] = ("benchmark", "setting", "measured", "target / reference")) -> str:
    """Left-aligned plain-text table with a header rule."""
    all_rows = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(all_rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in all_rows[1:]])


def default_output_path(results_dir: Path = RESULTS_DIR, host: str | None = None, date: str | None = None) -> Path:
    """results/<YYYY-MM-DD>-<host>.json; an existing file gets -2, -3, ... instead of being overwritten."""
    host = (host or socket.gethostname()).replace(os.sep, "_") or "host"
    date = date or _dt.date.today().isoformat()
    path = results_dir / f"{date}-{host}.json"
    k = 2
    while path.exists():
        path = results_dir / f"{date}-{host}-{k}.json"
        k += 1
    return path


def write_json(res: dict[str, Any], path: Path) -> Path:
    """Write atomically; refuses to replace an existing file (names it)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another --out (results are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repetitions (smoke test; numbers are noisy)")
    p.add_argument("--device", default="auto", help="auto (CPU + CUDA when available), cpu (CPU only) or cuda (CPU + "
                                                    "CUDA, required)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<date>-<host>.json)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256, the paper's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists():
        print(f"error: {args.out} already exists; choose another --out (results are never overwritten)",
              file=sys.stderr)
        return 2
    try:
        res = run_suite(size=args.size, device=args.device, quick=args.quick, progress=not args.no_progress)
    except RuntimeError as e:  # e.g. --device cuda without CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = res["meta"]
    print(f"\nmemseg-kit benchmarks  {meta['date']}  host {meta['host']}  torch {meta['torch']}  "
          f"threads {meta['torch_threads']}  gpu {meta['gpu'] or '-'}  size "
          f"{meta['size']}{'  (quick)' if args.quick else ''}")
    print(format_table(table_rows(res)))
    for err in res["errors"]:
        print(f"FAILED {err}", file=sys.stderr)
    path = write_json(res, Path(args.out) if args.out else default_output_path())
    print(f"\nresults: {path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
