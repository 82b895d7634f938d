"""Layer-level unit tests: each layer against its defining formula, written out independently here.

    Softmax    backward == the explicit Jacobian (diag(s) - s s^T) applied row by row
    Sigmoid    stable and warning-free for |x| up to 1e4, in both dtypes
    Dropout    train/eval, a supplied mask is used, the seeded generator repeats, inverted scaling;
               CS231n's keep probability (divides by keep itself) and its seeded mask, global state untouched
    BatchNorm  train/eval, running statistics in the torch, keras, cs231n and mytorch conventions
    LayerNorm  per-sample statistics, forward by loops, backward by the chain rule, train == eval
    dtypes     a float32 network stays float32: every tensor of every layer and loss's trace

Floating-point strictness: pyproject turns RuntimeWarnings attributed to reference.* into errors.
That catches numpy's ufunc warnings (overflow, divide, invalid: numpy attributes them to the Python
line that called the ufunc, inside reference/), but NOT warnings numpy issues from its own Python
code (np.mean of an empty slice is attributed to numpy/_core/fromnumeric.py). So the stability
tests run under `strict_fp()`: np.errstate raising on overflow, divide and invalid, and every warning
an error. Underflow is left alone on purpose: exp(-1e4) == 0 is the right answer of a stable sigmoid.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES, make_batch
from helpers import assert_close as _assert_close
from helpers import strict_fp

from oracles.numeric import draw_masks
from reference.errors import SpecError
from reference.layers import (
    BatchNorm,
    Dense,
    Dropout,
    LayerNorm,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    cs231n_dropout_mask,
    softmax,
)
from reference.network import Network, init_params
from reference.spec import LayerSpec, ModelSpec

RNG = np.random.default_rng


# The twin policy (the same function computed another way); dtypes have their own tests here.
assert_close = functools.partial(_assert_close, names=("layer", "formula"), check_dtype=False)


# The warnings filter itself --------------------------------------------------------------------


def test_pyproject_turns_numpy_ufunc_warnings_in_reference_into_errors():
    """inf - inf inside reference.layers.softmax: numpy warns 'invalid value', pytest raises it."""
    with pytest.raises(RuntimeWarning, match="invalid value"):
        softmax(np.array([[np.inf, 0.0]]))


# Dense, ReLU, LeakyReLU, Tanh ------------------------------------------------------------------


def test_dense_forward_and_backward():
    rng = RNG(0)
    x, W, b, g = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=(4, 2))
    layer = Dense("dense_1", W, b)
    out, cache = layer.forward(x)
    expected = np.array([[sum(x[i, k] * W[k, j] for k in range(3)) + b[j] for j in range(2)] for i in range(4)])
    assert_close("out", out, expected, quantity="forward")
    dx, grads = layer.backward(g, cache)
    assert_close("dW", grads["W"], sum(np.outer(x[i], g[i]) for i in range(4)))
    assert_close("db", grads["b"], g.sum(axis=0))
    assert_close("dx", dx, np.array([[g[i] @ W[k] for k in range(3)] for i in range(4)]))


@pytest.mark.parametrize(
    ("layer", "f", "df"),
    [
        (ReLU("relu_1"), lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0),
        (LeakyReLU("leaky_relu_1", 0.1), lambda x: x if x > 0 else 0.1 * x, lambda x: 1.0 if x > 0 else 0.1),
        (Tanh("tanh_1"), np.tanh, lambda x: 1 / np.cosh(x) ** 2),
        (Sigmoid("sigmoid_1"), lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    ],
    ids=["relu", "leaky_relu", "tanh", "sigmoid"],
)
def test_activation_elementwise(layer, f, df):
    """out = f(x) and dL/dx = g f'(x), element by element, at 0 and around it."""
    x = np.array([[-3.0, -0.5, 0.0, 0.5, 3.0], [-1e-3, 1e-3, 2.0, -2.0, 0.0]])
    g = RNG(1).normal(size=x.shape)
    out, cache = layer.forward(x)
    dx, grads = layer.backward(g, cache)
    assert grads == {}
    assert_close("out", out, np.vectorize(f)(x), quantity="forward")
    assert_close("grad_in", dx, g * np.vectorize(df)(x))


