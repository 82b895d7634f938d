"""What the four notebook formats (layer, function, class, logistic) share: a dense network checked
against the reference on known weights, over the same cases.

    options = parse_options(raw, where, source, "class", dense_layers=2, logits=False)
    cases = build_cases(part, seed, plan)         # [Case]: plan(part, case, rng) adds probes and Expected
    case = make_case(part, kind, sizes, dtype, x64, y, params, probe_rng)   # one case (shrink.py too)

A part of these formats is a network of `sizes` (Part.sizes, small_sizes, activations, loss,
reduction, learning_rate, batch, preprocess: parse_options reads them from the assignment file and
checks them by the format's rules). Its cases, in this order:
    small-<dtype>      the part's own small shapes (the full shapes for the function format)
    square-, distinct-, width1-, odd-float64
                       the shape sweep (the format's `sweep`): every layer square; every size and the
                       batch different; a width of 1 with a batch of 1; odd sizes with an odd batch
    mnist-<dtype>      real MNIST test rows (data_loaders.load_mnist), preprocessed as the part says;
                       left out, with a note, when MNIST is not available on this machine
    stability-float64  the last layer scaled so the logits reach +-1e3, labels on the smallest logit
Known weights put every pre-activation at O(1) (no saturated derivative hides a bug) and biases
are non-zero (a dropped bias shows). Each format's `plan` draws its probes of its own on a case and
computes the reference's value of each tensor (adapters.Expected, with the RefView its hypotheses
are computed from: grading/diagnose.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from grading import formats as format_modules
from grading.adapters import DRIVER, STABILITY_LOGIT
from grading.assignment import AssignmentError, need
from grading.diagnose import Diagnosis
from grading.diagnose import diagnose as diagnose_view
from reference.layers import sigmoid
from reference.network import Network
from reference.spec import LayerSpec, ModelSpec
from reference.trace import LayerTrace, Trace

ACTIVATIONS = ("relu", "sigmoid", "tanh")
LOSSES = ("softmax_cross_entropy", "cross_entropy")
MNIST_ROWS = (0, 1, 2, 3, 4, 5, 6, 7)  # test-set rows: fixed, so every student gets the same
SHARED_DRIVER = DRIVER  # grading/drivers/api.py: the child-side calls of all four formats
MNIST_NOTE = "Real MNIST rows were not checked: MNIST is not available on this machine (data_loaders)."


@dataclass
class Case:
    id: str  # "small-float64", "square-float64", "mnist-float32", "stability-float64"
    kind: str  # "small" | "square" | "distinct" | "width1" | "odd" | "mnist" | "stability"
    dtype: str
    spec: object  # ModelSpec
    params: dict[str, np.ndarray]
    x: np.ndarray  # (batch, n_in)
    y: np.ndarray  # (batch,) int labels
    trace: Trace  # the reference on (params, x, y): trusted side only, never sent
    step_x: np.ndarray  # the batch of the training-step check (one row for per-sample formats)
    step_y: np.ndarray
    step_trace: Trace
    probes: dict = field(default_factory=dict)  # call label -> (driver function, common kwargs, [items])
    expected: list = field(default_factory=list)  # [adapters.Expected], in computation order


# The assignment file ----------------------------------------------------------------------------


def parse_options(
    raw: dict,
    where: str,
    source: str,
    fmt: str,
    *,
    dense_layers: int | None = None,
    logits: bool = True,
    fixed_sizes: bool = False,
    per_sample: bool = False,
) -> dict:
    """The network fields of a part (Part's sizes, small_sizes, activations, loss, reduction,
    learning_rate, batch, preprocess, provided), checked by the format's rules: `dense_layers` a
    fixed number of dense layers, `logits` a loss of the logits (else of softmax's probabilities),
    `fixed_sizes` no small_sizes (the notebook fixes its shapes), `per_sample` a batch of 1."""
    sizes = tuple(need(raw, "sizes", where, list, source))
    small = tuple(raw["small_sizes"]) if raw.get("small_sizes") else None
    for label, s in (("sizes", sizes), ("small_sizes", small)):
        if s is not None and (len(s) < 2 or not all(isinstance(v, int) and v > 0 for v in s)):
            raise AssignmentError(
                f"{source}: {where}.{label}: expected positive ints [n_in, ..., n_out], got {list(s)}"
            )
    for label, s in (("sizes", sizes), ("small_sizes", small)):
        if s is not None and dense_layers and len(s) != dense_layers + 1:
            raise AssignmentError(
                f"{source}: {where}.{label}: the {fmt} format has {dense_layers} dense layer(s), got {list(s)}"
            )
    if fixed_sizes and small is not None:
        raise AssignmentError(f"{source}: {where}.small_sizes: the {fmt} format has fixed sizes; remove it")
    activations = tuple(raw.get("activations", []))
    if len(activations) != len(sizes) - 2 or any(a not in ACTIVATIONS for a in activations):
        raise AssignmentError(
            f"{source}: {where}.activations: expected {len(sizes) - 2} of {ACTIVATIONS} (one per hidden layer), got {list(activations)}"
        )
    loss = raw.get("loss", "softmax_cross_entropy")
    if loss not in LOSSES:
        raise AssignmentError(f"{source}: {where}.loss: expected one of {LOSSES}, got {loss!r}")
    if not logits and loss != "cross_entropy":
        raise AssignmentError(f"{source}: {where}.loss: the {fmt} format outputs probabilities: use 'cross_entropy'")
    if logits and loss != "softmax_cross_entropy":
        raise AssignmentError(f"{source}: {where}.loss: the {fmt} format works on logits: use 'softmax_cross_entropy'")
    reduction = raw.get("reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise AssignmentError(f"{source}: {where}.reduction: expected 'mean' or 'sum', got {reduction!r}")
    batch = int(raw.get("batch", 1 if per_sample else 4))
    if per_sample and batch != 1:
        raise AssignmentError(f"{source}: {where}.batch: the {fmt} format takes one sample at a time; use 1")
    provided = raw.get("provided", [])
    return {
        "sizes": sizes,
        "small_sizes": small,
        "activations": activations,
        "loss": loss,
        "reduction": reduction,
        "learning_rate": float(need(raw, "learning_rate", where, (int, float), source)),
        "batch": batch,
        "preprocess": raw.get("preprocess", "scale255"),
        "provided": tuple(provided) if isinstance(provided, list) else provided,  # checked by validate
    }


def validate(part, where: str, source: str, providable: tuple[str, ...] = ()) -> None:
    """`provided` names only the format's own helpers (`providable`: keys of its NAMES)."""
    allowed = {part.names[k] for k in providable}
    provided = list(part.provided) if isinstance(part.provided, tuple) else part.provided
    if not isinstance(provided, list) or any(f not in allowed for f in provided):
        raise AssignmentError(
            f"{source}: {where}.provided: expected a list of the {part.format} format's helper functions "
            f"{sorted(allowed) or '(none can be provided)'}, got {provided!r}"
        )


def model_spec(part, sizes: tuple[int, ...], dtype: str) -> ModelSpec:
    """The reference model: dense layers of `sizes`, the activations between, softmax on top for
    probability losses (class / logistic formats); softmax_cross_entropy works on the logits."""
    layers: list[LayerSpec] = []
    for i, n in enumerate(sizes[1:]):
        layers.append(LayerSpec("dense", units=n))
        if i < len(sizes) - 2:
            layers.append(LayerSpec(part.activations[i]))
    if part.loss == "cross_entropy":
        layers.append(LayerSpec("softmax"))
    return ModelSpec(
        n_in=sizes[0],
        layers=tuple(layers),
        loss=part.loss,
        reduction=part.reduction,
        dtype=dtype,
        init="glorot_uniform",
        preprocess=part.preprocess,
        name=part.id,
    )


def sweep(part) -> list[tuple[str, tuple[int, ...], int]]:
    """(label, sizes, batch) of the synthetic cases: the part's own small shapes, then shapes chosen
    so each shape-dependent bug shows on one: every layer square, every size (and the batch)
    different, a width of 1 with a batch of 1, odd sizes with an odd batch."""
    small = part.small_sizes or part.sizes
    n = len(small)
    shapes = [
        ("square", (5,) * n, 3),
        ("distinct", tuple(range(n + 4, 4, -1)) if n > 1 else (5,), 2),
        ("width1", (1, 3) if n == 2 else (3, *[1] * (n - 2), 3), 1),
        ("odd", tuple(range(2 * n + 1, 1, -2)), 5 if n > 2 else 3),
    ]
    return [("small", small, part.batch)] + [s for s in shapes if s[1] != small or s[2] != part.batch]


# Cases ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mnist_test() -> tuple[np.ndarray, np.ndarray] | None:
    from data_loaders import DataError, load_mnist

    try:
        _, (x_test, y_test) = load_mnist()
    except DataError:
        return None
    return x_test, y_test


def known_params(spec, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights scaled to the actual input so every pre-activation is O(1); biases in U(-0.5, 0.5)."""
    params = {}
    h = x.astype(np.float64)
    for name, ls in zip(spec.layer_names(), spec.layers):
        if ls.kind == "dense":
            n_in = h.shape[1]
            rms = float(np.sqrt((h**2).mean())) or 1.0
            W = rng.normal(0.0, 1.0 / (np.sqrt(n_in) * rms), (n_in, ls.units))
            b = rng.uniform(-0.5, 0.5, ls.units)
            params[f"{name}.W"], params[f"{name}.b"] = W, b
            h = h @ W + b
        elif ls.kind == "sigmoid":
            h = sigmoid(h)
        elif ls.kind == "relu":
            h = np.maximum(h, 0)
        elif ls.kind == "tanh":
            h = np.tanh(h)
    return params


def _inputs(part, kind: str, sizes, batch: int, rng) -> tuple[np.ndarray, np.ndarray] | None:
    n_out = sizes[-1]
    if kind == "mnist":
        data = _mnist_test()
        if data is None or sizes[0] != 784 or n_out != 10:
            return None
        from data_loaders import preprocess

        rows = list(MNIST_ROWS[:batch])
        return preprocess(data[0][rows], part.preprocess, "float64"), data[1][rows].astype(np.int64)
    top = 255.0 if part.preprocess == "raw" else 1.0
    x = rng.uniform(0.0, top, (batch, sizes[0]))
    return x, rng.integers(0, n_out, batch)


def _trace(spec, params, x, y) -> Trace:
    with np.errstate(all="ignore"):  # the stability case drives a loss of probabilities to log(0)
        return Network(spec, params).trace(x, y)


def _stable_trace(part, spec, params, x, y) -> Trace:
    """The stability case's reference: for probabilities, the gradients from the logits' loss.

    softmax then cross-entropy of probabilities loses -log(0) = inf at +-1e3 logits, but softmax
    cross-entropy of the logits is the same function, computed stably; the softmax layer's
    dL/d(input) is that loss's gradient, its dL/d(output) and the loss value are left uncompared."""
    if part.loss != "cross_entropy":
        return _trace(spec, params, x, y)
    folded = spec.replace(layers=tuple(spec.layers[:-1]), loss="softmax_cross_entropy")
    logit_trace = _trace(folded, params, x, y)
    outs, _ = Network(spec, params).forward_cached(x, train=True)
    layers = [
        LayerTrace(rec.name, out, rec.grad_out, rec.grad_in, rec.grads) for rec, out in zip(logit_trace.layers, outs)
    ]
    softmax_name = spec.layer_names()[-1]
    layers.append(LayerTrace(softmax_name, outs[-1], None, logit_trace.layers[-1].grad_out, {}))
    return Trace(loss=None, layers=layers)


def build_cases(part, seed: int) -> list[Case]:
    """Every case of `part` (see the module doc), each planned by its format."""
    cases = []
    sweep = part.sweep()
    plan = [(label, sizes, batch, "float64") for label, sizes, batch in sweep]
    plan[1:1] = [("small", sweep[0][1], sweep[0][2], d) for d in part.dtypes if d != "float64"]
    if "float64" not in part.dtypes:
        plan = [p for p in plan if p[0] != "small" or p[3] != "float64"]
    plan += [("mnist", part.sizes, part.batch, d) for d in part.dtypes]
    plan += [("stability", sweep[0][1], sweep[0][2], "float64")]
    for kind, sizes, batch, dtype in plan:
        rng = np.random.default_rng([seed, len(sizes), *sizes, batch, 0 if kind != "mnist" else 1])
        data = _inputs(part, kind, sizes, batch, rng)
        if data is None:
            continue
        x64, y = data
        params = known_params(part.spec(tuple(sizes), "float64"), x64, rng)
        probe_rng = np.random.default_rng([seed, 7, len(cases)])  # probe inputs of their own
        cases.append(make_case(part, kind, sizes, dtype, x64, y, params, probe_rng))
    return cases


def notes(part, cases: list) -> list[str]:
    """What the feedback says about cases left out: no MNIST rows on this machine."""
    return [] if any(c.kind == "mnist" for c in cases) else [MNIST_NOTE]


def make_case(part, kind: str, sizes, dtype: str, x64, y, params, probe_rng) -> Case:
    """One case from its float64 inputs, labels and parameters: the stability scaling (kind
    "stability"), the reference traces, and the probes and expected values (the format's `plan`)."""
    fmt = format_modules.get(part.format)
    spec64 = part.spec(tuple(sizes), "float64")
    params = dict(params)
    if kind == "stability":
        logits = (
            Network(spec64, params).forward(x64)
            if part.loss == "softmax_cross_entropy"
            else _logits(spec64, params, x64)
        )
        last = [n for n, ls in zip(spec64.layer_names(), spec64.layers) if ls.kind == "dense"][-1]
        peak = logits.flat[np.abs(logits).argmax()]
        scale = STABILITY_LOGIT / peak  # the largest logit becomes +1e3 (exp overflows past ~709)
        logits = logits * scale
        params[f"{last}.W"] = params[f"{last}.W"] * scale
        params[f"{last}.b"] = params[f"{last}.b"] * scale
        y = np.argmin(logits, axis=1)  # the worst case: the true class has the smallest logit
    spec = part.spec(tuple(sizes), dtype)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = x64.astype(dtype)
    trace = _stable_trace(part, spec, params, x, y) if kind == "stability" else _trace(spec, params, x, y)
    rows = fmt.STEP_ROWS  # the training step's batch: None, every row; 1, one sample (NeuralNet.train)
    step_x, step_y = (x[:rows], y[:rows]) if rows else (x, y)
    step_trace = trace if kind == "stability" else _trace(spec, params, step_x, step_y)  # no step check there
    case = Case(f"{kind}-{dtype}", kind, dtype, spec, params, x, y, trace, step_x, step_y, step_trace)
    fmt.plan(part, case, probe_rng)
    return case


def _logits(spec, params, x) -> np.ndarray:
    """The input of the final softmax layer."""
    outs, _ = Network(spec, params).forward_cached(x, train=True)
    return outs[-2]


def diagnose(part, case: Case, exp, yours: np.ndarray) -> Diagnosis | None:
    """The hypotheses of grading/diagnose.py, computed from the tensor's RefView."""
    with np.errstate(all="ignore"):
        return diagnose_view(exp.key.tensor, yours, exp.view, expected=exp.value, key=exp.key)
