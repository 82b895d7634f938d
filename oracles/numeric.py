"""Finite differences: the framework-free oracle.

    numeric_trace(net, x, y) -> Trace      every gradient by central differences, in float64

dL/d(out of layer k) perturbs that output and runs the rest of the network; dL/dW of layer k perturbs
the parameter and runs the network from layer k, on the input layer k got (the layers before it do
not read W: their outputs are the same numbers, so the loss is bit for bit the one of a run from
the network input, pinned by tests/test_numeric.py); dL/d(input of layer k) is dL/d(out of layer
k-1) (for the first layer, the network input is perturbed).

The step. The rounding error of a difference quotient is ~eps |L| / h (eps = 2.2e-16, L the loss:
relative to the *loss*, not to the gradient tensor), so h must not be small: at h = 1e-6 one ulp of
an O(1) loss over 2h is already 1.1e-10, i.e. 1e-7 of any gradient tensor below ~2e-3 |L|. A larger
h needs a higher-order stencil, or the truncation error grows with the input scale (raw 0..255
pixels make a weight step of h a pre-activation step of 255 h: the 3-point rule is then off by
~3e-7). So: the 5-point central stencil (8 (f(+h) - f(-h)) - (f(+2h) - f(-2h))) / 12h, truncation
h^4 |L'''''| / 30, rounding ~1.5 eps |L| / h, at h = 1e-5: both ~1e-11 |L| on every case and preset
of the test suite, raw pixels included. Near a kink (a ReLU input or an L1 residual within 2h of 0)
no step helps: callers keep their inputs off kinks.
A float32 network is checked through a float64 copy with the same (rounded) parameters. Dropout
masks are drawn once and reused for every evaluation, so the function being differentiated is fixed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from reference.layers import BatchNorm, Dropout
from reference.network import Network
from reference.trace import LayerTrace, Trace


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """df/dx_i = (8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))) / 12h, in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        f_at = {}
        for step in (h, -h, 2 * h, -2 * h):
            x[i] = old + step
            f_at[step] = f()
        x[i] = old
        grad[i] = (8 * (f_at[h] - f_at[-h]) - (f_at[2 * h] - f_at[-2 * h])) / (12 * h)
    return grad


def as_float64(net: Network) -> Network:
    """A float64 copy of `net` with the same parameters (and batchnorm statistics)."""
    spec64 = net.spec.replace(dtype="float64")
    net64 = Network(spec64, params={k: v.astype(np.float64) for k, v in net.params.items()})
    for src, dst in zip(net.layers, net64.layers):
        if isinstance(src, BatchNorm):
            dst.state = {k: v.astype(np.float64) for k, v in src.state.items()}
    return net64


def draw_masks(net: Network, x: np.ndarray) -> dict[str, np.ndarray]:
    """One keep-mask per dropout layer for input `x` (pass the same masks to every oracle)."""
    masks = {}
    h = x
    for layer in net.layers:
        if isinstance(layer, Dropout):
            masks[layer.name] = layer.draw_mask(h.shape, h.dtype)
            h, _ = layer.forward(h, True, mask=masks[layer.name])
        else:
            h, _ = copy.deepcopy(layer).forward(h, True)  # a copy: batchnorm state stays untouched
    return masks


def numeric_trace(
    net: Network,
    x: np.ndarray,
    y: np.ndarray,
    train: bool = True,
    masks: dict[str, np.ndarray] | None = None,
    h: float = 1e-5,
) -> Trace:
    """The Trace of `net` on (x, y) with every gradient from central differences in float64."""
    net64 = as_float64(net)
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64) if not net64.loss.classification else y
    if masks is None and any(isinstance(layer, Dropout) for layer in net64.layers):
        masks = draw_masks(net64, x64) if train else None
    masks64 = {k: v.astype(np.float64) for k, v in (masks or {}).items()}
    layers = net64.layers
    snapshot = copy.deepcopy(layers)  # batchnorm running statistics change in training mode

    def run_from(k: int, h_in: np.ndarray) -> float:
        """The loss with `h_in` fed into layer k (k = 0: the network input)."""
        h_ = h_in
        for layer in layers[k:]:
            if isinstance(layer, Dropout):
                h_, _ = layer.forward(h_, train, mask=masks64.get(layer.name))
            else:
                h_, _ = layer.forward(h_, train)
        return float(net64._loss_and_grad(h_, y64)[0])

    outs, _ = net64.forward_cached(x64, train, masks64)
    loss = run_from(0, x64)
    records = [LayerTrace(layer.name, out=out.copy()) for layer, out in zip(layers, outs)]
    ins = [x64, *(out.copy() for out in outs[:-1])]  # what each layer got
    for k, rec in enumerate(records):
        h_k = outs[k].copy()
        rec.grad_out = numerical_gradient(lambda k=k, h_k=h_k: run_from(k + 1, h_k), h_k, h)
        for pname, p in layers[k].params.items():
            rec.grads[pname] = numerical_gradient(lambda k=k: run_from(k, ins[k]), p, h)
    x_probe = x64.copy()
    records[0].grad_in = numerical_gradient(lambda: run_from(0, x_probe), x_probe, h)
    for k in range(1, len(records)):
        records[k].grad_in = records[k - 1].grad_out
    for layer, saved in zip(layers, snapshot):
        if isinstance(layer, BatchNorm):
            layer.state = saved.state
    return Trace(loss=np.float64(loss), layers=records)
