"""The model contract (``memseg/models/base.py``), checked on every model of the registry.

Each name in ``MODEL_REGISTRY`` is built tiny (``tiny_model`` in ``tests/conftest.py``): a new model joins these
tests by being registered. Checks: it builds as an ``AnomalyModel`` of its registered class; ``compute_loss`` (what
the training loop calls, on a batch shaped as ``_step_batch`` gives) is a finite scalar with detached 0-dim parts;
backward reaches trainable parameters with finite gradients and none of the frozen ones; ``anomaly_map`` in eval
mode is (B, 1, H, W) in [0, 1]; a ``save_checkpoint`` / ``load_checkpoint`` round trip gives the same map.
"""

from __future__ import annotations

import pytest
import torch

from memseg.engine.checkpoint import load_checkpoint, memory_bank_keys, save_checkpoint
from memseg.models import MODEL_CONFIGS, MODEL_REGISTRY
from memseg.models.base import AnomalyModel
from memseg.utils import normalize

NAMES = sorted(MODEL_REGISTRY)
SIZE = (64, 64)
B = 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one torch thread (conftest's ``one_thread``)."""


@pytest.mark.parametrize("name", NAMES)
def test_builds_as_its_registered_class(name, tiny_model):
    model = tiny_model(name, size=SIZE)
    assert isinstance(model, AnomalyModel) and type(model) is MODEL_REGISTRY[name]
    assert model.name == name and name in MODEL_CONFIGS
    assert isinstance(model.config, MODEL_CONFIGS[name])
    assert tuple(model.config.input_size) == SIZE
    assert not model.training  # the tiny model comes in eval mode
    assert model.trainable_parameters(), f"{name}: nothing to train"


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_finite_scalar_and_backward_reaches_trainable_parameters_only(name, tiny_model, tiny_batch):
    model = tiny_model(name, size=SIZE).train()
    inputs, masks, clean = tiny_batch(B, SIZE)
    assert masks[0].sum() == 0 and masks[1].sum() > 0  # one normal image, one with a simulated anomaly
    loss, parts = model.compute_loss(inputs, masks, clean)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    assert parts, f"{name}: compute_loss returned no parts"
    for key, value in parts.items():  # training reads them back in one go: detached 0-dim tensors
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert torch.isfinite(value), f"{name}: part {key} = {value.item()}"

    loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    grads = [p.grad for p in model.parameters() if id(p) in trainable and p.grad is not None]
    assert grads, f"{name}: backward reached no trainable parameter"
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: all gradients are zero"
    frozen = [(n, p) for n, p in model.named_parameters() if id(p) not in trainable or not p.requires_grad]
    assert all(not p.requires_grad for _, p in frozen), "trainable_parameters() leaves out parameters that train"
    leaked = [n for n, p in frozen if p.grad is not None]
    assert not leaked, f"{name}: gradients on frozen parameters {leaked[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_anomaly_map_is_one_channel_at_input_size_in_unit_range(name, tiny_model, tiny_batch):
    model = tiny_model(name, size=SIZE)
    inputs, _, _ = tiny_batch(B, SIZE, seed=1)
    amap = model.anomaly_map(inputs)
    assert amap.shape == (B, 1, *SIZE) and amap.is_floating_point()
    assert torch.isfinite(amap).all()
    assert amap.min() >= 0 and amap.max() <= 1, f"{name}: map in [{amap.min().item()}, {amap.max().item()}]"


@pytest.mark.parametrize("slim", [False, True], ids=["full", "slim"])
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_gives_the_same_map(name, slim, tiny_model, tiny_batch, tmp_path):
    model = tiny_model(name, size=SIZE)
    images = None
    if slim:  # the slim inference checkpoint stores the memory bank's source images instead of its features
        if not memory_bank_keys(model) or not model.memory_size:
            pytest.skip(f"{name} has no memory bank (no slim checkpoint)")
        images = torch.randint(0, 256, (model.memory_size, 3, *SIZE), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(2))
        model.prepare(normalize(images.float().div_(255.0)))
    else:  # one training step first: the stored weights are not the initial ones
        model.train()
        loss, _ = model.compute_loss(*tiny_batch(B, SIZE))
        loss.backward()
        torch.optim.SGD(model.trainable_parameters(), lr=0.1).step()
        model.eval()
    path = save_checkpoint(tmp_path / f"{name}.pt", model, step=1, memory_images=images)
    loaded, info = load_checkpoint(path, device="cpu", model=name, input_size=SIZE)
    assert type(loaded) is type(model) and not loaded.training and info["model_name"] == name
    assert loaded.config == model.config
    x, _, _ = tiny_batch(B, SIZE, seed=3)
    torch.testing.assert_close(loaded.anomaly_map(x), model.anomaly_map(x), rtol=0, atol=1e-5)
