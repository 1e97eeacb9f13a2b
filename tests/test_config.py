"""memseg.config and memseg.config_schema: the one size type, the one config base (from_dict / YAML) every config
uses, and every option read as the type its schema declares (the command line's --set, YAML, the settings layers)."""

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


# ------------------------------------------------------------------ one road: typed by the schema, checked at the door
from typing import Literal, Union  # noqa: E402

import yaml  # noqa: E402

from memseg.apps.cli import build_parser  # noqa: E402
from memseg.apps.cli import main as cli_main  # noqa: E402
from memseg.config_schema import parse_typed  # noqa: E402
from memseg.engine.config_sources import parse_assignments  # noqa: E402
from memseg.engine.train_config import model_config_for  # noqa: E402
from memseg.models import config_from_dict  # noqa: E402
from memseg.simulation import ForegroundConfig, SimulationConfig  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, hint, expected", [
    ("1e-3", float, 0.001), ("7", int, 7), ("off", bool, False), ("True", bool, True), ("literal", str, "literal"),
    ("null", float | None, None), ("0.5", float | None, 0.5), ("[2, 4]", tuple[int, int], (2, 4)),
    ("0.1,0.9", tuple[float, float], (0.1, 0.9)), ("[64, 32, 16, 8, 8]", tuple[int, ...], (64, 32, 16, 8, 8)),
    ("warmth", Literal["grey", "warmth"], "warmth"), ("otsu", Union[float, Literal["otsu"]], "otsu"),
    ("0.2", Union[float, Literal["otsu"]], 0.2), ("128", int | list, 128), ("[64, 96]", int | list, [64, 96]),
    ("{threshold: 0.3}", dict, {"threshold": 0.3}),
])
def test_text_is_read_as_the_type_its_field_declares(text, hint, expected) -> None:
    value = parse_typed(text, hint)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, hint, message", [
    ("fast", float, "lr must be a number, got 'fast'"),
    ("2.5", int, "lr must be an integer, got '2.5'"),
    ("maybe", bool, "lr must be true or false, got 'maybe'"),
    ("[1, 2, 3]", tuple[int, int], "lr must be a list of 2 (an integer, an integer), got '[1, 2, 3]'"),
    ("blue", Literal["grey", "warmth"], "lr must be one of 'grey', 'warmth', got 'blue'"),
])
def test_text_that_is_not_of_the_type_says_what_was_expected(text, hint, message) -> None:
    with pytest.raises(ValueError) as info:
        parse_typed(text, hint, "lr")
    assert str(info.value) == message


def _every_option() -> list[tuple[str, str, object]]:
    """(model, dotted path, default) of every option of TrainConfig, each model's config and the simulation."""
    options = []
    for model, cls in sorted(MODEL_CONFIGS.items()):
        options += [(model, f"model_options.{f.name}", _default(f)) for f in dataclasses.fields(cls)]
    options += [("memseg", f.name, _default(f)) for f in dataclasses.fields(TrainConfig)
                if f.name not in ("model_options", "simulation")]
    options += [("memseg", f"simulation.{f.name}", _default(f)) for f in dataclasses.fields(SimulationConfig)]
    options += [("memseg", f"simulation.foreground.{f.name}", _default(f))
                for f in dataclasses.fields(ForegroundConfig)]
    return options


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _as_text(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else (
        "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value))


@pytest.mark.parametrize("model, path, default", _every_option(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_is_reachable_from_the_command_line_typed_by_its_field(model, path, default) -> None:
    """`--set <path>=<default as text>` reads back the default, with the field's type: no option lacks a road."""
    values = parse_assignments([f"{path}={_as_text(default)}"], model)
    for key in path.split("."):
        values = values[key]
    assert values == default or (isinstance(default, tuple) and tuple(values) == default)
    assert type(values) is type(default) or default is None or isinstance(default, tuple)


@pytest.mark.parametrize("path, message", [
    ("learning_rate=1", "--set learning_rate=1: unknown TrainConfig key 'learning_rate'; valid keys: data, category"),
    ("model_options.atention=literal", "--set model_options.atention=literal: unknown model_options (MemSegConfig) "
                                       "key 'atention'; valid keys: input_size, memory_size, weights"),
    ("simulation.foreground.mesure=warmth", "--set simulation.foreground.mesure=warmth: unknown "
                                            "simulation.foreground (ForegroundConfig) key 'mesure'; valid keys: "
                                            "threshold, invert"),
    ("lr.warm=1", "--set lr.warm=1: lr is a number, not a mapping: it has no key 'warm'"),
    ("lr", "--set 'lr': expected key.path=value, e.g. --set model_options.attention=literal"),
])
def test_a_set_of_an_unknown_key_names_it_and_the_keys_that_exist(path, message) -> None:
    with pytest.raises(ValueError) as info:
        parse_assignments([path])
    assert str(info.value).startswith(message)


def _cli_config(tmp_path, *flags: str, yaml_text: str | None = None):
    from memseg.apps.commands import config_from_args

    extra = []
    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "run.yaml")]
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--category", "x", "--out",
                                      str(tmp_path / "r"), "--device", "cpu", *extra, *flags])
    return config_from_args(args)


