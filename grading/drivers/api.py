"""Trusted driver: runs INSIDE the sandboxed child, calls the submission's API, returns plain values.

Loaded by grading.sandbox.run_call(submission, <this file>, function, kwargs): each public function
here is `function(module, **kwargs)` with `module` the submission. It imports numpy and the
standard library only (nothing of the project is importable in the child) and compares nothing:
it sets the weights and inputs it is given, calls the student's code, and returns what came back.
Every comparison happens in the grader's process; the notebook formats share it (grading/formats/).

Everything it is given is an input of the student's function (weights, a probe input, labels, a
dL/d(output) drawn at random for that layer alone): no expected answer is ever sent here
(the formats' plan). Each driver call covers ONE student function over every case, so a
crash, hang or exit (the sandbox's verdict for the whole call) costs only that function's tensors.
A student's exception on one item becomes data, {"error": "...", "traceback": "..."}, so the other
items of the call still run. What this returns is checked again in the grader: a submission can
patch this module from inside, so nothing here is trusted there.

    layer_forward          Dense / activation layers, each alone: forward(input)
    layer_backward         each alone: backward(input, grad_output), the parameters read back
    loss_call              the loss or its gradient on (logits, labels)
    layer_network_forward  the notebook's forward(network, X)
    layer_train            train(network, X, y), the parameters read back
    function_feed_forward  feed_forward_sample(sample, y) and the weights and biases after it
    unit_call              sigmoid / dsigmoid / softmax / cross_entropy_loss on their own inputs
    function_train         train_one_sample at each rate, weights read back
    class_call             NeuralNet / LogisticRegression: forward, loss, grad_loss or train
"""

from __future__ import annotations

import traceback

import numpy as np


