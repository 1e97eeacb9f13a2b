"""One home for what every configuration shares: image sizes and dataclass configs read from dicts and YAML.

- :func:`as_size` turns an int or an (H, W) pair into ``(H, W)``; every ``size`` / ``input_size`` in the
  kit goes through it.
- :class:`ConfigBase` gives a dataclass ``from_dict`` (unknown keys are an error that names them and
  where they came from), ``to_dict``, ``field_names`` and ``from_yaml``; :func:`read_yaml_mapping` is the
  one YAML reader (a missing file, invalid YAML or a non-mapping is a one-line ``ValueError``/
  ``FileNotFoundError`` naming the file).
- :func:`schema_of` gives a config dataclass's field types; :func:`parse_typed` turns text (a ``--set`` value, an
  environment variable) into a value of such a type and :func:`coerce` checks a value read from YAML against
  it, so every source of a value is typed by the one schema; :func:`deep_merge` layers nested mappings.
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
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import numpy as np
import yaml

SizeLike = Union[int, Sequence[int]]
"""An image size: an int (a square side) or a (height, width) pair."""

C = TypeVar("C", bound="ConfigBase")


def as_size(size: SizeLike, what: str = "size", min_side: int = 1, multiple_of: int = 1, why: str = "") -> tuple[int, int]:
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
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}; expected a YAML file of {what}") from None
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
            raise ValueError(f"{where}unknown {cls.__name__} key(s) {unknown}; valid keys: {', '.join(cls.field_names())}")

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


# ------------------------------------------------------------------------------ typed by the schema
_TRUE, _FALSE, _NULL = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("null", "none", "~", "")


def schema_of(cls: type) -> dict[str, Any]:
    """Field name -> type of a config dataclass (its annotations resolved), in field order.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Demo(ConfigBase):
        ...     steps: int = 10
        ...     lr: float | None = None
        >>> schema_of(Demo)
        {'steps': <class 'int'>, 'lr': float | None}
    """
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of a config dataclass (a fresh one for ``default_factory`` fields): the one
    place a default lives, read by the settings layers that build on the schema.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Demo(ConfigBase):
        ...     steps: int = 10
        >>> field_default(Demo, "steps")
        10
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _union_args(hint: Any) -> tuple | None:
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else None


def describe_type(hint: Any) -> str:
    """What a value of type ``hint`` looks like, in words (for error messages)."""
    args = _union_args(hint)
    if args is not None:
        names = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, inner))
    if origin in (tuple, list) or hint in (tuple, list):
        if inner and inner[-1] is not Ellipsis and origin is tuple:
            return f"a list of {len(inner)} ({', '.join(describe_type(a) for a in inner)})"
        return "a list" + (f" of {describe_type(inner[0])}s" if inner else "")
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a name (a string)",
            dict: "a mapping"}.get(origin or hint, getattr(hint, "__name__", str(hint)))


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML or Python gives it) already is of type ``hint``; a number is a float, a
    bool is no integer, a mapping stands for a nested config dataclass."""
    args = _union_args(hint)
    if args is not None:
        return any(conforms(value, a) for a in args)
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in inner
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not inner:
            return True
        if origin is tuple and inner[-1] is not Ellipsis:
            return len(value) == len(inner) and all(conforms(v, a) for v, a in zip(value, inner))
        return all(conforms(v, inner[0]) for v in value)
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping) or (dataclasses.is_dataclass(hint) and isinstance(value, hint))
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def parse_typed(text: str, hint: Any, what: str = "value") -> Any:
    """``text`` (from the command line or an environment variable) as a value of type ``hint``.

    ``true``/``false`` (also yes/no, on/off, 1/0) for bools, ``null`` for an optional value, a list as
    ``[4, 8]`` or ``4,8``, a mapping in YAML flow style (``{a: 1}``), anything else as the type reads it.

    Raises:
        ValueError: ``"<what> must be <type in words>, got '<text>'"``.

    Examples:
        >>> parse_typed("1e-3", float), parse_typed("off", bool), parse_typed("4,8", tuple[int, int])
        (0.001, False, (4, 8))
        >>> parse_typed("null", float | None), parse_typed("otsu", Union[float, Literal["otsu"]])
        (None, 'otsu')
    """
    value = _parse(str(text).strip(), hint)
    if value is _INVALID:
        raise ValueError(f"{what} must be {describe_type(hint)}, got {text!r}")
    return value


_INVALID = object()


