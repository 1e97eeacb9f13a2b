"""Exercises with automatic checks (memseg.notebook.exercises, notebooks/07_exercises.ipynb).

Every model solution passes its check; for every exercise, typical wrong answers are caught with a message
that says what was given, expected vs got, and names the equation; the student notebook as committed
shows no solution and runs; with the solutions pasted into its exercise cells every check says "correct".
"""

from __future__ import annotations

import ast
import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memseg.notebook.exercises import EXERCISES, check_all
from memseg.notebook.exercises import solutions as sol
from memseg.notebook.exercises.check import Case, compare, run_check

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_exercises.ipynb"
PACKAGE = ROOT / "memseg" / "notebook" / "exercises"


# ------------------------------------------------------------------------------ solutions pass


@pytest.mark.parametrize("name", list(EXERCISES))
def test_every_solution_passes_its_check(name):
    verdict = EXERCISES[name](sol.SOLUTIONS[name])
    assert verdict.ok, str(verdict)
    assert str(verdict).startswith(f"correct: {name} agrees with the kit on all ")


def test_there_is_one_solution_per_exercise():
    assert list(sol.SOLUTIONS) == list(EXERCISES)


# ------------------------------------------------------------------------------ wrong answers are caught


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def mask_without_foreground(noise, threshold, foreground):
    return (noise > threshold).float()  # forgets M_I


def mask_not_strict(noise, threshold, foreground):
    return (noise >= threshold).float() * foreground


def blend_without_mask(image, noise, mask, delta):
    mixed = delta * noise + (1 - delta) * image  # the whole image, not only inside M
    return mixed, mixed


def blend_delta_swapped(image, noise, mask, delta):
    return sol.blend(image, noise, mask, 1 - delta)


def difference_squared(memory, features):
    return (memory - features) ** 2


def difference_norm_over_channels(memory, features):
    return (memory - features).norm(dim=1, keepdim=True)


def best_difference_max(memory, features):
    totals = sum((mi.unsqueeze(0) - ii.unsqueeze(1)).abs().flatten(2).sum(2) for mi, ii in zip(memory, features))
    index = totals.argmax(dim=1)  # the farthest memory sample
    return [(mi[index] - ii).abs() for mi, ii in zip(memory, features)], index


def best_difference_per_level(memory, features):
    out, index = [], None
    for mi, ii in zip(memory, features):  # a memory sample per level
        index = (mi.unsqueeze(0) - ii.unsqueeze(1)).abs().flatten(2).sum(2).argmin(dim=1)
        out.append((mi[index] - ii).abs())
    return out, index


def attention_mean_not_product(di_star):
    d1, d2, d3 = (x.mean(dim=1, keepdim=True) for x in di_star)
    m2 = (d2 + _up(d3, d2)) / 2
    return [(d1 + _up(m2, d1)) / 2, m2, d3]


def attention_sum_over_channels(di_star):
    d1, d2, d3 = (x.sum(dim=1, keepdim=True) for x in di_star)
    m2 = d2 * _up(d3, d2)
    return [d1 * _up(m2, d1), m2, d3]


def attention_nearest(di_star):
    d1, d2, d3 = (x.mean(dim=1, keepdim=True) for x in di_star)
    m2 = d2 * F.interpolate(d3, size=d2.shape[-2:], mode="nearest")
    return [d1 * F.interpolate(m2, size=d1.shape[-2:], mode="nearest"), m2, d3]


def focal_without_modulation(logits, masks, gamma=4.0):
    return F.cross_entropy(logits, masks[:, 0].long())  # (1 - p_t)^γ missing


def focal_p_not_pt(logits, masks, gamma=4.0):
    p = torch.softmax(logits, dim=1)[:, 1]
    return (-((1 - p) ** gamma) * torch.log(p)).mean()  # p instead of p_t on normal pixels


def image_score_max(maps, top_k=100):
    return maps.flatten(1).amax(dim=1)


def image_score_mean(maps, top_k=100):
    return maps.flatten(1).mean(dim=1)


def aupro_full_range(masks, maps, fpr_limit=0.3):
    return sol.aupro(masks, maps, fpr_limit=1.0)  # integrates to FPR = 1


def aupro_not_normalised(masks, maps, fpr_limit=0.3):
    return sol.aupro(masks, maps, fpr_limit) * fpr_limit


def aupro_per_pixel(masks, maps, fpr_limit=0.3):
    return sol.aupro(np.asarray(masks).reshape(1, 1, -1), np.asarray(maps).reshape(1, 1, -1), fpr_limit)  # one region


