"""Bad input gets a clear error, never a wrong number.

Contract (reference/errors.py): every bad input raises an InputError subclass whose message names
where it happened (the layer, the loss, the parameter or the spec field), what was expected and what
came. Each test asserts the type AND those three parts of the message.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES, make_batch

from reference.errors import DTypeError, InputError, LabelError, NonFiniteError, ShapeError, SpecError
from reference.layers import BatchNorm, Dense
from reference.losses import make_loss
from reference.network import Network
from reference.optimizers import make_optimizer
from reference.spec import LayerSpec, ModelSpec, OptimizerSpec
from reference.train import train_epoch

CLS = LAYER_CASES["tanh"]  # 6 -> 5 -> tanh -> 3, softmax cross-entropy
MSE = LOSS_CASES["mse-mean"]


def net_and_batch(spec: ModelSpec = CLS, batch: int = 4):
    net = Network(spec, seed=0)
    return net, *make_batch(spec, batch, seed=1)


def raises(kind: type[Exception], *parts: str):
    """pytest.raises(kind) whose message contains every part, in this order."""
    return pytest.raises(kind, match=".*".join(re.escape(p) for p in parts))


# Inputs ----------------------------------------------------------------------------------------


def test_every_error_is_an_input_error_and_a_value_error():
    for kind in (SpecError, ShapeError, DTypeError, NonFiniteError, LabelError):
        assert issubclass(kind, InputError) and issubclass(kind, ValueError)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((4, 5), "(batch, 6)"), ((4, 7), "(batch, 6)"), ((6,), "(batch, features)"), ((2, 4, 6), "(batch, features)")],
    ids=["too-narrow", "too-wide", "one-dimensional", "three-dimensional"],
)
def test_wrong_input_shape(shape, expected):
    net, _, y = net_and_batch()
    with raises(
        ShapeError, "network input (to dense_1)", f"expected shape {expected}", f"got float64 array of shape {shape}"
    ):
        net.trace(np.zeros(shape), y)


def test_input_that_is_not_an_array():
    net, x, y = net_and_batch()
    with raises(ShapeError, "network input (to dense_1)", "expected a numpy array", "got list"):
        net.trace(x.tolist(), y)


@pytest.mark.parametrize("method", ["trace", "forward", "predict"])
def test_input_dtype_that_does_not_match_the_spec(method):
    net, x, y = net_and_batch()
    args = (x.astype(np.float32), y) if method == "trace" else (x.astype(np.float32),)
    with raises(
        DTypeError, "network input (to dense_1)", "expected dtype float64", "got float32 array of shape (4, 6)"
    ):
        getattr(net, method)(*args)


def test_float64_input_to_a_float32_network():
    net, x, y = net_and_batch(CLS.replace(dtype="float32"))
    with raises(DTypeError, "network input (to dense_1)", "expected dtype float32", "got float64 array"):
        net.trace(x.astype(np.float64), y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input(bad):
    net, x, y = net_and_batch()
    x[2, 3] = bad
    with raises(NonFiniteError, "network input (to dense_1)", "expected finite values", f"got {bad} at index (2, 3)"):
        net.trace(x, y)


# Labels and targets ----------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "index"), [(3, 1), (-1, 2), (10**6, 0)], ids=["n_classes", "negative", "huge"])
def test_label_out_of_range(label, index):
    net, x, y = net_and_batch()
    y[index] = label
    with raises(LabelError, "softmax_cross_entropy", "expected labels in [0, 3)", f"got {label} at index {index}"):
        net.trace(x, y)


@pytest.mark.parametrize(
    ("labels", "got"),
    [
        (np.array([0.0, 1.0, 2.0, 0.0]), "float64 array of shape (4,)"),
        (np.array([True, False, True, False]), "bool array of shape (4,)"),
        ([0, 1, 2, 0], "list"),
    ],
    ids=["float", "bool", "list"],
)
def test_labels_of_the_wrong_dtype(labels, got):
    net, x, _ = net_and_batch()
    with raises(LabelError, "softmax_cross_entropy", "expected integer labels of shape (4,)", f"got {got}"):
        net.trace(x, labels)


@pytest.mark.parametrize(
    ("shape", "got"), [((4, 1), "(4, 1)"), ((3,), "(3,)"), ((4, 3), "(4, 3)")], ids=["column", "short", "one-hot"]
)
def test_labels_of_the_wrong_shape(shape, got):
    net, x, _ = net_and_batch()
    with raises(
        LabelError, "softmax_cross_entropy", "expected labels of shape (4,) for predictions (4, 3)", f"got {got}"
    ):
        net.trace(x, np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize("loss", ["cross_entropy", "nll"])
def test_label_out_of_range_for_probability_losses(loss):
    net, x, y = net_and_batch(LOSS_CASES[f"{loss}-mean"])
    y[0] = 7
    with raises(LabelError, loss, "expected labels in [0, 3)", "got 7 at index 0"):
        net.trace(x, y)


def test_target_of_the_wrong_shape():
    net, x, y = net_and_batch(MSE)
    with raises(ShapeError, "mse", "expected a target array of shape (4, 3)", "got float64 array of shape (4, 2)"):
        net.trace(x, y[:, :2])


def test_target_of_the_wrong_dtype():
    net, x, y = net_and_batch(MSE)
    with raises(DTypeError, "mse", "expected a target of dtype float64", "got float32 array of shape (4, 3)"):
        net.trace(x, y.astype(np.float32))


@pytest.mark.parametrize("loss", ["mse", "l1", "bce"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_target(loss, bad):
    net, x, y = net_and_batch(LOSS_CASES[f"{loss}-mean"])
    y[1, 2] = bad
    with raises(NonFiniteError, loss, "expected finite values", f"got {bad} at index (1, 2)"):
        net.trace(x, y)


def test_labels_in_evaluate_are_checked_too():
    from reference.train import evaluate

    net, x, y = net_and_batch()
    y[3] = 5
    with raises(LabelError, "softmax_cross_entropy", "expected labels in [0, 3)", "got 5 at index 3"):
        evaluate(net, x, y)


# Layers ----------------------------------------------------------------------------------------


def test_batchnorm_training_needs_two_rows():
    net, x, y = net_and_batch(LAYER_CASES["batchnorm_torch"])
    with raises(
        ShapeError, "batchnorm_1", "training mode needs a batch of at least 2", "got float64 array of shape (1, 5)"
    ):
        net.trace(x[:1], y[:1])


def test_batchnorm_input_of_the_wrong_width():
    layer = BatchNorm("batchnorm_1", 5, np.float64)
    with raises(ShapeError, "batchnorm_1", "expected input of shape (batch, 5)", "got float64 array of shape (2, 4)"):
        layer.forward(np.zeros((2, 4)))


def test_dense_input_of_the_wrong_width():
    layer = Dense("dense_2", np.zeros((5, 3)), np.zeros(3))
    with raises(ShapeError, "dense_2", "expected input of shape (batch, 5)", "got float64 array of shape (2, 6)"):
        layer.forward(np.zeros((2, 6)))


def test_dense_with_inconsistent_parameters():
    with raises(
        ShapeError,
        "dense_1",
        "expected W (n_in, n_out) and b (n_out,)",
        "got W float64 array of shape (6, 5), b float64 array of shape (4,)",
    ):
        Dense("dense_1", np.zeros((6, 5)), np.zeros(4))


def test_dropout_mask_of_the_wrong_shape():
    net, x, y = net_and_batch(LAYER_CASES["dropout"])
    with raises(ShapeError, "dropout_1", "expected a mask of shape (4, 5)", "got float64 array of shape (4, 6)"):
        net.trace(x, y, masks={"dropout_1": np.ones((4, 6))})


def test_mask_for_a_layer_that_does_not_exist():
    """A misspelt mask name would silently draw a fresh mask: the twin's shared mask would not be used."""
    net, x, y = net_and_batch(LAYER_CASES["dropout"])
    with raises(ShapeError, "network: expected masks for the dropout layers ['dropout_1'] only", "got ['dropout_2']"):
        net.trace(x, y, masks={"dropout_2": np.ones((4, 5))})


