"""Trusted driver of the coursera format: runs INSIDE the sandboxed child (numpy and the standard library only).

Loaded by grading.sandbox like grading/drivers/api.py: each public function is `function(module, **kwargs)`
with `module` the submission, and covers ONE student function over every case (`cases`: per case, the
items the grader planned). It sets nothing up but the probe's inputs, calls the student's code, and
returns what came back, per item {"value": {output name: array | {"error": ...}}} or {"error": ...,
"traceback": ...}: a student's exception on one item is data, the other items still run. No expected
answer reaches it, and nothing it returns is trusted by the grader (grading/formats/coursera.py).

The caches are the student's own: a backward function gets the cache its forward function made from
the same item's inputs, in this call (linear_backward <- linear_forward, linear_activation_backward <-
linear_activation_forward, L_model_backward <- L_model_forward's AL and caches); they never leave
the child.

    forward_call   linear_forward(A_prev, W, b) / linear_activation_forward(A_prev, W, b, activation)
    unit_call      compute_cost(AL, Y), relu_backward(dA, Z), sigmoid_backward(dA, Z)
    backward_call  the forward on the item's inputs for its cache, then backward(dZ or dA, cache[, activation])
    model_forward  L_model_forward(X, parameters): AL and len(caches)
    model_backward L_model_forward(X, parameters), then L_model_backward(AL, Y, caches): the grads asked for
    update_call    update_parameters twice (the second from the first's result), the parameters read back

The course's notebook imports its helpers from `dnn_utils` (sigmoid, relu, sigmoid_backward,
relu_backward). That module is not the student's work and is not on the sandbox's path, so a stand-in
with the same functions (written here, from their documented behaviour) is registered under that
name before the submission is imported; a submission that defines its own is graded on its own.
"""

from __future__ import annotations

import sys
import traceback
import types

import numpy as np

FORWARD_OF = {"linear_backward": "linear_forward", "linear_activation_backward": "linear_activation_forward"}
TRIPLE = ("dA_prev", "dW", "db")


