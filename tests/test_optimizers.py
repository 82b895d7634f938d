"""Optimisers against closed forms and invariants.

`scalar_rule` below re-implements every rule on Python floats, one parameter element at a time,
straight from the frameworks' documented definitions (torch.optim.SGD/RMSprop/Adam/AdamW,
keras.optimizers.SGD/RMSprop/Adam); every OPTIMIZER_CASE is checked against it over several steps.
Adam's three bias-corrected steps are also written out in closed form, with no recursion at all.
Invariants: lr 0 changes nothing, momentum 0 is SGD, torch's and keras' momentum and Nesterov agree
for a constant lr, coupled and decoupled decay coincide for SGD and differ for Adam as they should,
decay_biases=False leaves biases alone, step() never writes into the gradients, float32 stays float32.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from cases import LAYER_CASES, OPTIMIZER_CASES, make_batch
from helpers import assert_close

from oracles.compare import compare_params
from reference.network import Network
from reference.optimizers import make_optimizer
from reference.spec import OptimizerSpec
from reference.train import train_step


def assert_params_close(mine: dict, theirs: dict, dtype: str = "float64", title: str = "") -> None:
    result = compare_params(mine, theirs, oracle="twin", dtype=dtype, names=("optimizer", "closed form"), title=title)
    result.assert_ok()


def scalar_rule(spec: OptimizerSpec, name: str, p: float, grads: list[float]) -> list[float]:
    """The parameter after each step, on Python floats, from the frameworks' definitions."""
    torch = spec.convention == "torch"
    lr, mu, wd = spec.lr, spec.momentum, spec.weight_decay
    eps = spec.eps if spec.eps is not None else (1e-8 if torch else 1e-7)
    rho = spec.rho if spec.rho is not None else (0.99 if torch else 0.9)
    decays = wd != 0 and (spec.decay_biases or name.endswith(".W"))
    buf = s = m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        if decays and spec.decay_mode == "coupled":
            g = g + wd * p
        if decays and spec.decay_mode == "decoupled":
            p = p * (1 - lr * wd)
        if spec.name == "sgd":
            p = p - lr * g
        elif spec.name in ("momentum", "nesterov") and torch:
            buf = g if t == 1 else mu * buf + g  # torch: the first buffer is g itself (dampening 0)
            p = p - lr * (g + mu * buf if spec.name == "nesterov" else buf)
        elif spec.name in ("momentum", "nesterov"):
            buf = mu * buf - lr * g  # keras: m <- mu m - lr g
            p = p + (mu * buf - lr * g if spec.name == "nesterov" else buf)
        elif spec.name == "rmsprop":
            s = rho * s + (1 - rho) * g * g
            p = p - lr * g / (math.sqrt(s) + eps if torch else math.sqrt(s + eps))
        else:  # adam
            b1, b2 = spec.beta1, spec.beta2
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            if torch:
                p = p - lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
            else:
                p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(v) + eps)
        out.append(p)
    return out


def run(spec: OptimizerSpec, p0: dict[str, np.ndarray], grads: list[dict[str, np.ndarray]]) -> list[dict]:
    """The reference optimiser from p0 over the gradient sequence: params after each step."""
    opt = make_optimizer(spec)
    params = {k: v.copy() for k, v in p0.items()}
    history = []
    for g in grads:
        opt.step(params, g)
        history.append({k: v.copy() for k, v in params.items()})
    return history


def problem(steps: int = 5, seed: int = 0):
    """A 2x3 weight and a bias of 3, with a gradient sequence of varying sign and scale."""
    rng = np.random.default_rng(seed)
    p0 = {"dense_1.W": rng.normal(size=(2, 3)), "dense_1.b": rng.normal(size=3)}
    grads = [{k: rng.normal(0, 10.0 ** rng.integers(-2, 2), v.shape) for k, v in p0.items()} for _ in range(steps)]
    return p0, grads


EXTRA_CASES = {
    "momentum-torch-mu0.5-no-bias-decay": OptimizerSpec(
        "momentum", lr=0.05, momentum=0.5, weight_decay=0.1, decay_biases=False
    ),
    "nesterov-keras-decoupled-no-bias-decay": OptimizerSpec(
        "nesterov",
        lr=0.05,
        momentum=0.8,
        weight_decay=0.1,
        decay_mode="decoupled",
        decay_biases=False,
        convention="keras",
    ),
    "rmsprop-torch-rho0.5-eps1e-3": OptimizerSpec("rmsprop", lr=0.01, rho=0.5, eps=1e-3),
    "rmsprop-keras-rho0.5-eps1e-3": OptimizerSpec("rmsprop", lr=0.01, rho=0.5, eps=1e-3, convention="keras"),
    "adam-keras-betas-eps1e-3": OptimizerSpec("adam", lr=0.01, beta1=0.5, beta2=0.75, eps=1e-3, convention="keras"),
}


