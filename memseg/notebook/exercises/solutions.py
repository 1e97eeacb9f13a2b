"""Model solutions of the exercises of notebook 07: for the lecturer and for CI, never imported by the notebook.

Each function is written as a student would, from the paper's equations, not by calling the kit (the
checks compare them with the kit). They use only the names the notebook's first code cell imports
(``np``, ``torch``, ``F``, ``ndimage``), so the tests can paste each function's source into its exercise cell
(``tests/test_exercises.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["SOLUTIONS", "anomaly_mask", "attention_maps", "aupro", "best_difference", "blend",
           "difference_information", "focal_loss", "image_score"]


def anomaly_mask(noise, threshold, foreground):
    m_p = (noise > threshold).float()  # Perlin threshold mask M_P
    return m_p * foreground  # M = M_P ⊙ M_I


def blend(image, noise, mask, delta):
    noise_foreground = delta * (mask * noise) + (1 - delta) * (mask * image)  # eq. (1): I'_n
    anomalous = (1 - mask) * image + noise_foreground  # eq. (2): I_A = M̄ ⊙ I + I'_n
    return anomalous, noise_foreground


def difference_information(memory, features):
    return torch.sqrt((memory - features) ** 2)  # eq. (3): the 2-norm of each element


def best_difference(memory, features):
    totals = 0
    for mi, ii in zip(memory, features):  # Σ over all elements of all levels, for every (input, memory sample)
        diff = (mi.unsqueeze(0) - ii.unsqueeze(1)).abs()  # (B, N, C, h, w)
        totals = totals + diff.flatten(2).sum(dim=2)  # (B, N)
    index = totals.argmin(dim=1)  # eq. (4): the closest memory sample per input
    di_star = [(mi[index] - ii).abs() for mi, ii in zip(memory, features)]
    return di_star, index


def attention_maps(di_star):
    d1, d2, d3 = (x.mean(dim=1, keepdim=True) for x in di_star)  # (1/C) Σ_i DI*_i
    m3 = d3  # eq. (5)
    m2 = d2 * F.interpolate(m3, size=d2.shape[-2:], mode="bilinear", align_corners=False)  # eq. (6)
    m1 = d1 * F.interpolate(m2, size=d1.shape[-2:], mode="bilinear", align_corners=False)  # eq. (7)
    return [m1, m2, m3]


def focal_loss(logits, masks, gamma=4.0):
    log_probs = torch.log_softmax(logits, dim=1)  # log(1 - p), log p: no log(0)
    s = masks[:, 0]
    log_pt = torch.where(s > 0.5, log_probs[:, 1], log_probs[:, 0])  # p_t = p where S = 1, else 1 - p
    pt = log_pt.exp()
    return (-((1 - pt) ** gamma) * log_pt).mean()  # eq. (9) with α_t = 1, averaged over pixels


def image_score(maps, top_k=100):
    flat = maps.flatten(1)
    k = min(top_k, flat.shape[1])
    return flat.topk(k, dim=1).values.mean(dim=1)  # mean of the top-k pixels (§4.1)


def aupro(masks, maps, fpr_limit=0.3):
    masks, maps = np.asarray(masks, dtype=bool), np.asarray(maps, dtype=float)
    regions = np.zeros(masks.shape, dtype=int)
    n_regions = 0
    for k in range(len(masks)):  # connected defects (8-connectivity), numbered across all images
        labels, n = ndimage.label(masks[k], structure=np.ones((3, 3)))
        regions[k] = np.where(labels > 0, labels + n_regions, 0)
        n_regions += n
    regions, scores = regions.ravel(), maps.ravel()
    sizes = np.bincount(regions)
    weight = np.where(regions > 0, 1.0 / (sizes[regions] * n_regions), 0.0)  # Σ over pixels >= t = PRO(t)
    normal = regions == 0
    order = np.argsort(-scores, kind="stable")  # thresholds from the highest score down
    s = scores[order]
    fpr = np.cumsum(normal[order]) / normal.sum()
    pro = np.cumsum(weight[order])
    last = np.append(s[1:] != s[:-1], True)  # one point per distinct score (ties pass together)
    fpr, pro = np.concatenate([[0.0], fpr[last]]), np.concatenate([[0.0], pro[last]])
    k = np.flatnonzero(fpr <= fpr_limit)[-1]  # the last point inside the limit
    xs, ys = fpr[: k + 1], pro[: k + 1]
    if xs[-1] < fpr_limit:  # interpolate the curve at exactly fpr_limit
        t = (fpr_limit - fpr[k]) / (fpr[k + 1] - fpr[k])
        xs, ys = np.append(xs, fpr_limit), np.append(ys, pro[k] + t * (pro[k + 1] - pro[k]))
    area = np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2)  # trapezoid rule
    return float(area / fpr_limit)


SOLUTIONS = {f.__name__: f for f in (anomaly_mask, blend, difference_information, best_difference, attention_maps,
                                     focal_loss, image_score, aupro)}
"""Exercise name -> its solution (the same names as ``memseg.notebook.exercises.EXERCISES``)."""
