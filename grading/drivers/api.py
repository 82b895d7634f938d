"""Trusted driver: runs INSIDE the sandboxed child, calls the submission's API, returns plain values.

Loaded by grading.sandbox.run_call(submission, <this file>, function, kwargs): each public function
here is `function(module, **kwargs)` with `module` the submission. It imports numpy and the
standard library only (nothing of the project is importable in the child) and compares nothing:
it sets the weights and inputs it is given, calls the student's code, and returns what came back.
Every comparison happens in the grader's process (grading/adapters.py, grading/checks.py).

A student's exception in one call becomes data, {"error": "...", "traceback": "..."}, so the other
calls of the probe still run; a hang, a crash or an exit is the sandbox's verdict for the whole call.

    layer_layers     each Dense / activation layer alone: forward(input), backward(input, grad_output)
                     (parameters read back after backward), and the two loss functions
    layer_network    the notebook's forward(network, X) and train(network, X, y)
    function_forward feed_forward_sample, and sigmoid / dsigmoid / softmax / cross_entropy_loss
    function_train   train_one_sample from known weights, parameters read back
    class_probe      NeuralNet: forward, loss, grad_loss, train (which ones: `calls`)
    logistic_probe   LogisticRegression: forward, loss, grad_loss
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
    out = {}
    for key, attr in (("W", names["weights"]), ("b", names["biases"])):
        value = getattr(layer, attr, None)
        out[key] = _array(value, f"layer.{attr}") if value is not None else None
    return out


def layer_layers(module, names: dict, lr: float, cases: list) -> list:
    """Each layer alone, on the reference's input and dL/d(output): the bug stays in its layer."""
    results = []
    for case in cases:
        layers = []
        for spec in case["layers"]:
            made = _call(f"constructing {spec['kind']}", _make_layer, module, names, spec, lr)
            if "error" in made:
                layers.append({"forward": made, "backward": made})
                continue
            layer = made["value"]
            forward = _as_array_result(
                _call(f"{spec['name']}.forward", layer.forward, spec["x"].copy()), f"{spec['name']}.forward"
            )
            after_forward = _call("reading parameters", _read_params, layer, names) if spec["kind"] == "dense" else {}
            layer = _make_layer(module, names, spec, lr)  # fresh, in case forward changed state
            backward = _as_array_result(
                _call(f"{spec['name']}.backward", layer.backward, spec["x"].copy(), spec["grad_out"].copy()),
                f"{spec['name']}.backward",
            )
            record = {"forward": forward, "backward": backward}
            if spec["kind"] == "dense":
                record["params_after_forward"] = after_forward
                record["params_after_backward"] = _call("reading parameters", _read_params, layer, names)
            layers.append(record)
        loss_fn = _call("looking up the loss", _api, module, names["loss"], "function")
        grad_fn = _call("looking up the loss gradient", _api, module, names["loss_grad"], "function")
        loss = grad = loss_fn if "error" in loss_fn else None
        if "value" in loss_fn:
            loss = _as_array_result(
                _call(names["loss"], loss_fn["value"], case["logits"].copy(), case["labels"].copy()), names["loss"]
            )
        if "value" in grad_fn:
            grad = _as_array_result(
                _call(names["loss_grad"], grad_fn["value"], case["logits"].copy(), case["labels"].copy()),
                names["loss_grad"],
            )
        else:
            grad = grad_fn
        results.append({"layers": layers, "loss": loss, "loss_grad": grad})
    return results


def _network(module, names: dict, specs: list, lr: float) -> list:
    return [_make_layer(module, names, spec, lr) for spec in specs]


def _forward_list(module, names: dict, network: list, x: np.ndarray) -> list:
    outs = _api(module, names["forward"], "function")(network, x)
    return [_array(o, f"{names['forward']}(network, X)[{i}]") for i, o in enumerate(outs)]


def layer_network(module, names: dict, cases: list) -> list:
    """The notebook's own forward(network, X) and one train(network, X, y) at the case's rate."""
    results = []
    for case in cases:
        built = _call("building the network", _network, module, names, case["layers"], case["lr"])
        if "error" in built:
            results.append({"forward": built, "train": built})
            continue
        forward = _call(
            f"{names['forward']}(network, X)", _forward_list, module, names, built["value"], case["x"].copy()
        )
        network = _network(module, names, case["layers"], case["lr"])
        train = _call(
            f"{names['train']}(network, X, y)",
            _invoke,
            module,
            names["train"],
            network,
            case["x"].copy(),
            case["y"].copy(),
        )
        params = []
        if "value" in train:
            train["value"] = None  # the returned loss is not graded; the parameters are
            params = [
                _call("reading parameters", _read_params, layer, names) if spec["kind"] == "dense" else {}
                for layer, spec in zip(network, case["layers"])
            ]
        results.append({"forward": forward, "train": train, "params": params})
    return results


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
    }


