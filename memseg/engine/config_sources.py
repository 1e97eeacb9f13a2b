"""The one road of a training option: from where it is given, typed by the schema, into one :class:`TrainConfig`.

An option is given in up to five places; a later one wins (nested mappings are merged key by key):

    1. the schema's defaults       TrainConfig, the model's config (MemSegConfig, ...), SimulationConfig
    2. a stored config             the resumed run's checkpoint (``memseg train --resume``)
    3. one YAML file               ``--config run.yaml``: TrainConfig keys, ``model_options:``, ``simulation:``
    4. ``--set key.path=value``    any option, e.g. ``--set model_options.attention=literal``, repeatable
    5. the named flags             ``--steps``, ``--size``, ``--weights``, ... (what a flag names, it decides)

A ``--set`` value is text, read as the type its field declares (:func:`option_type`,
:func:`memseg.config_schema.parse_typed`); the merged mapping then goes through :meth:`TrainConfig.validate`
(model options and simulation included) before any data is read, and an error names where its value came
from: the flag, the ``--set``, or the file and key.

Examples:
    >>> sources = ConfigSources()
    >>> sources.add({"steps": 10, "model_options": {"memory_size": 5}}, "run.yaml")
    >>> sources.add(parse_assignments(["model_options.attention=literal", "lr=1e-3"]), "--set")
    >>> cfg = sources.build()
    >>> cfg.steps, cfg.lr, cfg.model_options
    (10, 0.001, {'memory_size': 5, 'attention': 'literal'})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from memseg.config_schema import deep_merge, describe_type, parse_typed, schema_of
from memseg.engine.train_config import ConfigValueError, TrainConfig

SET_FLAG = "--set"
_SECTIONS = ("model_options", "simulation")  # TrainConfig fields that hold another config's keys


def option_type(path: str, model: str = "memseg") -> Any:
    """The declared type of option ``path``: a TrainConfig field (``lr``), a field of ``model``'s config
    (``model_options.attention``) or of the simulation's (``simulation.foreground.measure``).

    Raises:
        ValueError: an unknown key, naming the keys that exist where it was looked for.

    Examples:
        >>> option_type("lr"), option_type("model_options.memory_size"), option_type("simulation.foreground.measure")
        (<class 'float'>, <class 'int'>, typing.Literal['grey', 'warmth'])
    """
    from memseg.models import MODEL_CONFIGS
    from memseg.simulation.simulation_config import SimulationConfig

    head, *rest = path.split(".")
    schema = schema_of(TrainConfig)
    if head not in schema:
        raise ValueError(f"unknown TrainConfig key {head!r}; valid keys: {', '.join(schema)}")
    hint = schema[head]
    if rest and head == "model_options" and model not in MODEL_CONFIGS:
        raise ValueError(f"model_options of model {model!r}: the model must be one of {', '.join(MODEL_CONFIGS)}")
    if rest and head in _SECTIONS:
        hint = MODEL_CONFIGS[model] if head == "model_options" else SimulationConfig
    for i, key in enumerate(rest):
        where = ".".join([head, *rest[:i]])
        cls = next((c for c in (hint, *getattr(hint, "__args__", ())) if dataclasses.is_dataclass(c)), None)
        if cls is None:
            raise ValueError(f"{where} is {describe_type(hint)}, not a mapping: it has no key {key!r}")
        fields = schema_of(cls)
        if key not in fields:
            raise ValueError(f"unknown {where} ({cls.__name__}) key {key!r}; valid keys: {', '.join(fields)}")
        hint = fields[key]
    return hint


def parse_assignments(items: Iterable[str], model: str = "memseg", flag: str = SET_FLAG) -> dict[str, Any]:
    """``["a.b=1", ...]`` as a nested mapping, each value read as its option's type (:func:`option_type`).

    Raises:
        ValueError: one line naming the assignment (``--set lr=fast: lr must be a number, got 'fast'``).

    Values come back as YAML would give them (a list, not a tuple), so the config they enter is written to the
    run folder's ``config.yaml`` and the checkpoint like one read from a file.

    Examples:
        >>> parse_assignments(["simulation.grid=[2,4]", "amp=false"])
        {'simulation': {'grid': [2, 4]}, 'amp': False}
    """
    values: dict[str, Any] = {}
    for item in items:
        path, eq, text = item.partition("=")
        path = path.strip()
        if not eq or not path or any(not part for part in path.split(".")):
            raise ValueError(f"{flag} {item!r}: expected key.path=value, e.g. {flag} model_options.attention=literal")
        try:
            value = parse_typed(text, option_type(path, model), path.rsplit(".", 1)[-1])
        except ValueError as err:
            raise ValueError(f"{flag} {path}={text}: {err}") from None
        values = deep_merge(values, _nest(path, _plain(value)))
    return values


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML's and JSON's data)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    """A value as it would be typed after ``--set key=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_shown, value)) + "]"
    return "null" if value is None else str(value)


def _nest(path: str, value: Any) -> dict[str, Any]:
    for key in reversed(path.split(".")):
        value = {key: value}
    return value


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Every (dotted path, value) of a nested mapping, sections included."""
    for key, value in values.items():
        yield f"{prefix}{key}", value
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")


class ConfigSources:
    """The layers of a training config, lowest first, each remembered with where it came from."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # dotted option path -> "run.yaml", "--set lr=0.001", "--steps"

    def add(self, values: Mapping[str, Any], origin: str, check_keys: bool = True) -> None:
        """Lay ``values`` over the layers so far; ``origin`` names them: a file, a checkpoint, a flag, or
        ``--set`` (each option is then named ``--set <path>=<value>``). Unknown top-level keys are an error
        naming ``origin`` and the valid keys."""
        if check_keys:
            TrainConfig.check_keys(values, origin)
        for path, value in _leaves(values):
            as_set = origin == SET_FLAG and not isinstance(value, Mapping)
            self.origin[path] = f"{SET_FLAG} {path}={_shown(value)}" if as_set else origin
        self.values = deep_merge(self.values, values)

    def add_flags(self, flags: Mapping[str, tuple[str, Any]]) -> None:
        """Explicit flags: option path -> (flag, value); a None value was not given."""
        for path, (flag, value) in flags.items():
            if value is not None:
                self.add(_nest(path, value), flag)

    def where(self, key: str, default: str) -> str:
        """Where option ``key`` (a dotted path) came from: its own origin, else its section's, else the origins
        of the keys under it (a clash between keys), else ``default``."""
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in self.origin and self.origin[".".join(parts[:i])] != SET_FLAG:
                return self.origin[".".join(parts[:i])]
        below = sorted({o for p, o in self.origin.items() if p.startswith(key + ".") and o != SET_FLAG})
        return " and ".join(below) or default

    def build(self, default_source: str = "command line") -> TrainConfig:
        """The validated TrainConfig; a ``ValueError`` naming where the offending value came from."""
        try:
            return TrainConfig.from_dict(self.values, source=default_source)
        except ConfigValueError as err:
            raise ValueError(self.explain(err, default_source)) from None

    def explain(self, err: ConfigValueError, default_source: str) -> str:
        """``err`` in the words of its source: ``--steps must be >= 1, got 0``, ``--set model_options.attention=x:
        attention must be ...``, ``run.yaml: model_options: attention must be ...``."""
        where = self.where(err.key, default_source)
        if where.startswith(SET_FLAG):
            return f"{where}: {err.detail}"
        if where.startswith("--") and err.problem.startswith(err.key):
            return where + err.problem[len(err.key):]  # "--steps must be >= 1, got 0"
        return f"{where}: {err.problem}"
