"""Every framework twin against the numpy reference: one parity suite, parametrised over the twin kind.

Each test runs once per kind in oracles.TWIN_KINDS (the first part of its id: `[torch-...]`,
`[keras-...]`), through the one tolerance policy of oracles/compare.py, so a layer, loss or
optimiser added to tests/cases.py is checked against every twin by adding that one case:

    every layer and loss case x dtype x batch size     outputs, loss, every gradient; running statistics
    every layer case in eval mode                      dropout the identity, batchnorm from its statistics
    every loss by its definition                       on inputs that reach each rule's edge
    every optimiser case over 20 steps                 parameters and loss after every step
    dropout, batchnorm, the epoch loop, evaluate       shared masks, running statistics, bit-exact loops
    bad input, round trips                             clear errors; numpy -> twin -> numpy bit-exact
    trajectories on real MNIST                         a few thousand samples; the full epoch with --mnist

What a twin cannot express is declared in CANNOT (and, for statistics it cannot keep, NO_STATE),
and each such case asserts that the twin refuses it with a NotImplementedError saying why: nothing
is skipped silently. The pitfalls each framework has (and each twin documents and works around) are
tested in tests/test_torch_twin.py and tests/test_keras_twin.py.

Worst errors: with BPROP_PARITY_WORST=<file.jsonl> every compared tensor's error is recorded per
(twin, test, quantity, dtype), and each pytest process appends its worst to the file at the end of
the session; `python tests/test_parity.py [--by-test] <file.jsonl>` prints the table (twin,
quantity, dtype, policy, worst observed). Nothing is asserted on those numbers beyond the policy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys

import numpy as np
import pytest
from cases import BATCH_SIZES, DTYPES, LAYER_CASES, LOSS_CASES, OPTIMIZER_CASES, make_batch
from helpers import close, epoch_sizes, has_kind, mnist_for, reference_state

from oracles import TWIN_KINDS, make_twin
from oracles.compare import Comparison, atol, compare, compare_params, quantity_of, tolerance
from oracles.numeric import draw_masks
from reference.errors import DTypeError, LabelError, ShapeError
from reference.losses import make_loss
from reference.network import Network, init_params
from reference.optimizers import make_optimizer
from reference.spec import BATCHNORM_CONVENTIONS, LayerSpec, ModelSpec, preset
from reference.train import batches, evaluate, train_epoch, train_step

TRACE_CASES = {**LAYER_CASES, **LOSS_CASES}
# The batchnorm convention each twin's framework has natively (its running statistics match).
NATIVE_BATCHNORM = {"torch": "batchnorm_torch", "keras": "batchnorm_keras"}
# What a twin cannot express: case (of tests/cases.py) -> what its NotImplementedError says.
# torch.optim has no decoupled decay outside Adam and plain SGD, nor keras' RMSprop (eps inside the
# root); keras.layers.BatchNormalization has no unbiased running variance, and keras.optimizers put
# eps where torch's RMSprop and Adam do not (oracles/torch_twin.py, oracles/keras_twin.py say more).
CANNOT: dict[str, dict[str, str]] = {
    "torch": {
        **dict.fromkeys(
            [f"{name}-{conv}-decoupled" for name in ("momentum", "nesterov") for conv in ("torch", "keras")],
            "decoupled weight decay",
        ),
        "rmsprop-torch-decoupled": "decoupled weight decay",
        "rmsprop-keras-decoupled": "decoupled weight decay",
        "rmsprop-keras": r"sqrt\(s \+ eps\)",
        "rmsprop-keras-coupled": r"sqrt\(s \+ eps\)",
    },
    "keras": {
        "batchnorm_torch": "unbiased",
        **dict.fromkeys([c for c in OPTIMIZER_CASES if c.startswith(("rmsprop-torch", "adam-torch"))], "eps elsewhere"),
    },
}
# Statistics a twin computes but cannot keep exactly: torch folds the unbiased batch variance into
# every running variance, so after a training pass its keras-convention batchnorm refuses get_state.
# The same holds for the cs231n and mytorch conventions (keras' rule, momentum 0.9, the biased variance).
NO_STATE: dict[str, dict[str, str]] = {
    "torch": dict.fromkeys(["batchnorm_keras", "batchnorm_cs231n", "batchnorm_mytorch"], "unbiased"),
    "keras": {},
}
# Where a twin's epoch loop and its step() agree to rounding only, not bit for bit. torch, float32:
# the loop steps on views of one gathered chunk of rows, whose addresses are not 64-byte aligned
# (row offsets of 24 bytes at width 6), and torch's float32 matmul takes another kernel path there:
# step() on the same views gives the loop's numbers bit for bit, step() on fresh copies parts from
# them in the last bit after 3 steps (measured; float64 showed no difference).
NOT_BITWISE = {("torch", "float32")}
OPTIMIZER_MODEL = "l2"  # dense-tanh-dense with an L2 penalty: every parameter has a gradient
# (Not batchnorm for the adaptive optimisers: the bias of a dense layer feeding a batchnorm has a
# true gradient of 0, and Adam and RMSprop divide its rounding noise, 1e-17, by its own size: O(lr)
# steps in directions set by rounding, in any two implementations. Measured: 1.5 relative after one
# step, both dtypes.)
OPTIMIZER_STEPS = 20
WORST_ENV = "BPROP_PARITY_WORST"


# The twin kinds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[pytest.param(k, marks=getattr(pytest.mark, k)) for k in TWIN_KINDS])
def kind(request):
    """A twin kind whose framework is installed; numpy's BLAS and the framework on one thread.

    On 2 busy cores, spinning BLAS and OpenMP threads made batch-128 steps 10-300 times slower in
    numpy, torch and TensorFlow alike (measured; oracles/torch_twin.py, oracles/keras_twin.py).
    """
    pytest.importorskip(request.param)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if request.param == "torch":
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    if request.param == "keras":
        from oracles.keras_twin import limit_tensorflow_threads

        limit_tensorflow_threads(1)  # a no-op if TensorFlow already ran in this process
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield request.param


def refusal(kind: str, *cases: str) -> str | None:
    """What the twin's NotImplementedError says for the first of `cases` it cannot express, else None."""
    return next((CANNOT[kind][c] for c in cases if c in CANNOT[kind]), None)


