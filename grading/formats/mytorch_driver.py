"""Trusted driver of the MyTorch format (CMU 11-785 HW1P1): runs INSIDE the sandboxed child.

numpy and the standard library only (nothing of the project is importable in the child). It makes
the student's objects, sets the grader-chosen parameters into them (W (out, in), b (out, 1), BW and
Bb (1, C): the student's own initialisation is not compared), calls the student's methods on the
probe inputs it is given and returns what came back, and compares nothing. No expected answer is
ever sent here (grading/formats/mytorch.py computes them in the grader).

Each public function covers ONE student method over every case (a crash, hang or exit costs only
that method's tensors). A student's exception on one item becomes data, {"error", "traceback"},
so the other items still run; so does a value that is not an array of numbers, and an attribute
(dLdW, running_M, ...) whose reading raises. Per case the result is a list, one entry per item
sent: {output name: {"value": array} | {"error": ...}}, or {"error": ...} for the whole item.

    linear_forward       Linear(in, out) with W, b set: forward(A) -> Z
    linear_backward      forward(A), then backward(dLdZ) -> dLdA; dLdW and dLdb read back
    activation           Identity / Sigmoid / Tanh / ReLU: forward(Z); backward(dLdA) after forward(Z)
    loss                 MSELoss / CrossEntropyLoss: forward(A, Y); backward() after forward(A, Y)
    batchnorm_forward    BatchNorm1d(C, alpha): forward(Z) in training, steps in turn, then forward(Z, eval=True);
                         BZ, running_M and running_V read after each
    batchnorm_backward   forward(Z) in training, then backward(dLdBZ) -> dLdZ; dLdBW, dLdBb read back
    sgd_step             SGD(model, lr, momentum) on a model whose layers are the student's Linear
                         objects; before each step() the grader's dLdW / dLdb (and lr) are set;
                         every layer's W and b read after each step
    mlp_forward          MLP0 / MLP1 / MLP4 with the Linear layers' W and b set: forward(A0)
    mlp_backward         forward(A0), then backward(dLdA) -> dLdA0; every Linear layer's dLdW, dLdb read back
"""

from __future__ import annotations

import traceback

import numpy as np


def _tb(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return "".join(line for line in lines if "mytorch_driver" not in line or "File" not in line)[-4000:]


def _array(value, what: str) -> np.ndarray:
    """The student's value as a numeric ndarray (a copy); a clear error for anything else."""
    if isinstance(value, np.ndarray):
        a = value.copy()
    else:
        try:
            a = np.array(value, copy=True)
        except Exception as e:  # the student's object decides what converting it does: its error is reported
            raise TypeError(
                f"{what} is {type(value).__name__}, which is not an array of numbers ({type(e).__name__}: {e})"
            ) from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} is {type(value).__name__} of dtype {a.dtype}, expected real numbers")
    return a


def _call(what: str, fn, *args, **kwargs) -> dict:
    """{"value": fn(...)} or {"error": ..., "traceback": ...}: one failing call does not stop the probe."""
    try:
        return {"value": fn(*args, **kwargs)}
    except Exception as e:  # the student's error is the result of this call; it is reported
        return {"error": f"{what} raised {type(e).__name__}: {e}", "traceback": _tb(e)}


def _as_array(result: dict, what: str) -> dict:
    """A call's result as {"value": ndarray} or its error."""
    if "value" not in result:
        return result
    try:
        return {"value": _array(result["value"], what)}
    except TypeError as e:
        return {"error": str(e), "traceback": ""}


def _read(obj, attr: str, what: str) -> dict:
    """obj.attr as {"value": ndarray} or why not (missing, raising, not numbers)."""

    def get():
        if not hasattr(obj, attr):
            raise AttributeError(f"{type(obj).__name__} has no attribute {attr!r}")
        return _array(getattr(obj, attr), what)

    return _call(f"reading {what}", get)


def _cls(module, name: str):
    if not hasattr(module, name):
        raise AttributeError(f"the submission defines no class named {name!r}")
    return getattr(module, name)