WRONG = [
    ("anomaly_mask", mask_without_foreground, "M = M_P ⊙ M_I"),
    ("anomaly_mask", mask_not_strict, "P > T"),
    ("blend", blend_without_mask, "eq. (1)"),
    ("blend", blend_delta_swapped, "eq. (1)"),
    ("difference_information", difference_squared, "eq. (3)"),
    ("difference_information", difference_norm_over_channels, "eq. (3)"),
    ("best_difference", best_difference_max, "eq. (4)"),
    ("best_difference", best_difference_per_level, "eq. (4)"),
    ("attention_maps", attention_mean_not_product, "eq. (6)"),
    ("attention_maps", attention_sum_over_channels, "eq. (5)"),
    ("attention_maps", attention_nearest, "bilinear"),
    ("focal_loss", focal_without_modulation, "eq. (9)"),
    ("focal_loss", focal_p_not_pt, "eq. (9)"),
    ("image_score", image_score_max, "top_k"),
    ("image_score", image_score_mean, "top_k"),
    ("aupro", aupro_full_range, "up to fpr_limit"),
    ("aupro", aupro_not_normalised, "divided by fpr_limit"),
    ("aupro", aupro_per_pixel, "connected components"),
]


@pytest.mark.parametrize("name, wrong, equation", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_wrong_answer_is_caught_in_plain_words(name, wrong, equation):
    verdict = EXERCISES[name](wrong)
    message = str(verdict)
    assert not verdict.ok and verdict.done, message
    lines = message.splitlines()
    assert lines[0].startswith(f"mismatch in {name}, case "), message
    assert lines[1].startswith("  given: ") and len(lines[1]) > 20, message
    assert "expected" in lines[2] and "got" in lines[2] or "should" in lines[2], message
    assert lines[3].startswith("  hint: ") and lines[4].startswith("  paper: "), message
    assert equation in "\n".join(lines[3:]), message


@pytest.mark.parametrize("name, case_hint", [
    ("anomaly_mask", "M is 0 wherever M_I is 0"),
    ("best_difference", "all three levels at once"),
    ("attention_maps", "an average or a sum would not"),
])
def test_the_first_mismatch_points_at_the_case_that_isolates_the_mistake(name, case_hint):
    wrong = {"anomaly_mask": mask_without_foreground, "best_difference": best_difference_per_level,
             "attention_maps": attention_mean_not_product}[name]
    assert case_hint in str(EXERCISES[name](wrong))


def test_one_wrong_message_verbatim():
    """The message format a student sees (one exercise, fixed inputs: the text is reproducible)."""
    message = str(EXERCISES["image_score"](image_score_max))
    lines = message.splitlines()
    assert lines[:2] == ["mismatch in image_score, case 1 of 4",
                         "  given: 3 random maps of 32×32 with values in [0, 1), top_k = 100"]
    assert lines[2] == "  the result differs at index (0,): expected 0.95641, got 0.999838 (3 of 3 values differ)"


# ------------------------------------------------------------------------------ the check itself


def test_an_unfinished_exercise_says_not_done_yet():
    def anomaly_mask(noise, threshold, foreground):
        raise NotImplementedError

    verdict = EXERCISES["anomaly_mask"](anomaly_mask)
    assert not verdict.ok and not verdict.done
    assert str(verdict).startswith("not done yet: anomaly_mask still raises NotImplementedError")


def test_an_error_in_the_students_function_is_reported_not_raised():
    verdict = EXERCISES["blend"](lambda image, noise, mask, delta: image.view(5, 7))
    assert not verdict.ok and "your function raised RuntimeError" in str(verdict) and "eq. (2)" in str(verdict)


def test_forgetting_to_return_or_calling_the_function_is_explained():
    assert "None (did you forget to return?)" in str(EXERCISES["image_score"](lambda maps, top_k=100: None))
    assert "pass your function itself" in str(EXERCISES["image_score"](3.0))


def test_a_function_that_writes_into_its_inputs_cannot_change_the_expected_answer():
    def in_place(maps, top_k=100):
        maps.zero_()
        return maps.flatten(1).mean(1)

    assert not EXERCISES["image_score"](in_place).ok


@pytest.mark.parametrize("expected, got, words", [
    (torch.zeros(2, 3), torch.zeros(3, 2), "should have shape (2, 3), but it has shape (3, 2)"),
    (torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0, 0.5, 0]]),
     "differs at index (1, 1): expected 0, got 0.5 (1 of 6"),
    ((torch.zeros(1), torch.ones(1)), torch.zeros(1), "should be a tuple of 2"),
    (torch.tensor(0.25), 0.5, "expected 0.25, got 0.5"),
    (torch.tensor([1, 2]), [1, 3], "differs at index (1,): expected 2, got 3"),
])
def test_compare_says_where_and_how(expected, got, words):
    assert words in compare(expected, got)


