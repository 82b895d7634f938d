"""Diagnoses as tested hypotheses: what a diverging tensor WOULD be under each known bug.

    diagnose(name, yours, view) -> Diagnosis | None

For the tensor `name` ("dense_2.dW", "relu_1.grad_in", "loss", "step: dense_3.W", ...) every
hypothesis is computed from the reference's own quantities on the same weights and inputs (`view`:
the reference trace, parameters, input, learning rate), and the submission's tensor is compared
with each under the same tolerance policy as the reference itself (oracles/compare.py, "submission").
A hypothesis that also equals the reference (ReLU's derivative at the activation is the derivative
at the pre-activation) says nothing and is dropped. The closest match within tolerance is the
diagnosis, reported with its numbers; nothing matching means no diagnosis, never a guess.

The hypotheses are local: the first diverging tensor (in computation order) sits on correct
upstream tensors, so one wrong step explains it.

    transpose          yours == ref.T (or W used where W.T belongs)
    batch_size         yours == ref * B (summed, not averaged) or ref / B (divided twice / mean)
    sign               yours == -ref
    zero               yours == 0 (never updated, or never computed)
    pre_activation     dW from the layer input's pre-activation z instead of its activation f(z)
    at_activation      an activation's derivative evaluated at f(z) instead of z (the reverse)
    missing_derivative the activation's derivative left out of the chain rule
    after_update       computed with the weights already updated by this step (W - lr dW)
    missing_bias       the forward pass (or the loss) computed without a layer's bias
    not_summed         the bias gradient kept per sample (batch, n) instead of summed
    reshaped           the right numbers in the wrong shape ((1, n) for (n,))
    overwritten        a parameter overwritten by the forward pass (np.dot(a, W, b): b is `out`)
    unstable           NaN or inf where the reference is finite
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oracles.compare import atol, quantity_of, rel_error, tolerance
from reference.layers import sigmoid
from reference.spec import ModelSpec
from reference.trace import Trace


@dataclass(frozen=True)
class Diagnosis:
    bug: str  # one of the labels above
    text: str  # the explanation with its numbers

    def __str__(self) -> str:
        return self.text


@dataclass
class RefView:
    """What the hypotheses are computed from: the reference on the same weights and inputs."""

    spec: ModelSpec
    params: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray  # (batch,) int labels
    trace: Trace
    lr: float  # the rate the submission's update used
    dtype: str
    local: tuple[tuple[str, str], ...] | None = None  # ((name, kind),): one layer alone on its own input

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.local] if self.local else self.spec.layer_names()


def _d_activation(kind: str, v: np.ndarray) -> np.ndarray | None:
    """f'(v) for an activation, as a function of its input v."""
    if kind == "sigmoid":
        s = sigmoid(v)
        return s * (1 - s)
    if kind == "tanh":
        return 1 - np.tanh(v) ** 2
    if kind == "relu":
        return (v > 0).astype(v.dtype)
    return None


def _kind(view: RefView, name: str) -> str:
    if view.local:
        return dict(view.local)[name]
    return view.spec.layers[view.names.index(name)].kind


def _neighbours(view: RefView, layer: str):
    """(input to the layer, pre-activation of that input or None, activation layer after it or None)."""
    i = view.names.index(layer)
    layers = view.trace.layers
    x_in = view.x if i == 0 else layers[i - 1].out
    pre = layers[i - 2].out if i >= 2 and _kind(view, layers[i - 1].name) in ("relu", "sigmoid", "tanh") else None
    act = (
        layers[i + 1].name
        if i + 1 < len(layers) and _kind(view, layers[i + 1].name) in ("relu", "sigmoid", "tanh")
        else None
    )
    return x_in, pre, act


