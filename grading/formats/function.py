"""The function format (the notebook's module-level weights and biases): built-in `function-api`.

A student writes module-level lists `weights` and `biases` (the biases as (1, n) rows),
feed_forward_sample(sample, y) -> (loss, one_hot_guess), train_one_sample(sample, y, rate) that
updates them in place, and the helpers sigmoid, dsigmoid, softmax and cross_entropy_loss (which an
assignment may list as `provided`). One raw-pixel sample at a time: the notebook reshapes every
sample to 784, so the sizes are fixed (no small_sizes) and the sweep varies the hidden widths only.
"""

from __future__ import annotations

import itertools

import numpy as np

from grading.adapters import (
    PROBE_LR,
    Expected,
    Key,
    Problem,
    _dense_names,
    _entry,
    _field,
    _probe,
    _rand,
    _random_logits,
    _read_back,
    _reshaped,
    _result,
    _view,
)
from grading.adapters import (
    observe as _observe,
)
from grading.diagnose import Diagnosis
from grading.formats import _mlp
from grading.formats._mlp import build_cases, notes  # noqa: F401 (this format's hooks)
from grading.shrink import SHRINK_SEED, WIDTHS, SmallIntegers, SparseIntegers
from oracles.compare import rel_error, tolerance
from reference.layers import softmax
from reference.losses import one_hot
from reference.network import ACTIVATIONS, Network

NAME = "function"
TITLE = "module-level weights and biases, feed_forward_sample and train_one_sample, one sample at a time"
CHECKS = (
    "forward",
    "loss",
    "activation_derivative",
    "weight_gradients",
    "bias_gradients",
    "training_step",
    "stability",
)
NAMES = {
    "weights": "weights",
    "biases": "biases",
    "forward": "feed_forward_sample",
    "train": "train_one_sample",
    "activation": "sigmoid",
    "derivative": "dsigmoid",
    "softmax": "softmax",
    "loss": "cross_entropy_loss",
}
PROVIDABLE = ("activation", "derivative", "softmax", "loss")  # keys of NAMES: the notebook's own helpers
DRIVER = _mlp.SHARED_DRIVER
NETWORK = True  # parse_options fills Part's network fields (assignment.NETWORK_FIELDS)
STEP_ROWS = None  # one sample: the batch is 1
PIXELS = (1, 2)  # a counterexample's nonzero pixels per sample


def parse_options(raw: dict, where: str, source: str) -> dict:
    return _mlp.parse_options(raw, where, source, NAME, fixed_sizes=True, per_sample=True)


def validate(part, where: str, source: str) -> None:
    _mlp.validate(part, where, source, PROVIDABLE)


def needed_names(part) -> tuple[str, ...]:
    """Provided helpers too: the graded functions call them."""
    return tuple(part.names[k] for k in ("weights", "biases", "forward", "train", *PROVIDABLE))


def sweep(part) -> list[tuple[str, tuple[int, ...], int]]:
    """The notebook's 784 inputs and 10 outputs kept, the hidden widths varied (_mlp.sweep's shapes)."""
    small = part.small_sizes or part.sizes
    h, first, last = len(small) - 2, small[0], small[-1]
    shapes = [
        ("square", (first, *[5] * h, last), 1),
        ("distinct", (first, *range(h + 5, 5, -1), last), 1),
        ("width1", (first, *[1] * h, last), 1),
        ("odd", (first, *range(2 * h + 1, 1, -2), last), 1),
    ]
    return [("small", small, part.batch)] + [s for s in shapes if s[1] != small or s[2] != part.batch]