def _method(obj, name: str):
    if not hasattr(obj, name):
        raise AttributeError(f"class {type(obj).__name__} defines no method {name!r}")
    return getattr(obj, name)


def _each(cases: list, one) -> list:
    """one(item) for every item of every case; an exception of the driver's own reading is data too."""
    out = []
    for items in cases:
        row = []
        for item in items:
            made = _call("probing", one, item)
            row.append(made["value"] if "value" in made else made)
        out.append(row)
    return out


# Linear -----------------------------------------------------------------------------------------


def _linear(module, names: dict, n_in: int, n_out: int, W, b, own_layout: bool = False):
    """Linear(n_in, n_out) with the grader's W and b set. own_layout: first, a W the constructor made
    the other way round, (in, out), is the error it is (MyTorch's W is (out, in)); only Linear's own
    checks ask, so a transposed initialisation costs neither SGD nor the MLPs (which check it themselves)."""
    layer = _cls(module, names["linear"])(n_in, n_out)
    if own_layout and n_in != n_out and hasattr(layer, names["W"]):
        shape = np.shape(getattr(layer, names["W"]))
        if tuple(shape) == (n_in, n_out):
            raise ValueError(
                f"{names['linear']}({n_in}, {n_out}) makes {names['W']} of shape {tuple(shape)}, (in_features, "
                f"out_features); MyTorch's {names['W']} is (out_features, in_features) = ({n_out}, {n_in}): W "
                f"stored transposed, so the grader's W cannot be used"
            )
    setattr(layer, names["W"], W.copy())
    setattr(layer, names["b"], b.copy())
    return layer


def linear_forward(module, names: dict, cases: list) -> list:
    def one(item):
        made = _call(f"{names['linear']}({item['n_in']}, {item['n_out']})", _linear, module, names, *_lin(item, True))
        if "error" in made:
            return made
        z = _call("forward(A)", lambda: _method(made["value"], "forward")(item["A"].copy()))
        return {"Z": _as_array(z, "forward(A)")}

    return _each(cases, one)


def _lin(item, own_layout: bool = False) -> tuple:
    return item["n_in"], item["n_out"], item["W"], item["b"], own_layout


def linear_backward(module, names: dict, cases: list) -> list:
    def one(item):
        made = _call(f"{names['linear']}({item['n_in']}, {item['n_out']})", _linear, module, names, *_lin(item, True))
        if "error" in made:
            return made
        layer = made["value"]
        fwd = _call("forward(A)", lambda: _method(layer, "forward")(item["A"].copy()))
        if "error" in fwd:
            return fwd
        back = _call("backward(dLdZ)", lambda: _method(layer, "backward")(item["dLdZ"].copy()))
        if "error" in back:
            return back
        if (back["value"] is None or back["value"] is NotImplemented) and hasattr(layer, "dLdA"):
            back = _read(layer, "dLdA", f"{names['linear']}.dLdA (backward returned {back['value']})")
        return {
            "dLdA": _as_array(back, "backward(dLdZ)"),
            "dLdW": _read(layer, names["dLdW"], f"{names['linear']}.{names['dLdW']}"),
            "dLdb": _read(layer, names["dLdb"], f"{names['linear']}.{names['dLdb']}"),
        }

    return _each(cases, one)


# Activations and losses ---------------------------------------------------------------------------


def activation(module, names: dict, cls: str, call: str, cases: list) -> list:
    """forward(Z) -> A; or forward(Z) then backward(dLdA) -> dLdZ (the state forward stored)."""

    def one(item):
        made = _call(f"{cls}()", lambda: _cls(module, cls)())
        if "error" in made:
            return made
        act = made["value"]
        fwd = _call("forward(Z)", lambda: _method(act, "forward")(item["Z"].copy()))
        if call == "forward" or "error" in fwd:
            return {"A": _as_array(fwd, "forward(Z)")} if call == "forward" else fwd
        back = _call("backward(dLdA)", lambda: _method(act, "backward")(item["dLdA"].copy()))
        return {"dLdZ": _as_array(back, "backward(dLdA)")}

    return _each(cases, one)


