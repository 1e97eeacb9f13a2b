"""GPU path: results on CUDA match the CPU within a stated tolerance (skipped without a GPU).

Tolerances: fp32 anomaly maps within 1e-3 (TF32 is disabled for the comparison), bf16 autocast
within 5e-2 (bf16 keeps 8 bits of mantissa), image scores within the same bounds.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from memseg.models import build_model
from memseg.utils import normalize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU-only machine)")

FP32_TOL = 1e-3
BF16_TOL = 5e-2


def _model_and_inputs(name: str):
    torch.manual_seed(0)
    size = (64, 96)
    options = {"input_size": size}
    if name == "memseg":
        options["memory_size"] = 4
    model = build_model(name, options).eval()
    g = torch.Generator().manual_seed(1)
    if name == "memseg":
        model.prepare(normalize(torch.rand(4, 3, *size, generator=g)))
    x = normalize(torch.rand(3, 3, *size, generator=g))
    return model, x


@pytest.mark.parametrize("name", ["memseg", "draem", "mmr"])
def test_cuda_fp32_matches_cpu(name):
    model, x = _model_and_inputs(name)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        cpu = model.anomaly_map(x)
        gpu = model.to("cuda").anomaly_map(x.to("cuda")).cpu()
    assert gpu.shape == cpu.shape
    assert (gpu - cpu).abs().max().item() < FP32_TOL


def test_cuda_bf16_autocast_close_to_cpu_fp32():
    model, x = _model_and_inputs("memseg")
    with torch.no_grad():
        cpu = model.anomaly_map(x)
        model = model.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = model.anomaly_map(x.to("cuda")).float().cpu()
    assert (gpu - cpu).abs().max().item() < BF16_TOL


def test_simulator_runs_batched_on_cuda():
    from memseg.simulation.simulator import AnomalySimulator

    images = torch.rand(8, 3, 64, 64, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no DTD here: structure-only sources (warned, tested elsewhere)
        sim = AnomalySimulator(size=(64, 64), device="cuda", dtd_root=None)
        result = sim.simulate(images, generator=g)
    assert result.images.is_cuda and result.masks.is_cuda
    assert bool((result.masks.flatten(1).sum(1) > 0).all())
