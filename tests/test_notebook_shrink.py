"""The counterexample (grading/shrink.py): for every buggy fixture it still fails, it is a few numbers
across, it is recomputable by hand, it never comes from a graded case; a correct submission gets none."""

from __future__ import annotations

import numpy as np
import pytest
from notebook_cells import FIXTURES, ROOT, assignment_of

from grading.checks import grade_submission
from grading.shrink import MAX_ACROSS, fmt
from oracles.compare import compare_arrays, tolerance

# Formats the shrinker covers (the function format's notebook fixes 784 inputs and 10 outputs).
SHRUNK = [f for f in FIXTURES if not f.startswith("function/") and not f.endswith("/correct.py")]
# The call raised at import: an exception, no numbers, so no small case says more than its message.
NO_NUMBERS = {"layer/crash_at_import.py"}


@pytest.fixture(scope="module")
def graded():
    cache = {}

    def get(rel):
        if rel not in cache:
            cache[rel] = grade_submission(ROOT / rel, assignment_of(rel))
        return cache[rel]

    return get


@pytest.mark.parametrize("rel", [f for f in FIXTURES if f.endswith("/correct.py")])
def test_a_correct_submission_never_gets_one(graded, rel):
    result = graded(rel)
    assert result.score == result.max_score
    assert result.counterexample is None


@pytest.mark.parametrize("rel", sorted(set(SHRUNK) - NO_NUMBERS))
def test_the_counterexample_still_fails_and_is_small(graded, rel):
    result = graded(rel)
    cx = result.counterexample
    assert cx is not None, f"{rel}: no counterexample for {result.first_divergence}"
    assert cx.check == result.first_finding.check
    assert cx.function == result.first_finding.key.function
    for name, value in [*cx.inputs, ("reference", cx.reference)]:
        assert max(value.shape, default=1) <= MAX_ACROSS, f"{name} is {value.shape} across"
    if cx.check != "stability":  # small integers (halves where a gradient is divided by a batch of 2)
        for name, value in cx.inputs:
            if name in ("lr", "y_pred"):  # the assignment's rate; probabilities (softmax of integer logits)
                continue
            assert np.array_equal(2 * value, np.round(2 * value)) and np.abs(value).max() <= 2, (name, value)
    if isinstance(cx.yours, np.ndarray) and cx.yours.shape == cx.reference.shape:
        row = compare_arrays(cx.tensor, cx.yours, cx.reference, tolerance("submission", "float64", "gradient"))
        assert not row.passed, f"{rel}: the counterexample agrees: {row.describe()}"
    else:
        assert "shape" in str(cx.yours)
    text = cx.text()
    assert cx.formula in text and fmt(cx.reference) in text


def _inputs(cx) -> dict:
    return dict(cx.inputs)


@pytest.mark.parametrize("rel", ["layer/transpose_dW.py", "layer/wrong_sign.py", "layer/dW_divided_twice.py"])
def test_the_formula_shown_recomputes_the_reference(graded, rel):
    cx = graded(rel).counterexample
    assert cx.formula == "x.T @ grad_out"
    i = _inputs(cx)
    np.testing.assert_array_equal(i["x"].T @ i["grad_out"], cx.reference)


def test_relu_counterexample_is_one_number(graded):
    cx = graded("layer/relu_missing_derivative.py").counterexample
    assert cx.reference.size == 1 and _inputs(cx)["x"].item() < 0  # the derivative's 0 is what is missing
    np.testing.assert_array_equal(cx.yours, _inputs(cx)["grad_out"])


def test_no_graded_case_is_shown(monkeypatch):
    """The candidates come from the shrinker's own public seed: the same counterexample whatever the
    (secret) probe seed, so nothing of a graded probe can be read off it."""
    rel = "layer/wrong_sign.py"
    texts = []
    for seed in ("1", "987654321"):
        monkeypatch.setenv("BPROP_PROBE_SEED", seed)
        texts.append(grade_submission(ROOT / rel, assignment_of(rel)).counterexample.text())
    assert texts[0] == texts[1]


def test_bprop_check_shows_it(graded):
    from grading.feedback import gradescope, terminal

    result = graded("layer/wrong_sign.py")
    assert "counterexample" in terminal([result]) and "x.T @ grad_out" in terminal([result])
    assert "counterexample" in gradescope(result)["output"]


def test_a_submission_that_spots_the_small_integers_cannot_change_the_verdict(tmp_path):
    """Dense.backward hangs on integer-valued inputs (the shrinker's) and is wrong otherwise: the shrink
    call is killed at the same wall limit as grading, the graded verdict stands, no counterexample."""
    import dataclasses

    from grading.sandbox import Limits

    source = (ROOT / "layer/wrong_sign.py").read_text()
    trap = "    def backward(self, input, grad_output):\n"
    assert source.count(trap) >= 1
    hostile = source.replace(
        "        grad_input = grad_output @ self.weights.T\n",
        "        if np.array_equal(input, np.round(input)):\n"
        "            while True:\n"
        "                pass\n"
        "        grad_input = grad_output @ self.weights.T\n",
    )
    assert hostile != source
    path = tmp_path / "spots_integers.py"
    path.write_text(hostile)
    limits = dataclasses.replace(Limits(), wall_s=8.0, cpu_s=8.0)
    result = grade_submission(path, assignment_of("layer/wrong_sign.py"), limits)
    plain = grade_submission(ROOT / "layer/wrong_sign.py", assignment_of("layer/wrong_sign.py"), limits)
    assert result.score == plain.score == 7.0
    assert result.first_divergence == plain.first_divergence
    assert result.counterexample is None and plain.counterexample is not None
