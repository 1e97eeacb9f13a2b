"""Where the project and the DTD textures are: one resolver, flag > env > project defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.apps import demo
from memseg.notebook import settings as nb_settings
from memseg.paths import locate_dtd, project_root


def _dtd(root: Path) -> Path:
    (root / "images" / "banded").mkdir(parents=True)
    return root


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("MEMSEG_DTD", raising=False)
    monkeypatch.delenv("MEMSEG_ROOT", raising=False)
    return monkeypatch


def test_flag_beats_env_beats_project_default(clean_env, tmp_path):
    project = tmp_path / "work" / "project"
    project.mkdir(parents=True)
    shared = _dtd(tmp_path / "work" / "shared" / "data" / "dtd")
    loc = locate_dtd(root=project)
    assert (loc.path, loc.source) == (shared.resolve(), "project default")
    assert str(shared.resolve()) in loc.describe()

    local = _dtd(project / "data" / "dtd")  # <project>/data/dtd is looked at before ../shared
    assert locate_dtd(root=project).path == local.resolve()

    env = _dtd(tmp_path / "env_dtd")
    clean_env.setenv("MEMSEG_DTD", str(env))
    assert (locate_dtd(root=project).path, locate_dtd(root=project).source) == (env.resolve(), "MEMSEG_DTD")

    flag = _dtd(tmp_path / "flag_dtd")
    loc = locate_dtd(flag, root=project)
    assert (loc.path, loc.source) == (flag.resolve(), "--dtd")
    assert loc.describe() == f"textures: DTD at {flag.resolve()} (--dtd)"


def test_independent_of_the_current_directory(clean_env, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    dtd = _dtd(project / "data" / "dtd")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    clean_env.chdir(elsewhere)
    clean_env.setenv("MEMSEG_ROOT", str(project))
    assert project_root() == project.resolve()
    assert locate_dtd().path == dtd.resolve()
    # every entry point asks the same resolver
    (project / "data" / "cat" / "train" / "good").mkdir(parents=True)  # a dataset root for the notebooks' setup
    (project / "data" / "cat" / "test" / "good").mkdir(parents=True)
    assert nb_settings.setup("data", "cat", "cpu", env_data=False, style=False, verbose=False).dtd_root == dtd.resolve()
    assert demo.load_settings(config=None, env={}, root=project).dtd == dtd.resolve()


def test_nothing_found_says_where_it_looked_and_which_flag(clean_env, tmp_path):
    loc = locate_dtd(root=tmp_path / "project")
    assert loc.path is None and loc.source == "none found"
    text = loc.describe()
    assert str(tmp_path / "project" / "data" / "dtd") in text and "--dtd" in text and "MEMSEG_DTD" in text
    assert "dtd_root" not in text  # CLI words, not API argument names


@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_named_folder_must_be_a_dtd_root(clean_env, tmp_path, source):
    empty = tmp_path / "not_dtd"
    empty.mkdir()
    if source == "env":
        clean_env.setenv("MEMSEG_DTD", str(empty))
        expected = "MEMSEG_DTD"
    else:
        expected = "--dtd"
    with pytest.raises(FileNotFoundError, match=expected) as err:
        locate_dtd(str(empty) if source == "flag" else None, root=tmp_path)
    assert str(empty) in str(err.value) and "images/<category>" in str(err.value)


def test_flat_folder_of_textures_is_a_dtd_root(clean_env, tmp_path):
    flat = tmp_path / "textures"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"")
    assert locate_dtd(str(flat), root=tmp_path).path == flat.resolve()
