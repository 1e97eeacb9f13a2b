"""The MemSeg network (paper §3.2-3.3): shapes, freezing, memory bank, ablations, weights.

Small sizes (64×96, N ≤ 4) keep this fast on the 2-core CPU; one test runs the paper's 256².
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from memseg.models import MODEL_CONFIGS, build_model, config_from_dict
from memseg.models.memseg.attention import CoordinateAttention, spatial_attention_maps
from memseg.models.memseg.encoder import FROZEN_MODULES
from memseg.models.memseg.memory import MemoryBank
from memseg.models.memseg.model import MemSeg, MemSegConfig

H, W = 64, 96


def _images(n: int, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _model(n: int = 3, seed: int = 0, **kw) -> MemSeg:
    torch.manual_seed(seed)
    kw.setdefault("weights", "random")  # the unit tests' encoder: what "auto" gave before the kit shipped its own
    model = MemSeg(MemSegConfig(input_size=(H, W), memory_size=n, **kw))
    model.prepare(_images(n, seed=100 + seed))
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from 2 threads; on the shared 2-core machine a second OpenMP
    thread per process mostly spins (measured: 213 s vs 35 s for this file under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> MemSeg:
    return _model()


# --------------------------------------------------------------------------- shapes
def test_intermediate_shapes_non_square(model: MemSeg) -> None:
    out = model(_images(2, seed=1), return_intermediates=True)
    assert out["logits"].shape == (2, 2, H, W)
    ii_shapes = [(2, 64, H // 4, W // 4), (2, 128, H // 8, W // 8), (2, 256, H // 16, W // 16)]
    assert [tuple(t.shape) for t in out["II"]] == ii_shapes
    assert [tuple(t.shape) for t in out["DI_star"]] == ii_shapes
    assert [tuple(t.shape) for t in out["msff"]] == ii_shapes
    assert out["M1"].shape == (2, 1, H // 4, W // 4)
    assert out["M2"].shape == (2, 1, H // 8, W // 8)
    assert out["M3"].shape == (2, 1, H // 16, W // 16)
    assert out["bottleneck"].shape == (2, 512, H // 32, W // 32)
    assert out["memory_index"].shape == (2,) and out["memory_index"].dtype == torch.long
    plain = model.eval()(_images(2, seed=1))
    model.train()
    assert plain.shape == (2, 2, H, W)


def test_shapes_at_paper_size() -> None:
    torch.manual_seed(0)
    m = MemSeg(MemSegConfig(input_size=256, memory_size=1)).eval()
    m.prepare(_images(1, 256, 256))
    amap = m.anomaly_map(_images(1, 256, 256, seed=3))
    assert amap.shape == (1, 1, 256, 256)
    assert amap.min() >= 0 and amap.max() <= 1
    assert m.memory.level1.shape == (1, 64, 64, 64) and m.memory.level3.shape == (1, 256, 16, 16)


def test_anomaly_map_is_softmax_channel_one(model: MemSeg) -> None:
    model.eval()
    x = _images(2, seed=5)
    with torch.no_grad():
        logits = model(x)
    amap = model.anomaly_map(x)
    model.train()
    assert amap.shape == (2, 1, H, W)
    assert torch.allclose(amap, torch.softmax(logits, dim=1)[:, 1:2], atol=1e-6)


# --------------------------------------------------------------------------- freezing
def test_frozen_parts_stay_bit_identical_after_a_train_step() -> None:
    m = _model(n=2)
    m.train()
    for name in FROZEN_MODULES:
        part = getattr(m.encoder.backbone, name)
        assert not part.training, f"{name} must stay in eval mode inside model.train()"
        assert all(not p.requires_grad for p in part.parameters())
    frozen_before = {k: v.clone() for k, v in m.encoder.backbone.state_dict().items()
                     if k.split(".")[0] in FROZEN_MODULES}
    assert any("running_mean" in k for k in frozen_before)
    trainable_before = {
        "block4": m.encoder.backbone.layer4[0].downsample[0].weight.clone(),
        "block4_bn": m.encoder.backbone.layer4[0].bn1.running_mean.clone(),
        "msff": m.msff.blocks[0].conv[0].weight.clone(),
        "decoder": m.decoder.head[1].weight.clone(),
    }
    memory_before = m.memory.level1.clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    masks = torch.zeros(2, 1, H, W)
    masks[:, :, 10:30, 20:50] = 1
    loss, parts = m.compute_loss(_images(2, seed=7), masks, _images(2, seed=8))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, v in m.encoder.backbone.state_dict().items():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), f"frozen tensor {k} changed"
    after = {
        "block4": m.encoder.backbone.layer4[0].downsample[0].weight,
        "block4_bn": m.encoder.backbone.layer4[0].bn1.running_mean,
        "msff": m.msff.blocks[0].conv[0].weight,
        "decoder": m.decoder.head[1].weight,
    }
    for k, v in after.items():
        assert not torch.equal(v, trainable_before[k]), f"{k} did not change after a training step"
    assert torch.equal(m.memory.level1, memory_before)
    assert set(parts) == {"l1", "focal", "loss"}


def test_frozen_features_do_not_require_grad(model: MemSeg) -> None:
    out = model(_images(1, seed=2), return_intermediates=True)
    assert all(not f.requires_grad for f in out["II"])
    assert out["bottleneck"].requires_grad and out["logits"].requires_grad


# --------------------------------------------------------------------------- memory bank
def test_memory_bank_round_trips_through_state_dict(model: MemSeg) -> None:
    state = copy.deepcopy(model.state_dict())
    assert {"memory.level1", "memory.level2", "memory.level3", "memory.memory_ready"} <= set(state)
    fresh = MemSeg(MemSegConfig(input_size=(H, W), memory_size=3))
    assert not fresh.memory_ready
    fresh.load_state_dict(state, strict=True)
    assert fresh.memory_ready
    for a, b in zip(fresh.memory.levels, model.memory.levels):
        assert torch.equal(a, b)
    x = _images(2, seed=11)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    model.train()


def test_a_forward_pass_never_reads_a_value_back_from_the_device(model: MemSeg, monkeypatch) -> None:
    """No host sync in the forward pass (on a GPU each one stalls the queue), e.g. reading memory_ready."""
    x = _images(2, seed=12)
    model.eval()

    def refuse(self, *args):
        raise AssertionError("a forward pass read a tensor value back to the host")

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with torch.no_grad():
        model(x)
        model.anomaly_map(x)
    monkeypatch.undo()
    model.train()
    state = copy.deepcopy(model.state_dict())
    state["memory.memory_ready"] = torch.tensor(False)
    fresh = MemSeg(MemSegConfig(input_size=(H, W), memory_size=3))
    fresh.load_state_dict(state)
    assert not fresh.memory_ready  # the host copy follows what was loaded


def test_memory_buffers_move_with_to(model: MemSeg) -> None:
    m = copy.deepcopy(model).to(torch.float64)
    assert m.memory.level2.dtype == torch.float64
    m = copy.deepcopy(model).to("meta")
    assert m.memory.level1.device.type == "meta" and m.memory.memory_ready.device.type == "meta"
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        g = copy.deepcopy(model).to("cuda")
        assert g.memory.level3.is_cuda
        assert g(_images(1).cuda()).is_cuda


def test_memory_index_picks_identical_sample() -> None:
    n = 4
    m = MemSeg(MemSegConfig(input_size=(H, W), memory_size=n)).eval()
    bank = _images(n, seed=21)
    m.prepare(bank)
    with torch.no_grad():
        out = m(bank[[2, 0, 3]], return_intermediates=True)
    assert out["memory_index"].tolist() == [2, 0, 3]
    for d in out["DI_star"]:
        assert torch.count_nonzero(d) == 0
    assert torch.count_nonzero(out["M1"]) == 0


def test_memory_selection_sums_over_all_levels() -> None:
    # level 1 prefers sample 0, levels 2+3 prefer sample 1 by more: eq. (4) sums over all levels
    bank = MemoryBank(2, [(1, 2, 2), (1, 1, 1), (1, 1, 1)])
    bank.fill([torch.tensor([[[[0.0, 0], [0, 0]]], [[[1.0, 1], [1, 1]]]]), torch.tensor([[[[9.0]]], [[[0.0]]]]),
               torch.zeros(2, 1, 1, 1)])
    feats = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]
    d = bank.distances(feats)
    assert d.tolist() == [[9.0, 4.0]]
    di, idx = bank.select(feats)
    assert idx.tolist() == [1]
    assert torch.equal(di[0], torch.ones(1, 1, 2, 2))


def test_distance_options_match_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 4, 6), (8, 2, 3), (16, 1, 2)]
    mem = [torch.randn(5, *s, generator=g) for s in shapes]
    feats = [torch.randn(3, *s, generator=g) for s in shapes]
    for distance, fn in (("l2", lambda a: a.abs()), ("squared", lambda a: a.square())):
        bank = MemoryBank(5, shapes, distance=distance, chunk_size=2)  # chunked search
        bank.fill(mem)
        brute = sum(fn(m[None] - f[:, None]).flatten(2).sum(-1) for m, f in zip(mem, feats))  # (B, N)
        assert torch.allclose(bank.distances(feats), brute, rtol=1e-5)
        di, idx = bank.select(feats)
        assert torch.equal(idx, brute.argmin(1))
        for level, (m, f) in enumerate(zip(mem, feats)):
            assert torch.allclose(di[level], fn(m[idx] - f))


def test_spatial_attention_maps_follow_eq_5_to_7() -> None:
    g = torch.Generator().manual_seed(4)
    di = [torch.rand(2, 64, 16, 24, generator=g), torch.rand(2, 128, 8, 12, generator=g),
          torch.rand(2, 256, 4, 6, generator=g)]
    m1, m2, m3 = spatial_attention_maps(di)
    assert torch.allclose(m3, di[2].mean(1, keepdim=True))
    up3 = F.interpolate(m3, size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(m2, di[1].mean(1, keepdim=True) * up3)
    up2 = F.interpolate(m2, size=(16, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(m1, di[0].mean(1, keepdim=True) * up2)


def test_coordinate_attention_returns_weights() -> None:
    ca = CoordinateAttention(32)
    a_h, a_w = ca(torch.randn(2, 32, 8, 12))
    assert a_h.shape == (2, 32, 8, 1) and a_w.shape == (2, 32, 1, 12)
    assert (a_h > 0).all() and (a_h < 1).all() and (a_w > 0).all() and (a_w < 1).all()


# --------------------------------------------------------------------------- errors
def test_size_mismatch_and_bad_config_errors(model: MemSeg) -> None:
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(64, 96\)"):
        model(_images(1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(_images(1, 60, 96))
    with pytest.raises(ValueError, match="multiples of 32"):
        MemSegConfig(input_size=(100, 96))
    with pytest.raises(ValueError, match="memory_size N=3"):
        model.prepare(_images(5))
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        model.prepare(_images(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, H, W))
    with pytest.raises(ValueError, match="distance"):
        MemSegConfig(distance="cosine")
    with pytest.raises(ValueError, match="uint8"):
        model.prepare(torch.zeros(3, 3, H, W, dtype=torch.uint8))
    with pytest.warns(UserWarning, match="normalised"):
        copy.deepcopy(model).prepare(torch.rand(3, 3, H, W))
    empty = MemSeg(MemSegConfig(input_size=(H, W), memory_size=2))
    with pytest.raises(RuntimeError, match="prepare"):
        empty(_images(1))


# --------------------------------------------------------------------------- ablations
@pytest.mark.parametrize(
    "switches",
    [
        {"use_memory": False},
        {"use_multiscale": False},
        {"use_spatial_attention": False},
        {"use_coord_attention": False},
        {"use_memory": False, "use_multiscale": False, "use_spatial_attention": False, "use_coord_attention": False},
        {"distance": "squared"},
    ],
)
def test_ablation_switches_build_and_run(switches: dict) -> None:
    m = _model(n=2, **switches)
    out = m(_images(2, seed=9), return_intermediates=True)
    assert out["logits"].shape == (2, 2, H, W)
    loss, _ = m.compute_loss(_images(2, seed=9), torch.zeros(2, 1, H, W), None)
    loss.backward()
    if not switches.get("use_memory", True):
        assert m.memory is None and out["DI_star"] is None and out["M1"] is None and out["memory_index"] is None
        assert not any(k.startswith("memory.") for k in m.state_dict())
        assert m.msff.blocks[0].conv[0].in_channels == 64  # CI = II only
    else:
        assert m.msff.blocks[0].conv[0].in_channels == 128  # CI = concat(II, DI*)
    if not switches.get("use_coord_attention", True):
        assert all(b.coord_attention is None for b in m.msff.blocks)
    if not switches.get("use_multiscale", True):
        assert not hasattr(m.msff, "align")


def test_spatial_attention_switch_changes_the_output() -> None:
    on = _model(n=2, seed=1).eval()
    off = MemSeg(MemSegConfig(input_size=(H, W), memory_size=2, use_spatial_attention=False)).eval()
    off.load_state_dict(on.state_dict())
    x = _images(1, seed=12)
    with torch.no_grad():
        a, b = on(x, return_intermediates=True), off(x, return_intermediates=True)
    assert torch.equal(a["M1"], b["M1"])  # maps are still computed (for notebooks)
    assert torch.allclose(a["msff"][0], b["msff"][0] * a["M1"])  # but only applied when on


def test_channels_last_matches_contiguous(model: MemSeg) -> None:
    m = copy.deepcopy(model).eval()
    x = _images(2, seed=13)
    with torch.no_grad():
        ref = m.set_channels_last(False)(x)
        assert not m.config.channels_last
        cl = m.set_channels_last(True)(x)
    assert m.config.channels_last
    assert m.decoder.head[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ref, cl, atol=1e-4)
    # set_channels_last leaves the memory bank contiguous (it is flattened for the DI* search); a whole-model
    # conversion changes the bank's layout, not what it computes
    assert all(level.is_contiguous() for level in m.memory.levels)
    m.to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(ref, m(x), atol=1e-4)


def test_loss_decreases_on_a_fixed_batch() -> None:
    m = _model(n=2, seed=2)
    x = _images(4, seed=14)
    masks = torch.zeros(4, 1, H, W)
    masks[:2, :, 16:40, 24:60] = 1
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = m.compute_loss(x, masks, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- weights
def test_imagenet_weights_offline_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"no hub access.*local weights file.*'random'"):
        MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights="imagenet"))
    assert MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights="random")).weights_source == "random"


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(5)
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        tv.layer2[0].bn1.running_mean.uniform_(-1, 1)  # something not at its init value
    path = tmp_path / "resnet18_tv.pth"
    torch.save(tv.state_dict(), path)
    m = MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(path)))
    assert m.weights_source == str(path.resolve()) and m.config.weights == str(path.resolve())
    sd = m.encoder.backbone.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(sd[k], v), k
    # timm names, nested under "state_dict" with a "module." prefix (DataParallel), also load
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in m.encoder.backbone.state_dict().items()}}, wrapped)
    m2 = MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(wrapped)))
    assert torch.equal(m2.encoder.backbone.layer2[0].bn1.running_mean, tv.layer2[0].bn1.running_mean)


def test_bad_local_weights_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(tmp_path / "missing.pth")))
    import torchvision

    tv = torchvision.models.resnet18().state_dict()
    no_block3 = {k: v for k, v in tv.items() if not k.startswith(("layer3", "layer4"))}
    torch.save(no_block3, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*missing keys.*layer3"):
        MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(tmp_path / "partial.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(tmp_path / "junk.pth")))


def test_a_file_of_stem_and_blocks_1_to_3_in_float16_loads(tmp_path: Path) -> None:
    """What memseg pretrain writes (and the kit ships): the frozen part only, half precision; block 4 trains."""
    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.resnet18().state_dict()
    frozen = {k: v.half() if v.is_floating_point() else v for k, v in tv.items() if not k.startswith(("layer4", "fc"))}
    torch.save(frozen, tmp_path / "frozen.pt")
    m = MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights=str(tmp_path / "frozen.pt")))
    sd = m.encoder.backbone.state_dict()
    assert sd["layer3.1.conv2.weight"].dtype == torch.float32
    assert torch.equal(sd["layer3.1.conv2.weight"], tv["layer3.1.conv2.weight"].half().float())
    assert not torch.equal(sd["layer4.0.conv1.weight"], tv["layer4.0.conv1.weight"])  # not in the file: as initialised


# --------------------------------------------------------------------------- registry
def test_build_model_registry(model: MemSeg) -> None:
    assert MODEL_CONFIGS["memseg"] is MemSegConfig
    cfg = dict(model.config.to_dict())
    cfg["input_size"] = list(cfg["input_size"])  # as stored in a checkpoint
    rebuilt = build_model("memseg", cfg)
    assert isinstance(rebuilt, MemSeg) and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    assert build_model("memseg", None).config.input_size == (256, 256)
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        build_model("unet", {})
    with pytest.raises(ValueError, match=r"unknown MemSegConfig key\(s\)"):
        config_from_dict("memseg", {"input_size": 64, "bogus": 1})
    # init_weights=False keeps the recorded source without loading (or downloading) it
    lazy = build_model("memseg", {"input_size": (H, W), "memory_size": 1, "weights": "imagenet"}, init_weights=False)
    assert lazy.weights_source == "imagenet" and lazy.config.weights == "imagenet"
    assert (lazy.config.attention, lazy.config.head) == ("literal", "paper")  # "auto" follows the encoder
    assert model.name == "memseg" and model.needs_simulation is True


def test_autocast_bf16_forward_and_backward(model: MemSeg) -> None:
    """Mixed precision (used on CUDA; bf16 autocast also runs on CPU): the memory search stays
    float32, the loss is computed in float32, and the map stays close to the float32 one."""
    m = copy.deepcopy(model)
    x = _images(2, seed=15)
    masks = torch.zeros(2, 1, H, W)
    masks[0, :, 8:24, 8:40] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = m.compute_loss(x, masks, x)
        out = m(x, return_intermediates=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert m.decoder.head[1].weight.grad is not None
    assert out["M1"].dtype == torch.float32
    m.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.anomaly_map(x)
    ref = m.anomaly_map(x)
    assert (low - ref).abs().max() < 0.05


# --------------------------------------------------------------------------- core: a live memory path
def test_random_encoder_residual_branches_are_alive() -> None:
    """timm zero-initialises the last BN of each residual block; frozen, blocks 1-3 would be the
    max-pooled stem plus 1x1 projections. Every residual branch of the random encoder must add signal."""
    from memseg.models.memseg.encoder import ResNet18Encoder

    torch.manual_seed(0)
    enc = ResNet18Encoder("random").eval()
    b = enc.backbone
    x = _images(2, seed=21)
    with torch.no_grad():
        h = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        for name in ("layer1", "layer2", "layer3"):
            for block in getattr(b, name):
                shortcut = h if block.downsample is None else block.downsample(h)
                branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(h)))))
                assert branch.std() > 0.1 * shortcut.std(), f"{name}: residual branch is (nearly) zero"
                h = block(h)
    assert all(not p.requires_grad for m in enc.frozen_modules() for p in m.parameters())  # still frozen


def test_frozen_encoder_and_memory_search_run_in_fp32_under_autocast(model: MemSeg) -> None:
    m = copy.deepcopy(model).eval()
    x = _images(2, seed=22)
    ref = m.encoder.forward_frozen(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.encoder.forward_frozen(x)
        out = m(x, return_intermediates=True)
    for a, b in zip(ref, low):
        assert b.dtype == torch.float32 and torch.equal(a, b)
    assert all(d.dtype == torch.float32 for d in out["DI_star"])


def test_calibrated_attention_reads_di_on_the_memory_scale() -> None:
    g = torch.Generator().manual_seed(4)
    di = [torch.rand(2, 64, 16, 24, generator=g), torch.rand(2, 128, 8, 12, generator=g),
          torch.rand(2, 256, 4, 6, generator=g)]
    scales = torch.tensor([0.5, 0.25, 2.0])
    m1, m2, m3 = spatial_attention_maps(di, scales)
    a = [2 * d.mean(1, keepdim=True) / (d.mean(1, keepdim=True) + s) for d, s in zip(di, scales)]
    assert torch.allclose(m3, a[2])
    assert torch.allclose(m2, a[1] * F.interpolate(m3, size=(8, 12), mode="bilinear", align_corners=False))
    assert torch.allclose(m1, a[0] * F.interpolate(m2, size=(16, 24), mode="bilinear", align_corners=False))
    # invariant to the feature scale (the literal form scales with its cube)
    big = spatial_attention_maps([10 * d for d in di], 10 * scales)
    assert all(torch.allclose(p, q, rtol=1e-5) for p, q in zip(big, (m1, m2, m3)))


def test_attention_is_about_one_on_normal_images_and_rises_on_a_defect() -> None:
    """With a random encoder, literal eq. (5)-(7) give M ~ 0 everywhere; calibrated maps are ~1 where an
    image differs from memory as normal images do, 0 on a memory image itself, and peak on a defect."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    g = torch.Generator().manual_seed(5)
    normal = torch.stack([0.5 + 0.2 * torch.sin(20 * (xx + 0.01 * k)).expand(3, H, W)
                          + 0.03 * torch.randn(3, H, W, generator=g) for k in range(6)]).clamp(0, 1)
    from memseg.utils import normalize

    model = MemSeg(MemSegConfig(input_size=(H, W), memory_size=5, weights="random")).eval()
    model.prepare(normalize(normal[:5]))
    defect = normal[5:].clone()
    defect[..., 24:40, 40:56] = 1.0  # a bright square
    with torch.no_grad():
        own = model(normalize(normal[:1]), return_intermediates=True)["M1"]
        ok = model(normalize(normal[5:]), return_intermediates=True)["M1"]
        bad = model(normalize(defect), return_intermediates=True)["M1"]
    assert own.abs().max() == 0  # identical to its memory sample: no difference, no attention
    assert 0.2 < ok.median() < 5
    inside, outside = bad[..., 6:10, 10:14].mean(), bad[..., :, :6].mean()
    assert inside > 3 * outside
    literal = MemSeg(MemSegConfig(input_size=(H, W), memory_size=5, weights="random", attention="literal")).eval()
    literal.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert literal(normalize(normal[5:]), return_intermediates=True)["M1"].median() < 0.2 * ok.median()


