"""The small trained model notebooks 02-05 share, trained once by :func:`memseg.engine.cached_run.cached_training`
(the builder the Voila demo uses too) under ``<runs>/model-<category>``.

Examples:
    >>> model, info = quick_model(S)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from memseg.engine.cached_run import cached_training
from memseg.notebook.settings import NotebookSettings


def train_config(settings: NotebookSettings, name: str, steps: int | None = None, size: tuple[int, int] | None = None,
                 model_options: dict | None = None, memory_size: int | None = None):
    """The :class:`memseg.engine.train_config.TrainConfig` of a notebook run (paper recipe; QUICK: small and short).

    The run folder is ``<runs>/<name>-<category>``.
    """
    from memseg.engine.train_config import TrainConfig

    opts = {"memory_size": memory_size or settings.memory_size, "weights": settings.weights, **(model_options or {})}
    steps = int(steps or settings.train_steps)
    return TrainConfig(
        data=str(settings.data_root), category=settings.category, size=list(size or settings.size), steps=steps,
        model_options=opts, seed=settings.seed, device=str(settings.device),
        dtd_root=str(settings.dtd_root) if settings.dtd_root else None,
        out=str(settings.runs / f"{name}-{settings.category}"), log_every=max(1, steps // 50),
        warmup_steps=min(100, max(1, steps // 10)), checkpoint_every=max(steps, 500),
    )


def quick_model(settings: NotebookSettings, callback: Callable | None = None, retrain: bool = False,
                progress: bool = True):
    """The small MemSeg model that notebooks 2-5 share (:func:`cached_training` under ``<runs>/model-<category>``).

    Returns ``(model, info)`` from :func:`memseg.engine.checkpoint.load_checkpoint` (model in eval mode on
    ``settings.device``); ``info["cached"]`` says whether it was loaded from the cache.
    """
    from memseg.engine.checkpoint import load_checkpoint

    checkpoint, cached = cached_training(train_config(settings, name="model"), name="notebook model", retrain=retrain,
                                         progress=progress, callback=callback)
    model, info = load_checkpoint(checkpoint, device=settings.device)
    info["cached"] = cached
    return model, info