def loss(module, names: dict, cls: str, call: str, cases: list) -> list:
    """forward(A, Y) -> L; or forward(A, Y) then backward() -> dLdA."""

    def one(item):
        made = _call(f"{cls}()", lambda: _cls(module, cls)())
        if "error" in made:
            return made
        crit = made["value"]
        fwd = _call("forward(A, Y)", lambda: _method(crit, "forward")(item["A"].copy(), item["Y"].copy()))
        if call == "forward" or "error" in fwd:
            return {"L": _as_array(fwd, "forward(A, Y)")} if call == "forward" else fwd
        back = _call("backward()", lambda: _method(crit, "backward")())
        return {"dLdA": _as_array(back, "backward()")}

    return _each(cases, one)


# BatchNorm1d ------------------------------------------------------------------------------------


def _batchnorm(module, names: dict, item):
    bn = _cls(module, names["batchnorm"])(item["C"], item["alpha"])
    setattr(bn, names["BW"], item["BW"].copy())
    setattr(bn, names["Bb"], item["Bb"].copy())
    return bn


def batchnorm_forward(module, names: dict, cases: list) -> list:
    """Training steps in turn (BZ, running_M, running_V after each), then one eval step (BZ)."""

    def one(item):
        made = _call(f"{names['batchnorm']}({item['C']}, alpha={item['alpha']})", _batchnorm, module, names, item)
        if "error" in made:
            return made
        bn, out = made["value"], {}
        for k, z in enumerate(item["train"], start=1):
            bz = _call(f"forward(Z) (training step {k})", lambda z=z: _method(bn, "forward")(z.copy()))
            out[f"BZ {k}"] = _as_array(bz, f"forward(Z) (training step {k})")
            for attr in ("running_M", "running_V"):
                out[f"{attr} {k}"] = _read(bn, names[attr], f"{names[attr]} after training step {k}")
        bz = _call("forward(Z, eval=True)", lambda: _method(bn, "forward")(item["eval"].copy(), eval=True))
        out["BZ eval"] = _as_array(bz, "forward(Z, eval=True)")
        return out

    return _each(cases, one)


def batchnorm_backward(module, names: dict, cases: list) -> list:
    def one(item):
        made = _call(f"{names['batchnorm']}({item['C']}, alpha={item['alpha']})", _batchnorm, module, names, item)
        if "error" in made:
            return made
        bn = made["value"]
        fwd = _call("forward(Z)", lambda: _method(bn, "forward")(item["Z"].copy()))
        if "error" in fwd:
            return fwd
        back = _call("backward(dLdBZ)", lambda: _method(bn, "backward")(item["dLdBZ"].copy()))
        if "error" in back:
            return back
        return {
            "dLdZ": _as_array(back, "backward(dLdBZ)"),
            "dLdBW": _read(bn, names["dLdBW"], f"{names['batchnorm']}.{names['dLdBW']}"),
            "dLdBb": _read(bn, names["dLdBb"], f"{names['batchnorm']}.{names['dLdBb']}"),
        }

    return _each(cases, one)


# SGD --------------------------------------------------------------------------------------------


class _Model:
    """The handout autograder's pseudo-model: an object whose `layers` are Linear layers."""

    def __init__(self, layers: list) -> None:
        self.layers = layers


