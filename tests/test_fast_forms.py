"""The reference's faster forms, each pinned to the plain form it replaces.

Where the reference computes something in a less obvious way for speed, the plain form is written
next to it in a comment and checked here on random inputs, batch 1 included, against the twin
policy of oracles/compare.py (the same function computed another way is exactly what a twin is):

    Dense.param_grads      np.dot(x.T, g)             == x.T @ g
    Dense forward, dL/dx   np.dot(x, W), np.dot(g, W.T) == x @ W, g @ W.T, bit for bit
    sigmoid                max(z, sign(x))/(1+z)      == where(x >= 0, 1/(1+z), z/(1+z)), bit for bit (NaN, Inf, -0.0)
    SoftmaxCrossEntropy    one exp for value and grad == logsumexp - z_y and softmax(z) - onehot, bit for bit
    SGD.update             multiply into a buffer     == p - lr * g; with owned grads, into g itself (the
                           same bits; the caller's grads untouched when not owned)
    Network.loss_and_grads no trace, no first dL/dx   == the gradients of Network.trace, bit for bit
    train_epoch            checks x once per epoch    == still a clear error for NaN / Inf / dtype
    SampleSGD              batch-1 SGD as one loop body == train_step row by row, bit for bit (signed
                           zeros too, and at the IEEE corners: -0.0 weights, biases and inputs, Inf)
    BatchSGD               mini-batch SGD as one loop body == train_step batch by batch, bit for bit (the
                           same IEEE corners, ReLU's kept arrays over two epochs)
    train_epoch's labels   checked once an epoch      == the loss's per-step check: a bad label stops the
                           epoch before any parameter moves (labels_checked skips only that check)
    one_like               a kept 0-d 1 (sigmoid, tanh) == Python's 1, bit for bit (SampleSGD: lr, 0 alike)
    check_inputs           isfinite(x.sum())          == check_array's verdict (an overflow is no error)
    conv2d (forward, dW, db, dx)  im2col + one GEMM each  == the loops over output positions
    im2col_same, col2im_same  shifted row copies / adds  == im2col of the padded image, col2im, bit for bit
    maxpool2d, avgpool2d   per-offset copies, strided adds == the loops (max-pool bit for bit)
    ReLU                   np.maximum(x, kept zeros)  == np.maximum(x, 0), bit for bit
    ReLU then MaxPool2D    run as pool then ReLU      == the layers' order, bit for bit (tiling pools; training_order)
    conv.Workspace         kept arrays (Conv2D, MaxPool2D, ReLU) == fresh arrays, bit for bit, and
                           never one that a cache, an output or a view still holds
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cases import BATCH_SIZES, DTYPES, LAYER_CASES, OPTIMIZER_CASES, make_batch
from helpers import assert_close

from reference import DTypeError, LabelError, Network, NonFiniteError, ShapeError, conv, make_optimizer, preset
from reference.layers import Conv2D, Dense, MaxPool2D, ReLU, sigmoid, softmax
from reference.losses import make_loss
from reference.network import training_order
from reference.optimizers import SGD
from reference.spec import PRESETS, LayerSpec, OptimizerSpec
from reference.train import BatchSGD, SampleSGD, batches, check_inputs, train_epoch, train_step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize(("n_in", "n_out"), [(784, 32), (32, 10), (5, 3)], ids=lambda n: str(n))
def test_dense_weight_gradient_is_x_transposed_times_g(dtype, batch, n_in, n_out):
    rng = np.random.default_rng(batch * 1000 + n_in)
    x, g = rng.normal(size=(batch, n_in)).astype(dtype), rng.normal(size=(batch, n_out)).astype(dtype)
    W, b = rng.normal(size=(n_in, n_out)).astype(dtype), np.zeros(n_out, dtype)
    grads = Dense("dense_1", W, b).param_grads(g, x)
    assert grads["W"].shape == (n_in, n_out) and grads["W"].dtype == np.dtype(dtype)
    assert_close("dW", grads["W"], x.T @ g, dtype, "gradient", names=("fast", "plain"))
    assert_close("db", grads["b"], g.sum(axis=0), dtype, "gradient", names=("fast", "plain"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize(("n_in", "n_out"), [(784, 32), (32, 32), (32, 10), (784, 128), (128, 10), (5, 3)], ids=str)
def test_dense_forward_and_input_gradient_are_the_matmul_forms_bit_for_bit(dtype, batch, n_in, n_out):
    rng = np.random.default_rng(batch * 1000 + n_in + n_out)
    x, g = rng.normal(size=(batch, n_in)).astype(dtype), rng.normal(size=(batch, n_out)).astype(dtype)
    x[:, ::3] = 0  # zero inputs, as raw pixels have
    W, b = rng.normal(size=(n_in, n_out)).astype(dtype), rng.normal(size=n_out).astype(dtype)
    layer = Dense("dense_1", W, b)
    out, cache = layer.forward(x)
    dx, _ = layer.backward(g, cache)
    for name, fast, plain in (("out", out, x @ W + b), ("dx", dx, g @ W.T)):
        assert fast.dtype == plain.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(fast.view(f"u{fast.itemsize}"), plain.view(f"u{plain.itemsize}"), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("width", [32, 128, 7], ids=lambda w: f"width{w}")
def test_sigmoid_is_the_two_branch_form_bit_for_bit(dtype, batch, width):
    info = np.finfo(dtype)
    edges = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal, 1.0, -1.0]
    edges += [16.6, -16.6, 40.0, -40.0, 88.7, -88.7, 745.0, -745.0, info.max, -info.max, np.inf, -np.inf]
    rng = np.random.default_rng(batch * 10 + width)
    x = rng.normal(0.0, 30.0, size=(batch, width)).astype(dtype)
    x.flat[: len(edges)] = np.array(edges, dtype)[: x.size]
    if x.size > len(edges):  # the corners again at random places (SIMD bodies and tails), NaNs of both signs
        at = rng.permutation(np.arange(len(edges), x.size))[: x.size // 3]
        x.flat[at] = rng.choice(np.array([*edges, np.nan, -np.nan], dtype), len(at))
    x.flat[-1] = -np.nan if batch % 2 else np.nan
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.exp(-np.abs(x))
        plain = np.where(x >= 0, 1 / (1 + z), z / (1 + z))
        fast = sigmoid(x)
    assert fast.dtype == plain.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast.view(f"u{fast.itemsize}"), plain.view(f"u{plain.itemsize}"))


@pytest.mark.parametrize("dtype", [*DTYPES, "float16"])
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
def test_sigmoid_and_tanh_against_a_kept_one_are_the_python_1_forms_bit_for_bit(dtype, batch):
    # one_like(x): a kept 0-d 1 of x's dtype (Python's 1 where none is kept, float16 here), so 1 + z,
    # 1 - s and 1 - t^2 skip numpy's conversion of the scalar; the same numbers, the same dtype.
    from reference.layers import Sigmoid, Tanh, one_like

    rng = np.random.default_rng(batch + 30)
    x = rng.normal(0.0, 4.0, size=(batch, 32)).astype(dtype)
    x.flat[:4] = np.array([0.0, -0.0, np.inf, np.nan], dtype)[: x.size]
    g = rng.normal(size=x.shape).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.exp(-np.abs(x))
        s_plain = np.maximum(z, np.sign(x)) / (1 + z)
        for layer, out, grad in (
            (Sigmoid("sigmoid_1"), s_plain, g * s_plain * (1 - s_plain)),
            (Tanh("tanh_1"), np.tanh(x), g * (1 - np.tanh(x) * np.tanh(x))),
        ):
            fast_out, cache = layer.forward(x)
            fast_grad, _ = layer.backward(g, cache)
            for name, fast, plain in (("out", fast_out, out), ("dL/dx", fast_grad, grad)):
                assert fast.dtype == plain.dtype == np.dtype(dtype), (layer.name, name)
                np.testing.assert_array_equal(
                    fast.view(f"u{fast.itemsize}"), plain.view(f"u{plain.itemsize}"), err_msg=f"{layer.name} {name}"
                )
    one = one_like(x)
    assert one == 1 and (dtype == "float16" or (one.dtype == np.dtype(dtype) and not one.flags.writeable))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(784, 32), (32,), (1, 10)], ids=str)
def test_sgd_buffered_update_is_p_minus_lr_g(dtype, shape):
    rng = np.random.default_rng(len(shape))
    p0 = rng.normal(size=shape).astype(dtype)
    opt, p = SGD(OptimizerSpec("sgd", lr=0.003)), p0.copy()
    plain = p0.copy()
    for step in range(3):  # the buffer is reused from the second step on
        g = rng.normal(size=shape).astype(dtype)
        opt.step({"w": p}, {"w": g})
        plain = plain - 0.003 * g
        np.testing.assert_array_equal(p, plain, err_msg=f"step {step}")
    assert p.dtype == np.dtype(dtype)


@pytest.mark.parametrize("g_dtype", DTYPES, ids=lambda d: f"g-{d}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_into_owned_grads_is_p_minus_lr_g_and_leaves_other_grads_alone(dtype, g_dtype):
    rng = np.random.default_rng(18)
    p0 = rng.normal(size=(784, 128)).astype(dtype)
    plain = p0.copy()
    owned, kept = SGD(OptimizerSpec("sgd", lr=0.1)), SGD(OptimizerSpec("sgd", lr=0.1))
    p_owned, p_kept = p0.copy(), p0.copy()
    for step in range(3):
        g = rng.normal(size=p0.shape).astype(g_dtype)
        g_copy = g.copy()
        kept.step({"w": p_kept}, {"w": g})
        np.testing.assert_array_equal(g, g_copy, err_msg="a caller's grads were overwritten")
        owned.step({"w": p_owned}, {"w": g}, owned=True)
        lr_g = np.multiply(g_copy, 0.1, out=np.empty(p0.shape, dtype))  # lr * g rounded to p's dtype, then p - it
        plain = plain - lr_g
        for name, p in (("kept", p_kept), ("owned", p_owned)):
            np.testing.assert_array_equal(
                p.view(f"u{p.itemsize}"), plain.view(f"u{p.itemsize}"), err_msg=f"{name}, {step}"
            )
        if g_dtype == dtype:
            assert "w" not in owned.buffers  # lr * g went into g itself: no buffer
            np.testing.assert_array_equal(g, lr_g)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@pytest.mark.parametrize("batch", (1, 7), ids=lambda b: f"batch{b}")
def test_loss_and_grads_are_the_trace_gradients_bit_for_bit(case, batch):
    spec = LAYER_CASES[case].replace(dtype="float64")
    x, y = make_batch(spec, batch if "batchnorm" not in case or batch > 1 else 2, seed=3)
    traced, trained = Network(spec, seed=1), Network(spec, seed=1)  # same seed: same dropout masks
    trace = traced.trace(x, y)
    loss, grads = trained.loss_and_grads(x, y)
    expected = {f"{rec.name}.{k}": v for rec in trace.layers for k, v in rec.grads.items()}
    assert set(grads) == set(expected)
    assert loss == trace.loss
    for name, g in grads.items():
        np.testing.assert_array_equal(g, expected[name], err_msg=name)


def trace_step(net: Network, opt, x: np.ndarray, y: np.ndarray) -> None:
    """One optimiser step from the gradients of a full trace (the slow, plain path)."""
    grads = {f"{rec.name}.{k}": v for rec in net.trace(x, y).layers for k, v in rec.grads.items()}
    opt.step(net.params, grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_train_step_gives_the_trace_path_parameters_bit_for_bit(name, dtype):
    spec = preset(name, dtype=dtype)
    x, y = make_batch(spec, 5 * spec.batch_size, seed=4)
    fast, plain = Network(spec, seed=0), Network(spec, seed=0)
    opt_fast, opt_plain = make_optimizer(spec.optimizer), make_optimizer(spec.optimizer)
    for start in range(0, len(x), spec.batch_size):
        rows = slice(start, start + spec.batch_size)
        train_step(fast, opt_fast, x[rows], y[rows])
        trace_step(plain, opt_plain, x[rows], y[rows])
    for k, v in fast.params.items():
        np.testing.assert_array_equal(v, plain.params[k], err_msg=k)


@pytest.mark.parametrize("opt_case", ["momentum-torch", "adam-keras-decoupled", "rmsprop-torch-coupled"])
def test_train_epoch_gives_the_trace_path_parameters_with_stateful_optimisers(opt_case):
    spec = LAYER_CASES["batchnorm_torch"].replace(optimizer=OPTIMIZER_CASES[opt_case])
    x, y = make_batch(spec, 24, seed=5)
    order = np.random.default_rng(6).permutation(24)
    fast, plain = Network(spec, seed=0), Network(spec, seed=0)
    opt_fast, opt_plain = make_optimizer(spec.optimizer), make_optimizer(spec.optimizer)
    train_epoch(fast, opt_fast, x, y, order, batch_size=8)
    for start in range(0, 24, 8):
        idx = order[start : start + 8]
        trace_step(plain, opt_plain, x[idx], y[idx])
    for k, v in fast.params.items():
        np.testing.assert_array_equal(v, plain.params[k], err_msg=k)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("batch_size", [1, 4], ids=lambda b: f"batch{b}")
def test_train_epoch_still_rejects_non_finite_input(bad, batch_size):
    spec = LAYER_CASES["sigmoid"]  # a sigmoid turns an Inf input into a finite loss: only the check catches it
    x, y = make_batch(spec, 12, seed=7)
    x[9, 2] = bad
    net, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    before = net.get_params()
    with pytest.raises(NonFiniteError, match=r"train_epoch: training inputs x: expected finite values.*\(9, 2\)"):
        train_epoch(net, opt, x, y, np.arange(12), batch_size)
    for k, v in net.params.items():  # checked before the first step: nothing was trained
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_train_epoch_rejects_inputs_of_the_wrong_dtype_or_width():
    spec = LAYER_CASES["dense"]  # float64
    x, y = make_batch(spec, 6, seed=8)
    net, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    with pytest.raises(DTypeError, match="train_epoch: training inputs x: expected dtype float64, got float32"):
        train_epoch(net, opt, x.astype(np.float32), y, np.arange(6), 2)
    with pytest.raises(ShapeError, match=r"train_epoch: training inputs x: expected shape \(batch, 6\)"):
        train_epoch(net, opt, x[:, :5], y, np.arange(6), 2)


def test_train_step_alone_still_checks_its_input():
    spec = LAYER_CASES["relu"]
    x, y = make_batch(spec, 3, seed=9)
    x[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"network input \(to dense_1\): expected finite values.*\(1, 0\)"):
        train_step(Network(spec, seed=0), make_optimizer(spec.optimizer), x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_inputs_lets_a_finite_set_with_an_overflowing_sum_through(dtype):
    spec = LAYER_CASES["dense"].replace(dtype=dtype)
    x = np.full((4, spec.n_in), np.finfo(dtype).max / 2, dtype)  # finite, but the sum is inf
    check_inputs(Network(spec, seed=0), x, "probe")  # no error: check_array looked closer


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_inputs_names_the_element_when_infs_cancel_to_nan(dtype):
    spec = LAYER_CASES["dense"].replace(dtype=dtype)
    x = np.zeros((4, spec.n_in), dtype)
    x[1, 2], x[3, 4] = np.inf, -np.inf  # the sum is nan, with no RuntimeWarning
    with pytest.raises(NonFiniteError, match=r"probe: expected finite values, got inf at index \(1, 2\)"):
        check_inputs(Network(spec, seed=0), x, "probe")


def random_conv_problem(seed: int, dtype: str):
    """Random N, C, H, W, F, kernel (non-square), stride and padding (each 1 or 2 / 0..2) that fit."""
    rng = np.random.default_rng(seed)
    N, C, F = (int(v) for v in rng.integers(1, 5, 3))
    H, W = (int(v) for v in rng.integers(3, 11, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = tuple(int(v) for v in rng.integers(0, 3, 2))
    kernel = (
        int(rng.integers(1, min(H + 2 * padding[0], 5) + 1)),
        int(rng.integers(1, min(W + 2 * padding[1], 5) + 1)),
    )
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    Wt, b = rng.normal(size=(F, C, *kernel)).astype(dtype), rng.normal(size=F).astype(dtype)
    return rng, x, Wt, b, kernel, stride, padding


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(40))
def test_conv2d_im2col_gemm_is_the_loop_over_output_positions(seed, dtype):
    rng, x, W, b, _, stride, padding = random_conv_problem(seed, dtype)
    plain = conv.conv2d_forward_plain(x, W, b, stride, padding)
    fast, cols = conv.conv2d_forward(x, W, b, stride, padding)
    assert fast.shape == plain.shape and fast.dtype == plain.dtype == np.dtype(dtype)
    assert_close("out", fast, plain, dtype, "forward", names=("fast", "plain"))
    g = rng.normal(size=plain.shape).astype(dtype)
    dx, dW, db = conv.conv2d_backward_plain(g, x, W, stride, padding)
    fast_dW, fast_db = conv.conv2d_param_grads(g, cols, W)
    fast_dx = conv.conv2d_input_grad(g, W, x.shape, stride, padding)
    for name, a, p in (("dx", fast_dx, dx), ("dW", fast_dW, dW), ("db", fast_db, db)):
        assert a.shape == p.shape and a.dtype == p.dtype, name
        assert_close(name, a, p, dtype, "gradient", names=("fast", "plain"))


def general_col2im(d_cols, x_shape, kernel, padding):
    """col2im's general path (padded buffer, KH KW strided adds), whatever the geometry."""
    (N, C, H, W), (KH, KW), (ph, pw) = x_shape, kernel, padding
    d, dxp = d_cols.reshape(KH, KW, C, N, H, W), np.zeros((C, N, H + 2 * ph, W + 2 * pw), d_cols.dtype)
    for u in range(KH):
        for v in range(KW):
            conv._offset(dxp, u, v, (H, W), (1, 1))[...] += d[u, v]
    return dxp[:, :, ph : ph + H, pw : pw + W].transpose(1, 0, 2, 3)