def test_relu_subgradient_at_zero_is_zero():
    """torch and keras both use 0 at x == 0; so must the reference, or the twins disagree there."""
    _, cache = ReLU("relu_1").forward(np.zeros((1, 3)))
    assert np.all(ReLU("relu_1").backward(np.ones((1, 3)), cache)[0] == 0)


# Softmax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["logits-1", "logits-30"])
def test_softmax_backward_is_the_explicit_jacobian(scale):
    """dL/dx_row = J_row^T g_row, J = diag(s) - s s^T, built explicitly per row."""
    rng = RNG(2)
    x, g = scale * rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    layer = Softmax("softmax_1")
    s, cache = layer.forward(x)
    dx, _ = layer.backward(g, cache)
    for i in range(len(x)):
        e = np.exp(x[i] - x[i].max())
        s_i = e / e.sum()
        J = np.diag(s_i) - np.outer(s_i, s_i)  # (5, 5): J[j, k] = ds_j / dx_k
        assert_close(f"softmax row {i}", s[i], s_i, quantity="forward")
        assert_close(f"grad_in row {i}", dx[i], J.T @ g[i])


def test_softmax_of_extreme_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4 - 1.0, -1e4]])
    with strict_fp():
        s = softmax(x)
    np.testing.assert_array_equal(s[0], [1.0, 0.0, 0.0])
    assert_close("uniform row", s[1], np.full(3, 1 / 3), quantity="forward")
    assert_close("two-way row", s[2], [1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0)), 0.0], quantity="forward")


# Sigmoid ---------------------------------------------------------------------------------------

EXTREMES = np.array([[-1e4, -1e3, -745.0, -710.0, -50.0, -1.0, 0.0, 1.0, 50.0, 710.0, 745.0, 1e3, 1e4]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_stable_up_to_1e4(dtype):
    x = EXTREMES.astype(dtype)
    layer = Sigmoid("sigmoid_1")
    with strict_fp():
        s, cache = layer.forward(x)
        dx, _ = layer.backward(np.ones_like(x), cache)
    assert s.dtype == dx.dtype == np.dtype(dtype)
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) >= 0), "sigmoid must be monotone in [0, 1]"
    assert s[0, 0] == 0.0 and s[0, -1] == 1.0 and s[0, 6] == 0.5
    assert np.all(np.isfinite(dx)) and np.all(dx >= 0)
    # 1/(1+exp(-x)) in float64 where it does not overflow, 0.5 (1 + tanh(x/2)) everywhere: same function
    assert_close("sigmoid", s, 0.5 * (1 + np.tanh(x.astype(np.float64) / 2)), dtype, "forward")
    # symmetry: s(-x) = 1 - s(x)
    assert_close("symmetry", s[0, ::-1], 1 - s[0], dtype, "forward")


# Dropout ---------------------------------------------------------------------------------------


def test_dropout_eval_is_the_identity():
    layer = Dropout("dropout_1", 0.4, RNG(0))
    x = RNG(1).normal(size=(5, 8))
    out, cache = layer.forward(x, train=False)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(layer.backward(x, cache)[0], x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_uses_the_supplied_mask_with_inverted_scaling(dtype):
    """out = x * mask / (1 - rate), dL/dx = g * mask / (1 - rate)."""
    rng = RNG(3)
    x, g = rng.normal(size=(5, 8)).astype(dtype), rng.normal(size=(5, 8)).astype(dtype)
    mask = (rng.random((5, 8)) > 0.5).astype(dtype)
    layer = Dropout("dropout_1", 0.4, RNG(0))
    out, cache = layer.forward(x, train=True, mask=mask)
    dx, _ = layer.backward(g, cache)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    keep = np.float64(1 - 0.4)
    assert_close("out", out, x * mask / keep, dtype, "forward")
    assert_close("grad_in", dx, g * mask / keep, dtype)
    assert np.all(out[mask == 0] == 0)


def test_dropout_rate_zero_is_the_identity_in_training():
    x = RNG(1).normal(size=(5, 8))
    out, _ = Dropout("dropout_1", 0.0, RNG(0)).forward(x, train=True)
    np.testing.assert_array_equal(out, x)


def test_dropout_masks_repeat_for_the_same_seed():
    spec = LAYER_CASES["dropout"]
    x, _ = make_batch(spec, 7, seed=0)
    masks = [draw_masks(Network(spec, seed=s), x)["dropout_1"] for s in (5, 5, 6)]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])
    # the seeded stream is a plain Generator: the layer's mask is `random >= rate` from default_rng([seed, 1])
    np.testing.assert_array_equal(masks[0], (RNG([5, 1]).random((7, 5)) >= 0.4).astype(np.float64))