def test_memory_bank_reference_scale_round_trips_and_is_rebuilt_for_old_checkpoints(model: MemSeg) -> None:
    scales = [s.clone() for s in model.memory.scales]
    assert [tuple(s.shape[-2:]) for s in scales] == [(H // 4, W // 4), (H // 8, W // 8), (H // 16, W // 16)]
    assert all(torch.all(s > 0) and s.std() > 0 for s in scales)  # a map: normal variation differs by position
    from memseg.engine.checkpoint import migrate_checkpoint  # the one home of checkpoint migrations

    state = {k: v for k, v in model.state_dict().items() if ".scale" not in k}  # written before they existed
    fresh = MemSeg(MemSegConfig(input_size=(H, W), memory_size=3, weights="random"), init_weights=False)
    with pytest.raises(RuntimeError, match="scale1"):  # the model itself reads only the current layout
        fresh.load_state_dict(state)
    old = {"model_name": "memseg", "model_config": model.config_dict(), "model_state": state}
    fresh.load_state_dict(migrate_checkpoint(old)["model_state"])
    assert fresh.memory.ready
    assert all(torch.allclose(a, b) for a, b in zip(fresh.memory.scales, scales))


@pytest.mark.parametrize("head", ["paper", "no_relu"])
def test_head_ceiling(head: str) -> None:
    """The learned state of the paper head (every channel of the final conv votes 'normal') caps p at
    softmax(bias)[1] for every input; without the last ReLU the same weights can exceed it."""
    from memseg.models.memseg.decoder import SegmentationHead

    torch.manual_seed(0)
    h = SegmentationHead(8, head).eval()
    with torch.no_grad():
        # logit_1 - logit_0 <= bias gap
        h[1].weight.copy_(-h[1].weight.abs() * torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
        ceiling = torch.softmax(h[1].bias, 0)[1]
        p = torch.softmax(h(3 * torch.randn(16, 8, 12, 12)), 1)[:, 1]
    if head == "paper":
        assert p.max() <= ceiling + 1e-6
    else:
        assert p.max() > ceiling + 0.1


def test_weights_auto_resolves_and_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                          tmp_path: Path) -> None:
    from memseg.models import encoder_weights as ew

    monkeypatch.setattr(ew, "hub_weights_cached", lambda tag=ew.IMAGENET_TAG: False)
    monkeypatch.setattr(ew, "hub_reachable", lambda timeout=None: pytest.fail("offline mode must not ask the hub"))
    monkeypatch.setenv("MEMSEG_OFFLINE", "1")
    monkeypatch.setenv("MEMSEG_WEIGHTS_DIR", str(tmp_path))  # no shipped encoder there: random, said loudly
    m = MemSeg(MemSegConfig(input_size=(H, W), memory_size=1))  # default: auto
    assert m.weights_source == "random" and m.config.weights == "random"
    err = capsys.readouterr().err
    assert "RANDOM ENCODER WEIGHTS" in err and ew.OFFLINE_FILE in err and len(err.strip().splitlines()) == 1

    torch.save(MemSeg(MemSegConfig(input_size=(H, W), memory_size=1, weights="random")).encoder.frozen_state_dict(),
               tmp_path / ew.OFFLINE_FILE)  # a shipped encoder: auto takes it, and says it is not ImageNet
    m = MemSeg(MemSegConfig(input_size=(H, W), memory_size=1))
    assert m.weights_source == "offline" and (m.config.attention, m.config.head) == tuple(ew_recipe("offline"))
    err = capsys.readouterr().err
    assert "'offline'" in err and "not ImageNet" in err and len(err.strip().splitlines()) == 1

    monkeypatch.delenv("MEMSEG_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ew, "hub_reachable", lambda timeout=None: False)
    assert ew.resolve_auto()[0].source == "offline"
    loaded = []
    monkeypatch.setattr(ew, "create_timm_resnet18", lambda tag: loaded.append(tag) or torch.nn.Identity())
    monkeypatch.setattr(ew, "hub_weights_cached", lambda tag=ew.IMAGENET_TAG: True)
    assert ew.create_backbone("auto")[1] == "timm:resnet18.tv_in1k" and loaded == ["resnet18.tv_in1k"]
    assert "RANDOM" not in capsys.readouterr().err


def ew_recipe(source: str) -> list[str]:
    from memseg.models.memseg.model import recipe_for

    r = recipe_for(source)
    return [r["attention"], r["head"]]


def test_weight_names_resolve_to_timm_tags_offline() -> None:
    """No download: which timm tag (or file) each name stands for. 'imagenet' is the paper's encoder
    (torchvision's weights), not timm's default resnet18 tag (today the 'ResNet strikes back' A1 recipe)."""
    from memseg.models import encoder_weights as ew

    assert ew.resolve_name("imagenet").source == "timm:resnet18.tv_in1k"
    assert ew.resolve_name("timm:resnet18.a1_in1k").source == "timm:resnet18.a1_in1k"
    assert ew.resolve_name("timm:resnet18").source == "timm:resnet18.a1_in1k"  # timm's own default, said in full
    assert ew.resolve_name("offline").path == ew.offline_weights_path()
    assert ew.resolve_name("random").source == "random" and ew.resolve_name("auto").kind == "auto"
    assert ew.resolve_name("some/file.pth").kind == "file"
    with pytest.raises(ValueError, match=r"timm:resnet50.*resnet18.*timm:resnet18\.tv_in1k"):
        ew.resolve_name("timm:resnet50")
    from timm.models import get_pretrained_cfg

    # the cache look-up follows the tag
    assert get_pretrained_cfg("resnet18.tv_in1k").hf_hub_id == "timm/resnet18.tv_in1k"


def test_imagenet_loads_the_torchvision_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from memseg.models import encoder_weights as ew

    asked = []
    monkeypatch.setattr(ew, "create_timm_resnet18", lambda tag: asked.append(tag) or ew.nn.Identity())
    assert ew.create_backbone("imagenet")[1] == "timm:resnet18.tv_in1k"
    assert ew.create_backbone("timm:resnet18.a1_in1k")[1] == "timm:resnet18.a1_in1k"
    assert asked == ["resnet18.tv_in1k", "resnet18.a1_in1k"]


def test_hub_timeout_variable_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from memseg.models import encoder_weights as ew

    monkeypatch.setenv("MEMSEG_HUB_TIMEOUT", "abc")
    with pytest.raises(ValueError, match="MEMSEG_HUB_TIMEOUT.*'abc'"):
        ew.hub_timeout()




def test_aligned_difference_tolerates_a_shift_and_nothing_more() -> None:
    """memory_shift: a memory sample moved by one cell explains the input (DI* ~ 0 inside), a real change does not."""
    from memseg.models.memseg.memory import aligned_difference, difference

    torch.manual_seed(0)
    mem = torch.randn(2, 4, 6, 7)
    moved = torch.roll(mem, shifts=1, dims=-1)  # the part moved one cell to the right
    assert difference(mem, moved).mean() > 0.5  # eq. (3) as written sees the move everywhere
    assert aligned_difference(mem, moved, shift=1)[..., 1:].abs().max() == 0  # explained (the wrapped column aside)
    assert torch.equal(aligned_difference(mem, moved, shift=0), difference(mem, moved))
    changed = moved.clone()
    changed[:, :, 3, 4] += 10.0  # a defect: no nearby memory feature explains it
    assert aligned_difference(mem, changed, shift=1)[:, :, 3, 4].min() > 5
    with pytest.raises(ValueError, match="memory_shift must be 0"):
        MemSegConfig(input_size=(H, W), memory_shift=4)