def _tb(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(line for line in lines if "coursera_driver" not in line)[-4000:]


def _error(what: str, e: BaseException) -> dict:
    return {"error": f"{what} raised {type(e).__name__}: {e}", "traceback": _tb(e)}


def _array(value, what: str) -> np.ndarray:
    """The student's value as a numeric ndarray (a copy); a clear error for anything else."""
    try:
        a = np.array(value, copy=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is {type(value).__name__}, which is not an array of numbers ({e})") from None
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{what} is {type(value).__name__} of dtype {a.dtype}, expected numbers")
    return a


def _output(value, what: str) -> dict:
    try:
        return {"value": _array(value, what)}
    except TypeError as e:
        return {"error": str(e)}


def _fn(module, names: dict, key: str):
    name = names[key]
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"the submission defines no function named {name!r}")
    return fn


def _copy(value):
    """A fresh copy of an input (arrays, dicts of arrays, lists), so one call cannot alter the next's."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _pair(value, name: str, first: str):
    """(out, cache) as the notebook's forward functions return it."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"{name} returned {type(value).__name__}, expected a pair ({first}, cache)")
    return value[0], value[1]


def _each(cases: list, one) -> list:
    out = []
    for items in cases:
        row = []
        for item in items:
            try:
                row.append(one(item))
            except Exception as e:  # the student's error (or a value that is not what the API returns): data
                row.append(_error(getattr(e, "what", "the call"), e))
        out.append(row)
    return out


def _call(what: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        e.what = what  # which call raised, for _each's record
        raise


def forward_call(module, names: dict, function: str, cases: list) -> list:
    """linear_forward / linear_activation_forward on each item's (A_prev, W, b[, activation]): out only."""
    first = "Z" if function == "linear_forward" else "A"

    def one(item):
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        value = _call(names[function], fn, *_copy(item["args"]))
        out, _ = _call(f"reading {names[function]}'s result", _pair, value, names[function], first)
        return {"value": {first: _output(out, f"{names[function]}'s {first}")}}

    return _each(cases, one)


def unit_call(module, names: dict, function: str, cases: list) -> list:
    """compute_cost(AL, Y), relu_backward(dA, Z), sigmoid_backward(dA, Z): their one output."""

    def one(item):
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        value = _call(names[function], fn, *_copy(item["args"]))
        return {"value": {item["outputs"][0]: _output(value, f"{names[function]}'s result")}}

    return _each(cases, one)


def backward_call(module, names: dict, function: str, cases: list) -> list:
    """The forward on the item's inputs for the student's own cache, then backward(d, cache[, activation])."""
    forward = FORWARD_OF[function]

    def one(item):
        fwd = _call(f"looking up {names[forward]}", _fn, module, names, forward)
        made = _call(f"{names[forward]} (making the cache for {names[function]})", fwd, *_copy(item["forward"]))
        _, cache = _call(f"reading {names[forward]}'s result", _pair, made, names[forward], "out")
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        value = _call(names[function], fn, *_copy(item["args"][:1]), cache, *item["args"][1:])
        if not isinstance(value, tuple | list) or len(value) != 3:
            raise TypeError(f"{names[function]} returned {type(value).__name__}, expected (dA_prev, dW, db)")
        return {"value": {k: _output(v, f"{names[function]}'s {k}") for k, v in zip(TRIPLE, value)}}

    return _each(cases, one)


def _caches_len(caches, name: str) -> dict:
    try:
        return {"value": np.asarray(len(caches))}
    except Exception as e:  # a caches object without a length: that output's error
        return _error(f"len() of {name}'s caches", e)


def model_forward(module, names: dict, function: str, cases: list) -> list:
    """L_model_forward(X, parameters): AL and the number of caches."""

    def one(item):
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        value = _call(names[function], fn, _copy(item["X"]), _copy(item["parameters"]))
        AL, caches = _call(f"reading {names[function]}'s result", _pair, value, names[function], "AL")
        return {
            "value": {"AL": _output(AL, f"{names[function]}'s AL"), "len(caches)": _caches_len(caches, names[function])}
        }

    return _each(cases, one)


def model_backward(module, names: dict, function: str, cases: list) -> list:
    """L_model_forward(X, parameters), then L_model_backward(AL, Y, caches); grads[key] for the keys asked."""
    forward = "L_model_forward"

    def one(item):
        fwd = _call(f"looking up {names[forward]}", _fn, module, names, forward)
        made = _call(f"{names[forward]} (making AL and the caches)", fwd, _copy(item["X"]), _copy(item["parameters"]))
        AL, caches = _call(f"reading {names[forward]}'s result", _pair, made, names[forward], "AL")
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        grads = _call(names[function], fn, AL, _copy(item["Y"]), caches)
        return {"value": _read_dict(grads, item["keys"], f"{names[function]}'s grads")}

    return _each(cases, one)


def _read_dict(value, keys: list, what: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{what}: a {type(value).__name__} came back, expected a dict")
    out = {}
    for k in keys:
        if k in value:
            out[k] = _output(value[k], f"{what}[{k!r}]")
        else:
            out[k] = {"error": f"{what} has no {k!r} (keys: {sorted(map(str, value))[:12]})"}
    return out


def update_call(module, names: dict, function: str, cases: list) -> list:
    """update_parameters at each rate, the second call on what the first returned; "step:key" -> array."""

    def one(item):
        fn = _call(f"looking up {names[function]}", _fn, module, names, function)
        params = _copy(item["parameters"])
        out = {}
        for s, (grads, rate) in enumerate(zip(item["grads"], item["rates"]), start=1):
            params = _call(f"{names[function]} (step {s})", fn, params, _copy(grads), rate)
            read = _read_dict(params, item["keys"], f"the parameters {names[function]} returned (step {s})")
            out.update({f"{s}:{k}": v for k, v in read.items()})
            if not all("value" in v for v in read.values()):
                break
        return {"value": out}

    return _each(cases, one)


# The course's dnn_utils helpers, for submissions that import them ---------------------------------


def _dnn_utils() -> types.ModuleType:
    module = types.ModuleType("dnn_utils", "Stand-in for the course's dnn_utils (sigmoid, relu and their backward).")

    def sigmoid(Z):
        e = np.exp(-np.abs(Z))
        A = np.where(Z >= 0, 1.0, e) / (1.0 + e)
        return A, Z

    def relu(Z):
        return np.maximum(0, Z), Z

    def sigmoid_backward(dA, cache):
        s = sigmoid(cache)[0]
        return dA * s * (1 - s)

    def relu_backward(dA, cache):
        dZ = np.array(dA, copy=True)
        dZ[cache <= 0] = 0
        return dZ

    for f in (sigmoid, relu, sigmoid_backward, relu_backward):
        setattr(module, f.__name__, f)
    return module


for _name in ("dnn_utils", "dnn_utils_v2", "dnn_app_utils_v3"):
    sys.modules.setdefault(_name, _dnn_utils())
