"""Scoring: images -> anomaly maps -> image scores, the ONE path of validation, evaluation and prediction.

Image score = mean of the top-k (100, paper §4.1) pixel probabilities of the anomaly map, unless a
model defines its own ``image_score`` (DRAEM). Always float32 with autocast off, maps clamped to
[0, 1], so a threshold picked on the validation split means the same in ``evaluate`` and ``predict``.

Examples:
    >>> maps, scores = score_images(model, images_01, top_k=100)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from memseg.utils import no_autocast, normalize, select_device


@dataclass
class Predictions:
    """Model outputs on a dataset, in dataset order."""

    scores: np.ndarray  # (N,) float64 image scores
    maps: np.ndarray  # (N, H, W) float32 anomaly maps in [0, 1] at the model's input size
    labels: np.ndarray  # (N,) int 0 normal / 1 anomalous
    masks: np.ndarray  # (N, H, W) bool ground truth (nearest-resized), zeros for normal images
    defects: list[str]  # (N,) defect type, "good" for normal images
    paths: list[str]
    seconds: float = 0.0  # wall time of the forward passes


def image_scores(maps: torch.Tensor, top_k: int = 100) -> torch.Tensor:
    """Mean of the ``top_k`` highest pixel scores per map (paper §4.1): (B, 1, H, W) -> (B,)."""
    flat = maps.flatten(1).float()
    return flat.topk(min(int(top_k), flat.shape[1]), dim=1).values.mean(dim=1)


def score_maps(model: nn.Module | None, maps: torch.Tensor, top_k: int = 100) -> torch.Tensor:
    """Image scores of anomaly maps (B, 1, H, W) -> (B,).

    Mean of the top-k pixel scores (MemSeg, paper §4.1), unless the model defines its own
    ``image_score(maps)`` (e.g. DRAEM: max of the mean-filtered map).
    """
    fn = getattr(model, "image_score", None)
    if callable(fn):
        return fn(maps.float()).float()
    return image_scores(maps, top_k)


@torch.no_grad()
def score_images(model: nn.Module, images: torch.Tensor, top_k: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The one scoring path of validation, evaluation and prediction: images -> (maps, scores).

    Args:
        images: float (B, 3, H, W) in [0, 1] at the model's input size, on the model's device.

    Returns:
        ``(maps (B, 1, H, W) float32 in [0, 1], scores (B,) float32)``.

    Always float32, with autocast switched off even inside an autocast region: the decision
    threshold picked on the validation split must mean the same thing when ``evaluate`` and
    ``predict`` apply it (a threshold picked under bf16 can lie above every fp32 score). The one
    exception is the bf16 CPU route of :class:`memseg.engine.inference.Predictor`, whose scores move by
    at most ~0.01 and whose images near the threshold are scored again in float32
    (:mod:`memseg.engine.mixed_precision`).
    """
    with no_autocast(images.device.type):
        maps = model.anomaly_map(normalize(images.float())).float().clamp_(0.0, 1.0)
    return maps, score_maps(model, maps, top_k)


@torch.no_grad()
def collect_predictions(
    model: nn.Module,
    dataset,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    top_k: int = 100,
    progress: bool = True,
) -> Predictions:
    """Run ``model.anomaly_map`` over a dataset of dict items (``memseg.data.AnomalyDataset``).

    Scored by :func:`score_images` (float32, as in validation and prediction); maps stay at the
    model's input size.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("collect_predictions: the dataset is empty")
    check_batch_size(batch_size)
    from memseg.engine.backends import as_backend

    dev = select_device(device)
    model = as_backend(model, dev)  # a torch model moves to ``dev`` (eval mode); an exported one runs where it runs
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    scores, maps, labels, masks, defects, paths = [], [], [], [], [], []
    seconds = 0.0
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        x = batch["image"].to(dev)
        t0 = time.perf_counter()
        amap, s = score_images(model, x, top_k)  # (B, 1, H, W), (B,)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds += time.perf_counter() - t0
        scores.append(s.cpu().double().numpy())
        maps.append(amap[:, 0].cpu().numpy().astype(np.float32))
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        labels.append(np.asarray(batch["label"]).astype(np.int64))
        defects += list(batch["defect"])
        paths += list(batch["path"])
    return Predictions(
        scores=np.concatenate(scores), maps=np.concatenate(maps), labels=np.concatenate(labels),
        masks=np.concatenate(masks), defects=defects, paths=paths, seconds=seconds,
    )


def check_batch_size(batch_size: Any) -> None:
    """``batch_size`` must be an int >= 1 (checked before any work; the CLI flag is ``--batch-size``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
