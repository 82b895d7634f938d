"""The reference, the torch twin and the keras twin consume byte-identical batches.

How it is shown, exactly rather than within a tolerance: a one-weight linear model y = 1 * x + 0
(float64, SGD with lr 0, so it never changes) gets row i as x_i = 2**i and target 0, with the summed
squared error. A step on the batch B then has the loss sum_{i in B} 4**i: distinct powers of two,
exact in float64 for i < 26 and in any summation order, whose binary digits spell out B. Every
framework's per-step losses are decoded into the rows it trained on and must equal the rows of
reference.train.batches(order, batch_size), step by step: with batch_size 1 that is the order
itself, row by row. Both paths of each twin are checked: train_epoch with on_step, and the fast path
without it (keras records its per-step losses in `last_losses`; torch runs one loop either way).

A second test trains for real (lr > 0) and shows the final weights agree within the twin tolerance
for the shared order and do not for another order, so the order is what the frameworks follow.
"""

import numpy as np
import pytest

from data_loaders import epoch_orders
from oracles.compare import compare_params
from reference.network import Network, init_params
from reference.optimizers import make_optimizer
from reference.spec import LayerSpec, ModelSpec, OptimizerSpec
from reference.train import batches, train_epoch

N_ROWS = 24  # 4**23 = 2**46: every subset sum is an exact float64 integer
TWINS = ["torch", "keras"]


def make_twin_or_skip(kind, spec, params):
    pytest.importorskip("torch" if kind == "torch" else "keras")
    module = pytest.importorskip(f"oracles.{kind}_twin", reason=f"oracles/{kind}_twin.py is not importable yet")
    cls = module.TorchTwin if kind == "torch" else module.KerasTwin
    try:
        return cls(spec, params, seed=0)
    except NotImplementedError as e:
        pytest.skip(f"{kind} twin: {e}")


IDENTITY_SPEC = ModelSpec(
    n_in=1,
    layers=(LayerSpec("dense", units=1),),
    loss="mse",
    reduction="sum",
    dtype="float64",
    optimizer=OptimizerSpec("sgd", lr=0.0),
    name="batch-identity",
)
IDENTITY_PARAMS = {"dense_1.W": np.ones((1, 1)), "dense_1.b": np.zeros(1)}
X = (2.0 ** np.arange(N_ROWS)).reshape(N_ROWS, 1)  # row i -> 2**i
Y = np.zeros((N_ROWS, 1))


def rows_of(loss: float) -> list[int]:
    """The rows a step trained on, read from its loss sum_i 4**i."""
    value = float(loss)
    assert value == int(value) and 0 < value < 2.0**53, f"loss {value!r} is not an exact sum of powers of 4"
    bits = int(value)
    rows = [k // 2 for k in range(bits.bit_length()) if bits >> k & 1]
    assert all(k % 2 == 0 for k in range(bits.bit_length()) if bits >> k & 1), f"loss {value!r} is not a sum of 4**i"
    return rows


def expected_rows(order, batch_size):
    return [sorted(idx.tolist()) for idx in batches(order, batch_size)]


def reference_losses(order, batch_size):
    net = Network(IDENTITY_SPEC, params={k: v.copy() for k, v in IDENTITY_PARAMS.items()})
    losses = []
    train_epoch(
        net, make_optimizer(IDENTITY_SPEC.optimizer), X, Y, order, batch_size, lambda i, loss: losses.append(loss)
    )
    return losses


def twin_losses(kind, order, batch_size, fast):
    twin = make_twin_or_skip(kind, IDENTITY_SPEC, {k: v.copy() for k, v in IDENTITY_PARAMS.items()})
    if not fast:
        losses = []
        twin.train_epoch(X, Y, order, batch_size, on_step=lambda i, loss: losses.append(loss))
        return losses
    mean = twin.train_epoch(X, Y, order, batch_size)
    if kind == "keras":
        losses = list(twin.last_losses)
    else:  # torch runs the same loop with or without on_step; the hook only observes it
        losses = []
        twin.train_epoch(X, Y, order, batch_size, on_step=lambda i, loss: losses.append(loss))
    assert mean == sum(float(v) for v in losses) / len(losses)
    return losses


ORDERS = epoch_orders(N_ROWS, 2, seed=11)


@pytest.mark.parametrize("batch_size", [1, 5, 8, 24], ids=lambda b: f"batch{b}")
def test_reference_batches_are_the_shared_order(batch_size):
    for order in ORDERS:
        got = [rows_of(v) for v in reference_losses(order, batch_size)]
        assert got == expected_rows(order, batch_size)
        if batch_size == 1:
            assert [r[0] for r in got] == order.tolist()


@pytest.mark.parametrize("fast", [False, True], ids=["on_step", "fast-path"])
@pytest.mark.parametrize("batch_size", [1, 5, 8, 24], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("kind", TWINS)
def test_twin_consumes_the_same_batches_as_the_reference(kind, batch_size, fast):
    for epoch, order in enumerate(ORDERS):
        want = reference_losses(order, batch_size)
        got = twin_losses(kind, order, batch_size, fast)
        assert [rows_of(v) for v in got] == expected_rows(order, batch_size), f"{kind} epoch {epoch}"
        # Exact arithmetic by construction, so the losses themselves are bit-identical.
        assert [float(v) for v in got] == [float(v) for v in want], f"{kind} epoch {epoch}"


def test_the_decoder_tells_batches_apart():
    order = ORDERS[0]
    swapped = order.copy()
    swapped[[4, 5]] = swapped[[5, 4]]  # two rows trade places across a batch boundary of 5
    assert expected_rows(order, 5) != expected_rows(swapped, 5)
    assert [rows_of(v) for v in reference_losses(swapped, 5)] != expected_rows(order, 5)


LEARN_SPEC = ModelSpec(
    n_in=3,
    layers=(LayerSpec("dense", units=4), LayerSpec("tanh"), LayerSpec("dense", units=2)),
    loss="mse",
    reduction="mean",
    dtype="float64",
    optimizer=OptimizerSpec("sgd", lr=0.1),
    name="order-sensitivity",
)


@pytest.mark.parametrize("batch_size", [1, 6], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("kind", TWINS)
def test_training_follows_the_shared_order(kind, batch_size):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    params = init_params(LEARN_SPEC, seed=4)
    orders = epoch_orders(30, 2, seed=5)

    def reference(orders):
        net = Network(LEARN_SPEC, params={k: v.copy() for k, v in params.items()})
        opt = make_optimizer(LEARN_SPEC.optimizer)
        for order in orders:
            train_epoch(net, opt, x, y, order, batch_size)
        return net.get_params()

    twin = make_twin_or_skip(kind, LEARN_SPEC, {k: v.copy() for k, v in params.items()})
    for order in orders:
        twin.train_epoch(x, y, order, batch_size)  # the fast path
    same = compare_params(reference(orders), twin.get_params(), "twin", "float64", title=f"{kind}, same order")
    same.assert_ok()
    other = compare_params(reference(epoch_orders(30, 2, seed=6)), twin.get_params(), "twin", "float64")
    assert not other.passed, "another order gives the same weights: this test could not see a wrong order"
