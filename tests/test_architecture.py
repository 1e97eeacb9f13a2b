"""The package tree's rules (docs/ARCHITECTURE.md): who may import whom, where argparse lives, module sizes.

Layers, bottom to top; a module may import its own layer and the layers below, never above:

    config, utils, paths, viz      plumbing (no memseg imports but each other)
    data                           images and datasets
    simulation, models             the paper's parts (§3.1; §3.2-3.4)
    engine                         training, scoring, evaluation, inference, export, benchmark
    notebook, apps                 the kit's faces (notebooks; CLI, demo, dashboard)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memseg"
LAYER = {"config": 0, "utils": 0, "paths": 0, "viz": 0, "data": 1, "simulation": 2, "models": 2, "engine": 3,
         "notebook": 4, "apps": 4}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "memseg" else None


def _room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "memseg":
                names += [f"memseg.{a.name}" for a in node.names]
    return names


def test_every_room_has_a_layer() -> None:
    rooms = {_room_of(p) for p in _modules()} - {"__init__"}
    assert rooms <= set(LAYER), f"rooms without a layer in this test and docs/ARCHITECTURE.md: {rooms - set(LAYER)}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in _modules():
        room = _room_of(path)
        if room == "__init__":
            continue
        for name in _imports(path):
            target = _room(name)
            if target in LAYER and LAYER[target] > LAYER[room]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_faces_do_not_import_each_other() -> None:
    """Notebook helpers and apps are siblings: what both need (the cached quick model, the synthetic set)
    lives below them (memseg.engine.cached_run, memseg.data.synthetic)."""
    crossing = []
    for path in _modules():
        room = _room_of(path)
        for name in _imports(path):
            if {room, _room(name)} == {"apps", "notebook"}:
                crossing.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not crossing, "\n".join(crossing)


def test_the_papers_parts_are_independent() -> None:
    """Simulation (§3.1) and the networks (§3.2-3.4) know nothing of each other: training joins them."""
    crossing = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in _modules() for name in _imports(path)
                if {_room_of(path), _room(name)} == {"simulation", "models"}]
    assert not crossing, "\n".join(crossing)


def test_only_the_apps_know_argparse() -> None:
    """Domain modules take plain arguments; flags are parsed in memseg/apps (the CLI, the demo's entry point)."""
    users = [str(p.relative_to(PACKAGE.parent)) for p in _modules() if "argparse" in _imports(p)]
    assert users and all(u.startswith("memseg/apps/") for u in users), users


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_readable(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {n} lines (> {MAX_LINES}): split it by concept"