def _alt_grad_outs(view: RefView, dense: str) -> list[tuple[str, str, np.ndarray]]:
    """dL/d(out of `dense`) under the bugs that sit in the activation after it."""
    _, _, act = _neighbours(view, dense)
    if act is None:
        return []
    t = view.trace
    g_act, z, a = t[act].grad_out, t[dense].out, t[act].out
    kind = _kind(view, act)
    out = [("missing_derivative", f"the {act} derivative is missing: dL/d{dense}.out = dL/d{act}.out", g_act)]
    d_at_a = _d_activation(kind, a)
    if d_at_a is not None:
        out.append(
            (
                "at_activation",
                f"the {act} derivative is evaluated at its output (the activation) instead of its input z "
                f"(the pre-activation): dL/dz = dL/da * f'(a) where f'(z) belongs",
                g_act * d_at_a,
            )
        )
    i = view.names.index(act)
    if i + 1 < len(view.names) and _kind(view, view.names[i + 1]) == "dense":
        above = view.names[i + 1]
        W_new = view.params[f"{above}.W"] - view.lr * t[above].grads["W"]
        g_a = t[above].grad_out @ W_new.T
        out.append(
            (
                "after_update",
                f"backpropagated through {above}'s weights AFTER they were updated (W - lr dW, lr = {view.lr:g})",
                g_a * _d_activation(kind, z),
            )
        )
    return out


def _target(name: str, key=None) -> tuple[bool, str]:
    """(a parameter after a step?, the trace tensor the hypotheses are about: "dense_2.dW", "loss").

    From the typed key (grading.adapters.Key: check, layer, field) when there is one; a plain name
    ("step: dense_1.W", "network: relu_1.out") is read by its prefix."""
    if key is not None:
        step = key.check == "training_step"
        if key.layer is None:
            return step, "loss" if key.field == "loss" else key.tensor
        return step, f"{key.layer}.d{key.field}" if step else f"{key.layer}.{key.field}"
    step = name.startswith("step: ")
    base = name.removeprefix("step: ").removeprefix("network: ")
    if step:  # a parameter after one step: test the implied gradient instead
        layer, p = base.split(".")
        base = f"{layer}.d{p}"
    return step, base


def hypotheses(name: str, yours: np.ndarray, view: RefView, key=None) -> list[tuple[str, str, np.ndarray]]:
    """(bug, explanation, what the tensor would be) for every hypothesis that applies to `name`."""
    t = view.trace
    B = view.batch
    step, base = _target(name, key)
    ref = _reference(view, base)
    hyps: list[tuple[str, str, np.ndarray]] = []
    if ref is None:
        return hyps
    hyps.append(("sign", "the sign is flipped", -ref))
    if B > 1:
        mean = view.spec.reduction == "mean" or base.endswith(".grad_out")
        hyps.append(
            (
                "batch_size",
                f"off by the batch size: multiplied by B = {B}"
                + (" (summed over the batch where the loss is a mean)" if mean else ""),
                ref * B,
            )
        )
        hyps.append(
            (
                "batch_size",
                f"off by the batch size: divided by B = {B}"
                + (
                    " a second time (the incoming gradient is already divided by it)"
                    if mean
                    else " (a mean where the loss is summed)"
                ),
                ref / B,
            )
        )
    if ref.ndim == 2 and (ref.shape[0] == ref.shape[1] or yours.shape == ref.T.shape):
        why = " (W is (n_in, n_out): dL/dW = input.T @ delta)" if base.endswith(".dW") else ""
        hyps.append(("transpose", f"it is the transpose of the right tensor, shape {ref.shape}{why}", ref.T))
    if yours.shape != ref.shape and yours.size == ref.size:
        hyps.append(
            (
                "reshaped",
                f"the right numbers in the wrong shape: {yours.shape} where {ref.shape} is expected",
                ref.reshape(yours.shape),
            )
        )
    layer, _, field = base.partition(".")
    if field in ("dW", "db"):
        x_in, pre, _ = _neighbours(view, layer)
        g = t[layer].grad_out
        if field == "dW" and pre is not None:
            hyps.append(
                (
                    "pre_activation",
                    "computed from the pre-activation z of the layer's input instead of its activation f(z): dW = z.T @ delta",
                    pre.T @ g,
                )
            )
        for bug, text, g_alt in _alt_grad_outs(view, layer):
            hyps.append((bug, text, x_in.T @ g_alt if field == "dW" else g_alt.sum(axis=0)))
        if field == "db" and yours.shape == g.shape and B > 1:
            hyps.append(
                ("not_summed", f"the bias gradient is kept per sample, shape {g.shape}: sum it over the batch", g)
            )
    elif field == "grad_in" and _kind(view, layer) == "dense":
        W = view.params[f"{layer}.W"]
        g = t[layer].grad_out
        W_new = W - view.lr * t[layer].grads["W"]
        hyps.append(
            (
                "after_update",
                f"computed with the layer's weights AFTER the update (W - lr dW, lr = {view.lr:g})",
                g @ W_new.T,
            )
        )
        if W.shape[0] == W.shape[1]:
            hyps.append(("transpose", "multiplied by W where W.T belongs: dL/dx = delta @ W.T", g @ W))
    elif field == "grad_in":
        kind = _kind(view, layer)
        g, a = t[layer].grad_out, t[layer].out
        hyps.append(
            ("missing_derivative", f"the {kind} derivative is missing: grad_output passed through unchanged", g)
        )
        d_at_a = _d_activation(kind, a)
        if d_at_a is not None:
            hyps.append(
                (
                    "at_activation",
                    f"the {kind} derivative is evaluated at the activation f(z) instead of the input z (the pre-activation)",
                    g * d_at_a,
                )
            )
        i = view.names.index(layer)
        z = view.x if i == 0 else t.layers[i - 1].out
        in_terms_of_a = {"sigmoid": z * (1 - z), "tanh": 1 - z * z}.get(kind)
        if in_terms_of_a is not None:
            form = "a(1 - a)" if kind == "sigmoid" else "1 - a^2"
            hyps.append(
                (
                    "pre_activation",
                    f"the {kind} derivative written for the activation a, {form}, is applied to the pre-activation z",
                    g * in_terms_of_a,
                )
            )
    elif field == "out" and _kind(view, layer) == "dense":
        i = view.names.index(layer)
        x_in = view.x if i == 0 else t.layers[i - 1].out
        hyps.append(("missing_bias", "the bias is not added: out = x @ W", x_in @ view.params[f"{layer}.W"]))
    elif field == "out":
        i = view.names.index(layer)
        x_in = view.x if i == 0 else t.layers[i - 1].out
        hyps.append(("activation_not_applied", f"the {_kind(view, layer)} is not applied: out = input", x_in))
    elif base == "loss" and not view.local:
        hyps.extend(_loss_without_bias(view))
    if step:  # compare implied gradients: (old - new) / lr == the hypothesis
        layer, dp = base.split(".")
        old = view.params[f"{layer}.{dp[1:]}"]
        hyps = [(bug, text, old - view.lr * h) for bug, text, h in hyps if h.shape == old.shape]
        hyps.append(("zero", "never updated: the parameter is unchanged after the training step", old))
    return hyps


