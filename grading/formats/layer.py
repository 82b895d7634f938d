"""The layer format (the notebook's Dense / ReLU classes): built-in assignment `layer-api`.

A student writes layer classes with forward(input) and backward(input, grad_output), backward
returning dL/d(input) and updating the layer's own weights and biases in place, a per-sample
softmax cross-entropy of the logits and its gradient, and the notebook's forward(network, X) and
train(network, X, y). Each layer is probed alone, on an input and a dL/d(output) drawn for it (not
the reference chain's); its dW and db are read back from the update at learning rate 1.
"""

from __future__ import annotations

import numpy as np

from grading.adapters import (
    PROBE_LR,
    Expected,
    Key,
    Problem,
    _dense_names,
    _entry,
    _index,
    _local_view,
    _param,
    _probe,
    _rand,
    _random_logits,
    _read_back,
    _result,
    _view,
)
from grading.adapters import (
    observe as _observe,
)
from grading.formats import _mlp
from grading.formats._mlp import build_cases, diagnose, notes, sweep  # noqa: F401 (this format's hooks)
from grading.shrink import mlp_candidates as shrink_candidates  # noqa: F401
from grading.shrink import mlp_case as shrink_case  # noqa: F401
from grading.shrink import probe_inputs as shrink_inputs  # noqa: F401
from reference.losses import SoftmaxCrossEntropy
from reference.network import Network

NAME = "layer"
TITLE = "Dense / activation layer classes with forward and backward, a softmax cross-entropy of the logits"
CHECKS = (
    "forward",
    "loss",
    "loss_gradient",
    "backward",
    "weight_gradients",
    "bias_gradients",
    "network_forward",
    "training_step",
    "stability",
)
NAMES = {
    "dense": "Dense",
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "loss": "softmax_crossentropy_with_logits",
    "loss_grad": "grad_softmax_crossentropy_with_logits",
    "forward": "forward",
    "train": "train",
    "weights": "weights",
    "biases": "biases",
}
DRIVER = _mlp.SHARED_DRIVER  # the notebook formats' shared driver, grading/drivers/api.py
NETWORK = True  # parse_options fills Part's network fields (assignment.NETWORK_FIELDS)
STEP_ROWS = None  # train(network, X, y) on the whole batch


def parse_options(raw: dict, where: str, source: str) -> dict:
    return _mlp.parse_options(raw, where, source, NAME)


def validate(part, where: str, source: str) -> None:
    _mlp.validate(part, where, source)


def needed_names(part) -> tuple[str, ...]:
    n = part.names
    names = [n["dense"], *(n[a] for a in set(part.activations)), n["loss"], n["loss_grad"]]
    if "network_forward" in part.check_names or "training_step" in part.check_names:
        names += [n["forward"], n["train"]]
    return tuple(names)


def plan(part, case, rng) -> None:
    """Every layer's forward and backward on inputs of their own, the loss and its gradient on
    logits of their own, then (outside the stability case) forward(network, X) and one train step."""
    n = part.names
    stab = case.kind == "stability"
    B = case.x.shape[0]
    net = Network(case.spec, case.params)
    names, specs = case.spec.layer_names(), case.spec.layers
    layer_specs, forwards, backwards = [], [], []  # in computation order: forward, loss, back from the loss
    for i, (name, ls, layer) in enumerate(zip(names, specs, net.layers)):
        cls = n[ls.kind]
        width = case.x.shape[1] if i == 0 else layer_specs[-1]["n_out"]
        kind = ls.kind if ls.kind != "dense" else "after"
        # forward and backward each get inputs of their own (the first layer: the network's input)
        x, xb = (case.x, case.x) if i == 0 else (_rand(rng, (B, width), case.dtype, kind) for _ in range(2))
        out, _ = layer.forward(x)
        out_b, cache = layer.forward(xb)
        g = (_rand(rng, out.shape, case.dtype) / B).astype(case.dtype)
        grad_in, grads = layer.backward(g, cache)
        item = {"name": name, "kind": ls.kind, "n_out": out.shape[1]}
        if ls.kind == "dense":
            item.update(n_in=width, W=case.params[f"{name}.W"], b=case.params[f"{name}.b"])
        layer_specs.append(item)
        common = {"names": dict(n), "lr": PROBE_LR}
        _probe(case, f"{cls}.forward", "layer_forward", common, {**item, "x": x})
        _probe(case, f"{cls}.backward", "layer_backward", common, {**item, "x": xb, "grad_out": g})
        view = _local_view(case, name, ls.kind, x, out, None, None, {})
        forwards.append(Expected(Key("forward", f"{cls}.forward", f"{name}.out", name, "out"), out, view, "forward"))
        view = _local_view(case, name, ls.kind, xb, out_b, g, grad_in, grads)
        back = []
        if ls.kind == "dense":
            for p, check in (("W", "weight_gradients"), ("b", "bias_gradients")):
                key = Key(check, f"{cls}.backward", f"{name}.d{p}", name, f"d{p}")
                back.append(Expected(key, grads[p], view, "gradient"))
        key = Key("backward", f"{cls}.backward", f"{name}.grad_in", name, "grad_in")
        backwards.append([*back, Expected(key, grad_in, view, "gradient")])
    last = names[-1]
    logits, labels = _random_logits(rng, B, case.spec.n_out, case.dtype, stab)
    value, grad = SoftmaxCrossEntropy(part.reduction).value_and_grad(logits, labels)
    args = {"logits": logits, "labels": labels}
    _probe(case, n["loss"], "loss_call", {"name": n["loss"]}, args)
    _probe(case, n["loss_grad"], "loss_call", {"name": n["loss_grad"]}, args)
    view = _local_view(case, last, specs[-1].kind, logits, logits, grad, None, {})
    case.expected += [
        *forwards,
        Expected(Key("loss", n["loss"], "loss", None, "loss"), np.asarray(value), None, "loss"),
        Expected(Key("loss_gradient", n["loss_grad"], f"{last}.grad_out", last, "grad_out"), grad, view, "gradient"),
        *(e for layer in reversed(backwards) for e in layer),
    ]
    if stab or not {"network_forward", "training_step"} & set(part.check_names):
        return
    net_case = {"layers": layer_specs, "x": case.step_x, "y": case.step_y, "lr": part.learning_rate}
    fwd, train = f"{n['forward']}(network, X)", f"{n['train']}(network, X, y)"
    view = _view(case, "step", part.learning_rate)
    if "network_forward" in part.check_names:
        _probe(case, fwd, "layer_network_forward", {"names": dict(n)}, net_case)
        for name, rec in zip(names, case.step_trace.layers):
            key = Key("network_forward", fwd, f"network: {name}.out", name, "out")
            case.expected.append(Expected(key, rec.out, view, "forward"))
    if "training_step" in part.check_names:
        _probe(case, train, "layer_train", {"names": dict(n)}, net_case)
        for d in reversed(_dense_names(case.spec)):  # backprop's order: the last layer's update first
            for p in ("W", "b"):
                new = case.params[f"{d}.{p}"] - part.learning_rate * case.step_trace[d].grads[p]
                case.expected.append(
                    Expected(Key("training_step", train, f"step: {d}.{p}", d, p), new, view, "parameters")
                )