@pytest.mark.parametrize("expected, got", [
    (torch.ones(2), np.ones(2)), (torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool)),
    (torch.tensor(1.5), 1.5 + 1e-7),
    ([torch.zeros(1), torch.tensor([1])], (torch.zeros(1), [1])),
])
def test_compare_accepts_equal_values_in_other_containers(expected, got):
    assert compare(expected, got) is None


def test_run_check_stops_at_the_first_mismatch():
    cases = [Case("x = 1", (torch.ones(1),)), Case("x = 2", (torch.full((1,), 2.0),), hint="two."),
             Case("x = 3", (torch.full((1,), 3.0),))]
    verdict = run_check("square", lambda x: torch.where(x < 3, x * x, 2 * x), lambda x: x * x, cases, "eq. (0)")
    assert str(verdict).splitlines() == ["mismatch in square, case 3 of 3", "  given: x = 3",
                                         "  the result differs at index (0,): expected 9, got 6 (1 of 1 values differ)",
                                         "  paper: eq. (0)"]


def test_check_all_reads_the_notebooks_namespace():
    progress = check_all({"image_score": sol.image_score, "aupro": aupro_full_range})
    text = repr(progress)
    assert progress.correct == 1 and text.startswith(f"1 of {len(EXERCISES)} exercises correct")
    assert "image_score              correct" in text and "aupro                    mismatch" in text
    assert "anomaly_mask             missing" in text


# ------------------------------------------------------------------------------ solutions stay apart


def test_nothing_but_the_tests_imports_the_solutions():
    for path in PACKAGE.glob("*.py"):
        if path.name == "solutions.py":
            continue
        names = [n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]
        assert not any(n and n.endswith("solutions") for n in names), f"{path.name} imports the solutions"
    text = NOTEBOOK.read_text()
    assert "exercises.solutions" not in text and "import solutions" not in text and "SOLUTIONS" not in text


# ------------------------------------------------------------------------------ the student notebook


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


def _exercise_cells(nb: dict) -> dict[str, dict]:
    out = {}
    for cell in nb["cells"]:
        if "exercise" in cell.get("metadata", {}).get("tags", []):
            name = ast.parse("".join(cell["source"])).body[0].name
            out[name] = cell
    return out


def test_the_student_notebook_has_one_empty_exercise_and_one_check_per_function():
    nb = _notebook()
    cells = _exercise_cells(nb)
    assert list(cells) == list(EXERCISES)
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for name, cell in cells.items():
        src = "".join(cell["source"])
        assert "raise NotImplementedError" in src and src.count("\n") < 25, name
        check = EXERCISES[name].__name__
        assert any(f"{check}({name})" in s for s in sources), f"no cell calls {check}({name})"
    assert "check_all(globals())" in sources[-1]


def _with_solutions(tmp_path: Path) -> Path:
    """The student notebook with every exercise cell replaced by its solution's source."""
    nb = _notebook()
    for name, cell in _exercise_cells(nb).items():
        cell["source"] = inspect.getsource(sol.SOLUTIONS[name])
    path = tmp_path / NOTEBOOK.name
    path.write_text(json.dumps(nb))
    return path


def _text_outputs(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _check_outputs(nb) -> dict[str, str]:
    return {name: _text_outputs(c) for c in nb.cells if c.cell_type == "code"
            for name, check in EXERCISES.items() if f"{check.__name__}({name})" in c.source}


@pytest.mark.notebook
def test_the_notebook_with_the_solutions_filled_in_says_correct_everywhere(tmp_path):
    from notebook_runner import execute_notebook, quick_env

    t0 = time.perf_counter()
    nb = execute_notebook(_with_solutions(tmp_path), quick_env(tmp_path))
    print(f"{NOTEBOOK.name} with solutions: executed in {time.perf_counter() - t0:.1f} s")
    outputs = _check_outputs(nb)
    assert set(outputs) == set(EXERCISES)
    for name, text in outputs.items():
        assert text.startswith(f"correct: {name} agrees with the kit"), (name, text)
    assert _text_outputs(nb.cells[-1]).startswith(f"{len(EXERCISES)} of {len(EXERCISES)} exercises correct")


@pytest.mark.notebook
def test_the_student_notebook_as_committed_runs_and_says_not_done_yet(tmp_path):
    from notebook_runner import execute_notebook, quick_env

    nb = execute_notebook(NOTEBOOK.name, quick_env(tmp_path))
    for name, text in _check_outputs(nb).items():
        assert text.startswith(f"not done yet: {name} still raises NotImplementedError"), (name, text)
    assert _text_outputs(nb.cells[-1]).startswith(f"0 of {len(EXERCISES)} exercises correct")
