"""The package tree's rules (docs/ARCHITECTURE.md): who may import whom, where argparse lives, module sizes.

Layers, bottom to top; a module may import its own layer and the layers below, never above:

    config, config_schema, utils,  plumbing (no memseg imports but each other)
    paths, viz
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
LAYER = {"config": 0, "config_schema": 0, "utils": 0, "paths": 0, "viz": 0, "data": 1, "simulation": 2, "models": 2,
         "engine": 3,
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ``memseg`` modules it imports: every ``import`` statement anywhere in the file, at the top,
    inside a function (imported when called, still a dependency) or under ``if TYPE_CHECKING:`` (a type checker
    follows it; a circle there is the one a later edit turns into an ImportError). ``from memseg.x import y``
    points at the module ``memseg.x.y`` when there is one, else at ``memseg.x`` (its ``__init__``); relative
    imports are resolved. A module is not linked to its parent package: Python runs the ``__init__`` first,
    which is not a circle even when the ``__init__`` imports the module back."""
    modules = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # memseg.x.attribute -> memseg.x
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), each as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for group in groups:  # a shortest way from the group's first module back to itself, inside the group
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            if start in graph[v]:
                circles.append([*paths[v], start])
                break
            for w in sorted(graph[v] & group):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
    return circles


def test_the_cycle_finder_finds_a_circle() -> None:
    """The finder itself: a circle of three, a self-standing chain, and a package importing its own module."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.m"}, "p.m": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package() -> None:
    """No module of ``memseg`` reaches itself through its imports (see :func:`_import_graph` for what counts)."""
    circles = _cycles(_import_graph())
    assert not circles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in circles)
