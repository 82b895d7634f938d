"""Tests written to kill the mutants that survived the rest of the suite (scripts/mutation.sh).

Each test pins a contract the other suites left open: what a default is, what dtype a layer keeps,
what an optimiser's state holds, a gradient formula on a value the other tests never used (gamma
not 1 in eval-mode batchnorm), an error message's row. The mutant each one kills is named in its
docstring (mutmut names: reference.<module>.x<function>__mutmut_<n>). The survivors that change no
result (equivalent mutants) are listed in README "Regression checks", with the reason.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from cases import LAYER_CASES, make_batch
from helpers import assert_close

from oracles.compare import compare
from oracles.numeric import numeric_trace
from reference.errors import NonFiniteError, ShapeError, SpecError
from reference.layers import BatchNorm, Dense, Dropout, ReLU, Softmax, softmax
from reference.losses import LOSSES, CrossEntropy, SoftmaxCrossEntropy, one_hot
from reference.network import Network
from reference.optimizers import make_optimizer
from reference.spec import LayerSpec, ModelSpec, OptimizerSpec

L = LayerSpec


def test_training_a_network_that_starts_with_batchnorm_uses_the_trace_gradients():
    """Layer.param_grads (the default, for a first parametrised layer that is not Dense): mutants 1-5."""
    spec = ModelSpec(n_in=6, layers=(L("batchnorm"), L("dense", units=5), L("tanh"), L("dense", units=3)))
    x, y = make_batch(spec, 7, seed=1)
    trace = Network(spec, seed=2).trace(x, y)
    _, grads = Network(spec, seed=2).loss_and_grads(x, y)
    expected = {f"{rec.name}.{k}": v for rec in trace.layers for k, v in rec.grads.items()}
    assert (
        set(grads)
        == set(expected)
        == {"batchnorm_1.gamma", "batchnorm_1.beta", *(f"dense_{i}.{p}" for i in (1, 2) for p in "Wb")}
    )
    for name, g in grads.items():
        np.testing.assert_array_equal(g, expected[name], err_msg=name)


def test_layer_repr_names_the_class_the_layer_and_its_parameter_shapes():
    """Layer.__repr__: mutants 1-9."""
    dense = Dense("dense_1", np.zeros((3, 2)), np.zeros(2))
    assert repr(dense) == "Dense(dense_1, W(3, 2), b(2,))"
    assert repr(ReLU("relu_1")) == "ReLU(relu_1)"


@pytest.mark.parametrize("keep", [None, 0.7], ids=["rate", "keep"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_mask_is_zero_one_in_the_asked_dtype_keeping_1_minus_rate(dtype, keep):
    """Dropout.draw_mask: astype(None) would hand a twin a float64 mask (mutant 1; mutant 2 in the keep form)."""
    layer = Dropout("dropout_1", 0.3 if keep is None else None, np.random.default_rng(0), keep=keep)
    mask = layer.draw_mask((400, 50), np.dtype(dtype))
    assert mask.dtype == np.dtype(dtype)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs(mask.mean() - 0.7) < 4 * np.sqrt(0.7 * 0.3 / mask.size)  # 4 sigma of 20,000 draws


def test_dropout_rate_and_keep_may_differ_by_1e12_and_no_more():
    """Kills reference.layers.xǁDropoutǁ__init____mutmut_15 (`>` -> `>=`) and the tolerance's own mutants:
    a rate given beside keep must be 1 - keep within 1e-12, the bound included (1e-12 - 0.0 is exact)."""
    rng = np.random.default_rng(0)
    assert Dropout("dropout_1", 1e-12, rng, keep=1.0).keep_prob == 1.0
    with pytest.raises(SpecError, match=r"^dropout_1: rate 2e-12 and keep 1.0 disagree"):
        Dropout("dropout_1", 2e-12, rng, keep=1.0)


def test_forward_defaults_to_training_mode():
    """Dropout.forward and BatchNorm.forward with train=False as the default: mutants 1 of each."""
    x = np.random.default_rng(0).normal(size=(8, 5))
    dropped, _ = Dropout("dropout_1", 0.5, np.random.default_rng(1)).forward(x)
    expected, _ = Dropout("dropout_1", 0.5, np.random.default_rng(1)).forward(x, train=True)
    np.testing.assert_array_equal(dropped, expected)
    assert (dropped == 0).any()
    bn = BatchNorm("batchnorm_1", 5, np.float64)
    out, _ = bn.forward(x)
    assert_close("batch mean of the output", out.mean(axis=0), np.zeros(5), "float64", "forward")  # not running ones
    np.testing.assert_array_equal(bn.state["running_mean"], 0.1 * x.mean(axis=0))


def test_dropout_of_rate_zero_is_the_identity_and_draws_nothing():
    """Dropout.forward: `rate == 1` for `rate == 0` draws a mask of ones, moving the shared stream (mutant 5)."""
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    x = np.random.default_rng(4).normal(size=(6, 4))
    out, cache = Dropout("dropout_1", 0.0, rng).forward(x, train=True)
    np.testing.assert_array_equal(out, x)
    assert cache is None
    assert rng.bit_generator.state == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_parameters_and_statistics_keep_the_dtype(dtype):
    """BatchNorm.__init__: gamma or beta created as float64 (mutants 20, 22, 26, 28)."""
    bn = BatchNorm("batchnorm_1", 4, dtype)
    for name, a in {**bn.params, **bn.state}.items():
        assert a.dtype == dtype, name
    np.testing.assert_array_equal(bn.params["gamma"], np.ones(4))
    np.testing.assert_array_equal(bn.params["beta"], np.zeros(4))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", ["batchnorm_torch", "batchnorm_keras"])
def test_batchnorm_with_gamma_and_beta_not_one_and_zero_matches_finite_differences(case, train):
    """BatchNorm.backward: dL/dx = g * gamma / sigma in eval mode; `/ gamma` passes while gamma == 1 (mutant 24)."""
    net = Network(LAYER_CASES[case], seed=1)
    bn = next(layer for layer in net.layers if isinstance(layer, BatchNorm))
    rng = np.random.default_rng(5)
    bn.params["gamma"][...] = rng.uniform(0.5, 2.0, bn.params["gamma"].shape)
    bn.params["beta"][...] = rng.normal(size=bn.params["beta"].shape)
    bn.state["running_mean"][...] = rng.normal(size=bn.state["running_mean"].shape)
    bn.state["running_var"][...] = rng.uniform(0.5, 2.0, bn.state["running_var"].shape)
    x, y = make_batch(net.spec, 6, seed=6)
    numeric = numeric_trace(net, x, y, train=train)
    compare(net.trace(x, y, train=train), numeric, oracle="numeric", names=("reference", "numeric")).assert_ok()


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_a_weight_decay_of_exactly_one_still_decays(mode):
    """Optimizer.step: `weight_decay != 1` in place of `!= 0` (mutant 7)."""
    p0 = np.random.default_rng(7).normal(size=(3, 2))
    g = np.random.default_rng(8).normal(size=(3, 2))
    p = p0.copy()
    make_optimizer(OptimizerSpec("sgd", lr=0.1, weight_decay=1.0, decay_mode=mode)).step(
        {"dense_1.W": p}, {"dense_1.W": g}
    )
    expected = p0 - 0.1 * (g + 1.0 * p0) if mode == "coupled" else (p0 - 0.1 * 1.0 * p0) - 0.1 * g
    np.testing.assert_array_equal(p, expected)


def test_sgd_keeps_one_buffer_per_parameter():
    """SGD.update: the fast form promises no allocation per step; a fresh buffer every step (mutants 1, 2)."""
    opt = make_optimizer(OptimizerSpec("sgd", lr=0.1))
    p, g = np.ones((4, 3)), np.full((4, 3), 0.5)
    opt.step({"dense_1.W": p}, {"dense_1.W": g})
    buffer = opt.buffers["dense_1.W"]
    opt.step({"dense_1.W": p}, {"dense_1.W": g})
    assert opt.buffers["dense_1.W"] is buffer
    np.testing.assert_array_equal(p, 1.0 - 0.1 * 0.5 - 0.1 * 0.5)


def state_after_one_step(name: str, convention: str, g: np.ndarray) -> dict[str, np.ndarray]:
    spec = OptimizerSpec(name, lr=0.1, momentum=0.9 if name in ("momentum", "nesterov") else 0.0, convention=convention)
    opt = make_optimizer(spec)
    opt.step({"dense_1.W": np.zeros_like(g)}, {"dense_1.W": g})
    return opt.state["dense_1.W"]


G = np.random.default_rng(9).normal(size=(3, 2))
STATE_AFTER_ONE_STEP = {
    # the state each rule's docstring names, after one step from zeros with gradient G
    ("momentum", "torch"): {"v": G},  # v <- mu v + g
    ("momentum", "keras"): {"v": -(0.1 * G)},  # v <- mu v - lr g
    ("nesterov", "torch"): {"v": G},
    ("nesterov", "keras"): {"v": -(0.1 * G)},
    ("rmsprop", "torch"): {"s": (1 - 0.99) * G * G},  # s <- rho s + (1 - rho) g^2, rho 0.99
    ("rmsprop", "keras"): {"s": (1 - 0.9) * G * G},  # rho 0.9
    ("adam", "torch"): {"m": (1 - 0.9) * G, "v": (1 - 0.999) * G * G},
    ("adam", "keras"): {"m": (1 - 0.9) * G, "v": (1 - 0.999) * G * G},
}


@pytest.mark.parametrize(
    ("name", "convention"), STATE_AFTER_ONE_STEP, ids=[f"{n}-{c}" for n, c in STATE_AFTER_ONE_STEP]
)
def test_optimizer_state_holds_what_its_rule_names(name, convention):
    """Momentum/Nesterov: the torch and keras rules swapped (`!=`, "TORCH") give the same parameters
    up to rounding but not the same velocity; every optimiser: a state slot under another key."""
    state = state_after_one_step(name, convention, G)
    expected = STATE_AFTER_ONE_STEP[(name, convention)]
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_default_reduction_is_the_mean(name):
    """Loss.__init__ and NLL.__init__ defaults "XXmeanXX" / "MEAN" (mutants 1, 2 of each)."""
    assert LOSSES[name]().reduction == "mean"


def test_predictions_that_are_not_a_batch_of_rows_are_named_in_the_error():
    """Loss.check: the message of ShapeError(None) or describe(None) (mutants 3, 4)."""
    with pytest.raises(
        ShapeError,
        match=r"softmax_cross_entropy: expected predictions of shape \(batch, n_out\), got float64 array of shape \(3,\)",
    ):
        SoftmaxCrossEntropy().value_and_grad(np.zeros(3), np.zeros(3, np.int64))


def test_one_hot():
    """one_hot, used by no other code: mutants 1-10."""
    out = one_hot(np.array([2, 0, 1]), 4, np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])


def test_a_zero_label_probability_is_named_by_its_row():
    """CrossEntropy.value_and_grad: the row found by argmax(None), `< 0`, `<= 1`, and the message (mutants 15-20)."""
    probs = np.full((4, 3), 1 / 3)
    probs[2] = [0.5, 0.0, 0.5]
    with pytest.raises(
        NonFiniteError, match=r"got 0\.0 at row 2 \(label 1\); the loss would be infinite \('nll' clips"
    ):
        CrossEntropy().value_and_grad(probs, np.array([0, 1, 1, 2]))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)], ids=["one-row", "3-d"])
def test_softmax_works_along_the_last_axis_of_any_rank(shape):
    """softmax: `axis=+1` for `axis=-1` is the same on (batch, n) only (mutants 8, 16)."""
    x = np.random.default_rng(10).normal(size=shape)
    rows = x.reshape(-1, 5)
    expected = np.exp(rows - rows.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(softmax(x), expected.reshape(shape))


def test_softmax_layer_backward_works_along_the_last_axis_of_any_rank():
    """Softmax.backward: `sum(axis=+1)` for `axis=-1` is the same on (batch, n) only (mutant 8).

    dL/dx = J^T g row by row, J = diag(s) - s s^T, written out with the Jacobian per row."""
    rng = np.random.default_rng(11)
    x, g = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    layer = Softmax("softmax_1")
    out, cache = layer.forward(x)
    grad_in, grads = layer.backward(g, cache)
    expected = np.empty_like(x)
    for i in np.ndindex(*x.shape[:-1]):
        s = out[i]
        expected[i] = (np.diag(s) - np.outer(s, s)).T @ g[i]
    assert grads == {}
    assert_close("dL/dx", grad_in, expected, "float64", "gradient", names=("backward", "Jacobian"))


class _Draws:
    """A stand-in for numpy.random.Generator whose random() returns the values it was given."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def random(self, shape):
        return self.values.reshape(shape)


