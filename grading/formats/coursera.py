"""The Coursera deep-learning course's "Building your Deep Neural Network: Step by Step" (coursera-dnn).

What a student writes (module-level functions, the notebook's signatures):

    linear_forward(A_prev, W, b) -> (Z, cache)                   cache = (A_prev, W, b)
    linear_activation_forward(A_prev, W, b, activation) -> (A, cache)     "relu" | "sigmoid";
                                                                 cache = (linear_cache, Z)
    L_model_forward(X, parameters) -> (AL, caches)               [LINEAR -> RELU] * (L-1) -> LINEAR -> SIGMOID
    compute_cost(AL, Y) -> cost                                  binary cross-entropy, mean over m; shape ()
    linear_backward(dZ, cache) -> (dA_prev, dW, db)              dW = dZ A_prev^T / m, db = sum_axis1 dZ / m
    relu_backward(dA, cache) -> dZ, sigmoid_backward(dA, cache) -> dZ          their cache is Z
    linear_activation_backward(dA, cache, activation) -> (dA_prev, dW, db)
    L_model_backward(AL, Y, caches) -> grads                     dA{l-1}, dW{l}, db{l}; dAL = -(Y/AL - (1-Y)/(1-AL))
    update_parameters(parameters, grads, learning_rate) -> parameters

Layout: examples in COLUMNS. X and every A are (n, m), W{l} is (n_l, n_{l-1}), b{l} is (n_l, 1), and the
output layer is one sigmoid unit (AL and Y are (1, m)). The reference keeps examples in rows with W
(n_in, n_out) and b (n_out,); `Columns` below is the one place the two meet. The notebook's dA and dZ
are gradients of the SUMMED cost (its dAL is not divided by m); its dW and db are the mean cost's
(linear_backward divides by m). The reference's layers (reference.layers Dense, ReLU, Sigmoid) and
loss (reference.losses BCE) compute every expected value here, in the grader, on the probe inputs.

Caches are opaque: a backward function is called, INSIDE the sandbox, with the cache that the
student's own forward function made from the probe's inputs (linear_backward gets linear_forward's,
linear_activation_backward linear_activation_forward's, L_model_backward L_model_forward's AL and
caches); the grader never builds one. relu_backward and sigmoid_backward take Z itself, as the
notebook documents. Every function gets probe inputs of its own (A_prev, W, b, dA, dZ, Z, X, Y and
parameters drawn for it alone), never another function's outputs.

Cases (each function probed on every layer shape of each):
    small-<dtype>  the part's layer_dims (default 5-4-3-1, L = 3) and examples (default 6)
    square         4-4-4-1, m = 4: square W's (a transposed dW has the right shape here)
    m1             3-2-1, m = 1 (L = 2): one example (a db not summed over the examples passes here)
    deep           6-5-4-3-1, m = 7 (L = 4): every size and m different
    stability      4-3-1, m = 5: the sigmoid saturated; unit probes at |Z| up to 1000, the model's
                   output Z from -30 to +30 and every label on the far side (AL within 1e-13 of 0 or 1), where
                   the notebook's own formulas are still finite
Known bugs are hypotheses (Expected.alternatives) computed here with the reference and shown only
when the submission's tensor matches one (grading.diagnose.diagnose_alternatives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from grading.adapters import Expected, Key, Problem
from grading.adapters import observe as observe_records
from grading.assignment import AssignmentError
from grading.diagnose import generic_alternatives
from grading.formats import FormatCase
from reference.layers import Dense, ReLU, Sigmoid
from reference.losses import BCE

NAME = "coursera"
TITLE = "Coursera DNN step by step: linear_forward ... L_model_backward, update_parameters; examples in columns"
DRIVER = Path(__file__).with_name("coursera_driver.py")

FUNCTIONS = (
    "linear_forward",
    "linear_activation_forward",
    "L_model_forward",
    "compute_cost",
    "linear_backward",
    "relu_backward",
    "sigmoid_backward",
    "linear_activation_backward",
    "L_model_backward",
    "update_parameters",
)
CHECKS = (*FUNCTIONS, "stability")  # one check per graded function, in the notebook's order
NAMES = {f: f for f in FUNCTIONS}
# a backward function gets the cache its forward function made, in the same sandboxed call
MADE_BY = {
    "linear_backward": "linear_forward",
    "linear_activation_backward": "linear_activation_forward",
    "L_model_backward": "L_model_forward",
}

DEFAULT_DIMS = (5, 4, 3, 1)
DEFAULT_EXAMPLES = 6
DEFAULT_RATE = 0.1
SWEEP = (("square", (4, 4, 4, 1), 4), ("m1", (3, 2, 1), 1), ("deep", (6, 5, 4, 3, 1), 7))
STABILITY = ("stability", (4, 3, 1), 5)
UNIT_PEAK = 1e3  # the stability case's largest |Z| for a unit function: exp(1000) overflows
MODEL_PEAK = 30.0  # ... for the whole model: sigmoid(30) = 1 - 9e-14, still < 1 in float64 (dAL finite)


# The layout, once: the notebook's columns <-> the reference's rows -----------------------------------


class Columns:
    """The notebook's layout mapped to the reference's (and back); nothing else here transposes."""

    @staticmethod
    def rows(A: np.ndarray) -> np.ndarray:
        """A (n, m), examples in columns -> (m, n), examples in rows."""
        return A.T

    cols = rows  # and back: (m, n) -> (n, m)

    @staticmethod
    def weight(W: np.ndarray) -> np.ndarray:
        """W (n_l, n_{l-1}) -> the reference's (n_in, n_out); and back."""
        return W.T

    @staticmethod
    def bias(b: np.ndarray) -> np.ndarray:
        """b (n_l, 1) -> (n_l,)."""
        return b[:, 0]

    @staticmethod
    def column(b: np.ndarray) -> np.ndarray:
        """(n_l,) -> b (n_l, 1)."""
        return b[:, None]