def _parse(text: str, hint: Any) -> Any:
    args = _union_args(hint)
    if args is not None:
        if type(None) in args and text.lower() in _NULL:
            return None
        for a in args:
            value = _parse(text, a) if a is not type(None) else _INVALID
            if value is not _INVALID:
                return value
        return _INVALID
    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return text
    if origin is Literal:
        return next((a for a in inner if str(a) == text), _INVALID)
    if hint is bool:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else _INVALID
    if hint in (int, float):
        try:
            return hint(text)  # a float may be nan or inf here: the config's own checks say what is allowed
        except ValueError:
            return _INVALID
    if origin in (tuple, list) or hint in (tuple, list):
        try:
            items = yaml.safe_load(text) if text.startswith("[") else [t.strip() for t in text.split(",") if t.strip()]
        except yaml.YAMLError:
            return _INVALID
        if not isinstance(items, list):
            return _INVALID
        kinds = (inner if origin is tuple and inner and inner[-1] is not Ellipsis else
                 (inner[0] if inner else Any,) * len(items))
        if len(kinds) != len(items):
            return _INVALID
        values = [(_parse(str(v), k) if isinstance(v, str) or not conforms(v, k) else v) for v, k in zip(items, kinds)]
        return _INVALID if any(v is _INVALID for v in values) else (tuple(values) if origin is tuple else values)
    if hint is Any or origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return _INVALID
        return value if hint is Any or isinstance(value, Mapping) else _INVALID
    return _INVALID


def coerce(value: Any, hint: Any, what: str = "value") -> Any:
    """``value`` as read from YAML, checked against type ``hint``: returned as is when it conforms, read as text
    when it is a string YAML left unread (``4e-2`` is a string to YAML 1.1), else a ``ValueError``
    ``"<what> must be <type in words>, got <value>"``.

    Examples:
        >>> coerce("4e-2", float), coerce([4, 8], tuple[int, int])
        (0.04, [4, 8])
    """
    if conforms(value, hint):
        return value
    if isinstance(value, str):
        parsed = _parse(value.strip(), hint)
        if parsed is not _INVALID:
            return parsed
    raise ValueError(f"{what} must be {describe_type(hint)}, got {value!r}")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, nested mappings merged key by key (``over`` wins).

    Examples:
        >>> deep_merge({"model_options": {"memory_size": 5}, "lr": 1}, {"model_options": {"attention": "literal"}})
        {'model_options': {'memory_size': 5, 'attention': 'literal'}, 'lr': 1}
    """
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


class OptionError(ValueError):
    """An option of a config mapping is wrong. ``key``: its dotted path (``simulation.foreground.measure``);
    ``detail``: the problem in the option's own words; ``str(err)``: ``"<section>: <detail>"``."""

    def __init__(self, key: str, detail: str, section: str = ""):
        super().__init__(f"{section}: {detail}" if section else detail)
        self.key, self.detail = key, detail


def check_mapping(cls: type, values: Any, section: str, what: str | None = None,
                  base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``values`` (a mapping from YAML, a flag or the API) checked against config dataclass ``cls``, so that
    ``cls(**base, **values)`` can only fail for a reason ``cls`` itself gives: known keys (else the valid ones are
    listed), each value of its field's type (:func:`coerce`; nested config dataclasses checked the same way), then
    all together through ``cls``'s own checks; a refusal is laid on the one key that alone gets the same refusal,
    else on ``section`` (keys that clash).

    Returns the mapping with the values :func:`coerce` read from text. ``what`` names ``cls`` in the unknown-key
    message (default its class name); ``base`` holds values set elsewhere (a model's ``input_size``).

    Raises:
        OptionError: ``key`` = ``section.<key>`` (``section`` itself for a clash between keys).

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Demo(ConfigBase):
        ...     steps: int = 10
        >>> check_mapping(Demo, {"steps": "3"}, "demo")
        {'steps': 3}
        >>> check_mapping(Demo, {"step": 3}, "demo")
        Traceback (most recent call last):
        ...
        memseg.config.OptionError: demo: unknown key(s) ['step'] for Demo; valid keys: steps
    """
    if not isinstance(values, Mapping):
        raise OptionError(section, f"expected a mapping of {what or cls.__name__} keys, got {type(values).__name__}",
                          section)
    schema, base = schema_of(cls), dict(base or {})
    unknown = sorted(map(str, set(values) - set(schema)))
    if unknown:
        raise OptionError(f"{section}.{unknown[0]}", f"unknown key(s) {unknown} for {what or cls.__name__}; "
                          f"valid keys: {', '.join(schema)}", section)
    checked: dict[str, Any] = {}
    for key, value in values.items():
        hint = schema[key]
        nested = [a for a in (_union_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if nested and isinstance(value, Mapping):
            value = check_mapping(nested[0], value, f"{section}.{key}", nested[0].__name__)
        else:
            try:
                value = coerce(value, hint, key)
            except ValueError as err:
                raise OptionError(f"{section}.{key}", str(err), section) from None
        checked[key] = value
    problem = _refusal(cls, {**base, **checked})
    if problem is not None:  # the one key that alone gets the same refusal is at fault, else the keys together
        culprit = next((k for k in checked if _refusal(cls, {**base, k: checked[k]}) == problem), None)
        raise OptionError(f"{section}.{culprit}" if culprit else section, problem, section)
    return checked


def _refusal(cls: type, values: Mapping[str, Any]) -> str | None:
    """What ``cls(**values)`` says when it refuses them (one line), else None."""
    try:
        cls(**values)
    except (TypeError, ValueError) as err:
        return " ".join(str(err).split())
    return None
