"""Property-based tests (hypothesis): invariants over shapes, batch sizes 1..64 and extreme values.

    softmax      rows in [0, 1] summing to 1, for logits up to +-1e4
    sigmoid      in [0, 1], s(-x) = 1 - s(x); tanh in [-1, 1]
    losses       finite value and gradient; softmax cross-entropy's gradient rows sum to 0 (shift
                 invariance), so do the Softmax layer's dL/dx rows; batchnorm's dL/dx columns and
                 layernorm's rows sum to 0; the multiclass hinge's gradient rows sum to 0 exactly
    networks     every layer case, batch 1..64, inputs up to 1e4 in magnitude: finite everything
    batching     the batch gradient is the mean of the per-sample ones, for any batch size

Sums that should vanish are measured like every other error in the project: relative to the largest
magnitude of the tensor they come from (oracles/compare.py's "twin" policy for the dtype). Every run
is derandomised (the same examples each time) and capped at 50 examples, without deadlines.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES
from helpers import strict_fp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oracles.compare import atol, compare_params, tolerance
from reference.errors import NonFiniteError
from reference.layers import BatchNorm, Sigmoid, Softmax, Tanh, softmax
from reference.losses import make_loss
from reference.network import Network
from reference.spec import LayerSpec, ModelSpec

FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None)
DTYPES = st.sampled_from(["float32", "float64"])


def arrays(dtype: str, shape, bound: float = 1e4):
    """Arrays of `shape` with finite elements in [-bound, bound], ties and extremes included."""
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32 if dtype == "float32" else 64)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


matrices = st.tuples(st.integers(1, 64), st.integers(1, 12))


def vanishes(total: np.ndarray, scale: float, dtype: str) -> bool:
    """|total| is rounding relative to `scale` (the policy's measure), or below the policy's floor."""
    worst = float(np.abs(total).max(initial=0.0))
    return worst <= tolerance("twin", dtype, "gradient") * scale or worst <= atol("twin", dtype)


# Elementwise activations -----------------------------------------------------------------------


@FAST
@given(data=st.data(), dtype=DTYPES, shape=matrices)
def test_softmax_rows_are_distributions(data, dtype, shape):
    x = data.draw(arrays(dtype, shape))
    with strict_fp():
        s = softmax(x)
    assert s.dtype == np.dtype(dtype) and np.all((s >= 0) & (s <= 1))
    assert vanishes(s.sum(axis=1) - 1, 1.0, dtype), s.sum(axis=1)
    assert np.all(s[np.arange(len(x)), x.argmax(axis=1)] == s.max(axis=1)), (
        "the largest logit has the largest probability"
    )


@FAST
@given(data=st.data(), dtype=DTYPES, shape=matrices)
def test_sigmoid_and_tanh_are_bounded_and_odd(data, dtype, shape):
    x = data.draw(arrays(dtype, shape))
    with strict_fp():
        s, _ = Sigmoid("sigmoid_1").forward(x)
        s_neg, _ = Sigmoid("sigmoid_1").forward(-x)
        t, _ = Tanh("tanh_1").forward(x)
    assert s.dtype == t.dtype == np.dtype(dtype)
    assert np.all((s >= 0) & (s <= 1)) and np.all((t >= -1) & (t <= 1))
    assert vanishes(s + s_neg - 1, 1.0, dtype)


# Shift invariances -----------------------------------------------------------------------------


@FAST
@given(data=st.data(), dtype=DTYPES, shape=matrices, reduction=st.sampled_from(["mean", "sum"]))
def test_softmax_cross_entropy_gradient_rows_sum_to_zero(data, dtype, shape, reduction):
    logits = data.draw(arrays(dtype, shape))
    labels = data.draw(hnp.arrays(np.int64, shape[0], elements=st.integers(0, shape[1] - 1)))
    with strict_fp():
        value, grad = make_loss("softmax_cross_entropy", reduction).value_and_grad(logits, labels)
    assert np.isfinite(value) and value >= 0 and np.all(np.isfinite(grad))
    assert vanishes(grad.sum(axis=1), float(np.abs(grad).max()), dtype)


@FAST
@given(data=st.data(), dtype=DTYPES, shape=matrices)
def test_softmax_layer_gradient_rows_sum_to_zero(data, dtype, shape):
    """softmax(x + c) = softmax(x), so dL/dx is orthogonal to (1, ..., 1) row by row."""
    x = data.draw(arrays(dtype, shape))
    g = data.draw(arrays(dtype, shape, bound=10.0))
    layer = Softmax("softmax_1")
    with strict_fp():
        _, cache = layer.forward(x)
        dx, _ = layer.backward(g, cache)
    assert np.all(np.isfinite(dx))
    assert vanishes(dx.sum(axis=1), float(np.abs(g).max(initial=0.0)), dtype)


@FAST
@given(
    data=st.data(),
    dtype=DTYPES,
    shape=st.tuples(st.integers(2, 64), st.integers(1, 8)),
    shift=st.floats(-10, 10),
    spread=st.floats(0.1, 100),
    convention=st.sampled_from(["torch", "keras", "cs231n", "mytorch"]),
)
def test_batchnorm_gradient_columns_sum_to_zero(data, dtype, shape, shift, spread, convention):
    """Training batchnorm is invariant to a per-feature shift of its input: dL/dx columns sum to 0.

    The columns are kept well conditioned (a ramp over the rows plus a perturbation, offset within 10
    spreads): x - mean loses eps |mean| / std of relative precision, and 1/sqrt(var + eps) amplifies
    it, so an ill-conditioned column fails any fixed bound in float32 (mean 16, std 0.2: 1e-5; a
    constant column of 222.46: x_hat ~ 5e-3 instead of 0). That is the data's conditioning, not the
    layer's; hypothesis found both when the columns were free.
    """
    ramp = np.linspace(-1.0, 1.0, shape[0])[:, None]  # std >= 0.58 before the perturbation
    z = ramp + data.draw(arrays("float64", shape, bound=0.25))
    x = (spread * (shift + z)).astype(dtype)
    g = data.draw(arrays(dtype, shape, bound=10.0))
    layer = BatchNorm("batchnorm_1", shape[1], np.dtype(dtype), convention)
    with strict_fp():
        out, cache = layer.forward(x, train=True)
        dx, _ = layer.backward(g, cache)
    assert out.dtype == dx.dtype == np.dtype(dtype) and np.all(np.isfinite(dx))
    # each dx element carries rounding relative to |g| gamma / sigma (1/sigma amplifies the rounding of
    # x - mean: a constant column gives x_hat ~ 1e-3 instead of 0 in float32), so a sum of N of them
    # vanishes relative to sum_i |g_i| / sigma
    scale = float((np.abs(g).sum(axis=0, dtype=np.float64) / np.sqrt(cache[2] + layer.eps)).max(initial=0.0))
    assert vanishes(dx.sum(axis=0), scale, dtype)


@FAST
@given(
    data=st.data(),
    dtype=DTYPES,
    shape=st.tuples(st.integers(1, 64), st.integers(2, 12)),
    shift=st.floats(-10, 10),
    spread=st.floats(0.1, 100),
)
def test_layernorm_gradient_rows_sum_to_zero(data, dtype, shape, shift, spread):
    """LayerNorm is invariant to a per-sample shift of its input: dL/dx rows sum to 0, any batch (1 too).

    Rows are kept well conditioned as batchnorm's columns are (a ramp over the features plus a
    perturbation): the same conditioning argument, transposed.
    """
    from reference.layers import LayerNorm

    ramp = np.linspace(-1.0, 1.0, shape[1])[None, :]
    x = (spread * (shift + ramp + data.draw(arrays("float64", shape, bound=0.25)))).astype(dtype)
    g = data.draw(arrays(dtype, shape, bound=10.0))
    layer = LayerNorm("layernorm_1", shape[1], np.dtype(dtype))
    layer.params["gamma"][...] = data.draw(arrays(dtype, (shape[1],), bound=3.0))
    with strict_fp():
        out, (x_hat, inv_sigma) = layer.forward(x)
        dx, grads = layer.backward(g, (x_hat, inv_sigma))
    assert out.dtype == dx.dtype == grads["gamma"].dtype == np.dtype(dtype) and np.all(np.isfinite(dx))
    h = np.abs(g * layer.params["gamma"]).astype(np.float64)
    scale = float((h.sum(axis=1) * inv_sigma[:, 0]).max(initial=0.0))
    assert vanishes(dx.sum(axis=1), scale, dtype)


@FAST
@given(data=st.data(), dtype=DTYPES, shape=st.tuples(st.integers(1, 64), st.integers(2, 12)))
def test_multiclass_hinge_gradient_rows_sum_to_zero_and_count_margins(data, dtype, shape):
    """Each positive margin adds +1 at its class and -1 at the label: rows sum to 0 exactly, the entries
    are integers (reduction "sum"), >= 0 off the label and <= 0 on it, and the loss is 0 exactly when
    the gradient is."""
    scores = data.draw(arrays(dtype, shape))
    labels = data.draw(hnp.arrays(np.int64, shape[0], elements=st.integers(0, shape[1] - 1)))
    with strict_fp():
        value, grad = make_loss("multiclass_hinge", "sum").value_and_grad(scores, labels)
    assert np.isfinite(value) and value >= 0 and grad.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(grad.sum(axis=1), 0)
    np.testing.assert_array_equal(grad, np.round(grad))
    wrong = np.ones(shape, bool)
    wrong[np.arange(shape[0]), labels] = False
    assert np.all(grad[wrong] >= 0) and np.all(grad[~wrong] <= 0)
    assert (value == 0) == (not grad.any())


# Losses at their extremes ----------------------------------------------------------------------


@FAST
@given(data=st.data(), dtype=DTYPES, shape=matrices, loss=st.sampled_from(sorted(LOSS_CASES)))
def test_every_loss_of_network_outputs_is_finite(data, dtype, shape, loss):
    """Each loss case's head (none, softmax, sigmoid) on logits up to +-40, then the loss: finite values,
    or NonFiniteError where bce's saturated sigmoid gives p = 0 or 1 exactly (float32 above |x| = 16.6)."""
    spec = LOSS_CASES[loss]
    logits = data.draw(arrays(dtype, shape, bound=40.0))
    head = spec.layers[-1].kind
    pred = softmax(logits) if head == "softmax" else Sigmoid("s").forward(logits)[0] if head == "sigmoid" else logits
    loss_fn = make_loss(spec.loss, spec.reduction)
    if loss_fn.classification:  # integer labels (softmax_cross_entropy, cross_entropy, nll, multiclass_hinge)
        target = data.draw(hnp.arrays(np.int64, shape[0], elements=st.integers(0, shape[1] - 1)))
    else:
        target = data.draw(
            hnp.arrays(np.dtype(dtype), shape, elements=st.floats(0, 1, width=32 if dtype == "float32" else 64))
        )
    if spec.loss == "bce" and np.any((pred == 0) | (pred == 1)):
        with pytest.raises(NonFiniteError, match=r"bce: expected probabilities in \(0, 1\)"):
            loss_fn.value_and_grad(pred, target)
        return
    with strict_fp():
        value, grad = loss_fn.value_and_grad(pred, target)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and grad.dtype == np.dtype(dtype)