@pytest.mark.parametrize("case", [*OPTIMIZER_CASES, *EXTRA_CASES])
def test_rule_against_its_scalar_definition(case):
    spec = OPTIMIZER_CASES.get(case) or EXTRA_CASES[case]
    p0, grads = problem(steps=6)
    history = run(spec, p0, grads)
    for k, p in p0.items():
        expected = [np.empty_like(p) for _ in grads]
        for i in np.ndindex(p.shape):
            for step, value in enumerate(scalar_rule(spec, k, float(p[i]), [float(g[k][i]) for g in grads])):
                expected[step][i] = value
        for step, e in enumerate(expected):
            assert_close(
                f"{k} after step {step + 1}",
                history[step][k],
                e,
                "float64",
                "parameters",
                names=("optimizer", "scalar rule"),
            )


# Adam by hand ----------------------------------------------------------------------------------

G = (0.5, -1.0, 2.0)  # three gradients of a scalar parameter starting at 1.0, lr 0.01


def test_adam_torch_three_steps_in_closed_form():
    """m_t = 0.1 sum 0.9^(t-s) g_s, v_t = 0.001 sum 0.999^(t-s) g_s^2; step lr m_t/(1-0.9^t) / (sqrt(v_t/(1-0.999^t)) + 1e-8)."""
    g1, g2, g3 = G
    m = [0.1 * g1, 0.09 * g1 + 0.1 * g2, 0.081 * g1 + 0.09 * g2 + 0.1 * g3]
    v = [0.001 * g1**2, 0.000999 * g1**2 + 0.001 * g2**2, 0.000998001 * g1**2 + 0.000999 * g2**2 + 0.001 * g3**2]
    c1, c2 = [0.1, 0.19, 0.271], [0.001, 0.001999, 0.002997001]  # 1 - 0.9^t, 1 - 0.999^t
    p, expected = 1.0, []
    for t in range(3):
        p -= 0.01 * (m[t] / c1[t]) / (math.sqrt(v[t] / c2[t]) + 1e-8)
        expected.append(p)
    # the first step of Adam moves by lr * g / (|g| + eps): almost exactly lr, against the gradient
    # (its own bar: the closed form's only error is rounding 1 - p near 1, one ulp = 1.1e-16)
    assert abs((1.0 - expected[0]) - 0.01 * 0.5 / (0.5 + 1e-8)) < 1e-15
    history = run(OptimizerSpec("adam", lr=0.01), {"w.W": np.array([1.0])}, [{"w.W": np.array([g])} for g in G])
    assert_params_close(
        {f"step {t}": h["w.W"] for t, h in enumerate(history)},
        {f"step {t}": np.array([e]) for t, e in enumerate(expected)},
    )


def test_adam_keras_three_steps_in_closed_form():
    """keras: alpha_t = lr sqrt(1 - 0.999^t) / (1 - 0.9^t); step alpha_t m_t / (sqrt(v_t) + 1e-7)."""
    g1, g2, g3 = G
    m = [0.1 * g1, 0.09 * g1 + 0.1 * g2, 0.081 * g1 + 0.09 * g2 + 0.1 * g3]
    v = [0.001 * g1**2, 0.000999 * g1**2 + 0.001 * g2**2, 0.000998001 * g1**2 + 0.000999 * g2**2 + 0.001 * g3**2]
    c1, c2 = [0.1, 0.19, 0.271], [0.001, 0.001999, 0.002997001]
    p, expected = 1.0, []
    for t in range(3):
        p -= 0.01 * math.sqrt(c2[t]) / c1[t] * m[t] / (math.sqrt(v[t]) + 1e-7)
        expected.append(p)
    spec = OptimizerSpec("adam", lr=0.01, convention="keras")
    history = run(spec, {"w.W": np.array([1.0])}, [{"w.W": np.array([g])} for g in G])
    assert_params_close(
        {f"step {t}": h["w.W"] for t, h in enumerate(history)},
        {f"step {t}": np.array([e]) for t, e in enumerate(expected)},
    )
    # where eps sits matters: torch's definition with keras' eps is a different number at step 1
    torch_like = 1.0 - 0.01 * g1 / (abs(g1) + 1e-7)
    assert abs(history[0]["w.W"][0] - torch_like) > 1e-9


def test_adam_step_count_is_per_step_not_per_parameter():
    """Two parameters in one step: both see t = 1 (bias correction), so both move by ~lr."""
    opt = make_optimizer(OptimizerSpec("adam", lr=0.01))
    params = {"a.W": np.array([0.0]), "b.W": np.array([0.0])}
    opt.step(params, {"a.W": np.array([3.0]), "b.W": np.array([-0.2])})
    assert opt.t == 1
    assert_params_close(
        params, {"a.W": np.array([-0.01 * 3 / (3 + 1e-8)]), "b.W": np.array([0.01 * 0.2 / (0.2 + 1e-8)])}
    )


# Invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_lr_zero_changes_nothing(case):
    p0, grads = problem()
    spec = dataclasses.replace(OPTIMIZER_CASES[case], lr=0.0)
    for params in run(spec, p0, grads):
        for k in p0:
            np.testing.assert_array_equal(params[k], p0[k], err_msg=f"{case}: {k} moved with lr 0")


