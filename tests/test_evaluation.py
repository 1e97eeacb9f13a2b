"""Evaluation: image scores, metrics on a fake model with known maps, metrics files."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_dataset
from torch import nn

from memseg.engine.checkpoint_record import CheckpointRecord
from memseg.engine.evaluation import decision_metrics, evaluate
from memseg.engine.scoring import collect_predictions, image_scores
from memseg.utils import denormalize


@dataclass
class _Cfg:
    input_size: tuple = (40, 48)


class BrightnessModel(nn.Module):
    """Fake model: the anomaly map is the pixel brightness (the tiny dataset's defects are white squares)."""

    name = "fake"

    def __init__(self, shift: tuple[int, int] = (0, 0)):
        super().__init__()
        self.config = _Cfg()
        self.shift = shift

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        amap = denormalize(x).mean(dim=1, keepdim=True)  # (B, 1, H, W) in [0, 1]
        return torch.roll(amap, shifts=self.shift, dims=(2, 3))


class ConstantModel(BrightnessModel):
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 0.5)


def test_image_scores_top_k():
    amap = torch.zeros(2, 1, 20, 20)
    amap[0, 0, :5] = 1.0  # 100 pixels at 1
    s100, s200 = image_scores(amap, 100), image_scores(amap, 200)
    assert s100[0] == pytest.approx(1.0) and s200[0] == pytest.approx(0.5)
    assert s100[1] == 0.0
    assert image_scores(amap, 10_000)[0] == pytest.approx(100 / 400)  # k capped at H*W


def test_perfect_fake_model_gives_perfect_metrics(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", n_good=4, n_defect=3)
    result = evaluate(BrightnessModel(), root, "tiny", out=tmp_path / "eval", progress=False, device="cpu")
    o = result["overall"]
    assert o["image_auroc"] == pytest.approx(1.0)
    assert o["pixel_auroc"] == pytest.approx(1.0)
    assert o["aupro"] == pytest.approx(1.0)
    assert o["f1_max"] == pytest.approx(1.0)
    assert (o["n_images"], o["n_anomalous"], o["n_normal"]) == (7, 3, 4)
    assert set(result["per_defect"]) == {"spot"}
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["overall"]["pixel_auroc"] == pytest.approx(1.0)
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| category | image AUROC | pixel AUROC | AUPRO@0.3 |" in md and "| tiny | 100.0 | 100.0 | 100.0 |" in md


def test_constant_model_is_chance(tmp_path):
    root = make_tiny_dataset(tmp_path / "data")
    o = evaluate(ConstantModel(), root, "tiny", progress=False, device="cpu")["overall"]
    assert o["image_auroc"] == pytest.approx(0.5)
    assert o["pixel_auroc"] == pytest.approx(0.5)


def _mann_whitney_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Independent AUROC: P(pos > neg) + 0.5 P(pos == neg), via average ranks."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def test_misaligned_maps_match_hand_computed_auroc(tmp_path):
    """Maps rolled away from the masks: pixel AUROC falls below chance and equals the rank statistic."""
    from memseg.data import load_split

    root = make_tiny_dataset(tmp_path / "data", n_good=2, n_defect=2)
    model = BrightnessModel(shift=(20, 24))  # squares (side 12) land away from their masks
    preds = collect_predictions(model, load_split(root, "tiny", "test", size=(40, 48)), batch_size=3, device="cpu",
                                progress=False)
    assert not ((preds.maps > 0.9) & preds.masks).any()
    expected = _mann_whitney_auroc(preds.maps[preds.masks].astype(np.float64),
                                   preds.maps[~preds.masks].astype(np.float64))
    result = evaluate(model, root, "tiny", progress=False, device="cpu")
    assert result["overall"]["pixel_auroc"] == pytest.approx(expected, abs=1e-9)
    assert result["overall"]["pixel_auroc"] < 0.5


def test_collect_predictions_order_and_shapes(tmp_path):
    from memseg.data import load_split

    root = make_tiny_dataset(tmp_path / "data", n_good=2, n_defect=3)
    ds = load_split(root, "tiny", "test", size=(40, 48))
    preds = collect_predictions(BrightnessModel(), ds, batch_size=2, device="cpu", progress=False)
    assert preds.maps.shape == (5, 40, 48) and preds.maps.dtype == np.float32
    assert preds.masks.shape == (5, 40, 48) and preds.masks.dtype == bool
    assert list(preds.labels) == ds.labels and preds.defects == ds.defects and preds.paths == ds.paths
    # the anomalous images' scores (white squares of 144 px > top-100) are exactly 1
    assert np.allclose(preds.scores[preds.labels == 1], 1.0)
    assert (preds.scores[preds.labels == 0] < 0.35).all()


def test_decision_metrics_at_fixed_threshold():
    d = decision_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.2]), 0.5)
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (1, 1, 1, 1)
    assert d["accuracy"] == 0.5 and d["precision"] == 0.5 and d["recall"] == 0.5