def test_dropout_keeps_a_unit_whose_draw_equals_the_rate():
    """Dropout.draw_mask: keep iff u >= rate with u ~ U[0, 1) makes P(keep) exactly 1 - rate; `>`
    drops u == rate too (mutant 3). The draws 0.25 and 0.5 are exact in binary, so the boundary is hit."""
    layer = Dropout("dropout_1", 0.25, _Draws(np.array([0.0, 0.2499999, 0.25, 0.2500001, 0.5])))
    np.testing.assert_array_equal(layer.draw_mask((1, 5), np.float64), [[0, 0, 1, 1, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_parameters_start_as_ones_and_zeros_in_its_dtype(dtype):
    """Kills reference.layers.xǁLayerNormǁ__init____mutmut_7, 9, 13, 15 (gamma or beta without the dtype:
    float64). A Network replaces them with its own cast copies, and test_every_layer_keeps_float32 builds
    its layers at collection, before a mutant is switched on, so the layer is built here."""
    from reference.layers import LayerNorm

    layer = LayerNorm("layernorm_1", 3, dtype)
    assert layer.params["gamma"].dtype == layer.params["beta"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(layer.params["gamma"], np.ones(3))
    np.testing.assert_array_equal(layer.params["beta"], np.zeros(3))
    out, cache = layer.forward(np.arange(6, dtype=dtype).reshape(2, 3))
    assert out.dtype == layer.backward(np.ones_like(out), cache)[0].dtype == np.dtype(dtype)


def test_dropout_keep_drops_a_unit_whose_draw_equals_keep():
    """Dropout.draw_mask with keep p: keep iff u < p (CS231n's `rand < p`, P(keep) exactly p); `<=` would
    keep u == p too. 0.25 is exact in binary, so the boundary is hit."""
    layer = Dropout("dropout_1", None, _Draws(np.array([0.0, 0.2499999, 0.25, 0.2500001, 0.5])), keep=0.25)
    np.testing.assert_array_equal(layer.draw_mask((1, 5), np.float64), [[1, 1, 0, 0, 0]])


def test_cs231n_mask_drops_a_unit_whose_draw_equals_p():
    """cs231n_dropout_mask: `rand < p`, as the skeleton; with p set to the stream's first draw that unit is dropped."""
    from reference.layers import cs231n_dropout_mask

    p = float(np.random.RandomState(5).rand(3)[0])
    np.testing.assert_array_equal(cs231n_dropout_mask((3,), p, 5, np.float64)[0], 0.0)
    assert cs231n_dropout_mask((3,), np.nextafter(p, 1), 5, np.float64)[0] == 1.0


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_a_pool_given_a_flat_input_names_itself(kind):
    """Kills reference.layers.xǁAvgPool2Dǁforward__mutmut_2 and xǁMaxPool2Dǁforward__mutmut_2 (the
    error names `None` instead of the layer), x__check_images__mutmut_3 and _4 (no message; `None`
    described instead of the input): a pool fed (batch, n) says which layer, what it expected and what came."""
    from reference.errors import ShapeError
    from reference.layers import AvgPool2D, MaxPool2D

    layer = (MaxPool2D if kind == "maxpool" else AvgPool2D)(f"{kind}2d_3", (2, 2), (2, 2))
    with pytest.raises(
        ShapeError,
        match=rf"^{kind}2d_3: expected input of shape \(batch, C, H, W\), got float64 array of shape \(4, 16\)",
    ):
        layer.forward(np.zeros((4, 16)))


@pytest.mark.parametrize(
    ("W_shape", "b_shape"), [((8, 1, 3, 3), (7,)), ((8, 3, 3), (8,))], ids=["bias-of-another-width", "kernel-not-4-d"]
)
def test_a_conv_layer_refuses_parameters_of_the_wrong_shape(W_shape, b_shape):
    """Kills reference.layers.xǁConv2Dǁ__init____mutmut_2 (`or` -> `and` before the dtype test: a bias
    of the wrong width in the right dtype passed), _3 (a 3-d kernel with a fitting bias passed) and
    _9, _10, _11 (the message lost, or `None` described instead of W or b)."""
    from reference.errors import ShapeError
    from reference.layers import Conv2D

    expected = (
        "conv2d_1: expected W (F, C, KH, KW) and b (F,) of one dtype, "
        f"got W float64 array of shape {W_shape}, b float64 array of shape {b_shape}"
    )
    with pytest.raises(ShapeError, match=f"^{re.escape(expected)}$"):
        Conv2D("conv2d_1", np.zeros(W_shape), np.zeros(b_shape), (1, 1), (0, 0))


@pytest.mark.parametrize(
    "x_shape", [(2, 2, 5, 5), (2, 3, 5), (2, 3, 5, 5, 1)], ids=["channels-4-d", "3-d-right-channels", "5-d"]
)
def test_a_conv_layer_refuses_an_input_of_the_wrong_shape_with_the_whole_message(x_shape):
    """Kills reference.layers.xǁConv2Dǁforward__mutmut_5 (`or` -> `and`: a 4-d input with the wrong
    channels, or a 3-d one with the right ones, got past the check), _11 (the message lost), _12 (the
    kernel's height named as the channels) and _13 (`None` described instead of the input); the kernel
    is (4, 3, 2, 2), so its height 2 is not its channel count 3."""
    from reference.layers import Conv2D

    layer = Conv2D("conv2d_1", np.zeros((4, 3, 2, 2)), np.zeros(4), (1, 1), (0, 0))
    expected = f"conv2d_1: expected input of shape (batch, 3, H, W), got float64 array of shape {x_shape}"
    with pytest.raises(ShapeError, match=f"^{re.escape(expected)}$"):
        layer.forward(np.zeros(x_shape))
