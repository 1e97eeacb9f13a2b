"""Exercises 3-4 (paper §3.2): the difference information DI (eq. 3) and the choice of DI* (eq. 4).

The expected answers come from the kit: :func:`memseg.models.memseg.memory.difference` (eq. 3, the
default ``distance="l2"``: ‖MI - II‖₂ per feature element, i.e. |MI - II|) and
:meth:`memseg.models.memseg.memory.MemoryBank.select` (eq. 4), run on a bank filled with the case's
memory features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from memseg.models.memseg.memory import MemoryBank, difference
from memseg.notebook.exercises.check import Case, Verdict, run_check

__all__ = ["check_best_difference", "check_difference"]

DIFFERENCE_EQUATION = ("eq. (3): DI_i = ‖MI_i - II‖₂ taken per feature element, so it keeps the C channels "
                       "(the next steps average DI* over channels, eq. 5-7); the 2-norm of one number is its "
                       "absolute value |MI - II|.")
SELECT_EQUATION = ("eq. (4): DI* = argmin over the N memory samples of Σ (all elements of DI_i), the sum running "
                   "over the three levels together, so ONE memory sample is chosen per input image and the same "
                   "sample gives DI* at every level. Return (DI* as a list of 3 tensors, the chosen index per input).")


def _kit_difference(memory: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return difference(memory, features, "l2")


def _kit_select(memory: list[torch.Tensor], features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    bank = MemoryBank(memory[0].shape[0], [tuple(m.shape[1:]) for m in memory], distance="l2")
    bank.fill(memory)
    di_star, index = bank.select(features)
    return di_star, index


def difference_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)

    def pair(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)

    same = torch.randn(2, 4, 5, 5, generator=g)
    return [
        Case("MI = 0 and II = 0.5 everywhere (differences below 1)",
             (torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), 0.5)),
             hint="DI holds |0 - 0.5| = 0.5 at every channel and position; a square (0.25) is another distance."),
        Case("MI and II: random features of 2 images, 8 channels, 8×8 positions (values of both signs, some > 1)",
             pair(2, 8, 8, 8), hint="DI has the same shape as the features: one value per channel and position."),
        Case("MI and II: random features of 1 image, 3 channels, 17×23 positions (odd sizes)",
             pair(1, 3, 17, 23), hint="Nothing depends on the sizes."),
        Case("MI equal to II (an input identical to its memory sample)",
             (same, same.clone()), hint="Identical features differ by nothing: DI is all zeros."),
    ]


def check_difference(difference_information: Callable) -> Verdict:
    """Check ``difference_information(MI (B,C,h,w), II (B,C,h,w)) -> DI (B,C,h,w)``."""
    return run_check("difference_information", difference_information, _kit_difference, difference_cases(),
                     DIFFERENCE_EQUATION)


SHAPES = [(8, 8, 8), (16, 4, 4), (32, 2, 2)]
ODD_SHAPES = [(4, 17, 23), (6, 9, 12), (8, 5, 6)]


def _levels(n: int, shapes: list[tuple[int, int, int]], g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(n, *s, generator=g) for s in shapes]


def _whole_sum_case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Memory sample 0 is closest on level 1 only; sample 1 is closest over all levels together."""
    shapes = [(2, 4, 4), (2, 2, 2), (2, 2, 2)]
    features = [torch.zeros(1, *s) for s in shapes]
    sample0 = [torch.full(s, v) for s, v in zip(shapes, (0.1, 1.0, 1.0))]  # Σ = 3.2 + 8 + 8
    sample1 = [torch.full(s, v) for s, v in zip(shapes, (0.3, 0.2, 0.2))]  # Σ = 9.6 + 1.6 + 1.6
    memory = [torch.stack([a, b]) for a, b in zip(sample0, sample1)]
    return memory, features


def select_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    memory = _levels(5, SHAPES, g)
    inputs = [m[[3, 0]] + 0.3 * torch.randn(2, *m.shape[1:], generator=g) for m in memory]  # near samples 3 and 0
    copies = _levels(4, SHAPES, g)
    exact = [m[[2]].clone() for m in copies]
    return [
        Case("N = 5 memory samples and 2 inputs, 3 levels of shapes (8, 8, 8), (16, 4, 4), (32, 2, 2) "
             "(C, h, w); input 0 lies near memory sample 3, input 1 near sample 0",
             (memory, inputs), hint="Each input gets the memory sample closest to it."),
        Case("N = 2, 1 input of zeros: memory sample 0 is closer on level 1 alone, sample 1 over all three levels",
             _whole_sum_case(),
             hint="The sum of eq. (4) runs over all three levels at once, not level by level."),
        Case("a single memory sample (N = 1) and 3 random inputs",
             (_levels(1, SHAPES, g), _levels(3, SHAPES, g)),
             hint="With one memory sample it is chosen for every input (index 0)."),
        Case("N = 4, 2 inputs, odd sizes: levels (4, 17, 23), (6, 9, 12), (8, 5, 6)",
             (_levels(4, ODD_SHAPES, g), _levels(2, ODD_SHAPES, g)), hint="Nothing depends on the sizes."),
        Case("N = 4, 1 input identical to memory sample 2",
             (copies, exact), hint="The closest sample is the identical one (index 2), and its DI* is all zeros."),
    ]


def check_best_difference(best_difference: Callable) -> Verdict:
    """Check ``best_difference(memory [MI_l (N,C_l,h_l,w_l)] * 3, features [II_l (B,C_l,h_l,w_l)] * 3)
    -> ([DI*_l (B,C_l,h_l,w_l)] * 3, index (B,))``."""
    return run_check("best_difference", best_difference, _kit_select, select_cases(), SELECT_EQUATION)
