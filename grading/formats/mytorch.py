"""CMU 11-785's MyTorch (HW1P1), built-in assignment `mytorch-mlp`: classes with forward and backward.

What a student writes (the public handout's API):

    Linear(in_features, out_features)   W (out, in), b (out, 1); forward(A) with A (N, in) -> Z (N, out);
                                        backward(dLdZ) -> dLdA, setting self.dLdW (out, in) and
                                        self.dLdb (out, 1), SUMMED over the batch (the handout's
                                        autograder expects dLdW = dLdZ^T A, dLdb = dLdZ^T 1)
    Identity, Sigmoid, Tanh, ReLU       forward(Z) -> A; backward(dLdA) -> dLdZ from the state forward stored
    MSELoss                             forward(A, Y) -> L = sum (A - Y)^2 / (N C); backward() -> 2 (A - Y) / (N C)
    CrossEntropyLoss                    forward(A, Y) with Y one-hot -> L = sum -Y log softmax(A) / N;
                                        backward() -> (softmax(A) - Y) / N
    BatchNorm1d(num_features, alpha)    BW, Bb (1, C); forward(Z, eval=False): training normalises with
                                        the batch mean and the biased variance, eps 1e-8, and updates
                                        running_M, running_V (1, C) as alpha * running + (1 - alpha) * batch
                                        (from zeros and ones); eval normalises with them; backward(dLdBZ)
                                        -> dLdZ, setting dLdBW and dLdBb (1, C)
    SGD(model, lr, momentum)            step() over model.layers: v = momentum v + dLdW, W -= lr v
                                        (torch's form; momentum 0: W -= lr dLdW), b the same
    MLP0, MLP1, MLP4                    fixed architectures [2, 3], [2, 3, 2], [2, 4, 8, 8, 4, 2], ReLU
                                        after every Linear; `layers` lists them in order; forward(A0);
                                        backward(dLdA) -> dLdA0

The layout, mapped here once (`to_mytorch`): the reference's canonical W is (in, out) and b (out,),
MyTorch's W is W_ref^T and b is b_ref as a column; the reference's Dense gradients dL/dW = x^T g and
dL/db = sum g are sums over the batch, as MyTorch's are. Every expected value is the reference's
(reference/layers.py Dense, ReLU, Sigmoid, Tanh, BatchNorm; reference/losses.py MSE and
SoftmaxCrossEntropy; reference/optimizers.py Momentum and SGD), computed in the grader on inputs
drawn for each method alone, and mapped to MyTorch's layout; none of it is sent. The student's
initialisation is not compared: the driver sets W, b (BW, Bb) into the student's objects.

Cases: small (Linear 3 -> 4, batch 4; float64 and float32), batch1 (4 -> 3, one row; BatchNorm's
eval mode on one row after training on two), square (5 -> 5, batch 3), distinct (6 -> 2, batch 5),
width1 (1 -> 6, batch 2), and stability (CrossEntropyLoss with logits reaching +-1e3, labels on the
smallest). Each case runs SGD three ways: momentum 0, momentum > 0 at a constant rate, and momentum
> 0 with the rate changed between steps (as a scheduler sets optimizer.lr): three steps each, with
new gradients before every step. The MLPs keep their fixed widths and take each case's batch.

Diagnoses (Expected.alternatives, each computed here with the reference and shown only when the
submission's tensor matches it): averaged instead of summed dLdW / dLdb, dLdW in the canonical
(in, out) layout (the W transpose), dLdb summed over the wrong axis or kept per sample, the sign, an
activation's derivative left out or taken at its output, MSE without its factor 2 or with another
mean, cross-entropy without its mean, BatchNorm with the unbiased variance, alpha on the wrong side
of the running statistics, eval mode with the batch's statistics, backward without the mean and
variance terms, SGD momentum in the classical lr-inside form (v = momentum v - lr dLdW, W += v: the
same numbers at a constant rate, different once the rate changes), momentum ignored, the rate set
between steps not used, a parameter never updated, ReLU's derivative missing inside an MLP, and an
MLP's backward returning dLdZ0 instead of dLdA0; plus the generic ones
(grading.diagnose.generic_alternatives) where they make sense.

Submission shapes: one .py file or notebook (the generic extraction), or the handout's package
layout (`assemble`): a folder holding mytorch/ or Autolab's handin .tar / .tgz of it, combined into
one module in dependency order with the package's own imports dropped.
"""

from __future__ import annotations

import ast
import itertools
import os
import stat
import tarfile
from pathlib import Path

import numpy as np

from grading.adapters import Expected, Key, Problem
from grading.adapters import observe as observe_records
from grading.assignment import AssignmentError
from grading.diagnose import generic_alternatives
from grading.formats import FormatCase
from grading.notebook import MAX_BYTES, Extracted, SubmissionError, write_module
from grading.pyast import parse
from reference.layers import BatchNorm, Dense, ReLU, Sigmoid, Softmax, Tanh
from reference.losses import MSE, SoftmaxCrossEntropy
from reference.optimizers import SGD, Momentum
from reference.spec import OptimizerSpec

NAME = "mytorch"
TITLE = "CMU 11-785 MyTorch (HW1P1): Linear, activations, losses, BatchNorm1d, SGD and MLP0/1/4 classes"
CHECKS = (
    "linear_forward",
    "linear_backward",
    "weight_gradients",
    "bias_gradients",
    "activations",
    "loss",
    "loss_gradient",
    "batchnorm_forward",
    "batchnorm_running_stats",
    "batchnorm_backward",
    "sgd",
    "mlp_forward",
    "mlp_backward",
    "stability",
)
NAMES = {
    "linear": "Linear",
    "identity": "Identity",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "relu": "ReLU",
    "softmax": "Softmax",
    "mse": "MSELoss",
    "ce": "CrossEntropyLoss",
    "batchnorm": "BatchNorm1d",
    "sgd": "SGD",
    "mlp0": "MLP0",
    "mlp1": "MLP1",
    "mlp4": "MLP4",
    # attributes the driver sets and reads
    "W": "W",
    "b": "b",
    "dLdW": "dLdW",
    "dLdb": "dLdb",
    "BW": "BW",
    "Bb": "Bb",
    "dLdBW": "dLdBW",
    "dLdBb": "dLdBb",
    "running_M": "running_M",
    "running_V": "running_V",
    "lr": "lr",
    "layers": "layers",
}
DRIVER = Path(__file__).with_name("mytorch_driver.py")