def plan(part, case, rng) -> None:
    """feed_forward_sample and train_one_sample from known weights (train at rate 1, its dW read back,
    and at the assignment's rate), the helpers each on inputs of their own unless provided."""
    n = part.names
    stab = case.kind == "stability"
    dense = _dense_names(case.spec)
    t = case.trace
    model = {
        "W": [case.params[f"{d}.W"] for d in dense],
        "b": [case.params[f"{d}.b"].reshape(1, -1) for d in dense],  # the notebook's (1, n) biases
        "x": case.x[0],
        "y": int(case.y[0]),
    }
    ff, train = n["forward"], n["train"]
    main = _view(case)
    _probe(case, ff, "function_feed_forward", {"names": dict(n)}, model)
    n_out = t.layers[-1].out.shape[1]
    prediction = np.eye(n_out, dtype=case.dtype)[int(np.argmax(t.layers[-1].out[0]))]
    case.expected.append(Expected(Key("forward", ff, "prediction", None, "prediction"), prediction, None, "forward"))
    if not (stab and n["loss"] in part.provided):  # at +-1e3 the given loss's NaN is not the student's
        loss = np.asarray(t.loss) if t.loss is not None else np.asarray(np.inf)
        case.expected.append(Expected(Key("loss", ff, "loss", None, "loss"), loss, main, "loss", finite_only=stab))
    for d in dense:
        for p in ("W", "b"):
            key = Key("forward", ff, f"unchanged by {ff}: {d}.{p}", d, p)
            case.expected.append(Expected(key, case.params[f"{d}.{p}"], main, "parameters"))
    kinds = part.activations
    z = [_rand(rng, (1, case.params[f"{d}.W"].shape[1]), case.dtype, kinds[k]) for k, d in enumerate(dense[:-1])]
    for fn, key_check, what in ((n["activation"], "forward", "value"), (n["derivative"], "activation_derivative", "d")):
        if fn in part.provided:
            continue
        for k, zk in enumerate(z):
            _probe(case, fn, "unit_call", {"name": fn}, [zk])
            layer = ACTIVATIONS[kinds[k]](f"act_{k + 1}")
            a, cache = layer.forward(zk)
            value = a if what == "value" else layer.backward(np.ones_like(zk), cache)[0]
            case.expected.append(Expected(Key(key_check, fn, f"{fn}(z_{k + 1})", None, what), value, None, "forward"))
    if n["softmax"] not in part.provided:
        logits, _ = _random_logits(rng, 1, n_out, case.dtype, stab)
        _probe(case, n["softmax"], "unit_call", {"name": n["softmax"]}, [logits])
        key = Key("forward", n["softmax"], "softmax(z_out)", None, "softmax")
        case.expected.append(Expected(key, softmax(logits), None, "forward"))
    if n["loss"] not in part.provided:
        logits, labels = _random_logits(rng, 1, n_out, case.dtype, stab)
        probs = softmax(logits)
        onehot = one_hot(labels, n_out, case.dtype)[0]
        _probe(case, n["loss"], "unit_call", {"name": n["loss"]}, [onehot, probs])
        with np.errstate(divide="ignore"):
            value = np.asarray(-np.log(probs[0, labels[0]]))  # -log p_y: the reference CrossEntropy, summed
        key = Key("loss", n["loss"], f"{n['loss']}(y, p)", None, "loss")
        case.expected.append(Expected(key, value, None, "loss", finite_only=stab and not np.isfinite(value)))
    stepped = not stab and "training_step" in part.check_names
    rates = [PROBE_LR, part.learning_rate] if stepped else [PROBE_LR]
    _probe(case, train, "function_train", {"names": dict(n)}, {**model, "rates": rates})
    for d in reversed(dense):  # backprop's order
        for p, check in (("W", "weight_gradients"), ("b", "bias_gradients")):
            key = Key(check, train, f"{d}.d{p}", d, f"d{p}")
            case.expected.append(Expected(key, t[d].grads[p], main, "gradient"))
    if len(rates) > 1:
        step = _view(case, "step", part.learning_rate)
        for d in reversed(dense):
            for p in ("W", "b"):
                new = case.params[f"{d}.{p}"] - part.learning_rate * case.step_trace[d].grads[p]
                case.expected.append(
                    Expected(Key("training_step", train, f"step: {d}.{p}", d, p), new, step, "parameters")
                )


def observe(part, case, results: dict) -> dict:
    return _observe(part, case, results, extract)


def extract(part, case, exp: Expected, record, items: dict[str, int]):
    """The tensor of `exp` from its call's record for this case (see adapters.observe)."""
    key = exp.key
    if key.function == part.names["forward"]:
        ff = _result(_entry(record, 0, key.function), key.function)
        if isinstance(ff, Problem):
            return ff
        if key.field == "prediction":
            return _reshaped(_field(ff, "guess", key), exp.value)
        if key.field == "loss":
            return _field(ff, "loss", key)
        after = ff.get("params_after") if isinstance(ff, dict) else None
        after = _result(after, "reading weights and biases")
        return _nth_param(part, case, key, after, "W" if key.field == "W" else "b", exp.value)
    if key.function == part.names["train"]:
        per_rate = _entry(record, 0, key.function)
        rate = 1 if key.check == "training_step" else 0
        got = _result(_entry(per_rate, rate, key.function), key.function)
        if isinstance(got, Problem):
            return got
        p = key.field[-1]
        before = case.params[f"{key.layer}.{p}"]
        value = _nth_param(part, case, key, got, p, before)
        if rate == 1 or isinstance(value, Problem):
            return value
        return _read_back(key, before, value, PROBE_LR, squeeze=True)
    # unit functions: one entry per item sent, in order
    k = items.get(key.function, 0)
    items[key.function] = k + 1
    return _result(_entry(record, k, key.function), key.function)