def test_precedence_defaults_then_yaml_then_set_then_flags(tmp_path) -> None:
    yaml_text = "steps: 10\nlr: 0.01\nseed: 3\nmodel_options: {memory_size: 5, attention: calibrated}\n" \
                "simulation: {threshold: 0.2, foreground: {threshold: 0.3}}\n"
    cfg = _cli_config(tmp_path, "--size", "64", "--set", "lr=1e-3", "--set", "steps=20", "--steps", "30",
                      "--set", "model_options.attention=literal", "--set", "simulation.foreground.measure=warmth",
                      "--set", "simulation.grid=2,4", yaml_text=yaml_text)
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.momentum) == (30, 0.001, 3, 0.9)  # flag > --set > YAML > default
    assert cfg.model_options == {"memory_size": 5, "attention": "literal"}  # merged key by key
    assert cfg.simulation == {"threshold": 0.2, "foreground": {"threshold": 0.3, "measure": "warmth"}, "grid": [2, 4]}
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()  # written to the run folder as it is
    model = config_from_dict("memseg", model_config_for(cfg))
    assert (model.attention, model.memory_size, model.head, model.input_size) == ("literal", 5, "auto", (64, 64))
    assert SimulationConfig(**cfg.simulation).foreground == ForegroundConfig(threshold=0.3, measure="warmth")
    assert _cli_config(tmp_path, "--set", "model=draem", "--size", "64").model == "draem"  # --set reaches every field
    assert _cli_config(tmp_path, "--size", "64", "--model", "memseg", yaml_text="model: draem\n").model == "memseg"


@pytest.fixture
def no_data(monkeypatch):
    """Reading the data set (listing or decoding it) fails the test: what is checked must be refused before."""
    import memseg.data
    import memseg.data.datasets

    def refuse(*_a, **_k):
        raise AssertionError("the data was read although the config is invalid")

    monkeypatch.setattr(memseg.data, "load_split", refuse)
    monkeypatch.setattr(memseg.data.datasets, "find_records", refuse)