def build(kind: str, spec: ModelSpec, params, *cases: str, seed: int = 0):
    """The twin, or None once it is shown to refuse what CANNOT says it cannot express."""
    reason = refusal(kind, *cases)
    if reason is None:
        return make_twin(kind, spec, params, seed=seed)
    with pytest.raises(NotImplementedError, match=reason):
        make_twin(kind, spec, params, seed=seed)
    return None


def pair(kind: str, spec: ModelSpec, *cases: str, seed: int = 0):
    """(reference network, its twin holding the very same parameters); the twin None if refused."""
    net = Network(spec, seed=seed)
    return net, build(kind, spec, net.get_params(), *cases, seed=seed)


@functools.cache
def _cached_twin(kind: str, case: str, dtype: str):
    """One twin per kind, case and dtype (building Keras models is the slow part of a trace test)."""
    spec = TRACE_CASES[case].replace(dtype=dtype)
    return make_twin(kind, spec, Network(spec, seed=0).get_params())


def fresh_pair(kind: str, case: str, dtype: str):
    """A reference network and the cached twin reset to its parameters and statistics."""
    spec = TRACE_CASES[case].replace(dtype=dtype)
    net = Network(spec, seed=0)
    if refusal(kind, case):
        return net, build(kind, spec, net.get_params(), case)
    twin = _cached_twin(kind, case, dtype)
    twin.set_params(net.get_params())
    twin.set_state(reference_state(net))
    return net, twin


def batch_pair(kind: str, case: str, dtype: str, batch: int, seed: int):
    """fresh_pair(kind, case, dtype) and a batch (x, y) for it from make_batch(spec, batch, seed)."""
    net, twin = fresh_pair(kind, case, dtype)
    return (net, twin, *make_batch(net.spec, batch, seed=seed))


def masks_for(net: Network, x: np.ndarray) -> dict[str, np.ndarray] | None:
    """Keep-masks for the dropout layers (None without dropout: no forward pass needed)."""
    return draw_masks(net, x) if has_kind(net.spec, "dropout") else None


def loss_row(name: str, mine, theirs, dtype: str):
    """A loss (a float, a 0-d array) against the reference's, under the loss policy."""
    return close(name, np.asarray(mine, np.float64), np.asarray(theirs, np.float64), dtype, "loss")


# Worst observed errors -----------------------------------------------------------------------------


