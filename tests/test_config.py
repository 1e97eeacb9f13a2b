"""memseg.config: the one size type and the one config base (from_dict / YAML) every config uses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memseg.config import ConfigBase, as_size, read_yaml_mapping
from memseg.data.synthetic import generate
from memseg.engine.training import TrainConfig
from memseg.models import MODEL_CONFIGS


def test_as_size_accepts_an_int_or_a_pair_and_names_what_is_wrong() -> None:
    assert as_size(8) == (8, 8)
    assert as_size((3, 5)) == (3, 5)
    assert as_size([np.int64(4), 6]) == (4, 6)
    for bad in ((0, 4), "big", "64", True, (1, 2, 3), 2.5, None):
        with pytest.raises(ValueError, match="input_size must be"):
            as_size(bad, "input_size")
    with pytest.raises(ValueError, match=r"size must be at least 32 pixels per side, got \(8, 8\)"):
        as_size(8, min_side=32)


def test_every_size_in_the_kit_goes_through_as_size(tmp_path) -> None:
    with pytest.raises(ValueError, match="synthetic image size must be at least 32 pixels per side"):
        generate(tmp_path / "d", categories=["weave"], size=16, progress=False)
    with pytest.raises(ValueError, match="size must be at least 32"):
        TrainConfig(size=[16, 64]).input_size
    assert MODEL_CONFIGS["memseg"](input_size=64).input_size == (64, 64)


@dataclasses.dataclass
class _Demo(ConfigBase):
    steps: int = 10
    name: str = "x"

    def validate(self, source: str) -> None:
        if self.steps < 1:
            raise ValueError(f"{source}: steps must be >= 1, got {self.steps}")


def test_config_base_round_trips_and_names_unknown_keys_and_their_source(tmp_path) -> None:
    cfg = _Demo.from_dict({"steps": 3})
    assert cfg == _Demo(steps=3) and _Demo.from_dict(cfg.to_dict()) == cfg
    assert _Demo.field_names() == ["steps", "name"]
    with pytest.raises(ValueError, match=r"run\.yaml: unknown _Demo key\(s\) \['stepz'\]; valid keys: steps, name"):
        _Demo.from_dict({"stepz": 1}, source="run.yaml")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        _Demo.from_dict({"steps": 0})  # validate() runs after construction
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\n")
    assert _Demo.from_yaml(path) == _Demo(steps=7)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_model_config_is_a_config_base(name: str) -> None:
    cls = MODEL_CONFIGS[name]
    assert issubclass(cls, ConfigBase)
    assert cls.from_dict(cls().to_dict()) == cls()
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} key\(s\) \['nope'\]"):
        cls.from_dict({"nope": 1})


def test_read_yaml_mapping_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping of config keys at the top level, got list"):
        read_yaml_mapping(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        read_yaml_mapping(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
