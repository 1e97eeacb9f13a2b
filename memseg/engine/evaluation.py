"""Honest evaluation on the test split: one checkpoint (the final one), no model selection on test.

Image score = mean of the top-k (100, paper §4.1) pixel probabilities of the anomaly map; metrics
come from :func:`memseg.engine.metrics.compute_metrics` (image AUROC, pixel AUROC, AUPRO@0.3, F1-max).
The decision threshold reported with accuracy/precision/recall is the one picked on the
*validation* split during training, never one tuned on the test set (F1-max's threshold is shown
only as what it is: an oracle).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memseg.engine.backends import as_backend, load_model
from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.scoring import check_batch_size, collect_predictions
from memseg.utils import check_output_dir, create_new_file

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"


def decision_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall and F1 of ``score >= threshold`` (a threshold fixed before the test)."""
    y = np.asarray(labels) > 0
    p = np.asarray(scores) >= threshold
    tp, fp, fn, tn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((~p & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"threshold": float(threshold), "accuracy": (tp + tn) / max(y.size, 1), "precision": prec,
            "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _json_safe(value: Any) -> Any:
    """nan/inf -> None so metrics.json is standard JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}"


def f1_baseline(block: dict) -> float:
    """F1 of calling every image anomalous for a metrics block (also for metrics.json files that predate the key)."""
    from memseg.engine.metrics import f1_all_anomalous

    if block.get("f1_all_anomalous") is not None:
        return block["f1_all_anomalous"]
    n, k = int(block.get("n_images") or 0), int(block.get("n_anomalous") or 0)
    return f1_all_anomalous([1] * k + [0] * (n - k)) if n else float("nan")


def metrics_markdown(result: dict) -> str:
    """A markdown table like a row of the paper's Table 1, plus a per-defect table (values in %)."""
    o = result["overall"]
    head = "| category | image AUROC | pixel AUROC | AUPRO@0.3 | image F1-max | F1 calling all anomalous |"
    lines = [
        f"# {result.get('model', 'model')} on {result.get('category')}",
        "",
        f"Checkpoint `{result.get('checkpoint')}` (step {result.get('step')}), weights {result.get('weights_source')}, "
        f"input {result.get('input_size')}, image score = mean of top-{result.get('top_k')} pixel scores; "
        f"{o['n_images']} test images ({o['n_anomalous']} anomalous).",
        "",
        head,
        "|---|---|---|---|---|---|",
        (f"| {result.get('category')} | {pct(o['image_auroc'])} | {pct(o['pixel_auroc'])} | {pct(o['aupro'])} | "
         f"{pct(o['f1_max'])} | {pct(f1_baseline(o))} |"),
        "",
        (f"F1-max is never below the F1 of calling every image anomalous, 2p/(1+p) with p = {o['n_anomalous']}/"
         f"{o['n_images']} anomalous test images: {pct(f1_baseline(o))} here. Read F1-max against that "
         "baseline, not against 0; image AUROC is 50 for a chance ranking."),
        "",
    ]
    if result.get("per_defect"):
        lines += ["## Per defect type (each with all normal test images)", "",
                  "| defect | images | image AUROC | pixel AUROC | AUPRO@0.3 | image F1-max "
                  "| F1 calling all anomalous |",
                  "|---|---|---|---|---|---|---|"]
        for name, b in result["per_defect"].items():
            lines.append(f"| {name} | {b['n_anomalous']} | {pct(b['image_auroc'])} | {pct(b['pixel_auroc'])} | "
                         f"{pct(b['aupro'])} | {pct(b['f1_max'])} | {pct(f1_baseline(b))} |")
        lines.append("")
    d = result.get("decision")
    if d:
        lines += [f"Decision threshold {d['threshold']:.4f} ({d['source']}): accuracy {pct(d['accuracy'])} %, "
                  f"precision {pct(d['precision'])} %, recall {pct(d['recall'])} %.", ""]
    lines += ["All numbers in %. Final checkpoint only; no model selection on the test set.", ""]
    return "\n".join(lines)


def _write_new(path: Path, text: str, out: Path, overwrite: bool) -> None:
    """Write ``text`` to ``path`` in ``out`` as a new file, never through a link (:func:`memseg.utils.create_new_file`);
    with ``overwrite`` through a new temporary file renamed over ``path`` (which replaces a link, not its target)."""
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if overwrite else path
    with create_new_file(target, out, flag="out", mode="w") as fh:
        fh.write(text)
    if overwrite:
        os.replace(target, path)


def _resolve_model(checkpoint_or_model: Any, device: str | torch.device,
                   backend: str = "auto") -> tuple[Any, CheckpointRecord | None]:
    """A file's backend and record (warning when its run did not finish); a model as it is, without a record."""
    if not isinstance(checkpoint_or_model, (str, os.PathLike)):
        return checkpoint_or_model, None
    model, record = load_model(checkpoint_or_model, device=device, backend=backend)
    planned = record.steps_planned
    if planned is not None and record.step is not None and record.step < planned:
        warnings.warn(f"{checkpoint_or_model}: evaluating a checkpoint at step {record.step} of {planned} "
                      "(the run did not finish)", stacklevel=3)
    return model, record


def evaluate(
    checkpoint_or_model: str | Path | nn.Module,
    data: str | Path,
    category: str,
    layout: str = "auto",
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    top_k: int | None = None,
    size: int | tuple[int, int] | None = None,
    threshold: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    backend: str = "auto",
) -> dict:
    """Evaluate a checkpoint (or a model) on ``<data>/<category>`` test split.

    Args:
        checkpoint_or_model: a checkpoint path (the run's final one), a ``.onnx`` file written by
            ``memseg export`` (run by onnxruntime; ``backend`` as in :func:`memseg.engine.backends.load_model`)
            or a model with ``anomaly_map``.
        out: folder for ``metrics.json`` + ``metrics.md`` (None: write nothing). Existing metrics
            files there are an error unless ``overwrite``.
        top_k: image score = mean of the top-k pixel scores (default: the training config's, else 100).
        size: input size for a bare model without ``config.input_size`` (default 256).
        threshold: decision threshold (default: the checkpoint's validation threshold).

    Returns:
        dict with ``overall`` and ``per_defect`` metrics (image_auroc, pixel_auroc, aupro, f1_max,
        f1_threshold, counts), ``decision`` (metrics at the validation threshold, if any) and
        run information (category, model, checkpoint, step, weights_source, input_size, top_k).
    """
    from memseg.data import load_split
    from memseg.engine.metrics import compute_metrics

    check_batch_size(batch_size)
    if out is not None:
        check_output_dir(out, "out")
    if out is not None and not overwrite:
        existing = [Path(out) / n for n in (METRICS_JSON, METRICS_MD) if os.path.lexists(Path(out) / n)]  # links too
        if existing:
            raise ValueError(f"{existing[0]} already exists; choose another output folder (or overwrite=True)")
    model, record = _resolve_model(checkpoint_or_model, device, backend)
    model = as_backend(model, device, input_size=size or 256)  # size: for a bare model without config.input_size
    if record is None:  # a model, not a file: its own input size and the defaults
        record = CheckpointRecord(model_name=model.model_name, input_size=model.input_size)
    input_size = model.input_size
    top_k = int(top_k or record.top_k)
    if threshold is None:
        threshold = record.threshold
    if record.category not in (None, category):
        warnings.warn(f"{record.path} was trained on category {record.category!r}, "
                      f"evaluating it on {category!r}", stacklevel=2)

    dataset = load_split(data, category, split="test", size=input_size, layout=layout)
    if len(dataset) == 0:
        raise ValueError(f"{data}: category {category!r} has no test images")
    preds = collect_predictions(model, dataset, batch_size=batch_size, device=device, top_k=top_k, progress=progress)
    pixel = dataset.has_masks
    metrics = compute_metrics(preds.labels, preds.scores, preds.masks if pixel else None,
                              preds.maps if pixel else None, defects=preds.defects)
    own_config = getattr(checkpoint_or_model, "config", None)  # a model given as it is: its config
    result: dict[str, Any] = {
        "category": category,
        "data": str(data),
        "model": record.model_name if model.name == "torch" else f"{record.model_name} ({model.name})",
        "checkpoint": record.path,
        "step": record.step,
        "steps_planned": record.steps_planned,
        "weights_source": record.weights_source or getattr(own_config, "weights", None),
        "input_size": list(input_size),
        "top_k": top_k,
        "n_images": int(preds.labels.size),
        "ms_per_image": 1000.0 * preds.seconds / max(preds.labels.size, 1),
        **metrics,
    }
    if threshold is not None:
        result["decision"] = {**decision_metrics(preds.labels, preds.scores, threshold),
                              "source": "validation split (train/good + simulated anomalies)"}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_new(out / METRICS_JSON, json.dumps(_json_safe(result), indent=2), out, overwrite)
        _write_new(out / METRICS_MD, metrics_markdown(result), out, overwrite)
        result["out"] = str(out)
    return result