class WorstErrors:
    """The largest error seen per (twin, test function, quantity, dtype).

    A tensor whose true value is 0 (the bias gradient of a dense layer feeding a batchnorm) passes on
    the absolute floor ATOL; its relative error is meaningless (rounding / rounding), so it is kept
    apart, as its max abs error ("abs_on_floor").
    """

    def __init__(self) -> None:
        self.worst: dict[tuple[str, str, str, str, str], dict] = {}

    def add(self, comparison: Comparison, dtype: str, test: str, twin: str, quantity: str | None = None) -> None:
        group = test.split("[")[0]
        for row in comparison.rows:
            if row.worst_index is None:
                continue
            on_floor = row.rel > row.tol and row.passed
            what, value = ("abs_on_floor", row.max_abs) if on_floor else ("rel", row.rel)
            key = (twin, group, quantity or quantity_of(row.name), np.dtype(dtype).name, what)
            if value > self.worst.get(key, {}).get("value", -1.0):
                self.worst[key] = {"value": value, "tensor": row.name, "test": test}

    def dump(self, path: str) -> None:
        rows = [
            {"twin": t, "group": g, "quantity": q, "dtype": d, "kind": what, **entry}
            for (t, g, q, d, what), entry in self.worst.items()
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
def check(worst_errors, request, kind):
    """check(comparison, dtype[, quantity]): record every tensor's error, then assert the policy."""

    def _check(comparison: Comparison, dtype: str, quantity: str | None = None) -> Comparison:
        worst_errors.add(comparison, dtype, request.node.name, kind, quantity)
        comparison.assert_ok()
        return comparison

    return _check


def check_state(kind: str, case: str, net: Network, twin, dtype: str, check) -> None:
    """The running statistics after training-mode passes, or the refusal NO_STATE declares."""
    if case in NO_STATE[kind]:
        with pytest.raises(NotImplementedError, match=NO_STATE[kind][case]):
            twin.get_state()
        return
    check(compare_params(reference_state(net), twin.get_state(), dtype=dtype), dtype, "parameters")


# Building: make_twin, round trips ------------------------------------------------------------------


def test_make_twin_builds_the_twin_of_that_kind(kind):
    spec = LAYER_CASES["tanh"]
    twin = make_twin(kind, spec, Network(spec).get_params())
    assert twin.kind == kind and type(twin).__module__ == f"oracles.{kind}_twin"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["dense", "batchnorm_torch", "batchnorm_keras", "batchnorm_cs231n", "layernorm"])
def test_params_and_state_round_trip_bit_exact(kind, case, dtype):
    spec = LAYER_CASES[case].replace(dtype=dtype)
    rng = np.random.default_rng(7)
    params = {k: rng.normal(size=v.shape).astype(dtype) for k, v in init_params(spec, seed=3).items()}  # no 0s, 1s
    twin = build(kind, spec, params, case)
    if twin is None:
        return
    back = twin.get_params()
    assert set(back) == set(params)
    for k in params:
        assert back[k].dtype == params[k].dtype and back[k].shape == params[k].shape, k
        assert back[k].tobytes() == params[k].tobytes(), f"{k} changed in the round trip"
        assert back[k] is not params[k]
    new = {k: (v * 3 + 1).astype(dtype) for k, v in params.items()}
    twin.set_params(new)
    twin.get_params()["dense_1.W"][...] = 0  # the copies get_params hands out are not live
    assert all(twin.get_params()[k].tobytes() == new[k].tobytes() for k in new)
    state = {k: rng.uniform(0.1, 3, v.shape).astype(dtype) for k, v in twin.get_state().items()}
    twin.set_state(state)
    assert all(twin.get_state()[k].tobytes() == v.tobytes() for k, v in state.items())


def test_bad_input_is_named(kind):
    spec = LAYER_CASES["tanh"]
    params = Network(spec).get_params()
    with pytest.raises(DTypeError, match=r"dense_1\.W: expected dtype float64, got .*float32"):
        make_twin(kind, spec, {**params, "dense_1.W": params["dense_1.W"].astype(np.float32)})
    with pytest.raises(ShapeError, match=r"expected parameters .*dense_2\.b"):
        make_twin(kind, spec, {k: v for k, v in params.items() if k != "dense_2.b"})
    twin = make_twin(kind, spec, params)
    x, y = make_batch(spec, 7)
    with pytest.raises(DTypeError, match=rf"{kind} twin.*input.*expected dtype float64, got .*float32"):
        twin.trace(x.astype(np.float32), y)
    with pytest.raises(ShapeError, match=r"input.*expected shape \(batch, 6\)"):
        twin.trace(x[:, :5], y)
    with pytest.raises(LabelError, match=r"expected labels in \[0, 3\), got 3"):
        twin.trace(x, np.full(7, 3))
    with pytest.raises(ShapeError, match=r"dense_1\.W: expected shape \(6, 5\)"):
        twin.set_params({**params, "dense_1.W": params["dense_1.W"].T.copy()})
    with pytest.raises(DTypeError, match=r"dense_1\.b: expected dtype float64"):
        twin.set_params({**params, "dense_1.b": params["dense_1.b"].astype(np.float32)})
    with pytest.raises(ShapeError, match="expected state"):
        twin.set_state({"batchnorm_1.running_mean": np.zeros(5)})
    with pytest.raises(ShapeError, match="order"):
        twin.train_epoch(x, y, np.arange(8), 1)  # more rows than x has
    with pytest.raises(ShapeError, match=r"order indices must lie in \[0, 7\), got 0..7"):
        twin.train_epoch(x, y, np.array([0, 7]), 1)
    with pytest.raises(ShapeError, match=rf"{kind} twin train_epoch: expected a batch size >= 1, got 0"):
        twin.train_epoch(x, y, np.arange(7), 0)
    spec = LAYER_CASES["dropout"]
    twin = make_twin(kind, spec, Network(spec).get_params())
    with pytest.raises(ShapeError, match=r"dropout_1: expected a mask of shape \(7, 5\)"):
        twin.trace(x, y, masks={"dropout_1": np.ones((7, 4))})