def _nth_param(part, case, key: Key, got, p: str, like: np.ndarray):
    """weights[i] / biases[i] of the function format, for the key's layer."""
    if isinstance(got, Problem):
        return got
    listed = got.get(p) if isinstance(got, dict) else None
    i = _dense_names(case.spec).index(key.layer)
    what = part.names["weights" if p == "W" else "biases"]
    if not isinstance(listed, list):
        return Problem(f"{what} could not be read back ({type(listed).__name__})")
    if i >= len(listed):
        return Problem(f"{what} has {len(listed)} entries, expected {len(_dense_names(case.spec))}")
    return _reshaped(listed[i], like)


def diagnose(part, case, exp, yours: np.ndarray) -> Diagnosis | None:
    """A parameter feed_forward_sample must not change has its own diagnosis; the rest, RefView's."""
    if exp.key.check == "forward" and exp.key.field in ("W", "b"):
        return _side_effect(case, exp.key, yours)
    return _mlp.diagnose(part, case, exp, yours)


def _side_effect(case, key: Key, yours: np.ndarray) -> Diagnosis:
    """A parameter the forward pass changed; np.dot(a, W, b) overwrites b with a @ W."""
    layer, p = key.layer, key.field
    i = case.spec.layer_names().index(layer)
    x_in = case.x if i == 0 else case.trace.layers[i - 1].out
    product = x_in @ case.params[f"{layer}.W"]  # (1, n_out)
    if p == "b" and yours.size == product.size:
        err = rel_error(yours.reshape(product.shape), product)
        tol = tolerance("submission", case.dtype, "forward")
        if err <= tol:
            return Diagnosis(
                "overwritten",
                f"the forward pass overwrote {layer}'s bias with x @ W (relative error {err:.1g}): np.dot's third "
                "argument is `out`, so np.dot(a, W, b) writes the product into b instead of adding b",
            )
    return Diagnosis("overwritten", f"the forward pass changed {layer}.{p}; a forward pass must not modify parameters")


# The counterexample (grading/shrink.py's module doc: sparse candidates) ------------------------------


def shrink_candidates(part) -> list:
    """(sizes, (pixels, output biases)), smallest first: the fixed inputs and outputs, hidden widths in
    WIDTHS (grading/shrink.py's module doc)."""
    first, last, hidden = part.sizes[0], part.sizes[-1], len(part.sizes) - 2
    out = []
    for widths in itertools.product(WIDTHS, repeat=hidden):
        for pixels, out_bias in itertools.product(PIXELS, (0, 1)):
            ws = (pixels, *widths)
            numbers = pixels + sum(a * b + b for a, b in itertools.pairwise(ws)) + widths[-1] + out_bias
            out.append(((max(widths), numbers, out_bias), (first, *widths, last), (pixels, out_bias)))
    return [(sizes, variant) for _, sizes, variant in sorted(out)]


def shrink_case(part, kind: str, sizes, variant: tuple[int, int], k: int):
    """One sparse candidate of the function format (see the module doc): one sample, `pixels` nonzero
    pixels of 1 or 2, weights[0] 0 outside their rows, hidden weights nonzero integers in -2..2 and
    biases +-1, the output layer's weights 0 except one column and its biases 0 except `out_bias` entry."""
    pixels, out_bias = variant
    spec = part.spec(tuple(sizes), "float64")
    for attempt in range(20):  # redrawn while every logit is 0 (no stability scaling; a blind probe)
        rng = np.random.default_rng([SHRINK_SEED, k, attempt])
        x, y, params = _sparse_draw(spec, sizes, pixels, out_bias, rng)
        if np.abs(Network(spec, params).forward(x)).max() > 0:
            break
    else:
        return None
    case = _mlp.make_case(part, kind, sizes, "float64", x, y, params, SparseIntegers(rng))
    widths = "-".join(map(str, sizes[1:-1]))
    case.id = f"one sample, {pixels} nonzero pixel{'s' * (pixels > 1)}, hidden widths {widths}"
    return case