def test_dropout_trace_without_masks_repeats_for_the_same_seed():
    spec = LAYER_CASES["dropout"]
    x, y = make_batch(spec, 7, seed=0)
    a, b = Network(spec, seed=5).trace(x, y), Network(spec, seed=5).trace(x, y)
    np.testing.assert_array_equal(a["dropout_1"].out, b["dropout_1"].out)


def test_dropout_keep_rate_and_expectation():
    """P(keep) = 1 - rate and E[out] = x, within 5 binomial standard deviations."""
    n, rate = 200_000, 0.3
    layer = Dropout("dropout_1", rate, RNG(7))
    out, _ = layer.forward(np.ones((1, n)), train=True)
    kept = (out != 0).mean()
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < 5 * sd
    assert abs(out.mean() - 1.0) < 5 * sd / (1 - rate)
    assert set(np.unique(out)) == {0.0, 1 / (1 - rate)}


@pytest.mark.parametrize("rate", [0.3, 0.4, 0.7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_rate_form_is_unchanged_by_the_keep_form(rate, dtype):
    """The rate form, bit for bit as before the keep form: x * (mask / dtype(1 - rate)), mask `u >= rate`."""
    x = RNG(2).normal(size=(6, 9)).astype(dtype)
    layer = Dropout("dropout_1", rate, RNG(5))
    out, _ = layer.forward(x, train=True)
    mask = (RNG(5).random((6, 9)) >= rate).astype(dtype)
    np.testing.assert_array_equal(out, x * (mask / np.dtype(dtype).type(1 - rate)))
    assert layer.keep is None and layer.keep_prob == 1 - rate


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_keep_divides_by_keep_itself(dtype):
    """keep p: out = x * mask / p with p rounded once, bit for bit; 1 - (1 - 0.3) would be another divisor."""
    rng = RNG(3)
    x, g = rng.normal(size=(5, 8)).astype(dtype), rng.normal(size=(5, 8)).astype(dtype)
    mask = (rng.random((5, 8)) < 0.3).astype(dtype)
    layer = Dropout("dropout_1", None, RNG(0), keep=0.3)
    assert layer.keep_prob == 0.3 and layer.rate == 1 - 0.3
    out, cache = layer.forward(x, train=True, mask=mask)
    dx, _ = layer.backward(g, cache)
    p = np.dtype(dtype).type(0.3)
    np.testing.assert_array_equal(out, x * (mask / p))
    np.testing.assert_array_equal(dx, g * (mask / p))
    assert 1 - (1 - 0.3) != 0.3  # why the divisor is keep, not 1 - rate
    np.testing.assert_array_equal(layer.forward(x, train=False)[0], x)


def test_dropout_keep_draws_rand_below_keep():
    """The keep form's own draw is CS231n's comparison, `random < p`: P(keep) = p (5 binomial sds)."""
    layer = Dropout("dropout_1", None, RNG(7), keep=0.3)
    mask = layer.draw_mask((4, 6), np.float64)
    np.testing.assert_array_equal(mask, (RNG(7).random((4, 6)) < 0.3).astype(np.float64))
    n = 200_000
    kept = (layer.forward(np.ones((1, n)), train=True)[0] != 0).mean()
    assert abs(kept - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)


def test_dropout_keep_one_is_the_identity_and_bad_keeps_are_named():
    x = RNG(1).normal(size=(3, 4))
    np.testing.assert_array_equal(Dropout("dropout_1", None, RNG(0), keep=1.0).forward(x, train=True)[0], x)
    with pytest.raises(SpecError, match=r"^dropout_1: keep must be a probability in \(0, 1\], got 0$"):
        Dropout("dropout_1", None, RNG(0), keep=0)
    with pytest.raises(SpecError, match=r"^dropout_1: keep must be a probability in \(0, 1\], got 1.5$"):
        Dropout("dropout_1", None, RNG(0), keep=1.5)
    with pytest.raises(SpecError, match=r"^dropout_1: rate 0.5 and keep 0.3 disagree \(rate = 1 - keep\); give one$"):
        Dropout("dropout_1", 0.5, RNG(0), keep=0.3)
    with pytest.raises(SpecError, match=r"^dropout_1: expected a rate or a keep probability, got neither$"):
        Dropout("dropout_1", None, RNG(0))
    Dropout("dropout_1", 0.7, RNG(0), keep=0.3)  # 0.7 and 1 - 0.3 agree to rounding: accepted
    with pytest.raises(SpecError, match=r"layers\[0\] \(dropout\) keep must be in \(0, 1\], got 1.5"):
        ModelSpec(n_in=3, layers=(LayerSpec("dropout", keep=1.5), LayerSpec("dense", units=2)))


def test_network_dropout_keep_spec_uses_keep():
    spec = LAYER_CASES["dropout_keep"]
    layer = Network(spec).layers[2]
    assert isinstance(layer, Dropout) and layer.keep == 0.3 and layer.keep_prob == 0.3


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5), (7,)], ids=str)
@pytest.mark.parametrize("p", [0.3, 0.5, 0.75])
def test_cs231n_dropout_mask_is_the_skeletons_draw_and_leaves_numpy_alone(shape, p):
    """np.random.seed(seed); mask = np.random.rand(*shape) < p: the same mask, the global state unchanged."""
    seed = 123
    saved = np.random.get_state()  # noqa: NPY002 - the global state is what this test is about
    try:
        np.random.seed(seed)  # noqa: NPY002
        skeleton = np.random.rand(*shape) < p  # noqa: NPY002 - the course's dropout_forward, verbatim
        np.random.seed(99)  # noqa: NPY002 - a caller's own global stream, mid-way
        np.random.rand(3)  # noqa: NPY002
        before = np.random.get_state()  # noqa: NPY002
        mask = cs231n_dropout_mask(shape, p, seed, np.float32)
        after = np.random.get_state()  # noqa: NPY002
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    assert mask.dtype == np.float32 and mask.shape == shape
    np.testing.assert_array_equal(mask, skeleton.astype(np.float32))
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert not np.array_equal(cs231n_dropout_mask(shape, p, seed + 1, np.float32), mask) or mask.size < 8