@pytest.mark.parametrize("yaml_text, flags, expected", [
    ("model_options: {atention: literal}\n", [], "{config}: model_options: unknown key(s) ['atention'] for the memseg "
                                                 "model; valid keys: input_size, memory_size, weights"),
    ("model_options: {attention: bogus}\n", [], "{config}: model_options: attention must be auto or one of "
                                                "('calibrated', 'literal'), got 'bogus'"),
    ("simulation: {treshold: 0.3}\n", [], "{config}: simulation: unknown key(s) ['treshold'] for the simulation "
                                          "(SimulationConfig); valid keys: threshold, delta_range"),
    ("simulation: {foreground: {measure: blue}}\n", [],
     "{config}: simulation.foreground: measure must be one of 'grey', 'warmth', got 'blue'"),
    ("simulation: {texture_prob: often}\n", [], "{config}: simulation: texture_prob must be a number, got 'often'"),
    ("", ["--set", "model_options.attention=bogus"],
     "--set model_options.attention=bogus: attention must be auto or one of ('calibrated', 'literal'), got 'bogus'"),
    ("", ["--set", "simulation.threshold=1.5"], "--set simulation.threshold=1.5: threshold must be a finite number "
                                                "in (-1, 1)"),
    ("", ["--set", "lr=-1"], "--set lr=-1.0: lr must be > 0, got -1.0"),
    ("", ["--set", "model_options.memory_size=many"], "--set model_options.memory_size=many: memory_size must be an "
                                                      "integer, got 'many'"),
    ("", ["--size", "100"], "--size 100: MemSeg input_size must be (H, W) with both sides positive multiples of 32"),
    ("size: 100\n", [], "{config}: size 100: MemSeg input_size must be (H, W)"),
    ("", ["--set", "model=foo"], "--set model=foo: model must be one of ('memseg', 'draem', 'mmr'), got 'foo'"),
    ("", ["--set", "model=foo", "--set", "model_options.depth=2"],
     "--set model_options.depth=2: model_options of model 'foo': the model must be one of memseg, draem, mmr"),
    ("", ["--model", "mmr", "--set", "model_options.embed_dim=100", "--size", "64"],
     "--set model_options.embed_dim=100: MMRConfig.embed_dim (100) must be divisible by num_heads (12)"),
])
def test_the_whole_config_is_checked_before_any_data_naming_its_source(tmp_path, capsys, no_data, yaml_text, flags,
                                                                        expected) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    args = ["train", "--data", str(tmp_path), "--category", "x", "--out", str(tmp_path / "r"), "--device", "cpu",
            "--config", str(config), *flags]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"memseg train: error: {expected.format(config=config)}"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("options, key", [
    ({"model_options": {"attention": "bogus"}}, "model_options.attention"),
    ({"simulation": {"treshold": 0.3}}, "simulation.treshold"),
    ({"simulation": {"foreground": {"measure": "blue"}}}, "simulation.foreground.measure"),
    ({"device": "tpu"}, "device"),
    ({"model": "mmr", "model_options": {"patch_size": 3}}, "model_options.patch_size"),
])
def test_the_python_api_checks_the_whole_config_before_any_data(tmp_path, no_data, options, key) -> None:
    from memseg.engine.train_config import ConfigValueError
    from memseg.engine.training import train

    cfg = TrainConfig(data=str(tmp_path), category="x", size=64, out=str(tmp_path / "r"), **options)
    with pytest.raises(ConfigValueError) as info:
        train(cfg, progress=False)
    assert info.value.key == key and str(info.value).startswith("config: ")
    assert not (tmp_path / "r").exists()


def test_the_default_yaml_file_is_the_schema_defaults() -> None:
    """configs/memseg_default.yaml spells out defaults that live in the schema: every value it holds equals the
    schema's, and it trains exactly the model the defaults train."""
    values = yaml.safe_load((ROOT / "configs" / "memseg_default.yaml").read_text())
    defaults = TrainConfig()
    model_defaults = MODEL_CONFIGS[defaults.model]()
    for key, value in values.items():
        if key == "model_options":
            assert value == {k: getattr(model_defaults, k) for k in value}
        elif key == "simulation":
            assert value == {k: getattr(SimulationConfig(), k) for k in value}
        else:
            assert TrainConfig.from_dict({key: value}).to_dict()[key] == getattr(defaults, key), key
    from_file = TrainConfig.from_yaml(ROOT / "configs" / "memseg_default.yaml")
    assert {**from_file.to_dict(), "model_options": {}} == defaults.to_dict()
    model = config_from_dict("memseg", model_config_for(defaults))
    assert config_from_dict("memseg", model_config_for(from_file)) == model


