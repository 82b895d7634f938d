"""Trusted driver of the CS231n format: runs INSIDE the sandboxed child, calls the student's functions.

Loaded by grading.sandbox.run_calls(submission, <this file>, calls); each public function here is
`function(module, **kwargs)` with `module` the submission (one module: a single file, or the course's
cs231n/ folder bundled by grading.formats.cs231n.assemble). numpy and the standard library only;
it compares nothing and is sent no expected answer: the grader gives it inputs, it returns what
the student's code returned (copies, as plain arrays), and grading/formats/cs231n.py compares.

One call of this driver covers ONE student function over every case (grading.adapters.requests):
a crash, hang or exit costs only that function's tensors. A student's exception on one item is
data, {"error": ..., "traceback": ...}, and the other items still run. A cache is opaque: a
backward is always called on the cache its own forward returned on the same inputs, inside this
child (the grader never builds one).

    forward_call     f(*args) -> (out, cache): out                      affine/relu/layernorm/conv/pool/dropout
    backward_call    forward(*args) -> (out, cache); backward(dout, cache) -> the gradients
    loss_call        softmax_loss / svm_loss (x, y) -> (loss, dx)
    batchnorm_sequence  several training-mode calls on one bn_param, then test mode: the outputs and
                     the running statistics read back from bn_param after each call
    update_sequence  next_w, config = rule(w, dw, config) over several steps, config carried
    net_call         FullyConnectedNet(**kwargs) with the given params: loss(X) or loss(X, y)
"""

from __future__ import annotations

import traceback

import numpy as np


def _tb(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(line for line in lines if "cs231n_driver" not in line or "File" not in line)[-4000:]


def _error(what: str, e: BaseException) -> dict:
    return {"error": f"{what} raised {type(e).__name__}: {e}", "traceback": _tb(e)}


def _array(value, what: str) -> np.ndarray:
    """The student's value as a numeric ndarray (a copy); a clear error for anything else."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.copy()
    try:
        a = np.array(value, copy=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is {type(value).__name__}, which is not an array of numbers ({e})") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} is {type(value).__name__} of dtype {a.dtype}, expected real numbers")
    return a


def _fn(module, name: str):
    fn = getattr(module, name, None)
    if fn is None:
        raise AttributeError(f"the submission defines no {name!r}")
    if not callable(fn):
        raise TypeError(f"the submission's {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _copy(value):
    """A fresh copy of an input (arrays, and the dicts and lists of conv_param, bn_param ...)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copy(v) for v in value)
    return value


def _pair(value, what: str, n: int = 2) -> tuple:
    if not isinstance(value, tuple | list) or len(value) != n:
        got = f"a {type(value).__name__}" + (f" of length {len(value)}" if isinstance(value, tuple | list) else "")
        raise TypeError(f"{what} returned {got}, expected a tuple of {n}")
    return tuple(value)


def _each(cases: list, one) -> list:
    return [[one(item) for item in items] for items in cases]


def _all(outputs, result: dict) -> dict:
    """The same error for every output of an item."""
    return {name: result for name in outputs}


def forward_call(module, name: str, cases: list) -> list:
    """name(*args) -> (out, cache) on each item's own inputs: {"out": out}."""

    def one(item):
        try:
            out, _ = _pair(_fn(module, name)(*_copy(item["args"])), name)
            return {"out": {"value": _array(out, f"{name}'s out")}}
        except Exception as e:  # the student's error is this item's result
            return {"out": _error(name, e)}

    return _each(cases, one)


def backward_call(module, forward: str, backward: str, outputs: list, cases: list) -> list:
    """forward(*args) -> (out, cache), then backward(dout, cache): {output name: gradient}."""

    def one(item):
        try:
            _, cache = _pair(_fn(module, forward)(*_copy(item["args"])), forward)
        except Exception as e:
            return _all(outputs, _error(f"{forward} (called for {backward}'s cache)", e))
        try:
            got = _fn(module, backward)(item["dout"].copy(), cache)
        except Exception as e:
            return _all(outputs, _error(backward, e))
        if len(outputs) == 1:
            got = (got,)
        try:
            got = _pair(got, backward, len(outputs))
        except TypeError as e:
            return _all(outputs, {"error": str(e), "traceback": ""})
        out = {}
        for name, value in zip(outputs, got):
            try:
                out[name] = {"value": _array(value, f"{backward}'s {name}")}
            except TypeError as e:
                out[name] = {"error": str(e), "traceback": ""}
        return out

    return _each(cases, one)


def loss_call(module, name: str, cases: list) -> list:
    """name(x, y) -> (loss, dx)."""

    def one(item):
        try:
            loss, dx = _pair(_fn(module, name)(item["x"].copy(), item["y"].copy()), name)
        except Exception as e:
            return _all(("loss", "dx"), _error(name, e))
        out = {}
        for key, value in (("loss", loss), ("dx", dx)):
            try:
                out[key] = {"value": _array(value, f"{name}'s {key}")}
            except TypeError as e:
                out[key] = {"error": str(e), "traceback": ""}
        return out

    return _each(cases, one)


