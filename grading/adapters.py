"""Adapters: each submission format's plain values -> the reference's Trace, in the GRADER's process.

    requests(part, cases) -> [ProbeRequest]          what to ask the driver (grading/drivers/api.py)
    observe(part, i, case, results) -> Observed      case i's tensors from the probes' results

The driver only sets weights, calls the student's API and returns arrays; everything here is plain
numpy on returned values. Gradients of code that updates its parameters in place are read back:
with known weights and a known learning rate lr, dL/dW = (W_before - W_after) / lr.

Observed.trace uses the reference's layer names, with None where the format does not reveal a
tensor (the function API never shows per-layer outputs); Observed.extras holds what is not part
of a Trace ("step: dense_1.W", "sigmoid(z_1)", "network: relu_1.out"); Observed.problems says why a
tensor is missing (the call raised, timed out, returned the wrong kind of value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.trace import LayerTrace, Trace

DRIVER = Path(__file__).parent / "drivers" / "api.py"
PROBE_LR = 1.0  # the rate gradients are read back at: old - new is dL/dW itself


@dataclass(frozen=True)
class ProbeRequest:
    name: str  # "layers", "network", "forward", "train", "grad"
    function: str  # the driver function
    kwargs: dict
    cases: tuple[int, ...]  # indices of the cases it covers, in order


@dataclass
class Observed:
    trace: Trace
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


class Failed:
    """A whole probe that produced nothing for a case (the sandbox's verdict, or a missing probe)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Failed({self.reason!r})"


def _dense_names(case) -> list[str]:
    return [n for n, ls in zip(case.spec.layer_names(), case.spec.layers) if ls.kind == "dense"]


def _problem_or_value(obs: Observed, name: str, result, what: str | None = None):
    """The array in `result` or None, recording the reason under `name` when there is none."""
    if isinstance(result, Failed):
        obs.problems[name] = result.reason
        return None
    if result is None:
        obs.problems[name] = f"{what or name}: no result"
        return None
    if "error" in result:
        obs.problems[name] = result["error"]
        return None
    return result["value"]


# Requests -------------------------------------------------------------------------------------


def requests(part, cases: list) -> list[ProbeRequest]:
    names = dict(part.names)
    idx = tuple(range(len(cases)))
    main = tuple(i for i, c in enumerate(cases) if c.kind != "stability")
    if part.format == "layer":
        layer_cases = [_layer_case(c) for c in cases]
        out = [ProbeRequest("layers", "layer_layers", {"names": names, "lr": PROBE_LR, "cases": layer_cases}, idx)]
        if {"network_forward", "training_step"} & set(part.check_names):
            net_cases = [
                {
                    "layers": [
                        {k: v for k, v in spec.items() if k not in ("x", "grad_out")}
                        for spec in _layer_case(cases[i])["layers"]
                    ],
                    "x": cases[i].step_x,
                    "y": cases[i].step_y,
                    "lr": part.learning_rate,
                }
                for i in main
            ]
            out.append(ProbeRequest("network", "layer_network", {"names": names, "cases": net_cases}, main))
        return out
    if part.format == "function":
        return [
            ProbeRequest(
                "forward", "function_forward", {"names": names, "cases": [_function_case(c) for c in cases]}, idx
            ),
            ProbeRequest(
                "train",
                "function_train",
                {
                    "names": names,
                    "cases": [{**_function_case(c), "rates": [PROBE_LR, part.learning_rate]} for c in cases],
                },
                idx,
            ),
        ]
    driver = "class_probe" if part.format == "class" else "logistic_probe"
    out = [
        ProbeRequest(
            "forward",
            driver,
            {"names": names, "calls": ["forward", "loss"], "cases": [_class_case(part, c) for c in cases]},
            idx,
        ),
        ProbeRequest(
            "grad", driver, {"names": names, "calls": ["grad"], "cases": [_class_case(part, c) for c in cases]}, idx
        ),
    ]
    if part.format == "class" and "training_step" in part.check_names:
        out.append(
            ProbeRequest(
                "train",
                driver,
                {"names": names, "calls": ["train"], "cases": [_class_case(part, cases[i]) for i in main]},
                main,
            )
        )
    return out


def _layer_case(case) -> dict:
    layers = []
    x = case.x
    for ls, name, rec in zip(case.spec.layers, case.spec.layer_names(), case.trace.layers):
        spec = {"name": name, "kind": ls.kind, "x": x, "grad_out": rec.grad_out}
        if ls.kind == "dense":
            W = case.params[f"{name}.W"]
            spec.update(n_in=W.shape[0], n_out=W.shape[1], W=W, b=case.params[f"{name}.b"])
        layers.append(spec)
        x = rec.out
    return {"layers": layers, "logits": case.trace.layers[-1].out, "labels": case.y}


def _function_case(case) -> dict:
    dense = _dense_names(case)
    t = case.trace
    return {
        "W": [case.params[f"{d}.W"] for d in dense],
        "b": [case.params[f"{d}.b"].reshape(1, -1) for d in dense],  # the notebook's (1, n) biases
        "x": case.x[0],
        "y": int(case.y[0]),
        "z_hidden": [t[d].out for d in dense[:-1]],
        "logits": t[dense[-1]].out,
        "one_hot": _one_hot(case.y, t[dense[-1]].out.shape[1], case.dtype)[0],
        "probs": case.extra_ref["softmax(z_out)"],
    }


def _class_case(part, case) -> dict:
    dense = _dense_names(case)
    if part.format == "class":
        keys = {"W_h": f"{dense[0]}.W", "b_h": f"{dense[0]}.b", "W_o": f"{dense[1]}.W", "b_o": f"{dense[1]}.b"}
    else:
        keys = {"W": f"{dense[0]}.W", "b": f"{dense[0]}.b"}
    sizes = [case.spec.n_in] + [case.params[f"{d}.W"].shape[1] for d in dense]
    probs = case.trace.layers[-1].out
    return {
        "sizes": sizes,
        "params": {k: case.params[v] for k, v in keys.items()},
        "X": case.x,
        "y": case.y,
        "one_hot": _one_hot(case.y, probs.shape[1], case.dtype),
        "probs": probs,
        "x_row": case.step_x[0],
        "y_row": int(case.step_y[0]),
        "lr": part.learning_rate,
    }


def _one_hot(y: np.ndarray, n: int, dtype: str) -> np.ndarray:
    out = np.zeros((len(y), n), dtype)
    out[np.arange(len(y)), y] = 1
    return out


# Observing ------------------------------------------------------------------------------------


def empty_trace(case) -> Trace:
    return Trace(loss=None, layers=[LayerTrace(name) for name in case.spec.layer_names()])


def observe(part, case, results: dict[str, object]) -> Observed:
    """Case `case`'s tensors, from {probe name: the driver's record for this case, or Failed}."""
    obs = Observed(trace=empty_trace(case))
    {"layer": _observe_layer, "function": _observe_function, "class": _observe_class, "logistic": _observe_class}[
        part.format
    ](part, case, results, obs)
    return obs


def _read_back(obs: Observed, name: str, before: np.ndarray, after, lr: float, squeeze: bool = False):
    """dL/dp = (before - after) / lr, after checking `after` has the parameter's shape."""
    if after is None:
        obs.problems[name] = f"{name}: the parameter could not be read back after the update"
        return None
    after = np.asarray(after)
    if squeeze and after.size == before.size:
        after = after.reshape(before.shape)
    if after.shape != before.shape:
        obs.problems[name] = f"{name}: after the update the parameter has shape {after.shape}, expected {before.shape}"
        return None
    return (before.astype(np.float64) - after.astype(np.float64)) / lr


def _observe_layer(part, case, results, obs: Observed) -> None:
    _observe_layers_probe(part, case, results.get("layers"), obs)
    if results.get("network") is not None:
        _observe_network_probe(part, case, results["network"], obs)


def _revealed_by_layers(case) -> list[str]:
    """The tensors the layer format reveals: outputs, dL/d(input), dW, db, the loss and its gradient."""
    names = []
    for name, ls in zip(case.spec.layer_names(), case.spec.layers):
        names += [f"{name}.out", f"{name}.grad_in"] + ([f"{name}.dW", f"{name}.db"] if ls.kind == "dense" else [])
    return [*names, "loss", f"{case.spec.layer_names()[-1]}.grad_out"]


def _observe_layers_probe(part, case, record, obs: Observed) -> None:
    t = obs.trace
    if isinstance(record, Failed) or record is None:
        for name in _revealed_by_layers(case):
            obs.problems[name] = record.reason if record is not None else "not run"
        return
    for ls, rec, got in zip(case.spec.layers, t.layers, record["layers"]):
        rec.out = _problem_or_value(obs, f"{rec.name}.out", got["forward"])
        rec.grad_in = _problem_or_value(obs, f"{rec.name}.grad_in", got["backward"])
        if ls.kind != "dense":
            continue
        after = got.get("params_after_backward")
        if "error" in got["backward"]:
            for p in ("dW", "db"):
                obs.problems[f"{rec.name}.{p}"] = got["backward"]["error"]
            continue
        values = _problem_or_value(obs, f"{rec.name}.dW", after)
        if values is None:
            obs.problems[f"{rec.name}.db"] = obs.problems[f"{rec.name}.dW"]
            continue
        for p, key in (("W", "W"), ("b", "b")):
            g = _read_back(obs, f"{rec.name}.d{p}", case.params[f"{rec.name}.{p}"], values[key], PROBE_LR)
            if g is not None:
                rec.grads[p] = g
    losses = _problem_or_value(obs, "loss", record["loss"])
    if losses is not None:
        if losses.shape == (len(case.y),):
            t.loss = losses.mean() if part.reduction == "mean" else losses.sum()
        else:
            obs.problems["loss"] = (
                f"{part.names['loss']} returned shape {losses.shape}; expected one loss per sample, shape ({len(case.y)},)"
            )
    t.layers[-1].grad_out = _problem_or_value(obs, f"{t.layers[-1].name}.grad_out", record["loss_grad"])


def _observe_network_probe(part, case, net, obs: Observed) -> None:
    """forward(network, X)'s activations and the parameters after train(network, X, y)."""
    outs = _problem_or_value(obs, "network: forward", net if isinstance(net, Failed) else net["forward"])
    names = case.spec.layer_names()
    for i, name in enumerate(names):
        key = f"network: {name}.out"
        if outs is None:
            obs.problems[key] = obs.problems["network: forward"]
        elif len(outs) != len(names):
            obs.problems[key] = (
                f"{part.names['forward']}(network, X) returned {len(outs)} activations for {len(names)} layers"
            )
        else:
            obs.extras[key] = outs[i]
    obs.problems.pop("network: forward", None)
    trained = _problem_or_value(obs, "step", net if isinstance(net, Failed) else net["train"])
    for i, (name, ls) in enumerate(zip(names, case.spec.layers)):
        if ls.kind != "dense":
            continue
        for p in ("W", "b"):
            key = f"step: {name}.{p}"
            if trained is None and "step" in obs.problems:
                obs.problems[key] = obs.problems["step"]
                continue
            got = _problem_or_value(obs, key, net["params"][i])
            if got is not None:
                obs.extras[key] = got[p] if got[p] is not None else np.full(1, np.nan)
    obs.problems.pop("step", None)


def _observe_function(part, case, results, obs: Observed) -> None:
    t = obs.trace
    dense = _dense_names(case)
    fwd = results.get("forward")
    if isinstance(fwd, Failed):
        fwd = {
            "feed_forward": {"error": fwd.reason},
            "params_after": {"error": fwd.reason},
            "activation": None,
            "derivative": None,
            "softmax": None,
            "loss": None,
            "_failed": fwd.reason,
        }
    ff = _problem_or_value(obs, "loss", fwd["feed_forward"])
    if ff is not None:
        t.loss = ff["loss"]
        guess = ff["guess"]
        obs.extras["prediction"] = guess.reshape(-1) if guess.size == case.extra_ref["prediction"].size else guess
    else:
        obs.problems["prediction"] = obs.problems["loss"]
    after = _problem_or_value(obs, "after forward", fwd["params_after"])
    for i, d in enumerate(dense):
        for p, key in (("W", "W"), ("b", "b")):
            name = f"unchanged by {part.names['forward']}: {d}.{p}"
            if after is None:
                obs.problems[name] = obs.problems["after forward"]
            elif i >= len(after[key]):
                obs.problems[name] = (
                    f"{part.names['weights' if p == 'W' else 'biases']} has {len(after[key])} entries, expected {len(dense)}"
                )
            else:
                obs.extras[name] = (
                    after[key][i].reshape(-1)
                    if p == "b" and after[key][i].size == case.params[f"{d}.b"].size
                    else after[key][i]
                )
    obs.problems.pop("after forward", None)
    for key, label, count in (
        ("activation", "{act}(z_{k})", len(dense) - 1),
        ("derivative", "{der}(z_{k})", len(dense) - 1),
        ("softmax", "softmax(z_out)", 1),
        ("loss", "cross_entropy_loss(y, p)", 1),
    ):
        for k in range(count):
            name = label.format(act=part.names["activation"], der=part.names["derivative"], k=k + 1)
            got = fwd.get(key)
            if got is None:
                obs.problems[name] = fwd.get("_failed", "not run")
                continue
            value = _problem_or_value(obs, name, got[k])
            if value is not None:
                obs.extras[name] = value
    train = results.get("train")
    per_rate = [train, train] if isinstance(train, Failed) else train["train"]
    for rate_index, (lr, prefix) in enumerate(((PROBE_LR, ""), (part.learning_rate, "step: "))):
        got = _problem_or_value(obs, "train", per_rate[rate_index])
        for i, d in enumerate(dense):
            for p, key in (("W", "W"), ("b", "b")):
                name = f"{d}.d{p}" if not prefix else f"step: {d}.{p}"
                if got is None:
                    obs.problems[name] = obs.problems["train"]
                    continue
                if i >= len(got[key]):
                    obs.problems[name] = (
                        f"{part.names['weights' if p == 'W' else 'biases']} has {len(got[key])} entries after training, expected {len(dense)}"
                    )
                    continue
                before = case.params[f"{d}.{p}"]
                if prefix:
                    value = got[key][i]
                    obs.extras[name] = value.reshape(before.shape) if value.size == before.size else value
                else:
                    g = _read_back(obs, name, before, got[key][i], lr, squeeze=True)
                    if g is not None:
                        t[d].grads[p] = g
        obs.problems.pop("train", None)


def _observe_class(part, case, results, obs: Observed) -> None:
    t = obs.trace
    dense = _dense_names(case)
    keys = ["W_h", "b_h", "W_o", "b_o"] if part.format == "class" else ["W", "b"]
    targets = [(dense[i // 2], "W" if i % 2 == 0 else "b") for i in range(len(keys))]

    def record(probe: str, call: str):
        got = results.get(probe)
        if got is None:
            return None
        return got if isinstance(got, Failed) else got[call]

    t.layers[-1].out = _problem_or_value(obs, f"{t.layers[-1].name}.out", record("forward", "forward"))
    loss = _problem_or_value(obs, "loss", record("forward", "loss"))
    t.loss = loss
    grads = _problem_or_value(obs, "grads", record("grad", "grad"))
    for key, (d, p) in zip(keys, targets):
        if grads is None:
            obs.problems[f"{d}.d{p}"] = obs.problems["grads"]
        else:
            t[d].grads[p] = grads[key]
    obs.problems.pop("grads", None)
    if "train" not in results:
        return
    trained = _problem_or_value(obs, "train", record("train", "train"))
    for key, (d, p) in zip(keys, targets):
        if trained is None:
            obs.problems[f"step: {d}.{p}"] = obs.problems["train"]
        else:
            obs.extras[f"step: {d}.{p}"] = trained[key]
    obs.problems.pop("train", None)