OPTIONS = {  # field: (default, check, what is expected)
    "learning_rate": (0.1, lambda v: v > 0, "a number > 0"),
    "momentum": (0.9, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "alpha": (0.9, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "eps": (1e-8, lambda v: v > 0, "a number > 0"),
}
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu")  # the default `activations` of a part
OPTIONAL_ACTIVATIONS = ("softmax",)  # S24's Softmax activation, on request (its GELU has no reference)
MLPS = {"mlp0": (2, 3), "mlp1": (2, 3, 2), "mlp4": (2, 4, 8, 8, 4, 2)}
# (label, Linear (in, out), batch): the shapes each case probes with
SWEEP = (
    ("small", (3, 4), 4),
    ("batch1", (4, 3), 1),
    ("square", (5, 5), 3),
    ("distinct", (6, 2), 5),
    ("width1", (1, 6), 2),
)
STEPS = 3  # SGD steps per setting
STABILITY_LOGIT = 1e3


def parse_options(raw: dict, where: str, source: str) -> dict:
    unknown = sorted(set(raw) - set(OPTIONS) - {"activations"})
    if unknown:
        raise AssignmentError(
            f"{source}: {where}: unknown field(s) {unknown} for the mytorch format; "
            f"known: {sorted([*OPTIONS, 'activations'])}"
        )
    out = {}
    for name, (default, ok, what) in OPTIONS.items():
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise AssignmentError(f"{source}: {where}.{name}: expected {what}, got {value!r}")
        out[name] = float(value)
    acts = raw.get("activations", list(ACTIVATIONS))
    known = ACTIVATIONS + OPTIONAL_ACTIVATIONS
    if not isinstance(acts, list) or not acts or any(a not in known for a in acts) or len(set(acts)) != len(acts):
        raise AssignmentError(f"{source}: {where}.activations: expected a list of distinct {known}, got {acts!r}")
    out["activations"] = tuple(acts)
    return out


def _checks(part) -> set[str]:
    return set(part.check_names)


def needed_names(part) -> tuple[str, ...]:
    n, checks = part.names, _checks(part)
    keys = []
    if checks & {"linear_forward", "linear_backward", "weight_gradients", "bias_gradients", "sgd"}:
        keys.append("linear")
    if "activations" in checks:
        keys += part.options["activations"]
    if checks & {"loss", "loss_gradient", "stability"}:
        keys += ["mse", "ce"]
    if checks & {"batchnorm_forward", "batchnorm_running_stats", "batchnorm_backward"}:
        keys.append("batchnorm")
    if "sgd" in checks:
        keys.append("sgd")
    if checks & {"mlp_forward", "mlp_backward"}:
        keys += ["linear", "relu", *MLPS]
    return tuple(dict.fromkeys(n[k] for k in keys))


# The layout, mapped once ------------------------------------------------------------------------


def to_mytorch(p: str, value: np.ndarray) -> np.ndarray:
    """A canonical tensor in MyTorch's layout: W / dW (in, out) -> (out, in); b / db (out,) -> (out, 1);
    BatchNorm's per-feature vectors (C,) -> (1, C)."""
    if p == "W":
        return np.ascontiguousarray(value.T)
    if p == "b":
        return value.reshape(-1, 1)
    if p == "row":
        return value.reshape(1, -1)
    raise ValueError(f"to_mytorch: unknown kind {p!r}")


def to_canonical(p: str, value: np.ndarray) -> np.ndarray:
    """The inverse of to_mytorch for W (out, in) -> (in, out) and b (out, 1) -> (out,)."""
    if p == "W":
        return np.ascontiguousarray(value.T)
    if p == "b":
        return value.reshape(-1)
    raise ValueError(f"to_canonical: unknown kind {p!r}")


# Building cases ---------------------------------------------------------------------------------


class _Plan:
    """One case being planned: its probes, expected values and where each answer will be read."""

    def __init__(self, part, case: FormatCase) -> None:
        self.part, self.case, self.checks = part, case, _checks(part)
        case.notes["where"] = {}

    def probe(self, label: str, driver: str, common: dict, item: dict) -> int:
        entry = self.case.probes.setdefault(label, (driver, common, []))
        entry[2].append(item)
        return len(entry[2]) - 1

    def expect(self, key: Key, value, quantity: str, index: int, out: str, alternatives=()) -> None:
        counted = "stability" if self.case.kind == "stability" else key.check  # as grading.checks counts it
        if counted not in self.checks:
            return
        value = np.asarray(value)
        alts = tuple((bug, text, np.asarray(h)) for bug, text, h in alternatives)
        self.case.expected.append(Expected(key, value, None, quantity, alternatives=alts))
        self.case.notes["where"][key] = (index, out)

    def wants(self, *checks: str) -> bool:
        return bool(set(checks) & _checks(self.part))


def _weights(rng, n_in: int, n_out: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """MyTorch-layout W (out, in) with O(1) outputs for O(1) inputs, b (out, 1) in U(-0.5, 0.5)."""
    W = rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_out, n_in))
    b = rng.uniform(-0.5, 0.5, (n_out, 1))
    return W.astype(dtype), b.astype(dtype)


def _away_from_zero(rng, shape, dtype, scale: float = 1.0) -> np.ndarray:
    """O(1) values kept 0.1 away from 0 (ReLU's kink)."""
    v = rng.normal(0.0, scale, shape)
    return (np.sign(v) * np.maximum(np.abs(v), 0.1)).astype(dtype)


def build_cases(part, seed: int) -> list[FormatCase]:
    plan = [(label, sizes, batch, "float64") for label, sizes, batch in SWEEP]
    plan[1:1] = [("small", SWEEP[0][1], SWEEP[0][2], d) for d in part.dtypes if d != "float64"]
    if "float64" not in part.dtypes:
        plan = [p for p in plan if p[0] != "small" or p[3] != "float64"]
    cases = []
    for k, (label, sizes, batch, dtype) in enumerate(plan):
        case = FormatCase(f"{label}-{dtype}", label, dtype)
        rng = np.random.default_rng([seed, 1211, k])
        p = _Plan(part, case)
        _plan_linear(p, rng, sizes, batch)
        _plan_activations(p, rng, (batch, sizes[1]))
        _plan_losses(p, rng, (batch, sizes[1]))
        _plan_batchnorm(p, rng, sizes[1], batch)
        _plan_sgd(p, rng, sizes)
        _plan_mlps(p, rng, batch)
        cases.append(case)
    if "stability" in _checks(part):
        case = FormatCase("stability-float64", "stability", "float64")
        _plan_losses(_Plan(part, case), np.random.default_rng([seed, 1211, len(plan)]), (4, 4), stable=True)
        cases.append(case)
    return cases


def _dense(W: np.ndarray, b: np.ndarray) -> Dense:
    """The reference's Dense on MyTorch-layout parameters."""
    return Dense("linear", to_canonical("W", W), to_canonical("b", b))


def _linear_grad_alternatives(g: np.ndarray, dW: np.ndarray, db: np.ndarray, n: int) -> tuple:
    """Hypotheses for dLdW (out, in) and dLdb (out, 1) from one Linear's backward."""
    w_alts = [
        (
            "transpose",
            "dLdW in the canonical (in, out) layout, A^T dLdZ: MyTorch stores W as (out, in), so its "
            "dLdW = dLdZ^T A is the transpose",
            dW.T,
        ),
        ("sign", "the sign is flipped", -dW),
    ]
    b_alts = [
        ("not_summed", "dLdb not summed over the batch: dLdZ^T kept per sample", g.T),
        (
            "wrong_axis",
            "dLdb summed over the wrong axis (over the outputs, axis 1, instead of the batch, axis 0)",
            g.sum(axis=1, keepdims=True),
        ),
        ("sign", "the sign is flipped", -db),
    ]
    if n > 1:
        text = (
            f"averaged over the batch (the reference / N = {n}); MyTorch's Linear sums its gradients over "
            "the batch, as the handout's autograder expects (the loss's backward already divides by N)"
        )
        w_alts.append(("batch_size", text, dW / n))
        b_alts.append(("batch_size", text, db / n))
    return tuple(w_alts), tuple(b_alts)


def _plan_linear(p: _Plan, rng, sizes, batch: int) -> None:
    if not p.wants("linear_forward", "linear_backward", "weight_gradients", "bias_gradients"):
        return
    n, dt = p.part.names, p.case.dtype
    n_in, n_out = sizes
    cls = n["linear"]
    common = {"names": dict(n)}
    W, b = _weights(rng, n_in, n_out, dt)
    A = rng.normal(0.0, 1.0, (batch, n_in)).astype(dt)
    ref = _dense(W, b)
    Z, _ = ref.forward(A)
    i = p.probe(f"{cls}.forward", "linear_forward", common, {"n_in": n_in, "n_out": n_out, "W": W, "b": b, "A": A})
    z_alts = [("missing_bias", "the bias b left out of Z = A W^T + b", A @ W.T)]
    if n_in == n_out:
        z_alts.append(("transpose", "W used where W^T belongs (Z = A W + b)", A @ W + b.T))
    p.expect(Key("linear_forward", f"{cls}.forward", f"{cls}: Z", None, "Z"), Z, "forward", i, "Z", z_alts)
    # backward: inputs of its own
    W, b = _weights(rng, n_in, n_out, dt)
    A = rng.normal(0.0, 1.0, (batch, n_in)).astype(dt)
    g = (rng.normal(0.0, 1.0, (batch, n_out)) / batch).astype(dt)
    ref = _dense(W, b)
    dA, grads = ref.backward(g, A)
    dW, db = to_mytorch("W", grads["W"]), to_mytorch("b", grads["b"])
    item = {"n_in": n_in, "n_out": n_out, "W": W, "b": b, "A": A, "dLdZ": g}
    i = p.probe(f"{cls}.backward", "linear_backward", common, item)
    w_alts, b_alts = _linear_grad_alternatives(g, dW, db, batch)
    fn = f"{cls}.backward"
    p.expect(Key("weight_gradients", fn, f"{cls}: dLdW", None, "dLdW"), dW, "gradient", i, "dLdW", w_alts)
    p.expect(Key("bias_gradients", fn, f"{cls}: dLdb", None, "dLdb"), db, "gradient", i, "dLdb", b_alts)
    a_alts = [("sign", "the sign is flipped", -dA)]
    if n_in == n_out:
        a_alts.append(("transpose", "W^T used where W belongs (dLdA = dLdZ W^T)", g @ W.T))
    p.expect(Key("linear_backward", fn, f"{cls}: dLdA", None, "dLdA"), dA, "gradient", i, "dLdA", a_alts)


def _reference_activation(kind: str):
    layers = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "softmax": Softmax}
    return layers[kind](kind) if kind in layers else None


