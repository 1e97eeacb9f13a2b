"""Perlin noise P and its mask M_P (paper §3.1, first step of Fig. 3)."""

from __future__ import annotations

import math

import pytest
import torch

from memseg.simulation.perlin import perlin_mask, perlin_noise, sample_scale_exp


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny tensors: one intra-op thread (shared fixture in conftest)."""


@pytest.mark.parametrize("hw", [(64, 64), (37, 101), (300, 400), (400, 300), (1, 7)])
def test_shape_dtype_and_range_for_any_size(hw):
    h, w = hw
    p = perlin_noise(3, h, w, gen(0))
    assert p.shape == (3, 1, h, w) and p.dtype == torch.float32
    assert torch.isfinite(p).all()
    # 2-D Perlin noise with unit gradients is bounded by sqrt(1/2); DRAEM's sqrt(2) scaling -> 1.
    assert p.abs().max() <= 1.0 + 1e-4
    assert p.std() > 0.05  # not constant


def test_same_seed_same_noise_different_seed_different_noise():
    a = perlin_noise(4, 48, 80, gen(7))
    b = perlin_noise(4, 48, 80, gen(7))
    c = perlin_noise(4, 48, 80, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_mask_fraction_grows_as_threshold_drops():
    p = perlin_noise(16, 64, 64, gen(1))
    thresholds = [0.9, 0.7, 0.5, 0.3, 0.0, -0.5]
    fractions = [perlin_mask(p, t).mean().item() for t in thresholds]
    assert all(lo <= hi for lo, hi in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] > fractions[2] > fractions[0]
    m = perlin_mask(p, 0.5)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, (p > 0.5).float())


def test_per_sample_threshold():
    p = perlin_noise(2, 32, 32, gen(2))
    m = perlin_mask(p, torch.tensor([-1.5, 1.5]))
    assert m[0].min() == 1 and m[1].max() == 0  # |P| <= 1


def test_higher_scale_exponent_gives_finer_noise():
    def roughness(exp: int) -> float:
        p = perlin_noise(8, 128, 128, gen(3), scale_exp=exp, rotate=False)
        return (p[..., :, 1:] - p[..., :, :-1]).abs().mean().item()

    r = [roughness(e) for e in (0, 2, 4)]
    assert r[0] < r[1] < r[2], r


def test_rotation_rotates_the_sampling_coordinates():
    # 1 lattice cell across the height, 32 across the width: varies fast along x only ...
    def grad_ratio(angle: float) -> float:
        p = perlin_noise(8, 96, 96, gen(4), scale_exp=(0, 5), angle=angle)
        dx = (p[..., :, 1:] - p[..., :, :-1]).abs().mean()
        dy = (p[..., 1:, :] - p[..., :-1, :]).abs().mean()
        return (dx / dy).item()

    assert grad_ratio(0.0) > 4
    assert grad_ratio(math.pi / 2) < 0.25  # ... and along y once the coordinates turn by 90°


def test_coarse_grid_matches_full_resolution_evaluation():
    full = perlin_noise(8, 128, 128, gen(5), samples_per_cell=0)
    coarse = perlin_noise(8, 128, 128, gen(5), samples_per_cell=4)
    assert (full - coarse).abs().mean() < 0.02
    agree = (perlin_mask(full) == perlin_mask(coarse)).float().mean()
    assert agree > 0.98


def test_return_params_and_fixed_exponents():
    _, params = perlin_noise(5, 32, 32, gen(6), scale_exp=(1, 3), return_params=True)
    assert params["scale_exp"].tolist() == [[1, 3]] * 5
    assert params["angle"].shape == (5,) and params["angle"].abs().max() <= math.pi / 2
    _, params = perlin_noise(3, 32, 32, gen(6), rotate=False, return_params=True)
    assert torch.equal(params["angle"], torch.zeros(3))


def test_sampled_exponents_cover_the_configured_range():
    e = sample_scale_exp(2000, gen(0), (1, 4))
    assert e.shape == (2000, 2)
    assert set(e.unique().tolist()) == {1, 2, 3, 4}
    e = sample_scale_exp(4, gen(0), scale_exp=torch.tensor([[0, 1], [2, 3], [4, 5], [0, 0]]))
    assert e[2].tolist() == [4, 5]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="scale_exp_range"):
        perlin_noise(1, 8, 8, scale_exp_range=(3, 1))
    with pytest.raises(ValueError, match="scale_exp"):
        perlin_noise(2, 8, 8, scale_exp=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, height, width"):
        perlin_noise(1, 0, 8)
