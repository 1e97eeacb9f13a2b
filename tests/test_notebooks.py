"""The teaching notebooks (notebooks/01-05): committed clean, and they run top to bottom in quick mode.

`test_notebook_runs` executes each notebook with nbclient in a kernel of this interpreter, with
``MEMSEG_QUICK=1`` and the data / model cache in a temporary folder (``MEMSEG_DATA``, ``MEMSEG_RUNS``),
so the synthetic dataset is generated on the fly and notebooks 02-05 share one small trained model.
Every notebook ends with a cell that asserts something real (non-empty simulated masks, a stage
table that covers the network, pixel AUROC above chance, one t-SNE point per image, M1's shape);
any failing cell fails the test. A kernel idle for ``$MEMSEG_NB_IDLE`` s (120) with a cell pending, or a cell over
``$MEMSEG_NB_TIMEOUT`` s (900), gets the notebook one retry in a fresh kernel (see notebook_runner).

Options: ``MEMSEG_NB_DATA`` / ``MEMSEG_NB_RUNS`` keep the data / model cache in a persistent folder
(default: a fresh temporary one), ``MEMSEG_NB_CATEGORY`` (default washer), ``MEMSEG_STEPS`` (training
steps of the shared model). Review aids: ``MEMSEG_FIGDIR=<dir>`` saves every teaching figure as PNG,
and ``MEMSEG_NB_OUT=<dir>`` writes the executed notebooks there. Each notebook that runs is also kept for
the slide and site tests of the same session (tests/test_slides_site.py), which so execute nothing again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from notebook_runner import execute_notebook, quick_env

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
TEACHING = [
    "01_anomaly_simulation.ipynb",
    "02_model_overview.ipynb",
    "03_training.ipynb",
    "04_tsne_simulated_vs_real.ipynb",
    "05_spatial_attention.ipynb",
]
PARAMETERS = ("DATA_ROOT", "CATEGORY", "DEVICE", "QUICK")


def _load(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / name).read_text())


# ------------------------------------------------------------------------------ committed form


def test_every_teaching_notebook_is_committed():
    missing = [n for n in TEACHING if not (NOTEBOOK_DIR / n).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_has_no_outputs(path: Path):
    """CI check: notebooks are committed without outputs and execution counts (strip them after running)."""
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("name", TEACHING)
def test_parameters_cell(name: str):
    """The first code cell is tagged `parameters` and sets the four parameters; env vars are honoured via setup()."""
    nb = _load(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), \
        f"{name}: first code cell is not tagged 'parameters'"
    src = "".join(first["source"])
    for p in PARAMETERS:
        assert f"{p} = " in src, f"{name}: parameters cell does not set {p}"
    body = "\n".join("".join(c["source"]) for c in code)
    assert "from memseg.notebook.settings import setup" in body and "= setup(" in body, \
        f"{name}: never calls memseg.notebook.settings.setup (which applies MEMSEG_* overrides)"
    assert "assert " in "".join(code[-1]["source"]), (f"{name}: the last code cell should assert what the notebook "
                                                      "showed")


@pytest.mark.parametrize("name", TEACHING)
def test_notebook_cells_are_short(name: str):
    """Notebooks hold narrative and calls into memseg, not logic: no function/class definitions, short cells."""
    nb = _load(name)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        assert "\ndef " not in "\n" + src and "\nclass " not in "\n" + src, (f"{name} cell {i} defines logic; move it "
                                                                             "to memseg.notebook")
        assert src.count("\n") < 25, f"{name} cell {i} has {src.count(chr(10)) + 1} lines"


# ------------------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory) -> dict:
    return quick_env(tmp_path_factory.mktemp("notebooks"))


@pytest.mark.notebook
@pytest.mark.parametrize("name", TEACHING)
def test_notebook_runs(name: str, notebook_env: dict):
    t0 = time.perf_counter()
    execute_notebook(name, notebook_env)
    print(f"{name}: executed in {time.perf_counter() - t0:.1f} s")


def _tiny_notebook(path: Path, *sources: str) -> Path:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    nbformat.write(nb, path)
    return path


def test_runner_stops_an_idle_kernel_quickly_and_retries_once(tmp_path, monkeypatch):
    """A cell pending on a kernel that uses no CPU (the ipykernel 7 stall, here a sleep) ends in seconds, not 15 min."""
    monkeypatch.setenv("MEMSEG_NB_IDLE", "4")
    monkeypatch.setenv("MEMSEG_NB_TIMEOUT", "600")
    nb = _tiny_notebook(tmp_path / "stall.ipynb", "x = sum(range(1000))", "import time\ntime.sleep(600)", "x")
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match=r"cell 1: the kernel used no CPU for \d+ s without replying on the first "
                                         r"attempt"):
        with pytest.raises(AssertionError, match="used no CPU .* twice"):
            execute_notebook(nb, env=quick_env(tmp_path))
    assert time.monotonic() - t0 < 120


@pytest.mark.parametrize("core_share, stopped", [(0.0, True), (0.002, True), (0.9, False)])
def test_watchdog_judges_the_cpu_rate_not_a_total(monkeypatch, core_share, stopped):
    """An idle kernel's own threads tick (measured in CI: 0.01 s of CPU per 5 s poll, 0.2 % of a core): that
    is still idle, however long it lasts; a computing kernel (most of a core) is left alone. A fixed 0.05 s
    allowance since the last reset was used up every 25 s, so a real stall ran into the 15-minute cell timeout.
    Real settings (5 s polls, 120 s), on a fake clock."""
    import threading

    import notebook_runner as runner

    clock = {"now": 0.0, "cpu": 0.0}

    def monotonic():
        clock["now"] += 5.0  # one poll per call
        return clock["now"]

    def cpu_seconds(pid):
        clock["cpu"] += core_share * 5.0
        return clock["cpu"]

    class FastStop(threading.Event):
        def wait(self, timeout=None):
            return super().wait(0.001)

    killed = []
    monkeypatch.setattr(runner, "_cpu_seconds", cpu_seconds)
    monkeypatch.setattr(runner.time, "monotonic", monotonic)
    monkeypatch.setattr(runner.os, "kill", lambda pid, sig: killed.append(pid))
    client = type("Client", (), {})()
    client.km = type("KM", (), {"provisioner": type("P", (), {"process": type("Proc", (), {"pid": 4242})()})()})()
    watchdog = runner.IdleKernelWatchdog(client, idle_s=120.0, poll_s=5.0)
    watchdog._stop = FastStop()
    watchdog.on_cell_execute(None, 3)
    with watchdog:
        deadline = time.perf_counter() + 2.0
        while not killed and time.perf_counter() < deadline:
            time.sleep(0.01)
    assert bool(killed) is stopped
    assert (watchdog.stalled or "").startswith("cell 3: the kernel used no CPU for 12") is stopped


def test_runner_leaves_a_busy_kernel_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMSEG_NB_IDLE", "2")
    busy = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 6:\n    sum(range(10_000))"
    nb = _tiny_notebook(tmp_path / "busy.ipynb", busy, "print('done')")
    out = execute_notebook(nb, env=quick_env(tmp_path))
    assert out.cells[-1].outputs[0]["text"] == "done\n"