def _plan_activations(p: _Plan, rng, shape) -> None:
    if not p.wants("activations"):
        return
    n, dt = p.part.names, p.case.dtype
    for kind in p.part.options["activations"]:
        cls = n[kind]
        common = {"names": dict(n), "cls": cls}
        ref = _reference_activation(kind)
        Z = _away_from_zero(rng, shape, dt, 1.5)
        A = Z if ref is None else ref.forward(Z)[0]
        i = p.probe(f"{cls}.forward", "activation", {**common, "call": "forward"}, {"Z": Z})
        p.expect(Key("activations", f"{cls}.forward", f"{cls}: A", None, "A"), A, "forward", i, "A")
        Z = _away_from_zero(rng, shape, dt, 1.5)
        dLdA = rng.normal(0.0, 1.0, shape).astype(dt)
        if ref is None:
            dLdZ = dLdA
            alts = [("sign", "the sign is flipped", -dLdA)]
        else:
            out, cache = ref.forward(Z)
            dLdZ, _ = ref.backward(dLdA, cache)
            alts = [
                ("missing_derivative", f"{cls}'s derivative left out of the chain rule (dLdZ = dLdA)", dLdA),
                ("sign", "the sign is flipped", -dLdZ),
            ]
            if kind == "softmax":  # the Jacobian's diagonal alone: dLdZ = dLdA * A (1 - A)
                alts.append(
                    (
                        "diagonal_only",
                        "only the Jacobian's diagonal A (1 - A): softmax's off-diagonal terms -A_i A_j left out",
                        dLdA * out * (1 - out),
                    )
                )
            if kind in ("sigmoid", "tanh"):  # the derivative taken at the output A, or written in Z for A
                at_a, _ = ref.backward(dLdA, ref.forward(out)[1])
                alts.append(("at_activation", f"the derivative evaluated at the output A = {kind}(Z), not at Z", at_a))
                from_z = dLdA * (Z * (1 - Z) if kind == "sigmoid" else 1 - Z * Z)
                formula = "A (1 - A)" if kind == "sigmoid" else "1 - A^2"
                alts.append(("at_activation", f"the derivative {formula} computed with Z in place of A", from_z))
        i = p.probe(f"{cls}.backward", "activation", {**common, "call": "backward"}, {"Z": Z, "dLdA": dLdA})
        p.expect(Key("activations", f"{cls}.backward", f"{cls}: dLdZ", None, "dLdZ"), dLdZ, "gradient", i, "dLdZ", alts)