def _loss_without_bias(view: RefView) -> list[tuple[str, str, np.ndarray]]:
    from reference.network import Network

    out = []
    for name, ls in zip(view.names, view.spec.layers):
        if ls.kind != "dense":
            continue
        params = {k: v.copy() for k, v in view.params.items()}
        params[f"{name}.b"][...] = 0
        with np.errstate(all="ignore"):
            loss = Network(view.spec, params).trace(view.x, view.y).loss
        out.append(("missing_bias", f"the loss is computed without {name}'s bias", np.asarray(loss)))
    return out


def _reference(view: RefView, name: str) -> np.ndarray | None:
    t = view.trace
    if name == "loss":
        return None if t.loss is None else np.asarray(t.loss)
    layer, _, field = name.partition(".")
    if layer not in view.names:
        return None
    rec = t[layer]
    if field in ("dW", "db"):
        return rec.grads.get(field[1:])
    return getattr(rec, field, None)


def diagnose(
    name: str, yours: np.ndarray | None, view: RefView | None, expected: np.ndarray | None = None, key=None
) -> Diagnosis | None:
    """The hypothesis that explains `yours` for tensor `name`, with its numbers; None if none does.
    `key` (grading.adapters.Key) names the tensor by type; without it `name` is read by prefix."""
    step, base = _target(name, key)
    if yours is None:
        return None
    yours = np.asarray(yours)
    if yours.dtype.kind not in "biuf":
        return None
    expected = _reference(view, base) if expected is None and view is not None and not step else expected
    first = _first_signs(name, yours, expected, step)
    if first is not None:
        return first
    if view is None:  # a probe with no hypotheses of its own (a helper function on a random input)
        return None
    quantity = "parameters" if step else quantity_of(base)
    return _best(name, yours, expected, hypotheses(name, yours, view, key), view.dtype, quantity)


