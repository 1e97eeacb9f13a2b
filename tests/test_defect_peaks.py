"""benchmarks/defect_peaks.py: where a run's maps peak, and what the memory does at inference."""
import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def peaks(load_benchmark):
    return load_benchmark("defect_peaks")


def test_peak_statistics_tell_a_defect_peak_from_a_peak_elsewhere(peaks):
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 0.2, size=(6, 8, 8))
    masks = np.zeros((6, 8, 8), bool)
    masks[3:, 2:4, 2:4] = True
    labels = np.array([0, 0, 0, 1, 1, 1])
    maps[3:, 2, 2] = 0.9  # every defect lights up: its peak is the highest value of all
    assert peaks.peak_statistics(maps, masks, labels) == {"peak_in_defect": 1.0, "defect_share": 1.0,
                                                          "defect_area": [4 / 64] * 3}
    maps[:, 7, 7] = 0.95  # now every image peaks far from its defect, normal ones too
    stats = peaks.peak_statistics(maps, masks, labels)
    assert stats["defect_share"] == 0.0
    assert stats["peak_in_defect"] == 0.0


def test_memory_effect_is_none_without_memory_and_measures_di_star(peaks, tiny_model):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert peaks.memory_effect(tiny_model(use_memory=False), images) is None
    effect = peaks.memory_effect(tiny_model(), images)
    assert 0.0 < effect <= 1.0


def test_page_from_a_run_folder(peaks, tiny_model, tiny_dataset, tmp_path):
    from memseg.engine.checkpoint import save_checkpoint

    data = tiny_dataset(size=(64, 64))
    runs = tmp_path / "runs"
    save_checkpoint(runs / "v" / "seed0" / "final.pt", tiny_model(), config={"category": "tiny", "top_k": 10})
    assert peaks.main(["--data", str(data), "--category", "tiny", "--runs", str(runs), "--out",
                       str(tmp_path / "page"), "--top-k", "10"]) == 0
    rows = json.loads((tmp_path / "page" / "results.json").read_text())["v, 64×64"]
    assert len(rows) == 1 and set(rows[0]["per_defect"]) == {"spot"}
    assert all(0.0 <= rows[0][k] <= 1.0 for k in ("image", "peak_in_defect", "defect_share"))
    assert "| v, 64×64 | 1 |" in (tmp_path / "page" / "README.md").read_text()
    with pytest.raises(SystemExit):
        peaks.main(["--data", str(data), "--category", "tiny", "--runs", str(tmp_path / "nothing"), "--out",
                    str(tmp_path / "p2")])
