"""Losses against their formulas, written out here element by element, and against finite differences.

    value, dL/dpred = make_loss(name, reduction).value_and_grad(pred, target)

Classification losses take integer labels and divide by the batch for "mean"; element-wise losses
(mse, l1, bce) divide by the number of elements. Softmax cross-entropy from logits is stable for
logits of +-1e4 (checked under strict floating point: no overflow, no invalid operation, no warning).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from helpers import assert_close as _assert_close
from helpers import strict_fp

from oracles.numeric import numerical_gradient
from reference.errors import NonFiniteError
from reference.layers import Softmax, softmax
from reference.losses import LOSSES, make_loss

CLASSIFICATION = ("softmax_cross_entropy", "cross_entropy", "nll", "multiclass_hinge")
ELEMENTWISE = ("mse", "l1", "bce")
REDUCTIONS = ("mean", "sum")


assert_close = functools.partial(_assert_close, names=("loss", "formula"), check_dtype=False)


def example(name: str, batch: int = 5, n: int = 4, seed: int = 0, dtype="float64"):
    """Predictions in the loss's domain (logits, probability rows, (0, 1) values) and targets."""
    rng = np.random.default_rng(seed)
    if name in ("softmax_cross_entropy", "multiclass_hinge"):
        pred = rng.normal(0, 2, (batch, n))
    elif name in ("cross_entropy", "nll"):
        pred = softmax(rng.normal(0, 1, (batch, n)))
    elif name == "bce":
        pred = rng.uniform(0.05, 0.95, (batch, n))
    else:
        pred = rng.normal(0, 1, (batch, n))
    if name in CLASSIFICATION:
        return pred.astype(dtype), rng.integers(0, n, batch)
    target = rng.uniform(0, 1, (batch, n)) if name == "bce" else rng.normal(0, 1, (batch, n))
    return pred.astype(dtype), target.astype(dtype)


def by_formula(name: str, pred: np.ndarray, target: np.ndarray) -> float:
    """The summed loss, one sample (or element) at a time, with math.* on Python floats."""
    if name in CLASSIFICATION:
        total = 0.0
        for row, y in zip(pred.tolist(), target.tolist()):
            if name == "softmax_cross_entropy":
                m = max(row)
                total += m + math.log(sum(math.exp(z - m) for z in row)) - row[y]
            elif name == "multiclass_hinge":
                total += sum(max(0.0, z - row[y] + 1) for j, z in enumerate(row) if j != y)
            else:
                total += -math.log(min(max(row[y], 1e-7), 1 - 1e-7) if name == "nll" else row[y])
        return total
    p, t = pred.ravel().tolist(), target.ravel().tolist()
    if name == "mse":
        return sum((a - b) ** 2 for a, b in zip(p, t))
    if name == "l1":
        return sum(abs(a - b) for a, b in zip(p, t))
    return -sum(b * math.log(a) + (1 - b) * math.log(1 - a) for a, b in zip(p, t))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_by_formula(name, reduction):
    pred, target = example(name)
    value = make_loss(name, reduction).value(pred, target)
    divisor = 1 if reduction == "sum" else (pred.shape[0] if name in CLASSIFICATION else pred.size)
    assert_close("loss", value, by_formula(name, pred, target) / divisor, quantity="loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("batch", [1, 7])
def test_gradient_matches_finite_differences(name, reduction, batch):
    pred, target = example(name, batch=batch, seed=batch)
    loss = make_loss(name, reduction)
    _, grad = loss.value_and_grad(pred, target)
    probe = pred.copy()
    numeric = numerical_gradient(lambda: float(loss.value(probe, target)), probe)
    assert_close("dL/dpred", grad, numeric, oracle="numeric")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sum_is_mean_times_the_divisor(name):
    pred, target = example(name, batch=6, n=3)
    mean_v, mean_g = make_loss(name, "mean").value_and_grad(pred, target)
    sum_v, sum_g = make_loss(name, "sum").value_and_grad(pred, target)
    d = 6 if name in CLASSIFICATION else 18
    assert_close("loss", sum_v, d * mean_v, quantity="loss")
    assert_close("gradient", sum_g, d * mean_g)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_in_float32_out(name, reduction):
    pred, target = example(name, dtype="float32")
    value, grad = make_loss(name, reduction).value_and_grad(pred, target)
    assert np.asarray(value).dtype == np.float32 and np.ndim(value) == 0
    assert grad.dtype == np.float32 and grad.shape == pred.shape


# Softmax cross-entropy at the extremes ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_cross_entropy_is_stable_for_logits_of_1e4(dtype, reduction):
    """logsumexp(z) - z_y with z = (1e4, -1e4, 0): 0 for y = 0, 2e4 for y = 1, 1e4 for y = 2."""
    logits = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype)
    labels = np.array([0, 1, 2, 1])
    with strict_fp():
        value, grad = make_loss("softmax_cross_entropy", reduction).value_and_grad(logits, labels)
    d = 4 if reduction == "mean" else 1
    per_sample = [0.0, 2e4, 1e4, math.log(3)]
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert_close("loss", value, sum(per_sample) / d, dtype, "loss")
    # softmax(z) - onehot(y): (1, 0, 0) - e_y, and 1/3 - e_1 for the flat row
    expected = np.array([[0, 0, 0], [1, -1, 0], [1, 0, -1], [1 / 3, -2 / 3, 1 / 3]]) / d
    assert_close("gradient", grad, expected, dtype)


