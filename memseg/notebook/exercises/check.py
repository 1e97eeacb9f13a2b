"""The one way an exercise is checked: run the student's function and the kit's own on the same cases.

Each exercise module builds a list of :class:`Case` (random inputs and edge inputs: odd sizes, one memory
sample, an empty mask) and calls :func:`run_check` with the kit's implementation as the reference. The
first case on which the two disagree becomes a :class:`Verdict` in plain words: what was given, what was
expected against what came back, a hint about what the case tests, and the paper's equation. The reference
is never re-written here: expected values come from ``memseg.simulation`` / ``models`` / ``engine``.

Examples:
    >>> v = run_check("double", lambda x: 2 * x, lambda x: x + x, [Case("x = 1", (torch.ones(3),))], "eq. (0)")
    >>> v.ok, str(v)
    (True, 'correct: double agrees with the kit on all 1 cases')
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Case", "Verdict", "compare", "describe", "run_check"]


@dataclass
class Case:
    """One input to an exercise: ``given`` says in plain words what it is; ``hint`` what it tests."""

    given: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    hint: str = ""


@dataclass
class Verdict:
    """The check's answer: ``ok`` and one message ("correct: ..." or the first mismatch)."""

    exercise: str
    ok: bool
    message: str
    done: bool = True  # False while the function still raises NotImplementedError

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:  # what a notebook cell shows
        return self.message

    def __bool__(self) -> bool:
        return self.ok


def _fmt(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.6g}"


def describe(x: Any) -> str:
    """A short plain-words description of a value: 'a tensor of shape (2, 1, 17, 23)', 'the number 0.5'."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} ({str(x.dtype).removeprefix('torch.')})"
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} ({x.dtype})"
    if isinstance(x, (tuple, list)):
        kind = "tuple" if isinstance(x, tuple) else "list"
        return f"a {kind} of {len(x)}: " + ", ".join(describe(v) for v in x)
    if isinstance(x, (int, float, np.number, bool)):
        return f"the number {_fmt(x)}"
    if x is None:
        return "None (did you forget to return?)"
    return f"a {type(x).__name__}"


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, np.number, int, float, bool, np.bool_)):
        return torch.as_tensor(np.asarray(x))
    if isinstance(x, (list, tuple)):  # a list of numbers where a tensor was expected
        try:
            return torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def compare(expected: Any, got: Any, rtol: float = 1e-4, atol: float = 1e-5, what: str = "the result") -> str | None:
    """None when ``got`` matches ``expected`` (tensors, arrays, numbers, or tuples/lists of them), else one
    sentence saying where and how they differ."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{what} should be {describe(expected)}, but it is {describe(got)}"
        if len(got) != len(expected):
            return f"{what} should hold {len(expected)} items, but it holds {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = compare(e, g, rtol, atol, f"item {i} of {what}")
            if problem:
                return problem
        return None
    e, g = _as_tensor(expected), _as_tensor(got)
    if g is None:
        return f"{what} should be {describe(expected)}, but it is {describe(got)}"
    scalar = e.dim() == 0
    if scalar and g.numel() == 1:
        g = g.reshape(())
    if tuple(g.shape) != tuple(e.shape):
        want = "a single number" if scalar else f"shape {tuple(e.shape)}"
        return f"{what} should have {want}, but it has shape {tuple(g.shape)}"
    if e.dtype == torch.bool or not (e.is_floating_point() or g.is_floating_point()):
        diff = e.long() != g.long()
    else:
        ef, gf = e.double(), g.double()
        diff = ~torch.isclose(gf, ef, rtol=rtol, atol=atol, equal_nan=False)
    if not bool(diff.any()):
        return None
    if scalar:
        return f"{what}: expected {_fmt(e.item())}, got {_fmt(g.item())}"
    where = tuple(int(i) for i in torch.nonzero(diff)[0])
    n, total = int(diff.sum()), diff.numel()
    return (f"{what} differs at index {where}: expected {_fmt(e[where].item())}, got {_fmt(g[where].item())} "
            f"({n} of {total} values differ)")


def _copy(value: Any) -> Any:
    """A deep copy, so a function that writes into its inputs cannot change the other's."""
    return copy.deepcopy(value)


def run_check(
    name: str,
    student: Callable,
    reference: Callable,
    cases: Sequence[Case],
    equation: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> Verdict:
    """Run ``student`` and ``reference`` on every case; the first disagreement becomes the verdict.

    ``equation``: the line every mismatch ends with (e.g. "eq. (4): DI* is the DI_i with the smallest sum").
    """
    if not callable(student):
        return Verdict(name, False, f"{name}: pass your function itself (without calling it), got {describe(student)}")
    for k, case in enumerate(cases, start=1):
        expected = reference(*_copy(case.args), **_copy(case.kwargs))
        try:
            got = student(*_copy(case.args), **_copy(case.kwargs))
        except NotImplementedError:
            return Verdict(name, False, f"not done yet: {name} still raises NotImplementedError; "
                                        "replace the `raise` with your code and run this cell again", done=False)
        except Exception as err:  # the student's bug, reported in words
            return Verdict(name, False, _mismatch(name, k, len(cases), case,
                                                  f"your function raised {type(err).__name__}: {err}", equation))
        problem = compare(expected, got, rtol, atol)
        if problem:
            return Verdict(name, False, _mismatch(name, k, len(cases), case, problem, equation))
    return Verdict(name, True, f"correct: {name} agrees with the kit on all {len(cases)} cases")


def _mismatch(name: str, k: int, n: int, case: Case, problem: str, equation: str) -> str:
    lines = [f"mismatch in {name}, case {k} of {n}",
             f"  given: {case.given}",
             f"  {problem}"]
    if case.hint:
        lines.append(f"  hint: {case.hint}")
    lines.append(f"  paper: {equation}")
    return "\n".join(lines)