def _plan_losses(p: _Plan, rng, shape, stable: bool = False) -> None:
    n, dt = p.part.names, p.case.dtype
    N, C = shape
    if not stable and p.wants("loss", "loss_gradient"):
        cls = n["mse"]
        common = {"names": dict(n), "cls": cls}
        for call in ("forward", "backward"):
            A = rng.normal(0.0, 1.0, shape).astype(dt)
            Y = rng.normal(0.0, 1.0, shape).astype(dt)
            L, dLdA = MSE("mean").value_and_grad(A, Y)
            i = p.probe(f"{cls}.{call}", "loss", {**common, "call": call}, {"A": A, "Y": Y})
            if call == "forward":
                alts = [
                    ("loss_sum", "summed, not averaged over the N C entries", L * N * C),
                    ("batch_size", f"averaged over the batch only (divided by N = {N}, not N C = {N * C})", L * C),
                    ("halved", "divided by 2 N C (the 1/2 of the textbook's squared error)", L / 2),
                ]
                p.expect(Key("loss", f"{cls}.forward", f"{cls}: L", None, "L"), L, "loss", i, "L", alts)
            else:
                alts = [
                    ("missing_factor2", "without the factor 2 of d(A - Y)^2 / dA", dLdA / 2),
                    ("loss_sum", "not divided by N C (the gradient of the summed error)", dLdA * N * C),
                    ("batch_size", f"divided by N = {N} only, not N C", dLdA * C),
                    ("sign", "the sign is flipped (Y - A)", -dLdA),
                ]
                key = Key("loss_gradient", f"{cls}.backward", f"{cls}: dLdA", None, "dLdA")
                p.expect(key, dLdA, "gradient", i, "dLdA", alts)
    if not (stable or p.wants("loss", "loss_gradient")):
        return  # the stability case probes CrossEntropyLoss alone
    cls = n["ce"]
    common = {"names": dict(n), "cls": cls}
    for call in ("forward", "backward"):
        A = rng.normal(0.0, 2.0, shape)
        labels = rng.integers(0, C, N)
        if stable:  # the largest logit becomes +1e3 (exp overflows past ~709); labels on the smallest
            A = A * (STABILITY_LOGIT / A.flat[np.abs(A).argmax()])
            labels = np.argmin(A, axis=1)
        A = A.astype(dt)
        Y = np.eye(C, dtype=dt)[labels]
        L, dLdA = SoftmaxCrossEntropy("mean").value_and_grad(A, labels)
        i = p.probe(f"{cls}.{call}", "loss", {**common, "call": call}, {"A": A, "Y": Y})
        text = f"without the mean over the batch (summed over N = {N})"
        if call == "forward":
            alts = [("loss_sum", text, L * N), ("batch_size", f"averaged over N C = {N * C}, not N", L / C)]
            p.expect(Key("loss", f"{cls}.forward", f"{cls}: L", None, "L"), L, "loss", i, "L", alts)
        else:
            alts = [
                ("loss_sum", text, dLdA * N),
                ("batch_size", f"divided by N C = {N * C}, not N", dLdA / C),
                ("sign", "the sign is flipped (Y - softmax(A))", -dLdA),
            ]
            key = Key("loss_gradient", f"{cls}.backward", f"{cls}: dLdA", None, "dLdA")
            p.expect(key, dLdA, "gradient", i, "dLdA", alts)


# BatchNorm1d ------------------------------------------------------------------------------------


def _reference_bn(C: int, dtype, alpha: float, eps: float, BW, Bb) -> BatchNorm:
    """The reference's BatchNorm in MyTorch's convention: running = alpha running + (1 - alpha) batch,
    biased variance, running mean from zeros and running variance from ones: the reference's "mytorch"
    convention, with the assignment's alpha and eps (tests/test_format_mytorch.py pins it to the
    handout's own example)."""
    bn = BatchNorm("bn", C, dtype, convention="mytorch", momentum=alpha, eps=eps)
    bn.params["gamma"][...] = BW.reshape(-1)
    bn.params["beta"][...] = Bb.reshape(-1)
    return bn


