"""Finite differences: every layer, loss and preset against central differences in float64.

Contract: for a float64 network, compare(net.trace(x, y), numeric_trace(net, x, y), oracle="numeric")
passes on every tensor (forward outputs, loss, dL/d(out), dL/d(in), dL/dW, dL/db), i.e. the error
relative to each tensor's largest magnitude is within oracles/compare.py's "numeric" policy.

Finite differences are only meaningful where the function is smooth within the step: a ReLU input
or an L1 residual closer to 0 than a few steps turns the difference quotient into garbage. So every
batch here is drawn kink-free (`kink_free_batch`), by trying the next seed until no kink is within
KINK_MARGIN: a precondition of the oracle, not a tolerance.

float32 networks: compare.py has no ("numeric", "float32") policy, so a float32 network is checked
against the float64 reference holding the same (rounded) parameters with the "twin" float32 policy:
the float64 network computes the same function as exactly as the numeric oracle does (its error,
~1e-16, is far below float32 rounding), so the twin semantics ("same function, float32 rounding on
one side") is the right one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES, make_batch

from oracles.compare import Comparison, compare
from oracles.numeric import as_float64, draw_masks, numeric_trace, numerical_gradient
from reference.conv import windows
from reference.layers import LeakyReLU, MaxPool2D, ReLU, Sigmoid
from reference.network import Network
from reference.spec import PRESETS, ModelSpec, preset

KINK_MARGIN = 1e-4  # 5x the widest difference step (2h = 2e-5): no ReLU input or L1 residual closer to 0
SMALL_N_IN = 5  # the presets' layer structure on a narrow input, so differences stay cheap


def pool_gap(layer: MaxPool2D, h: np.ndarray) -> float:
    """The smallest gap between a max-pool window's largest and second largest input (0: a tie)."""
    win = windows(h, layer.pool, layer.stride)
    top2 = np.sort(win.reshape(*win.shape[:4], -1), axis=-1)[..., -2:]
    return float((top2[..., 1] - top2[..., 0]).min()) if top2.shape[-1] == 2 else np.inf


def kink_distance(net: Network, x: np.ndarray, y: np.ndarray, train: bool = True) -> float:
    """The smallest |ReLU input|, max-pool gap (|pred - target| for L1, |margin| for the hinge) over the batch."""
    outs, _ = copy.deepcopy(net).forward_cached(x, train)  # a copy: batchnorm statistics stay
    inputs = [x, *outs[:-1]]
    dist = [np.abs(h).min() for layer, h in zip(net.layers, inputs) if isinstance(layer, ReLU | LeakyReLU)]
    dist += [pool_gap(layer, h) for layer, h in zip(net.layers, inputs) if isinstance(layer, MaxPool2D)]
    if net.spec.loss == "l1":
        dist.append(np.abs(outs[-1] - y).min())
    if net.spec.loss == "multiclass_hinge":  # the hinge's kink: a margin s_j - s_y + 1 at 0, j != y
        scores = outs[-1]
        margins = scores - scores[np.arange(len(y)), y][:, None] + 1
        margins[np.arange(len(y)), y] = np.inf
        dist.append(np.abs(margins).min())
    return float(min(dist, default=np.inf))


