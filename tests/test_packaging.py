"""Packaging files agree with each other: pyproject.toml <-> environment.yml, Dockerfile, Makefile, CI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEMO_NOTEBOOK = "notebooks/[demo] model inference.ipynb"

# conda package name -> pip distribution name, where they differ
CONDA_TO_PIP = {"pytorch": "torch"}
NOT_DEPENDENCIES = {"python", "pip"}


def norm(name: str) -> str:
    """PEP 503 normalisation (case, '-', '_', '.'), then conda -> pip names."""
    name = re.sub(r"[-_.]+", "-", name).lower()
    return CONDA_TO_PIP.get(name, name)


def lower_bound(specifier) -> str | None:
    bounds = [s.version for s in specifier if s.operator == ">="]
    assert len(bounds) <= 1, f"several lower bounds in {specifier}"
    return bounds[0] if bounds else None


# ---------------------------------------------------------------------------------------- parsers
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, str | None]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in ("notebooks", "deploy", "dev"):
        reqs += project["optional-dependencies"][extra]
    out: dict[str, str | None] = {}
    for line in reqs:
        r = Requirement(line)
        out[norm(r.name)] = lower_bound(r.specifier)
    return out


# name, an optional lower bound and an optional upper bound (e.g. ipykernel>=6.25,<7)
_CONDA_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?"
                         r"\s*(?:,\s*<\s*[0-9][0-9A-Za-z.]*)?\s*$")


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_requirements() -> tuple[dict[str, str | None], list[str], str | None]:
    """({name: lower bound} of conda + pip entries, raw pip entries, python lower bound)."""
    out: dict[str, str | None] = {}
    pip_entries: list[str] = []
    python_bound = None
    for dep in environment()["dependencies"]:
        if isinstance(dep, dict):
            pip_entries += dep.get("pip", [])
            continue
        m = _CONDA_SPEC.match(str(dep))
        assert m, f"environment.yml: cannot parse {dep!r}; expected 'name', 'name>=version' or 'name>=version,<version'"
        name, bound = m.group(1), m.group(2)
        if name == "python":
            python_bound = bound
        if name in NOT_DEPENDENCIES:
            continue
        assert norm(name) not in out, f"environment.yml lists {name} twice"
        out[norm(name)] = bound
    for entry in pip_entries:
        if entry.startswith("-"):  # options such as "-e ." (the package itself)
            continue
        r = Requirement(entry)
        assert norm(r.name) not in out, f"environment.yml lists {r.name} twice"
        out[norm(r.name)] = lower_bound(r.specifier)
    return out, pip_entries, python_bound


def dockerfile_instructions() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with comments dropped and line continuations joined."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        if line.strip().startswith("#"):  # comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    out = []
    for instr in logical:
        keyword, _, args = instr.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def exec_or_shell_words(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments in exec (JSON) or shell form -> words."""
    args = args.strip()
    if args.startswith("["):
        import json

        return json.loads(args)
    return shlex.split(args)


def pip_install_commands(run_args: str) -> list[str]:
    """The `pip install ...` commands inside one RUN (split on ;, &&, ||)."""
    parts = re.split(r";|&&|\|\|", run_args)
    return [p.strip() for p in parts if re.search(r"\bpip3?\s+install\b", p)]


# ------------------------------------------------------------------------ pyproject <-> conda env
def test_environment_yml_matches_pyproject_names_and_lower_bounds():
    expected = pyproject_requirements()
    got, _, _ = environment_requirements()
    assert sorted(got) == sorted(expected), (
        f"only in pyproject: {sorted(set(expected) - set(got))}; only in environment.yml: "
        f"{sorted(set(got) - set(expected))}"
    )
    mismatched = {n: (expected[n], got[n]) for n in expected if expected[n] != got[n]}
    assert not mismatched, f"lower bounds differ (pyproject, environment.yml): {mismatched}"


def test_environment_yml_python_and_package_install():
    _, pip_entries, python_bound = environment_requirements()
    requires_python = pyproject()["project"]["requires-python"]
    assert python_bound == requires_python.removeprefix(">=").strip(), (python_bound, requires_python)
    assert "-e ." in pip_entries, "environment.yml should install the package itself (pip: -e .)"
    assert environment()["channels"][0] == "conda-forge"


def test_name_normalisation():
    assert norm("PyYAML") == "pyyaml" and norm("scikit_learn") == norm("scikit-learn")
    assert norm("pytorch") == "torch" and norm("pytest_timeout") == "pytest-timeout"


# -------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_base_image_is_ngc_pytorch():
    froms = [args for kw, args in dockerfile_instructions() if kw == "FROM"]
    assert len(froms) == 1, froms
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", froms[0].split()[0]), froms[0]


