"""One home for what every configuration shares: image sizes and dataclass configs read from dicts and YAML.

- :func:`as_size` turns an int or an (H, W) pair into ``(H, W)``; every ``size`` / ``input_size`` in the
  kit goes through it.
- :class:`ConfigBase` gives a dataclass ``from_dict`` (unknown keys are an error that names them and
  where they came from), ``to_dict``, ``field_names`` and ``from_yaml``; :func:`read_yaml_mapping` is the
  one YAML reader (a missing file, invalid YAML or a non-mapping is a one-line ``ValueError``/
  ``FileNotFoundError`` naming the file).
- Reading a value as its field's type (``--set`` text, YAML, a nested config) is :mod:`memseg.config_schema`.
- :func:`check_fits_in_memory` refuses, before anything is allocated, a size or count whose memory estimate
  exceeds the machine's (:func:`machine_memory`), naming what asked for it and giving the estimate.

This module imports no torch: the synthetic-data generator uses it too.

Examples:
    >>> as_size(64), as_size((32, 48))
    ((64, 64), (32, 48))
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo(ConfigBase):
    ...     steps: int = 10
    >>> Demo.from_dict({"steps": 3})
    Demo(steps=3)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import yaml

SizeLike = Union[int, Sequence[int]]
"""An image size: an int (a square side) or a (height, width) pair."""

C = TypeVar("C", bound="ConfigBase")


def as_size(size: SizeLike, what: str = "size", min_side: int = 1, multiple_of: int = 1, why: str = "") -> tuple[int,
                                                                                                                 int]:
    """Normalise ``size`` to ``(H, W)``: an int gives a square, a pair is taken as (height, width).

    Raises:
        ValueError: naming ``what`` when ``size`` is neither, a side is below ``min_side``, or a side
            is not a multiple of ``multiple_of`` (``why`` says what needs it).
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if is_int(size):
        h = w = int(size)  # type: ignore[arg-type]
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2 and all(map(is_int, size)):
        h, w = (int(s) for s in size)
    else:
        raise ValueError(f"{what} must be an int or a (height, width) pair, got {size!r}")
    if min(h, w) < max(min_side, 1):
        bound = "positive" if min_side <= 1 else f"at least {min_side} pixels per side"
        raise ValueError(f"{what} must be {bound}, got {(h, w)}")
    if h % multiple_of or w % multiple_of:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{what} must be (H, W) with both sides multiples of {multiple_of}{reason}, got {(h, w)}")
    return h, w


def format_bytes(n: float) -> str:
    """``1.5 GB``, ``320 MB``, ``12.0 TB`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def machine_memory(device: Any = "cpu") -> tuple[int, str]:
    """``(bytes, what)``: the memory a run on ``device`` can have at most: a CUDA device's total memory, else the
    machine's RAM (or the container's cgroup limit when lower). Imports torch only for a CUDA device."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            dev = torch.device(device)
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            return int(torch.cuda.get_device_properties(index).total_memory), f"on {torch.cuda.get_device_name(index)}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    what = "of RAM"
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
        if 0 < limit < total:
            total, what = limit, "(this container's memory limit)"
    return int(total), what


class NotEnoughMemoryError(ValueError):
    """What was asked for needs more memory than the machine has (checked before allocating)."""


def check_fits_in_memory(need: float, subject: str, hint: str, device: Any = "cpu") -> None:
    """Refuse, before allocating, work whose memory estimate ``need`` (bytes, a lower bound) exceeds what
    :func:`machine_memory` reports: a one-line :class:`NotEnoughMemoryError` ``"<subject> needs at least X;
    this machine has Y <what>; <hint>"`` (``subject`` names the flag, file or argument that asked for it)."""
    total, what = machine_memory(device)
    if total and need > total:
        raise NotEnoughMemoryError(f"{subject} needs at least {format_bytes(need)} of memory; this machine has "
                                   f"{format_bytes(total)} {what}; {hint}")


def read_yaml_mapping(path: str | Path, what: str = "config keys") -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, or the top level is not a mapping; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (expected a YAML file of {what})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:  # a binary file (a checkpoint, an image) given as the YAML file
        raise ValueError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected a YAML file of "
                         f"{what}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}; expected a YAML file "
                         f"of {what}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of {what} at the top level, got {type(values).__name__}")
    return values


class ConfigBase:
    """Mixin for config dataclasses: build from plain dicts (checkpoints, YAML) and back.

    A subclass may define ``validate(source)``; :meth:`from_dict` calls it after construction.
    """

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def check_keys(cls, values: Mapping[str, Any], source: str | None = None) -> None:
        """Raise ``ValueError`` naming the unknown keys of ``values`` (and ``source`` when given)."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}unknown {cls.__name__} key(s) {unknown}; valid keys: "
                             f"{', '.join(cls.field_names())}")

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None, source: str | None = None) -> C:
        """Build from a plain dict; unknown keys are a ``ValueError`` naming them (and ``source``)."""
        if values is not None and not isinstance(values, Mapping):
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
        values = dict(values or {})
        cls.check_keys(values, source)
        cfg = cls(**values)
        if callable(getattr(cfg, "validate", None)):
            cfg.validate(source or "config")
        return cfg

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """Build from a YAML file of this config's keys (errors name the file)."""
        return cls.from_dict(read_yaml_mapping(path, f"{cls.__name__} keys"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
