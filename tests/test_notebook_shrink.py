"""The counterexample (grading/shrink.py): for every buggy fixture it still fails, it is a few numbers
across, it is recomputable by hand, it never comes from a graded case; a correct submission gets none.

"A few numbers across": an array at most MAX_ACROSS (3) across is shown whole; a wider one (the
function format's 784 inputs and 10 outputs are fixed by its notebook) is shown sparsely, by the
entries that differ from the most common value with their indices, and then the display writes at
most MAX_SHOWN (8) numbers for that array (`shown_numbers`: each background value, one number when
constant, plus every listed entry) and stands for the whole array (`expand` of it gives it back)."""

from __future__ import annotations

import notebook_cells
import numpy as np
import pytest
from notebook_cells import ROOT, SHRINK_FIXTURES, assignment_of

from grading.checks import grade_submission
from grading.shrink import MAX_ACROSS, MAX_SHOWN, expand, show, shown_numbers, sparse
from oracles.compare import compare_arrays, tolerance

# Every buggy fixture, of every format (the function format's with sparse inputs).
SHRUNK = [f for f in SHRINK_FIXTURES if not f.endswith("/correct.py")]
# The call raised at import: an exception, no numbers, so no small case says more than its message.
NO_NUMBERS = {"layer/crash_at_import.py"}


@pytest.fixture(scope="module")
def graded():
    """grade_submission(ROOT / rel, assignment_of(rel)), graded once per process (notebook_cells.graded)."""
    return notebook_cells.graded


@pytest.mark.parametrize("rel", [f for f in SHRINK_FIXTURES if f.endswith("/correct.py")])
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
    text = cx.text()
    shown = [*cx.inputs, ("reference", cx.reference)]
    if isinstance(cx.yours, np.ndarray):
        shown.append(("yours", cx.yours))
    for name, value in shown:
        if max(value.shape, default=1) > MAX_ACROSS:  # sparse: a handful of numbers standing for it all
            assert rel.startswith("function/"), f"{name} is {value.shape} across"
            assert shown_numbers(value) <= MAX_SHOWN, f"{name}: {show(value)}"
            scale = float(np.abs(value[np.isfinite(value)]).max(initial=0.0))
            back = expand(value.shape, sparse(value))  # the display's precision: 6 digits, noise of 0 as 0
            np.testing.assert_allclose(back, value, rtol=1e-6, atol=1e-12 * scale, equal_nan=True)
        assert show(value) in text, name
    if cx.check != "stability":  # small integers (halves where a gradient is divided by a batch of 2)
        for name, value in cx.inputs:
            if name in ("lr", "y_pred") or (name == "y" and rel.startswith("function/")):
                continue  # the assignment's rate; probabilities (softmax of integer logits); a label 0..9
            assert np.array_equal(2 * value, np.round(2 * value)) and np.abs(value).max() <= 2, (name, value)
    if isinstance(cx.yours, np.ndarray) and cx.yours.shape == cx.reference.shape:
        row = compare_arrays(cx.tensor, cx.yours, cx.reference, tolerance("submission", "float64", "gradient"))
        assert not row.passed, f"{rel}: the counterexample agrees: {row.describe()}"
    else:
        assert "shape" in str(cx.yours)
    assert all(piece in text for piece in cx.formula.split("; "))


def _inputs(cx) -> dict:
    return dict(cx.inputs)


@pytest.mark.parametrize("rel", ["layer/transpose_dW.py", "layer/wrong_sign.py", "layer/dW_divided_twice.py"])
def test_the_formula_shown_recomputes_the_reference(graded, rel):
    cx = graded(rel).counterexample
    assert cx.formula == "x.T @ grad_out"
    i = _inputs(cx)
    np.testing.assert_array_equal(i["x"].T @ i["grad_out"], cx.reference)