# (N, C, H, W), kernel: stride 1, padding half the kernel. Images smaller than the kernel, batch 1,
# one row or one column, and both memory orders of x (a conv's output is laid out (C, N, H, W)).
SAME_SIZE = [
    ((2, 3, 5, 4), (3, 3)),
    ((1, 1, 28, 28), (3, 3)),
    ((3, 2, 6, 7), (5, 5)),
    ((2, 2, 4, 6), (3, 5)),
    ((2, 3, 2, 2), (5, 3)),
    ((4, 2, 1, 5), (3, 3)),
    ((3, 1, 5, 1), (3, 3)),
    ((2, 4, 3, 3), (1, 1)),
    ((2, 2, 2, 3), (7, 5)),  # the window reaches past the whole image: every row and column is padding for some offset
    ((3, 2, 1, 2), (5, 7)),
]


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "kernel"), SAME_SIZE, ids=lambda v: "x".join(map(str, v)))
def test_same_size_conv_by_shifted_rows_is_the_padded_im2col_bit_for_bit(shape, kernel, dtype, layout):
    """im2col_same is im2col of the padded image, element for element; col2im_same is col2im's general
    path bit for bit (the same sums in the same order); the whole conv is the loops' numbers."""
    rng = np.random.default_rng(sum(shape) + sum(kernel))
    padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    assert conv.is_same_shape(kernel, (1, 1), padding)
    x = rng.normal(size=shape).astype(dtype)
    if layout == "CNHW":
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    cols = conv.im2col_same(x, kernel)
    np.testing.assert_array_equal(cols, conv.im2col(conv.pad_images(x, padding), kernel, (1, 1)))
    d_cols = rng.normal(size=cols.shape).astype(dtype)
    expected = general_col2im(d_cols, shape, kernel, padding)
    got = conv.col2im(d_cols.copy(), shape, kernel, (1, 1), padding, conv.Workspace())
    bits = f"u{np.dtype(dtype).itemsize}"
    np.testing.assert_array_equal(got.view(bits), expected.view(bits))
    got = conv.col2im(np.asfortranarray(d_cols), shape, kernel, (1, 1), padding)  # d_cols in the other memory order
    np.testing.assert_array_equal(got.view(bits), expected.view(bits))
    W, b = rng.normal(size=(3, shape[1], *kernel)).astype(dtype), rng.normal(size=3).astype(dtype)
    out, cols = conv.conv2d_forward(x, W, b, (1, 1), padding, conv.Workspace())
    assert_close("out", out, conv.conv2d_forward_plain(x, W, b, (1, 1), padding), dtype, "forward")
    g = rng.normal(size=out.shape).astype(dtype)
    dx, dW, db = conv.conv2d_backward_plain(g, x, W, (1, 1), padding)
    assert_close("dx", conv.conv2d_input_grad(g, W, shape, (1, 1), padding, conv.Workspace()), dx, dtype, "gradient")
    fast_dW, fast_db = conv.conv2d_param_grads(g, cols, W)
    assert_close("dW", fast_dW, dW, dtype, "gradient")
    assert_close("db", fast_db, db, dtype, "gradient")


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_against_kept_zeros_is_maximum_with_0_bit_for_bit(dtype):
    """np.maximum(x, zeros) for np.maximum(x, 0): -0.0 -> +0.0 and NaN -> NaN alike, any shape or layout."""
    info, relu = np.finfo(dtype), ReLU("relu_1")
    edges = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, info.tiny, -info.tiny, info.max, -info.max], dtype)
    bits = f"u{np.dtype(dtype).itemsize}"
    rng = np.random.default_rng(3)
    for shape in [(1, 9), (7, 9), (2, 9, 3, 5), (7, 9)]:
        x0 = rng.normal(size=shape).astype(dtype)
        x0.reshape(-1)[: edges.size] = edges
        for x in (x0, x0.T.copy().T):  # C order and the reverse
            out, _ = relu.forward(x)
            np.testing.assert_array_equal(out.view(bits), np.maximum(x, 0).view(bits))
            assert relu.work.arrays["zeros"].shape == shape[1:] and not relu.work.arrays["zeros"].any()