@pytest.mark.parametrize("rule", ["momentum", "nesterov"])
@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_momentum_zero_is_sgd(rule, convention):
    p0, grads = problem()
    a = run(OptimizerSpec(rule, lr=0.05, momentum=0.0, convention=convention), p0, grads)
    b = run(OptimizerSpec("sgd", lr=0.05), p0, grads)
    for step, (pa, pb) in enumerate(zip(a, b)):
        assert_params_close(pa, pb, title=f"{rule}-{convention} with momentum 0 vs sgd, step {step + 1}")


@pytest.mark.parametrize("rule", ["momentum", "nesterov"])
def test_torch_and_keras_momentum_agree_for_a_constant_lr(rule):
    """keras' velocity is -lr times torch's buffer: the same parameters, to rounding, over 20 steps."""
    p0, grads = problem(steps=20)
    a = run(OptimizerSpec(rule, lr=0.05, momentum=0.9), p0, grads)
    b = run(OptimizerSpec(rule, lr=0.05, momentum=0.9, convention="keras"), p0, grads)
    for step, (pa, pb) in enumerate(zip(a, b)):
        assert_params_close(pa, pb, title=f"{rule} torch vs keras, step {step + 1}")


def test_coupled_and_decoupled_decay_coincide_for_sgd():
    """p - lr (g + wd p) = (1 - lr wd) p - lr g."""
    p0, grads = problem()
    a = run(OptimizerSpec("sgd", lr=0.1, weight_decay=0.01), p0, grads)
    b = run(OptimizerSpec("sgd", lr=0.1, weight_decay=0.01, decay_mode="decoupled"), p0, grads)
    for pa, pb in zip(a, b):
        assert_params_close(pa, pb)


@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_decoupled_adam_shrinks_and_coupled_adam_normalises(convention):
    """With g = 0: decoupled (AdamW) gives p (1 - lr wd)^t exactly; coupled feeds wd p to Adam, which moves ~lr."""
    p0 = {"w.W": np.array([2.0, -3.0])}
    zeros = [{"w.W": np.zeros(2)} for _ in range(3)]
    lr, wd = 0.01, 0.1
    decoupled = run(
        OptimizerSpec("adam", lr=lr, weight_decay=wd, decay_mode="decoupled", convention=convention), p0, zeros
    )
    for t, params in enumerate(decoupled, start=1):
        assert_params_close(params, {"w.W": p0["w.W"] * (1 - lr * wd) ** t})
    coupled = run(OptimizerSpec("adam", lr=lr, weight_decay=wd, convention=convention), p0, zeros)
    step1 = p0["w.W"] - coupled[0]["w.W"]  # Adam's first step is ~lr * sign(wd p)
    # Its own bar: lr |g| / (|g| + eps) is lr to 5e-8 relative (g = wd p = 0.2, 0.3); 1e-4 says "about lr",
    # the exact steps are test_adam_torch_three_steps_in_closed_form's.
    assert np.all(np.abs(np.abs(step1) - lr) < 1e-4 * lr) and np.all(np.sign(step1) == np.sign(p0["w.W"]))


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_decay_biases_false_leaves_biases_undecayed(mode):
    p0 = {"dense_1.W": np.array([[1.0, -2.0]]), "dense_1.b": np.array([3.0, -4.0])}
    zeros = [{k: np.zeros_like(v) for k, v in p0.items()} for _ in range(4)]
    spec = OptimizerSpec("sgd", lr=0.1, weight_decay=0.5, decay_mode=mode, decay_biases=False)
    for t, params in enumerate(run(spec, p0, zeros), start=1):
        np.testing.assert_array_equal(params["dense_1.b"], p0["dense_1.b"])
        assert_params_close({"W": params["dense_1.W"]}, {"W": p0["dense_1.W"] * 0.95**t})
    with_biases = run(dataclasses.replace(spec, decay_biases=True), p0, zeros)
    assert_params_close({"b": with_biases[-1]["dense_1.b"]}, {"b": p0["dense_1.b"] * 0.95**4})


@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_step_never_writes_into_the_gradients(case):
    p0, grads = problem(steps=3)
    saved = [{k: v.copy() for k, v in g.items()} for g in grads]
    run(OPTIMIZER_CASES[case], p0, grads)
    for g, s in zip(grads, saved):
        for k in g:
            np.testing.assert_array_equal(g[k], s[k], err_msg=f"{case} changed the gradient {k}")


# float32 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_float32_parameters_and_state_stay_float32(case):
    spec = LAYER_CASES["batchnorm_torch"].replace(dtype="float32")
    net = Network(spec, seed=0)
    opt = make_optimizer(OPTIMIZER_CASES[case])
    x, y = make_batch(spec, 8, seed=1)
    for _ in range(3):
        loss = train_step(net, opt, x, y)
    assert np.asarray(loss).dtype == np.float32
    wrong = {k: v.dtype for k, v in net.params.items() if v.dtype != np.float32}
    wrong |= {
        f"state {k}.{s}": a.dtype for k, slots in opt.state.items() for s, a in slots.items() if a.dtype != np.float32
    }
    assert not wrong, f"{case}: upcast from float32: {wrong}"