def test_the_demo_settings_are_a_thin_layer_over_the_schema(tmp_path) -> None:
    """configs/demo.yaml sets only what makes the demo model quick; everything else is the schema's default."""
    from memseg.apps import demo

    values = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    schema = {"size": TrainConfig().size, "steps": TrainConfig().steps, "lr": TrainConfig().lr,
              "seed": TrainConfig().seed, "memory_size": MODEL_CONFIGS["memseg"]().memory_size,
              "weights": MODEL_CONFIGS["memseg"]().weights,
              "batch_size": TrainConfig().batch_normal + TrainConfig().batch_anomalous}
    restated = {k: v for k, v in values.items() if k in schema and v == schema[k]}
    assert not restated, f"configs/demo.yaml restates schema defaults: {restated}"
    settings = demo.load_settings(env={}, root=ROOT)
    cfg = demo._train_config(settings, tmp_path / "run")
    assert (cfg.size, cfg.steps) == (values["size"], values["steps"])
    defaults = TrainConfig()
    assert (cfg.batch_normal, cfg.batch_anomalous, cfg.lr, cfg.seed) == (
        defaults.batch_normal, defaults.batch_anomalous, defaults.lr, defaults.seed)
    model = config_from_dict("memseg", model_config_for(cfg))
    memseg_defaults = MODEL_CONFIGS["memseg"]()
    assert (model.memory_size, model.weights) == (memseg_defaults.memory_size, memseg_defaults.weights)
    bigger = demo._train_config(demo.DemoSettings(memory_size=7, batch_size=6, seed=2), tmp_path / "run")
    assert bigger.model_options == {"memory_size": 7}
    assert (bigger.batch_normal, bigger.batch_anomalous, bigger.seed) == (3, 3, 2)


def test_the_notebook_settings_take_the_full_run_from_the_schema(tmp_path) -> None:
    from memseg.notebook.settings import FULL_SIZE, NotebookSettings

    full = NotebookSettings(data_root=tmp_path, category="x", device="cpu", quick=False, repo=tmp_path, runs=tmp_path,
                            dtd_root=None)
    assert (full.train_steps, full.memory_size, full.weights) == (
        TrainConfig().steps, MODEL_CONFIGS["memseg"]().memory_size, MODEL_CONFIGS["memseg"]().weights)
    assert FULL_SIZE == TrainConfig().input_size
    quick = dataclasses.replace(full, quick=True)
    assert quick.train_steps < full.train_steps and quick.memory_size < full.memory_size


def test_a_bad_device_variable_is_named_by_the_demo_and_the_notebooks(tmp_path, monkeypatch) -> None:
    from memseg.apps import demo
    from memseg.notebook import settings as nb_settings

    expected = r"^MEMSEG_DEVICE 'tpu' is not a device this kit runs on; expected auto, cpu, cuda"
    with pytest.raises(ValueError, match=expected):
        demo.load_settings(env={"MEMSEG_DEVICE": "tpu"}, root=tmp_path)
    assert demo.load_settings(env={"MEMSEG_DEVICE": "tpu"}, root=tmp_path, device="cpu").device == "cpu"  # flag wins
    monkeypatch.setenv("MEMSEG_DEVICE", "tpu")
    with pytest.raises(ValueError, match=expected):
        nb_settings.setup(str(tmp_path / "missing"), "x", verbose=False, style=False)
    assert not (tmp_path / "missing").exists()


def test_options_valid_together_are_not_refused_one_by_one() -> None:
    """embed_dim 32 is refused with MMR's default 12 heads, not with the 2 heads set beside it."""
    from memseg.config_schema import OptionError, check_mapping

    cls = MODEL_CONFIGS["mmr"]
    assert check_mapping(cls, {"embed_dim": 32, "num_heads": 2}, "model_options") == {"embed_dim": 32, "num_heads": 2}
    with pytest.raises(OptionError) as info:
        check_mapping(cls, {"embed_dim": 32, "num_heads": 3}, "model_options")
    assert info.value.key == "model_options" and "embed_dim (32) must be divisible by num_heads (3)" in str(info.value)
    with pytest.raises(OptionError) as info:
        check_mapping(cls, {"embed_dim": 32, "num_heads": 2, "mask_ratio": 1.5}, "model_options")
    assert info.value.key == "model_options.mask_ratio"


def test_one_channels_last_option_and_old_runs_still_resume():
    """The memory format is the model's (model_options.channels_last); a run stored with the retired
    TrainConfig.channels_last still reads, a new config naming it is refused with the valid keys."""
    from memseg.engine.train_config import stored_config

    assert "channels_last" not in {f.name for f in dataclasses.fields(TrainConfig)}
    old = {**TrainConfig(data="d", category="c").to_dict(), "channels_last": False}
    assert TrainConfig.from_dict(stored_config(old)) == TrainConfig(data="d", category="c")
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.from_dict({"data": "d", "category": "c", "channels_last": True})