def test_batchnorm_with_an_unknown_convention():
    with raises(
        SpecError, "batchnorm_1", "convention must be one of ('torch', 'keras', 'cs231n', 'mytorch')", "got 'jax'"
    ):
        BatchNorm("batchnorm_1", 5, np.float64, convention="jax")


# Specs -----------------------------------------------------------------------------------------

DENSE = LayerSpec("dense", units=3)


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        ({"layers": (LayerSpec("conv"), DENSE)}, ("layers[0].kind must be one of", "'dense'", "got 'conv'")),
        ({"loss": "hinge"}, ("loss must be one of", "'softmax_cross_entropy'", "got 'hinge'")),
        ({"reduction": "max"}, ("reduction must be one of ('mean', 'sum')", "got 'max'")),
        ({"dtype": "float16"}, ("dtype must be one of ('float32', 'float64')", "got 'float16'")),
        ({"init": "zeros"}, ("init must be one of", "'glorot_uniform'", "got 'zeros'")),
        ({"layers": (LayerSpec("dense", units=0),)}, ("layers[0] (dense) needs units >= 1", "got 0")),
        ({"layers": (LayerSpec("dense"),)}, ("layers[0] (dense) needs units >= 1", "got None")),
        ({"layers": (LayerSpec("dense", units=2.5),)}, ("layers[0] (dense) needs units >= 1", "got 2.5")),
        ({"layers": (LayerSpec("relu"),)}, ("layers must contain at least one dense layer",)),
        ({"layers": ()}, ("layers must contain at least one dense layer",)),
        (
            {"layers": (DENSE, LayerSpec("dropout", rate=1.0))},
            ("layers[1] (dropout) rate must be in [0, 1)", "got 1.0"),
        ),
        (
            {"layers": (LayerSpec("batchnorm", convention="mxnet"), DENSE)},
            ("layers[0].convention must be one of", "got 'mxnet'"),
        ),
        ({"layers": (LayerSpec("dense", units=3, init="ones"),)}, ("layers[0].init must be one of", "got 'ones'")),
        ({"n_in": 0}, ("n_in must be a positive int", "got 0")),
        ({"n_in": 6.0}, ("n_in must be a positive int", "got 6.0")),
        ({"batch_size": 0}, ("batch_size must be >= 1 and epochs >= 0", "got 0, 3")),
        ({"optimizer": OptimizerSpec("lbfgs")}, ("optimizer.name must be one of", "got 'lbfgs'")),
        ({"optimizer": OptimizerSpec(convention="jax")}, ("optimizer.convention must be one of", "got 'jax'")),
        ({"optimizer": OptimizerSpec(decay_mode="l1")}, ("optimizer.decay_mode must be one of", "got 'l1'")),
        ({"preprocess": "scale1000"}, ("preprocess must be one of", "got 'scale1000'")),
    ],
    ids=lambda v: "-".join(str(x) for x in v) if isinstance(v, dict) else None,
)
def test_bad_spec(change, parts):
    base = {"n_in": 6, "layers": (DENSE,)}
    with raises(SpecError, "model spec:", *parts):
        ModelSpec(**{**base, **change})