def _bn_by_hand(Z, BW, Bb, mean, var, eps) -> np.ndarray:
    """BZ = BW (Z - mean) / sqrt(var + eps) + Bb, for a hypothesis's own statistics."""
    return BW * (Z - mean) / np.sqrt(var + eps) + Bb


def _plan_batchnorm(p: _Plan, rng, C: int, batch: int) -> None:
    if not p.wants("batchnorm_forward", "batchnorm_running_stats", "batchnorm_backward"):
        return
    n, dt = p.part.names, p.case.dtype
    alpha, eps = p.part.options["alpha"], p.part.options["eps"]
    cls = n["batchnorm"]
    common = {"names": dict(n)}
    n_train = max(batch, 2)  # training needs two rows; eval mode takes the case's batch (one row in batch1)
    BW = rng.uniform(0.5, 1.5, (1, C)).astype(dt)
    Bb = rng.uniform(-0.5, 0.5, (1, C)).astype(dt)
    train = [(rng.normal(0.0, 1.0, (n_train, C)) * rng.uniform(0.5, 2.0, C) + rng.normal(0, 1, C)).astype(dt)]
    train.append((rng.normal(0.0, 1.0, (n_train, C)) * 1.5 + 0.5).astype(dt))
    Z_eval = rng.normal(0.0, 1.0, (batch, C)).astype(dt)
    ref = _reference_bn(C, dt, alpha, eps, BW, Bb)
    item = {"C": C, "alpha": alpha, "BW": BW, "Bb": Bb, "train": train, "eval": Z_eval}
    i = p.probe(f"{cls}.forward", "batchnorm_forward", common, item)
    fn = f"{cls}.forward"
    # hypotheses' running statistics: alpha on the wrong side; torch's unbiased running variance
    wrong_M, wrong_V = np.zeros((1, C)), np.ones((1, C))
    unb_V = np.ones((1, C))
    for k, Z in enumerate(train, start=1):
        BZ, _ = ref.forward(Z, train=True)
        mu, var = Z.mean(axis=0, keepdims=True), Z.var(axis=0, keepdims=True)
        unbiased = Z.var(axis=0, ddof=1, keepdims=True)
        alts = [
            (
                "unbiased_variance",
                f"normalised with the unbiased variance (divided by N - 1 = {n_train - 1}); BatchNorm1d "
                "normalises with the biased batch variance (divided by N)",
                _bn_by_hand(Z, BW, Bb, mu, unbiased, eps),
            ),
            ("missing_affine", "BW and Bb left out (the normalised NZ returned)", (Z - mu) / np.sqrt(var + eps)),
        ]
        p.expect(
            Key("batchnorm_forward", fn, f"{cls}: BZ (training step {k})", None, "BZ"),
            BZ,
            "forward",
            i,
            f"BZ {k}",
            alts,
        )
        wrong_M = (1 - alpha) * wrong_M + alpha * mu
        wrong_V = (1 - alpha) * wrong_V + alpha * var
        unb_V = alpha * unb_V + (1 - alpha) * unbiased
        side = (
            f"alpha on the wrong side: running = (1 - alpha) running + alpha batch; BatchNorm1d keeps "
            f"alpha = {alpha} of the old running value"
        )
        running_M = to_mytorch("row", ref.state["running_mean"].copy())
        running_V = to_mytorch("row", ref.state["running_var"].copy())
        p.expect(
            Key("batchnorm_running_stats", fn, f"{cls}: running_M (after step {k})", None, "running_M"),
            running_M,
            "forward",
            i,
            f"running_M {k}",
            [("momentum_side", side, wrong_M), ("never_updated", "running_M never updated", np.zeros((1, C)))],
        )
        p.expect(
            Key("batchnorm_running_stats", fn, f"{cls}: running_V (after step {k})", None, "running_V"),
            running_V,
            "forward",
            i,
            f"running_V {k}",
            [
                ("momentum_side", side, wrong_V),
                ("unbiased_variance", "running_V updated with the unbiased batch variance (torch's convention)", unb_V),
                ("never_updated", "running_V never updated", np.ones((1, C))),
            ],
        )
    BZ, _ = ref.forward(Z_eval, train=False)
    alts = [
        (
            "momentum_side",
            "eval mode normalised with running statistics updated with alpha on the wrong side",
            _bn_by_hand(Z_eval, BW, Bb, wrong_M, wrong_V, eps),
        ),
        (
            "unbiased_variance",
            "eval mode normalised with a running_V of unbiased variances",
            _bn_by_hand(Z_eval, BW, Bb, to_mytorch("row", ref.state["running_mean"]), unb_V, eps),
        ),
    ]
    if batch > 1:
        alts.append(
            (
                "eval_batch_stats",
                "eval mode normalised with the batch's own mean and variance; forward(Z, eval=True) must use "
                "running_M and running_V",
                _bn_by_hand(Z_eval, BW, Bb, Z_eval.mean(axis=0), Z_eval.var(axis=0), eps),
            )
        )
    p.expect(Key("batchnorm_forward", fn, f"{cls}: BZ (eval)", None, "BZ"), BZ, "forward", i, "BZ eval", alts)
    # backward: a fresh layer, inputs of its own
    BW = rng.uniform(0.5, 1.5, (1, C)).astype(dt)
    Bb = rng.uniform(-0.5, 0.5, (1, C)).astype(dt)
    Z = (rng.normal(0.0, 1.0, (n_train, C)) * 1.3 + 0.2).astype(dt)
    g = (rng.normal(0.0, 1.0, (n_train, C)) / n_train).astype(dt)
    ref = _reference_bn(C, dt, alpha, eps, BW, Bb)
    _, cache = ref.forward(Z, train=True)
    dZ, grads = ref.backward(g, cache)
    var = Z.var(axis=0, keepdims=True)
    NZ = (Z - Z.mean(axis=0, keepdims=True)) / np.sqrt(var + eps)
    fn = f"{cls}.backward"
    i = p.probe(fn, "batchnorm_backward", common, {"C": C, "alpha": alpha, "BW": BW, "Bb": Bb, "Z": Z, "dLdBZ": g})
    z_alts = [
        (
            "no_mean_var_terms",
            "backward without the mean and variance terms (dLdZ = dLdBZ BW / sqrt(V + eps), as if the "
            "batch statistics were constants)",
            g * BW / np.sqrt(var + eps),
        ),
        ("sign", "the sign is flipped", -dZ),
    ]
    p.expect(Key("batchnorm_backward", fn, f"{cls}: dLdZ", None, "dLdZ"), dZ, "gradient", i, "dLdZ", z_alts)
    dBW, dBb = to_mytorch("row", grads["gamma"]), to_mytorch("row", grads["beta"])
    p.expect(
        Key("batchnorm_backward", fn, f"{cls}: dLdBW", None, "dLdBW"),
        dBW,
        "gradient",
        i,
        "dLdBW",
        [("not_summed", "dLdBW not summed over the batch (dLdBZ * NZ per sample)", g * NZ), *_generic(dBW, n_train)],
    )
    p.expect(
        Key("batchnorm_backward", fn, f"{cls}: dLdBb", None, "dLdBb"),
        dBb,
        "gradient",
        i,
        "dLdBb",
        [("not_summed", "dLdBb not summed over the batch", g), *_generic(dBb, n_train)],
    )