def _read_stat(bn_param, key: str, name: str):
    if not isinstance(bn_param, dict):
        raise TypeError(f"bn_param is a {type(bn_param).__name__} after {name}, expected the dict it was given")
    if key not in bn_param:
        raise KeyError(f"bn_param has no {key!r} after {name} (the running statistics are kept in bn_param)")
    return _array(bn_param[key], f"bn_param[{key!r}]")


def batchnorm_sequence(module, name: str, cases: list) -> list:
    """Training-mode calls on one bn_param (its running statistics read back after each), then test mode."""

    def one(item):
        fn = None
        bn_param = _copy(item["bn_param"])
        out: dict = {}
        for k, x in enumerate(item["xs"], start=1):
            keys = (f"out (call {k})", f"running_mean (call {k})", f"running_var (call {k})")
            try:
                fn = fn or _fn(module, name)
                got, _ = _pair(fn(x.copy(), item["gamma"].copy(), item["beta"].copy(), bn_param), name)
                out[keys[0]] = {"value": _array(got, f"{name}'s out")}
            except Exception as e:
                out.update(_all(keys, _error(f"{name} (training call {k})", e)))
                continue
            for key, stat in zip(keys[1:], ("running_mean", "running_var")):
                try:
                    out[key] = {"value": _read_stat(bn_param, stat, f"training call {k}")}
                except (TypeError, KeyError) as e:
                    out[key] = {"error": str(e), "traceback": ""}
        try:
            if not isinstance(bn_param, dict):
                raise TypeError(f"bn_param became a {type(bn_param).__name__}")
            bn_param["mode"] = "test"
            got, _ = _pair(
                _fn(module, name)(item["test_x"].copy(), item["gamma"].copy(), item["beta"].copy(), bn_param), name
            )
            out["out (test mode)"] = {"value": _array(got, f"{name}'s out")}
        except Exception as e:
            out["out (test mode)"] = _error(f"{name} (test mode)", e)
        return out

    return _each(cases, one)


def update_sequence(module, name: str, cases: list) -> list:
    """next_w, config = name(w, dw, config), step after step, with the config it returned."""

    def one(item):
        out: dict = {}
        w, config = item["w"].copy(), _copy(item["config"])
        steps = len(item["dws"])
        for k, dw in enumerate(item["dws"], start=1):
            try:
                got, config = _pair(_fn(module, name)(w, dw.copy(), config), name)
                w = _array(got, f"{name}'s next_w")
                out[f"next_w (step {k})"] = {"value": w.copy()}
            except Exception as e:
                out.update(_all([f"next_w (step {j})" for j in range(k, steps + 1)], _error(f"{name} (step {k})", e)))
                break
        return out

    return _each(cases, one)


def _model(module, cls_name: str, item):
    cls = _fn(module, cls_name)
    kwargs = dict(_copy(item["kwargs"]))
    kwargs["dtype"] = np.dtype(kwargs["dtype"]).type
    model = cls(**kwargs)
    params = getattr(model, "params", None)
    if not isinstance(params, dict):
        raise TypeError(f"{cls_name}(...).params is a {type(params).__name__}, expected a dict")
    for key, value in item["params"].items():
        params[key] = value.copy()
    return model


def net_call(module, name: str, call: str, cases: list) -> list:
    """FullyConnectedNet with the grader's params: "scores" -> loss(X) (after one loss(X, y) where the
    item says so: batchnorm's running statistics), "loss" -> loss(X, y) = (loss, grads)."""

    def one(item):
        keys = ["scores"] if call == "scores" else ["loss", *(f"grads[{k}]" for k in item["params"])]
        try:
            model = _model(module, name, item)
        except Exception as e:
            return _all(keys, _error(f"{name}(...)", e))
        if call == "scores":
            try:
                if item.get("train_first"):
                    model.loss(item["X"].copy(), item["y"].copy())
                scores = model.loss(item["test_X"].copy())
                return {"scores": {"value": _array(scores, f"{name}.loss(X)")}}
            except Exception as e:
                return {"scores": _error(f"{name}.loss(X)", e)}
        try:
            loss, grads = _pair(model.loss(item["X"].copy(), item["y"].copy()), f"{name}.loss(X, y)")
        except Exception as e:
            return _all(keys, _error(f"{name}.loss(X, y)", e))
        out: dict = {}
        try:
            out["loss"] = {"value": _array(loss, f"{name}.loss(X, y)'s loss")}
        except TypeError as e:
            out["loss"] = {"error": str(e), "traceback": ""}
        for key in item["params"]:
            try:
                if not isinstance(grads, dict):
                    raise TypeError(f"{name}.loss(X, y)'s grads is a {type(grads).__name__}, expected a dict")
                if key not in grads:
                    raise KeyError(f"{name}.loss(X, y)'s grads has no {key!r} (it has {sorted(map(str, grads))[:12]})")
                out[f"grads[{key}]"] = {"value": _array(grads[key], f"grads[{key!r}]")}
            except (TypeError, KeyError) as e:
                out[f"grads[{key}]"] = {"error": str(e), "traceback": ""}
        return out

    return _each(cases, one)
