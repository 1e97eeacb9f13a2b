"""memseg.notebook: the helpers behind the teaching notebooks (settings, data, quick model, views per notebook).

Tiny fake data (MVTec AD layout, 64×64 PNGs in tmp_path) and tiny models; no downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from memseg.notebook import (
    ablations,
    attention,
    data,
    model_views,
    quick,
    simulation_views,
    stages,
    training_views,
    tsne,
)
from memseg.notebook import settings as nb_settings
from memseg.utils import normalize

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:no foreground preset for category:UserWarning")
ENV_VARS = ("MEMSEG_DATA", "MEMSEG_CATEGORY", "MEMSEG_QUICK", "MEMSEG_DEVICE", "MEMSEG_STEPS", "MEMSEG_RUNS",
            "MEMSEG_DTD", "MEMSEG_TIRE", "MEMSEG_WEIGHTS", "MEMSEG_FIGDIR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _disc_image(rng: np.random.Generator, size: int, spot: bool = False) -> np.ndarray:
    """A bright disc on a dark background (+ a dark spot when ``spot``), uint8 (size, size, 3)."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, 2)
    img = np.full((size, size, 3), 25, np.uint8)
    img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (0.35 * size) ** 2] = 200
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    if spot:
        img[size // 2 - 4 : size // 2 + 4, size // 2 + 6 : size // 2 + 14] = 40
    return img


@pytest.fixture
def fake_dataset(tmp_path) -> Path:
    """<tmp>/data/widget in MVTec AD layout: 16 train/good, 3 test/good, 3 test/spot with masks."""
    rng = np.random.default_rng(0)
    cat = tmp_path / "data" / "widget"
    size = 64
    for split, defect, n in (("train", "good", 16), ("test", "good", 3), ("test", "spot", 3)):
        folder = cat / split / defect
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_disc_image(rng, size, spot=defect != "good")).save(folder / f"{i:03d}.png")
            if defect != "good":
                mask = np.zeros((size, size), np.uint8)
                mask[size // 2 - 4 : size // 2 + 4, size // 2 + 6 : size // 2 + 14] = 255
                (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return tmp_path / "data"


def _settings(root: Path, tmp_path: Path, steps: int = 2, size=(64, 64)) -> nb_settings.NotebookSettings:
    return nb_settings.NotebookSettings(
        data_root=root, category="widget", device=torch.device("cpu"), quick=True, repo=ROOT, runs=tmp_path / "runs",
        dtd_root=None, seed=0, size=size, steps=steps,
    )


@pytest.fixture
def tiny_memseg():
    from memseg.models.memseg.model import MemSeg, MemSegConfig

    torch.manual_seed(0)
    model = MemSeg(MemSegConfig(input_size=(64, 64), memory_size=3))
    model.prepare(normalize(torch.rand(3, 3, 64, 64)))
    return model.eval()


# ------------------------------------------------------------------------------ settings


def test_env_flag(monkeypatch):
    monkeypatch.setenv("MEMSEG_QUICK", "off")
    assert nb_settings.env_flag("MEMSEG_QUICK", True) is False
    monkeypatch.setenv("MEMSEG_QUICK", "YES")
    assert nb_settings.env_flag("MEMSEG_QUICK", False) is True
    monkeypatch.setenv("MEMSEG_QUICK", "")
    assert nb_settings.env_flag("MEMSEG_QUICK", True) is True
    monkeypatch.setenv("MEMSEG_QUICK", "maybe")
    with pytest.raises(ValueError, match="MEMSEG_QUICK"):
        nb_settings.env_flag("MEMSEG_QUICK", True)


def test_setup_env_overrides_parameters(fake_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMSEG_DATA", str(fake_dataset))
    monkeypatch.setenv("MEMSEG_CATEGORY", "widget")
    monkeypatch.setenv("MEMSEG_QUICK", "0")
    monkeypatch.setenv("MEMSEG_STEPS", "7")
    monkeypatch.setenv("MEMSEG_RUNS", str(tmp_path / "cache"))
    s = nb_settings.setup("data/does-not-matter", "washer", "auto", True, style=False, verbose=False)
    assert s.data_root == fake_dataset and s.category == "widget"
    assert s.quick is False and s.size == (256, 256) and s.memory_size == 30
    assert s.train_steps == 7 and s.runs == tmp_path / "cache"
    assert s.device.type in ("cpu", "cuda")


def test_setup_without_env_uses_arguments_and_quick_sizes(fake_dataset):
    s = nb_settings.setup(fake_dataset, "widget", "cpu", True, style=False, verbose=False)
    assert (s.data_root, s.category, s.quick, s.size, s.train_steps) == (fake_dataset, "widget", True, (128, 128), 300)
    assert s.runs == ROOT / "runs" / "notebooks"


def test_setup_env_data_false_ignores_data_env(fake_dataset, monkeypatch):
    monkeypatch.setenv("MEMSEG_DATA", "/nonexistent")
    s = nb_settings.setup(fake_dataset, "widget", "cpu", True, env_data=False, style=False, verbose=False)
    assert s.data_root == fake_dataset


def test_setup_relative_paths_are_repo_relative(fake_dataset, monkeypatch):
    rel = os.path.relpath(fake_dataset, ROOT)
    monkeypatch.chdir(fake_dataset)  # notebooks run with cwd = notebooks/, not the repo root
    s = nb_settings.setup(rel, "widget", "cpu", True, style=False, verbose=False)
    assert s.data_root.resolve() == fake_dataset.resolve()


def test_setup_errors_name_what_was_expected(fake_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"unknown category 'bottle'.*widget"):
        nb_settings.setup(fake_dataset, "bottle", "cpu", True, style=False, verbose=False)
    with pytest.raises(FileNotFoundError, match="MVTec AD layout"):
        nb_settings.setup(tmp_path / "missing", "bottle", "cpu", True, style=False, verbose=False)


def test_setup_never_generates_into_a_real_dataset(fake_dataset):
    with pytest.raises(ValueError, match=r"unknown category 'washer'.*widget"):
        nb_settings.setup(fake_dataset, "washer", "cpu", True, style=False, verbose=False)
    assert sorted(p.name for p in fake_dataset.iterdir()) == ["widget"]


def test_setup_takes_the_textures_from_locate_dtd(fake_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMSEG_DTD", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="MEMSEG_DTD"):
        nb_settings.setup(fake_dataset, "widget", "cpu", True, style=False, verbose=False)
    dtd = tmp_path / "dtd"
    (dtd / "images" / "banded").mkdir(parents=True)
    monkeypatch.setenv("MEMSEG_DTD", str(dtd))
    assert nb_settings.setup(fake_dataset, "widget", "cpu", True, style=False, verbose=False).dtd_root == dtd.resolve()


def test_tire_or_falls_back_or_switches(monkeypatch):
    assert nb_settings.tire_or("data/synthetic", "washer", False) == ("data/synthetic", "washer", False)
    root, category, used = nb_settings.tire_or("data/synthetic", "washer", True)
    tire = ROOT.parent / "shared" / "data" / "mvtec3d_tire"
    if (tire / "tire").is_dir():
        assert (root, category, used) == (str(tire), "tire", True)
    else:
        assert (root, category, used) == ("data/synthetic", "washer", False)


# ------------------------------------------------------------------------------ stages and features


def test_stage_table_shapes_and_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)))
    for p in model[0].parameters():
        p.requires_grad_(False)
    stage_list = [stages.Stage("conv + relu", ["0", "1"]), "2"]
    rows = stages.stage_table(model, torch.zeros(2, 3, 8, 8), stage_list)
    assert [r.name for r in rows] == ["conv + relu", "2"]
    assert rows[0].input_shape == "2×3×8×8" and rows[0].output_shape == "2×4×8×8"
    assert rows[1].output_shape == "2×2×8×8" and rows[1].calls == 1
    assert rows[0].frozen == 3 * 4 * 9 + 4 and rows[0].trainable == 0
    assert rows[1].trainable == 4 * 2 + 2 + 2 + 2
    with pytest.raises(KeyError, match="nope"):
        stages.stage_table(model, torch.zeros(1, 3, 8, 8), ["nope"])


def test_stage_that_never_runs_is_reported():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    rows = stages.stage_table(Skip(), torch.zeros(1, 3), ["used", "unused"])
    assert [r.calls for r in rows] == [1, 0] and rows[1].output_shape == ""


def test_count_flops_linear_is_exact():
    flops = stages.count_flops(nn.Sequential(nn.Linear(10, 5)), torch.zeros(4, 10))
    assert flops.total == 2 * 4 * 10 * 5
    assert flops.by_module["0"] == flops.total and flops.by_module[""] == flops.total


def test_memseg_stage_table_covers_the_network(tiny_memseg):
    x = normalize(torch.rand(1, 3, 64, 64))
    rows = stages.memseg_stage_table(tiny_memseg, x)
    total = stages.count_parameters(tiny_memseg)
    assert all(r.calls > 0 and r.output_shape for r in rows), [r.name for r in rows if not r.calls]
    assert sum(r.trainable + r.frozen for r in rows) == total["total"]
    names = [r.name for r in rows]
    assert names[0].startswith("stem") and names[-1].startswith("decoder H")
    mem = rows[names.index(next(n for n in names if n.startswith("memory")))]
    assert mem.output_shape.startswith("DI*: 1×64×16×16, 1×128×8×8, 1×256×4×4")
    assert mem.buffers >= 3 * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4)  # the memory bank lives in the model
    att = rows[names.index(next(n for n in names if n.startswith("spatial")))]
    assert att.output_shape == "1×1×16×16, 1×1×8×8, 1×1×4×4"
    # frozen = stem + blocks 1-3 only (PITFALLS); block 4 trains
    assert all(r.trainable == 0 for r in rows[:4]) and rows[4].frozen == 0 and rows[4].trainable > 0
    flops = stages.count_flops(tiny_memseg, x)
    assert sum(stages.stage_flops(flops, r) for r in rows) == flops.total > 0


