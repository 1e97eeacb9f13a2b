"""Shared notebook execution for the notebook tests (nbclient, quick mode, cwd = notebooks/).

Two guards against a stalled run, each ending in one fresh retry of the notebook:

- an idle-kernel watchdog: while a cell is pending, the kernel process's CPU time is read every few
  seconds; a kernel that stays idle (under 5 % of a core between two reads: an idle kernel's own
  threads still tick) for ``$MEMSEG_NB_IDLE`` seconds (default 120) is stopped. That is
  the hang seen with ipykernel 7 (ipython/ipykernel#1471, hence the ``ipykernel<7`` pin): the kernel
  idle without ever sending its execute reply, both sides waiting. The quick notebooks' cells compute
  (no sleeps, no subprocesses), so two idle minutes mean a stall, found in minutes instead of 15;
- a per-cell timeout, ``$MEMSEG_NB_TIMEOUT`` seconds (default 900: the longest quick cell, a training
  run, takes ~150 s on an idle 2-core machine).

Executed copies are kept for reuse within the test session: each committed notebook that runs without error
is saved (with :func:`memseg.notebook.publish.save_executed`, which marks its source digest) into
:func:`executed_dir`, a temporary folder of this session or ``$MEMSEG_NB_OUT``; the slide and site tests take
them from there and execute only what is missing (:func:`executed`). With ``MEMSEG_NB_OUT=<dir>`` the copies
stay after the session (``make docs`` reuses them with ``--executed <dir>``), a failed run is written there
for review, and a notebook run from elsewhere (e.g. 07 with its solutions) goes to ``<dir>/<its folder>/``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
_SESSION_DIR: Path | None = None


def executed_dir() -> Path:
    """Where executed committed notebooks are saved for reuse: ``$MEMSEG_NB_OUT``, else one temporary folder
    per test session (removed at exit)."""
    global _SESSION_DIR
    if os.environ.get("MEMSEG_NB_OUT"):
        return Path(os.environ["MEMSEG_NB_OUT"])
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="memseg-executed-"))
        atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
    return _SESSION_DIR


def executed(names, env: dict) -> list:
    """``[(name, executed notebook)]`` for committed notebooks: the copies saved in this session, the others
    executed now (so a test that needs them never depends on the order the tests ran in)."""
    from memseg.notebook.publish import load_executed

    out = []
    for name in names:
        nb = load_executed(name, executed_dir())
        if nb is None:
            execute_notebook(name, env)
            nb = load_executed(name, executed_dir())
        assert nb is not None, f"{name} ran but left no executed copy in {executed_dir()}"
        out.append((name, nb))
    return out


def quick_env(base: Path) -> dict:
    """Environment for a quick-mode run with data and model cache under ``base`` (overridable)."""
    env = dict(os.environ)
    env.update(
        {
            "MEMSEG_QUICK": "1",
            "MEMSEG_DATA": os.environ.get("MEMSEG_NB_DATA", str(base / "synthetic")),
            "MEMSEG_RUNS": os.environ.get("MEMSEG_NB_RUNS", str(base / "runs")),
            "MEMSEG_CATEGORY": os.environ.get("MEMSEG_NB_CATEGORY", "washer"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
    )
    return env


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of process ``pid`` from /proc; None where /proc is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (man 5 proc)


BUSY_SHARE = 0.05  # a kernel using more than 5 % of a core between two polls is computing


class IdleKernelWatchdog:
    """Stops the kernel when it uses no CPU for ``idle_s`` seconds while a cell is pending.

    nbclient then sees a dead kernel (``DeadKernelError``) within a second, and the runner retries.
    ``stalled`` says whether it fired (for the message).
    """

    def __init__(self, client, idle_s: float, poll_s: float = 5.0):
        self.client, self.idle_s, self.poll_s = client, idle_s, poll_s
        self.pending: int | None = None  # index of the cell waiting for its reply
        self.stalled: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def on_cell_execute(self, cell, cell_index: int) -> None:  # nbclient hook
        self.pending = cell_index

    def on_cell_executed(self, cell, cell_index: int, execute_reply) -> None:  # nbclient hook
        self.pending = None

    def __enter__(self) -> "IdleKernelWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 1)

    def _kernel_pid(self) -> int | None:
        process = getattr(getattr(getattr(self.client, "km", None), "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    def _watch(self) -> None:
        last_cpu, idle_since, cell = None, time.monotonic(), None
        while not self._stop.wait(self.poll_s):
            pid = self._kernel_pid()
            cpu = _cpu_seconds(pid) if pid else None
            now = time.monotonic()
            # Busy: more than BUSY_SHARE of one core in the last poll. An idle kernel is not at 0: its
            # heartbeat, parent poller and tqdm monitor threads take ~0.1 % of a core, which over two
            # minutes adds up to more than any fixed CPU-seconds allowance.
            busy = cpu is not None and last_cpu is not None and cpu - last_cpu > BUSY_SHARE * self.poll_s
            if cpu is None or self.pending is None or self.pending != cell or last_cpu is None or busy:
                idle_since, cell = now, self.pending
            last_cpu = cpu
            if self.pending is not None and now - idle_since >= self.idle_s:
                self.stalled = f"cell {cell}: the kernel used no CPU for {now - idle_since:.0f} s without replying"
                os.kill(pid, signal.SIGKILL)
                return


def _committed(name: str | Path) -> bool:
    return (NOTEBOOK_DIR / name).resolve().parent == NOTEBOOK_DIR.resolve()


def _save_for_reuse(nb, name: str | Path) -> bool:
    """Save a committed notebook that ran every cell without error into :func:`executed_dir`; True if saved."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    ok = all(c.get("execution_count") is not None for c in code) and not any(
        o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    if not (ok and _committed(name)):
        return False
    from memseg.notebook.publish import save_executed

    save_executed(nb, executed_dir(), Path(name).name)
    return True


def execute_notebook(name: str | Path, env: dict):
    """Run ``notebooks/<name>`` (or the notebook at an absolute path) top to bottom; fail on any error output; return
    the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    for attempt in (1, 2):
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=int(os.environ.get("MEMSEG_NB_TIMEOUT", "900")),
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # cwd = notebooks/, as in JupyterLab
            allow_errors=False,
        )
        idle_s = float(os.environ.get("MEMSEG_NB_IDLE", "120"))
        watchdog = IdleKernelWatchdog(client, idle_s=idle_s, poll_s=min(5.0, idle_s / 4))
        client.on_cell_execute, client.on_cell_executed = watchdog.on_cell_execute, watchdog.on_cell_executed
        try:
            with watchdog:
                client.execute(env=env)
            break
        except (CellTimeoutError, DeadKernelError) as err:
            reason = watchdog.stalled or f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            if attempt == 2:
                raise AssertionError(f"{name}: {reason}, twice") from err
            warnings.warn(f"{name}: {reason} on the first attempt; running the notebook again in a fresh kernel",
                          stacklevel=2)
        finally:
            out = os.environ.get("MEMSEG_NB_OUT")
            saved = _save_for_reuse(nb, name)
            if not saved and _committed(name):
                (executed_dir() / Path(name).name).unlink(missing_ok=True)  # never reuse an older run of it
            if out and not saved:  # for review
                folder = Path(out) if _committed(name) else Path(out) / Path(name).parent.name
                folder.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, folder / Path(name).name)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    # the final check cell ran (and printed or passed silently) without error
    assert nb.cells[-1].cell_type == "code" and nb.cells[-1].get("execution_count") is not None
    return nb
