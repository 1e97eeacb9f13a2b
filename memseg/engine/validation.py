"""The validation split of a training run: held-back normal images and their simulated twins pick the
decision threshold (F1-max); the test set is never looked at."""

from __future__ import annotations

import numpy as np
import torch

from memseg.engine.train_config import TrainConfig


@torch.no_grad()
def validation_batches(images_u8: torch.Tensor, simulator, cfg: TrainConfig, device: torch.device):
    """The validation split, batch by batch: ``(clean, simulated, masks)`` in [0, 1] on ``device``.

    Deterministic from ``cfg.seed`` with a generator of its own, so it neither reads nor changes
    the training RNG streams, and anyone can rebuild the exact split a threshold was picked on.
    """
    g = torch.Generator(device=device).manual_seed(cfg.seed + 2_000_003)
    bs = max(cfg.batch_normal + cfg.batch_anomalous, 1)
    for i in range(0, images_u8.shape[0], bs):
        clean = images_u8[i:i + bs].to(device).float().div_(255.0)
        sim = simulator.simulate(clean, generator=g)
        yield clean, sim.images, sim.masks


@torch.no_grad()
def validate(model, images_u8: torch.Tensor, simulator, cfg: TrainConfig, device: torch.device) -> dict:
    """Image scores on held-back normal images and their simulated-anomaly versions -> threshold.

    The decision threshold is the F1-max threshold on this validation split (never the test set),
    scored by :func:`memseg.engine.scoring.score_images` like ``evaluate`` and ``predict`` (float32).
    The per-image ``scores`` and ``labels`` are returned too (normal batch, then its simulated twin).
    """
    from memseg.engine.metrics import f1_max, image_auroc, pixel_auroc
    from memseg.engine.scoring import score_images

    was_training = model.training
    model.eval()
    scores, labels, masks_all, maps_all = [], [], [], []
    try:
        for clean, simulated, masks in validation_batches(images_u8, simulator, cfg, device):
            for x, m, y in ((clean, torch.zeros_like(masks), 0), (simulated, masks, 1)):
                amap, s = score_images(model, x, cfg.top_k)  # float32, exactly as evaluate/predict score
                scores.append(s.cpu())
                labels += [y] * x.shape[0]
                masks_all.append(m.cpu())
                maps_all.append(amap.cpu())
    finally:
        model.train(was_training)
    s = torch.cat(scores).numpy()
    y = np.asarray(labels)
    f1, thr = f1_max(y, s)
    return {
        "n_normal": int((y == 0).sum()), "n_simulated": int((y == 1).sum()),
        "image_auroc": image_auroc(y, s), "pixel_auroc": pixel_auroc(torch.cat(masks_all), torch.cat(maps_all)),
        "f1_max": f1, "threshold": thr,
        "scores": [float(v) for v in s], "labels": [int(v) for v in y],
    }