# BatchNorm -------------------------------------------------------------------------------------


def batch_stats(x: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance, by the textbook sums."""
    n = x.shape[0]
    mu = x.sum(axis=0) / n
    return mu, ((x - mu) ** 2).sum(axis=0) / (n - ddof)


@pytest.mark.parametrize(
    ("convention", "momentum", "eps", "ddof", "new_weight", "var0"),
    [
        ("torch", 0.1, 1e-5, 1, lambda m: m, 1.0),
        ("keras", 0.99, 1e-3, 0, lambda m: 1 - m, 1.0),
        ("cs231n", 0.9, 1e-5, 0, lambda m: 1 - m, 0.0),
        ("mytorch", 0.9, 1e-8, 0, lambda m: 1 - m, 1.0),
    ],
    ids=["torch", "keras", "cs231n", "mytorch"],
)
def test_batchnorm_running_statistics_over_several_steps(convention, momentum, eps, ddof, new_weight, var0):
    """torch: r <- (1 - 0.1) r + 0.1 stat, unbiased variance; keras: r <- 0.99 r + 0.01 stat, biased;
    cs231n and mytorch: r <- 0.9 r + 0.1 stat, biased, from var 0 (cs231n) or 1 (mytorch)."""
    layer = BatchNorm("batchnorm_1", 4, np.float64, convention=convention)
    assert (layer.momentum, layer.eps) == (momentum, eps)
    mean, var = np.zeros(4), np.full(4, var0)
    np.testing.assert_array_equal(layer.state["running_var"], var)
    rng = RNG(4)
    for step in range(4):
        x = rng.normal(2.0 + step, 1.0 + step, size=(6 + step, 4))
        out, _ = layer.forward(x, train=True)
        mu, v = batch_stats(x, ddof=0)
        assert_close(f"train out, step {step}", out, (x - mu) / np.sqrt(v + eps), quantity="forward")
        mu, v = batch_stats(x, ddof)
        w = new_weight(momentum)
        mean, var = (1 - w) * mean + w * mu, (1 - w) * var + w * v
        assert_close(f"running mean, step {step}", layer.state["running_mean"], mean, quantity="parameters")
        assert_close(f"running var, step {step}", layer.state["running_var"], var, quantity="parameters")
    x = rng.normal(size=(3, 4))
    out, _ = layer.forward(x, train=False)
    assert_close("eval out", out, (x - mean) / np.sqrt(var + eps), quantity="forward")


# Two steps by hand: x1 = [[1, 2], [3, 6]] (mean [2, 4], biased var [1, 4], unbiased [2, 8]), then
# x2 = [[0, 0], [2, 4]] (mean [1, 2], the same variances); the eval input [[1, 1]].
HAND_STATS = {
    # cs231n: 0.9 r + 0.1 s from zeros: mean 0.2, 0.4 -> 0.28, 0.56; var 0.1, 0.4 -> 0.19, 0.76
    "cs231n": ([0.28, 0.56], [0.19, 0.76], 1e-5),
    # mytorch: the same from var ones: var 1.0, 1.3 -> 1.0, 1.57
    "mytorch": ([0.28, 0.56], [1.0, 1.57], 1e-8),
    # torch: (1 - 0.1) r + 0.1 s, the unbiased variance: mean as cs231n's; var 1.1, 1.7 -> 1.19, 2.33
    "torch": ([0.28, 0.56], [1.19, 2.33], 1e-5),
    # keras: 0.99 r + 0.01 s: mean 0.02, 0.04 -> 0.0298, 0.0596; var 1.0, 1.03 -> 1.0, 1.0597
    "keras": ([0.0298, 0.0596], [1.0, 1.0597], 1e-3),
}


@pytest.mark.parametrize("convention", sorted(HAND_STATS))
def test_batchnorm_running_statistics_by_hand(convention):
    layer = BatchNorm("batchnorm_1", 2, np.float64, convention=convention)
    for x in ([[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [2.0, 4.0]]):
        layer.forward(np.array(x), train=True)
    mean, var, eps = HAND_STATS[convention]
    np.testing.assert_allclose(layer.state["running_mean"], mean, rtol=1e-14)
    np.testing.assert_allclose(layer.state["running_var"], var, rtol=1e-14)
    out, _ = layer.forward(np.array([[1.0, 1.0]]), train=False)
    np.testing.assert_allclose(out, [(1 - np.array(mean)) / np.sqrt(np.array(var) + eps)], rtol=1e-14)


def test_batchnorm_eval_leaves_the_running_statistics_alone():
    layer = BatchNorm("batchnorm_1", 4, np.float64)
    layer.forward(RNG(0).normal(size=(5, 4)), train=True)
    before = {k: v.copy() for k, v in layer.state.items()}
    layer.forward(RNG(1).normal(size=(1, 4)), train=False)  # a batch of one is fine in eval mode
    for k, v in before.items():
        np.testing.assert_array_equal(layer.state[k], v, err_msg=k)


def test_batchnorm_affine_parameters_and_spec_overrides():
    """out = gamma x_hat + beta; a LayerSpec's momentum and eps override the convention's defaults."""
    spec = ModelSpec(
        n_in=3, layers=(LayerSpec("batchnorm", momentum=0.5, eps=0.25, convention="keras"), LayerSpec("dense", units=2))
    )
    net = Network(spec)
    bn = net.layers[0]
    assert (bn.momentum, bn.eps) == (0.5, 0.25)
    bn.params["gamma"][...] = [2.0, 3.0, 4.0]
    bn.params["beta"][...] = [-1.0, 0.0, 1.0]
    x = RNG(2).normal(size=(5, 3))
    out, _ = bn.forward(x, train=True)
    mu, v = batch_stats(x, ddof=0)
    assert_close(
        "out", out, np.array([2.0, 3.0, 4.0]) * (x - mu) / np.sqrt(v + 0.25) + [-1.0, 0.0, 1.0], quantity="forward"
    )
    assert_close("running mean", bn.state["running_mean"], 0.5 * mu, quantity="parameters")


def test_batchnorm_backward_by_its_formula():
    """dL/dx = gamma / (N sigma) (N g - sum g - x_hat sum(g x_hat)), dgamma = sum g x_hat, dbeta = sum g."""
    rng = RNG(5)
    x, g = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    layer = BatchNorm("batchnorm_1", 3, np.float64)
    layer.params["gamma"][...] = [0.5, 1.5, -2.0]
    _, cache = layer.forward(x, train=True)
    dx, grads = layer.backward(g, cache)
    mu, v = batch_stats(x, ddof=0)
    sigma = np.sqrt(v + 1e-5)
    x_hat = (x - mu) / sigma
    assert_close("dgamma", grads["gamma"], (g * x_hat).sum(axis=0))
    assert_close("dbeta", grads["beta"], g.sum(axis=0))
    # the same dL/dx from the chain rule through mu and var, term by term
    gamma = layer.params["gamma"]
    dxhat = g * gamma
    dvar = (dxhat * (x - mu) * -0.5 * sigma**-3).sum(axis=0)
    dmu = (-dxhat / sigma).sum(axis=0) + dvar * (-2 * (x - mu)).mean(axis=0)
    assert_close("grad_in", dx, dxhat / sigma + dvar * 2 * (x - mu) / 7 + dmu / 7)


# LayerNorm -------------------------------------------------------------------------------------


def test_layernorm_forward_by_loops_and_train_equals_eval():
    """out[i, j] = gamma_j (x_ij - mean_i) / sqrt(var_i + eps) + beta_j, var biased; a batch of 1 is fine."""
    rng = RNG(6)
    x = rng.normal(2.0, 3.0, size=(4, 5))
    layer = LayerNorm("layernorm_1", 5, np.float64, eps=1e-3)
    layer.params["gamma"][...] = rng.normal(size=5)
    layer.params["beta"][...] = rng.normal(size=5)
    gamma, beta = layer.params["gamma"].tolist(), layer.params["beta"].tolist()
    expected = []
    for row in x.tolist():
        mean = sum(row) / 5
        var = sum((v - mean) ** 2 for v in row) / 5
        expected.append([gamma[j] * (row[j] - mean) / math.sqrt(var + 1e-3) + beta[j] for j in range(5)])
    out, _ = layer.forward(x, train=True)
    assert_close("out", out, np.array(expected), quantity="forward")
    np.testing.assert_array_equal(layer.forward(x, train=False)[0], out)
    np.testing.assert_array_equal(layer.forward(x[2:3])[0], out[2:3])  # per sample: rows are independent
    assert not hasattr(layer, "state")  # no running statistics


def test_layernorm_backward_by_the_chain_rule():
    """dL/dx through mu and var term by term (the batchnorm derivation over the feature axis)."""
    rng = RNG(8)
    x, g = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    layer = LayerNorm("layernorm_1", 4, np.float64)
    layer.params["gamma"][...] = [0.5, 1.5, -2.0, 1.0]
    _, cache = layer.forward(x)
    dx, grads = layer.backward(g, cache)
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    sigma = np.sqrt(var + 1e-5)
    x_hat = (x - mu) / sigma
    assert_close("dgamma", grads["gamma"], (g * x_hat).sum(axis=0))
    assert_close("dbeta", grads["beta"], g.sum(axis=0))
    dxhat = g * layer.params["gamma"]
    dvar = (dxhat * (x - mu) * -0.5 * sigma**-3).sum(axis=1, keepdims=True)
    dmu = (-dxhat / sigma).sum(axis=1, keepdims=True) + dvar * (-2 * (x - mu)).mean(axis=1, keepdims=True)
    assert_close("grad_in", dx, dxhat / sigma + dvar * 2 * (x - mu) / 4 + dmu / 4)
    assert_close("row sums", dx.sum(axis=1), np.zeros(6))  # shifting a row changes nothing


def test_layernorm_spec_eps_and_shape_error():
    spec = ModelSpec(n_in=3, layers=(LayerSpec("layernorm", eps=0.25), LayerSpec("dense", units=2)))
    net = Network(spec)
    assert isinstance(net.layers[0], LayerNorm) and net.layers[0].eps == 0.25
    assert Network(LAYER_CASES["layernorm"]).layers[1].eps == 1e-5
    assert sorted(net.params) == ["dense_1.W", "dense_1.b", "layernorm_1.beta", "layernorm_1.gamma"]
    from reference.errors import ShapeError

    with pytest.raises(
        ShapeError, match=r"^layernorm_1: expected input of shape \(batch, 3\), got float64 array of shape \(2, 4\)$"
    ):
        net.layers[0].forward(np.zeros((2, 4)))
    with pytest.raises(SpecError, match=r"layernorm\) eps must be > 0, got 0"):
        ModelSpec(n_in=3, layers=(LayerSpec("layernorm", eps=0), LayerSpec("dense", units=2)))


# dtype preservation ----------------------------------------------------------------------------

F32_CASES = {**LAYER_CASES, **LOSS_CASES}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_float32_network_stays_float32(case, train):
    """Every tensor of the trace, the loss and the parameters of a float32 network are float32."""
    spec = F32_CASES[case].replace(dtype="float32")
    net = Network(spec, seed=1)
    assert all(p.dtype == np.float32 for p in net.params.values())
    x, y = make_batch(spec, 7, seed=2)
    trace = net.trace(x, y, train=train)
    wrong = {name: a.dtype for name, a in trace.tensors() if a is not None and a.dtype != np.float32}
    assert not wrong, f"{case}: tensors upcast from float32: {wrong}"
    assert net.forward(x).dtype == np.float32
    for layer in net.layers:
        for k, v in getattr(layer, "state", {}).items():
            assert v.dtype == np.float32, f"{layer.name}.{k} is {v.dtype}"


@pytest.mark.parametrize(
    "layer",
    [
        Dense("dense_1", np.ones((4, 3), np.float32), np.zeros(3, np.float32)),
        ReLU("relu_1"),
        LeakyReLU("leaky_relu_1", 0.1),
        Sigmoid("sigmoid_1"),
        Tanh("tanh_1"),
        Softmax("softmax_1"),
        Dropout("dropout_1", 0.3, RNG(0)),
        BatchNorm("batchnorm_1", 4, np.float32, "torch"),
        BatchNorm("batchnorm_1", 4, np.float32, "keras"),
        BatchNorm("batchnorm_1", 4, np.float32, "cs231n"),
        BatchNorm("batchnorm_1", 4, np.float32, "mytorch"),
        LayerNorm("layernorm_1", 4, np.float32),
        Dropout("dropout_1", None, RNG(0), keep=0.3),
    ],
    ids=lambda layer: (
        type(layer).__name__
        + (f"-{layer.convention}" if isinstance(layer, BatchNorm) else "")
        + ("-keep" if getattr(layer, "keep", None) else "")
    ),
)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_layer_keeps_float32(layer, train):
    x = RNG(3).normal(size=(5, 4)).astype(np.float32)
    out, cache = layer.forward(x, train=train)
    dx, grads = layer.backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values()), {k: g.dtype for k, g in grads.items()}


@pytest.mark.parametrize(
    "init",
    [
        "normal_inv_max_fan",
        "normal_std_inv_fan_in",
        "small_normal",
        "uniform_0.1",
        "glorot_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
    ],
)
def test_init_params_in_the_spec_dtype_and_seeded(init):
    spec = LAYER_CASES["batchnorm_torch"].replace(init=init, dtype="float32")
    a, b, c = init_params(spec, seed=4), init_params(spec, seed=4), init_params(spec, seed=5)
    assert all(v.dtype == np.float32 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["dense_1.W"], c["dense_1.W"])
    # the float32 weights are the float64 draw rounded once
    a64 = init_params(spec.replace(dtype="float64"), seed=4)
    assert all(np.array_equal(a[k], a64[k].astype(np.float32)) for k in a)


@pytest.mark.parametrize(
    ("init", "std", "bias"),
    [
        ("normal_inv_max_fan", np.sqrt(1 / 400), False),
        ("normal_std_inv_fan_in", 1 / 300, False),
        ("small_normal", 0.01, False),
        ("uniform_0.1", 0.1 / np.sqrt(3), True),
        ("glorot_normal", np.sqrt(2 / 700), False),
        ("glorot_uniform", np.sqrt(6 / 700) / np.sqrt(3), False),
        ("he_normal", np.sqrt(2 / 300), False),
        ("he_uniform", np.sqrt(6 / 300) / np.sqrt(3), False),
    ],
)
def test_initialiser_scale(init, std, bias):
    """W (300, 400) has mean 0 and the formula's standard deviation, within 5 sampling standard errors."""
    from reference.init import INITIALIZERS

    W, b = INITIALIZERS[init](RNG(0), 300, 400)
    assert W.shape == (300, 400) and b.shape == (400,)
    n = W.size
    assert abs(W.mean()) < 5 * std / np.sqrt(n)
    assert (
        abs(W.std() / std - 1) < 5 * np.sqrt(0.5 / n) * 2
    )  # the sample sd's relative error is < sqrt(1/(2n)) (x2: uniform's kurtosis)
    assert np.any(b != 0) if bias else np.all(b == 0)