def kink_free_batch(net: Network, batch: int, seed: int = 0, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The first make_batch(spec, batch, seed + k) with no kink within KINK_MARGIN."""
    for s in range(seed, seed + 200):
        x, y = make_batch(net.spec, batch, seed=s)
        if kink_distance(net, x, y, train) >= KINK_MARGIN:
            return x, y
    pytest.fail(f"no kink-free batch of {batch} for {net.spec.name} in 200 seeds (margin {KINK_MARGIN})")


def check_numeric(net: Network, x: np.ndarray, y: np.ndarray, train: bool = True) -> Comparison:
    """net.trace against numeric_trace with shared dropout masks; fails with the per-tensor report."""
    masks = draw_masks(net, x) if train else None
    mine = net.trace(x, y, train=train, masks=masks)
    theirs = numeric_trace(net, x, y, train=train, masks=masks)
    result = compare(mine, theirs, oracle="numeric", names=("reference", "finite differences"))
    result.assert_ok()
    assert len(result.rows) == len(list(mine.tensors())), "every tensor of the trace must be compared"
    return result


def batch_sizes_for(spec: ModelSpec, sizes: tuple[int, ...]) -> list[int]:
    """Batchnorm in training mode needs two rows; its batch of one is checked in eval mode."""
    has_bn = any(layer.kind == "batchnorm" for layer in spec.layers)
    return [b for b in sizes if not (has_bn and b == 1)]


LAYER_PARAMS = [
    pytest.param(cid, batch, id=f"{cid}-batch{batch}")
    for cid, spec in LAYER_CASES.items()
    for batch in batch_sizes_for(spec, (1, 7, 32))
]
LOSS_PARAMS = [pytest.param(cid, batch, id=f"{cid}-batch{batch}") for cid in LOSS_CASES for batch in (1, 7, 32)]


@pytest.mark.parametrize(("case", "batch"), LAYER_PARAMS)
def test_layer_matches_finite_differences(case, batch):
    net = Network(LAYER_CASES[case], seed=1)
    check_numeric(net, *kink_free_batch(net, batch, seed=2))


@pytest.mark.parametrize("case", [c for c in LAYER_CASES if c.startswith(("batchnorm", "dropout"))])
@pytest.mark.parametrize("batch", [1, 7])
def test_eval_mode_matches_finite_differences(case, batch):
    """Batchnorm on running statistics (after a few training steps moved them), dropout off."""
    net = Network(LAYER_CASES[case], seed=1)
    for s in range(3):
        net.forward(make_batch(net.spec, 16, seed=100 + s)[0], train=True)
    check_numeric(net, *kink_free_batch(net, batch, seed=2, train=False), train=False)


@pytest.mark.parametrize(("case", "batch"), LOSS_PARAMS)
def test_loss_matches_finite_differences(case, batch):
    net = Network(LOSS_CASES[case], seed=1)
    check_numeric(net, *kink_free_batch(net, batch, seed=2))


def small_preset(name: str) -> ModelSpec:
    """The preset's layers, loss, reduction and init on SMALL_N_IN inputs (images: 1 x 12 x 12)."""
    if PRESETS[name].input_shape is not None:
        return preset(name, n_in=144, input_shape=(1, 12, 12))
    return preset(name, n_in=SMALL_N_IN)


# The deep preset (23k parameters, 4 losses each) only at batch 1: at 7 it costs ~15 s of CPU, and
# test_batching shows its batch gradient is the mean of these per-sample ones.
# The CNN preset pools ReLU outputs: a window of ReLU zeros is a tie, where the max has no
# derivative, so no batch is kink-free. tests/test_conv.py checks its layers in the other order
# (max-pool, then ReLU: the same function, and differentiable wherever the window has one maximum).
PRESET_PARAMS = [
    pytest.param(name, batch, id=f"{name}-batch{batch}")
    for name in sorted(PRESETS)
    if name != "mnist-cnn"
    for batch in ((1,) if name == "mnist-relu-deep" else (1, 7))
]


@pytest.mark.parametrize(("name", "batch"), PRESET_PARAMS)
def test_preset_matches_finite_differences(name, batch):
    net = Network(small_preset(name), seed=1)
    check_numeric(net, *kink_free_batch(net, batch, seed=2))


def test_preset_raw_pixel_scale_matches_finite_differences():
    """The homework preset on inputs at its raw 0..255 pixel scale (sparse, like MNIST)."""
    net = Network(preset("mnist-sigmoid-per-sample", n_in=12), seed=3)
    rng = np.random.default_rng(4)
    x = np.where(rng.random((3, 12)) < 0.2, rng.integers(0, 256, (3, 12)), 0).astype(np.float64)
    check_numeric(net, x, rng.integers(0, 10, 3))


# The oracle itself -----------------------------------------------------------------------------


def test_numerical_gradient_of_a_known_function():
    """d/dx sum(x^3 + sin x) = 3 x^2 + cos x."""
    x = np.random.default_rng(0).normal(size=(3, 4))
    grad = numerical_gradient(lambda: float((x**3 + np.sin(x)).sum()), x)
    exact = 3 * x**2 + np.cos(x)
    # Its own bar: a closed form isolates the stencil's rounding, ~1.5 eps |f| / h ~ 2e-10 here (h = 1e-5,
    # |f| ~ 6), 1e-11 of |f'|; the numeric policy's 1e-7 is for whole networks, so 1e-9 is 100x tighter.
    assert np.abs(grad - exact).max() <= 1e-9 * np.abs(exact).max()


def test_numeric_trace_leaves_the_network_untouched():
    net = Network(LAYER_CASES["batchnorm_torch"], seed=1)
    before = net.get_params()
    state = {k: v.copy() for k, v in net.layers[1].state.items()}
    x, y = make_batch(net.spec, 7, seed=2)
    numeric_trace(net, x, y)
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v, err_msg=k)
    for k, v in state.items():
        np.testing.assert_array_equal(net.layers[1].state[k], v, err_msg=k)


