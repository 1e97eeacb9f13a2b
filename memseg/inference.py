"""Inference: score one image (any size) with a trained checkpoint; CLI `memseg predict`.

The image is resized to the model's input size, ImageNet-normalised, passed through the network;
the anomaly map is resized back to the ORIGINAL image size. The image score is the mean of the
top-k pixel scores of the map at model resolution (same as evaluation), and the verdict uses the
decision threshold picked on the validation split during training (0.5 when there is none).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from memseg.checkpoint import load_checkpoint
from memseg.evaluation import score_images
from memseg.utils import select_device

DEFAULT_THRESHOLD = 0.5


@dataclass
class Prediction:
    """Result for one image."""

    score: float  # image anomaly score (mean of the top-k pixel scores)
    anomaly_map: np.ndarray  # float32 (H, W) in [0, 1] at the original image size
    time_ms: float  # preprocessing + network + resize back
    is_anomalous: bool  # score >= threshold


class Predictor:
    """A trained model ready to score images.

    Attributes: ``model``, ``input_size`` (H, W), ``threshold``, ``category``, ``model_name``,
    ``weights_source``, ``top_k``, ``device``, ``info`` (checkpoint metadata).
    """

    def __init__(self, model: torch.nn.Module, info: dict | None = None, device: str | torch.device = "auto",
                 threshold: float | None = None, top_k: int | None = None):
        info = info or {}
        cfg = info.get("config") or {}
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        size = getattr(getattr(model, "config", None), "input_size", None) or cfg.get("size") or 256
        self.input_size: tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        stored = info.get("threshold")
        self.threshold: float = float(threshold if threshold is not None else stored if stored is not None else DEFAULT_THRESHOLD)
        self.threshold_source = "given" if threshold is not None else "validation split" if stored is not None else "default 0.5"
        self.category: str | None = cfg.get("category")
        self.model_name: str = info.get("model_name") or getattr(model, "name", type(model).__name__)
        self.weights_source: str | None = info.get("weights_source")
        self.top_k: int = int(top_k or cfg.get("top_k") or 100)
        self.info = info

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", **kwargs: Any) -> "Predictor":
        """Load a checkpoint written by :func:`memseg.training.train`."""
        model, info = load_checkpoint(path, device=device)
        return cls(model, info, device=device, **kwargs)

    # ------------------------------------------------------------------------------- inputs
    def _to_tensor(self, image: Any) -> torch.Tensor:
        """Any supported input -> float (1, 3, H0, W0) in [0, 1] at its original size."""
        from memseg.data.io import load_image, pil_to_rgb_array

        if isinstance(image, (str, Path)):
            image = load_image(image)  # raises naming the file
        elif isinstance(image, Image.Image):
            image = pil_to_rgb_array(image)
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"predict expects a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 4 else image[None]
            if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError(f"predict expects a float tensor (3, H, W) or (1, 3, H, W) in [0, 1], got {image.dtype} {tuple(image.shape)}")
            return x.float()
        raise ValueError(f"predict expects a path, PIL image, uint8 (H, W, 3) array or float tensor, got {type(image).__name__}")

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)

    # ------------------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Score a batch ``float (B, 3, H, W)`` in [0, 1] (not normalised).

        Returns ``(scores float32 (B,), maps float32 (B, H, W))`` with maps at the input's H, W.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"predict_batch expects float images (B, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = self._resize(images.to(self.device, torch.float32), self.input_size)
        amap, scores = score_images(self.model, x, self.top_k)  # (B, 1, h, w), (B,): as in validation
        if (h, w) != tuple(amap.shape[-2:]):
            amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return scores.cpu().numpy().astype(np.float32), amap[:, 0].cpu().numpy().astype(np.float32)

    def predict(self, image: Any) -> Prediction:
        """Score one image: path, PIL image, uint8 (H, W, 3) array or float tensor (3, H, W) in [0, 1]."""
        t0 = time.perf_counter()
        x = self._to_tensor(image)
        scores, maps = self.predict_batch(x)
        ms = 1000.0 * (time.perf_counter() - t0)
        score = float(scores[0])
        return Prediction(score=score, anomaly_map=maps[0], time_ms=ms, is_anomalous=score >= self.threshold)


def _free_path(path: Path) -> Path:
    """``path`` if free, else ``name-2.png``, ``name-3.png``, ... (never overwrite silently)."""
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def _expand(paths: list[str]) -> list[Path]:
    """Paths as given; a folder expands to the image files it holds (sorted)."""
    from memseg.data.io import is_image_file

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q))
        else:
            out.append(p)
    return out


def cli_predict(args) -> int:
    """`memseg predict`: print ``path<TAB>score<TAB>verdict`` per image and write overlay PNGs to --out.

    Unreadable images are reported on stderr (naming the file) and give exit code 2; the others
    are still scored.
    """
    from memseg.data.io import load_image
    from memseg.viz import overlay

    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in _expand(args.images):
        try:
            image = load_image(path)
        except (FileNotFoundError, ValueError) as err:
            msg = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"memseg predict: error: {msg}", file=sys.stderr)
            failed += 1
            continue
        pred = predictor.predict(image)
        verdict = "anomalous" if pred.is_anomalous else "normal"
        target = _free_path(out / f"{path.stem}_overlay.png")
        Image.fromarray(overlay(image, pred.anomaly_map)).save(target)
        print(f"{path}\t{pred.score:.4f}\t{verdict}", flush=True)
    print(f"overlays: {out} (threshold {predictor.threshold:.4f}, {predictor.threshold_source})", file=sys.stderr)
    return 2 if failed else 0