def test_same_size_is_only_stride_1_with_half_kernel_padding():
    assert conv.is_same_shape((3, 3), (1, 1), (1, 1)) and conv.is_same_shape((5, 1), (1, 1), (2, 0))
    for kernel, stride, padding in [((3, 3), (2, 1), (1, 1)), ((3, 3), (1, 1), (0, 1)), ((2, 2), (1, 1), (1, 1))]:
        assert not conv.is_same_shape(kernel, stride, padding)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(40))
def test_pools_on_the_window_view_are_the_loops(seed, dtype):
    rng, x, _, _, pool, stride, _ = random_conv_problem(seed, dtype)
    pool = (min(pool[0], x.shape[2]), min(pool[1], x.shape[3]))
    if seed % 2:
        x = np.round(x).astype(dtype)  # ties in most windows: the first maximum, in both forms
    out, first = conv.maxpool2d_forward(x, pool, stride)
    np.testing.assert_array_equal(out, conv.maxpool2d_forward_plain(x, pool, stride))
    g = rng.normal(size=out.shape).astype(dtype)
    fast, plain = (
        conv.maxpool2d_backward(g, first, x.shape, pool, stride),
        conv.maxpool2d_backward_plain(g, x, pool, stride),
    )
    assert fast.dtype == plain.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast != 0, plain != 0)  # the same elements get the gradient
    fp = {"names": ("fast", "plain")}
    assert_close("maxpool dx", fast, plain, dtype, "gradient", **fp)  # sums of overlapping windows in another order
    avg_out = conv.avgpool2d_forward(x, pool, stride)
    assert_close("avgpool out", avg_out, conv.avgpool2d_forward_plain(x, pool, stride), dtype, "forward", **fp)
    fast = conv.avgpool2d_backward(g, x.shape, pool, stride)
    assert fast.dtype == np.dtype(dtype)
    assert_close("avgpool dx", fast, conv.avgpool2d_backward_plain(g, x, pool, stride), dtype, "gradient", **fp)