@pytest.mark.parametrize(
    ("value", "text", "numbers"),
    [
        (np.eye(784, 1)[::-1] * 2, "784x1: [783, :] = [2], [k, :] = 0 elsewhere", 2),
        (np.array([[0.5] * 9 + [-1.0]]), "1x10: [0, 9] = -1, [0, k] = 0.5 elsewhere", 2),
        (np.array([[0, 3] + [0] * 8, [1] * 10]), "2x10: [0, 1] = 3, [0, k] = 0 elsewhere; [1, k] = 1 elsewhere", 3),
        (np.array([np.nan, 0, 0, 0]), "4: [0] = nan, [k] = 0 elsewhere", 2),
        (np.arange(4.0), "4: [0] = 0, [1] = 1, [2] = 2, [3] = 3", 4),
        (np.array([[1.0, 2.0]]), "[[1, 2]]", 2),
    ],
)
def test_the_sparse_display_stands_for_the_whole_array(value, text, numbers):
    assert show(value) == text
    assert shown_numbers(value) == numbers
    np.testing.assert_array_equal(expand(value.shape, sparse(value)) if max(value.shape) > 3 else value, value)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize(
    "rel",
    ["function/wrong_sign.py", "function/transpose.py", "function/missing_derivative.py", "function/seed_dot_out.py"],
)
def test_function_format_counterexample_is_sparse_and_recomputes(graded, rel):
    """The function format keeps 784 inputs and 10 outputs: a sample 0 except one or two pixels,
    weights[0] 0 outside their rows, hidden widths of 1..3, and the reference tensor shown is what
    the formula shown gives from the shown inputs (forward, softmax, backprop by hand in numpy)."""
    cx = graded(rel).counterexample
    assert all(piece in cx.text() for piece in cx.formula.split("; "))
    i = _inputs(cx)
    W, b, x, y = [i[f"weights[{k}]"] for k in range(3)], [i[f"biases[{k}]"] for k in range(3)], i["sample"], int(i["y"])
    assert x.shape == (784,) and W[0].shape[0] == 784 and W[2].shape[1] == 10
    pixels = np.flatnonzero(x)
    assert 1 <= pixels.size <= 2 and set(np.flatnonzero(np.abs(W[0]).sum(axis=1))) <= set(pixels)
    assert max(W[1].shape) <= 3
    a0 = x.reshape(1, 784)
    z1 = a0 @ W[0] + b[0]
    a1 = _sigmoid(z1)
    z2 = a1 @ W[1] + b[1]
    a2 = _sigmoid(z2)
    z3 = a2 @ W[2] + b[2]
    p = np.exp(z3 - z3.max()) / np.exp(z3 - z3.max()).sum()
    if cx.tensor == "loss":
        np.testing.assert_allclose(cx.reference, -np.log(p[0, y]), rtol=1e-12)
        return
    delta3 = p - np.eye(10)[y]
    delta2 = (delta3 @ W[2].T) * a2 * (1 - a2)
    by_hand = {"dense_3.dW": a2.T @ delta3, "dense_2.dW": a1.T @ delta2}[cx.tensor]
    np.testing.assert_allclose(cx.reference, by_hand, rtol=1e-12, atol=1e-15)


def test_unstable_softmax_counterexample_is_one_logit(graded):
    cx = graded("function/unstable_softmax.py").counterexample
    z = _inputs(cx)["z"]
    assert cx.check == "stability" and z.shape == (1, 10) and np.count_nonzero(z) == 1 and np.abs(z).max() == 1000
    np.testing.assert_array_equal(cx.reference, np.eye(10)[[int(np.argmax(z))]])  # exp(-1000) is 0 in float64
    assert np.isnan(cx.yours).any()
    assert "[k] = 0 elsewhere" in cx.text().replace("[0, k]", "[k]")


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
    limits = dataclasses.replace(Limits(), wall_s=4.0, cpu_s=4.0)  # the hang waits for it once
    result = grade_submission(path, assignment_of("layer/wrong_sign.py"), limits)
    plain = grade_submission(ROOT / "layer/wrong_sign.py", assignment_of("layer/wrong_sign.py"), limits)
    assert result.score == plain.score == 7.0
    assert result.first_divergence == plain.first_divergence
    assert result.counterexample is None and plain.counterexample is not None
    # said, not swallowed: the feedback names why no counterexample came
    assert any(n.startswith("no counterexample: Dense.backward on the small cases: timed out") for n in result.notes)
    assert not any(n.startswith("no counterexample") for n in plain.notes)


def test_a_function_submission_that_spots_the_sparse_sample_cannot_change_the_verdict(tmp_path):
    """train_one_sample hangs on a sample with at most two nonzero pixels (the shrinker's) and adds the
    gradient otherwise: the shrink call is killed at the same wall limit, the graded verdict stands."""
    import dataclasses

    from grading.sandbox import Limits

    rel = "function/wrong_sign.py"
    source = (ROOT / rel).read_text()
    trap = "def train_one_sample(sample, y, learning_rate=0.003):\n"
    assert source.count(trap) == 1
    hostile = source.replace(trap, trap + "    while np.count_nonzero(sample) <= 2:\n        pass\n")
    path = tmp_path / "spots_sparse.py"
    path.write_text(hostile)
    limits = dataclasses.replace(Limits(), wall_s=4.0, cpu_s=4.0)  # the hang waits for it once
    result = grade_submission(path, assignment_of(rel), limits)
    plain = grade_submission(ROOT / rel, assignment_of(rel), limits)
    assert result.score == plain.score == 4.0
    assert result.first_divergence == plain.first_divergence
    assert result.counterexample is None and plain.counterexample is not None
    assert any(n.startswith("no counterexample: train_one_sample on the small cases:") for n in result.notes)