def test_spec_from_dict_with_an_unknown_field():
    d = LAYER_CASES["tanh"].to_dict()
    d["layers"][0]["units_out"] = 5
    with raises(SpecError, "model spec:", "units_out"):
        ModelSpec.from_dict(d)


def test_unknown_loss_and_optimizer_by_name():
    with raises(SpecError, "unknown loss 'hinge'", "losses are", "'mse'"):
        make_loss("hinge")
    with raises(SpecError, "mse: reduction must be 'mean' or 'sum'", "got 'max'"):
        make_loss("mse", "max")
    with raises(SpecError, "unknown optimizer 'lbfgs'", "optimizers are", "'adam'"):
        make_optimizer(OptimizerSpec("lbfgs"))


# Network(params=...) ---------------------------------------------------------------------------


def good_params(spec: ModelSpec = CLS) -> dict[str, np.ndarray]:
    return Network(spec, seed=3).get_params()


@pytest.mark.parametrize(
    ("name", "shape"),
    [("dense_1.W", (5, 6)), ("dense_1.W", (6, 4)), ("dense_1.b", (6,)), ("dense_2.W", (5, 4)), ("dense_2.b", (3, 1))],
    ids=["W-transposed", "W-too-few-units", "b-too-long", "output-layer-too-wide", "b-column"],
)
def test_network_params_of_the_wrong_shape(name, shape):
    """A wrong shape must not build a different network (a 4-class output would give a wrong loss)."""
    params = good_params()
    expected = params[name].shape
    params[name] = np.zeros(shape)
    with raises(ShapeError, f"parameter {name}", f"expected shape {expected}", f"got float64 array of shape {shape}"):
        Network(CLS, params=params)


