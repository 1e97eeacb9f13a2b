"""Every option typed by its schema: a config dataclass's field types read values from any source.

- :func:`schema_of` gives a config dataclass's field types and :func:`field_default` a field's default (the one
  place it lives; settings layers read it from there rather than restating it).
- :func:`parse_typed` turns text (a ``--set`` value, an environment variable) into a value of a field's type;
  :func:`coerce` checks a value read from YAML against it (reading a string YAML left unread, e.g. ``4e-2``).
- :func:`check_mapping` checks a whole mapping against a config dataclass (known keys, types, nested configs,
  the config's own checks) and names the key at fault (:class:`OptionError`); :func:`deep_merge` layers mappings.

No torch here: the command line parses with it before anything heavy is imported.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     steps: int = 10
    ...     lr: float = 0.04
    >>> parse_typed("300", schema_of(Demo)["steps"]), field_default(Demo, "lr")
    (300, 0.04)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import numpy as np
import yaml

_TRUE, _FALSE, _NULL = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("null", "none", "~", "")


def schema_of(cls: type) -> dict[str, Any]:
    """Field name -> type of a config dataclass (its annotations resolved), in field order.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Demo:
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
        ... class Demo:
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
        ... class Demo:
        ...     steps: int = 10
        >>> check_mapping(Demo, {"steps": "3"}, "demo")
        {'steps': 3}
        >>> check_mapping(Demo, {"step": 3}, "demo")
        Traceback (most recent call last):
        ...
        memseg.config_schema.OptionError: demo: unknown key(s) ['step'] for Demo; valid keys: steps
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