# Whole networks --------------------------------------------------------------------------------

ROW_CASES = sorted(LAYER_CASES)


@FAST
@given(
    data=st.data(),
    dtype=DTYPES,
    case=st.sampled_from(ROW_CASES),
    batch=st.integers(1, 64),
    scale=st.sampled_from([1.0, 255.0, 1e4]),
)
def test_network_trace_is_finite(data, dtype, case, batch, scale):
    spec = LAYER_CASES[case].replace(dtype=dtype)
    if case.startswith("batchnorm") and batch == 1:
        batch = 2
    net = Network(spec, seed=data.draw(st.integers(0, 3)))
    x = (scale * data.draw(arrays("float64", (batch, *spec.sample_shape), bound=1.0))).astype(dtype)
    y = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(0, spec.n_out - 1)))
    with strict_fp():
        trace = net.trace(x, y)
    bad = [name for name, a in trace.tensors() if a is not None and not np.all(np.isfinite(a))]
    assert not bad, f"{case}: non-finite {bad}"


@FAST
@given(
    data=st.data(),
    case=st.sampled_from([c for c in LAYER_CASES if not c.startswith("batchnorm")]),
    batch=st.integers(1, 64),
)
def test_batch_gradient_is_the_mean_of_sample_gradients(data, case, batch):
    spec = LAYER_CASES[case]
    net = Network(spec, seed=0)
    x = data.draw(arrays("float64", (batch, *spec.sample_shape), bound=5.0))
    y = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(0, spec.n_out - 1)))
    kinds = [ls.kind for ls in spec.layers]
    masks = (
        {
            "dropout_1": data.draw(
                hnp.arrays(
                    np.float64,
                    (batch, *spec.layer_shapes()[kinds.index("dropout")]),
                    elements=st.sampled_from([0.0, 1.0]),
                )
            )
        }
        if "dropout" in kinds
        else None
    )
    _, batched = net.loss_and_grads(x, y, masks=masks)
    mean: dict[str, np.ndarray] = {}
    for i in range(batch):
        row_masks = {k: m[i : i + 1] for k, m in (masks or {}).items()}
        _, g = net.loss_and_grads(x[i : i + 1], y[i : i + 1], masks=row_masks)
        for k, v in g.items():
            mean[k] = mean.get(k, 0.0) + v / batch
    compare_params(batched, mean, oracle="twin", dtype="float64", names=("batch", "mean of samples")).assert_ok()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_softmax_cross_entropy_examples(dtype):
    """The corners hypothesis may not draw: a single class, all-equal rows, +-1e4 mixed."""
    for logits, labels in [
        (np.full((3, 1), 1e4), np.zeros(3, np.int64)),
        (np.full((2, 5), -1e4), np.array([0, 4])),
        (np.array([[1e4, -1e4], [-1e4, 1e4]]), np.array([1, 1])),
    ]:
        with strict_fp():
            value, grad = make_loss("softmax_cross_entropy").value_and_grad(logits.astype(dtype), labels)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        assert vanishes(grad.sum(axis=1), max(float(np.abs(grad).max()), 1.0), dtype)


