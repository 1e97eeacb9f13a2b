"""Shared pytest fixtures (data room). Other test modules rely on these names; keep them stable.

- ``project_root`` (session): the repository root (the folder holding ``pyproject.toml``).
- ``shared_data`` (session): ``<project root>/../shared/data``, the real data kept beside the
  project; the test is *skipped* with a clear reason when the folder is absent (fresh clones).
- ``tire_root`` (session): ``shared_data / "mvtec3d_tire"``, an MVTec AD root holding category
  ``tire`` (300x400 WxH, non-square); skipped when absent.
- ``dtd_root`` (session): ``shared_data / "dtd"`` (``images/<category>/*.jpg``); skipped when absent.
- ``synthetic_root`` (session): a SMALL procedural dataset generated once per test session into a
  tmp dir with :func:`memseg.data.synthetic.generate`: categories ``weave``, ``washer``, ``toys``,
  ``SYNTHETIC_SIZE`` = 64 px square, ``SYNTHETIC_N_TRAIN`` = 12 train/good images and
  ``SYNTHETIC_N_TEST`` = 3 test images per defect type plus 3 test/good, seed 0, MVTec AD layout
  (``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/NNN_mask.png, dataset.json}``).
  Treat it as read-only (it is shared by the whole session); copy it to ``tmp_path`` to modify.
- ``tiny_dataset`` (function): ``tiny_dataset(**kw)`` -> a fresh root holding
  :func:`tiny_data.make_tiny_dataset`'s fake MVTec AD category (default ``tiny``: 40x48 HxW, 12 train/good,
  3 test/good, 3 test/spot with masks; ``kw`` as that function's) in a new tmp dir per call.
- ``tiny_model`` (session): ``tiny_model(name="memseg", size=64, memory_size=2, seed=0, **options)`` -> a NEW tiny
  model of any registered name (:func:`tiny_data.make_tiny_model`): eval mode, random weights seeded ``seed``, the
  config's CPU options (``quick_options``) narrowed by ``tiny_data.TINY_OPTIONS``, a memory bank filled from
  ``memory_size`` random images. Each call builds a new model (modify it freely).
- ``tiny_batch`` (session): ``tiny_batch(b=2, size=64, seed=0, n_normal=1)`` -> normalised ``(inputs, masks,
  clean)`` as the training loop feeds ``compute_loss``: the first ``n_normal`` images clean, the others with a
  simulated anomaly (a noise rectangle) marked in their (B, 1, H, W) {0, 1} masks.
- ``one_thread`` (module): one torch thread for the module's tests, the previous count restored afterwards.
- ``MEMSEG_CACHE_DIR`` is a temporary folder for the session (the cached ONNX exports of
  ``Predictor``'s default CPU route), removed at exit.
- ``load_benchmark`` (session): ``load_benchmark("run")`` imports ``benchmarks/run.py`` as a module
  (the benchmark scripts are run by path, so the tests load them the same way).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import tiny_data
from cpu_share import ThreadShare

# Tests stay offline and deterministic: weights="auto" (the default) never asks the hub here, so it
# resolves to the kit's shipped offline encoder (weights/) unless ImageNet weights are already in the local cache.
os.environ.setdefault("MEMSEG_OFFLINE", "1")
# Predictor's default CPU route exports each checkpoint's ONNX graph once into a cache: a throw-away one
# per test session (notebook kernels inherit it), never the user's ~/.cache/memseg.
if "MEMSEG_CACHE_DIR" not in os.environ:
    os.environ["MEMSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="memseg-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEMSEG_CACHE_DIR"], ignore_errors=True)

SYNTHETIC_SIZE = 64
SYNTHETIC_N_TRAIN = 12
SYNTHETIC_N_TEST = 3
SYNTHETIC_SEED = 0


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The repository root."""
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data(project_root: Path) -> Path:
    """``<project root>/../shared/data`` or skip (the real data is not part of the repository)."""
    path = project_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} does not exist (it lives beside the project, not in it)")
    return path


@pytest.fixture(scope="session")
def tire_root(shared_data: Path) -> Path:
    """MVTec AD root with the MVTec 3D-AD ``tire`` category (RGB only, 300x400) or skip."""
    path = shared_data / "mvtec3d_tire"
    if not (path / "tire" / "train" / "good").is_dir():
        pytest.skip(f"MVTec 3D-AD tire data not available: {path / 'tire' / 'train' / 'good'} does not exist")
    return path


@pytest.fixture(scope="session")
def dtd_root(shared_data: Path) -> Path:
    """The DTD folder (``images/<category>/*.jpg``) or skip."""
    path = shared_data / "dtd"
    if not (path / "images").is_dir():
        pytest.skip(f"DTD textures not available: {path / 'images'} does not exist")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (64 px, 12 train, 3 test per defect + 3 good, seed 0), built once."""
    from memseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    return generate(root, seed=SYNTHETIC_SEED, size=SYNTHETIC_SIZE, n_train=SYNTHETIC_N_TRAIN,
                    n_test=SYNTHETIC_N_TEST, progress=False)


@pytest.fixture(scope="session")
def load_benchmark(project_root: Path):
    """``load_benchmark(name)`` -> the module ``benchmarks/<name>.py``, loaded from its path."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"memseg_bench_{name}",
                                                      project_root / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_dataset(**kw)`` -> the root of a new :func:`tiny_data.make_tiny_dataset` (one tmp dir per call)."""

    def make(**kw) -> Path:
        return tiny_data.make_tiny_dataset(tmp_path_factory.mktemp("tiny-data") / "data", **kw)

    return make


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(name="memseg", ...)`` -> a new tiny model of any registered name (``tiny_data.make_tiny_model``)."""
    return tiny_data.make_tiny_model


@pytest.fixture(scope="session")
def tiny_batch():
    """``tiny_batch(b=2, size=64, seed=0, n_normal=1)`` -> normalised (inputs, masks, clean) (``tiny_data``)."""
    return tiny_data.tiny_batch


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module of tiny-tensor tests (faster, and immune to a busy
    shared CPU); the previous thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_THREADS = ThreadShare()


def pytest_configure(config) -> None:
    """Torch's own thread count, read before any test or fixture changes it (the most the share gives)."""
    import torch

    _THREADS.most = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads_for_a_shared_machine():
    """As many torch threads as the cores other processes leave free (``tests/cpu_share.py``): on a busy machine an
    oversubscribed training test runs 2x slower, on an idle one nothing changes."""
    _THREADS.apply()
    yield


def pytest_sessionfinish(session, exitstatus) -> None:
    """Background ONNX exports that Predictors started (they outlive their caller on purpose) end with the
    test session: none keeps a core busy after the tests, or in the next test session."""
    import sys

    inference = sys.modules.get("memseg.engine.inference")
    if inference is None:
        return
    for proc in list(inference._BackgroundRoute._running.values()):
        if proc.poll() is None:
            proc.terminate()