def sgd_step(module, names: dict, cases: list) -> list:
    def one(item):
        layers = []
        for spec in item["layers"]:
            made = _call(f"{names['linear']}({spec['n_in']}, {spec['n_out']})", _linear, module, names, *_lin(spec))
            if "error" in made:
                return made
            layers.append(made["value"])
        model = _Model(layers)
        made = _call(
            f"{names['sgd']}(model, lr={item['lr']}, momentum={item['momentum']})",
            lambda: _cls(module, names["sgd"])(model, lr=item["lr"], momentum=item["momentum"]),
        )
        if "error" in made:
            return made
        opt, out = made["value"], {}
        for k, step in enumerate(item["steps"], start=1):
            for layer, (dW, db) in zip(layers, step["grads"]):
                setattr(layer, names["dLdW"], dW.copy())
                setattr(layer, names["dLdb"], db.copy())
            if step["lr"] != item["lr"]:  # a schedule sets the rate between steps, as torch's schedulers do
                setattr(opt, names["lr"], step["lr"])
            done = _call(f"step() (step {k})", lambda: _method(opt, "step")())
            if "error" in done:
                for i in range(len(layers)):
                    out[f"W {i} {k}"] = out[f"b {i} {k}"] = done
                continue
            for i, layer in enumerate(layers):
                out[f"W {i} {k}"] = _read(layer, names["W"], f"layers[{i}].{names['W']} after step {k}")
                out[f"b {i} {k}"] = _read(layer, names["b"], f"layers[{i}].{names['b']} after step {k}")
        return out

    return _each(cases, one)


# MLPs -------------------------------------------------------------------------------------------


def _mlp(module, names: dict, cls: str, item):
    """The student's MLP with the grader's W and b set into its Linear layers (those of `layers` with a W)."""
    made = _cls(module, cls)
    try:  # debug=True keeps dLdA0 (MLP0, MLP1) or the dLdA list (MLP4), as the handout's autograder reads them
        model = made(debug=True)
    except TypeError:
        model = made()
    if not hasattr(model, names["layers"]):
        raise AttributeError(f"{cls} has no attribute {names['layers']!r} (the list of its layers)")
    linears = [layer for layer in list(getattr(model, names["layers"])) if hasattr(layer, names["W"])]
    want = [tuple(W.shape) for W in item["W"]]
    got = [tuple(np.shape(getattr(layer, names["W"]))) for layer in linears]
    if got != want:
        raise ValueError(f"{cls}.{names['layers']}: expected Linear layers with W of shapes {want}, found {got}")
    for layer, W, b in zip(linears, item["W"], item["b"]):
        setattr(layer, names["W"], W.copy())
        setattr(layer, names["b"], b.copy())
    return model, linears


def _debug_dLdA0(model):
    """dLdA0 as the handout's autograder reads it when backward returns nothing: model.dLdA0, or
    model.dLdA[0] (MLP4's debug list)."""
    if hasattr(model, "dLdA0"):
        return model.dLdA0
    listed = getattr(model, "dLdA", None)
    if isinstance(listed, list) and listed:
        return listed[0]
    raise ValueError(
        f"{type(model).__name__}.backward returned no dLdA0 (it returned None or NotImplemented) and the model "
        "keeps no debug dLdA0 / dLdA list"
    )


def mlp_forward(module, names: dict, cls: str, cases: list) -> list:
    def one(item):
        made = _call(f"{cls}()", _mlp, module, names, cls, item)
        if "error" in made:
            return made
        model, _ = made["value"]
        return {"out": _as_array(_call("forward(A0)", lambda: _method(model, "forward")(item["A0"].copy())), "forward")}

    return _each(cases, one)


def mlp_backward(module, names: dict, cls: str, cases: list) -> list:
    def one(item):
        made = _call(f"{cls}()", _mlp, module, names, cls, item)
        if "error" in made:
            return made
        model, linears = made["value"]
        fwd = _call("forward(A0)", lambda: _method(model, "forward")(item["A0"].copy()))
        if "error" in fwd:
            return fwd
        back = _call("backward(dLdA)", lambda: _method(model, "backward")(item["dLdA"].copy()))
        if "error" in back:
            return back
        if back["value"] is None or back["value"] is NotImplemented:  # the older skeleton's untouched return
            back = _call("reading the debug dLdA0", _debug_dLdA0, model)
        out = {"dLdA0": _as_array(back, "backward(dLdA)")}
        for i, layer in enumerate(linears):
            out[f"dLdW {i}"] = _read(layer, names["dLdW"], f"Linear layer {i}'s {names['dLdW']}")
            out[f"dLdb {i}"] = _read(layer, names["dLdb"], f"Linear layer {i}'s {names['dLdb']}")
        return out

    return _each(cases, one)