def _generic(expected: np.ndarray, batch: int) -> list:
    """generic_alternatives without "transpose" for a (1, C) row (the reshaped diagnosis covers it)."""
    return [a for a in generic_alternatives(expected, batch) if not (a[0] == "transpose" and 1 in expected.shape)]


# SGD --------------------------------------------------------------------------------------------


def _sgd_settings(part) -> list[tuple[str, float, tuple[float, ...]]]:
    """(label, momentum, the rate at each step)."""
    lr, mu = part.options["learning_rate"], part.options["momentum"]
    return [
        ("momentum 0", 0.0, (lr,) * STEPS),
        (f"momentum {mu:g}", mu, (lr,) * STEPS),
        (f"momentum {mu:g}, lr changed between steps", mu, tuple(lr * f for f in (1.0, 0.5, 0.2))[:STEPS]),
    ]


def _run_optimizer(rule: str, lr: float, mu: float, convention: str, start: dict, grads_per_step, rates) -> list:
    """The reference optimiser (torch's or keras' Momentum, or SGD) over the steps from `start`, its rate
    set before each step; the parameters after each."""
    spec = OptimizerSpec(name=rule, lr=lr, momentum=mu, convention=convention)
    opt = (Momentum if rule == "momentum" else SGD)(spec)
    params = {k: v.copy() for k, v in start.items()}
    out = []
    for grads, rate in zip(grads_per_step, rates):
        opt.lr = rate
        opt.step(params, grads)
        out.append({k: v.copy() for k, v in params.items()})
    return out


def _plan_sgd(p: _Plan, rng, sizes) -> None:
    if not p.wants("sgd"):
        return
    n, dt = p.part.names, p.case.dtype
    shapes = [tuple(sizes), (sizes[1], 2)]  # two Linear layers
    fn = f"{n['sgd']}.step"
    for label, mu, rates in _sgd_settings(p.part):
        layers = [dict(zip(("n_in", "n_out", "W", "b"), (a, b, *_weights(rng, a, b, dt)))) for a, b in shapes]
        grads = [
            [(rng.normal(0, 1, (b, a)).astype(dt), rng.normal(0, 1, (b, 1)).astype(dt)) for a, b in shapes]
            for _ in rates
        ]
        steps = [{"lr": r, "grads": g} for r, g in zip(rates, grads)]
        item = {"layers": layers, "lr": rates[0], "momentum": mu, "steps": steps}
        i = p.probe(fn, "sgd_step", {"names": dict(n)}, item)
        canon = {}
        for j, layer in enumerate(layers):
            canon[f"l{j}.W"], canon[f"l{j}.b"] = to_canonical("W", layer["W"]), to_canonical("b", layer["b"])
        g_canon = [
            {f"l{j}.{q}": to_canonical(q, v) for j, pair in enumerate(step) for q, v in zip("Wb", pair)}
            for step in grads
        ]

        expected, classical, plain = (
            _run_optimizer(rule, rates[0], mu, convention, canon, g_canon, rates)
            for rule, convention in (("momentum", "torch"), ("momentum", "keras"), ("sgd", "torch"))
        )
        constant = _run_optimizer("momentum", rates[0], mu, "torch", canon, g_canon, (rates[0],) * len(rates))
        for k in range(len(rates)):
            before = canon if k == 0 else expected[k - 1]
            for j in range(len(layers)):
                for q in "Wb":
                    name = f"l{j}.{q}"
                    alts = [
                        (
                            "classical_momentum",
                            "momentum in the classical form v = momentum v - lr dLdW, W += v (lr inside the "
                            "velocity): the same as torch's v = momentum v + dLdW, W -= lr v only while lr is "
                            "constant",
                            to_mytorch(q, classical[k][name]),
                        ),
                        (
                            "momentum_ignored",
                            "the momentum ignored (no velocity kept between steps)",
                            to_mytorch(q, plain[k][name]),
                        ),
                        ("never_updated", f"layers[{j}].{q} unchanged by step()", to_mytorch(q, before[name])),
                        (
                            "lr_ignored",
                            f"the rate set on the optimizer's {n['lr']!r} between steps not used: every step at "
                            f"lr = {rates[0]:g}",
                            to_mytorch(q, constant[k][name]),
                        ),
                    ]
                    tensor = f"{n['sgd']}: layers[{j}].{q} after step {k + 1} ({label})"
                    key = Key("sgd", fn, tensor, None, q)
                    p.expect(key, to_mytorch(q, expected[k][name]), "parameters", i, f"{q} {j} {k + 1}", alts)


