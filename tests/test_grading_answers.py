"""No expected answer reaches a submission's process; nothing that comes back from it is trusted.

Two attacks (tests/hostile/answers_from_the_stack.py and tests/hostile/patch_the_driver.py), each
graded in the real sandbox against a built-in assignment. On main the first scored 6.1/13 on
layer-api with no arithmetic at all (it read the reference chain's activations and gradients out
of the grader's inputs), the second 14/14 on class-api with no hidden-layer maths (its None
gradients were "not compared" and passed). Both now get only what they computed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from grading import adapters
from grading.assignment import load_assignment
from grading.checks import _hostile_value, build_cases, collect_submissions, grade_many, grade_submission

HOSTILE = Path(__file__).parent / "hostile"


@cache
def graded(name: str, assignment: str):
    return grade_submission(HOSTILE / name, load_assignment(assignment))


def by_check(result) -> dict[str, float]:
    return {c.title: c.score for c in result.checks}


def test_reading_the_grader_s_inputs_finds_no_answer():
    result = graded("answers_from_the_stack.py", "layer-api")
    assert result.score == 0, by_check(result)  # main: 6.1 / 13 (forward, loss gradient, network forward...)
    forward = next(c for c in result.checks if c.name == "forward")
    assert "zero everywhere" in forward.output  # it found nothing, so it fell back to zeros


def test_every_probe_input_is_free_of_expected_values():
    """No array a call is sent equals an expected value of another function, or a tensor of the
    reference's chain (its activations and gradients), in any case of any built-in. (A function's
    own answer may coincide with its own input: at a batch of 1, db is grad_output.)"""
    for name in ("layer-api", "function-api", "class-api"):
        for part in load_assignment(name).parts:
            for case in build_cases(part):
                chain = {
                    np.asarray(a, np.float64).tobytes(): f"the reference's {rec.name}"
                    for rec in case.trace.layers
                    for a in (rec.out, rec.grad_out, rec.grad_in, *rec.grads.values())
                    if a is not None and a.size > 1
                }
                for label, (_, _, items) in case.probes.items():
                    answers = dict(chain)
                    answers.update(
                        (np.asarray(e.value, np.float64).tobytes(), e.key.tensor)
                        for e in case.expected
                        if e.key.function != label and e.value.size > 1 and "unchanged by" not in e.key.tensor
                    )
                    for arr in _arrays(items):
                        if arr.size > 1 and arr.dtype.kind == "f" and arr is not case.x and arr is not case.step_x:
                            hit = answers.get(arr.astype(np.float64).tobytes())
                            assert hit is None, f"{name}/{part.id}/{case.id}: {label} is sent {hit}"


def _arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _arrays(v)


def test_a_patched_driver_gains_nothing():
    result = graded("patch_the_driver.py", "class-api")
    scores = by_check(result)
    # main: 14 / 14. The logistic part and the NeuralNet's forward and loss are its own, correct work.
    assert result.score == 7, scores
    for check in ("weight_gradients", "bias_gradients", "training_step", "stability"):
        assert scores[f"mlp: {check}"] == 0, scores
    grads = next(c for c in result.checks if c.title == "mlp: weight_gradients")
    assert "no answer: None came back" in grads.output
    assert "dense_1.dW" in grads.output


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "no answer: None came back"),
        (adapters.Problem("Dense.backward: killed by signal SIGSEGV"), "killed by signal SIGSEGV"),
        (np.array(["1", "2"]), "dtype <U1 came back, expected real numbers"),
        (np.array([1 + 0j, 2]), "dtype complex128 came back"),
        (np.array([True, False]), "dtype bool came back"),
        (True, "a bool (True) came back"),
        ({"W": 1}, "a dict came back, expected an array of numbers"),
        ([1.0, 2.0], "a list came back"),
        (np.zeros(3), "shape: expected (2,), got (3,)"),
    ],
)
def test_what_comes_back_is_hostile_input(value, reason):
    _, problem = _hostile_value(value, np.zeros(2))
    assert problem is not None and reason in problem


def test_a_usable_answer_passes_through():
    value, problem = _hostile_value(np.arange(2.0), np.zeros(2))
    assert problem is None and value.tolist() == [0.0, 1.0]
    value, problem = _hostile_value(3, np.zeros(()))
    assert problem is None and value.shape == ()


@pytest.mark.parametrize(
    "assignment, fmt", [("layer-api", "layer"), ("function-api", "function"), ("class-api", "class")]
)
def test_a_correct_submission_keeps_full_marks_among_hostile_neighbours(tmp_path, assignment, fmt):
    folder = tmp_path / "subs"
    folder.mkdir()
    for name in ("answers_from_the_stack.py", "patch_the_driver.py", "numpy_patch.py"):
        (folder / f"a_{name}").write_text((HOSTILE / name).read_text())
    fair = HOSTILE.parent / "submissions" / "fairness" / "dense_backward_segfault.py"
    (folder / "b_segfault.py").write_text(fair.read_text())
    (folder / "c_correct.py").write_text((HOSTILE.parent / "submissions" / fmt / "correct.py").read_text())
    results = grade_many(collect_submissions([folder]), load_assignment(assignment), workers=2)
    correct = next(r for r in results if r.name == "c_correct")
    assert correct.score == correct.max_score > 0, [(c.title, c.output) for c in correct.checks if not c.passed]
    assert correct.status == "graded"
    assert all(r.score < r.max_score for r in results if r.name != "c_correct")


def test_a_secret_seed_changes_every_probe_and_keeps_full_marks(monkeypatch):
    """With the public default seed anyone can rebuild the cases offline; BPROP_PROBE_SEED moves them."""
    part = load_assignment("class-api").parts[1]
    public = build_cases(part)
    monkeypatch.setenv("BPROP_PROBE_SEED", "987654321")
    secret = build_cases(part)
    for a, b in zip(public, secret):
        assert a.id == b.id and not np.array_equal(a.params["dense_1.W"], b.params["dense_1.W"])
        assert not np.array_equal(a.expected[-1].value, b.expected[-1].value)
    result = grade_submission(HOSTILE.parent / "submissions" / "class" / "correct.py", load_assignment("class-api"))
    assert result.score == result.max_score
    monkeypatch.setenv("BPROP_PROBE_SEED", "0x1f")
    with pytest.raises(ValueError, match="BPROP_PROBE_SEED: expected a non-negative integer, got '0x1f'"):
        build_cases(part)
