"""Finite differences: the framework-free oracle.

    numeric_trace(net, x, y) -> Trace      every gradient by central differences, in float64

dL/d(out of layer k) perturbs that output and runs the rest of the network; dL/dW perturbs the
parameter and runs the whole network; dL/d(input of layer k) is dL/d(out of layer k-1) (for the
first layer, the network input is perturbed). Central differences have truncation error O(h^2) and
rounding error O(1e-16 / h); h = 1e-6 balances them at about 1e-10 relative to the tensor scale.
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


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """df/dx by central differences: (f(x + h e_i) - f(x - h e_i)) / 2h, perturbing x in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = f()
        x[i] = old - h
        f_minus = f()
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
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
    h: float = 1e-6,
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
    for k, rec in enumerate(records):
        h_k = outs[k].copy()
        rec.grad_out = numerical_gradient(lambda k=k, h_k=h_k: run_from(k + 1, h_k), h_k, h)
        for pname, p in layers[k].params.items():
            rec.grads[pname] = numerical_gradient(lambda: run_from(0, x64), p, h)
    x_probe = x64.copy()
    records[0].grad_in = numerical_gradient(lambda: run_from(0, x_probe), x_probe, h)
    for k in range(1, len(records)):
        records[k].grad_in = records[k - 1].grad_out
    for layer, saved in zip(layers, snapshot):
        if isinstance(layer, BatchNorm):
            layer.state = saved.state
    return Trace(loss=np.float64(loss), layers=records)
