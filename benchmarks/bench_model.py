"""Speed of the MemSeg network: inference throughput/latency, training step, memory-bank size.

Usage::

    python benchmarks/bench_model.py                      # all three, 256², on "auto" device
    python benchmarks/bench_model.py --what infer --batch 1 --size 256 --device cpu
    python benchmarks/bench_model.py --what train --batch 8 --no-channels-last --threads 1
    python benchmarks/bench_model.py --what infer --backend torch onnxruntime --device cpu   # side by side, one run
    python benchmarks/bench_model.py --what runtimes --batch 1 8    # CPU routes: two runtimes vs OpenVINO alone

Numbers are printed (one JSON line per measurement); nothing here is asserted. Reference on the
2-core development CPU: the known public kit needs ~6.3 s per batch-8 training step at 256² and
~200 ms per image at inference.

Measured on that CPU (2026-11-22, torch 2.15, 256², N=30, channels_last, random weights; other
helpers' jobs shared the machine, so the steadiest numbers are with ``--threads 1`` on a free core):
inference fp32 158 ms/image (batch 1), ~145-167 ms/image (batch 8); bf16 autocast 100 ms (batch 1),
80 ms/image (batch 8); training step (batch 8, SGD) 2.69 s on ONE thread. Two threads were slower
than one while the load average was 4-15 (OpenMP threads waiting on a busy core).
2026-11-26, torch 2.14.1, idle VM (resnet18 yardstick 20.9 img/s, slower than on 11-22): training step 2.70 s
on 2 threads, 4.17 s on 1; inference batch 1 144 ms p50 (6.95 img/s), batch 8 8.38 img/s; bf16 autocast
training 21.8 s per step (this CPU has no AVX-512 BF16, so bf16 is emulated: keep fp32 on such CPUs).
2026-11-27, idle VM, 2 threads, a trained 256² checkpoint: batch 1 torch 72.7 ms, onnxruntime (the exported
graph, `memseg export`) 53.5 ms = 1.36x; batch 8 57.5 vs 52.4 ms/image.
Against the known public kit, in one process: benchmarks/bench_public_kit.py (its docstring has the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.engine.backends import as_backend  # noqa: E402
from memseg.models.memseg.model import MemSeg, MemSegConfig  # noqa: E402
from memseg.utils import select_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(size: int | tuple[int, int], device: torch.device, memory_size: int = 30, channels_last: bool = True,
           **kw) -> MemSeg:
    cfg = MemSegConfig(input_size=size, memory_size=memory_size, weights="random", channels_last=channels_last, **kw)
    model = MemSeg(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    h, w = cfg.input_size
    model.prepare(torch.randn(memory_size, 3, h, w, generator=g).to(device))
    return model


def bench_inference(
    batch: int = 1,
    size: int | tuple[int, int] = 256,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    memory_size: int = 30,
    iters: int = 10,
    warmup: int = 2,
    backend: str = "torch",
) -> dict:
    """Forward + softmax of a batch in eval mode under ``inference_mode``.

    Args:
        dtype: None (float32) or an autocast dtype (``torch.bfloat16`` / ``torch.float16``).
        backend: "torch", or "onnxruntime": the same model exported by :func:`memseg.engine.export.export_onnx`
            and run on the CPU with as many threads as torch uses.

    Returns:
        dict(img_per_s, p50_ms, p95_ms) where the latencies are per batch.
    """
    dev = select_device(device)
    model = _model(size, dev, memory_size, channels_last).eval()
    if backend == "onnxruntime":
        if dev.type != "cpu" or dtype is not None:
            raise ValueError("backend onnxruntime is measured on the CPU in float32 (--device cpu, no --dtype)")
        model = _exported(model)
    model = as_backend(model, dev)  # the torch model, or the exported one: both are InferenceBackends
    h, w = model.input_size
    x = torch.randn(batch, 3, h, w, device=dev)
    ctx = ((lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None
           else (lambda: torch.autocast(dev.type, enabled=False)))
    times, cpu = [], []
    with torch.inference_mode(), ctx():
        for i in range(warmup + iters):
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            model.anomaly_map(x)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    # cpu_ms: process CPU time per batch (all threads); on a shared machine it is steadier than
    # the wall clock (with 1 thread it approximates the wall time on an idle core).
    return {"img_per_s": batch / p50, "p50_ms": p50 * 1000, "p95_ms": p95 * 1000,
            "cpu_ms": statistics.median(cpu) * 1000}


def _exported(model: MemSeg):
    """``model`` saved, exported to ONNX and opened with onnxruntime (an :class:`OnnxRuntimeModel`)."""
    from memseg.engine.checkpoint import save_checkpoint
    from memseg.engine.export import export_onnx
    from memseg.engine.onnx_runtime import load_onnx

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "model.pt", model, config={"top_k": 100})
        onnx_model, _record = load_onnx(export_onnx(ckpt, Path(tmp) / "model.onnx"), threads=torch.get_num_threads())
    return onnx_model  # the session holds the graph in memory: the files may go


def bench_train_step(
    batch: int = 8,
    size: int | tuple[int, int] = 256,
    device: str | torch.device = "auto",
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    iters: int = 3,
    warmup: int = 1,
) -> float:
    """Median seconds of one SGD step (forward, loss, backward, update) on a fixed batch."""
    dev = select_device(device)
    model = _model(size, dev, 30, channels_last).train()
    h, w = model.input_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, h, w, generator=g).to(dev)
    masks = (torch.rand(batch, 1, h, w, generator=g) > 0.9).float().to(dev)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.04, momentum=0.9, weight_decay=5e-4)
    times, cpu = [], []
    for i in range(warmup + iters):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = model.compute_loss(x, masks, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    bench_train_step.last_cpu_s = statistics.median(cpu)  # type: ignore[attr-defined]
    return statistics.median(times)


def bench_memory_size(
    ns: tuple[int, ...] = (1, 10, 30, 100),
    size: int | tuple[int, int] = 256,
    device: str | torch.device = "auto",
    batch: int = 1,
    iters: int = 5,
    channels_last: bool = True,
) -> list[dict]:
    """Inference latency and memory-bank bytes for several N (the DI* search grows with N)."""
    dev = select_device(device)
    rows = []
    for n in ns:
        r = bench_inference(batch=batch, size=size, device=dev, memory_size=n, iters=iters, warmup=1,
                            channels_last=channels_last)
        cfg = MemSegConfig(input_size=size, memory_size=n)
        h, w = cfg.input_size
        bank_bytes = 4 * n * (64 * h * w // 16 + 128 * h * w // 64 + 256 * h * w // 256)
        rows.append({"N": n, "bank_MiB": bank_bytes / 2**20, **r})
    return rows


def bench_cpu_runtimes(batches: tuple[int, ...] = (1, 8), size: int = 256, memory_size: int = 30,
                       repeats: int = 8, threads: int | None = None):
    """The CPU routes side by side in one process, interleaved, on a random-weight MemSeg: the bf16 route with two
    runtimes (compare half float32 in onnxruntime, segment half bf16 in OpenVINO: what the kit runs) against
    OpenVINO alone (both halves, the compare half in float32), and the float32 routes (whole graph; the verdict
    guard's two halves) in onnxruntime against OpenVINO. Yields one dict per route and batch: the largest map
    difference to torch and the median / min latency per batch (ms), with its ratio to the kit's bf16 route."""
    import openvino as ov

    from memseg.engine.export import _AnomalyMapGraph, export_halves, exportable
    from memseg.engine.onnx_runtime import INPUT_NAME, ort_session
    from memseg.utils import normalize

    torch.manual_seed(0)
    config = MemSegConfig(input_size=(size, size), memory_size=memory_size, weights="random")
    model = MemSeg(config, init_weights=False).eval()
    model.prepare(normalize(torch.rand(memory_size, 3, size, size)))
    core = ov.Core()

    def openvino(path: Path, precision: str):
        options = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            options["INFERENCE_NUM_THREADS"] = threads
        return core.compile_model(core.read_model(str(path)), "CPU", options)

    with tempfile.TemporaryDirectory() as tmp:
        compare, segment, whole = Path(tmp) / "c.onnx", Path(tmp) / "s.onnx", Path(tmp) / "whole.onnx"
        export_halves(model, compare, segment)
        batch_axis = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
        with torch.no_grad(), exportable(model):
            torch.onnx.export(_AnomalyMapGraph(model).eval(), (torch.randn(2, 3, size, size),), str(whole), dynamo=True,
                              input_names=[INPUT_NAME], dynamic_shapes=batch_axis)
        ort_c, ort_s, ort_w = ort_session(compare, threads), ort_session(segment, threads), ort_session(whole, threads)
        ov_c32, ov_s16, ov_s32, ov_w32 = (openvino(compare, "f32"), openvino(segment, "bf16"), openvino(segment, "f32"),
                                          openvino(whole, "f32"))
    names = [i.name for i in ort_s.get_inputs()]

    def ort_halves(x):
        return ort_s.run(None, dict(zip(names, ort_c.run(None, {"input": x}))))[0]

    routes = {
        "bf16 route: onnxruntime f32 + OpenVINO bf16 (kit)": lambda x: ov_s16(ort_c.run(None, {"input": x}))[0],
        "bf16 route: OpenVINO f32 + OpenVINO bf16": lambda x: ov_s16(list(ov_c32({"input": x}).values()))[0],
        "float32 whole graph: onnxruntime (kit)": lambda x: ort_w.run(None, {"input": x})[0],
        "float32 whole graph: OpenVINO": lambda x: ov_w32({"input": x})[0],
        "float32 halves (guard): onnxruntime (kit)": ort_halves,
        "float32 halves (guard): OpenVINO": lambda x: ov_s32(list(ov_c32({"input": x}).values()))[0],
    }
    gen = torch.Generator().manual_seed(1)
    for batch in batches:
        x = normalize(torch.rand(batch, 3, size, size, generator=gen))
        with torch.no_grad():
            ref = model.anomaly_map(x).clamp(0, 1).numpy()
        x = x.numpy()
        # two runs each: the warm-up, and the largest difference to torch
        diff = {name: float(max(abs(np.asarray(fn(x)) - ref).max() for _ in range(2))) for name, fn in routes.items()}
        times: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(repeats):
            for name, fn in routes.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(1000 * (time.perf_counter() - t0))
        base = statistics.median(times[next(iter(routes))])
        for name, ts in times.items():
            yield {"bench": "cpu_runtimes", "route": name, "batch": batch, "size": size, "max_abs_diff": diff[name],
                   "p50_ms": round(statistics.median(ts), 1), "min_ms": round(min(ts), 1),
                   "ratio_to_kit_bf16": round(statistics.median(ts) / base, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", nargs="+", default=["infer", "train", "memory"],
                   choices=["infer", "train", "memory", "runtimes"])
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 and 8 for inference, 8 for training")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16"], help="autocast dtype for inference")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last convolutions (model default)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=8, help="--what runtimes: interleaved repeats per route and batch")
    p.add_argument("--backend", nargs="+", default=["torch"], choices=["torch", "onnxruntime"],
                   help="inference backends, measured one after the other in this run (ratios printed)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.dtype]
    dev = select_device(args.device)
    print(json.dumps({"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "channels_last": args.channels_last, "dtype": args.dtype}))
    if "infer" in args.what:
        for b in args.batch or [1, 8]:
            p50 = {}
            for backend in args.backend:
                r = bench_inference(batch=b, size=args.size, device=dev, dtype=dtype, channels_last=args.channels_last,
                                    backend=backend)
                p50[backend] = r["p50_ms"]
                print(json.dumps({"bench": "inference", "backend": backend, "batch": b, "size": args.size,
                                  **{k: round(v, 2) for k, v in r.items()}}), flush=True)
            if len(p50) == 2:
                print(json.dumps({"bench": "inference_ratio", "batch": b,
                                  "torch_over_onnxruntime": round(p50["torch"] / p50["onnxruntime"], 2)}), flush=True)
    if "train" in args.what:
        b = args.batch[0] if args.batch else 8
        s = bench_train_step(batch=b, size=args.size, device=dev, channels_last=args.channels_last, dtype=dtype)
        print(json.dumps({"bench": "train_step", "batch": b, "size": args.size, "seconds": round(s, 3),
                          "cpu_s": round(bench_train_step.last_cpu_s, 3)}), flush=True)
    if "runtimes" in args.what:
        for row in bench_cpu_runtimes(tuple(args.batch or [1, 8]), args.size, repeats=args.repeats,
                                      threads=args.threads):
            print(json.dumps(row), flush=True)
    if "memory" in args.what:
        for row in bench_memory_size(size=args.size, device=dev, channels_last=args.channels_last):
            print(json.dumps({"bench": "memory_size",
                              **{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