def _sparse_draw(spec, sizes, pixels: int, out_bias: int, rng):
    dense = [n for n, ls in zip(spec.layer_names(), spec.layers) if ls.kind == "dense"]
    x = np.zeros((1, sizes[0]))
    where = np.sort(rng.choice(sizes[0], pixels, replace=False))
    x[0, where] = rng.choice([1.0, 2.0], pixels)
    params = {}
    for i, (name, n_in, n_out) in enumerate(zip(dense, sizes[:-1], sizes[1:])):
        W, b = np.zeros((n_in, n_out)), np.zeros(n_out)
        if i == 0:
            W[where] = SmallIntegers(rng).normal(size=(pixels, n_out))
        elif i < len(dense) - 1:
            W[...] = SmallIntegers(rng).normal(size=(n_in, n_out))
        else:
            W[:, rng.integers(n_out)] = SmallIntegers(rng).normal(size=n_in)
            b[rng.choice(n_out, out_bias, replace=False)] = rng.choice([-1.0, 1.0], out_bias)
        if i < len(dense) - 1:
            b = rng.choice([-1.0, 1.0], n_out)
        params[f"{name}.W"], params[f"{name}.b"] = W, b
    return x, rng.integers(0, sizes[-1], 1), params


UNIT_ARGS = {"loss": ("y", "p")}  # the function format's unit calls: argument names (else "z")


def shrink_inputs(part, case, key: Key) -> list[tuple[str, np.ndarray]]:
    """The function format's call: the module-level weights and biases set before it, the sample and
    its label (feed_forward_sample, train_one_sample); a unit function's arguments (sigmoid(z) ...)."""
    n = part.names
    driver, _, items = case.probes[key.function]
    if driver == "unit_call":
        same = [e.key for e in case.expected if e.key.function == key.function]
        args = items[same.index(key)]
        role = next((r for r in ("loss",) if n.get(r) == key.function), None)
        names = UNIT_ARGS.get(role, ("z",))
        return [(names[i] if i < len(names) else f"arg{i}", np.asarray(a)) for i, a in enumerate(args)]
    item = items[0]
    out = [(f"{n['weights']}[{i}]", np.asarray(W)) for i, W in enumerate(item["W"])]
    out += [(f"{n['biases']}[{i}]", np.asarray(b)) for i, b in enumerate(item["b"])]
    out += [("sample", np.asarray(item["x"])), ("y", np.asarray(item["y"]))]
    if key.check == "training_step":
        out.append(("lr", np.asarray(part.learning_rate)))
    return out


def formula(part, case, key: Key) -> str:
    """The reference's equation for a function-format tensor, in the notebook's names."""
    n = part.names
    dense = [d for d, ls in zip(case.spec.layer_names(), case.spec.layers) if ls.kind == "dense"]
    kinds = part.activations if len(set(part.activations)) == 1 else ("f_k",)  # one activation, or f_k per layer
    last = len(dense)
    w, b = n["weights"], n["biases"]
    act = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}
    deriv = {"sigmoid": "a_k * (1 - a_k)", "tanh": "1 - a_k**2", "relu": "(z_k > 0)"}
    chain = (
        f"a_0 = sample, z_k = a_(k-1) @ {w}[k-1] + {b}[k-1], a_k = {act.get(kinds[0], kinds[0])}(z_k), "
        f"p = softmax(z_{last})"
    )
    f, fallback = key.field, "f_k'(z_k)"
    if key.function == n["train"] and f in ("dW", "db") and key.layer in dense:
        k = dense.index(key.layer) + 1
        grad = f"a_{k - 1}.T @ delta_{k}" if f == "dW" else f"delta_{k}"
        back = f"delta_{last} = p - onehot(y)"
        if k < last:
            back += f", delta_k = (delta_(k+1) @ {w}[k].T) * {deriv.get(kinds[0], fallback)}"
        return f"{grad}; {back}; {chain}"
    if f == "loss" and key.function == n["forward"]:
        return f"-log(p[y]); {chain}"
    if f == "prediction":
        return f"onehot(argmax(p)); {chain}"
    if f in ("W", "b") and key.function == n["forward"]:
        return "the value set before the call (a forward pass changes no parameter)"
    if f == "softmax":
        return "exp(z) / sum(exp(z)), computed as exp(z - max(z)) / sum(exp(z - max(z)))"
    if f == "loss":
        return "-sum(y * log(p))"
    table = {
        ("value", "sigmoid"): "1 / (1 + exp(-z))",
        ("value", "tanh"): "tanh(z)",
        ("value", "relu"): "max(z, 0)",
        ("d", "sigmoid"): "s * (1 - s), s = 1 / (1 + exp(-z))",
        ("d", "tanh"): "1 - tanh(z)**2",
        ("d", "relu"): "(z > 0)",
    }
    return table.get((f, kinds[0]), "the reference's value (reference/)")
