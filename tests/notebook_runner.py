"""Shared notebook execution for the notebook tests (nbclient, quick mode, cwd = notebooks/).

Per-cell timeout: ``$MEMSEG_NB_TIMEOUT`` seconds (default 900: the longest quick cell, a training run,
takes ~150 s on an idle 2-core machine). A cell that times out or a kernel that dies gets the notebook
one fresh retry: a kernel has been seen going idle without ever sending its execute reply (both sides
waiting, no CPU used), which only the timeout ends. ``MEMSEG_NB_OUT=<dir>`` writes the executed
notebook there for review.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


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


def execute_notebook(name: str, env: dict):
    """Run ``notebooks/<name>`` top to bottom; fail on any error output; return the executed notebook."""
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
        try:
            client.execute(env=env)
            break
        except (CellTimeoutError, DeadKernelError) as err:
            if attempt == 2:
                raise
            warnings.warn(f"{name}: {type(err).__name__} on the first attempt ({str(err).splitlines()[0][:200]}); "
                          "running the notebook again in a fresh kernel", stacklevel=2)
        finally:
            out = os.environ.get("MEMSEG_NB_OUT")
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, Path(out) / name)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    # the final check cell ran (and printed or passed silently) without error
    assert nb.cells[-1].cell_type == "code" and nb.cells[-1].get("execution_count") is not None
    return nb
