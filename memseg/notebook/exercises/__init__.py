"""Exercises with automatic checks (notebook 07): a student writes a core function of MemSeg, a check runs it
against the kit's own implementation on random and edge inputs and answers "correct" or the first mismatch
in plain words (what was given, expected vs got, a hint that points at the paper's equation).

    simulation  1 anomaly_mask (M = M_P ⊙ M_I, Fig. 3)    2 blend (eq. 1-2)
    memory      3 difference_information (eq. 3)          4 best_difference (DI*, eq. 4)
    attention   5 attention_maps (M3 -> M2 -> M1, eq. 5-7)
    loss        6 focal_loss (eq. 9)
    scoring     7 image_score (mean of the top-k pixels, §4.1)
    metrics     8 aupro (AUPRO@0.3)
    check       Case, Verdict, run_check: the one comparison and its messages

The solutions live in :mod:`memseg.notebook.exercises.solutions`, which nothing here imports (a student
notebook must not show them); the tests put them into the notebook's exercise cells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from memseg.notebook.exercises.attention import check_attention_maps
from memseg.notebook.exercises.check import Verdict
from memseg.notebook.exercises.loss import check_focal_loss
from memseg.notebook.exercises.memory import check_best_difference, check_difference
from memseg.notebook.exercises.metrics import check_aupro
from memseg.notebook.exercises.scoring import check_image_score
from memseg.notebook.exercises.simulation import check_anomaly_mask, check_blend

__all__ = [
    "EXERCISES", "Progress", "Verdict", "check_all", "check_anomaly_mask", "check_attention_maps", "check_aupro",
    "check_best_difference", "check_blend", "check_difference", "check_focal_loss", "check_image_score",
]

EXERCISES: dict[str, Callable[[Callable], Verdict]] = {
    "anomaly_mask": check_anomaly_mask,
    "blend": check_blend,
    "difference_information": check_difference,
    "best_difference": check_best_difference,
    "attention_maps": check_attention_maps,
    "focal_loss": check_focal_loss,
    "image_score": check_image_score,
    "aupro": check_aupro,
}
"""Exercise name (the function the student writes) -> its check, in the notebook's order."""


@dataclass
class Progress:
    """One verdict per exercise; shown as one line each."""

    verdicts: dict[str, Verdict]

    @property
    def correct(self) -> int:
        return sum(v.ok for v in self.verdicts.values())

    def __repr__(self) -> str:
        lines = [f"{self.correct} of {len(EXERCISES)} exercises correct"]
        for name in EXERCISES:
            v = self.verdicts.get(name)
            state = "missing (no function of this name)" if v is None else (
                "correct" if v.ok else "not done yet" if not v.done else "mismatch (run its check cell for details)")
            lines.append(f"  {name:24s} {state}")
        return "\n".join(lines)


def check_all(namespace: Mapping[str, object]) -> Progress:
    """Check every exercise function found by name in ``namespace`` (a notebook passes ``globals()``)."""
    return Progress({name: check(namespace[name]) for name, check in EXERCISES.items() if name in namespace})
