"""Model analysis for the teaching notebooks: stage tables, parameter and FLOP counts, features, t-SNE.

Everything here returns plain data (lists of dicts, numpy arrays); the plots live in
:mod:`memseg.notebook.teaching`. Works for any ``nn.Module``; the MemSeg-specific parts read the
``forward(x, return_intermediates=True)`` dict documented in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def _shape_of(obj) -> str:
    """Human-readable shape(s) of a tensor, a tuple/list of tensors or a dict of tensors."""
    if isinstance(obj, torch.Tensor):
        return "×".join(str(s) for s in obj.shape)
    if isinstance(obj, (list, tuple)):
        parts = [_shape_of(o) for o in obj]
        parts = [p for p in parts if p]
        return ", ".join(parts)
    if isinstance(obj, dict):
        parts = [f"{k}: {_shape_of(v)}" for k, v in obj.items() if _shape_of(v)]
        return "; ".join(parts)
    return ""


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "frozen": n, "total": n}`` (parameters only, buffers excluded)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


def default_stages(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Names of the modules that make a readable stage table.

    Direct children of the model; a child that only groups others (an encoder, a decoder,
    a ModuleList) is expanded one level further, up to ``max_depth``. Leaf layers
    (conv, BN, ReLU) are never listed on their own unless they are direct children.
    """
    names: list[str] = []

    def visit(prefix: str, module: nn.Module, depth: int) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            grandchildren = list(child.named_children())
            is_container = isinstance(child, (nn.ModuleList, nn.ModuleDict)) or (
                depth < max_depth and len(grandchildren) > 1 and not _is_block(child)
            )
            if is_container and grandchildren:
                visit(full, child, depth + 1)
            else:
                names.append(full)

    visit("", model, 1)
    return names


def _is_block(module: nn.Module) -> bool:
    """A module that is one conceptual stage (a ResNet layer, a conv block) rather than a group."""
    if isinstance(module, nn.Sequential):
        # a ResNet layerN is a Sequential of BasicBlocks: treat it as one stage
        return all(not isinstance(c, (nn.ModuleList, nn.ModuleDict)) for c in module.children())
    return False


@dataclass
class Stage:
    """One row of a stage table: a label and the module(s) it is made of (dotted names).

    A stage with several modules (e.g. conv1 + bn1 + ReLU) reports the input of the first one that
    runs and the output of the last one. ``modules=[]`` marks a *functional* stage (no module, e.g.
    MemSeg's memory search) whose shapes are filled in from the model's intermediates.
    """

    label: str
    modules: list[str]
    note: str = ""


@dataclass
class StageRow:
    """One row of :func:`stage_table`."""

    name: str
    kind: str
    input_shape: str
    output_shape: str
    trainable: int
    frozen: int
    buffers: int = 0  # elements in registered buffers (e.g. the memory bank)
    calls: int = 0
    modules: list[str] = field(default_factory=list)
    note: str = ""


def _as_stages(stages) -> list[Stage]:
    return [s if isinstance(s, Stage) else Stage(label=str(s), modules=[str(s)]) for s in stages]


