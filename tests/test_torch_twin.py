"""The torch twin against the numpy reference, through the one tolerance policy of oracles/compare.py.

Every layer and loss case x dtype x batch size (outputs, loss, every gradient; layers also in eval
mode), every optimiser case over 20 steps (parameters after each), dropout with a shared mask,
batchnorm in training and eval mode with running statistics, bit-exact parameter round trips, the
fast epoch loop against step-by-step training, bad input, and trajectories on real MNIST (--mnist).

Worst errors: with BPROP_TORCH_TWIN_WORST=<file.jsonl> every compared tensor's error is recorded
per (quantity, dtype) and each pytest process appends its worst to the file at the end of the
session; `python tests/test_torch_twin.py <file.jsonl>` prints the table (quantity, dtype, policy,
worst observed). Nothing is asserted on those numbers beyond the policy itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import BATCH_SIZES, DTYPES, LAYER_CASES, LOSS_CASES, OPTIMIZER_CASES, make_batch  # noqa: E402

from oracles import make_twin  # noqa: E402
from oracles.compare import (  # noqa: E402
    Comparison,
    atol,
    compare,
    compare_arrays,
    compare_params,
    quantity_of,
    rel_error,
    tolerance,
)
from oracles.numeric import draw_masks  # noqa: E402
from oracles.torch_twin import TorchTwin  # noqa: E402
from reference.errors import DTypeError, LabelError, ShapeError  # noqa: E402
from reference.layers import BatchNorm  # noqa: E402
from reference.losses import make_loss  # noqa: E402
from reference.network import Network, init_params  # noqa: E402
from reference.optimizers import make_optimizer  # noqa: E402
from reference.spec import preset  # noqa: E402
from reference.train import batches, evaluate, train_epoch, train_step  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """numpy's BLAS and torch on one thread each: on 2 busy cores spinning threads made a batch-128
    step 10-20 times slower, in numpy and torch alike (measured; see oracles/torch_twin.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import threadpoolctl
    except ImportError:  # only speed is at stake
        yield
    else:
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


TRACE_CASES = {**LAYER_CASES, **LOSS_CASES}
# dense-tanh-dense with an L2 penalty: every parameter has a gradient. (Not batchnorm for the
# adaptive optimisers: the bias of a dense layer feeding a batchnorm has a true gradient of 0, and
# Adam and RMSprop divide its rounding noise, 1e-17, by its own size: O(lr) steps in directions set
# by rounding, in any two implementations. Measured: 1.5 relative after one step, both dtypes.)
OPTIMIZER_MODEL = LAYER_CASES["l2"]
OPTIMIZER_STEPS = 20
# What torch.optim cannot express (oracles/torch_twin.py says why): decoupled weight decay outside
# Adam and plain SGD, and keras' RMSprop (eps inside the square root).
NOT_EXPRESSIBLE = {
    "momentum-torch-decoupled",
    "momentum-keras-decoupled",
    "nesterov-torch-decoupled",
    "nesterov-keras-decoupled",
    "rmsprop-torch-decoupled",
    "rmsprop-keras",
    "rmsprop-keras-coupled",
    "rmsprop-keras-decoupled",
}
WORST_ENV = "BPROP_TORCH_TWIN_WORST"


# Worst observed errors ---------------------------------------------------------------------------


class WorstErrors:
    """The largest error seen per (test function, quantity, dtype).

    A tensor whose true value is 0 (the bias gradient of a dense layer feeding a batchnorm) passes on
    the absolute floor ATOL; its relative error is meaningless (rounding / rounding), so it is kept
    apart, as its max abs error ("abs_on_floor").
    """

    def __init__(self) -> None:
        self.worst: dict[tuple[str, str, str, str], dict] = {}

    def add(self, comparison: Comparison, dtype: str, test: str, quantity: str | None = None) -> None:
        group = test.split("[")[0]
        for row in comparison.rows:
            if row.worst_index is None:
                continue
            on_floor = row.rel > row.tol and row.passed
            kind, value = ("abs_on_floor", row.max_abs) if on_floor else ("rel", row.rel)
            key = (group, quantity or quantity_of(row.name), np.dtype(dtype).name, kind)
            if value > self.worst.get(key, {}).get("value", -1.0):
                self.worst[key] = {"value": value, "tensor": row.name, "test": test}

    def dump(self, path: str) -> None:
        rows = [
            {"group": g, "quantity": q, "dtype": d, "kind": kind, **entry}
            for (g, q, d, kind), entry in self.worst.items()
        ]
        with open(path, "a") as f:
            f.write(json.dumps(rows) + "\n")


@pytest.fixture(scope="session")
def worst_errors():
    log = WorstErrors()
    yield log
    if os.environ.get(WORST_ENV):
        log.dump(os.environ[WORST_ENV])


@pytest.fixture
def check(worst_errors, request):
    """check(comparison, dtype[, quantity]): record every tensor's error, then assert the policy."""

    def _check(comparison: Comparison, dtype: str, quantity: str | None = None) -> Comparison:
        worst_errors.add(comparison, dtype, request.node.name, quantity)
        comparison.assert_ok()
        return comparison

    return _check


# Helpers -----------------------------------------------------------------------------------------


def built(spec, seed: int = 0) -> tuple[Network, TorchTwin]:
    """A reference network and its torch twin holding the very same parameters."""
    net = Network(spec, seed=seed)
    return net, TorchTwin(spec, net.get_params(), seed=seed)


def reference_state(net: Network) -> dict[str, np.ndarray]:
    """The reference's batchnorm running statistics, named as the twin names them."""
    return {
        f"{layer.name}.{k}": v.copy()
        for layer in net.layers
        if isinstance(layer, BatchNorm)
        for k, v in layer.state.items()
    }


def has_kind(spec, kind: str) -> bool:
    return any(layer.kind == kind for layer in spec.layers)


def masks_for(net: Network, x: np.ndarray) -> dict[str, np.ndarray] | None:
    """Keep-masks for the dropout layers (None without dropout: no forward pass needed)."""
    return draw_masks(net, x) if has_kind(net.spec, "dropout") else None


def loss_row(name: str, a, b, dtype: str):
    return compare_arrays(name, np.asarray(a, np.float64), np.asarray(b, np.float64), tolerance("twin", dtype, "loss"))


# Layout and round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["dense", "batchnorm_torch"])
def test_params_round_trip_bit_exact(case, dtype):
    spec = LAYER_CASES[case].replace(dtype=dtype)
    rng = np.random.default_rng(7)
    params = {k: rng.normal(size=v.shape).astype(dtype) for k, v in init_params(spec, seed=3).items()}
    twin = TorchTwin(spec, params)
    # The one transpose: nn.Linear.weight is W.T.
    assert torch.equal(twin.modules[0].weight.detach(), torch.from_numpy(params["dense_1.W"].T.copy()))
    for first, second in ((params, twin.get_params()),):
        assert set(second) == set(first)
        for k in first:
            assert second[k].dtype == first[k].dtype and second[k].shape == first[k].shape, k
            assert second[k].tobytes() == first[k].tobytes(), f"{k} changed in the round trip"
    # set_params of new values, and the copies get_params hands out are not live.
    new = {k: (v * 3 + 1).astype(dtype) for k, v in params.items()}
    twin.set_params(new)
    back = twin.get_params()
    back["dense_1.W"][...] = 0
    assert all(twin.get_params()[k].tobytes() == new[k].tobytes() for k in new)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_round_trip_bit_exact(dtype):
    spec = LAYER_CASES["batchnorm_torch"].replace(dtype=dtype)
    net, twin = built(spec)
    rng = np.random.default_rng(1)
    state = {k: rng.uniform(0.1, 3, v.shape).astype(dtype) for k, v in reference_state(net).items()}
    twin.set_state(state)
    assert all(twin.get_state()[k].tobytes() == v.tobytes() for k, v in state.items())


def test_make_twin_builds_the_torch_twin():
    spec = LAYER_CASES["tanh"]
    twin = make_twin("torch", spec, Network(spec).get_params())
    assert isinstance(twin, TorchTwin) and twin.kind == "torch"


# Traces: every layer and loss, both dtypes, every batch size -------------------------------------


@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TRACE_CASES))
def test_trace_matches_reference(case, dtype, batch, check):
    spec = TRACE_CASES[case].replace(dtype=dtype)
    net, twin = built(spec)
    x, y = make_batch(spec, batch, seed=1)
    if batch == 1 and has_kind(spec, "batchnorm"):  # batch statistics of one row: an error in both
        with pytest.raises(ShapeError, match="at least 2"):
            net.trace(x, y)
        with pytest.raises(ShapeError, match="at least 2"):
            twin.trace(x, y)
        return
    masks = masks_for(net, x)
    check(compare(net.trace(x, y, masks=masks), twin.trace(x, y, masks=masks), oracle="twin"), dtype)