def test_bottleneck_features_and_tsne(tiny_memseg):
    x = normalize(torch.rand(6, 3, 64, 64))
    feats = tsne.bottleneck_features(tiny_memseg, x, batch_size=4, progress=False)
    assert feats.shape == (6, 512) and np.isfinite(feats).all()
    feats2 = tsne.bottleneck_features(tiny_memseg, x, batch_size=6, pool="meanmax", progress=False)
    assert feats2.shape == (6, 1024) and np.allclose(feats2[:, :512], feats, atol=1e-5)
    emb = tsne.tsne_embed(feats, seed=1)
    assert emb.shape == (6, 2) and np.isfinite(emb).all()
    assert np.allclose(emb, tsne.tsne_embed(feats, seed=1))
    with pytest.raises(ValueError, match="at least 4"):
        tsne.tsne_embed(feats[:3])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tsne.bottleneck_features(tiny_memseg, x[:, :1], progress=False)


def test_neighbour_mix_separated_and_mixed():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, (10, 2)), rng.normal(10, 0.1, (10, 2))
    names, share = tsne.neighbour_mix(np.vstack([a, b]), ["a"] * 10 + ["b"] * 10, k=3)
    assert names == ["a", "b"] and np.allclose(share, np.eye(2))
    # interleaved on a line: every point's 2 nearest neighbours belong to the other group
    x = np.arange(12, dtype=float)[:, None] * np.array([[1.0, 0.0]])
    _, share = tsne.neighbour_mix(x, ["a", "b"] * 6, k=2)
    assert np.allclose(share.sum(1), 1) and share[0, 1] > 0.9