def observe(part, case, results: dict) -> dict:
    return _observe(part, case, results, extract)


def extract(part, case, exp: Expected, record, items: dict[str, int]):
    """The tensor of `exp` from its call's record for this case (see adapters.observe)."""
    key = exp.key
    if key.check == "forward":  # one layer's forward(input)
        return _result(_entry(record, _index(case, key), key.function), key.function)
    if key.check in ("backward", "weight_gradients", "bias_gradients"):  # one layer's backward
        entry = _entry(record, _index(case, key), key.function)
        if isinstance(entry, Problem) or not isinstance(entry, dict):
            return entry if isinstance(entry, Problem) else Problem(f"{key.function}: no result record")
        backward = _result(entry.get("backward"), key.function)
        if key.field == "grad_in" or isinstance(backward, Problem):
            return backward
        params = _result(entry.get("params"), "reading parameters")
        p = key.field[1:]
        return _read_back(key, case.params[f"{key.layer}.{p}"], _param(params, p, key), PROBE_LR)
    if key.field == "loss":
        losses = _result(_entry(record, 0, key.function), key.function)
        if isinstance(losses, Problem):
            return losses
        if not isinstance(losses, np.ndarray) or losses.shape != (len(case.y),):
            shape = losses.shape if isinstance(losses, np.ndarray) else type(losses).__name__
            return Problem(f"{key.function} returned {shape}; expected one loss per sample, shape ({len(case.y)},)")
        if losses.dtype.kind not in "iuf":
            return Problem(f"{key.function} returned dtype {losses.dtype}, expected numbers")
        return losses.mean() if part.reduction == "mean" else losses.sum()
    if key.field == "grad_out":
        return _result(_entry(record, 0, key.function), key.function)
    if key.check == "network_forward":
        outs = _result(_entry(record, 0, key.function), key.function)
        if isinstance(outs, Problem):
            return outs
        names = case.spec.layer_names()
        if not isinstance(outs, list | tuple) or len(outs) != len(names):
            count = len(outs) if isinstance(outs, list | tuple) else type(outs).__name__
            return Problem(f"{key.function} returned {count} activations for {len(names)} layers")
        return outs[names.index(key.layer)]
    # training step: the parameters of every layer after train(network, X, y)
    params = _result(_entry(record, 0, key.function), key.function)
    if isinstance(params, Problem):
        return params
    i = case.spec.layer_names().index(key.layer)
    if not isinstance(params, list) or i >= len(params):
        return Problem(f"{key.function}: the parameters after the step could not be read back")
    return _param(_result(params[i], "reading parameters"), key.field, key)


# The counterexample (grading/shrink.py) ---------------------------------------------------------

FORMULAS = {
    ("dense", "out"): "x @ W + b",
    ("relu", "out"): "max(x, 0)",
    ("sigmoid", "out"): "1 / (1 + exp(-x))",
    ("tanh", "out"): "tanh(x)",
    ("dense", "dW"): "x.T @ grad_out",
    ("dense", "db"): "grad_out.sum(axis=0)",
    ("dense", "grad_in"): "grad_out @ W.T",
    ("relu", "grad_in"): "grad_out * (x > 0)",
    ("sigmoid", "grad_in"): "grad_out * s * (1 - s), s = 1 / (1 + exp(-x))",
    ("tanh", "grad_in"): "grad_out * (1 - tanh(x)**2)",
}


def formula(part, case, key: Key) -> str | None:
    """One layer's equation, in the probe's names (None: shrink.py's for the network and the step)."""
    if key.tensor.startswith(("network:", "step:")):
        return None
    if key.field == "loss":
        return "log(sum(exp(logits), axis=1)) - logits[i, labels[i]]  (per sample)"
    if key.field == "grad_out":
        return "(softmax(logits) - onehot(labels))" + (" / batch" if part.reduction == "mean" else "")
    kind = None
    if key.layer is not None and key.layer in case.spec.layer_names():
        kind = case.spec.layers[case.spec.layer_names().index(key.layer)].kind
    return FORMULAS.get((kind, key.field))