def stage_table(
    model: nn.Module,
    inputs: torch.Tensor,
    stages: Sequence[str | Stage] | None = None,
    forward_kwargs: dict | None = None,
    return_output: bool = False,
):
    """Run one forward pass with forward hooks and report every stage's tensor shapes and parameters.

    Args:
        model: any module; it is run under ``torch.no_grad()`` in its current train/eval mode.
        inputs: a batch, shape (B, 3, H, W), already normalised if the model expects it.
        stages: module names or :class:`Stage` objects; default :func:`default_stages`.
        forward_kwargs: extra keyword arguments for ``model(inputs, **forward_kwargs)``.
        return_output: also return the model's output.

    Returns:
        a list of :class:`StageRow` (in the given order; a stage that never ran has ``calls == 0``
        and empty shapes), and the output when ``return_output``.
    """
    modules = dict(model.named_modules())
    stages = _as_stages(stages if stages is not None else default_stages(model))
    unknown = [m for s in stages for m in s.modules if m not in modules]
    if unknown:
        raise KeyError(f"stage_table: no module named {unknown} in {type(model).__name__}; known: {list(modules)[:40]}")
    seen: dict[str, dict] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, args, output):
            rec = seen.setdefault(name, {"calls": 0, "order": len(seen)})
            rec["calls"] += 1
            if rec["calls"] == 1:  # shapes of the first call (a shared module may run several times)
                rec["input"] = _shape_of(args)
                rec["output"] = _shape_of(output)

        return hook

    for name in {m for s in stages for m in s.modules}:
        handles.append(modules[name].register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            output = model(inputs, **(forward_kwargs or {}))
    finally:
        for h in handles:
            h.remove()

    rows = []
    for stage in stages:
        ran = sorted((seen[m]["order"], m) for m in stage.modules if m in seen)
        trainable = frozen = buffers = 0
        for m in stage.modules:
            c = count_parameters(modules[m])
            trainable, frozen = trainable + c["trainable"], frozen + c["frozen"]
            buffers += sum(b.numel() for b in modules[m].buffers())
        kinds = [type(modules[m]).__name__ for m in stage.modules]
        rows.append(
            StageRow(
                name=stage.label,
                kind=" + ".join(dict.fromkeys(kinds)) if kinds else "function",
                input_shape=seen[ran[0][1]]["input"] if ran else "",
                output_shape=seen[ran[-1][1]]["output"] if ran else "",
                trainable=trainable,
                frozen=frozen,
                buffers=buffers,
                calls=min((seen[m]["calls"] for m in stage.modules if m in seen), default=0) if len(ran) == len(stage.modules) else 0,
                modules=list(stage.modules),
                note=stage.note,
            )
        )
    return (rows, output) if return_output else rows


def memseg_stages(model: nn.Module) -> list[Stage]:
    """The stages of Fig. 2 for a :class:`memseg.models.memseg.model.MemSeg` (module names of this kit)."""
    enc = "encoder.backbone"
    names = dict(model.named_modules())
    stages = [
        Stage("stem: conv1 · bn1 · ReLU", [f"{enc}.conv1", f"{enc}.bn1", f"{enc}.act1"], "frozen"),
        Stage("max-pool + block 1 → II₁", [f"{enc}.maxpool", f"{enc}.layer1"], "frozen"),
        Stage("block 2 → II₂", [f"{enc}.layer2"], "frozen"),
        Stage("block 3 → II₃", [f"{enc}.layer3"], "frozen"),
        Stage("block 4 → bottleneck", [f"{enc}.layer4"], "trainable"),
    ]
    if getattr(model, "memory", None) is not None:
        stages.append(Stage("memory: DI* = argmin Σ‖MI_i − II‖ (eq. 3-4)", [], "function"))
        stages.append(Stage("spatial attention M₁, M₂, M₃ (eq. 5-7)", [], "function"))
    for i, _ in enumerate(model.msff.blocks):
        stages.append(Stage(f"MSFF block {i + 1}: conv + CA (CI{'₁₂₃'[i]})", [f"msff.blocks.{i}"]))
    if "msff.align" in names:
        stages.append(Stage("MSFF multi-scale fusion (1×1 align)", [n for n in names if n.startswith("msff.align.")]))
    for k, res in ((3, "H/16"), (2, "H/8"), (1, "H/4"), (0, "H/2")):
        stages.append(Stage(f"decoder {res}: up + skip + conv", [f"decoder.up{k}", f"decoder.conv{k}"]))
    stages.append(Stage("decoder H: up + head → logits", ["decoder.up_out", "decoder.head"]))
    return stages


def memseg_stage_table(model: nn.Module, inputs: torch.Tensor) -> list[StageRow]:
    """:func:`stage_table` over :func:`memseg_stages`, with the functional stages (memory search,
    spatial attention) filled in from ``forward(x, return_intermediates=True)``."""
    rows, out = stage_table(model, inputs, memseg_stages(model), forward_kwargs={"return_intermediates": True}, return_output=True)
    memory = getattr(model, "memory", None)
    for r in rows:
        if r.name.startswith("memory:"):
            r.input_shape = "II: " + _shape_of(out["II"])
            r.output_shape = "DI*: " + _shape_of(out["DI_star"]) + "; index: " + _shape_of(out["memory_index"])
            r.buffers = sum(b.numel() for b in memory.buffers()) if memory is not None else 0
            r.calls = 1
        elif r.name.startswith("spatial attention"):
            r.input_shape = "DI*: " + _shape_of(out["DI_star"])
            r.output_shape = _shape_of([out["M1"], out["M2"], out["M3"]])
            r.calls = 1
    return rows


@dataclass
class FlopReport:
    """Result of :func:`count_flops`; FLOPs count one multiply-add as 2 FLOPs (PyTorch's convention)."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(model: nn.Module, inputs: torch.Tensor, depth: int = 6, forward_kwargs: dict | None = None) -> FlopReport:
    """FLOPs of one forward pass with ``torch.utils.flop_counter.FlopCounterMode`` (no extra dependency).

    Only operators PyTorch knows a formula for are counted (convolutions, matmuls, ...);
    element-wise ops, pooling and interpolation count as 0, as in every FLOP counter.
    ``by_module`` maps dotted module names (as in ``model.named_modules()``, "" = the whole model)
    to their totals, for modules up to ``depth`` levels deep.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=depth)
    with torch.no_grad(), counter:
        model(inputs, **(forward_kwargs or {}))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module: dict[str, int] = {}
    for name, ops in counts.items():
        if name == "Global":
            continue
        key = "" if name == root else name[len(root) + 1 :] if name.startswith(root + ".") else name
        by_module[key] = int(sum(ops.values()))
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    return FlopReport(total=int(counter.get_total_flops()), by_module=by_module, by_operator=by_op)