def test_threshold_reported_and_existing_output_not_overwritten(tmp_path):
    root = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    r = evaluate(BrightnessModel(), root, "tiny", out=out, threshold=0.9, progress=False, device="cpu")
    assert r["decision"]["threshold"] == 0.9 and r["decision"]["accuracy"] == 1.0
    before = (out / "metrics.json").read_text()
    with pytest.raises(ValueError, match="metrics.json already exists"):
        evaluate(ConstantModel(), root, "tiny", out=out, progress=False, device="cpu")
    assert (out / "metrics.json").read_text() == before


def test_unknown_category_is_a_clear_error(tmp_path):
    root = make_tiny_dataset(tmp_path / "data")
    with pytest.raises((FileNotFoundError, ValueError), match="nope"):
        evaluate(BrightnessModel(), root, "nope", progress=False, device="cpu")


def test_f1_max_is_reported_beside_the_all_anomalous_baseline(tmp_path):
    """3 of 7 test images anomalous: calling all anomalous scores F1 = 2p/(1+p) = 0.6; a constant map sits on it."""
    root = make_tiny_dataset(tmp_path / "data", n_good=4, n_defect=3)
    result = evaluate(BrightnessModel(), root, "tiny", out=tmp_path / "eval", progress=False, device="cpu")
    o = result["overall"]
    assert o["f1_all_anomalous"] == pytest.approx(0.6) and o["f1_max"] == pytest.approx(1.0)
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert ("| image F1-max | F1 calling all anomalous |" in md
            and "| tiny | 100.0 | 100.0 | 100.0 | 100.0 | 60.0 |" in md)
    assert "2p/(1+p) with p = 3/7 anomalous test images: 60.0 here" in md
    assert "| spot | 3 | 100.0 | 100.0 | 100.0 | 100.0 | 60.0 |" in md  # per defect too
    chance = evaluate(ConstantModel(), root, "tiny", progress=False, device="cpu")["overall"]
    assert chance["f1_max"] == pytest.approx(chance["f1_all_anomalous"])  # no ranking: F1-max is the baseline


def test_cli_evaluate_prints_the_baseline_beside_f1_max(tmp_path, monkeypatch, capsys):
    import argparse

    import memseg.engine.evaluation as ev
    from memseg.apps.commands import run_evaluate

    root = make_tiny_dataset(tmp_path / "data", n_good=4, n_defect=3)
    record = CheckpointRecord(model_name="fake", input_size=(64, 64), step=5)
    monkeypatch.setattr(ev, "_resolve_model", lambda ckpt, device, backend="auto": (BrightnessModel(), record))
    args = argparse.Namespace(checkpoint=str(tmp_path / "run" / "checkpoints" / "last.pt"), data=str(root),
                              category="tiny",
                              layout="auto", out=str(tmp_path / "eval"), batch_size=4, device="cpu")
    assert run_evaluate(args) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert ("image F1-max 100.0 (calling every image anomalous: 60.0)" in line
            and "(7 images, 3 anomalous, step 5)" in line)


def test_output_folder_and_batch_size_are_checked_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    # the data root does not exist: the out error coming first shows no work was done
    with pytest.raises(NotADirectoryError, match=rf"{taken} is a file; out must be a folder \(new or existing\)"):
        evaluate(BrightnessModel(), tmp_path / "no_data", "tiny", out=taken, progress=False, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(BrightnessModel(), tmp_path / "no_data", "tiny", batch_size=0, progress=False, device="cpu")