# MLPs -------------------------------------------------------------------------------------------


def _chain_backward(layers: list, caches: list, dLdA, relu_derivative: bool = True) -> tuple:
    """Backpropagate dLdA through the reference layers: (dLdA0, [(dLdZ_j, {"W", "b"}) per Linear, in
    order]); relu_derivative=False: every ReLU passes its gradient through (the hypothesis)."""
    g, grads = dLdA, []
    for layer, cache in zip(reversed(layers), reversed(caches)):
        if isinstance(layer, ReLU) and not relu_derivative:
            continue
        g_in = g
        g, gr = layer.backward(g, cache)
        if gr:
            grads.append((g_in, gr))
    return g, grads[::-1]


def _plan_mlps(p: _Plan, rng, batch: int) -> None:
    if not p.wants("mlp_forward", "mlp_backward"):
        return
    n, dt = p.part.names, p.case.dtype
    for key, widths in MLPS.items():
        cls = n[key]
        common = {"names": dict(n), "cls": cls}
        for call in ("forward", "backward"):
            params = [_weights(rng, a, b, dt) for a, b in itertools.pairwise(widths)]
            A0 = rng.normal(0.0, 1.0, (batch, widths[0])).astype(dt)
            layers = [layer for W, b in params for layer in (_dense(W, b), ReLU("relu"))]
            h, caches = A0, []
            for layer in layers:
                h, cache = layer.forward(h)
                caches.append(cache)
            item = {"W": [W for W, _ in params], "b": [b for _, b in params], "A0": A0}
            fn = f"{cls}.{call}"
            if call == "forward":
                i = p.probe(fn, "mlp_forward", common, item)
                p.expect(Key("mlp_forward", fn, f"{cls}: output", None, "out"), h, "forward", i, "out")
                continue
            dLdA = (rng.normal(0.0, 1.0, h.shape) / batch).astype(dt)
            i = p.probe(fn, "mlp_backward", common, {**item, "dLdA": dLdA})
            g, grads = _chain_backward(layers, caches, dLdA)
            no_relu, no_relu_grads = _chain_backward(layers, caches, dLdA, relu_derivative=False)
            relu_text = "ReLU's derivative left out of the chain rule (its backward passes dLdA through)"
            dLdZ0 = grads[0][0]
            p.expect(
                Key("mlp_backward", fn, f"{cls}: dLdA0", None, "dLdA0"),
                g,
                "gradient",
                i,
                "dLdA0",
                [
                    (
                        "returned_dLdZ0",
                        "backward returned dLdZ0 (the gradient at the first Linear's output), not dLdA0",
                        dLdZ0,
                    ),
                    ("sign", "the sign is flipped", -g),
                    ("missing_derivative", relu_text, no_relu),
                ],
            )
            for j, (gz, gr) in enumerate(grads):
                dW, db = to_mytorch("W", gr["W"]), to_mytorch("b", gr["b"])
                w_alts, b_alts = _linear_grad_alternatives(gz, dW, db, batch)
                _, wrong = no_relu_grads[j]
                w_alts += (("missing_derivative", relu_text, to_mytorch("W", wrong["W"])),)
                b_alts += (("missing_derivative", relu_text, to_mytorch("b", wrong["b"])),)
                p.expect(
                    Key("mlp_backward", fn, f"{cls}: layers[{2 * j}].dLdW", None, "dLdW"),
                    dW,
                    "gradient",
                    i,
                    f"dLdW {j}",
                    w_alts,
                )
                p.expect(
                    Key("mlp_backward", fn, f"{cls}: layers[{2 * j}].dLdb", None, "dLdb"),
                    db,
                    "gradient",
                    i,
                    f"dLdb {j}",
                    b_alts,
                )


# Reading back -----------------------------------------------------------------------------------


def observe(part, case: FormatCase, results: dict) -> dict:
    """{Key: what came back | Problem} for every expected Key, from the driver's per-case records
    (hostile data: anything but the driver's shape of record is a Problem, never a pass). The loop over
    the keys (a call not run or failed) is adapters.observe's; this reads one entry."""

    def extract(part, case, exp, record, items):
        index, out = case.notes["where"][exp.key]
        if not isinstance(record, list) or index >= len(record):
            return Problem(f"{exp.key.function}: the driver returned no entry {index} ({type(record).__name__})")
        return _same_numbers(_value(record[index], out, exp.key), exp)

    return observe_records(part, case, results, extract=extract)


ROWS = ("running_M", "running_V", "dLdBW", "dLdBb")  # BatchNorm1d's (1, C) rows


def _same_numbers(value, exp: Expected):
    """Two shapes the handout's own formulas give for the same numbers, taken as what they are:
    a loss computed as Ones_N^T se Ones_C / (N C) is a (1, 1) array (one number; the handout's
    autograder compares it by broadcasting), and a BatchNorm row summed without keepdims is (C,), which
    broadcasts as the (1, C) row wherever it is used (BW - lr dLdBW stays (1, C)). A flat dLdb (out,)
    is not taken: b - lr dLdb with b (out, 1) would broadcast to (out, out)."""
    if not isinstance(value, np.ndarray):
        return value
    if exp.key.field == "L" and value.size == 1 and value.ndim <= 2:
        return value.reshape(())
    if exp.key.field in ROWS and value.ndim == 1 and exp.value.shape == (1, value.size):
        return value.reshape(1, -1)
    return value


def _value(entry, out: str, key: Key):
    if not isinstance(entry, dict):
        return Problem(f"{key.function}: the driver returned {type(entry).__name__}, expected a result record")
    if "error" in entry:
        return Problem(str(entry["error"]))
    result = entry.get(out)
    if not isinstance(result, dict):
        return Problem(f"{key.function}: no result for {key.tensor}")
    if "error" in result:
        return Problem(str(result["error"]))
    if "value" not in result:
        return Problem(f"{key.function}: no value for {key.tensor}")
    return result["value"]


