"""CPU inference against the known public kit (TooTouch/MemSeg): 256², batch 1, both in ONE process.

The kit is imported from the folder you give (``--kit``; its ``models`` package, never copied here),
built as its ``main.py`` builds it (timm resnet18 ``features_only``, here ``pretrained=False``: no
downloads; its ``MemoryBank`` filled with ``nb_memory_sample`` random normal-like images through
``MemoryBank.update``), and scored as its demo does (``softmax(model(x))[:, 1]``). Ours is
:class:`memseg.models.memseg.model.MemSeg` with random weights and the same N (read from the kit's
``configs.yaml``). Every route and the kit run interleaved (warm-up, then alternating repeats in a
rotating order) at each thread count, the kit at the same count (``torch.set_num_threads``; ORT
``intra_op_num_threads``), so a busy machine slows both alike.

Routes: ``eager`` (torch fp32, channels_last: the model's default), ``compile`` (``torch.compile``;
compile time printed), ``bf16`` (CPU autocast; max map difference and score ranking vs fp32;
bf16 is native only where ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), ``onnxruntime`` (the
graph of ``memseg export``), ``mixed`` (:class:`memseg.engine.mixed_precision.MixedPrecisionModel`:
compare half float32 in onnxruntime, segment half bf16 in OpenVINO, without the verdict guard),
``predictor`` (``Predictor.predict_batch`` as ``memseg predict`` and the dashboard build it from a
checkpoint: the default route, scoring and the verdict guard included; the checkpoint's threshold is
0.99, away from the random model's scores, so the guard does not re-score: the usual case).

Usage::

    git -C /work/.mirror/TooTouch+MemSeg/repo archive HEAD | tar -x -C /tmp/tootouch   # or a clone
    python benchmarks/bench_public_kit.py --kit /tmp/tootouch
    python benchmarks/bench_public_kit.py --kit /tmp/tootouch --threads 2 --routes eager onnxruntime predictor
    python benchmarks/bench_public_kit.py --kit /tmp/tootouch --trust runs/demo/toys/final.pt   # bf16 verdict flips

Prints a table (route, threads, p50 / p95 ms, img/s, kit p50 / ours) and one JSON line per row.

Measured 2026-11-27 on the 2-core development CPU (Xeon with AVX-512 BF16 and AMX; torch 2.14.1,
onnxruntime 1.32, OpenVINO 2026.4; load average 1.0-1.3; 20 interleaved repeats), p50 ms and
kit p50 / ours (``docs/results/cpu-inference/kit-speed.txt``)::

    threads  kit    eager         onnxruntime   mixed         predictor (default)
    1        285.2  131.0 2.18x   90.2  3.16x   53.1  5.37x   54.4  5.25x
    2        148.1   73.4 2.02x   59.6  2.49x   37.2  3.98x   39.8  3.72x

onnxruntime maps match fp32 eager within 6e-8. The mixed route's verdicts on trained checkpoints:
``benchmarks/bench_cpu_verdicts.py`` (``docs/results/cpu-inference``). Earlier (same machine):
torch.compile 122.5 ms on 1 thread (2.27x), 145 s to compile cold; bf16 autocast 98.3 ms (2.83x).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.engine.scoring import image_scores  # noqa: E402
from memseg.models.memseg.model import MemSeg, MemSegConfig  # noqa: E402
from memseg.utils import normalize  # noqa: E402

ROUTES = ("eager", "compile", "bf16", "onnxruntime", "mixed", "predictor")
Route = Callable[[torch.Tensor], torch.Tensor]  # normalised (1, 3, H, W) -> map (1, 1, H, W)
PREDICTOR_THRESHOLD = 0.99


# ----------------------------------------------------------------------------------- the kit
def kit_memory_size(kit: Path) -> int:
    """``MEMORYBANK.nb_memory_sample`` of the kit's ``configs.yaml`` (30 upstream)."""
    from memseg.config import read_yaml_mapping

    return int(read_yaml_mapping(kit / "configs.yaml", "--kit configs.yaml")["MEMORYBANK"]["nb_memory_sample"])


class _NormalImages:
    """What the kit's ``MemoryBank.update`` reads: ``dataset[i] -> (image, mask, target)``."""

    def __init__(self, images: torch.Tensor):
        self.images = images  # (N, 3, H, W) normalised

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], torch.zeros(1, *self.images.shape[-2:]), 0


def build_kit(kit: Path, memory: torch.Tensor) -> Route:
    """The kit's MemSeg (its own code, imported from ``kit``) with its memory bank filled from ``memory``."""
    import timm

    if not (kit / "models" / "memseg.py").is_file():
        raise SystemExit(f"--kit {kit}: expected the TooTouch/MemSeg files (models/memseg.py)")
    sys.path.insert(0, str(kit))
    models = importlib.import_module("models")
    extractor = timm.create_model("resnet18", pretrained=False, features_only=True)
    bank = models.MemoryBank(normal_dataset=_NormalImages(memory), nb_memory_sample=len(memory), device="cpu")
    bank.update(feature_extractor=extractor)
    net = models.MemSeg(memory_bank=bank, feature_extractor=extractor).eval()
    return lambda x: torch.softmax(net(x), dim=1)[:, 1:]  # its demo: softmax(output)[:, 1]