# Traces: every layer and loss, both dtypes, every batch size ----------------------------------------


def over(cases: dict, batch_sizes=BATCH_SIZES):
    """Parametrise a test over case x dtype x batch size (ids in that order, after the twin kind)."""
    marks = (
        pytest.mark.parametrize("case", list(cases)),
        pytest.mark.parametrize("dtype", DTYPES),
        pytest.mark.parametrize("batch", batch_sizes, ids=lambda b: f"batch{b}"),
    )
    return lambda test: functools.reduce(lambda t, mark: mark(t), marks, test)


@over(TRACE_CASES)
def test_trace_matches_reference(kind, case, dtype, batch, check):
    net, twin, x, y = batch_pair(kind, case, dtype, batch, seed=1)
    if twin is None:
        return
    if batch == 1 and has_kind(net.spec, "batchnorm"):  # batch statistics of one row: an error in both
        for model in (net, twin):
            with pytest.raises(ShapeError, match="at least 2"):
                model.trace(x, y)
        return
    masks = masks_for(net, x)
    check(compare(net.trace(x, y, masks=masks), twin.trace(x, y, masks=masks), oracle="twin"), dtype)
    check_state(kind, case, net, twin, dtype, check)


@over(LAYER_CASES)
def test_eval_mode_trace_matches_reference(kind, case, dtype, batch, check):
    """train=False: dropout is the identity, batchnorm normalises with its running statistics (any batch)."""
    net, twin, x, y = batch_pair(kind, case, dtype, batch, seed=2)
    if twin is None:
        return
    check(compare(net.trace(x, y, train=False), twin.trace(x, y, train=False), oracle="twin"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_forward_matches_reference(kind, case, dtype, check):
    net, twin, x, _ = batch_pair(kind, case, dtype, 7, seed=3)
    if twin is None:
        return
    check(Comparison([close("forward", twin.forward(x), net.forward(x), dtype, "forward")]), dtype, "forward")


def test_trace_leaves_the_parameters_alone(kind):
    net, twin = pair(kind, LAYER_CASES["l2"])
    x, y = make_batch(net.spec, 7)
    twin.trace(x, y)
    assert all(np.array_equal(net.get_params()[k], v) for k, v in twin.get_params().items())


def test_a_1e10_error_in_one_weight_is_caught_where_it_starts(kind):
    """The suite can fail: dense_2.W off by 1e-10 (relative) in one element shows up first at dense_2.out."""
    net, twin = fresh_pair(kind, "sigmoid", "float64")
    params = net.get_params()
    params["dense_2.W"][1, 2] *= 1 + 1e-10
    twin.set_params(params)
    x, y = make_batch(net.spec, 7)
    result = compare(net.trace(x, y), twin.trace(x, y), "twin")
    assert not result.passed and result.first_divergence.name == "dense_2.out"


# Losses by their definitions, on inputs that reach each rule's edge ---------------------------------


def loss_inputs(name: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets that reach the edges: nll's clip, l1's tie, bce within 1e-13 of 0 and 1,
    the hinge's kink."""
    tiny = 1e-13 if dtype == "float64" else 1e-6
    if name in ("cross_entropy", "nll"):
        probs = np.array([[1e-9, 0.5, 0.5 - 1e-9], [0.2, 0.3, 0.5], [1 - 2e-8, 1e-8, 1e-8]], dtype)
        return probs, np.array([0, 2, 0])  # p_y below the clip, inside, above 1 - clip
    if name == "softmax_cross_entropy":
        return np.array([[30.0, -30.0, 0.0], [0.1, 0.2, 0.3]], dtype), np.array([1, 2])
    if name == "multiclass_hinge":  # a margin of exactly 0 (the kink: gradient 0), all-equal scores, beyond 1
        scores = np.array([[0.0, 1.0, -5.0], [0.5, 0.2, 3.0], [2.0, 2.0, 2.0], [1.3, -0.7, 0.4], [9.0, 0.0, 1.0]])
        return scores.astype(dtype), np.array([1, 0, 2, 1, 0])
    if name == "bce":
        return np.array([[tiny, 0.5, 1 - tiny], [0.3, 0.9, 0.01]], dtype), np.array(
            [[0.0, 1.0, 0.5], [1, 0, 0.2]], dtype
        )
    pred = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]], dtype)
    return pred, np.array([[0.5, 1.0, -2.0], [0.1, 3.0, 0.0]], dtype)  # l1: ties at [0, 0] and [1, 1]