def test_softmax_cross_entropy_is_shift_invariant():
    """Adding a constant to a row of logits changes neither the loss nor the gradient; rows sum to 0."""
    logits, labels = example("softmax_cross_entropy", batch=6)
    loss = make_loss("softmax_cross_entropy")
    v0, g0 = loss.value_and_grad(logits, labels)
    v1, g1 = loss.value_and_grad(logits + np.arange(6)[:, None] * 1e3, labels)
    assert_close("loss", v1, v0, quantity="loss")
    assert_close("gradient", g1, g0)
    assert_close("row sums", g0.sum(axis=1), np.zeros(6))


def test_cross_entropy_of_softmax_is_softmax_cross_entropy():
    """cross_entropy(softmax(z)) = softmax_cross_entropy(z), and the chain rule through the Softmax layer agrees."""
    logits, labels = example("softmax_cross_entropy", batch=5)
    probs, cache = Softmax("softmax_1").forward(logits)
    ce_value, ce_grad = make_loss("cross_entropy").value_and_grad(probs, labels)
    sce_value, sce_grad = make_loss("softmax_cross_entropy").value_and_grad(logits, labels)
    assert_close("loss", ce_value, sce_value, quantity="loss")
    assert_close("gradient", Softmax("softmax_1").backward(ce_grad, cache)[0], sce_grad)


# The multiclass hinge (CS231n's svm_loss) ---------------------------------------------------------


def svm_loss_loops(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """CS231n's svm_loss_naive on scores: two loops, margin 1, counting margins > 0; mean over N."""
    n, c = scores.shape
    loss, dscores = 0.0, np.zeros((n, c))
    for i in range(n):
        for j in range(c):
            if j == labels[i]:
                continue
            margin = scores[i, j] - scores[i, labels[i]] + 1
            if margin > 0:
                loss += margin
                dscores[i, j] += 1
                dscores[i, labels[i]] -= 1
    return loss / n, dscores / n


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_multiclass_hinge_is_cs231n_svm_loss(dtype):
    scores, labels = example("multiclass_hinge", batch=9, n=5, seed=3, dtype=dtype)
    value, grad = make_loss("multiclass_hinge").value_and_grad(scores, labels)
    want_value, want_grad = svm_loss_loops(scores.astype(np.float64), labels)
    assert_close("loss", value, want_value, dtype, "loss")
    assert_close("gradient", grad, want_grad, dtype)
    assert_close("row sums", grad.sum(axis=1), np.zeros(9), dtype)  # each +1 has its -1 on the label


def test_multiclass_hinge_at_the_kink_counts_only_positive_margins():
    """A margin exactly 0 contributes nothing to the gradient (CS231n's `margins > 0`), one just above counts."""
    scores = np.array([[0.0, 1.0, -5.0], [0.0, 1.0, 0.5]])  # row 0: margin of class 0 is 0 - 1 + 1 = 0 exactly
    value, grad = make_loss("multiclass_hinge", "sum").value_and_grad(scores, np.array([1, 1]))
    assert value == 0.5  # row 0: 0 + 0; row 1: 0 + (0.5 - 1 + 1)
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0], [0.0, -1.0, 1.0]])