# The handout's own layout ------------------------------------------------------------------------

PACKAGE_ORDER = ("nn", "optim", "models")  # mytorch/nn/*.py first: optim and the models import from it
ARCHIVES = (".tar", ".tgz", ".tar.gz")
MAX_FILES = 200


def assemble(path, needed, out_dir: Path) -> tuple[Path, Extracted] | None:
    """The handout's layout as one module: a folder holding `mytorch/` (HW1P1/, or the mytorch/ folder
    itself) or Autolab's handin archive (.tar, .tgz, .tar.gz) of it. Every .py file under mytorch/
    (and a top-level models/, the older handouts' place for mlp.py) is read in dependency order (nn,
    optim, models; __init__.py re-exports skipped), its imports of the package itself dropped (the
    names are defined above it in the one module), and the result extracted like a .py file. Returns
    None for a path of another shape (a .py file or notebook: the generic extraction applies).
    Symbolic links and archive members other than regular files are refused, never followed."""
    path = Path(path)
    if path.is_symlink():
        return None  # the generic reader refuses it with the reason
    if path.is_dir():
        files = _folder_files(path)
    elif path.name.endswith(ARCHIVES) and path.is_file():
        files = _archive_files(path)
    else:
        return None
    if not files:
        raise SubmissionError(f"{path.name}: no mytorch/ package (.py files under mytorch/) found")
    source = "\n\n".join(f"# ---- {name}\n{_without_package_imports(text, name)}" for name, text in _ordered(files))
    out_dir.mkdir(parents=True, exist_ok=True)
    combined = out_dir / "mytorch_handin.py"
    combined.write_text(source, encoding="utf-8")
    module_path, extracted = write_module(combined, needed, out_dir / "extracted")
    extracted.origin = f"mytorch package ({len(files)} files: {', '.join(sorted(files))})"
    return module_path, extracted


def _package_root(names) -> str | None:
    """The prefix under which mytorch/ sits ("", "HW1P1/", ...), from relative posix names."""
    roots = sorted({n[: n.index("mytorch/")] for n in names if "mytorch/" in n and n.endswith(".py")}, key=len)
    return roots[0] if roots else None


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    return rel.endswith(".py") and parts[-1] != "__init__.py" and parts[0] in ("mytorch", "models")


def _folder_files(root: Path) -> dict[str, str]:
    found = []
    base = root.parent if root.name == "mytorch" else root
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for f in filenames:
            found.append(Path(dirpath, f).relative_to(base).as_posix())
    prefix = _package_root(found)
    if prefix is None:
        return {}
    out, total = {}, 0
    for rel in sorted(found):
        if not rel.startswith(prefix) or not _wanted(rel[len(prefix) :]):
            continue
        st = os.lstat(base / rel)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise SubmissionError(f"{rel}: not a regular file (a symbolic link?); submissions must be regular files")
        total += st.st_size
        if total > MAX_BYTES or len(out) >= MAX_FILES:
            raise SubmissionError(
                f"{root.name}: the mytorch package is larger than {MAX_BYTES // 2**20} MB; not graded"
            )
        out[rel[len(prefix) :]] = (base / rel).read_bytes().decode("utf-8", errors="replace")
    return out


def _archive_files(path: Path) -> dict[str, str]:
    try:
        with tarfile.open(path, "r:*") as tar:
            members, declared = [], 0
            for m in tar:  # headers only; a member too large stops the walk before its data is skipped
                declared += m.size
                if m.size > MAX_BYTES or declared > 4 * MAX_BYTES or len(members) >= MAX_FILES * 10:
                    raise SubmissionError(f"{path.name}: the archive is larger than the grader reads; not graded")
                members.append(m)
            prefix = _package_root([m.name.lstrip("./") for m in members])
            if prefix is None:
                return {}
            out, total = {}, 0
            for m in members:
                rel = m.name.lstrip("./")
                if not rel.startswith(prefix) or not _wanted(rel[len(prefix) :]):
                    continue
                if not m.isfile():
                    raise SubmissionError(f"{path.name}: {rel} is not a regular file in the archive (a link?)")
                total += m.size
                if total > MAX_BYTES or len(out) >= MAX_FILES:
                    raise SubmissionError(f"{path.name}: the mytorch package is larger than {MAX_BYTES // 2**20} MB")
                data = tar.extractfile(m).read(m.size + 1)  # read in memory: nothing is written from the archive
                out[rel[len(prefix) :]] = data.decode("utf-8", errors="replace")
            return out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SubmissionError(f"{path.name}: not a readable tar archive ({type(e).__name__}: {e})") from None


def _ordered(files: dict[str, str]) -> list[tuple[str, str]]:
    def rank(name: str) -> tuple:
        parts = name.split("/")
        sub = parts[1] if parts[0] == "mytorch" and len(parts) > 2 else parts[0]
        return (PACKAGE_ORDER.index(sub) if sub in PACKAGE_ORDER else len(PACKAGE_ORDER), name)

    return sorted(files.items(), key=lambda kv: rank(kv[0]))


def _without_package_imports(text: str, name: str) -> str:
    """The file without its top-level imports of mytorch / models / relative modules (their names are
    defined earlier in the one module); a file that does not parse is kept as is (its syntax error is
    reported by the extraction, naming the combined line)."""
    try:
        tree = parse(text, name)
    except SyntaxError:
        return text
    drop = set()
    for node in tree.body:
        own = (
            isinstance(node, ast.ImportFrom)
            and (node.level > 0 or (node.module or "").split(".")[0] in ("mytorch", "models"))
        ) or (isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("mytorch", "models") for a in node.names))
        if own:
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = text.splitlines()
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in drop)