def test_dockerfile_installs_package_with_notebooks_extra_without_reinstalling_torch():
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    installs = [cmd for run in runs for cmd in pip_install_commands(run)]
    assert installs, "the Dockerfile never runs pip install"
    package_installs = []
    for cmd in installs:
        words = shlex.split(cmd)
        words = words[words.index("install") + 1 :]
        targets = [w for w in words if not w.startswith("-")]
        # no explicit torch / torchvision, no forced reinstall or eager upgrade of dependencies
        for w in targets:
            if w.startswith(".") or "/" in w:
                continue
            assert norm(Requirement(w).name) not in {"torch", "torchvision"}, f"Dockerfile reinstalls torch: {cmd}"
        assert "--force-reinstall" not in words and "eager" not in words, cmd
        for w in words:  # `.`, `.[extras]`, also after -e / --editable
            if re.fullmatch(r"\.(\[[^\]]*\])?", w):
                package_installs.append((cmd, w, words))
    assert package_installs, f"no `pip install .[notebooks]` / `-e .[notebooks]` among {installs}"
    for cmd, target, words in package_installs:
        extras = re.fullmatch(r"\.(?:\[([^\]]*)\])?", target).group(1) or ""
        assert "notebooks" in [e.strip() for e in extras.split(",")], f"the notebooks extra is not installed: {cmd}"
        # dependencies may not replace the container's torch: constrained or not resolved at all
        assert {"--constraint", "-c", "--no-deps"} & set(words) or any(w.startswith("--constraint=") for w in words), (
            f"pip install of the package neither pins the container's torch (-c/--constraint) nor uses --no-deps: {cmd}"
        )


def test_dockerfile_constraint_file_pins_installed_torch():
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    for run in runs:
        for cmd in pip_install_commands(run):
            words = shlex.split(cmd)
            paths = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-c", "--constraint")]
            paths += [w.split("=", 1)[1] for w in words if w.startswith("--constraint=")]
            for path in paths:
                # the constraints file is written from the installed torch earlier in the same RUN
                before = run[: run.index(cmd)]
                m = list(re.finditer(r">\s*" + re.escape(path), before))
                assert m, f"constraints file {path} is not written before `{cmd}`"
                writer = before[: m[-1].start()].rsplit("python -c", 1)[-1]
                pins_installed = any(s in writer for s in ("torch.__version__", "version('torch')", 'version("torch")'))
                assert pins_installed or "pip freeze" in before, f"{path} does not pin the installed torch"
                return
    pytest.skip("the Dockerfile installs with --no-deps instead of a constraints file")


def test_dockerfile_exposes_voila_port():
    ports = [p for kw, args in dockerfile_instructions() if kw == "EXPOSE" for p in args.split()]
    assert "8866" in [p.split("/")[0] for p in ports], ports


def test_dockerfile_default_command_serves_demo_notebook_with_voila():
    instructions = dockerfile_instructions()
    workdir = [args for kw, args in instructions if kw == "WORKDIR"]
    command = [w for kw, args in instructions if kw in ("ENTRYPOINT", "CMD") for w in exec_or_shell_words(args)]
    assert command, "no CMD / ENTRYPOINT"
    text = " ".join(command)
    if "voila" not in text:  # a script from the repository: read it
        scripts = []
        for word in command:
            rel = word
            if workdir and word.startswith(workdir[-1].rstrip("/") + "/"):
                rel = word[len(workdir[-1].rstrip("/")) + 1 :]
            if (ROOT / rel).is_file():
                scripts.append(ROOT / rel)
        assert scripts, f"CMD/ENTRYPOINT {command} neither runs voila nor a script of this repository"
        text = "\n".join(s.read_text() for s in scripts)
        for s in scripts:
            assert s.stat().st_mode & 0o111 or s.read_text().startswith("#!"), f"{s} is not executable"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"\bvoila\b", code), code
    assert DEMO_NOTEBOOK in code, f"voila does not serve {DEMO_NOTEBOOK!r}"
    assert (ROOT / DEMO_NOTEBOOK).is_file(), f"{DEMO_NOTEBOOK} is missing from the repository"
    # all interfaces inside a container: literally, or through the entrypoint's host setting defaulting to them
    listens_everywhere = "--Voila.ip=0.0.0.0" in code or (
        '--Voila.ip="$host"' in code and 'host="${MEMSEG_HOST:-0.0.0.0}"' in code)
    assert listens_everywhere, "Voila must listen on all interfaces inside a container"
    assert "memseg.apps.demo prepare" in code, "the demo is not prepared (data + model) before serving"


def test_dockerignore_excludes_local_state():
    lines = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", "data", "runs", ".git"):
        assert entry in lines, f".dockerignore does not exclude {entry}"
    assert "!weights/*.pt" in lines, "the container must keep the kit's offline encoder (weights/)"


# -------------------------------------------------------------------------------------- Makefile, CI
def test_makefile_has_the_documented_targets():
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))
    missing = {"setup", "demo", "lab", "test", "bench"} - targets
    assert not missing, f"Makefile lacks targets {sorted(missing)}"
    bench_recipe = re.search(r"^bench\s*:.*\n((?:\t.*\n?)+)", text, flags=re.M)
    assert bench_recipe and "benchmarks/run.py" in bench_recipe.group(1)


def test_make_test_names_each_test_and_reports_durations():
    """A stalled test must be visible in CI's log: names as they start, slowest ones at the end."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test\s*:.*\n((?:\t.*\n?)+)", text, flags=re.M)
    assert recipe, "Makefile has no test recipe"
    pytest_line = next(line for line in recipe.group(1).splitlines() if "pytest" in line)
    assert re.search(r"\s-v\b|--verbose", pytest_line), pytest_line
    assert "--durations=" in pytest_line, pytest_line


def test_ci_entry_runs_make_test():
    run = ROOT / ".ci" / "run"
    code = [line.split("#")[0].strip() for line in run.read_text().splitlines()]
    assert any(re.fullmatch(r"(exec\s+)?make\s+test(\s.*)?", line) for line in code), code