# ---------------------------------------------------------------------------------- our routes
def build_ours(size: int, memory: torch.Tensor) -> MemSeg:
    model = MemSeg(MemSegConfig(input_size=size, memory_size=len(memory), weights="random")).eval()
    model.prepare(memory)
    return model


def compiled(model: MemSeg, x: torch.Tensor) -> tuple[Route, float]:
    """``torch.compile`` of the map; returns (route, seconds of the first, compiling, call)."""
    fn = torch.compile(model.anomaly_map, dynamic=False)
    t0 = time.perf_counter()
    fn(x)
    return fn, time.perf_counter() - t0


def bf16(model: MemSeg) -> Route:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.anomaly_map(x).float()
    return run


def checkpoint_and_graph(model: MemSeg, folder: Path) -> tuple[Path, Path]:
    """``model`` saved as a checkpoint and its graph exported into the cache (under ``folder``) as
    ``memseg predict`` does it (parity-checked): ``(checkpoint, onnx file)``."""
    from memseg.engine.checkpoint import save_checkpoint
    from memseg.engine.export import CACHE_ENV, cached_onnx

    os.environ[CACHE_ENV] = str(folder / "cache")  # the predictor route finds the same export there
    # a threshold away from the scores (random weights score ~0.5 everywhere): the predictor row measures the
    # usual case, where the bf16 route's verdict guard does not score the image again (see bench_cpu_verdicts.py)
    ckpt = save_checkpoint(folder / "model.pt", model, config={"top_k": 100, "size": model.config.input_size[0]},
                           threshold=PREDICTOR_THRESHOLD)
    t0 = time.perf_counter()
    graph = cached_onnx(ckpt)
    print(json.dumps({"export_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return ckpt, graph


def onnx_route(path: Path, threads: int) -> Route:
    from memseg.engine.onnx_runtime import load_onnx

    return load_onnx(path, threads=threads)[0].anomaly_map


def mixed_route(checkpoint: Path, model: MemSeg, threads: int) -> Route:
    """Compare half float32 (onnxruntime), segment half bf16 (OpenVINO), without the verdict guard."""
    from memseg.engine.export import cached_halves
    from memseg.engine.mixed_precision import MixedPrecisionModel

    compare, segment = cached_halves(checkpoint, model)
    return MixedPrecisionModel(compare, segment, model.config.input_size, threads=threads).anomaly_map


def predictor_route(checkpoint: Path, threads: int) -> Route:
    """The default route of ``memseg predict`` / the dashboard (threads pinned for the comparison)."""
    from memseg.engine.inference import Predictor

    pred = Predictor.from_checkpoint(checkpoint, device="cpu", threads=threads)
    print(json.dumps({"predictor_backend": pred.backend, "threads": threads}), flush=True)
    return lambda x: torch.from_numpy(pred.predict_batch(x)[1])[:, None]  # un-normalised input, see _inputs


# -------------------------------------------------------------------------------- measurement
def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def interleaved(routes: dict[str, tuple[Route, torch.Tensor]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of every route, alternating (rotating order) after ``warmup`` rounds."""
    names = list(routes)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for r in range(warmup + repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                fn, x = routes[n]
                t0 = time.perf_counter()
                fn(x)
                if r >= warmup:
                    times[n].append(1000.0 * (time.perf_counter() - t0))
    return times


def agreement(reference: torch.Tensor, route: Route, images: torch.Tensor, top_k: int = 100) -> dict:
    """Max |map difference|, max |score difference| and whether the score ranking holds, vs the fp32 maps."""
    with torch.no_grad():
        got = torch.cat([route(x[None]) for x in images])
    rs, gs = image_scores(reference, top_k), image_scores(got, top_k)
    return {"max_map_diff": float((reference - got).abs().max()), "max_score_diff": float((rs - gs).abs().max()),
            "same_ranking": bool(torch.equal(rs.argsort(), gs.argsort()))}


def bf16_trust(checkpoint: Path, limit: int = 64) -> dict:
    """bf16 vs fp32 on a TRAINED checkpoint's test images: verdict flips at its validation threshold."""
    from memseg.data import load_split
    from memseg.engine.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint, device="cpu")
    cfg = info["config"]
    data = load_split(cfg["data"], cfg["category"], "test", size=model.config.input_size)
    images = torch.stack([data[i]["image"] for i in range(min(limit, len(data)))])
    x, thr = normalize(images), float(info["threshold"])
    with torch.no_grad():
        s32 = image_scores(model.anomaly_map(x).float(), cfg.get("top_k") or 100)
        s16 = image_scores(bf16(model)(x), cfg.get("top_k") or 100)
    flips = int(((s32 >= thr) != (s16 >= thr)).sum())
    return {"checkpoint": str(checkpoint), "images": len(x), "threshold": thr, "verdict_flips": flips,
            "max_score_diff": float((s32 - s16).abs().max()), "min_margin_fp32": float((s32 - thr).abs().min()),
            "same_ranking": bool(torch.equal(s32.argsort(), s16.argsort()))}


# ------------------------------------------------------------------------------------ report
def _row(route: str, threads: int, ms: list[float], kit_ms: list[float]) -> dict:
    p50, kit50 = statistics.median(ms), statistics.median(kit_ms)
    return {"route": route, "threads": threads, "p50_ms": round(p50, 1), "p95_ms": round(_percentile(ms, 0.95), 1),
            "img_per_s": round(1000.0 / p50, 2), "kit_p50_ms": round(kit50, 1), "speedup_vs_kit": round(kit50 / p50, 2)}


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'route':<14}{'threads':>8}{'p50 ms':>9}{'p95 ms':>9}{'img/s':>8}{'kit p50':>9}{'kit/ours':>10}")
    for r in rows:
        print(f"{r['route']:<14}{r['threads']:>8}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['img_per_s']:>8.2f}"
              f"{r['kit_p50_ms']:>9.1f}{r['speedup_vs_kit']:>9.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kit", required=True, type=Path, help="folder holding TooTouch/MemSeg (configs.yaml, models/)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to measure (default: 1 .. cores)")
    p.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--check-images", type=int, default=8, help="random images for the map/ranking agreement")
    p.add_argument("--trust", type=Path, default=None,
                   help="a trained checkpoint: count bf16 verdict flips on its test split")
    args = p.parse_args(argv)
    threads = args.threads or list(range(1, (os.cpu_count() or 1) + 1))
    n = kit_memory_size(args.kit)
    gen = torch.Generator().manual_seed(0)
    memory = normalize(torch.rand(n, 3, args.size, args.size, generator=gen))  # normal-like: ImageNet-normalised
    images01 = torch.rand(args.check_images, 3, args.size, args.size, generator=gen)
    x01 = images01[:1]  # the predictor route takes [0, 1] images and normalises them itself
    x = normalize(x01)
    load_before = os.getloadavg()[0]
    print(json.dumps({"torch": torch.__version__, "cores": os.cpu_count(), "memory_size": n, "size": args.size,
                      "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                      "load_avg_1min": round(load_before, 2)}), flush=True)

    kit = build_kit(args.kit, memory)
    ours = build_ours(args.size, memory)
    with tempfile.TemporaryDirectory() as tmp:
        exported = {"onnxruntime", "mixed", "predictor"} & set(args.routes)
        ckpt, onnx_path = checkpoint_and_graph(ours, Path(tmp)) if exported else (None, None)
        fixed: dict[str, Route] = {"eager": ours.anomaly_map, "bf16": bf16(ours)}
        if "compile" in args.routes:
            try:
                fixed["compile"], secs = compiled(ours, x)
                print(json.dumps({"compile_s": round(secs, 1)}), flush=True)
            except Exception as err:  # inductor needs a C++ compiler; report and go on
                print(json.dumps({"compile_error": f"{type(err).__name__}: {str(err)[:200]}"}), flush=True)
        rows = []
        for t in threads:
            torch.set_num_threads(t)
            routes = {"kit": (kit, x), **{name: (fn, x) for name, fn in fixed.items() if name in args.routes}}
            if "onnxruntime" in args.routes:
                routes["onnxruntime"] = (onnx_route(onnx_path, t), x)
            if "mixed" in args.routes:
                routes["mixed"] = (mixed_route(ckpt, ours, t), x)
            if "predictor" in args.routes:
                routes["predictor"] = (predictor_route(ckpt, t), x01)
            times = interleaved(routes, args.warmup, args.repeats)
            rows += [_row(name, t, times[name], times["kit"]) for name in routes]
        with torch.no_grad():
            reference = ours.anomaly_map(normalize(images01))  # fp32 eager maps of the check images
        checks = {name: agreement(reference, fn, images01 if name == "predictor" else normalize(images01))
                  for name, (fn, _) in routes.items() if name not in ("kit", "eager")}
    for r in rows:
        print(json.dumps({"bench": "public_kit", **r}), flush=True)
    for name, c in checks.items():
        print(json.dumps({"bench": "agreement_vs_fp32_eager", "route": name, **c}), flush=True)
    if args.trust is not None:
        print(json.dumps({"bench": "bf16_trust", **bf16_trust(args.trust)}), flush=True)
    _print_table(rows)
    print(f"load average (1 min): {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
