"""The checker must be able to fail: a reference with a deliberately wrong pass is caught, and the
comparison names the tensor where the bug is as its first divergence.

Each case monkeypatches one method of the numpy reference with a typical student bug (a missing
derivative, a flipped sign, a transposed or unsummed gradient, a loss off by the batch size ...)
and compares the broken reference against an oracle:

    torch     the torch twin (oracles/torch_twin.py), float32 and float64: sees forward bugs at the
              layer's output and backward bugs at the gradient they corrupt
    keras     the keras twin (oracles/keras_twin.py), float32 and float64, for the conv bugs: the
              same verdicts through the NHWC layout and the permuted Dense after the Flatten
    numeric   finite differences (oracles/numeric.py), float64, no torch needed: it differentiates
              the reference's own forward pass, so a forward bug shows up only in the gradient of
              the layer below (the analytic backward no longer matches the function computed)

Every case first checks that the same comparison passes without the patch, so a pass-fail flip is
the patch's doing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from cases import LAYER_CASES, OPTIMIZER_CASES, make_batch

from oracles.compare import Comparison, compare, compare_params
from oracles.numeric import draw_masks, numeric_trace
from reference import conv, layers, losses, optimizers
from reference.network import Network
from reference.optimizers import make_optimizer
from reference.train import train_step

# Broken passes -----------------------------------------------------------------------------------


def sigmoid_backward_without_derivative(self, dL_dout, s):
    return dL_dout, {}  # forgot * s * (1 - s)


def sigmoid_forward_of_twice_x(self, x, train=True):
    s = layers.sigmoid(2 * x)  # a forward bug; the backward still uses s (1 - s)
    return s, s


def tanh_backward_with_sigmoids_derivative(self, dL_dout, t):
    return dL_dout * t * (1 - t), {}  # should be 1 - t^2


def relu_backward_passes_everything(self, dL_dout, x):
    return dL_dout, {}  # forgot the mask [x > 0]


def leaky_relu_backward_ignores_alpha(self, dL_dout, x):
    return dL_dout * (x > 0), {}  # a ReLU's derivative: the slope alpha is lost


def softmax_backward_diagonal_only(self, dL_dout, s):
    return dL_dout * s * (1 - s), {}  # only the diagonal of the Jacobian diag(s) - s s^T


def dropout_backward_without_scale(self, dL_dout, scale):
    return (dL_dout if scale is None else dL_dout * (scale > 0)), {}  # the mask without 1 / (1 - rate)


def batchnorm_backward_without_mean_terms(self, dL_dout, cache):
    _, x_hat, var = cache  # treats the batch statistics as constants
    grads = {"gamma": (dL_dout * x_hat).sum(axis=0), "beta": dL_dout.sum(axis=0)}
    return dL_dout * self.params["gamma"] / np.sqrt(var + self.eps), grads


def dense_dW_sign_flipped(self, dL_dout, x):
    return {"W": -np.dot(x.T, dL_dout), "b": dL_dout.sum(axis=0)}


def dense_dW_transposed(self, dL_dout, x):
    return {"W": np.dot(dL_dout.T, x), "b": dL_dout.sum(axis=0)}  # (n_out, n_in)


def dense_db_averaged(self, dL_dout, x):
    return {"W": np.dot(x.T, dL_dout), "b": dL_dout.mean(axis=0)}  # a mean where a sum belongs


_softmax_ce = losses.SoftmaxCrossEntropy.value_and_grad


def loss_gradient_times_batch(self, logits, labels, labels_checked=False):
    value, grad = _softmax_ce(self, logits, labels, labels_checked)
    return value, grad * logits.shape[0]  # forgot to divide the gradient by the batch size


def loss_value_summed(self, logits, labels, labels_checked=False):
    value, grad = _softmax_ce(self, logits, labels, labels_checked)
    return value * logits.shape[0], grad  # reports the sum, differentiates the mean


def conv_dW_in_im2col_order(g, cols, W):
    dW2 = conv._g_matrix(g) @ cols.T  # (F, KH KW C)
    return dW2.reshape(W.shape), conv._g_matrix(g).sum(axis=1)  # forgot the (KH, KW, C) -> (C, KH, KW) transpose


_col2im = conv.col2im  # the correct one, before any patch


def col2im_cropped_at_the_corner(d_cols, x_shape, kernel, stride, padding, work=None):
    (N, C, H, W), (ph, pw) = x_shape, padding
    padded = _col2im(d_cols, (N, C, H + 2 * ph, W + 2 * pw), kernel, stride, (0, 0))
    return padded[:, :, :H, :W]  # the padding cut off at the bottom-right only: dx shifted by (ph, pw)


def maxpool_backward_to_the_whole_window(self, dL_dout, cache):
    x, _ = cache
    return conv.avgpool2d_backward(dL_dout, x.shape, self.pool, self.stride) * (self.pool[0] * self.pool[1]), {}


def conv_forward_with_flipped_kernel(self, x, train=True):
    W = self.params["W"][:, :, ::-1, ::-1]  # a convolution, not the cross-correlation every framework computes
    out, cols = conv.conv2d_forward(x, W, self.params["b"], self.stride, self.padding)
    return out, (x.shape, cols)


@dataclass(frozen=True)
class Bug:
    case: str  # a tests/cases.py LAYER_CASES id
    owner: object  # the class patched
    method: str
    broken: Callable
    first: dict[str, str]  # oracle -> the tensor named as the first divergence (the oracles it is checked with)


BUGS = {
    "sigmoid-backward-without-derivative": Bug(
        "sigmoid",
        layers.Sigmoid,
        "backward",
        sigmoid_backward_without_derivative,
        {"torch": "sigmoid_1.grad_in", "numeric": "sigmoid_1.grad_in"},
    ),
    "sigmoid-forward-of-2x": Bug(
        "sigmoid",
        layers.Sigmoid,
        "forward",
        sigmoid_forward_of_twice_x,
        {"torch": "sigmoid_1.out", "numeric": "sigmoid_1.grad_in"},
    ),
    "tanh-backward-sigmoid-derivative": Bug(
        "tanh",
        layers.Tanh,
        "backward",
        tanh_backward_with_sigmoids_derivative,
        {"torch": "tanh_1.grad_in", "numeric": "tanh_1.grad_in"},
    ),
    "relu-backward-no-mask": Bug(
        "relu",
        layers.ReLU,
        "backward",
        relu_backward_passes_everything,
        {"torch": "relu_1.grad_in", "numeric": "relu_1.grad_in"},
    ),
    "leaky-relu-backward-no-alpha": Bug(
        "leaky_relu",
        layers.LeakyReLU,
        "backward",
        leaky_relu_backward_ignores_alpha,
        {"torch": "leaky_relu_1.grad_in", "numeric": "leaky_relu_1.grad_in"},
    ),
    "softmax-backward-diagonal-only": Bug(
        "softmax",
        layers.Softmax,
        "backward",
        softmax_backward_diagonal_only,
        {"torch": "softmax_1.grad_in", "numeric": "softmax_1.grad_in"},
    ),
    "dropout-backward-without-scale": Bug(
        "dropout",
        layers.Dropout,
        "backward",
        dropout_backward_without_scale,
        {"torch": "dropout_1.grad_in", "numeric": "dropout_1.grad_in"},
    ),
    "batchnorm-backward-without-mean-terms": Bug(
        "batchnorm_torch",
        layers.BatchNorm,
        "backward",
        batchnorm_backward_without_mean_terms,
        {"torch": "batchnorm_1.grad_in", "numeric": "batchnorm_1.grad_in"},
    ),
    "dense-dW-sign-flipped": Bug(
        "dense", layers.Dense, "param_grads", dense_dW_sign_flipped, {"torch": "dense_2.dW", "numeric": "dense_2.dW"}
    ),
    "dense-dW-transposed": Bug(
        "dense", layers.Dense, "param_grads", dense_dW_transposed, {"torch": "dense_2.dW", "numeric": "dense_2.dW"}
    ),
    "dense-db-averaged": Bug(
        "dense", layers.Dense, "param_grads", dense_db_averaged, {"torch": "dense_2.db", "numeric": "dense_2.db"}
    ),
    "loss-gradient-times-batch": Bug(
        "dense",
        losses.SoftmaxCrossEntropy,
        "value_and_grad",
        loss_gradient_times_batch,
        {"torch": "dense_2.grad_out", "numeric": "dense_2.grad_out"},
    ),
    # The numeric oracle differentiates the reported (summed) value: its gradients are batch x larger.
    "loss-value-summed": Bug(
        "dense",
        losses.SoftmaxCrossEntropy,
        "value_and_grad",
        loss_value_summed,
        {"torch": "loss", "numeric": "dense_2.grad_out"},
    ),
    # Convolutions: each caught by finite differences, torch and keras.
    "conv-dW-in-im2col-order": Bug(
        "conv2d-k3x2-s2-p0",
        conv,
        "conv2d_param_grads",
        conv_dW_in_im2col_order,
        {"torch": "conv2d_1.dW", "keras": "conv2d_1.dW", "numeric": "conv2d_1.dW"},
    ),
    "conv-dx-padding-cut-at-one-corner": Bug(
        "conv2d-k2x3-s1-p1",
        conv,
        "col2im",
        col2im_cropped_at_the_corner,
        {"torch": "conv2d_1.grad_in", "keras": "conv2d_1.grad_in", "numeric": "conv2d_1.grad_in"},
    ),
    "maxpool-backward-to-the-whole-window": Bug(
        "maxpool2d-p2-s2",
        layers.MaxPool2D,
        "backward",
        maxpool_backward_to_the_whole_window,
        {"torch": "maxpool2d_1.grad_in", "keras": "maxpool2d_1.grad_in", "numeric": "maxpool2d_1.grad_in"},
    ),
    # A forward bug: the twins see the output; finite differences differentiate the flipped forward,
    # which the (correct) backward does not match, first at dW.
    "conv-forward-flipped-kernel": Bug(
        "conv2d-k3x2-s1-p0",
        layers.Conv2D,
        "forward",
        conv_forward_with_flipped_kernel,
        {"torch": "conv2d_1.out", "keras": "conv2d_1.out", "numeric": "conv2d_1.dW"},
    ),
}

BATCH = 4  # > 1: a sum and a mean over the batch differ; small: finite differences stay cheap


def oracle_params():
    for bug in BUGS:
        yield pytest.param(bug, "numeric", "float64", id=f"{bug}-numeric")
        for twin in ("torch", "keras"):
            if twin in BUGS[bug].first:
                for dtype in ("float32", "float64"):
                    yield pytest.param(bug, twin, dtype, id=f"{bug}-{twin}-{dtype}")


def compare_with(oracle: str, spec, params, x, y, masks) -> Comparison:
    """The (possibly patched) reference's trace against the oracle's, under the one policy."""
    net = Network(spec, params=params)
    mine = net.trace(x, y, masks=masks)
    if oracle == "numeric":
        theirs = numeric_trace(Network(spec, params=params), x, y, masks=masks)
        return compare(mine, theirs, oracle="numeric", dtype=spec.dtype)
    if oracle == "keras":
        pytest.importorskip("keras")
        from oracles.keras_twin import KerasTwin

        return compare(mine, KerasTwin(spec, params).trace(x, y, masks=masks), oracle="twin")
    pytest.importorskip("torch")
    from oracles.torch_twin import TorchTwin

    return compare(mine, TorchTwin(spec, params).trace(x, y, masks=masks), oracle="twin")


@pytest.mark.parametrize(("bug_id", "oracle", "dtype"), list(oracle_params()))
def test_broken_reference_is_caught_at_the_right_tensor(bug_id, oracle, dtype, monkeypatch):
    bug = BUGS[bug_id]
    spec = LAYER_CASES[bug.case].replace(dtype=dtype)
    params = Network(spec, seed=0).get_params()
    x, y = make_batch(spec, BATCH, seed=1)
    masks = draw_masks(Network(spec, params=params), x) if "dropout" in bug.case else None

    control = compare_with(oracle, spec, params, x, y, masks)
    assert control.passed, "the unpatched reference must agree first:\n" + control.report()

    monkeypatch.setattr(bug.owner, bug.method, bug.broken)
    broken = compare_with(oracle, spec, params, x, y, masks)
    assert not broken.passed, f"{bug_id} went unnoticed by the {oracle} oracle:\n" + broken.report(verbose=True)
    assert broken.first_divergence.name == bug.first[oracle], broken.report()
    assert f"first divergence: {bug.first[oracle]}" in broken.report()


# Broken optimisers: caught against torch.optim ---------------------------------------------------


def adam_without_bias_correction(self, name, p, g, owned=False):
    b1, b2 = self.spec.beta1, self.spec.beta2
    m, v = self._slot(name, "m", p), self._slot(name, "v", p)
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    p -= self.lr * m / (np.sqrt(v) + 1e-8)


def momentum_without_memory(self, name, p, g, owned=False):
    p -= self.lr * g  # the velocity is never kept: plain SGD


def decays_every_parameter(self, name):
    return True  # ignores decay_biases=False


OPTIMIZER_BUGS = {
    "adam-without-bias-correction": ("adam-torch", {}, optimizers.Adam, "update", adam_without_bias_correction, 1),
    "momentum-without-memory": ("momentum-torch", {}, optimizers.Momentum, "update", momentum_without_memory, 2),
    "decay-biases-flag-ignored": (
        "sgd-torch-coupled",
        {"decay_biases": False},
        optimizers.Optimizer,
        "_decays",
        decays_every_parameter,
        2,  # the biases start at 0: decaying them changes nothing before step 2
    ),
}
FIRST_PARAM = {"decay-biases-flag-ignored": "dense_1.b"}  # else the first parameter, dense_1.W


@pytest.mark.parametrize("bug_id", list(OPTIMIZER_BUGS))
def test_broken_optimizer_is_caught_at_the_first_wrong_step(bug_id, monkeypatch):
    pytest.importorskip("torch")
    from oracles.torch_twin import TorchTwin

    case, changes, owner, method, broken, expected_step = OPTIMIZER_BUGS[bug_id]
    opt = dataclasses.replace(OPTIMIZER_CASES[case], **changes)
    spec = LAYER_CASES["l2"].replace(optimizer=opt)
    monkeypatch.setattr(owner, method, broken)
    net = Network(spec, seed=0)
    twin = TorchTwin(spec, net.get_params())
    ref_opt = make_optimizer(spec.optimizer)
    for step in range(1, 6):
        x, y = make_batch(spec, 7, seed=step)
        train_step(net, ref_opt, x, y)
        twin.step(x, y)
        result = compare_params(net.get_params(), twin.get_params())
        if not result.passed:
            break
    assert not result.passed, f"{bug_id} went unnoticed over 5 steps"
    assert step == expected_step, f"{bug_id}: first caught after step {step}, expected {expected_step}"
    assert result.first_divergence.name == FIRST_PARAM.get(bug_id, "dense_1.W"), result.report()


def test_compare_params_of_two_empty_dictionaries():
    """Two empty dictionaries (the state of a model without batchnorm) agree with no rows, with or
    without a dtype (was StopIteration without one); one side empty is an error naming both."""
    for kwargs in ({}, {"dtype": "float64"}):
        result = compare_params({}, {}, **kwargs)
        assert result.rows == [] and result.passed
    with pytest.raises(ValueError, match="parameter names differ"):
        compare_params({"dense_1.W": np.zeros(2)}, {})