# A ReLU followed by a max-pool runs as pool then ReLU (reference/network.py, training_order) -------

POOLS = [
    ((2, 2), (2, 2)),
    ((3, 2), (1, 2)),
    ((2, 3), (2, 1)),
    ((3, 3), (2, 2)),
]  # tiling, overlapping, H or W left over


def bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def special_images(rng, shape, dtype):
    """Ties (values rounded to halves), both zeros, and a sprinkle of NaN and +-inf."""
    x = (np.round(rng.normal(size=shape) * 2) / 2).astype(dtype)
    flat = x.reshape(-1)
    picks = rng.permutation(flat.size)
    flat[picks[:7]], flat[picks[7:14]], flat[picks[14:16]], flat[picks[16:18]] = -0.0, 0.0, np.nan, np.inf
    flat[picks[18:20]] = -np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("pool", "stride"), POOLS)
def test_relu_then_pool_as_pool_then_relu_bit_for_bit(pool, stride, dtype):
    """Layer by layer against swapped, on ties, signed zeros, NaN and infinities in x and in g: bit for
    bit where the windows tile (where training_order swaps); where they overlap, the same values
    but a zero of dL/dx may differ in sign (a sum of +-0 over windows), so the order is kept there."""
    tiles = pool == stride
    rng = np.random.default_rng(sum(pool) + 3 * sum(stride))
    for layout in ("NCHW", "CNHW"):
        x = special_images(rng, (5, 3, 7, 8), dtype)
        if layout == "CNHW":  # a conv's output is laid out (C, N, H, W)
            x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN, on purpose
            relu, pooling = ReLU("relu_1"), MaxPool2D("maxpool2d_1", pool, stride)
            r, relu_cache = relu.forward(x)
            out, pool_cache = pooling.forward(r)
            g = special_images(rng, out.shape, dtype)
            g.reshape(-1)[:6] = [-1.5, 2.0, -0.0, 0.0, -3.0, 1.0]  # signs of zero: each g decides one
            dx = relu.backward(pooling.backward(g, pool_cache)[0], relu_cache)[0]
            relu2, pooling2 = ReLU("relu_1"), MaxPool2D("maxpool2d_1", pool, stride)
            m, pool_cache2 = pooling2.forward(x)
            out2, relu_cache2 = relu2.forward(m)
            dx2 = pooling2.backward(relu2.backward(g, relu_cache2)[0], pool_cache2)[0]
        np.testing.assert_array_equal(bits(out2), bits(out), err_msg=f"out, {layout}")
        np.testing.assert_array_equal(dx2, dx, err_msg=f"dx, {layout}")  # values (+0 == -0), NaN where NaN
        if tiles:
            np.testing.assert_array_equal(bits(dx2), bits(dx), err_msg=f"dx bits, {layout}")
        swaps = training_order([relu, pooling]) == (1, 0)
        assert swaps == tiles


def conv_relu_pool_spec(dtype: str, pool, stride):
    return PRESETS["mnist-cnn"].replace(
        dtype=dtype,
        input_shape=(2, 9, 10),
        n_in=180,
        layers=(
            LayerSpec("conv2d", filters=3, kernel=(3, 3), padding=1),
            LayerSpec("relu"),
            LayerSpec("maxpool2d", pool=pool, stride=stride),
            LayerSpec("conv2d", filters=4, kernel=(2, 3), stride=(1, 2)),
            LayerSpec("relu"),
            LayerSpec("maxpool2d", pool=(1, 2)),
            LayerSpec("flatten"),
            LayerSpec("dense", units=5),
        ),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("pool", "stride"), POOLS[:3])