@pytest.mark.parametrize("case", ["cnn", "conv2d-dropout", "batchnorm_torch", "dropout"])
def test_a_parameter_s_differences_from_its_layer_are_those_from_the_network_input(case):
    """numeric_trace runs the network from layer k when it perturbs layer k's parameters (the layers
    before it do not read them): the plain form, every difference from the network input, gives the
    same gradients bit for bit (train mode: batchnorm on batch statistics, dropout on shared masks)."""
    net = Network(LAYER_CASES[case], seed=1)
    x, y = make_batch(net.spec, 3, seed=2)
    masks = draw_masks(net, x)
    trace = numeric_trace(net, x, y, masks=masks)
    net64 = copy.deepcopy(net)  # float64 already: the cases are

    def loss_from_the_input() -> float:
        return float(net64._loss_and_grad(net64.forward_cached(x, True, masks)[0][-1], y)[0])

    compared = 0
    for layer, rec in zip(net64.layers, trace.layers):
        for name, p in layer.params.items():
            plain = numerical_gradient(loss_from_the_input, p)
            np.testing.assert_array_equal(rec.grads[name], plain, err_msg=f"{layer.name}.{name}")
            compared += 1
    assert compared >= 2 and any(layer.params for layer in net64.layers[1:]), "a later layer's parameters too"


def test_a_wrong_backward_is_caught_and_named(monkeypatch):
    """The check can fail: sigmoid's backward without the (1 - s) factor diverges at sigmoid_1.grad_in."""
    net = Network(LAYER_CASES["sigmoid"], seed=1)
    x, y = make_batch(net.spec, 7, seed=2)
    monkeypatch.setattr(Sigmoid, "backward", lambda self, g, s: (g * s, {}))
    result = compare(net.trace(x, y), numeric_trace(net, x, y), oracle="numeric")
    assert not result.passed
    assert result.first_divergence.name == "sigmoid_1.grad_in"


def test_a_kink_is_detected():
    """A ReLU input at exactly 0 is a kink: kink_distance sees it."""
    net = Network(LAYER_CASES["relu"], seed=1)
    x, y = make_batch(net.spec, 4, seed=2)
    net.params["dense_1.b"][0] -= (x @ net.params["dense_1.W"] + net.params["dense_1.b"])[0, 0]
    assert kink_distance(net, x, y) < 1e-12


# float32: against the float64 reference on the same rounded weights ----------------------------

F32_PARAMS = [
    *(
        pytest.param(LAYER_CASES[c], b, id=f"{c}-batch{b}")
        for c, s in LAYER_CASES.items()
        for b in batch_sizes_for(s, (1, 7))
    ),
    *(pytest.param(LOSS_CASES[c], 7, id=f"{c}-batch7") for c in LOSS_CASES),
    *(pytest.param(preset(n), 7, id=f"{n}-batch7") for n in sorted(PRESETS)),
]


@pytest.mark.parametrize(("spec", "batch"), F32_PARAMS)
def test_float32_matches_float64_on_the_same_weights(spec, batch):
    net32 = Network(spec.replace(dtype="float32"), seed=1)
    x, y = make_batch(net32.spec, batch, seed=2)
    masks = draw_masks(net32, x)
    net64 = as_float64(net32)
    y64 = y if net32.loss.classification else y.astype(np.float64)
    exact = net64.trace(x.astype(np.float64), y64, masks={k: m.astype(np.float64) for k, m in masks.items()})
    result = compare(net32.trace(x, y, masks=masks), exact, oracle="twin", dtype="float32", check_dtype=False)
    result.assert_ok()