# ------------------------------------------------------------------------------ 01 simulation helpers


@pytest.fixture
def simulator():
    from memseg.simulation.foreground import ForegroundConfig
    from memseg.simulation.simulator import AnomalySimulator, SimulationConfig

    cfg = SimulationConfig(texture_prob=0.0, foreground=ForegroundConfig(threshold="otsu"))
    return AnomalySimulator(cfg, dtd_root=None, size=(64, 64))


def _disc_batch(n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(1)
    return torch.stack([torch.from_numpy(_disc_image(rng, 64)).permute(2, 0, 1).float() / 255 for _ in range(n)])


def test_simulation_panel_render_follows_the_knobs(simulator):
    panel = simulation_views.SimulationPanel(simulator, _disc_batch(), foreground_preset=simulator.foreground)
    assert panel.controls["source"].options == ("structure",)  # no DTD: structure only
    areas = []
    for t in (0.1, 0.3, 0.5):
        fig, res = panel.render(threshold=t, delta=0.6, scale_exp=2, use_foreground=False, source="structure", seed=3)
        areas.append(float(res.intermediates["M_P"].mean()))
        assert len(fig.axes) == 8 and torch.all(res.intermediates["M_I"] == 1)
        assert float(res.delta[0]) == pytest.approx(0.6)
    assert areas[0] > areas[1] > areas[2] > 0  # higher T -> smaller blobs (same seed, same noise)
    _, res = panel.render(threshold=0.3, use_foreground=True, otsu=True, seed=3, scale_exp=2)
    m_i = res.intermediates["M_I"]
    assert 0.2 < float(m_i.mean()) < 0.6  # the disc, not the background
    assert torch.all(res.masks <= m_i)  # M = M_P ⊙ M_I
    panel.controls["threshold"].value = 0.6  # a slider change redraws without error
    assert panel.last is not None and float(panel.last.intermediates["threshold"]) == pytest.approx(0.6)


def test_simulation_gallery_masks_and_layout(simulator):
    images = _disc_batch(3)
    fig, res = simulation_views.simulation_gallery(simulator, images, n=5, seed=0, cols=2)
    assert res.images.shape == (5, 3, 64, 64) and res.masks.flatten(1).sum(1).min() > 0
    outside = 1 - res.masks
    src = images[torch.arange(5) % 3]
    assert torch.allclose(res.images * outside, src * outside, atol=1e-5)
    assert len(fig.axes) == 3 * 4  # 3 rows × (image, mask) × 2 columns


def test_figures_are_saved_for_review(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMSEG_FIGDIR", str(tmp_path / "figs"))
    simulation_views.show_perlin_scales(size=(32, 32), exps=(1, 2))
    saved = list((tmp_path / "figs").glob("perlin_scales-*.png"))
    assert saved and Image.open(saved[0]).size[0] > 500


# ------------------------------------------------------------------------------ 02/05 model helpers


def test_attention_maps_shapes_and_chain(tiny_memseg):
    maps = attention.attention_maps(tiny_memseg, torch.rand(3, 64, 64))
    assert maps["M1"].shape == (16, 16) and maps["M2"].shape == (8, 8) and maps["M3"].shape == (4, 4)
    assert maps["DI1"].shape == (16, 16) and maps["prediction"].shape == (64, 64)
    assert 0 <= maps["prediction"].min() and maps["prediction"].max() <= 1
    s3 = tiny_memseg.memory.scales[2][0, 0].numpy()
    assert maps["attention"] == "calibrated"
    assert np.allclose(maps["M3"], 2 * maps["DI3"] / (maps["DI3"] + s3), atol=1e-6)  # eq. (5), on the memory's scale
    assert 0 <= maps["memory_index"] < 3
    fig = attention.plot_spatial_attention(torch.rand(3, 64, 64), torch.zeros(1, 64, 64), maps)
    assert len(fig.axes) == 10


def test_show_di_star_picks_the_identical_memory_sample(tiny_memseg):
    memory = torch.rand(3, 3, 64, 64)
    tiny_memseg.prepare(normalize(memory))
    fig, chosen, inter = model_views.show_di_star(tiny_memseg, memory[2], memory)
    assert chosen == 2  # an input identical to memory slot 2 has zero difference there (eq. 4)
    assert float(inter["DI_star"][0].abs().max()) == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------ 03 training helpers


def test_live_loss_plot_accepts_both_callback_forms():
    live = training_views.LiveLossPlot(every=1000)
    live(1, {"loss": 1.0, "l1": 0.5, "lr": 0.04, "seconds": 3.0})
    live({"step": 2, "loss": 0.5, "l1": 0.25})
    assert live.steps == [1, 2] and live.history == {"loss": [1.0, 0.5], "l1": [0.5, 0.25]}  # lr/seconds are not losses
    fig = live.figure()
    labels = [line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith("_")]
    assert labels == ["loss (smoothed)", "l1"] and len(fig.axes[0].lines) == 4  # raw + smoothed per curve


def test_quick_model_trains_once_then_loads_the_cache(fake_dataset, tmp_path):
    s_small = _settings(fake_dataset, tmp_path, steps=2)
    # memory N = 10 in quick mode needs >= 10 train images left after validation: the fake set has 16
    seen: list[int] = []
    model, info = quick.quick_model(s_small, callback=lambda step, logs: seen.append(step), progress=False)
    assert info["cached"] is False and seen == [1, 2] and info["step"] == 2
    replay: list[int] = []
    model2, info2 = quick.quick_model(s_small, callback=lambda step, logs: replay.append(step), progress=False)
    assert info2["cached"] is True and replay == [1, 2]  # the logged curve is replayed
    x = normalize(torch.rand(1, 3, 64, 64))
    assert torch.allclose(model(x), model2(x))
    mem = data.memory_images(s_small, info2)
    assert mem.shape == (10, 3, 64, 64)
    # the memory bank holds exactly the block-1 features of those images
    with torch.no_grad():
        f1 = model2.encoder.forward_frozen(normalize(mem))[1]
    assert torch.allclose(model2.memory.level1, f1, atol=1e-4)
    s_more = _settings(fake_dataset, tmp_path, steps=3)
    _, info3 = quick.quick_model(s_more, progress=False)
    assert info3["cached"] is False and info3["step"] == 3  # other settings: trained again


def test_predictions_and_metrics_table(fake_dataset, tmp_path):
    from memseg.engine.evaluation import evaluate

    s = _settings(fake_dataset, tmp_path, steps=1)
    model, info = quick.quick_model(s, progress=False)
    preds = training_views.predictions(info["path"], s.data_root, s.category, device="cpu", n_anomalous=2, n_normal=1)
    assert preds["images"].shape == (3, 3, 64, 64) and preds["maps"].shape == (3, 64, 64)
    assert (preds["defects"] == ["spot", "spot", "good"]
            and preds["masks"][:2].sum() > 0 and preds["masks"][2].sum() == 0)
    metrics = evaluate(info["path"], s.data_root, s.category, device="cpu", progress=False)
    html = training_views.metrics_table(metrics).data
    assert "all defects" in html and "spot" in html and "3 / 3" in html
    fig = training_views.prediction_grid(preds["images"], preds["masks"], preds["maps"], preds["scores"], n=3)
    assert len(fig.axes) == 12


def test_run_ablations_trains_each_variant(fake_dataset, tmp_path):
    s = _settings(fake_dataset, tmp_path, steps=1)
    res = ablations.run_ablations(s, {"full": {}, "no memory": {"use_memory": False}}, steps=1, size=(64, 64),
                                  progress=False)
    assert [r["variant"] for r in res] == ["full", "no memory"]
    assert all(0 <= r["pixel_auroc"] <= 1 and r["steps"] == 1 and r["size"] == "64×64" for r in res)
    cfg = yaml.safe_load((s.runs / "ablation-no_memory-widget" / "config.yaml").read_text())
    assert cfg["model_options"]["use_memory"] is False
    fig = ablations.plot_ablations(res)
    assert "1 steps at 64×64" in fig.axes[0].get_title()


# ------------------------------------------------------------------------------ 04 t-SNE helpers


def test_tsne_groups_figure_and_hover_html(fake_dataset, tmp_path, simulator):
    s = _settings(fake_dataset, tmp_path)
    train, test = data.settings_split(s, "train"), data.settings_split(s, "test")
    emb = tsne.tsne_groups(train, test, simulator, n_per_group=4, seed=0)
    n = len(emb.images)
    assert emb.groups.count("real anomaly") == 3 and emb.groups.count("simulated anomaly") == 4
    assert emb.groups.count("normal") == 4  # 3 test/good topped up with 1 train/good
    assert sum(name.startswith("train/good") for name in emb.names) == 1
    assert len(emb.names) == n and emb.images.shape[1:] == (3, 64, 64)
    emb.embedding = np.random.default_rng(0).normal(size=(n, 2))
    fig = tsne.tsne_figure(emb)
    assert [t.name.split(" (")[0] for t in fig.data] == ["normal", "simulated anomaly", "real anomaly"]
    assert sum(len(t.x) for t in fig.data) == n
    cd = fig.data[2].customdata[0]
    assert cd[1].startswith("data:image/png;base64,") and emb.names[int(cd[2])] == cd[0]
    html = tsne.plotly_with_thumbnails(fig)
    assert "plotly_hover" in html and "{plot_id}" not in html and "-img" in html
    assert len(tsne.thumbnail_grid(emb, per_group=3).axes) == 9


def test_attention_browser_follows_the_dropdown(fake_dataset, tmp_path, tiny_memseg):
    test = data.settings_split(_settings(fake_dataset, tmp_path), "test")
    anomalous = [i for i, y in enumerate(test.labels) if y == 1]
    browser = attention.AttentionBrowser(tiny_memseg, test, anomalous + [0])
    assert [v for _, v in browser.dropdown.options] == anomalous + [0]
    assert browser.dropdown.options[0][0].startswith("spot/")
    browser.dropdown.value = anomalous[1]  # choosing an image redraws for it
    expected = attention.attention_maps(tiny_memseg, test[anomalous[1]]["image"])
    assert np.allclose(browser.last["M1"], expected["M1"]) and browser.last["M1"].shape == (16, 16)


def test_simulator_without_dtd_is_structure_only_and_says_so(fake_dataset, tmp_path, recwarn):
    s = _settings(fake_dataset, tmp_path)  # dtd_root=None, as on a fresh clone without ../shared/data
    sim = data.make_simulator(s)
    assert not data.has_textures(sim) and not [w for w in recwarn if "DTD" in str(w.message)]
    assert "NOT FOUND" in data.describe_texture_source(s)
    res = sim.simulate(_disc_batch(2), generator=torch.Generator().manual_seed(0))
    assert res.source == ["structure", "structure"]


def test_attention_maps_in_both_forms_and_their_contrast(tiny_memseg, synthetic_root):
    image = torch.rand(3, 64, 64)
    cal = attention.attention_maps(tiny_memseg, image)
    lit = attention.attention_maps(tiny_memseg, image, attention="literal")
    assert lit["attention"] == "literal" and np.array_equal(cal["DI1"], lit["DI1"])
    assert np.allclose(lit["M3"], lit["DI3"], atol=1e-6)  # literal eq. (5)
    assert np.median(lit["M1"]) < 0.1 * np.median(cal["M1"])  # random features: the literal products vanish
    from memseg.data import load_split

    test = load_split(synthetic_root, "washer", split="test", size=(64, 64))
    anomalous = [i for i, y in enumerate(test.labels) if y == 1]
    rows = attention.attention_contrast(tiny_memseg, test, anomalous)
    assert rows and all(r["M1 elsewhere"] > 0 and np.isfinite(r["M1 ratio"]) for r in rows)
    assert {"image", "DI1 ratio", "M1 ratio"} <= set(rows[0])


def test_the_fig8_figure_plots_the_mean_over_seeds_per_memory_size(tmp_path):
    """Notebook 02's Fig. 8 only plots committed results: one point per N, at the mean over the seeds."""
    import json

    from memseg.notebook.ablations import memory_size_figure

    rows = [{"category": "washer", "memory_size": n, "seed": s, "steps": 300, "size": 128,
             "image_auroc": 0.5 + 0.01 * n + 0.02 * s, "pixel_auroc": 0.9, "aupro": 0.7}
            for n in (1, 15) for s in (0, 1)]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    fig = memory_size_figure(tmp_path)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 15]
    image_line = ax.get_lines()[0]
    assert list(image_line.get_ydata()) == pytest.approx([100 * (0.51 + 0.01), 100 * (0.65 + 0.01)])
    with pytest.raises(FileNotFoundError, match="benchmarks/memory_size.py"):
        memory_size_figure(tmp_path / "missing")