# Convolution and pooling over shapes, strides and pads -------------------------------------------


@st.composite
def conv_problems(draw):
    """A random image batch and a conv/pool geometry that fits it: non-square, stride 1-3, pad 0-2."""
    n, c, f = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, min(h + 2 * ph, 5))), draw(st.integers(1, min(w + 2 * pw, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    x = draw(arrays("float64", (n, c, h, w), bound=3.0))
    return x, f, (kh, kw), stride, (ph, pw)


@FAST
@given(problem=conv_problems(), data=st.data())
def test_conv_layer_shapes_and_adjoint_identity(problem, data):
    """The spec's inferred shape is the layer's output shape, and backward is the adjoint: out is
    linear in (W, b) and, less b, in x, so <g, out> = <dW, W> + <db, b> and <g, out> - <db, b> = <dx, x>."""
    x, f, kernel, stride, padding = problem
    spec = ModelSpec(
        n_in=int(np.prod(x.shape[1:])),
        input_shape=x.shape[1:],
        layers=(LayerSpec("conv2d", filters=f, kernel=kernel, stride=stride, padding=padding), LayerSpec("flatten"),
                LayerSpec("dense", units=2)),
    )  # fmt: skip
    net = Network(spec, seed=0)
    layer = net.layers[0]
    out, cache = layer.forward(x)
    assert out.shape[1:] == spec.layer_shapes()[0]
    g = data.draw(arrays("float64", out.shape, bound=1.0))
    dx, grads = layer.backward(g, cache)
    W, b = layer.params["W"], layer.params["b"]
    g_out, g_b = float((g * out).sum()), float((grads["b"] * b).sum())
    scale = float(np.abs(g).sum() * (np.abs(out).max() + np.abs(b).max() + 1))
    assert abs(g_out - float((grads["W"] * W).sum()) - g_b) <= 1e-12 * scale
    assert abs(g_out - g_b - float((dx * x).sum())) <= 1e-12 * scale


@FAST
@given(problem=conv_problems(), data=st.data(), kind=st.sampled_from(["maxpool2d", "avgpool2d"]))
def test_pools_are_positively_homogeneous_and_route_what_comes(problem, data, kind):
    """Max-pool and avg-pool are homogeneous of degree 1, so <g, pool(x)> = <dx, x>; max-pool
    routes every window's gradient to one element, avg-pool spreads it: sum dx = sum g (each)."""
    x, _, pool, stride, _ = problem
    pool = (min(pool[0], x.shape[2]), min(pool[1], x.shape[3]))
    spec = ModelSpec(
        n_in=int(np.prod(x.shape[1:])),
        input_shape=x.shape[1:],
        layers=(LayerSpec(kind, pool=pool, stride=stride), LayerSpec("flatten"), LayerSpec("dense", units=2)),
    )
    layer = Network(spec, seed=0).layers[0]
    out, cache = layer.forward(x)
    assert out.shape[1:] == spec.layer_shapes()[0]
    g = data.draw(arrays("float64", out.shape, bound=1.0))
    dx, _ = layer.backward(g, cache)
    scale = float(np.abs(g).sum() * (np.abs(x).max() + 1))
    assert abs(float((g * out).sum()) - float((dx * x).sum())) <= 1e-12 * scale
    assert abs(float(dx.sum()) - float(g.sum())) <= 1e-12 * (float(np.abs(g).sum()) + 1)
    if kind == "maxpool2d":
        assert (dx != 0).sum() <= (g != 0).sum()  # one element per window at most