def _first_signs(name: str, yours: np.ndarray, expected: np.ndarray | None, step: bool) -> Diagnosis | None:
    """unstable (non-finite where the reference is finite) and zero (nothing computed or updated)."""
    if yours.size and not np.isfinite(yours).all() and (expected is None or np.isfinite(expected).all()):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(yours))[0])
        at = f" at {list(idx)}" if idx else ""
        return Diagnosis(
            "unstable", f"unstable: {yours[idx]}{at} where the reference is finite (overflow in exp, or log of 0?)"
        )
    if expected is not None and expected.size and yours.size and not np.any(yours) and np.any(expected):
        what = (
            "never updated: the parameter is unchanged" if step else "zero everywhere (never computed or never updated)"
        )
        return Diagnosis("zero", f"{what}; the reference's largest entry is {np.abs(expected).max():.4g}")
    return None


def _best(name: str, yours, expected, candidates, dtype: str, quantity: str) -> Diagnosis | None:
    """The closest hypothesis within tolerance that differs from the reference; None if none matches."""
    tol, floor = tolerance("submission", dtype, quantity), atol("submission", dtype)
    best = None
    for bug, text, h in candidates:
        h = np.asarray(h)
        if h.shape != yours.shape or (
            expected is not None and h.shape == expected.shape and _close(h, expected, tol, floor)
        ):
            continue
        err = rel_error(yours, h)
        if _close(yours, h, tol, floor) and (best is None or err < best[0]):
            best = (err, bug, text)
    if best is None:
        return None
    err, bug, text = best
    off = (
        f"; it differs from the reference by {rel_error(yours, expected):.3g}"
        if expected is not None and expected.shape == yours.shape
        else ""
    )
    return Diagnosis(
        bug, f"{text}. Your {name} matches that to a relative error of {err:.1g} (tolerance {tol:.0e}){off}."
    )


def generic_alternatives(expected: np.ndarray, batch: int | None = None) -> list[tuple[str, str, np.ndarray]]:
    """The layout-free hypotheses every format shares: transposed, sign, a batch factor, reshaped."""
    out = [("sign", "the sign is flipped (a + where the chain rule has a -, or the update's direction)", -expected)]
    if expected.ndim == 2 and expected.shape[0] != expected.shape[1]:
        out.append(
            ("transpose", "the right numbers transposed (W stored the other way round, or W used for W.T)", expected.T)
        )
    elif expected.ndim == 2:
        out.append(("transpose", "transposed (W used where W.T belongs)", expected.T))
    if batch and batch > 1:
        out.append(
            (
                "batch_size",
                f"summed over the batch instead of averaged (the reference times N = {batch})",
                expected * batch,
            )
        )
        out.append(
            ("batch_size", f"divided by the batch size once too often (the reference / N = {batch})", expected / batch)
        )
    return out


def diagnose_alternatives(
    name: str, yours: np.ndarray, expected: np.ndarray, alternatives, dtype: str, quantity: str
) -> Diagnosis | None:
    """A registered format's diagnosis: unstable, zero, then the closest of its own hypotheses
    `alternatives` ((bug, text, value), computed in the grader when the case was planned) that
    matches `yours` and differs from the reference. A tensor of the expected numbers in another
    shape is "reshaped"."""
    yours = np.asarray(yours)
    if yours.dtype.kind not in "biuf":
        return None
    first = _first_signs(name, yours, expected, step=False)
    if first is not None:
        return first
    if yours.shape != expected.shape and yours.size == expected.size:
        tol, floor = tolerance("submission", dtype, quantity), atol("submission", dtype)
        if _close(yours.reshape(expected.shape), expected, tol, floor):
            return Diagnosis(
                "reshaped", f"the right numbers in the wrong shape: {yours.shape} where {expected.shape} belongs"
            )
    return _best(name, yours, expected, alternatives, dtype, quantity)


def _close(a: np.ndarray, b: np.ndarray, tol: float, floor: float) -> bool:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return False
    return rel_error(a64, b64) <= tol or float(np.abs(a64 - b64).max(initial=0.0)) <= floor