def test_multiclass_hinge_leaves_out_the_correct_class():
    """Equal scores: every wrong class has margin 1, so L_i = C - 1 (counting the label's own margin gives C)."""
    value, grad = make_loss("multiclass_hinge").value_and_grad(np.zeros((4, 5)), np.array([0, 1, 2, 4]))
    assert value == 4.0
    np.testing.assert_array_equal(grad[np.arange(4), [0, 1, 2, 4]], -4 / 4)


def test_multiclass_hinge_is_zero_beyond_the_margin():
    scores = np.array([[5.0, 3.9, 0.0], [-2.0, -3.5, 3.0]])
    value, grad = make_loss("multiclass_hinge").value_and_grad(scores, np.array([0, 2]))
    assert value == 0.0 and not grad.any()


# Clipping and subgradients ---------------------------------------------------------------------


def test_nll_clips_probabilities_to_1e7():
    """-log clip(p_y, 1e-7, 1 - 1e-7); the gradient is 0 where the clip is active."""
    probs = np.array([[1e-12, 1.0 - 1e-12], [1.0, 0.0], [0.3, 0.7]])
    labels = np.array([0, 0, 1])
    value, grad = make_loss("nll", "sum").value_and_grad(probs, labels)
    assert_close("loss", value, -math.log(1e-7) - math.log(1 - 1e-7) - math.log(0.7), quantity="loss")
    np.testing.assert_array_equal(grad[:2], 0.0)
    assert_close("gradient", grad[2], [0.0, -1 / 0.7])


def test_l1_subgradient_is_zero_where_prediction_equals_target():
    pred = np.array([[1.0, 2.0, 3.0]])
    target = np.array([[1.0, 1.0, 4.0]])
    _, grad = make_loss("l1", "sum").value_and_grad(pred, target)
    np.testing.assert_array_equal(grad, [[0.0, 1.0, -1.0]])


def test_cross_entropy_gradient_is_only_on_the_label():
    probs = softmax(np.random.default_rng(1).normal(size=(4, 5)))
    labels = np.array([4, 0, 2, 2])
    _, grad = make_loss("cross_entropy", "sum").value_and_grad(probs, labels)
    expected = np.zeros_like(probs)
    expected[np.arange(4), labels] = -1 / probs[np.arange(4), labels]
    assert_close("gradient", grad, expected)


# Outside the domain: a clear error, never inf or NaN -------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_of_a_zero_probability_is_an_error(dtype):
    """-log 0 is infinite and its gradient -1/0: the loss says so instead of returning inf and NaN."""
    probs = softmax(np.array([[0.0, 200.0, 0.0], [1.0, 2.0, 3.0]]) * (1 if dtype == "float32" else 4)).astype(dtype)
    assert probs[0, 0] == 0.0  # float32 softmax underflows at a logit gap of ~104, float64 at ~745
    with pytest.raises(
        NonFiniteError, match=r"cross_entropy: expected the label's probability > 0, got 0\.0 at row 0 \(label 0\)"
    ):
        make_loss("cross_entropy").value_and_grad(probs, np.array([0, 2]))


@pytest.mark.parametrize("p", [0.0, 1.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_of_a_saturated_probability_is_an_error(p, dtype):
    """A sigmoid saturates to exactly 1.0 at x > 16.6 in float32 (36.7 in float64); log(1 - p) is then -inf."""
    probs = np.array([[0.5, 0.25], [0.75, p]], dtype)
    with pytest.raises(NonFiniteError, match=rf"bce: expected probabilities in \(0, 1\), got {p} at index \(1, 1\)"):
        make_loss("bce").value_and_grad(probs, np.full((2, 2), 0.5, dtype))


def test_float32_sigmoid_saturates_where_the_bce_error_says():
    from reference.layers import Sigmoid

    s, _ = Sigmoid("sigmoid_1").forward(np.array([[16.0, 17.0]], np.float32))
    assert s[0, 0] < 1.0 and s[0, 1] == 1.0