@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_eval_mode_trace_matches_reference(case, dtype, batch, check):
    """train=False: dropout is the identity, batchnorm normalises with its running statistics."""
    spec = LAYER_CASES[case].replace(dtype=dtype)
    net, twin = built(spec)
    x, y = make_batch(spec, batch, seed=2)
    check(compare(net.trace(x, y, train=False), twin.trace(x, y, train=False), oracle="twin"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(dtype, check):
    spec = LAYER_CASES["batchnorm_torch"].replace(dtype=dtype)
    net, twin = built(spec)
    x, _ = make_batch(spec, 7, seed=3)
    row = compare_arrays("forward", twin.forward(x), net.forward(x), tolerance("twin", dtype, "forward"))
    check(Comparison([row]), dtype, "forward")


def test_trace_leaves_parameters_and_gradients_alone():
    spec = LAYER_CASES["l2"]
    _, twin = built(spec)
    before = twin.get_params()
    x, y = make_batch(spec, 7)
    twin.trace(x, y)
    assert all(np.array_equal(before[k], v) for k, v in twin.get_params().items())
    assert all(p.grad is None for p in twin.named.values())


# Losses by their definitions, on inputs that reach each rule's edge -------------------------------


def loss_inputs(name: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets that reach the edges: nll's clip, l1's tie, bce within 1e-13 of 0 and 1."""
    tiny = 1e-13 if dtype == "float64" else 1e-6
    if name in ("cross_entropy", "nll"):
        probs = np.array([[1e-9, 0.5, 0.5 - 1e-9], [0.2, 0.3, 0.5], [1 - 2e-8, 1e-8, 1e-8]], dtype)
        return probs, np.array([0, 2, 0])  # p_y below the clip, inside, above 1 - clip
    if name == "softmax_cross_entropy":
        return np.array([[30.0, -30.0, 0.0], [0.1, 0.2, 0.3]], dtype), np.array([1, 2])
    if name == "bce":
        return np.array([[tiny, 0.5, 1 - tiny], [0.3, 0.9, 0.01]], dtype), np.array(
            [[0.0, 1.0, 0.5], [1, 0, 0.2]], dtype
        )
    pred = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]], dtype)
    return pred, np.array([[0.5, 1.0, -2.0], [0.1, 3.0, 0.0]], dtype)  # l1: ties at [0, 0] and [1, 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_definition_matches_reference(case, dtype, check):
    spec = LOSS_CASES[case].replace(dtype=dtype)
    pred, target = loss_inputs(spec.loss, dtype)
    value, grad = make_loss(spec.loss, spec.reduction).value_and_grad(pred, target)
    twin = TorchTwin(spec, Network(spec).get_params())
    p = torch.from_numpy(pred.copy()).requires_grad_(True)
    t = torch.from_numpy(target.astype(np.int64) if target.dtype.kind in "iu" else target)
    loss = twin.loss_fn(p, t)
    loss.backward()
    rows = [
        loss_row("loss", loss.detach().numpy(), value, dtype),
        compare_arrays(
            "dL/dpred", p.grad.numpy(), grad, tolerance("twin", dtype, "gradient"), atol=atol("twin", dtype)
        ),
    ]
    check(Comparison(rows), dtype)


def test_torch_bce_differs_near_one_which_is_why_the_twin_writes_it_out():
    """F.binary_cross_entropy divides by max(p(1-p), 1e-12): 10x off at p = 1 - 1e-13 (module docstring)."""
    p = np.array([[1 - 1e-13]])
    t = np.array([[0.5]])
    _, grad = make_loss("bce", "sum").value_and_grad(p, t)
    pt = torch.from_numpy(p.copy()).requires_grad_(True)
    torch.nn.functional.binary_cross_entropy(pt, torch.from_numpy(t), reduction="sum").backward()
    assert rel_error(pt.grad.numpy(), grad) > 0.5


# Dropout: a shared keep-mask ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_shared_mask_and_a_different_mask_is_caught(dtype, check):
    spec = LAYER_CASES["dropout"].replace(dtype=dtype)
    net, twin = built(spec)
    x, y = make_batch(spec, 7, seed=4)
    masks = draw_masks(net, x)
    assert 0 < masks["dropout_1"].mean() < 1
    reference = net.trace(x, y, masks=masks)
    check(compare(reference, twin.trace(x, y, masks=masks)), dtype)
    flipped = masks["dropout_1"].copy()
    flipped[0, 0] = 1 - flipped[0, 0]
    wrong = compare(reference, twin.trace(x, y, masks={"dropout_1": flipped}))
    assert not wrong.passed and wrong.first_divergence.name == "dropout_1.out"


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_without_masks_draws_the_references_masks(dtype, check):
    """Same seed, same calls: the twin draws from default_rng([seed, 1]) exactly as Network does."""
    spec = LAYER_CASES["dropout"].replace(dtype=dtype)
    net, twin = built(spec, seed=5)
    for step in range(3):
        x, y = make_batch(spec, 7, seed=10 + step)
        check(compare(net.trace(x, y), twin.trace(x, y)), dtype)


def test_masks_for_layers_that_are_not_dropout_layers_are_an_error():
    spec = LAYER_CASES["dropout"]
    _, twin = built(spec)
    x, y = make_batch(spec, 7)
    with pytest.raises(ShapeError, match="dropout layers"):
        twin.trace(x, y, masks={"tanh_1": np.ones((7, 5))})
    with pytest.raises(ShapeError, match=r"mask of shape \(7, 5\)"):
        twin.trace(x, y, masks={"dropout_1": np.ones((7, 4))})


# BatchNorm: training and eval mode, running statistics --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", [{}, {"momentum": 0.3, "eps": 1e-3}], ids=["defaults", "momentum0.3-eps1e-3"])
def test_batchnorm_torch_convention_train_eval_and_running_statistics(layer, dtype, check):
    base = LAYER_CASES["batchnorm_torch"]
    layers = tuple(dataclasses.replace(ls, **layer) if ls.kind == "batchnorm" else ls for ls in base.layers)
    spec = base.replace(dtype=dtype, layers=layers)
    net, twin = built(spec)
    for step in range(4):  # each training-mode trace folds the batch statistics in
        x, y = make_batch(spec, 7 + step, seed=20 + step)
        x = (x * 2 + 3).astype(dtype)  # a mean and variance far from the initial 0 and 1
        check(compare(net.trace(x, y), twin.trace(x, y)), dtype)
        check(compare_params(reference_state(net), twin.get_state()), dtype, "parameters")
    x, y = make_batch(spec, 7, seed=30)
    check(compare(net.trace(x, y, train=False), twin.trace(x, y, train=False)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_keras_convention_what_torch_matches_and_what_not(dtype, check):
    spec = LAYER_CASES["batchnorm_keras"].replace(dtype=dtype)
    net, twin = built(spec)
    x, y = make_batch(spec, 7, seed=21)
    check(compare(net.trace(x, y), twin.trace(x, y)), dtype)  # training mode: outputs, gradients
    ref, tor = reference_state(net), twin.torch_state()
    mean, var = "batchnorm_1.running_mean", "batchnorm_1.running_var"
    check(compare_params({mean: tor[mean]}, {mean: ref[mean]}), dtype)
    # running_var: torch folds in the unbiased variance, keras the biased one; exactly that apart.
    n, m = 7, 1 - 0.99
    bn_input = net.forward_cached(x, train=False)[0][0].astype(np.float64)  # dense_1's output
    predicted = (1 - m) * 1.0 + m * bn_input.var(axis=0) * n / (n - 1)
    check(compare_params({var: tor[var]}, {var: predicted.astype(dtype)}), dtype)
    assert not compare_params({var: tor[var]}, {var: ref[var]}).passed
    with pytest.raises(NotImplementedError, match="unbiased"):
        twin.get_state()
    with pytest.raises(NotImplementedError, match="unbiased"):
        twin.forward(x)
    twin.set_state(ref)  # from statistics given to it, eval mode matches
    x, y = make_batch(spec, 7, seed=22)
    check(compare(net.trace(x, y, train=False), twin.trace(x, y, train=False)), dtype)


# Optimisers: 20 steps, parameters after every step ------------------------------------------------


def optimizer_params():
    for case, opt in OPTIMIZER_CASES.items():
        for dtype in DTYPES:
            yield pytest.param(case, opt, dtype, True, id=f"{case}-{dtype}")
            if opt.weight_decay:
                yield pytest.param(case, opt, dtype, False, id=f"{case}-{dtype}-weights-only")


@pytest.mark.parametrize(("case", "opt", "dtype", "decay_biases"), list(optimizer_params()))
def test_optimizer_matches_reference_every_step(case, opt, dtype, decay_biases, check):
    spec = OPTIMIZER_MODEL.replace(dtype=dtype, optimizer=dataclasses.replace(opt, decay_biases=decay_biases))
    net = Network(spec, seed=0)
    if case in NOT_EXPRESSIBLE:
        with pytest.raises(NotImplementedError, match="torch twin: optimizer"):
            TorchTwin(spec, net.get_params())
        return
    twin = TorchTwin(spec, net.get_params())
    ref_opt = make_optimizer(spec.optimizer)
    for step in range(OPTIMIZER_STEPS):
        x, y = make_batch(spec, 7, seed=100 + step)
        ref_loss, twin_loss = train_step(net, ref_opt, x, y), twin.step(x, y)
        check(Comparison([loss_row("loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
        check(compare_params(net.get_params(), twin.get_params(), title=f"after step {step + 1}"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay_biases", [True, False], ids=["decay-all", "weights-only"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_optimizer_parameter_groups_with_batchnorm(name, decay_biases, dtype, check):
    """gamma and beta are not weights: decay_biases=False leaves them (and the biases) undecayed."""
    opt = OPTIMIZER_CASES[f"{name}-torch-coupled"]
    spec = LAYER_CASES["batchnorm_torch"].replace(
        dtype=dtype, optimizer=dataclasses.replace(opt, decay_biases=decay_biases)
    )
    net, twin = built(spec)
    ref_opt = make_optimizer(spec.optimizer)
    for step in range(OPTIMIZER_STEPS):
        x, y = make_batch(spec, 7, seed=200 + step)
        train_step(net, ref_opt, x, y)
        twin.step(x, y)
        check(compare_params(net.get_params(), twin.get_params(), title=f"after step {step + 1}"), dtype)
        check(compare_params(reference_state(net), twin.get_state()), dtype)


def run_steps(spec, twin_spec=None, steps: int = OPTIMIZER_STEPS):
    """(reference params, twin params) after `steps` steps; the twin may be built from another spec."""
    net = Network(spec, seed=0)
    twin = TorchTwin(twin_spec or spec, net.get_params())
    ref_opt = make_optimizer(spec.optimizer)
    for step in range(steps):
        x, y = make_batch(spec, 7, seed=100 + step)
        train_step(net, ref_opt, x, y)
        twin.step(x, y)
    return net.get_params(), twin


def test_keras_adam_is_told_apart_from_torch_adam():
    """The conventions differ measurably, so the keras-convention match above is not vacuous."""
    keras_spec = OPTIMIZER_MODEL.replace(optimizer=OPTIMIZER_CASES["adam-keras"])
    torch_spec = OPTIMIZER_MODEL.replace(optimizer=OPTIMIZER_CASES["adam-torch"])
    ref, twin = run_steps(torch_spec, twin_spec=keras_spec)
    assert not compare_params(ref, twin.get_params()).passed


def test_keras_adam_needs_the_per_step_eps():
    """Without eps_t = eps / sqrt(1 - b2^t) torch's Adam is not keras' (float64, 20 steps)."""
    spec = OPTIMIZER_MODEL.replace(optimizer=OPTIMIZER_CASES["adam-keras"])
    net = Network(spec, seed=0)
    twin = TorchTwin(spec, net.get_params())
    twin._keras_adam_eps = None  # torch's Adam with the constant eps 1e-7
    ref_opt = make_optimizer(spec.optimizer)
    for step in range(OPTIMIZER_STEPS):
        x, y = make_batch(spec, 7, seed=100 + step)
        train_step(net, ref_opt, x, y)
        twin.step(x, y)
    assert not compare_params(net.get_params(), twin.get_params()).passed


# Training: step, the fast epoch loop, evaluate ---------------------------------------------------


def small_data(spec, n: int = 60, seed: int = 0):
    x, y = make_batch(spec, n, seed=seed)
    return x, y, np.random.default_rng(seed).permutation(n)


@pytest.mark.parametrize("batch_size", [1, 7], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("case", ["tanh", "dropout", "batchnorm_torch", "adam-keras"])
def test_train_epoch_is_step_by_step_bit_for_bit(case, batch_size):
    """The fast loop gives exactly the numbers of step() per batch (masks drawn in the same order)."""
    if case == "adam-keras":
        spec = OPTIMIZER_MODEL.replace(optimizer=OPTIMIZER_CASES["adam-keras"])
    else:
        spec = LAYER_CASES[case].replace(optimizer=OPTIMIZER_CASES["momentum-torch"])
    if batch_size == 1 and has_kind(spec, "batchnorm"):
        batch_size = 2
    x, y, order = small_data(spec, 62)  # the last batch short (6 of 7) but never a single row
    params = Network(spec, seed=0).get_params()
    fast, slow = TorchTwin(spec, params, seed=3), TorchTwin(spec, params, seed=3)
    seen = []
    mean = fast.train_epoch(x, y, order, batch_size, on_step=lambda i, loss: seen.append((i, loss)))
    losses = [slow.step(x[idx], y[idx]) for idx in batches(order, batch_size)]
    assert [i for i, _ in seen] == list(range(len(losses)))
    assert [loss for _, loss in seen] == losses
    assert all(np.array_equal(v, slow.get_params()[k]) for k, v in fast.get_params().items())
    assert loss_row("mean loss", mean, np.mean(losses), spec.dtype).passed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("case", "opt"),
    [
        ("tanh", "sgd-torch"),
        ("dropout", "nesterov-torch"),
        ("batchnorm_torch", "momentum-torch-coupled"),
        ("l2", "adam-torch-decoupled"),
    ],
    ids=lambda v: v,
)
def test_train_epoch_matches_reference(case, opt, dtype, check):
    spec = LAYER_CASES[case].replace(dtype=dtype, optimizer=OPTIMIZER_CASES[opt])
    x, y, order = small_data(spec, 90)
    net, twin = built(spec, seed=4)  # the same seed: dropout masks drawn alike, step by step
    ref_mean = train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 8)
    twin_mean = twin.train_epoch(x, y, order, 8)
    check(Comparison([loss_row("mean loss", twin_mean, ref_mean, dtype)]), dtype, "loss")
    check(compare_params(net.get_params(), twin.get_params()), dtype)
    check(compare_params(reference_state(net), twin.get_state()) if reference_state(net) else Comparison([]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["batchnorm_torch", "mse-mean", "cross_entropy-sum"])
def test_evaluate_matches_reference(case, dtype, check):
    spec = TRACE_CASES[case].replace(dtype=dtype)
    x, y, order = small_data(spec, 50)
    net, twin = built(spec)
    train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 10)
    twin.train_epoch(x, y, order, 10)
    (ref_loss, ref_acc), (twin_loss, twin_acc) = evaluate(net, x, y, batch_size=16), twin.evaluate(x, y, batch_size=16)
    check(Comparison([loss_row("evaluate loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
    assert twin_acc == ref_acc


def test_step_returns_the_loss_before_the_update():
    spec = LAYER_CASES["tanh"]
    net, twin = built(spec)
    x, y = make_batch(spec, 7)
    before = float(net.trace(x, y).loss)
    assert twin.step(x, y) == before
    assert float(twin.trace(x, y).loss) < before


def test_train_epoch_restores_the_callers_thread_count():
    spec = LAYER_CASES["tanh"]
    _, twin = built(spec)
    x, y, order = small_data(spec, 10)
    threads = torch.get_num_threads()
    twin.train_epoch(x, y, order, 1)
    assert torch.get_num_threads() == threads


# Bad input: a clear error naming what, where, expected and got ------------------------------------


def test_bad_inputs_are_named():
    spec = LAYER_CASES["tanh"]
    net, twin = built(spec)
    x, y = make_batch(spec, 7)
    with pytest.raises(DTypeError, match=r"torch twin trace: input.*expected dtype float64, got float32"):
        twin.trace(x.astype(np.float32), y)
    with pytest.raises(ShapeError, match=r"torch twin trace: input.*\(batch, 6\)"):
        twin.trace(x[:, :5], y)
    with pytest.raises(LabelError, match=r"expected labels in \[0, 3\), got 3"):
        twin.trace(x, np.full(7, 3))
    params = net.get_params()
    with pytest.raises(ShapeError, match=r"dense_1.W: expected shape \(6, 5\)"):
        twin.set_params({**params, "dense_1.W": params["dense_1.W"].T.copy()})
    with pytest.raises(DTypeError, match=r"dense_1\.b: expected dtype float64"):
        twin.set_params({**params, "dense_1.b": params["dense_1.b"].astype(np.float32)})
    with pytest.raises(ShapeError, match="expected parameters"):
        twin.set_params({k: v for k, v in params.items() if k != "dense_2.b"})
    with pytest.raises(ShapeError, match=r"order indices must lie in \[0, 7\)"):
        twin.train_epoch(x, y, np.array([0, 7]), 1)
    with pytest.raises(ShapeError, match="expected a batch size >= 1, got 0"):
        twin.train_epoch(x, y, np.arange(7), 0)
    with pytest.raises(ShapeError, match="expected state"):
        twin.set_state({"batchnorm_1.running_mean": np.zeros(5)})


# Trajectories on real MNIST (--mnist) -------------------------------------------------------------


def mnist_for(spec):
    data_loaders = pytest.importorskip("data_loaders", reason="data_loaders (MNIST) not importable")
    x, y, _, _ = data_loaders.load_for_spec(spec)
    return x, y, data_loaders.epoch_orders(len(x), 1, seed=0)[0]


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-relu-deep"])
def test_batched_preset_trajectory_float64_full_epoch(name, check):
    spec = preset(name, dtype="float64")
    x, y, order = mnist_for(spec)
    net, twin = built(spec)
    ref_mean = train_epoch(net, make_optimizer(spec.optimizer), x, y, order, spec.batch_size)
    twin_mean = twin.train_epoch(x, y, order, spec.batch_size)
    check(Comparison([loss_row("mean loss", twin_mean, ref_mean, "float64")]), "float64", "loss")
    check(compare_params(net.get_params(), twin.get_params(), title=f"{name} after one epoch"), "float64")


# float32: a ReLU pre-activation within rounding of 0 flips its sign between the two (measured:
# mnist-relu-deep from its He-normal start: past 1e-5 at step 384 (from randn * 0.01 it was step 199,
# dense_2.out = 6.9e-10 on a scale of 0.17); mnist-relu-batched step 194),
# and from there the float32 trajectories part. The policy holds over the steps before that; the
# full-epoch figure is recorded for the report, not asserted.
FLOAT32_STEPS = 150


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-relu-deep"])
def test_batched_preset_trajectory_float32(name, check, worst_errors, request):
    spec = preset(name, dtype="float32")
    x, y, order = mnist_for(spec)
    net, twin = built(spec)
    opt = make_optimizer(spec.optimizer)
    head = FLOAT32_STEPS * spec.batch_size
    train_epoch(net, opt, x, y, order[:head], spec.batch_size)
    twin.train_epoch(x, y, order[:head], spec.batch_size)
    check(compare_params(net.get_params(), twin.get_params(), title=f"{name} after {FLOAT32_STEPS} steps"), "float32")
    train_epoch(net, opt, x, y, order[head:], spec.batch_size)
    twin.train_epoch(x, y, order[head:], spec.batch_size)
    full = compare_params(net.get_params(), twin.get_params(), title=f"{name} after one epoch")
    print(full.report(verbose=True))
    worst_errors.add(full, "float32", request.node.name + "[full epoch, not asserted]", "trajectory")


# The per-sample homework on raw 0..255 pixels is chaotic: the reference against itself with one ulp
# added to every dense_1 weight parts by 1e-12 at step 42, 1e-9 at 86, 1e-3 at 216 (float64). The
# twin against the reference (seed 0, epoch order seed 0; max relative error over the tensors):
# float64 1e-12 at step 56, 1e-9 at 96, 1e-6 at 158, 1e-3 at 236: the policy is asserted over the
# first 45. float32 is not tested here: dense_1.b is 9.9e-6 apart (relative) after 10 steps, at the
# policy's edge from the start, and the policy fails at step 42.
PER_SAMPLE_STEPS = 45


@pytest.mark.mnist
def test_per_sample_preset_float64_step_by_step_over_the_stretch_it_agrees(check):
    dtype = "float64"
    spec = preset("mnist-sigmoid-per-sample", dtype=dtype)
    x, y, order = mnist_for(spec)
    net, twin = built(spec)
    opt = make_optimizer(spec.optimizer)
    for step, idx in enumerate(batches(order[:PER_SAMPLE_STEPS], 1)):
        ref_loss, twin_loss = train_step(net, opt, x[idx], y[idx]), twin.step(x[idx], y[idx])
        check(Comparison([loss_row("loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
        check(compare_params(net.get_params(), twin.get_params(), title=f"after step {step + 1}"), dtype)


# The table of worst errors ----------------------------------------------------------------------


def worst_table(paths: list[str], by_test: bool = False) -> str:
    """Markdown: quantity, dtype, policy, worst observed, over every process's record (and by test)."""
    best: dict[tuple, dict] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                for row in json.loads(line):
                    key = (row["group"] if by_test else "", row["quantity"], row["dtype"], row["kind"])
                    if row["value"] > best.get(key, {}).get("value", -1.0):
                        best[key] = row
    head = "| test | " if by_test else "| "
    lines = [
        head + "quantity | dtype | policy (rel / abs floor) | worst observed | tensor, test |",
        "|---" * (6 if by_test else 5) + "|",
    ]
    for (group, quantity, dtype, kind), row in sorted(best.items()):
        q = quantity if quantity != "trajectory" else "parameters"
        policy = f"{tolerance('twin', dtype, q):.0e} / {atol('twin', dtype):.0e}"
        what = "rel" if kind == "rel" else "abs (true value 0)"
        first = f"| {group} | " if by_test else "| "
        lines.append(
            f"{first}{quantity} | {dtype} | {policy} | {row['value']:.3g} {what} | {row['tensor']}, {row['test']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_torch_twin.py [--by-test] worst.jsonl ...
    by_test = "--by-test" in sys.argv
    print(worst_table([a for a in sys.argv[1:] if a != "--by-test"], by_test))
