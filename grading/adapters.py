"""Adapters: what each format's probes send, what the reference expects back, what came back.

    plan_case(part, case, rng)                 fills case.probes and case.expected (in the GRADER)
    requests(part, cases) -> [ProbeRequest]    one sandboxed driver call per student function
    observe(part, case, results) -> {Key: ndarray | Problem}   case's answers, from the calls' results

No expected answer ever crosses into the sandbox. Every function is probed with inputs of its own:
each layer of the layer format gets an input and a dL/d(output) drawn at random for it alone (not
the reference chain's activations or gradients), the loss functions get random logits, the function
format's sigmoid / dsigmoid / softmax / cross_entropy_loss get random z, logits and probabilities,
and LogisticRegression.grad_loss gets random predictions. Whole-model calls (feed_forward_sample,
NeuralNet.forward, train ...) get only what their API takes: weights, inputs and labels. The
reference runs on the same probe inputs here, in the grader's process, and only here (Expected).

Each driver call covers one student function (Dense.backward, grad_loss, train ...) over every
case, so a crash, hang or kill costs only the tensors that function produces; the sandbox gives
the next call a fresh child. Each compared tensor has a typed name, Key(check, function, tensor,
layer, field), instead of a string parsed back by prefix: `tensor` is what the feedback shows
("dense_2.dW", "step: dense_1.W", "sigmoid(z_1)"), `function` the student function that computed it.

Gradients of code that updates its parameters in place are read back: with known weights and a
known learning rate lr, dL/dW = (W_before - W_after) / lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grading.diagnose import RefView
from reference.layers import softmax
from reference.losses import SoftmaxCrossEntropy, one_hot
from reference.network import Network

DRIVER = Path(__file__).parent / "drivers" / "api.py"
PROBE_LR = 1.0  # the rate gradients are read back at: old - new is dL/dW itself
STABILITY_LOGIT = 1e3


@dataclass(frozen=True)
class Key:
    """The typed name of one compared tensor."""

    check: str  # the check it counts for (the stability case counts everything for "stability")
    function: str  # the student function whose call produced it: "Dense.backward", "NeuralNet.grad_loss"
    tensor: str  # what the feedback calls it: "dense_2.dW", "step: dense_1.W", "softmax(z_out)"
    layer: str | None = None  # the reference layer it belongs to ("dense_2"), None for a whole-model value
    field: str | None = None  # "out", "grad_in", "grad_out", "dW", "db", "W", "b", "loss", ...

    def __str__(self) -> str:
        return self.tensor


@dataclass
class Expected:
    """The reference's value of one tensor on the probe's inputs, and what its diagnosis needs."""

    key: Key
    value: np.ndarray
    view: RefView | None  # the reference quantities the hypotheses are computed from; None: none apply
    quantity: str  # the tolerance policy's quantity (oracles/compare.py)
    finite_only: bool = False  # stability with a loss of probabilities: only finiteness is required
    # a registered format's known bugs: ((bug, text, what the tensor would be under it), ...); see
    # grading.diagnose.diagnose_alternatives. None: the notebook formats' hypotheses (view) apply
    alternatives: tuple | None = None


class Problem(str):
    """Why a tensor has no usable answer (the call raised, was killed, returned the wrong thing)."""


@dataclass(frozen=True)
class ProbeRequest:
    name: str  # the student function it calls ("Dense.backward"): Key.function of what it produces
    function: str  # the driver function
    kwargs: dict
    cases: tuple[int, ...]  # indices of the cases it covers, in order


class Failed:
    """A whole call that produced nothing (the sandbox's verdict)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Failed({self.reason!r})"


def _dense_names(spec) -> list[str]:
    return [n for n, ls in zip(spec.layer_names(), spec.layers) if ls.kind == "dense"]


def _probe(case, label: str, driver: str, common: dict, item) -> None:
    case.probes.setdefault(label, (driver, common, []))[2].append(item)


def _view(case, which: str = "main", lr: float = PROBE_LR, part=None) -> RefView:
    if which == "step":
        return RefView(case.spec, case.params, case.step_x, case.step_y, case.step_trace, lr, case.dtype)
    return RefView(case.spec, case.params, case.x, case.y, case.trace, lr, case.dtype)


def _local_view(case, name: str, kind: str, x, out, grad_out, grad_in, grads) -> RefView:
    """One layer alone on its own probe input: the trace of that layer only."""
    from reference.trace import LayerTrace, Trace

    trace = Trace(loss=None, layers=[LayerTrace(name, out, grad_out, grad_in, dict(grads))])
    return RefView(case.spec, case.params, x, None, trace, PROBE_LR, case.dtype, local=((name, kind),))


def _rand(rng, shape, dtype, kind: str = "any") -> np.ndarray:
    """A probe input: relu inputs kept 0.1 away from the kink; others O(1)."""
    v = rng.normal(0.0, 1.0, shape)
    if kind == "relu":
        v = np.sign(v) * np.maximum(np.abs(v), 0.1)
    elif kind in ("sigmoid", "tanh"):
        v = 1.5 * v
    elif kind == "after":  # the input of a dense layer that follows an activation
        v = rng.uniform(0.0, 1.0, shape)
    return v.astype(dtype)


def _random_logits(rng, batch: int, n: int, dtype, stable: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits of their own, with labels; the stability case's reach +-1e3, labels on the smallest."""
    z = rng.normal(0.0, 2.0, (batch, n))
    y = rng.integers(0, n, batch)
    if stable:
        z = z * (STABILITY_LOGIT / z.flat[np.abs(z).argmax()])  # the largest becomes +1e3: exp overflows
        y = np.argmin(z, axis=1)
    return z.astype(dtype), y.astype(np.int64)


# Planning: inputs and expected values per case ------------------------------------------------------


def plan_case(part, case, rng: np.random.Generator) -> None:
    from grading import formats

    module = formats.get(part.format)
    if module is not None:
        return module.plan(part, case, rng)
    {"class": _plan_class, "logistic": _plan_class}[part.format](part, case, rng)


CLASS_KEYS = {"class": ("W_h", "b_h", "W_o", "b_o"), "logistic": ("W", "b")}


def _plan_class(part, case, rng) -> None:
    n = part.names
    stab = case.kind == "stability"
    dense = _dense_names(case.spec)
    keys = CLASS_KEYS[part.format]
    targets = [(dense[i // 2], "W" if i % 2 == 0 else "b") for i in range(len(keys))]
    sizes = [case.spec.n_in] + [case.params[f"{d}.W"].shape[1] for d in dense]
    model = {"sizes": sizes, "params": {k: case.params[f"{d}.{p}"] for k, (d, p) in zip(keys, targets)}}
    cls = n["class"]
    label = {call: f"{cls}.{n[call]}" for call in ("forward", "loss", "grad")}
    main = _view(case)
    last = case.spec.layer_names()[-1]
    _probe(case, label["forward"], "class_call", {"names": dict(n), "call": "forward"}, {**model, "X": case.x})
    key = Key("forward", label["forward"], f"{last}.out", last, "out")
    case.expected.append(Expected(key, case.trace.layers[-1].out, main, "forward"))
    _probe(case, label["loss"], "class_call", {"names": dict(n), "call": "loss"}, {**model, "X": case.x, "y": case.y})
    loss = np.asarray(case.trace.loss) if case.trace.loss is not None else np.asarray(np.inf)
    case.expected.append(
        Expected(Key("loss", label["loss"], "loss", None, "loss"), loss, main, "loss", finite_only=stab)
    )
    if part.format == "class":
        _probe(
            case, label["grad"], "class_call", {"names": dict(n), "call": "grad"}, {**model, "X": case.x, "y": case.y}
        )
        grads = {(d, p): case.trace[d].grads[p] for d, p in targets}
        views = dict.fromkeys(targets, main)
    else:  # grad_loss(X, y_true, y_pred): predictions of its own, not the reference's probabilities
        logits, _ = _random_logits(rng, len(case.y), case.spec.n_out, case.dtype, stab)
        y_pred = softmax(logits)
        onehot = one_hot(case.y, case.spec.n_out, case.dtype)
        # dL/d(logits) at predictions p: p - onehot (the reference's softmax cross-entropy from the logits)
        _, g = SoftmaxCrossEntropy(part.reduction).value_and_grad(logits, case.y)
        layer = Network(case.spec, case.params).layers[0]
        _, cache = layer.forward(case.x)
        _, layer_grads = layer.backward(g, cache)
        item = {**model, "X": case.x, "y_true": onehot, "y_pred": y_pred}
        _probe(case, label["grad"], "class_call", {"names": dict(n), "call": "grad"}, item)
        grads = {(dense[0], p): layer_grads[p] for p in ("W", "b")}
        view = _local_view(case, dense[0], "dense", case.x, None, g, None, layer_grads)
        views = dict.fromkeys(targets, view)
    for d, p in reversed(targets):  # backprop's order: the output layer first
        key = Key("weight_gradients" if p == "W" else "bias_gradients", label["grad"], f"{d}.d{p}", d, f"d{p}")
        case.expected.append(Expected(key, grads[(d, p)], views[(d, p)], "gradient"))
    if part.format != "class" or stab or "training_step" not in part.check_names:
        return
    train = f"{cls}.{n['train']}"
    item = {**model, "x_row": case.step_x[0], "y_row": int(case.step_y[0]), "lr": part.learning_rate}
    _probe(case, train, "class_call", {"names": dict(n), "call": "train"}, item)
    step = _view(case, "step", part.learning_rate)
    for d, p in reversed(targets):
        new = case.params[f"{d}.{p}"] - part.learning_rate * case.step_trace[d].grads[p]
        case.expected.append(Expected(Key("training_step", train, f"step: {d}.{p}", d, p), new, step, "parameters"))


# Requests ---------------------------------------------------------------------------------------


def requests(part, cases: list) -> list[ProbeRequest]:
    """One driver call per student function, over every case that probes it (in first-use order)."""
    order: dict[str, tuple[str, dict]] = {}
    for case in cases:
        for label, (driver, common, _) in case.probes.items():
            order.setdefault(label, (driver, common))
    out = []
    for label, (driver, common) in order.items():
        idx = tuple(i for i, c in enumerate(cases) if label in c.probes)
        items = [cases[i].probes[label][2] for i in idx]
        out.append(ProbeRequest(label, driver, {**common, "cases": items}, idx))
    return out


# Observing --------------------------------------------------------------------------------------


def observe(part, case, results: dict[str, object], extract=None) -> dict[Key, object]:
    """{Key: what came back (an ndarray, or anything hostile) | Problem}, for every expected Key.

    `results` is {call label: this case's record (a list, one entry per item sent) | Failed}. A key
    with no entry in the answer is the compare step's "no answer", never a pass."""
    got: dict[Key, object] = {}
    items: dict[str, int] = {}
    for exp in case.expected:
        key = exp.key
        record = results.get(key.function)
        if record is None:
            got[key] = Problem(f"{key.function}: not run")
            continue
        if isinstance(record, Failed):
            got[key] = Problem(f"{key.function}: {record.reason}")
            continue
        got[key] = (extract or _extract)(part, case, exp, record, items)
    return got


def _result(entry, what: str):
    """A driver result {"value": ...} | {"error": ...}: the value, or a Problem."""
    if not isinstance(entry, dict):
        return Problem(f"{what}: the driver returned {type(entry).__name__}, expected a result record")
    if "error" in entry:
        return Problem(str(entry["error"]))
    if "value" not in entry:
        return Problem(f"{what}: no result")
    return entry["value"]


def _entry(record, i: int, what: str):
    if not isinstance(record, list) or i >= len(record):
        return Problem(f"{what}: the driver returned no entry {i} ({type(record).__name__})")
    return record[i]


def _index(case, key: Key) -> int:
    """The position of a layer's item among the items its call was sent for this case."""
    items = case.probes[key.function][2]
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key.layer:
            return i
    return 0


def _read_back(key: Key, before: np.ndarray, after, lr: float, squeeze: bool = False):
    """dL/dp = (before - after) / lr, after checking `after` is a numeric array of the parameter's shape."""
    if isinstance(after, Problem):
        return after
    if not isinstance(after, np.ndarray) or after.dtype.kind not in "iuf":
        what = type(after).__name__ if not isinstance(after, np.ndarray) else f"an array of dtype {after.dtype}"
        return Problem(f"{key.tensor}: after the update the parameter is {what}, expected an array of numbers")
    if squeeze and after.size == before.size:
        after = after.reshape(before.shape)
    if after.shape != before.shape:
        return Problem(f"{key.tensor}: after the update the parameter has shape {after.shape}, expected {before.shape}")
    return (before.astype(np.float64) - after.astype(np.float64)) / lr


def _param(value, p: str, key: Key):
    """{"W": ..., "b": ...} -> value[p]; anything else a Problem."""
    if isinstance(value, Problem):
        return value
    if not isinstance(value, dict) or p not in value:
        return Problem(f"{key.tensor}: the parameters read back are {type(value).__name__} without {p!r}")
    return value[p]


def _extract(part, case, exp: Expected, record, items: dict[str, int]):
    key = exp.key
    fmt = part.format
    # class / logistic
    got = _result(_entry(record, 0, key.function), key.function)
    if isinstance(got, Problem) or key.field in ("out", "loss"):
        return got
    keys = CLASS_KEYS[fmt]
    dense = _dense_names(case.spec)
    which = keys[dense.index(key.layer) * 2 + (0 if key.field in ("dW", "W") else 1)]
    if not isinstance(got, dict) or which not in got:
        return Problem(f"{key.function}: no {part.names[which]!r} in what came back ({type(got).__name__})")
    return got[which]


def _field(value, name: str, key: Key):
    if not isinstance(value, dict) or name not in value:
        return Problem(f"{key.function}: no {name} in what came back ({type(value).__name__})")
    return value[name]


def _reshaped(value, like: np.ndarray):
    """The notebook's (1, n) rows accepted for an (n,) tensor: the same numbers."""
    if isinstance(value, np.ndarray) and value.shape != like.shape and value.size == like.size and value.ndim == 2:
        return value.reshape(like.shape)
    return value
