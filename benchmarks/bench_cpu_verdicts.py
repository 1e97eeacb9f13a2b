"""Does the fast CPU route keep the verdicts? bf16 against float32 on trained checkpoints' test splits.

For each checkpoint (``--checkpoints``, globs): its test split at the model's input size, scored

* in float32 by torch (``Predictor(backend="torch")``), the reference;
* by the whole exported graph in bf16 (OpenVINO), the simple route the kit does NOT take;
* by :class:`memseg.engine.mixed_precision.MixedPrecisionModel` without the guard (compare half
  float32, segment half bf16);
* by the default ``Predictor`` (that route, images within ``VERDICT_MARGIN`` of the stored
  threshold scored again in float32).

Reports per checkpoint: the largest map and score change against float32, the verdict flips at the
stored threshold, and how many images the guard scored again. Writes ``results.json`` and
``results.md`` into ``--out``. Needs the ``deploy`` extra and a CPU with native bf16.

Usage::

    python benchmarks/bench_cpu_verdicts.py --checkpoints '/work/bench/b300-128/*/seed*/final.pt' \\
        --out docs/results/cpu-inference
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memseg.data import load_split  # noqa: E402
from memseg.engine.checkpoint import read_checkpoint  # noqa: E402
from memseg.engine.export import CACHE_ENV, export_onnx  # noqa: E402
from memseg.engine.inference import Predictor  # noqa: E402
from memseg.engine.mixed_precision import MIXED_BACKEND, VERDICT_MARGIN, native_bf16  # noqa: E402
from memseg.engine.scoring import image_scores  # noqa: E402
from memseg.utils import normalize  # noqa: E402


def whole_graph_bf16(checkpoint: Path, folder: Path, x: torch.Tensor) -> np.ndarray:
    """Maps of the whole exported graph compiled by OpenVINO in bf16."""
    import openvino as ov

    path = export_onnx(checkpoint, folder / f"{checkpoint.parent.name}-{checkpoint.stem}.onnx", overwrite=True)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return np.concatenate([np.asarray(compiled(x[i:i + 8].numpy())[0]) for i in range(0, len(x), 8)])


def study(checkpoint: Path, folder: Path) -> dict:
    exact = Predictor.from_checkpoint(checkpoint, device="cpu", backend="torch")
    fast = Predictor.from_checkpoint(checkpoint, device="cpu")
    if fast.backend != MIXED_BACKEND:
        raise SystemExit(f"{checkpoint}: the default route is {fast.backend}, not {MIXED_BACKEND}")
    cfg = read_checkpoint(checkpoint)["config"]  # the data the run was trained on
    images = load_split(cfg["data"], cfg["category"], "test", size=exact.input_size)
    x01 = torch.stack([images[i]["image"] for i in range(len(images))])
    thr, k = exact.threshold, exact.top_k
    ref_scores, ref_maps = exact.predict_batch(x01)
    with torch.no_grad():
        mixed_maps = torch.cat([fast.model.anomaly_map(normalize(x01[i:i + 8]))
                                for i in range(0, len(x01), 8)]).clamp(0, 1)
    mixed_scores = image_scores(mixed_maps, k).numpy()
    whole_maps = torch.from_numpy(whole_graph_bf16(checkpoint, folder, normalize(x01))).clamp(0, 1)
    whole_scores = image_scores(whole_maps, k).numpy()
    guarded = [fast._predict_batch(x01[i:i + 8], thr) for i in range(0, len(x01), 8)]
    guard_scores = np.concatenate([g[0] for g in guarded])
    rescored = int(sum(int(g[2].sum()) for g in guarded))

    def flips(scores: np.ndarray) -> int:
        return int(((scores >= thr) != (ref_scores >= thr)).sum())

    ref_t = torch.from_numpy(ref_maps)[:, None]
    return {
        "checkpoint": str(checkpoint), "category": cfg["category"], "images": len(x01), "threshold": thr,
        "closest_fp32_score_to_threshold": float(np.abs(ref_scores - thr).min()),
        "whole_bf16": {"max_map_diff": float((whole_maps - ref_t).abs().max()),
                       "max_score_diff": float(np.abs(whole_scores - ref_scores).max()),
                       "verdict_flips": flips(whole_scores)},
        "mixed_unguarded": {"max_map_diff": float((mixed_maps - ref_t).abs().max()),
                            "max_score_diff": float(np.abs(mixed_scores - ref_scores).max()),
                            "verdict_flips": flips(mixed_scores)},
        "default_route": {"max_score_diff": float(np.abs(guard_scores - ref_scores).max()),
                          "verdict_flips": flips(guard_scores),
                          "rescored_in_fp32": rescored},
    }


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    import onnxruntime
    import openvino

    lines = [
        "# The fast CPU route keeps the float32 verdicts",
        "",
        "Written by `benchmarks/bench_cpu_verdicts.py`. Test split of each trained checkpoint, scored in float32 by "
        "torch (the reference) and three ways in bf16; verdicts at the checkpoint's stored threshold (picked on its "
        "validation split).",
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenVINO "
        f"{openvino.__version__.split('-')[0]}, {os.cpu_count()} CPU cores with native bf16 (AMX).",
        f"The default route re-scores in float32 every image whose bf16 score lies within {VERDICT_MARGIN} of the "
        "threshold.",
        "",
        "| checkpoint | images | whole graph bf16: max Δmap / max Δscore / flips | segment half bf16: max Δmap / max "
        "Δscore / flips | default route: flips (re-scored) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        w, m, d = r["whole_bf16"], r["mixed_unguarded"], r["default_route"]
        name = "/".join(Path(r["checkpoint"]).parts[-3:-1])
        lines.append(f"| {name} | {r['images']} | {w['max_map_diff']:.3f} / {w['max_score_diff']:.4f} / "
                     f"{w['verdict_flips']} | {m['max_map_diff']:.3f} / {m['max_score_diff']:.4f} / "
                     f"{m['verdict_flips']} | {d['verdict_flips']} ({d['rescored_in_fp32']}) |")
    worst = max(r["mixed_unguarded"]["max_score_diff"] for r in rows)
    lines += ["", f"Largest score change of the segment half in bf16: {worst:.4f} (the margin is {VERDICT_MARGIN}, "
              f"{VERDICT_MARGIN / worst:.1f} times it). Images: {sum(r['images'] for r in rows)}, "
              f"re-scored: {sum(r['default_route']['rescored_in_fp32'] for r in rows)}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True,
                   help="checkpoint files or globs (trained, with a threshold)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    args = p.parse_args(argv)
    if not native_bf16():
        raise SystemExit("this CPU has no native bf16 for OpenVINO (or the deploy extra is missing): "
                         "nothing to measure")
    paths = sorted({Path(f) for pattern in args.checkpoints for f in (glob.glob(pattern) or [pattern])})
    missing = [str(f) for f in paths if not f.is_file()]
    if missing:
        raise SystemExit(f"--checkpoints: not found: {', '.join(missing)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")
        for ck in paths:
            rows.append(study(ck, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    write(rows, args.out)
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