def _act(kind: str):
    return {"relu": ReLU, "sigmoid": Sigmoid}[kind](kind)


def ref_linear(A_prev, W, b) -> np.ndarray:
    """Z = W A_prev + b: the reference Dense on the transposed layout."""
    out, _ = Dense("dense", Columns.weight(W), Columns.bias(b)).forward(Columns.rows(A_prev))
    return Columns.cols(out)


def ref_activation(kind: str, Z) -> np.ndarray:
    out, _ = _act(kind).forward(Columns.rows(Z))
    return Columns.cols(out)


def ref_activation_backward(kind: str, dA, Z) -> np.ndarray:
    """dZ = dA * g'(Z): the reference ReLU / Sigmoid backward."""
    layer = _act(kind)
    _, cache = layer.forward(Columns.rows(Z))
    dz, _ = layer.backward(Columns.rows(dA), cache)
    return Columns.cols(dz)


def ref_linear_backward(dZ, A_prev, W, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dA_prev, dW, db): the reference Dense backward of the summed cost's dZ; dW and db / m (the mean's)."""
    m = A_prev.shape[1]
    dx, grads = Dense("dense", Columns.weight(W), Columns.bias(b)).backward(Columns.rows(dZ), Columns.rows(A_prev))
    return Columns.cols(dx), Columns.weight(grads["W"]) / m, Columns.column(grads["b"]) / m


def ref_cost(AL, Y) -> np.ndarray:
    """-(1/m) sum(Y log AL + (1 - Y) log(1 - AL)): the reference BCE, mean over the m examples."""
    return np.asarray(BCE("mean").value(Columns.rows(AL), Columns.rows(Y)))


def ref_dAL(AL, Y) -> np.ndarray:
    """The notebook's dAL = -(Y/AL - (1-Y)/(1-AL)): the summed BCE's gradient (not divided by m)."""
    _, g = BCE("sum").value_and_grad(Columns.rows(AL), Columns.rows(Y))
    return Columns.cols(g)


def model_acts(L: int, hidden: str = "relu", output: str = "sigmoid") -> list[str]:
    return [hidden] * (L - 1) + [output]


def ref_forward(X, params, L: int, acts=None, bias: bool = True, feed_x: bool = False):
    """[(A_prev, Z, A)] per layer, and AL."""
    acts = acts or model_acts(L)
    layers, A = [], X
    for j in range(1, L + 1):
        W, b = params[f"W{j}"], params[f"b{j}"]
        A_prev = X if feed_x and j < L else A
        Z = ref_linear(A_prev, W, b if bias else np.zeros_like(b))
        A = ref_activation(acts[j - 1], Z) if acts[j - 1] != "linear" else Z
        layers.append((A_prev, Z, A))
    return layers, A


def ref_backward(layers, params, dAL, acts, dA_scale: float = 1.0, derivative=None) -> dict[str, np.ndarray]:
    """The notebook's grads from the reference: dA{j-1}, dW{j}, db{j} for j = L..1. `derivative(j, kind,
    dA, Z)` replaces the activation's backward (a hypothesis); `dA_scale` scales dAL."""
    grads, dA = {}, dAL * dA_scale
    L = len(layers)
    for j in range(L, 0, -1):
        A_prev, Z, _ = layers[j - 1]
        kind = acts[j - 1]
        dZ = derivative(j, kind, dA, Z) if derivative else ref_activation_backward(kind, dA, Z)
        dA_prev, dW, db = ref_linear_backward(dZ, A_prev, params[f"W{j}"], params[f"b{j}"])
        grads[f"dA{j - 1}"], grads[f"dW{j}"], grads[f"db{j}"] = dA_prev, dW, db
        dA = dA_prev
    return grads


# Hypotheses: what a tensor would be under each known bug (computed here, never sent) ----------------


def _layout_transpose(value: np.ndarray, what: str, how: str = "", weight: bool = False) -> list:
    """The reference's own layout: examples in rows, W as (n_in, n_out)."""
    if value.ndim != 2 or value.shape[0] == 1 or value.shape[1] == 1:  # a vector: "reshaped" says it
        return []
    ours, theirs = ("W as (n_in, n_out)", "W as (n_l, n_{l-1})") if weight else ("examples in rows", "in columns")
    text = f"{what} transposed{how}: the reference's layout ({ours}), not the course's ({theirs})"
    return [("transpose", text, value.T)]


def _derivative_alternatives(kind: str, dA, Z) -> list:
    """(bug, text, dZ) for the activation backward's known bugs."""
    A = ref_activation(kind, Z)
    out = [("missing_derivative", f"the {kind} derivative is missing: dZ = dA", dA)]
    other = "sigmoid" if kind == "relu" else "relu"
    out.append(
        (
            "wrong_activation",
            f"the {other} derivative where the {kind} one belongs (the activation string mixed up)",
            ref_activation_backward(other, dA, Z),
        )
    )
    out.append(
        ("activation_for_derivative", f"multiplied by {kind}(Z) itself, not its derivative: dZ = dA * g(Z)", dA * A)
    )
    if kind == "sigmoid":
        out.append(
            (
                "at_activation",
                "the sigmoid derivative evaluated at A = sigmoid(Z) instead of Z: dZ = dA * s(A)(1 - s(A))",
                ref_activation_backward("sigmoid", dA, A),
            )
        )
        out.append(
            (
                "pre_activation",
                "the derivative written for the activation, a(1 - a), applied to Z: dZ = dA * Z (1 - Z)",
                dA * Z * (1 - Z),
            )
        )
    else:
        out.append(("wrong_mask", "the mask taken from dA instead of Z: dZ[dA <= 0] = 0", dA * (dA > 0)))
    return out


def _linear_alternatives(dZ, A_prev, W, b, correct) -> dict[str, list]:
    """{"dA_prev" | "dW" | "db": [(bug, text, value)]} of linear_backward's known bugs, for a correct dZ."""
    m, n_rows = A_prev.shape[1], A_prev.shape[0]
    dA_prev, dW, db = correct
    alt = {"dA_prev": [], "dW": [], "db": []}
    if m > 1:
        alt["dW"] += [
            ("batch_size", f"not divided by m = {m}: dZ A_prev^T is the summed cost's gradient", dW * m),
            ("batch_size", f"divided by m = {m} twice", dW / m),
        ]
        alt["db"] += [
            ("batch_size", f"not divided by m = {m}", db * m),
            ("batch_size", f"divided by m = {m} twice", db / m),
            (
                "wrong_axis",
                "summed over axis 0 (the units) instead of axis 1 (the examples): np.sum(dZ, axis=0, keepdims=True) / m",
                dZ.sum(axis=0, keepdims=True) / m,
            ),
            ("not_summed", "not summed over the examples: db = dZ / m, one column per example", dZ / m),
        ]
        alt["dA_prev"].append(
            ("batch_size", f"divided by m = {m}: the notebook's dA_prev = W^T dZ is not divided by m", dA_prev / m)
        )
    if n_rows != m:
        for key, value in (("dW", dW), ("db", db)):
            alt[key].append(
                (
                    "wrong_axis",
                    f"divided by A_prev.shape[0] = {n_rows} (the units of the layer below) instead of m = "
                    f"A_prev.shape[1] = {m}",
                    value * m / n_rows,
                )
            )
    alt["dW"] += _layout_transpose(dW, "dW", " (A_prev dZ^T / m where dZ A_prev^T / m belongs)", weight=True)
    alt["dA_prev"] += _layout_transpose(dA_prev, "dA_prev", " (dZ^T W where W^T dZ belongs)")
    if W.shape[0] == W.shape[1]:
        alt["dA_prev"].append(("transpose", "W dZ where W^T dZ belongs", W @ dZ))
    for key in alt:
        value = {"dA_prev": dA_prev, "dW": dW, "db": db}[key]
        alt[key].append(("sign", "the sign is flipped", -value))
    return alt


def _linear_backward_through(dZ_alts, A_prev, W, b) -> dict[str, list]:
    """Each hypothesis on dZ carried through the reference linear backward: per output."""
    out = {"dA_prev": [], "dW": [], "db": []}
    for bug, text, dZ in dZ_alts:
        for key, value in zip(("dA_prev", "dW", "db"), ref_linear_backward(dZ, A_prev, W, b)):
            out[key].append((bug, text, value))
    return out


# Options, names --------------------------------------------------------------------------------------


def parse_options(raw: dict, where: str, source: str) -> dict:
    """layer_dims (the small case's [n_x, ..., 1]), examples (its m), learning_rate (update_parameters')."""
    known = {"layer_dims", "examples", "learning_rate"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AssignmentError(f"{source}: {where}: unknown fields {unknown} for format {NAME!r}; known {sorted(known)}")
    dims = raw.get("layer_dims", list(DEFAULT_DIMS))
    if (
        not isinstance(dims, list)
        or len(dims) < 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims)
    ):
        raise AssignmentError(f"{source}: {where}.layer_dims: expected positive ints [n_x, ..., 1], got {dims!r}")
    if dims[-1] != 1:
        raise AssignmentError(
            f"{source}: {where}.layer_dims: the notebook's output layer is one sigmoid unit; expected a last size of 1, "
            f"got {dims!r}"
        )
    m = raw.get("examples", DEFAULT_EXAMPLES)
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise AssignmentError(f"{source}: {where}.examples: expected a positive int (m), got {m!r}")
    lr = raw.get("learning_rate", DEFAULT_RATE)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        raise AssignmentError(f"{source}: {where}.learning_rate: expected a positive number, got {lr!r}")
    return {"layer_dims": tuple(dims), "examples": m, "learning_rate": float(lr)}


def _graded(part) -> list[str]:
    return [f for f in FUNCTIONS if f in part.check_names]


def needed_names(part) -> tuple[str, ...]:
    """The graded functions and the forward functions whose caches their backward ones take."""
    out = []
    for f in _graded(part):
        out += [part.names[MADE_BY[f]]] if f in MADE_BY else []
        out.append(part.names[f])
    return tuple(dict.fromkeys(out))


# Cases -----------------------------------------------------------------------------------------------


def _plan(part) -> list[tuple[str, tuple[int, ...], int, str]]:
    dims, m = part.options["layer_dims"], part.options["examples"]
    plan = [("small", dims, m, d) for d in part.dtypes]
    plan += [(kind, d, mm, "float64") for kind, d, mm in SWEEP]
    if "stability" in part.check_names:
        plan.append((*STABILITY, "float64"))
    return plan


def build_cases(part, seed: int) -> list[FormatCase]:
    cases = []
    for i, (kind, dims, m, dtype) in enumerate(_plan(part)):
        rng = np.random.default_rng([seed, 12, i, len(dims), *dims, m])
        case = FormatCase(f"{kind}-{dtype}", kind, dtype, notes={"dims": dims, "m": m, "where": {}})
        _plan_case(part, case, dims, m, rng)
        cases.append(case)
    return cases


class _Draw:
    """Probe inputs, in the case's dtype; the stability case's saturate."""

    def __init__(self, rng, dtype: str, stable: bool):
        self.rng, self.dtype, self.stable = rng, dtype, stable

    def normal(self, shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.normal(0.0, scale, shape)).astype(self.dtype)

    def away_from_zero(self, shape) -> np.ndarray:
        """Z for relu: |Z| >= 0.1, so no entry sits on the kink (where <= and < differ)."""
        v = self.rng.normal(0.0, 1.0, shape)
        v = np.sign(v) * np.maximum(np.abs(v), 0.1)
        return self._saturate(v).astype(self.dtype)

    def _saturate(self, v: np.ndarray) -> np.ndarray:
        return v * (UNIT_PEAK / np.abs(v).max()) if self.stable else v

    def layer(self, n: int, n_prev: int, m: int, peak: float | None = None):
        """(A_prev, W, b) with Z = W A_prev + b of O(1), or peaking at +-peak."""
        A_prev = self.rng.normal(0.0, 1.0, (n_prev, m))
        W = self.rng.normal(0.0, 1.0 / np.sqrt(n_prev), (n, n_prev))
        b = self.rng.uniform(-0.5, 0.5, (n, 1))
        peak = peak if peak is not None else (UNIT_PEAK if self.stable else None)
        if peak is not None:
            scale = peak / np.abs(W @ A_prev + b).max()
            W, b = W * scale, b * scale
        return A_prev.astype(self.dtype), W.astype(self.dtype), b.astype(self.dtype)

    def parameters(self, dims, m: int, peak: float | None = None):
        """X and parameters W1, b1, ... with every pre-activation O(1) (the output's from -peak to +peak)."""
        X = self.rng.normal(0.0, 1.0, (dims[0], m))
        params, A = {}, X
        for j in range(1, len(dims)):
            W = self.rng.normal(
                0.0, 1.0 / (np.sqrt(dims[j - 1]) * (np.sqrt((A**2).mean()) or 1.0)), (dims[j], dims[j - 1])
            )
            b = self.rng.uniform(-0.5, 0.5, (dims[j], 1))
            Z = W @ A + b
            if j == len(dims) - 1 and peak is not None:  # the output's Z from -peak to +peak: both ends saturated
                lo, hi = Z.min(axis=1, keepdims=True), Z.max(axis=1, keepdims=True)
                s = 2 * peak / (hi - lo)
                W, b, Z = W * s, b * s - peak - s * lo, Z * s - peak - s * lo
            params[f"W{j}"], params[f"b{j}"] = W, b
            A = np.maximum(Z, 0)
        return X.astype(self.dtype), {k: v.astype(self.dtype) for k, v in params.items()}


def _expect(case, part, fn: str, check: str, out: str, value, quantity: str, alts, item: int, tensor: str) -> None:
    key = Key(check, part.names[fn], tensor, None, out)
    case.notes["where"][key] = (item, out)
    case.expected.append(Expected(key, np.asarray(value), None, quantity, alternatives=tuple(alts)))


def _probe(case, part, fn: str, driver: str, item: dict) -> int:
    label = part.names[fn]
    common = {"names": dict(part.names), "function": fn}
    items = case.probes.setdefault(label, (driver, common, []))[2]
    items.append(item)
    return len(items) - 1


def _plan_case(part, case: FormatCase, dims, m: int, rng) -> None:
    graded = set(_graded(part))
    stable = case.kind == "stability"
    draw = _Draw(rng, case.dtype, stable)
    L = len(dims) - 1
    n = part.names
    shapes = [(j, dims[j], dims[j - 1], "relu" if j < L else "sigmoid") for j in range(1, L + 1)]

    def check(fn):
        return "stability" if stable else fn

    if "linear_forward" in graded:
        for j, n_l, n_prev, _ in shapes:
            A_prev, W, b = draw.layer(n_l, n_prev, m)
            i = _probe(case, part, "linear_forward", "forward_call", {"args": [A_prev, W, b]})
            Z = ref_linear(A_prev, W, b)
            alts = [("missing_bias", "the bias is not added: Z = W A_prev", W @ A_prev)]
            alts += [*_layout_transpose(Z, "Z"), ("sign", "the sign is flipped", -Z)]
            _expect(
                case,
                part,
                "linear_forward",
                check("linear_forward"),
                "Z",
                Z,
                "forward",
                alts,
                i,
                f"{n['linear_forward']}[{j}].Z",
            )
    if "linear_activation_forward" in graded:
        for j, n_l, n_prev, kind in shapes:
            A_prev, W, b = draw.layer(n_l, n_prev, m)
            i = _probe(case, part, "linear_activation_forward", "forward_call", {"args": [A_prev, W, b, kind]})
            Z = ref_linear(A_prev, W, b)
            A = ref_activation(kind, Z)
            other = "sigmoid" if kind == "relu" else "relu"
            alts = [
                ("activation_not_applied", f"the {kind} is not applied: A = Z", Z),
                ("wrong_activation", f"{other} applied where {kind} was asked for", ref_activation(other, Z)),
                ("missing_bias", "the bias is not added: A = g(W A_prev)", ref_activation(kind, W @ A_prev)),
                *_layout_transpose(A, "A"),
            ]
            tensor = f"{n['linear_activation_forward']}[{j}, {kind}].A"
            _expect(
                case,
                part,
                "linear_activation_forward",
                check("linear_activation_forward"),
                "A",
                A,
                "forward",
                alts,
                i,
                tensor,
            )
    peak = MODEL_PEAK if stable else None
    if "L_model_forward" in graded:
        X, params = draw.parameters(dims, m, peak)
        i = _probe(case, part, "L_model_forward", "model_forward", {"X": X, "parameters": params})
        _layers, AL = ref_forward(X, params, L)
        alts = [
            (
                "wrong_activation",
                "relu on the output layer where sigmoid belongs",
                ref_forward(X, params, L, model_acts(L, "relu", "relu"))[1],
            ),
            (
                "wrong_activation",
                "sigmoid on the hidden layers too (relu belongs there)",
                ref_forward(X, params, L, model_acts(L, "sigmoid"))[1],
            ),
            (
                "activation_not_applied",
                "no sigmoid on the output: AL = Z[L]",
                ref_forward(X, params, L, model_acts(L, "relu", "linear"))[1],
            ),
            (
                "activation_not_applied",
                "no relu on the hidden layers",
                ref_forward(X, params, L, model_acts(L, "linear"))[1],
            ),
            ("missing_bias", "the biases are not added", ref_forward(X, params, L, bias=False)[1]),
            *_layout_transpose(AL, "AL"),
        ]
        if L > 2 and len(set(dims[:-1])) == 1:  # every hidden layer fed X: only computable where the shapes allow
            alts.append(
                (
                    "fed_input",
                    "every hidden layer is fed X instead of the previous layer's A",
                    ref_forward(X, params, L, feed_x=True)[1],
                )
            )
        fn = n["L_model_forward"]
        _expect(case, part, "L_model_forward", check("L_model_forward"), "AL", AL, "forward", alts, i, f"{fn}.AL")
        alts = [("missing_cache", "one cache short: the output layer's cache is not appended", np.asarray(L - 1))]
        _expect(
            case,
            part,
            "L_model_forward",
            check("L_model_forward"),
            "len(caches)",
            L,
            "forward",
            alts,
            i,
            f"{fn}.len(caches)",
        )
    if "compute_cost" in graded:
        if stable:
            z = rng.choice([-1.0, 1.0], (1, m)) * rng.uniform(20.0, MODEL_PEAK, (1, m))
            AL, Y = ref_activation("sigmoid", z), (z < 0).astype(float)  # the label on the far side
        else:
            AL, Y = rng.uniform(0.05, 0.95, (1, m)), rng.integers(0, 2, (1, m)).astype(float)
        AL, Y = AL.astype(case.dtype), Y.astype(case.dtype)
        i = _probe(case, part, "compute_cost", "unit_call", {"args": [AL, Y], "outputs": ["cost"]})
        cost = ref_cost(AL, Y)
        with np.errstate(all="ignore"):
            only_y = -(Y * np.log(AL)).sum() / m
            only_1y = -((1 - Y) * np.log1p(-AL)).sum() / m
        alts = [("sign", "the sign is flipped: the cost is -(1/m) sum(...), a positive number", -cost)]
        if m > 1:
            alts += [
                ("batch_size", f"not divided by m = {m}: the sum over the examples, not the mean", cost * m),
                ("batch_size", f"divided by m = {m} twice", cost / m),
            ]
        alts += [
            ("missing_term", "only the Y log(AL) term: the (1 - Y) log(1 - AL) term is missing", only_y),
            ("missing_term", "only the (1 - Y) log(1 - AL) term: the Y log(AL) term is missing", only_1y),
        ]
        _expect(
            case,
            part,
            "compute_cost",
            check("compute_cost"),
            "cost",
            cost,
            "loss",
            alts,
            i,
            f"{n['compute_cost']}.cost",
        )
    if "linear_backward" in graded:
        for j, n_l, n_prev, _ in shapes:
            A_prev, W, b = draw.layer(n_l, n_prev, m)
            dZ = draw.normal((n_l, m))
            i = _probe(case, part, "linear_backward", "backward_call", {"forward": [A_prev, W, b], "args": [dZ]})
            correct = ref_linear_backward(dZ, A_prev, W, b)
            alts = _linear_alternatives(dZ, A_prev, W, b, correct)
            for out, value in zip(("dA_prev", "dW", "db"), correct):
                tensor = f"{n['linear_backward']}[{j}].{out}"
                _expect(
                    case,
                    part,
                    "linear_backward",
                    check("linear_backward"),
                    out,
                    value,
                    "gradient",
                    alts[out],
                    i,
                    tensor,
                )
    for fn, kind in (("relu_backward", "relu"), ("sigmoid_backward", "sigmoid")):
        if fn not in graded:
            continue
        for j, n_l, _, _ in shapes:
            dA = draw.normal((n_l, m))
            Z = draw.away_from_zero((n_l, m))
            i = _probe(case, part, fn, "unit_call", {"args": [dA, Z], "outputs": ["dZ"]})
            dZ = ref_activation_backward(kind, dA, Z)
            alts = [*_derivative_alternatives(kind, dA, Z), *generic_alternatives(dZ)]
            _expect(case, part, fn, check(fn), "dZ", dZ, "gradient", alts, i, f"{n[fn]}[{j}].dZ")
    if "linear_activation_backward" in graded:
        fn = "linear_activation_backward"
        for j, n_l, n_prev, kind in shapes:
            A_prev, W, b = draw.layer(n_l, n_prev, m)
            dA = draw.normal((n_l, m))
            i = _probe(case, part, fn, "backward_call", {"forward": [A_prev, W, b, kind], "args": [dA, kind]})
            Z = ref_linear(A_prev, W, b)
            dZ = ref_activation_backward(kind, dA, Z)
            correct = ref_linear_backward(dZ, A_prev, W, b)
            alts = _linear_backward_through(_derivative_alternatives(kind, dA, Z), A_prev, W, b)
            for out, more in _linear_alternatives(dZ, A_prev, W, b, correct).items():
                alts[out] += more
            for out, value in zip(("dA_prev", "dW", "db"), correct):
                tensor = f"{n[fn]}[{j}, {kind}].{out}"
                _expect(case, part, fn, check(fn), out, value, "gradient", alts[out], i, tensor)
    if "L_model_backward" in graded:
        _plan_model_backward(part, case, draw, dims, m, peak, check("L_model_backward"))
    if "update_parameters" in graded and not stable:
        _plan_update(part, case, draw, dims, m)


def _plan_model_backward(part, case, draw: _Draw, dims, m: int, peak, check: str) -> None:
    L = len(dims) - 1
    fn = part.names["L_model_backward"]
    X, params = draw.parameters(dims, m, peak)
    layers, AL = ref_forward(X, params, L)
    AL_rows = AL.astype(np.float64)
    Y = ((AL_rows < 0.5) if peak is not None else draw.rng.integers(0, 2, AL.shape)).astype(case.dtype)
    keys = [k for j in range(L, 0, -1) for k in (f"dA{j - 1}", f"dW{j}", f"db{j}")]
    i = _probe(case, part, "L_model_backward", "model_backward", {"X": X, "Y": Y, "parameters": params, "keys": keys})
    acts = model_acts(L)
    dAL = ref_dAL(AL, Y)
    grads = ref_backward(layers, params, dAL, acts)
    with np.errstate(all="ignore"):
        wrong_term = -(Y / AL + (1 - Y) / (1 - AL))
    chains = [
        (
            "batch_size",
            f"dAL divided by m = {m}: the notebook's dA is the summed cost's gradient (not / m)",
            ref_backward(layers, params, dAL, acts, 1 / m),
        ),
        ("sign", "dAL's sign is flipped: dAL = -(Y/AL - (1-Y)/(1-AL))", ref_backward(layers, params, -dAL, acts)),
        (
            "sign",
            "dAL's second term has the wrong sign: -(Y/AL + (1-Y)/(1-AL))",
            ref_backward(layers, params, wrong_term, acts),
        ),
        (
            "wrong_activation",
            "the output layer backpropagated as relu (linear_activation_backward(dAL, ..., 'relu'))",
            ref_backward(layers, params, dAL, model_acts(L, "relu", "relu")),
        ),
        (
            "wrong_activation",
            "the hidden layers backpropagated as sigmoid",
            ref_backward(layers, params, dAL, model_acts(L, "sigmoid")),
        ),
        (
            "missing_derivative",
            "the output's sigmoid derivative is missing: dZ[L] = dAL",
            ref_backward(
                layers,
                params,
                dAL,
                acts,
                derivative=lambda j, k, dA, Z: dA if j == L else ref_activation_backward(k, dA, Z),
            ),
        ),
        (
            "missing_derivative",
            "the hidden layers' relu derivative is missing: dZ = dA",
            ref_backward(
                layers,
                params,
                dAL,
                acts,
                derivative=lambda j, k, dA, Z: dA if j < L else ref_activation_backward(k, dA, Z),
            ),
        ),
    ]
    if m > 1:  # linear_backward's dA_prev = W^T dZ / m: dA{l-1} is m^-(L-l+1) times the right one, dW{l} m^-(L-l)
        scaled = {k: g * float(m) ** -(L - int(k[2:])) for k, g in grads.items()}
        chains.append(
            ("batch_size", f"every dA_prev divided by m = {m} (the notebook's dA_prev = W^T dZ is not)", scaled)
        )
    for key in keys:
        j = int(key[2:])
        alts = [(bug, text, g[key]) for bug, text, g in chains]
        # the linear step's own bugs at the layer that computes it (dA{l-1}: layer l), on the reference's dZ
        layer = j + 1 if key.startswith("dA") else j
        A_prev, Z, _ = layers[layer - 1]
        dA_in = grads[f"dA{layer}"] if layer < L else dAL
        dZ = ref_activation_backward(acts[layer - 1], dA_in, Z)
        local = _linear_alternatives(
            dZ,
            A_prev,
            params[f"W{layer}"],
            params[f"b{layer}"],
            (grads[f"dA{layer - 1}"], grads[f"dW{layer}"], grads[f"db{layer}"]),
        )
        alts += local[{"dA": "dA_prev", "dW": "dW", "db": "db"}[key[:2]]]
        if key.startswith("dA") and 0 < j < L:  # the dA that the relu layer j's backward received
            _, Z_j, _ = layers[j - 1]
            masked = ref_activation_backward("relu", grads[key], Z_j)
            alts.append(
                (
                    "in_place",
                    f"grads['{key}'] was changed in place by relu_backward (dZ = dA without a copy, then "
                    f"dZ[Z <= 0] = 0): it holds dZ{j}",
                    masked,
                )
            )
        alts += generic_alternatives(grads[key], m)  # after the format's own: a tie goes to the more specific
        _expect(case, part, "L_model_backward", check, key, grads[key], "gradient", alts, i, f"{fn}.{key}")


def _plan_update(part, case, draw: _Draw, dims, m: int) -> None:
    fn = part.names["update_parameters"]
    L = len(dims) - 1
    _, params = draw.parameters(dims, m)
    names = [f"{p}{j}" for j in range(1, L + 1) for p in ("W", "b")]
    steps = []
    for _ in range(2):
        g = {f"d{k}": draw.normal(params[k].shape) for k in names}
        g.update({f"dA{j}": draw.normal((dims[j], m)) for j in range(L)})
        steps.append(g)
    lr = part.options["learning_rate"]
    rates = [lr, lr / 2]
    i = _probe(
        case,
        part,
        "update_parameters",
        "update_call",
        {"parameters": params, "grads": steps, "rates": rates, "keys": names},
    )
    # each known bug as an update rule, chained over both steps (step 2 starts from the bug's own step 1)
    rules = {
        None: ("", lambda p, g, r: p - r * g),
        "sign": ("+ where - belongs: the step goes uphill (W + learning_rate dW)", lambda p, g, r: p + r * g),
        "zero": ("never updated: the parameter is unchanged", lambda p, g, r: p),
        "learning_rate": ("the learning rate is not applied: W - dW", lambda p, g, r: p - g),
    }
    now = {bug: dict(params) for bug in rules}
    for s, (g, rate) in enumerate(zip(steps, rates), start=1):
        step = np.asarray(rate, case.dtype)
        now = {bug: {k: rule(now[bug][k], g[f"d{k}"], step) for k in names} for bug, (_, rule) in rules.items()}
        for k in names:
            alts = [(bug, text, now[bug][k]) for bug, (text, _) in rules.items() if bug is not None]
            if s == 2:
                restarted = params[k] - step * g[f"d{k}"]
                alts.append(
                    ("restarted", "step 2 started from the original parameters, not step 1's result", restarted)
                )
            tensor = f"{fn}.{k} (step {s})"
            _expect(
                case,
                part,
                "update_parameters",
                "update_parameters",
                f"{s}:{k}",
                now[None][k],
                "parameters",
                alts,
                i,
                tensor,
            )


# Reading back ----------------------------------------------------------------------------------------


def observe(part, case: FormatCase, results: dict) -> dict:
    """{Key: what came back | Problem} for every expected key; `results` is {call label: this case's
    record (one entry per item sent) | Failed}. Everything in a record is hostile input. The loop
    over the keys (a call not run or failed) is adapters.observe's; this reads one entry."""

    def extract(part, case, exp, record, items):
        item, out = case.notes["where"][exp.key]
        return _read(record, item, out, exp.key.function)

    return observe_records(part, case, results, extract=extract)


def _read(record, item: int, out: str, what: str):
    if not isinstance(record, list) or item >= len(record):
        return Problem(f"{what}: the driver returned no entry {item} ({type(record).__name__})")
    entry = record[item]
    if not isinstance(entry, dict):
        return Problem(f"{what}: the driver returned {type(entry).__name__}, expected a result record")
    if "error" in entry:
        return Problem(str(entry["error"]))
    outputs = entry.get("value")
    if not isinstance(outputs, dict) or out not in outputs:
        return Problem(f"{what}: no {out} in what came back")
    value = outputs[out]  # {"value": array} | {"error": why}
    if not isinstance(value, dict):
        return Problem(f"{what}: {out} came back as {type(value).__name__}, expected a result record")
    if "error" in value:
        return Problem(str(value["error"]))
    if "value" not in value:
        return Problem(f"{what}: {out} came back as a record without a value")
    return value["value"]