def test_training_in_the_swapped_order_gives_the_layer_orders_numbers(pool, stride, dtype):
    """loss_and_grads and forward (swapped) against the layers run as listed, for 5 SGD steps."""
    spec = conv_relu_pool_spec(dtype, pool, stride)
    swapped, listed = Network(spec, seed=3), Network(spec, seed=3)
    first = (2, 1) if pool == stride else (1, 2)  # the second pair always tiles (pool (1, 2), its stride)
    assert swapped._train_order == (0, *first, 3, 5, 4, 6, 7)
    rng = np.random.default_rng(5)
    for step in range(5):
        x = (np.round(rng.normal(size=(6, 2, 9, 10)) * 2) / 2).astype(dtype)
        y = rng.integers(0, 5, 6)
        loss, grads = swapped.loss_and_grads(x, y)
        outs, caches = listed.forward_cached(x, True)
        loss2, g = listed._loss_and_grad(outs[-1], y)
        grads2 = listed._backward(g, caches)
        assert bits(loss) == bits(loss2), f"loss, step {step}"
        assert grads.keys() == grads2.keys()
        for k in grads:
            np.testing.assert_array_equal(bits(grads[k]), bits(grads2[k]), err_msg=f"{k}, step {step}")
        np.testing.assert_array_equal(bits(swapped.forward(x)), bits(outs[-1]), err_msg=f"forward, step {step}")
        for net, gr in ((swapped, grads), (listed, grads2)):
            for k, p in net.params.items():
                p -= 0.1 * gr[k]
    trace = swapped.trace(x, y)  # the trace keeps the layers' own order, every tensor recorded
    assert [r.name for r in trace.layers] == [layer.name for layer in swapped.layers]
    assert trace.layers[1].out.shape == (6, 3, 9, 10)  # relu_1's output, full size


# Kept arrays (conv.Workspace): the same numbers as fresh arrays, and never one somebody still holds --------