def _tb(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(line for line in lines if "drivers" not in line or "File" not in line)[-4000:]


def _array(value, what: str) -> np.ndarray:
    """The student's value as a numeric ndarray (a copy); a clear error for anything else."""
    try:
        a = np.array(value, copy=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} returned {type(value).__name__}, which is not an array of numbers ({e})") from None
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{what} returned {type(value).__name__} of dtype {a.dtype}, expected numbers")
    return a


def _call(what: str, fn, *args, **kwargs) -> dict:
    """{"value": fn(...)} or {"error": ..., "traceback": ...}: one failing call does not stop the probe."""
    try:
        return {"value": fn(*args, **kwargs)}
    except Exception as e:  # the student's error is the result of this call; it is reported
        return {"error": f"{what} raised {type(e).__name__}: {e}", "traceback": _tb(e)}


def _invoke(obj, attr: str, *args):
    """obj.attr(*args); a missing attribute is the student's error like any other."""
    if not hasattr(obj, attr):
        owner = "the submission" if type(obj).__name__ == "module" else f"class {type(obj).__name__}"
        raise AttributeError(f"{owner} defines no {attr!r}")
    return getattr(obj, attr)(*args)


def _api(module, name: str, what: str):
    if not hasattr(module, name):
        raise AttributeError(f"the submission defines no {what} named {name!r}")
    return getattr(module, name)


def _as_array_result(result: dict, what: str) -> dict:
    if "value" in result:
        try:
            result["value"] = _array(result["value"], what)
        except TypeError as e:
            return {"error": str(e), "traceback": ""}
    return result


# Layer API --------------------------------------------------------------------------------------


def _make_layer(module, names: dict, spec: dict, lr: float):
    """Dense(n_in, n_out, learning_rate=lr) with the given weights, or an activation layer."""
    if spec["kind"] == "dense":
        cls = _api(module, names["dense"], "class")
        try:
            layer = cls(spec["n_in"], spec["n_out"], learning_rate=lr)
        except TypeError:  # no learning_rate keyword: construct, then set the attribute
            layer = cls(spec["n_in"], spec["n_out"])
            layer.learning_rate = lr
        setattr(layer, names["weights"], spec["W"].copy())
        setattr(layer, names["biases"], spec["b"].copy())
        return layer
    return _api(module, names[spec["kind"]], "class")()


def _read_params(layer, names: dict) -> dict:
    return {
        key: _array(getattr(layer, attr, None), f"layer.{attr}")
        for key, attr in (("W", names["weights"]), ("b", names["biases"]))
    }


def _each_layer(module, names: dict, lr: float, cases: list, run, failed=lambda made: made) -> list:
    """run(layer, spec) on a freshly made layer for every probe spec of every case; where the layer
    cannot be made, failed(that error) is the entry."""
    results = []
    for items in cases:
        out = []
        for spec in items:
            made = _call(f"constructing {spec['kind']}", _make_layer, module, names, spec, lr)
            out.append(failed(made) if "error" in made else run(made["value"], spec))
        results.append(out)
    return results


def layer_forward(module, names: dict, lr: float, cases: list) -> list:
    """Each layer alone on its own probe input: forward(input)."""

    def run(layer, spec):
        what = f"{spec['name']}.forward"
        return _as_array_result(_call(what, layer.forward, spec["x"].copy()), what)

    return _each_layer(module, names, lr, cases, run)


def layer_backward(module, names: dict, lr: float, cases: list) -> list:
    """Each layer alone: backward(input, grad_output) on inputs of its own; parameters read back."""

    def run(layer, spec):
        what = f"{spec['name']}.backward"
        backward = _as_array_result(_call(what, layer.backward, spec["x"].copy(), spec["grad_out"].copy()), what)
        record = {"backward": backward}
        if spec["kind"] == "dense" and "value" in backward:
            record["params"] = _call("reading parameters", _read_params, layer, names)
        return record

    return _each_layer(module, names, lr, cases, run, failed=lambda made: {"backward": made})


def loss_call(module, name: str, cases: list) -> list:
    """The loss (per sample) or its gradient, on logits and labels of its own."""
    fn = _call(f"looking up {name}", _api, module, name, "function")
    if "error" in fn:
        return [[fn for _ in items] for items in cases]
    return [
        [_as_array_result(_call(name, fn["value"], c["logits"].copy(), c["labels"].copy()), name) for c in items]
        for items in cases
    ]


def _network(module, names: dict, specs: list, lr: float) -> list:
    return [_make_layer(module, names, spec, lr) for spec in specs]


def _forward_list(module, names: dict, network: list, x: np.ndarray) -> list:
    outs = _api(module, names["forward"], "function")(network, x)
    return [_array(o, f"{names['forward']}(network, X)[{i}]") for i, o in enumerate(outs)]


def _each(cases: list, one) -> list:
    """Per case, per item sent: one(item)."""
    return [[one(item) for item in items] for items in cases]


def layer_network_forward(module, names: dict, cases: list) -> list:
    """The notebook's own forward(network, X)."""

    def one(case):
        built = _call("building the network", _network, module, names, case["layers"], case["lr"])
        if "error" in built:
            return built
        return _call(f"{names['forward']}(network, X)", _forward_list, module, names, built["value"], case["x"].copy())

    return _each(cases, one)


def layer_train(module, names: dict, cases: list) -> list:
    """One train(network, X, y) at the case's rate; every layer's parameters read back."""

    def one(case):
        built = _call("building the network", _network, module, names, case["layers"], case["lr"])
        if "error" in built:
            return built
        network = built["value"]
        what = f"{names['train']}(network, X, y)"
        train = _call(what, _invoke, module, names["train"], network, case["x"].copy(), case["y"].copy())
        if "error" in train:
            return train
        params = [
            _call("reading parameters", _read_params, layer, names) if spec["kind"] == "dense" else {"value": {}}
            for layer, spec in zip(network, case["layers"])
        ]
        return {"value": params}

    return _each(cases, one)


# Function API ------------------------------------------------------------------------------------


def _set_globals(module, names: dict, case: dict) -> None:
    setattr(module, names["weights"], [w.copy() for w in case["W"]])
    setattr(module, names["biases"], [b.copy() for b in case["b"]])


def _read_globals(module, names: dict) -> dict:
    ws, bs = getattr(module, names["weights"]), getattr(module, names["biases"])
    return {
        "W": [_array(w, f"{names['weights']}[{i}]") for i, w in enumerate(ws)],
        "b": [_array(b, f"{names['biases']}[{i}]") for i, b in enumerate(bs)],
    }


def _feed_forward(module, names: dict, x: np.ndarray, y: int) -> dict:
    out = _api(module, names["forward"], "function")(x, y)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise TypeError(f"{names['forward']} returned {type(out).__name__}, expected (loss, one_hot_guess)")
    return {
        "loss": _array(out[0], f"{names['forward']}: the loss"),
        "guess": _array(out[1], f"{names['forward']}: the guess"),
        "params_after": _call("reading weights and biases", _read_globals, module, names),
    }


def function_feed_forward(module, names: dict, cases: list) -> list:
    """feed_forward_sample(sample, y) from known weights; the weights and biases after it."""

    def one(case):
        _set_globals(module, names, case)
        return _call(names["forward"], _feed_forward, module, names, case["x"].copy(), int(case["y"]))

    return _each(cases, one)


def unit_call(module, name: str, cases: list) -> list:
    """A helper function (sigmoid, dsigmoid, softmax, cross_entropy_loss) on each argument list."""
    fn = _call(f"looking up {name}", _api, module, name, "function")
    results = []
    for items in cases:
        if "error" in fn:
            results.append([fn for _ in items])
            continue
        results.append([_as_array_result(_call(name, fn["value"], *[a.copy() for a in args]), name) for args in items])
    return results


def function_train(module, names: dict, cases: list) -> list:
    """train_one_sample(sample, y, rate) from known weights, for each rate; weights read back."""

    def one(case):
        per_rate = []
        for lr in case["rates"]:
            _set_globals(module, names, case)
            train = _call(names["train"], _invoke, module, names["train"], case["x"].copy(), int(case["y"]), lr)
            if "value" in train:
                train = _call("reading weights and biases", _read_globals, module, names)
            per_rate.append(train)
        return per_rate

    return _each(cases, one)


# Class API ---------------------------------------------------------------------------------------


def _instance(module, names: dict, case: dict):
    cls = _api(module, names["class"], "class")
    obj = cls(*case["sizes"])
    for attr, value in case["params"].items():
        setattr(obj, names[attr], value.copy())
    return obj


def _read_attrs(obj, names: dict, attrs: list) -> dict:
    return {a: _array(getattr(obj, names[a]), f"self.{names[a]}") for a in attrs}


def _grads(value, keys: list, names: dict) -> dict:
    """grad_loss's result: a dict by the parameter names (class) or a tuple in `keys` order."""
    if isinstance(value, dict):
        missing = [names[k] for k in keys if names[k] not in value]
        if missing:
            raise KeyError(f"grad_loss returned a dict without {missing} (keys: {sorted(map(str, value))})")
        return {k: _array(value[names[k]], f"grad_loss()[{names[k]!r}]") for k in keys}
    if isinstance(value, tuple | list) and len(value) == len(keys):
        return {k: _array(v, f"grad_loss()[{i}]") for i, (k, v) in enumerate(zip(keys, value))}
    raise TypeError(
        f"grad_loss returned {type(value).__name__}, expected {'a dict' if len(keys) > 2 else 'a tuple (grad_W, grad_b)'} of arrays"
    )


def class_call(module, names: dict, call: str, cases: list) -> list:
    """NeuralNet(n_in, n_hidden, n_out) / LogisticRegression(n_in, n_out) with known parameters; one call."""

    def one(case):
        keys = list(case["params"])
        made = _call(f"{names['class']}(...)", _instance, module, names, case)
        if "error" in made:
            return made
        obj = made["value"]
        if call == "forward":
            return _as_array_result(_call("forward(X)", _invoke, obj, names["forward"], case["X"].copy()), "forward(X)")
        if call == "loss":
            out = _call("loss(X, y)", _invoke, obj, names["loss"], case["X"].copy(), case["y"].copy())
            return _as_array_result(out, "loss(X, y)")
        if call == "grad":
            args = [case["X"].copy()] + (
                [case["y_true"].copy(), case["y_pred"].copy()] if "y_pred" in case else [case["y"].copy()]
            )
            out = _call("grad_loss", _invoke, obj, names["grad"], *args)
            return _call("reading grad_loss's result", _grads, out["value"], keys, names) if "value" in out else out
        out = _call(
            "train(x, y, learning_rate)",
            _invoke,
            obj,
            names["train"],
            case["x_row"].copy(),
            int(case["y_row"]),
            case["lr"],
        )
        return _call("reading parameters", _read_attrs, obj, names, keys) if "value" in out else out

    return _each(cases, one)
