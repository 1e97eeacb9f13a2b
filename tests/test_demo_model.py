"""The cached demo model `make demo` trains on a fresh clone is right in front of a room.

This runs the real first-run path (`memseg.apps.demo.prepare` with the shipped `configs/demo.yaml`: the
synthetic dataset is generated, the quick model trained) and scores the model on its own category's
test split at the threshold stored in the checkpoint, the one the dashboard uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memseg.apps import demo
from memseg.engine.evaluation import evaluate

MIN_ACCURACY = 0.90  # at the stored threshold (picked on the validation split, never on the test split)
MIN_PIXEL_AUROC = 0.95


@pytest.mark.slow
def test_the_default_demo_model_classifies_and_localises_its_test_split(tmp_path: Path, dtd_root: Path) -> None:
    settings = demo.load_settings(data=tmp_path / "synthetic", runs=tmp_path / "runs", dtd=dtd_root)
    assert settings.checkpoint is None, "configs/demo.yaml must not name a checkpoint: the demo trains its own"
    t0 = time.perf_counter()
    ckpt = demo.prepare(settings, progress=False, log=lambda _msg: None)
    first_run_s = time.perf_counter() - t0
    result = evaluate(ckpt, settings.data, settings.category, device=settings.device, progress=False)
    decision, overall = result["decision"], result["overall"]
    print(f"\ndemo model ({settings.category}, {settings.steps} steps, {settings.size}px): accuracy "
          f"{decision['accuracy']:.3f} at threshold {decision['threshold']:.4f} (tp {decision['tp']} fp "
          f"{decision['fp']} fn {decision['fn']} tn {decision['tn']}), image AUROC {overall['image_auroc']:.3f}, pixel "
          f"AUROC {overall['pixel_auroc']:.3f}; first run {first_run_s:.0f} s")
    assert decision["accuracy"] >= MIN_ACCURACY, decision
    assert overall["pixel_auroc"] >= MIN_PIXEL_AUROC, overall
