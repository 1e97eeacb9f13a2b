"""What a trained model carries besides its weights: one typed, validated record.

A checkpoint (``.pt``, :func:`memseg.engine.checkpoint.read_checkpoint`) and an exported model (``.onnx``, its
``memseg`` metadata) carry the same facts into scoring: the input size, the top-k of the image score (paper §4.1),
the decision threshold picked on the validation split, the category, the encoder weights, the model options it
was trained with and the validation scores. :class:`CheckpointRecord` holds them, each with its type; its
constructor refuses a value that scoring cannot use (a NaN threshold would make every verdict "normal"), with one
line naming the file.

Examples:
    >>> record = CheckpointRecord(model_name="memseg", input_size=(256, 256), threshold=0.42, path="final.pt")
    >>> record.top_k, record.input_size
    (100, (256, 256))
    >>> CheckpointRecord(model_name="memseg", input_size=(256, 256), threshold=float("nan"), path="x.pt")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: x.pt: stored threshold nan is not a finite number in [0, 1] (the decision threshold on ...
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memseg.config import as_size
from memseg.engine.train_config import TrainConfig


def check_carried_values(path: Any, threshold: Any = None, input_size: Any = None, top_k: Any = None,
                         category: Any = None, validation_scores: Any = ()) -> None:
    """What a checkpoint (or an exported model's metadata) carries into scoring must be usable, checked on load.

    ``threshold``: None or a finite number in [0, 1] (scores are means of [0, 1] maps; a NaN or a string would
    make every verdict "normal"); ``input_size``: None or (H, W) of positive ints; ``top_k``: None or an int
    >= 1; ``category``: None or a string; ``validation_scores``: a list of numbers.

    Raises:
        ValueError: one line naming the file, the value found and what was expected.

    Examples:
        >>> check_carried_values("x.pt", threshold=0.3, input_size=[256, 256], top_k=100)  # fine: nothing happens
    """
    def bad(what: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"{path}: stored {what} {value!r} is not {expected}; the file is damaged or was edited "
                          "(write it again with `memseg train` or `memseg export`)")

    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    usable = is_number(threshold) and math.isfinite(threshold) and 0.0 <= float(threshold) <= 1.0
    if threshold is not None and not usable:
        raise bad("threshold", threshold, "a finite number in [0, 1] (the decision threshold on the image score)")
    if input_size is not None:
        try:
            as_size(input_size, "input size")
        except (ValueError, TypeError):
            raise bad("input size", input_size, "(H, W) of positive integers") from None
    if top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise bad("top_k", top_k, "an integer >= 1 (pixels averaged into the image score)")
    if category is not None and not isinstance(category, str):
        raise bad("category", category, "a category name (a string)")
    if not isinstance(validation_scores, (list, tuple)) or not all(is_number(v) for v in validation_scores):
        raise bad("validation scores", str(validation_scores)[:80],
                  "a list of numbers (the image scores of the validation split)")


@dataclass(frozen=True)
class CheckpointRecord:
    """The facts of a trained model that scoring, evaluation, export and the dashboard read.

    Attributes:
        model_name: "memseg", "draem" or "mmr".
        input_size: (H, W) the model scores at.
        top_k: image score = mean of the top-k pixel scores (paper §4.1).
        threshold: image decision threshold from the validation split, None when there is none.
        category: the category trained on, None when unknown.
        weights_source: what the encoder was initialised from ("imagenet", "random", a path, ...).
        step, steps_planned: optimisation steps done, and planned (a run that did not finish has fewer).
        model_config: the model's options, its recipe included (``asdict(model.config)``; {} for an exported model).
        validation_scores: image scores of the validation split (the dashboard's colour scale).
        path: the file it was read from.
        backend: what runs the network ("torch", "onnxruntime", "onnxruntime+openvino-bf16").
    """

    model_name: str
    input_size: tuple[int, int]
    top_k: int = TrainConfig.top_k  # the training config's default: its one home
    threshold: float | None = None
    category: str | None = None
    weights_source: str | None = None
    step: int | None = None
    steps_planned: int | None = None
    model_config: dict = field(default_factory=dict)
    validation_scores: tuple[float, ...] = ()
    path: str | None = None
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.input_size is None:
            raise ValueError(f"{self.path}: stores no input size; expected (H, W) of positive integers (the file is "
                             "damaged or was edited; write it again with `memseg train` or `memseg export`)")
        check_carried_values(self.path, self.threshold, self.input_size, self.top_k, self.category,
                             self.validation_scores)
        object.__setattr__(self, "input_size", as_size(self.input_size, "input size"))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "threshold", None if self.threshold is None else float(self.threshold))
        object.__setattr__(self, "validation_scores", tuple(float(v) for v in self.validation_scores))

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: Any = None) -> CheckpointRecord:
        """The record of a checkpoint dict written by :func:`memseg.engine.checkpoint.save_checkpoint`.

        Examples:
            >>> CheckpointRecord.from_checkpoint(read_checkpoint("runs/bottle/final.pt")).threshold  # doctest: +SKIP
            0.42
        """
        mcfg = ckpt.get("model_config") if isinstance(ckpt.get("model_config"), dict) else {}
        cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        extra = ckpt.get("extra") if isinstance(ckpt.get("extra"), dict) else {}
        validation = extra.get("validation") if isinstance(extra.get("validation"), dict) else {}
        size = mcfg.get("input_size") or cfg.get("size")
        optional = {"top_k": cfg["top_k"]} if cfg.get("top_k") is not None else {}
        return cls(model_name=str(ckpt.get("model_name")), input_size=size,
                   threshold=ckpt.get("threshold"), category=cfg.get("category"),
                   weights_source=ckpt.get("weights_source", mcfg.get("weights")), step=ckpt.get("step"),
                   steps_planned=cfg.get("steps"), model_config=dict(mcfg),
                   validation_scores=validation.get("scores") or (), path=None if path is None else str(path),
                   **optional)

    @classmethod
    def from_onnx_metadata(cls, meta: dict, path: Any = None) -> CheckpointRecord:
        """The record of an exported model's ``memseg`` metadata (:meth:`onnx_metadata`)."""
        optional = {"top_k": meta["top_k"]} if meta.get("top_k") is not None else {}
        return cls(model_name=str(meta.get("model_name")), input_size=meta.get("input_size"),
                   threshold=meta.get("threshold"), category=meta.get("category"),
                   weights_source=meta.get("weights_source"), step=meta.get("step"),
                   validation_scores=meta.get("validation_scores", []), path=None if path is None else str(path),
                   backend="onnxruntime", **optional)

    def onnx_metadata(self) -> dict:
        """The facts :meth:`from_onnx_metadata` reads back (JSON-safe), as ``memseg export`` stores them."""
        return {"model_name": self.model_name, "input_size": list(self.input_size), "top_k": self.top_k,
                "threshold": self.threshold, "category": self.category, "weights_source": self.weights_source,
                "step": self.step, "validation_scores": list(self.validation_scores)}

    def on(self, backend: str) -> CheckpointRecord:
        """The same record, run by ``backend``."""
        return dataclasses.replace(self, backend=backend)
