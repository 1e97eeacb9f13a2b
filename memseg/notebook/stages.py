"""Notebook 02's numbers (paper Fig. 2): each stage's input/output shapes, parameters, stored buffers and
FLOPs, for any ``nn.Module`` and, stage by stage as in the figure, for MemSeg.

Everything here returns plain data (lists of :class:`StageRow`, :class:`FlopReport`); the tables and
plots are in :mod:`memseg.notebook.model_views`. The MemSeg-specific parts read the
``forward(x, return_intermediates=True)`` dict documented in docs/ARCHITECTURE.md.

Examples:
    >>> from torch import nn
    >>> count_parameters(nn.Linear(3, 2))
    {'trainable': 8, 'frozen': 0, 'total': 8}
    >>> count_flops(nn.Sequential(nn.Linear(10, 5)), torch.zeros(4, 10)).total   # 2 FLOPs per multiply-add
    400
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


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
                calls=(min((seen[m]["calls"] for m in stage.modules if m in seen), default=0)
                       if len(ran) == len(stage.modules) else 0),
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
    rows, out = stage_table(model, inputs, memseg_stages(model), forward_kwargs={"return_intermediates": True},
                            return_output=True)
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


def count_flops(model: nn.Module, inputs: torch.Tensor, depth: int = 6,
                forward_kwargs: dict | None = None) -> FlopReport:
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