def test_workspace_hands_an_array_out_again_only_when_nobody_holds_it():
    work = conv.Workspace()
    a = work.empty("k", (3, 4), np.float64)
    b = work.empty("k", (3, 4), np.float64)
    assert b is not a and work.arrays["k"] is b  # `a` still held: a fresh one, kept instead
    del a
    view = b[1:].T
    del b
    c = work.empty("k", (3, 4), np.float64)
    assert c.base is None and not np.shares_memory(c, view)  # a view of it is alive: a fresh one
    del view
    kept = id(c)
    del c
    assert id(work.empty("k", (3, 4), np.float64)) == kept  # nobody else holds it: handed out again
    assert id(work.empty("k", (4, 3), np.float64)) != kept  # another shape: a fresh one, kept instead
    small = id(work.arrays["k"])
    big = work.empty("k", (conv.Workspace.KEEP_AT_MOST // 8 + 1,), np.float64)
    assert big.nbytes > conv.Workspace.KEEP_AT_MOST and id(work.arrays["k"]) == small  # too big to keep
    del big
    t = np.empty((2, 3, 5)).transpose(2, 0, 1)
    like = work.empty_like("t", t, np.float32)
    assert like.shape == t.shape and like.dtype == np.float32
    assert np.argsort(like.strides).tolist() == np.argsort(t.strides).tolist()  # the same memory order
    for perm in itertools.permutations(range(4)):  # every memory order of 4 axes, as np.empty_like gives it
        t = np.empty((2, 3, 4, 5)).transpose(perm)
        like = work.empty_like("t4", t)
        assert like.shape == t.shape and like.strides == t.strides == np.empty_like(t).strides, perm


def kept_and_fresh(layer_fresh, layer_kept, x, g, steps=3):
    """Forward and backward `steps` times through a layer with its Workspace and one without, holding
    every earlier cache and result (so the kept arrays must not be handed out under them)."""
    held = []
    for step in range(steps):
        (out_f, cache_f), (out_k, cache_k) = layer_fresh.forward(x + step), layer_kept.forward(x + step)
        (dx_f, grads_f), (dx_k, grads_k) = layer_fresh.backward(g, cache_f), layer_kept.backward(g, cache_k)
        held.append((out_f, out_k, dx_f, dx_k, grads_f, grads_k, cache_k))
    for step, (out_f, out_k, dx_f, dx_k, grads_f, grads_k, cache_k) in enumerate(held):
        np.testing.assert_array_equal(out_k, out_f, err_msg=f"out, step {step}")
        np.testing.assert_array_equal(dx_k, dx_f, err_msg=f"dx, step {step}")
        for k in grads_f:
            np.testing.assert_array_equal(grads_k[k], grads_f[k], err_msg=f"{k}, step {step}")
        again, _ = layer_kept.backward(g, cache_k)  # an old cache, after later forwards: still its own numbers
        np.testing.assert_array_equal(again, dx_f, err_msg=f"dx from the step-{step} cache, later")


def image_layers(dtype: str):
    rng = np.random.default_rng(11)
    W, b = rng.normal(size=(4, 3, 3, 2)).astype(dtype), rng.normal(size=4).astype(dtype)
    conv_pair = [Conv2D("conv2d_1", W.copy(), b.copy(), (2, 1), (1, 2)) for _ in range(2)]
    pool_pairs = [
        [MaxPool2D("maxpool2d_1", pool, stride) for _ in range(2)]
        for pool, stride in (((2, 2), (2, 2)), ((3, 2), (1, 2)))
    ]
    return rng, conv_pair, pool_pairs


class Fresh:
    """A layer with its Workspace taken away: every array fresh, the plain allocation."""

    def __init__(self, layer):
        self.layer = layer
        layer.work = None

    def forward(self, x):
        return self.layer.forward(x)

    def backward(self, g, cache):
        return self.layer.backward(g, cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kept_arrays_give_the_fresh_arrays_numbers_bit_for_bit(dtype):
    rng, (conv_kept, conv_fresh), pool_pairs = image_layers(dtype)
    x = rng.normal(size=(5, 3, 7, 6)).astype(dtype)
    out, _ = conv_kept.forward(x)
    kept_and_fresh(Fresh(conv_fresh), conv_kept, x, rng.normal(size=out.shape).astype(dtype))
    for kept, fresh in pool_pairs:
        xr = np.round(x * 2).astype(dtype)  # ties
        out, _ = kept.forward(xr)
        kept_and_fresh(Fresh(fresh), kept, xr, rng.normal(size=out.shape).astype(dtype))
    relu_kept, relu_fresh = ReLU("relu_1"), ReLU("relu_1")
    relu_fresh.work = conv.Workspace()
    relu_fresh.work.empty = lambda key, shape, dtype: np.empty(shape, dtype)  # plain allocation every time
    kept_and_fresh(relu_fresh, relu_kept, x, rng.normal(size=x.shape).astype(dtype))
    plain_relu = (np.maximum(x, 0), rng.normal(size=x.shape).astype(dtype))
    out, cache = relu_kept.forward(x)
    np.testing.assert_array_equal(out, plain_relu[0])
    np.testing.assert_array_equal(relu_kept.backward(plain_relu[1], cache)[0], plain_relu[1] * (x > 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_training_step_hands_the_layers_kept_arrays_out_again(dtype):
    """The point of the Workspace: once a step's results are dropped, the next step reuses them."""
    rng, (conv_layer, _), pool_pairs = image_layers(dtype)
    pool, relu = pool_pairs[0][0], ReLU("relu_1")
    x = rng.normal(size=(5, 3, 7, 6)).astype(dtype)

    def step():
        h, c1 = conv_layer.forward(x)
        r, c2 = relu.forward(h)
        p, c3 = pool.forward(r)
        g_pool, _ = pool.backward(np.ones_like(p), c3)
        g_relu, _ = relu.backward(g_pool, c2)
        conv_layer.backward(g_relu, c1)  # its dL/dx is col2im's fresh array (d_cols, the GEMM's, is kept)
        return {id(a.base if a.base is not None else a) for a in (h, r, p, g_pool, g_relu, c1[1], *c3[1])}

    first = step()
    assert step() == first  # the same memory, step after step
    kept = {id(a) for layer in (conv_layer, relu, pool) for a in layer.work.arrays.values()}
    assert first <= kept
    assert {"padded", "cols", "out", "d_cols"} <= set(conv_layer.work.arrays)
    assert set(relu.work.arrays) == {"out", "mask", "grad", "zeros"}
    assert set(pool.work.arrays) == {
        "window0",
        "window1",
        "window2",
        "window3",
        "out",
        "chosen0",
        "chosen1",
        "chosen2",
        "chosen3",
        "pending",
        "dx",
    }


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
def test_softmax_cross_entropy_from_one_exp_is_the_plain_form_bit_for_bit(batch, dtype, reduction):
    rng = np.random.default_rng(batch)
    logits = rng.normal(0.0, 20.0, size=(batch, 10)).astype(dtype)
    logits.flat[:4] = np.array([np.finfo(dtype).max / 4, -np.finfo(dtype).max / 4, 1e4, -1e4], dtype)[: logits.size]
    if batch > 2:  # a row whose maximum is a zero of either sign, and a row of equal logits
        logits[1] = -np.abs(logits[1])
        logits[1, :3] = np.array([-0.0, 0.0, -0.0], dtype)
        logits[2] = 3.0
    labels = rng.integers(0, 10, batch)
    rows = np.arange(batch)
    shifted = logits - logits.max(axis=1, keepdims=True)  # the plain form, written out
    d = batch if reduction == "mean" else 1
    plain_value = (np.log(np.exp(shifted).sum(axis=1)) - shifted[rows, labels]).sum() / d
    plain_grad = softmax(logits)
    plain_grad[rows, labels] -= 1
    plain_grad = plain_grad / d
    value, grad = make_loss("softmax_cross_entropy", reduction).value_and_grad(logits, labels)
    assert value.dtype == grad.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(
        np.asarray(value).view(f"u{value.dtype.itemsize}"), np.asarray(plain_value).view(f"u{value.dtype.itemsize}")
    )
    np.testing.assert_array_equal(grad.view(f"u{grad.itemsize}"), plain_grad.view(f"u{grad.itemsize}"))


def assert_same_bits(name: str, fast: np.ndarray, plain: np.ndarray) -> None:
    """Every bit equal: -0.0 is not +0.0 here, and a NaN must be the same NaN (assert_array_equal allows both)."""
    assert fast.dtype == plain.dtype and fast.shape == plain.shape, name
    u = f"u{fast.dtype.itemsize}"
    np.testing.assert_array_equal(np.ascontiguousarray(fast).view(u), np.ascontiguousarray(plain).view(u), err_msg=name)


def per_sample_plain(spec, x, y, order, params=None):
    """train_step row by row (the Network, the loss and the optimiser, every check): the plain loop."""
    net, opt, losses = Network(spec, params=params, seed=0), make_optimizer(spec.optimizer), []
    for i in order:
        losses.append(train_step(net, opt, x[[i]], y[[i]], check_input=False))
    return net, opt, losses


SAMPLE_SGD_CASES = {
    "mnist-sigmoid-per-sample": preset("mnist-sigmoid-per-sample"),
    "relu": LAYER_CASES["relu"],
    "tanh-sum": LAYER_CASES["tanh"].replace(reduction="sum"),
    "sigmoid-tanh-relu": LAYER_CASES["sigmoid"].replace(
        layers=tuple(
            LayerSpec(kind, units=units)
            for kind, units in (
                ("dense", 5),
                ("sigmoid", None),
                ("dense", 4),
                ("tanh", None),
                ("dense", 4),
                ("relu", None),
                ("dense", 3),
            )
        )
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SAMPLE_SGD_CASES))
def test_per_sample_sgd_loop_is_train_step_bit_for_bit(case, dtype):
    spec = SAMPLE_SGD_CASES[case].replace(dtype=dtype)
    x, y = make_batch(spec, 60, seed=12)
    if spec.n_in == 784:
        x = (np.abs(x) * 80).astype(dtype)  # raw-pixel scale: saturated sigmoids, subnormals in float32
    order = np.random.default_rng(13).permutation(60)[:45]
    fast, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    assert SampleSGD.applies(fast, opt, 1)
    seen = []
    mean = train_epoch(fast, opt, x, y, order, 1, on_step=lambda step, loss: seen.append(loss))
    plain, plain_opt, losses = per_sample_plain(spec, x, y, order)
    for k, v in fast.params.items():
        assert not np.array_equal(v, Network(spec, seed=0).params[k]), f"{k} did not move"
        assert_same_bits(k, v, plain.params[k])
    assert [type(v) for v in seen] == [type(v) for v in losses] and np.array_equal(seen, losses)
    assert mean == sum(float(v) for v in losses) / len(losses)
    assert opt.t == plain_opt.t == len(order)
    again = [train_step(n, o, x[[0]], y[[0]]) for n, o in ((fast, opt), (plain, plain_opt))]  # the buffers kept
    assert again[0] == again[1]


def corner_params(spec, x, corner: str) -> dict[str, np.ndarray]:
    """The seed-0 parameters with one IEEE corner planted (see SAMPLE_SGD_CORNERS)."""
    params = Network(spec, seed=0).get_params()
    if corner.startswith("-0.0 weights"):
        params["dense_1.W"][x[0] == 0] = -0.0  # rows a zero pixel of the first sample gives a +0 dL/dW
    if corner == "-0.0 biases":
        for k in params:
            if k.endswith(".b"):
                params[k][...] = -0.0  # b - (+0) keeps -0.0, b - (-0) does not: dL/db must be g.sum's +0
    if corner == "inf weight":
        params["dense_2.W"][0, 0] = np.inf  # the first layer's g is non-finite: 0 * Inf = NaN in zero rows too
    return params


# name: how the inputs are made (raw pixels: integers 1..255, 80 % of them set to 0 or -0.0, or none)
SAMPLE_SGD_CORNERS = {
    "raw pixels": "sparse",
    "-0.0 weights": "sparse",
    "-0.0 weights, lr < 0": "sparse",  # lr * (+0) = -0, and -0.0 - (-0) = +0.0: the zero rows change
    "-0.0 biases": "sparse",
    "-0.0 pixels": "sparse, -0.0",
    "inf weight": "sparse",
    "dense inputs": "dense",
}


def corner_pixels(seed: int, corner: str, dtype, zero_block: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """12 rows of raw pixels (integers 1..255) and labels, made as SAMPLE_SGD_CORNERS[corner] says;
    zero_block: the first 50 pixels zero in rows 0-3 as well (zero in a whole batch of 4)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(12, 784)).astype(dtype)
    how = SAMPLE_SGD_CORNERS[corner]
    if how != "dense":
        zero = -0.0 if "-0.0" in how else 0.0
        x[rng.random(x.shape) < 0.8] = zero
        if zero_block:
            x[:4, :50] = zero
    return x, rng.integers(0, 10, 12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("corner", list(SAMPLE_SGD_CORNERS))
def test_per_sample_sgd_loop_keeps_every_bit_at_the_ieee_corners(corner, dtype):
    spec = preset("mnist-sigmoid-per-sample", dtype=dtype)
    if "lr < 0" in corner:
        spec = spec.replace(optimizer=OptimizerSpec("sgd", lr=-0.003))
    x, y = corner_pixels(16, corner, dtype)
    params = corner_params(spec, x, corner)
    net, opt = Network(spec, params=params), make_optimizer(spec.optimizer)
    assert SampleSGD.applies(net, opt, 1)
    with np.errstate(invalid="ignore", over="ignore"):  # the Inf weight: NaN losses and gradients, in both forms
        mean = train_epoch(net, opt, x, y, np.arange(len(x)), 1)
        plain, _, plain_losses = per_sample_plain(spec, x, y, range(len(x)), params)
    for k, v in net.params.items():
        assert_same_bits(k, v, plain.params[k])
    assert_same_bits("mean loss", np.array(mean), np.array(sum(float(v) for v in plain_losses) / len(x)))
    if corner == "inf weight":
        assert np.isnan(net.params["dense_1.W"]).all(axis=0).any()  # the plain form's NaN columns, zero rows too
    if corner.startswith("-0.0 weights"):  # lr > 0: the -0.0 weights of rows never hit stay; lr < 0 makes them +0.0
        zeros = net.params["dense_1.W"][net.params["dense_1.W"] == 0]
        assert bool(np.signbit(zeros).any()) is (corner == "-0.0 weights")


def test_per_sample_sgd_loop_takes_fortran_ordered_parameters():
    """dL/dW is written into the optimiser's buffers with np.dot(..., out=): they are C-ordered whatever W is."""
    spec = preset("mnist-sigmoid-per-sample")
    x, y = make_batch(spec, 10, seed=17)
    x = (np.abs(x) * 80).astype(spec.dtype)
    params = {k: np.asfortranarray(v) for k, v in Network(spec, seed=0).get_params().items()}
    net, opt = Network(spec, params=params), make_optimizer(spec.optimizer)
    assert net.params["dense_1.W"].flags.f_contiguous and not net.params["dense_1.W"].flags.c_contiguous
    train_epoch(net, opt, x, y, np.arange(2), 2)  # SGD.update makes its buffers first
    train_epoch(net, opt, x, y, np.arange(10), 1)
    plain, plain_opt = Network(spec, params=params), make_optimizer(spec.optimizer)
    for idx in ([0, 1], *([i] for i in range(10))):
        train_step(plain, plain_opt, x[idx], y[idx])
    for k, v in net.params.items():
        assert_same_bits(k, v, plain.params[k])


BATCH_SGD_CASES = {
    **SAMPLE_SGD_CASES,
    "mnist-relu-batched": preset("mnist-relu-batched"),
    "mnist-relu-deep": preset("mnist-relu-deep"),
}


def batched_plain(spec, x, y, order, batch_size, params=None, epochs=1):
    """train_step batch by batch (the general path: Network, loss check, optimiser's dictionaries)."""
    net = Network(spec, seed=0) if params is None else Network(spec, params=params)
    opt = make_optimizer(spec.optimizer)
    losses = [
        train_step(net, opt, x[idx], y[idx], check_input=False)
        for _ in range(epochs)
        for idx in batches(order, batch_size)
    ]
    return net, opt, losses


@pytest.mark.parametrize("batch_size", [7, 32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(BATCH_SGD_CASES))
def test_batched_sgd_loop_is_train_step_bit_for_bit(case, dtype, batch_size):
    spec = BATCH_SGD_CASES[case].replace(dtype=dtype)
    x, y = make_batch(spec, 90, seed=22)
    if spec.n_in == 784:
        x = (np.abs(x) * 80).astype(dtype)  # raw-pixel scale: saturated sigmoids, subnormals in float32
    order = np.random.default_rng(23).permutation(90)[:75]  # the last batch shorter (75 = 10 x 7 + 5 = 2 x 32 + 11)
    fast, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    assert BatchSGD.applies(fast, opt, batch_size) and not SampleSGD.applies(fast, opt, batch_size)
    seen = []
    for _ in range(2):  # the second epoch reuses ReLU's kept arrays
        mean = train_epoch(fast, opt, x, y, order, batch_size, on_step=lambda step, loss: seen.append(loss))
    plain, plain_opt, losses = batched_plain(spec, x, y, order, batch_size, epochs=2)
    for k, v in fast.params.items():
        assert not np.array_equal(v, Network(spec, seed=0).params[k]), f"{k} did not move"
        assert_same_bits(k, v, plain.params[k])
    assert [type(v) for v in seen] == [type(v) for v in losses]
    assert_same_bits("losses", np.array(seen), np.array(losses))
    n = len(losses) // 2
    assert mean == sum(float(v) for v in losses[n:]) / n
    assert opt.t == plain_opt.t == len(losses)


@pytest.mark.parametrize("name", ["mnist-sigmoid-per-sample", "mnist-relu-batched"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("corner", list(SAMPLE_SGD_CORNERS))
def test_batched_sgd_loop_keeps_every_bit_at_the_ieee_corners(corner, dtype, name):
    spec = preset(name, dtype=dtype)
    if "lr < 0" in corner:
        spec = spec.replace(optimizer=OptimizerSpec("sgd", lr=-spec.optimizer.lr))
    x, y = corner_pixels(24, corner, dtype, zero_block=True)  # pixels zero in a whole batch, too
    params = corner_params(spec, x, corner)
    net, opt = Network(spec, params=params), make_optimizer(spec.optimizer)
    assert BatchSGD.applies(net, opt, 4)
    with np.errstate(invalid="ignore", over="ignore"):  # the Inf weight: NaN losses and gradients, in both forms
        mean = train_epoch(net, opt, x, y, np.arange(len(x)), 4)
        plain, _, plain_losses = batched_plain(spec, x, y, np.arange(len(x)), 4, params)
    for k, v in net.params.items():
        assert_same_bits(k, v, plain.params[k])
    assert_same_bits("mean loss", np.array(mean), np.array(sum(float(v) for v in plain_losses) / 3))
    if corner == "inf weight":
        assert np.isnan(net.params["dense_1.W"]).any()


@pytest.mark.parametrize(
    ("what", "spec"),
    [
        ("momentum", LAYER_CASES["sigmoid"].replace(optimizer=OptimizerSpec("momentum", lr=0.1, momentum=0.9))),
        ("weight decay", LAYER_CASES["sigmoid"].replace(optimizer=OptimizerSpec("sgd", lr=0.1, weight_decay=0.1))),
        ("l2", LAYER_CASES["l2"]),
        ("dropout", LAYER_CASES["dropout"]),
        ("leaky relu", LAYER_CASES["leaky_relu"]),
        ("no activation", LAYER_CASES["dense"]),
        ("cross_entropy", LAYER_CASES["softmax"]),
        ("softmax layer, summed cross-entropy", preset("digits-sigmoid-per-sample")),
        ("batchnorm", LAYER_CASES["batchnorm_torch"]),
        ("images", preset("mnist-cnn")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_batched_sgd_loop_is_taken_only_where_it_is_the_same_maths(what, spec):
    net, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    assert not BatchSGD.applies(net, opt, 4), what
    control = Network(SAMPLE_SGD_CASES["relu"], seed=0)
    assert BatchSGD.applies(control, SGD(OptimizerSpec("sgd", lr=0.1)), 2)
    assert not BatchSGD.applies(control, SGD(OptimizerSpec("sgd", lr=0.1)), 1)  # batch 1: SampleSGD's


@pytest.mark.parametrize(
    ("what", "spec", "batch_size"),
    [
        ("batch 2", LAYER_CASES["sigmoid"], 2),
        ("momentum", LAYER_CASES["sigmoid"].replace(optimizer=OptimizerSpec("momentum", lr=0.1, momentum=0.9)), 1),
        ("weight decay", LAYER_CASES["sigmoid"].replace(optimizer=OptimizerSpec("sgd", lr=0.1, weight_decay=0.1)), 1),
        ("l2", LAYER_CASES["l2"], 1),
        ("dropout", LAYER_CASES["dropout"], 1),
        ("leaky relu", LAYER_CASES["leaky_relu"], 1),
        ("no activation", LAYER_CASES["dense"], 1),
        ("cross_entropy", LAYER_CASES["softmax"], 1),
        ("softmax layer, summed cross-entropy", preset("digits-sigmoid-per-sample"), 1),
        ("batchnorm", LAYER_CASES["batchnorm_torch"], 1),
        ("images", preset("mnist-cnn"), 1),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_per_sample_sgd_loop_is_taken_only_where_it_is_the_same_maths(what, spec, batch_size):
    assert not SampleSGD.applies(Network(spec, seed=0), make_optimizer(spec.optimizer), batch_size), what


@pytest.mark.parametrize("bad", [10, -1])  # -1 would index the last class silently if nothing checked it
@pytest.mark.parametrize(
    ("name", "batch_size"),
    [
        ("mnist-sigmoid-per-sample", 1),
        ("mnist-relu-batched", 3),
        ("mnist-relu-batched", 1),
        ("digits-sigmoid-per-sample", 2),
        ("mnist-cnn", 2),
    ],
)
def test_train_epoch_checks_every_label_before_the_first_step(name, batch_size, bad):
    # SampleSGD (batch-1 SGD) and the batched path alike: all labels of the epoch once, not each batch's
    # in its step (the loss's check is skipped, labels_checked=True), so a bad label in the last batch
    # stops the epoch before any parameter moves.
    spec = preset(name)
    x, y = make_batch(spec, 8, seed=14)
    y[5] = bad
    net, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    before = net.get_params()
    order = np.array([0, 1, 2, 3, 4, 6, 7, 5])  # the bad label last, at position 7 of the order
    n_out = net.spec.layer_shapes()[-1][0]
    with pytest.raises(
        LabelError,
        match=rf"train_epoch: labels y\[order\] \({net.loss.name}\): expected labels in \[0, {n_out}\), got {bad} at index 7",
    ):
        train_epoch(net, opt, x, y, order, batch_size)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(LabelError, match="expected integer labels"):
        train_epoch(net, opt, x, y.astype(np.float64), order, batch_size)
    y[5] = 0
    train_epoch(net, opt, x, y, order, batch_size)  # good labels: it trains
    assert any((v != before[k]).any() for k, v in net.params.items())


def test_labels_checked_skips_only_the_label_check():
    from reference.losses import make_loss

    rng = np.random.default_rng(21)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    for name in ("softmax_cross_entropy", "multiclass_hinge", "cross_entropy", "nll"):
        loss = make_loss(name)
        pred = logits if name in ("softmax_cross_entropy", "multiclass_hinge") else softmax(logits)
        a, b = loss.value_and_grad(pred, labels), loss.value_and_grad(pred, labels, labels_checked=True)
        assert a[0] == b[0] and (a[1] == b[1]).all(), name
        with pytest.raises(ShapeError, match="expected predictions of shape"):  # pred is still checked
            loss.value_and_grad(pred[0], labels, labels_checked=True)
    target = rng.normal(size=(6, 4))
    target[2, 1] = np.nan
    for name in ("mse", "l1"):  # an element-wise loss has no labels: its target is checked whatever the flag
        with pytest.raises(NonFiniteError, match="expected finite values"):
            make_loss(name).value_and_grad(logits, target, labels_checked=True)


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_train_epoch_pauses_the_cycle_collector_and_restores_it(enabled):
    import gc

    spec = LAYER_CASES["relu"]
    x, y = make_batch(spec, 12, seed=15)
    net, opt = Network(spec, seed=0), make_optimizer(spec.optimizer)
    seen = []
    (gc.enable if enabled else gc.disable)()
    try:
        train_epoch(net, opt, x, y, np.arange(12), 4, on_step=lambda step, loss: seen.append(gc.isenabled()))
        assert seen == [False, False, False] and gc.isenabled() is enabled

        def boom(step, loss):
            raise RuntimeError("on_step failed")

        with pytest.raises(RuntimeError, match="on_step failed"):
            train_epoch(net, opt, x, y, np.arange(12), 1, on_step=boom)
        assert gc.isenabled() is enabled  # restored on the error too
    finally:
        gc.enable()