def torch_loss_and_grad(twin, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The torch twin's loss function and its autograd dL/dpred on given predictions."""
    import torch

    p = torch.from_numpy(pred.copy()).requires_grad_(True)
    loss = twin.loss_fn(p, torch.from_numpy(target.astype(np.int64) if target.dtype.kind in "iu" else target))
    loss.backward()
    return loss.detach().numpy(), p.grad.numpy()


def keras_loss_and_grad(twin, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The keras twin's loss function and TensorFlow's dL/dpred on given predictions."""
    import tensorflow as tf

    from oracles.keras_twin import floatx_scope

    with floatx_scope(twin.spec.dtype):
        p = tf.constant(pred)
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = twin.loss_fn(tf.constant(target), p)
        return loss.numpy(), tape.gradient(loss, p).numpy()


LOSS_AND_GRAD = {"torch": torch_loss_and_grad, "keras": keras_loss_and_grad}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_definition_matches_reference(kind, case, dtype, check):
    spec = LOSS_CASES[case].replace(dtype=dtype)
    pred, target = loss_inputs(spec.loss, dtype)
    value, grad = make_loss(spec.loss, spec.reduction).value_and_grad(pred, target)
    twin_value, twin_grad = LOSS_AND_GRAD[kind](fresh_pair(kind, case, dtype)[1], pred, target)
    rows = [loss_row("loss", twin_value, value, dtype), close("dL/dpred", twin_grad, grad, dtype, "gradient")]
    check(Comparison(rows), dtype)


# Dropout: a shared keep-mask ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_shared_mask_and_a_different_mask_is_caught(kind, dtype, check):
    net, twin = pair(kind, LAYER_CASES["dropout"].replace(dtype=dtype))
    x, y = make_batch(net.spec, 7, seed=4)
    masks = draw_masks(net, x)
    assert 0 < masks["dropout_1"].mean() < 1
    reference = net.trace(x, y, masks=masks)
    check(compare(reference, twin.trace(x, y, masks=masks)), dtype)
    flipped = masks["dropout_1"].copy()
    flipped[0, 0] = 1 - flipped[0, 0]
    wrong = compare(reference, twin.trace(x, y, masks={"dropout_1": flipped}))
    assert not wrong.passed and wrong.first_divergence.name == "dropout_1.out"


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_without_masks_draws_the_references_masks(kind, dtype, check):
    """Same seed, same calls: the twin draws from default_rng([seed, 1]) exactly as Network does."""
    net, twin = pair(kind, LAYER_CASES["dropout"].replace(dtype=dtype), seed=5)
    for step in range(3):
        x, y = make_batch(net.spec, 7, seed=10 + step)
        masks = None if step % 2 else {}  # a dict without the layer's mask draws it too, as Network does
        check(compare(net.trace(x, y, masks=masks), twin.trace(x, y, masks=masks)), dtype)
    assert not np.array_equal(twin.forward(x, train=True), twin.forward(x, train=True)), "masks must change"


# BatchNorm in every convention: training, running statistics, eval mode ---------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", [{}, {"momentum": 0.3, "eps": 1e-3}], ids=["defaults", "momentum0.3-eps1e-3"])
@pytest.mark.parametrize("convention", BATCHNORM_CONVENTIONS)
def test_batchnorm_train_eval_and_running_statistics(kind, convention, layer, dtype, check):
    """Statistics the twin keeps exactly are compared after every step; the others are refused (NO_STATE),
    and evaluation from the reference's statistics, handed over, still matches."""
    case = f"batchnorm_{convention}"
    base = LAYER_CASES[case]
    layers = tuple(dataclasses.replace(ls, **layer) if ls.kind == "batchnorm" else ls for ls in base.layers)
    net, twin = pair(kind, base.replace(dtype=dtype, layers=layers), case)
    if twin is None:
        return
    check(compare_params(reference_state(net), twin.get_state(), dtype=dtype), dtype, "parameters")  # the start
    for step in range(4):  # each training-mode trace folds the batch statistics in
        x, y = make_batch(net.spec, 7 + step, seed=20 + step)
        x = (x * 2 + 3).astype(dtype)  # a mean and variance far from the initial 0 and 1
        check(compare(net.trace(x, y), twin.trace(x, y)), dtype)
        check_state(kind, case, net, twin, dtype, check)
    if case in NO_STATE[kind]:
        twin.set_state(reference_state(net))
    x, y = make_batch(net.spec, 7, seed=30)
    check(compare(net.trace(x, y, train=False), twin.trace(x, y, train=False)), dtype)
    check(Comparison([close("forward", twin.forward(x), net.forward(x), dtype, "forward")]), dtype, "forward")


# Optimisers: 20 steps, parameters and loss after every step ---------------------------------------


def optimizer_params():
    for case, opt in OPTIMIZER_CASES.items():
        for dtype in DTYPES:
            yield pytest.param(case, dtype, True, id=f"{case}-{dtype}")
            if opt.weight_decay:
                yield pytest.param(case, dtype, False, id=f"{case}-{dtype}-weights-only")


def run_steps(net: Network, twin, check, dtype: str, seed: int = 100, state: bool = False) -> None:
    """OPTIMIZER_STEPS steps of both on the same batches, compared after every step."""
    ref_opt = make_optimizer(net.spec.optimizer)
    for step in range(OPTIMIZER_STEPS):
        x, y = make_batch(net.spec, 7, seed=seed + step)
        ref_loss, twin_loss = train_step(net, ref_opt, x, y), twin.step(x, y)
        check(Comparison([loss_row("loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
        check(compare_params(net.get_params(), twin.get_params(), title=f"after step {step + 1}"), dtype)
        if state:
            check(compare_params(reference_state(net), twin.get_state(), dtype=dtype), dtype)


@pytest.mark.parametrize(("case", "dtype", "decay_biases"), list(optimizer_params()))
def test_optimizer_matches_reference_every_step(kind, case, dtype, decay_biases, check):
    opt = dataclasses.replace(OPTIMIZER_CASES[case], decay_biases=decay_biases)
    net, twin = pair(kind, LAYER_CASES[OPTIMIZER_MODEL].replace(dtype=dtype, optimizer=opt), case)
    if twin is not None:
        run_steps(net, twin, check, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay_biases", [True, False], ids=["decay-all", "weights-only"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_optimizer_parameter_groups_with_batchnorm(kind, name, decay_biases, dtype, check):
    """gamma and beta are not weights: decay_biases=False leaves them (and the biases) undecayed."""
    opt = dataclasses.replace(OPTIMIZER_CASES[f"{name}-torch-coupled"], decay_biases=decay_biases)
    net, twin = pair(kind, LAYER_CASES[NATIVE_BATCHNORM[kind]].replace(dtype=dtype, optimizer=opt))
    run_steps(net, twin, check, dtype, seed=200, state=True)


# Training: step, the epoch loop, evaluate ---------------------------------------------------------


def small_data(spec: ModelSpec, n: int, seed: int = 0):
    x, y = make_batch(spec, n, seed=seed)
    return x, y, np.random.default_rng(seed).permutation(n)


def training_spec(kind: str, case: str, opt: str, dtype: str) -> ModelSpec:
    """A layer case ("batchnorm": the twin's own convention) trained by an optimiser case."""
    case = NATIVE_BATCHNORM[kind] if case == "batchnorm" else case
    return LAYER_CASES[case].replace(dtype=dtype, optimizer=OPTIMIZER_CASES[opt])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [1, 7], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize(
    ("case", "opt"),
    [
        ("tanh", "momentum-torch"),
        ("dropout", "nesterov-keras-coupled"),
        ("batchnorm", "momentum-torch"),
        ("l2", "adam-keras"),
    ],
    ids=lambda v: v,
)
def test_train_epoch_is_step_by_step_bit_for_bit(kind, case, opt, batch_size, dtype, check):
    """The fast loop (keras: one compiled loop) gives exactly the numbers of step() per batch, and
    train_epoch(on_step=...) sees each step's loss; dropout masks are drawn in the same order."""
    spec = training_spec(kind, case, opt, dtype)
    batch_size = 2 if batch_size == 1 and has_kind(spec, "batchnorm") else batch_size
    x, y, order = small_data(spec, 62)  # the last batch short (6 of 7) but never a single row
    params = Network(spec, seed=0).get_params()
    fast, slow, watched = (make_twin(kind, spec, params, seed=3) for _ in range(3))
    mean = fast.train_epoch(x, y, order, batch_size)
    losses = [slow.step(x[idx], y[idx]) for idx in batches(order, batch_size)]
    seen = []
    watched_mean = watched.train_epoch(x, y, order, batch_size, on_step=lambda i, loss: seen.append((i, loss)))
    assert mean == watched_mean and [i for i, _ in seen] == list(range(len(losses)))
    assert loss_row("mean loss", mean, np.mean(losses), dtype).passed
    if (kind, dtype) in NOT_BITWISE:  # the same numbers up to rounding: the policy
        check(Comparison([loss_row(f"loss {i}", a, b, dtype) for (i, a), b in zip(seen, losses)]), dtype, "loss")
        check(compare_params(watched.get_params(), slow.get_params(), dtype=dtype), dtype)
    else:
        assert [loss for _, loss in seen] == losses
        assert all(np.array_equal(v, slow.get_params()[k]) for k, v in watched.get_params().items())
    for got, want in ((fast.get_params(), watched.get_params()), (fast.get_state(), watched.get_state())):
        assert all(np.array_equal(got[k], want[k]) for k in want)


MIXED = ModelSpec(  # dense, keras-convention batchnorm, relu, dropout: statistics and masks together
    n_in=6,
    layers=(
        LayerSpec("dense", units=8),
        LayerSpec("batchnorm", convention="keras"),
        LayerSpec("relu"),
        LayerSpec("dropout", rate=0.3),
        LayerSpec("dense", units=3),
    ),
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("case", "opt"),
    [
        ("tanh", "sgd-torch"),
        ("dropout", "nesterov-torch"),
        ("batchnorm", "momentum-torch-coupled"),
        ("l2", "adam-torch-decoupled"),
        ("mixed", "momentum-keras-decoupled"),
    ],
    ids=lambda v: v,
)
def test_train_epoch_matches_reference(kind, case, opt, dtype, check):
    spec = MIXED.replace(dtype=dtype, optimizer=OPTIMIZER_CASES[opt]) if case == "mixed" else None
    spec = spec or training_spec(kind, case, opt, dtype)
    x, y, order = small_data(spec, 90)
    net, twin = pair(kind, spec, opt, seed=4)  # the same seed: dropout masks drawn alike, step by step
    if twin is None:
        return
    ref_mean = train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 8)
    twin_mean = twin.train_epoch(x, y, order, 8)
    check(Comparison([loss_row("mean loss", twin_mean, ref_mean, dtype)]), dtype, "loss")
    check(compare_params(net.get_params(), twin.get_params()), dtype)
    check(compare_params(reference_state(net), twin.get_state(), dtype=dtype), dtype)
    (ref_loss, ref_acc), (twin_loss, twin_acc) = evaluate(net, x, y), twin.evaluate(x, y)  # after training
    check(Comparison([loss_row("evaluate loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
    assert twin_acc == ref_acc


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["batchnorm", "mse-mean", "cross_entropy-sum"])
def test_evaluate_matches_reference(kind, case, dtype, check):
    spec = TRACE_CASES[NATIVE_BATCHNORM[kind] if case == "batchnorm" else case].replace(dtype=dtype)
    x, y, order = small_data(spec, 50)
    net, twin = pair(kind, spec)
    train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 10)
    twin.train_epoch(x, y, order, 10)
    (ref_loss, ref_acc), (twin_loss, twin_acc) = evaluate(net, x, y, batch_size=16), twin.evaluate(x, y, batch_size=16)
    check(Comparison([loss_row("evaluate loss", twin_loss, ref_loss, dtype)]), dtype, "loss")
    assert twin_acc == ref_acc


def test_step_returns_the_loss_before_the_update(kind):
    net, twin = pair(kind, LAYER_CASES["tanh"])
    x, y = make_batch(net.spec, 7)
    before = float(net.trace(x, y).loss)
    assert twin.step(x, y) == before
    assert float(twin.trace(x, y).loss) < before


def test_train_epoch_in_slices_is_one_epoch(kind):
    """Slices of the order whose lengths are multiples of the batch size make the same epoch
    (bprop.jobs feeds an epoch in such slices to move its progress bar)."""
    spec = LAYER_CASES[OPTIMIZER_MODEL].replace(optimizer=OPTIMIZER_CASES["adam-keras"])
    x, y, order = small_data(spec, 40, seed=2)
    params = Network(spec).get_params()
    whole, sliced = make_twin(kind, spec, params), make_twin(kind, spec, params)
    whole.train_epoch(x, y, order, 6)
    sliced.train_epoch(x, y, order[:18], 6)
    sliced.train_epoch(x, y, order[18:], 6)
    assert all(np.array_equal(whole.get_params()[k], v) for k, v in sliced.get_params().items())


# Trajectories on real MNIST -----------------------------------------------------------------------


@pytest.mark.parametrize("n", epoch_sizes())
@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-relu-deep"])
def test_batched_preset_trajectory_float64(kind, mnist, name, n, check):
    """From identical weights and batch order, the twin's epoch loop stays within the twin policy."""
    spec = preset(name, dtype="float64")
    x, y, order = mnist_for(mnist, spec, n)
    net, twin = pair(kind, spec)
    ref_mean = train_epoch(net, make_optimizer(spec.optimizer), x, y, order, spec.batch_size)
    twin_mean = twin.train_epoch(x, y, order, spec.batch_size)
    check(Comparison([loss_row("mean loss", twin_mean, ref_mean, "float64")]), "float64", "loss")
    check(compare_params(net.get_params(), twin.get_params(), title=f"{name}, {n} samples"), "float64")


# float32: a ReLU pre-activation within rounding of 0 flips its sign between the two (measured with
# the torch twin: mnist-relu-deep from its He-normal start: past 1e-5 at step 384 (from randn * 0.01
# it was step 199, dense_2.out = 6.9e-10 on a scale of 0.17); mnist-relu-batched step 194), and from
# there the float32 trajectories part. The policy holds over the steps before that; the full-epoch
# figure is recorded for the report, not asserted.
FLOAT32_STEPS = 150


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-relu-deep"])
def test_batched_preset_trajectory_float32(kind, mnist, name, check, worst_errors, request):
    spec = preset(name, dtype="float32")
    x, y, order = mnist_for(mnist, spec, 60_000)
    net, twin = pair(kind, spec)
    opt = make_optimizer(spec.optimizer)
    head = FLOAT32_STEPS * spec.batch_size
    train_epoch(net, opt, x, y, order[:head], spec.batch_size)
    twin.train_epoch(x, y, order[:head], spec.batch_size)
    check(compare_params(net.get_params(), twin.get_params(), title=f"{name} after {FLOAT32_STEPS} steps"), "float32")
    train_epoch(net, opt, x, y, order[head:], spec.batch_size)
    twin.train_epoch(x, y, order[head:], spec.batch_size)
    full = compare_params(net.get_params(), twin.get_params(), title=f"{name} after one epoch")
    print(full.report(verbose=True))
    worst_errors.add(full, "float32", request.node.name + "[full epoch, not asserted]", kind, "trajectory")


# The per-sample homework on raw 0..255 pixels is chaotic: the reference against itself with one ulp
# added to every dense_1 weight parts by 1e-12 at step 42, 1e-9 at 86, 1e-3 at 216 (float64). The
# twins against the reference (seed 0, epoch order seed 0; max relative error over the tensors):
# torch float64 1e-12 at step 56, 1e-9 at 96, 1e-6 at 158, 1e-3 at 236; keras within the policy for
# 57 steps (seeds 1 and 2: 30 and 57) and within 1e-9 absolute for 157 (108, 141). The policy is
# asserted over the first 45. float32 is not tested here: dense_1.b is 9.9e-6 apart (relative, torch)
# after 10 steps, at the policy's edge from the start, and the policy fails at step 42.
PER_SAMPLE_STEPS = 45


def test_per_sample_preset_float64_step_by_step_over_the_stretch_it_agrees(kind, mnist, check):
    """Raw pixels and saturating sigmoids amplify rounding: compare every step of the first stretch;
    the twin's own epoch loop over those samples lands on exactly its step-by-step parameters."""
    spec = preset("mnist-sigmoid-per-sample", dtype="float64")
    x, y, order = mnist_for(mnist, spec, PER_SAMPLE_STEPS)
    net, twin = pair(kind, spec)
    opt = make_optimizer(spec.optimizer)
    for step, idx in enumerate(batches(order, 1)):
        ref_loss, twin_loss = train_step(net, opt, x[idx], y[idx]), twin.step(x[idx], y[idx])
        check(Comparison([loss_row("loss", twin_loss, ref_loss, "float64")]), "float64", "loss")
        check(compare_params(net.get_params(), twin.get_params(), title=f"after step {step + 1}"), "float64")
    fast = make_twin(kind, spec, Network(spec, seed=0).get_params())
    fast.train_epoch(x, y, order, 1)
    assert all(np.array_equal(fast.get_params()[k], v) for k, v in twin.get_params().items())


# The table of worst errors ------------------------------------------------------------------------


def worst_table(paths: list[str], by_test: bool = False) -> str:
    """Markdown: twin, quantity, dtype, policy, worst observed, over every process's record (and by test)."""
    best: dict[tuple, dict] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                for row in json.loads(line):
                    key = (row["twin"], row["group"] if by_test else "", row["quantity"], row["dtype"], row["kind"])
                    if row["value"] > best.get(key, {}).get("value", -1.0):
                        best[key] = row
    head = "| twin | test | " if by_test else "| twin | "
    lines = [
        head + "quantity | dtype | policy (rel / abs floor) | worst observed | tensor, test |",
        "|---" * (7 if by_test else 6) + "|",
    ]
    for (twin, group, quantity, dtype, what), row in sorted(best.items()):
        q = quantity if quantity != "trajectory" else "parameters"
        policy = f"{tolerance('twin', dtype, q):.0e} / {atol('twin', dtype):.0e}"
        measure = "rel" if what == "rel" else "abs (true value 0)"
        first = f"| {twin} | {group} | " if by_test else f"| {twin} | "
        lines.append(
            f"{first}{quantity} | {dtype} | {policy} | {row['value']:.3g} {measure} | {row['tensor']}, {row['test']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_parity.py [--by-test] worst.jsonl ...
    by_test = "--by-test" in sys.argv
    print(worst_table([a for a in sys.argv[1:] if a != "--by-test"], by_test))