def test_batchnorm_params_of_the_wrong_shape():
    spec = LAYER_CASES["batchnorm_keras"]
    params = good_params(spec)
    params["batchnorm_1.gamma"] = np.ones(4)
    with raises(ShapeError, "parameter batchnorm_1.gamma", "expected shape (5,)", "got float64 array of shape (4,)"):
        Network(spec, params=params)


def test_network_params_missing():
    params = good_params()
    del params["dense_2.b"]
    with raises(ShapeError, "network: parameters ['dense_2.b'] missing", "got ['dense_1.W', 'dense_1.b', 'dense_2.W']"):
        Network(CLS, params=params)


def test_network_params_empty():
    with raises(ShapeError, "network: parameters ['dense_1.W', 'dense_1.b'] missing", "got []"):
        Network(CLS, params={})


def test_network_params_extra():
    params = good_params()
    params["dense_3.W"] = np.zeros((3, 3))
    with raises(
        ShapeError, "network: expected parameters ['dense_1.W', 'dense_1.b', 'dense_2.W', 'dense_2.b']", "'dense_3.W'"
    ):
        Network(CLS, params=params)


def test_network_params_of_the_wrong_dtype():
    params = {k: v.astype(np.float32) for k, v in good_params().items()}
    with raises(
        DTypeError, "network: parameter dense_1.W", "expected dtype float64", "got float32 array of shape (6, 5)"
    ):
        Network(CLS, params=params)


def test_set_params_checks_shape_and_dtype():
    net = Network(CLS)
    params = net.get_params()
    params["dense_2.W"] = params["dense_2.W"].T.copy()
    with raises(
        ShapeError, "network: parameter dense_2.W", "expected shape (5, 3)", "got float64 array of shape (3, 5)"
    ):
        net.set_params(params)


def test_good_params_are_copied_not_aliased():
    params = good_params()
    net = Network(CLS, params=params)
    params["dense_1.W"][...] = 0
    assert np.abs(net.params["dense_1.W"]).max() > 0


# Training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 5], ids=["empty", "longer-than-the-data"])
def test_train_epoch_with_a_bad_order(n):
    net, x, y = net_and_batch()
    opt = make_optimizer(CLS.optimizer)
    with raises(ShapeError, "train_epoch", "expected an order of 1..4 row indices", f"got {n}"):
        train_epoch(net, opt, x, y, np.arange(n) % 4, batch_size=2)


def test_a_missing_tensor_fails_its_comparison():
    """compare_arrays on None: a failure that says which side is missing, never a pass."""
    from oracles.compare import compare_arrays

    for mine, theirs, side in ((None, np.zeros(3), "mine"), (np.zeros(3), None, "theirs")):
        row = compare_arrays("dense_1.dW", mine, theirs, 1e-12)
        assert not row.passed and row.note == f"missing: {side} is None"
