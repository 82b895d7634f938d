"""The class format (the notebook's NeuralNet): built-in `class-api`, part "mlp"; and the class API
the logistic format (LogisticRegression, grading/formats/logistic.py) shares.

A student writes a class NeuralNet(n_in, n_hidden, n_out) with attributes W_h, b_h, W_o, b_o, and
forward(X) -> probabilities (a sigmoid hidden layer, a softmax output), loss(X, y) (the summed
negative log-likelihood), grad_loss(X, y) -> the four gradients (a dict by attribute name, or a
tuple in that order) and train(x, y, learning_rate), one sample's step. The grader sets the
parameters (known weights) on an instance and calls one method per driver call.
"""

from __future__ import annotations

import numpy as np

from grading.adapters import (
    Expected,
    Key,
    Problem,
    _dense_names,
    _entry,
    _local_view,
    _probe,
    _random_logits,
    _result,
    _view,
)
from grading.adapters import (
    observe as _observe,
)
from grading.formats import _mlp
from grading.formats._mlp import build_cases, diagnose, notes, sweep  # noqa: F401 (this format's hooks)
from grading.shrink import mlp_candidates as shrink_candidates  # noqa: F401
from grading.shrink import mlp_case
from grading.shrink import probe_inputs as shrink_inputs  # noqa: F401
from reference.layers import softmax
from reference.losses import SoftmaxCrossEntropy, one_hot
from reference.network import Network

NAME = "class"
TITLE = "a NeuralNet class (one sigmoid hidden layer, softmax output) with forward, loss, grad_loss and train"
CHECKS = ("forward", "loss", "weight_gradients", "bias_gradients", "training_step", "stability")
NAMES = {
    "class": "NeuralNet",
    "W_h": "W_h",
    "b_h": "b_h",
    "W_o": "W_o",
    "b_o": "b_o",
    "forward": "forward",
    "loss": "loss",
    "grad": "grad_loss",
    "train": "train",
}
KEYS = ("W_h", "b_h", "W_o", "b_o")  # the parameters, layer by layer
DRIVER = _mlp.SHARED_DRIVER
NETWORK = True  # parse_options fills Part's network fields (assignment.NETWORK_FIELDS)
STEP_ROWS = 1  # train(x, y, learning_rate) takes one sample


def parse_options(raw: dict, where: str, source: str) -> dict:
    return _mlp.parse_options(raw, where, source, NAME, dense_layers=2, logits=False)


def validate(part, where: str, source: str) -> None:
    _mlp.validate(part, where, source)


def needed_names(part) -> tuple[str, ...]:
    return (part.names["class"],)


def plan(part, case, rng) -> None:
    plan_api(part, case, rng, KEYS, predictions=False, trains=True)


def observe(part, case, results: dict) -> dict:
    return _observe(part, case, results, extract)


def extract(part, case, exp: Expected, record, items: dict[str, int]):
    return extract_api(part, case, exp, record, KEYS)


def plan_api(part, case, rng, keys: tuple[str, ...], predictions: bool, trains: bool) -> None:
    """forward(X), loss(X, y) and grad_loss (`predictions`: grad_loss(X, y_true, y_pred) on predictions
    of its own; else grad_loss(X, y) at the reference's), then (`trains`) one train(x, y, rate) step on
    one sample; `keys` the parameters' NAMES keys, layer by layer (W then b)."""
    n = part.names
    stab = case.kind == "stability"
    dense = _dense_names(case.spec)
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
    if not predictions:
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
    if not trains or stab or "training_step" not in part.check_names:
        return
    train = f"{cls}.{n['train']}"
    item = {**model, "x_row": case.step_x[0], "y_row": int(case.step_y[0]), "lr": part.learning_rate}
    _probe(case, train, "class_call", {"names": dict(n), "call": "train"}, item)
    step = _view(case, "step", part.learning_rate)
    for d, p in reversed(targets):
        new = case.params[f"{d}.{p}"] - part.learning_rate * case.step_trace[d].grads[p]
        case.expected.append(Expected(Key("training_step", train, f"step: {d}.{p}", d, p), new, step, "parameters"))


def extract_api(part, case, exp: Expected, record, keys: tuple[str, ...]):
    """The tensor of `exp` from one method call's record (see adapters.observe): the value itself,
    or the gradient / parameter of the key's layer among what came back."""
    key = exp.key
    got = _result(_entry(record, 0, key.function), key.function)
    if isinstance(got, Problem) or key.field in ("out", "loss"):
        return got
    dense = _dense_names(case.spec)
    which = keys[dense.index(key.layer) * 2 + (0 if key.field in ("dW", "W") else 1)]
    if not isinstance(got, dict) or which not in got:
        return Problem(f"{key.function}: no {part.names[which]!r} in what came back ({type(got).__name__})")
    return got[which]


# The counterexample (grading/shrink.py) ---------------------------------------------------------


def shrink_case(part, kind: str, sizes, batch: int, k: int):
    """A small integer candidate whose inputs are nonnegative, like pixels."""
    return mlp_case(part, kind, sizes, batch, k, pixels=True)


def formula(part, case, key: Key) -> str | None:
    """The equation of a class-API tensor (None: shrink.py's for the step)."""
    loss = "mean" if part.reduction == "mean" else "sum"
    return {
        "out": "softmax(h @ W + b), h the hidden activations (X for logistic regression)",
        "loss": f"-{loss} over samples of log p[i, y[i]]",
        "dW": "h.T @ delta, delta = dL/d(logits) = p - onehot(y) at the output, back through W.T and the derivative",
        "db": "delta.sum(axis=0)",
    }.get(key.field)