def function_forward(module, names: dict, cases: list) -> list:
    """feed_forward_sample(sample, y) from known weights; the helper functions on known inputs."""
    results = []
    for case in cases:
        _set_globals(module, names, case)
        record = {
            "feed_forward": _call(names["forward"], _feed_forward, module, names, case["x"].copy(), int(case["y"]))
        }
        record["params_after"] = _call("reading weights and biases", _read_globals, module, names)
        for key, fn_name, args in (
            ("activation", names["activation"], [[z.copy()] for z in case["z_hidden"]]),
            ("derivative", names["derivative"], [[z.copy()] for z in case["z_hidden"]]),
            ("softmax", names["softmax"], [[case["logits"].copy()]]),
            ("loss", names["loss"], [[case["one_hot"].copy(), case["probs"].copy()]]),
        ):
            fn = _call(f"looking up {fn_name}", _api, module, fn_name, "function")
            if "error" in fn:
                record[key] = [fn for _ in args]
                continue
            record[key] = [_as_array_result(_call(fn_name, fn["value"], *a), fn_name) for a in args]
        results.append(record)
    return results


def function_train(module, names: dict, cases: list) -> list:
    """train_one_sample(sample, y, rate) from known weights, for each rate; weights read back."""
    results = []
    for case in cases:
        per_rate = []
        for lr in case["rates"]:
            _set_globals(module, names, case)
            train = _call(
                names["train"],
                _invoke,
                module,
                names["train"],
                case["x"].copy(),
                int(case["y"]),
                lr,
            )
            if "value" in train:
                train = _call("reading weights and biases", _read_globals, module, names)
            per_rate.append(train)
        results.append({"train": per_rate})
    return results


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


def class_probe(module, names: dict, calls: list, cases: list) -> list:
    """NeuralNet(n_in, n_hidden, n_out) with known W_h, b_h, W_o, b_o; the requested calls."""
    keys = ["W_h", "b_h", "W_o", "b_o"]
    results = []
    for case in cases:
        record = {}
        made = _call(f"{names['class']}(...)", _instance, module, names, case)
        for call in calls:
            if "error" in made:
                record[call] = made
                continue
            obj = _instance(module, names, case)
            X, y = case["X"].copy(), case["y"].copy()
            if call == "forward":
                record[call] = _as_array_result(_call("forward(X)", _invoke, obj, names["forward"], X), "forward(X)")
            elif call == "loss":
                record[call] = _as_array_result(_call("loss(X, y)", _invoke, obj, names["loss"], X, y), "loss(X, y)")
            elif call == "grad":
                out = _call("grad_loss(X, y)", _invoke, obj, names["grad"], X, y)
                record[call] = (
                    _call("reading grad_loss's result", _grads, out["value"], keys, names) if "value" in out else out
                )
            elif call == "train":
                out = _call(
                    "train(x, y, learning_rate)",
                    _invoke,
                    obj,
                    names["train"],
                    case["x_row"].copy(),
                    int(case["y_row"]),
                    case["lr"],
                )
                record[call] = _call("reading parameters", _read_attrs, obj, names, keys) if "value" in out else out
        results.append(record)
    return results


def logistic_probe(module, names: dict, calls: list, cases: list) -> list:
    """LogisticRegression(n_in, n_out) with known W, b: forward(X), loss(X, y), grad_loss(X, Y, P)."""
    results = []
    for case in cases:
        record = {}
        made = _call(f"{names['class']}(...)", _instance, module, names, case)
        for call in calls:
            if "error" in made:
                record[call] = made
                continue
            obj = _instance(module, names, case)
            X = case["X"].copy()
            if call == "forward":
                record[call] = _as_array_result(_call("forward(X)", _invoke, obj, names["forward"], X), "forward(X)")
            elif call == "loss":
                record[call] = _as_array_result(
                    _call("loss(X, y)", _invoke, obj, names["loss"], X, case["y"].copy()), "loss(X, y)"
                )
            elif call == "grad":
                out = _call(
                    "grad_loss(X, y_true, y_pred)",
                    _invoke,
                    obj,
                    names["grad"],
                    X,
                    case["one_hot"].copy(),
                    case["probs"].copy(),
                )
                record[call] = (
                    _call("reading grad_loss's result", _grads, out["value"], ["W", "b"], names)
                    if "value" in out
                    else out
                )
        results.append(record)
    return results
