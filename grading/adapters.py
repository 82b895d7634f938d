"""Adapters: what every format's probes send, what the reference expects back, what came back.

    requests(part, cases) -> [ProbeRequest]    one sandboxed driver call per student function
    observe(part, case, results, extract) -> {Key: ndarray | Problem}   case's answers, from the calls' results
    plan_case(part, case, rng)                 a notebook format's `plan` (fills case.probes, case.expected)

The vocabulary the formats (grading/formats/) share: Key, Expected, Problem, ProbeRequest, Failed,
and the helpers that draw probe inputs and read records back. Each format plans its own probes
(the notebook formats: their `plan` in layer.py, function.py, classes.py, logistic.py) and reads
its own tensors back (their `extract`).

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
    """The part's format plans the case (a notebook format's `plan`: grading/formats/)."""
    from grading import formats

    formats.get(part.format).plan(part, case, rng)


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

    `results` is {call label: this case's record (a list, one entry per item sent) | Failed};
    extract(part, case, expected, record, items) reads one tensor from its call's record (default:
    the part's format's `extract`), `items` counting the entries read per call. A key with no entry
    in the answer is the compare step's "no answer", never a pass."""
    if extract is None:
        from grading import formats

        extract = formats.get(part.format).extract
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
        got[key] = extract(part, case, exp, record, items)
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


def _field(value, name: str, key: Key):
    if not isinstance(value, dict) or name not in value:
        return Problem(f"{key.function}: no {name} in what came back ({type(value).__name__})")
    return value[name]


def _reshaped(value, like: np.ndarray):
    """The notebook's (1, n) rows accepted for an (n,) tensor: the same numbers."""
    if isinstance(value, np.ndarray) and value.shape != like.shape and value.size == like.size and value.ndim == 2:
        return value.reshape(like.shape)
    return value