def stage_flops(flops: FlopReport, row: StageRow | Stage | str) -> int:
    """FLOPs of a stage (sum over its modules; 0 for functional stages and uncounted modules)."""
    mods = [row] if isinstance(row, str) else list(row.modules)
    return int(sum(flops.by_module.get(m, 0) for m in mods))


def pooled_features(features: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, C, h, w) -> (B, C) by global average (``mean``), max (``max``) or both concatenated (``meanmax``)."""
    if features.dim() != 4:
        raise ValueError(f"pooled_features expects (B, C, h, w), got shape {tuple(features.shape)}")
    if how == "mean":
        return features.mean(dim=(2, 3))
    if how == "max":
        return features.amax(dim=(2, 3))
    if how == "meanmax":
        return torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"pooled_features: unknown pooling {how!r}; expected mean, max or meanmax")


@torch.no_grad()
def bottleneck_features(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 8,
    pool: str = "mean",
    key: str = "bottleneck",
    progress: bool = True,
) -> np.ndarray:
    """Pooled bottleneck features (paper Fig. 6) of normalised images, shape (N, C).

    ``model(x, return_intermediates=True)[key]`` is read for each batch (MemSeg's U-Net
    bottleneck by default) and globally pooled. The model is put in eval mode.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"bottleneck_features expects normalised images (N, 3, H, W), got {tuple(images.shape)}")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device)
        inter = model(batch, return_intermediates=True)
        if key not in inter:
            raise KeyError(f"model intermediates have no {key!r}; available: {sorted(inter)}")
        feats = inter[key]
        if isinstance(feats, (list, tuple)):
            feats = feats[-1]
        out.append(pooled_features(feats.float(), pool).cpu())
    return torch.cat(out).numpy()


def tsne_embed(features: np.ndarray, seed: int = 0, perplexity: float | None = None, standardize: bool = True) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of (N, D) features -> (N, 2).

    Perplexity defaults to ``min(30, (N - 1) / 3)`` so small sets (a quick run) stay valid;
    features are standardised per dimension first (bottleneck channels have very different scales).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"tsne_embed expects (N, D) features, got shape {x.shape}")
    n = len(x)
    if n < 4:
        raise ValueError(f"tsne_embed needs at least 4 samples, got {n}")
    if standardize:
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    if perplexity is None:
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return tsne.fit_transform(x)


def neighbour_mix(embedding: np.ndarray, groups: Sequence[str], k: int = 5, order: Sequence[str] | None = None):
    """How groups mix in an embedding: ``share[a, b]`` = mean fraction of the k nearest neighbours of a
    point of group ``a`` that belong to group ``b`` (rows sum to 1; the point itself is excluded).

    Returns ``(names, share)`` with ``share`` a (G, G) array.
    """
    x = np.asarray(embedding, dtype=np.float64)
    g = np.asarray(list(groups))
    if x.ndim != 2 or len(x) != len(g):
        raise ValueError(f"neighbour_mix: embedding {x.shape} and {len(g)} group labels do not match")
    names = list(order) if order is not None else list(dict.fromkeys(g.tolist()))
    k = int(min(k, len(x) - 1))
    if k < 1:
        raise ValueError("neighbour_mix needs at least 2 points")
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn_idx = np.argsort(d, axis=1)[:, :k]
    share = np.zeros((len(names), len(names)))
    for a, name_a in enumerate(names):
        rows = np.nonzero(g == name_a)[0]
        if len(rows) == 0:
            share[a] = np.nan
            continue
        neigh = g[nn_idx[rows]]  # (n_a, k)
        for b, name_b in enumerate(names):
            share[a, b] = float((neigh == name_b).mean())
    return names, share


def summarise_runs(rows: Sequence[dict], metrics: Sequence[str], by: Sequence[str] = ("category", "variant")) -> list[dict]:
    """Mean and sample std of ``metrics`` over runs grouped by ``by`` (e.g. seeds of one ablation row).

    Returns one dict per group, in first-seen order: the ``by`` keys, ``n`` (runs), and for each metric
    ``<metric>`` (mean) and ``<metric>_std`` (sample std, nan for a single run). None values are skipped.

    Examples:
        >>> rows = [{"variant": "full", "auroc": 0.8}, {"variant": "full", "auroc": 0.9}]
        >>> s = summarise_runs(rows, ["auroc"], by=["variant"])[0]
        >>> (s["n"], round(s["auroc"], 2), round(s["auroc_std"], 3))
        (2, 0.85, 0.071)
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        summary: dict = {**dict(zip(by, key)), "n": len(rs)}
        for m in metrics:
            v = np.asarray([r[m] for r in rs if r.get(m) is not None], dtype=float)
            summary[m] = float(v.mean()) if v.size else float("nan")
            summary[f"{m}_std"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        out.append(summary)
    return out
