"""Trace: the one record every implementation answers with (reference, twins, finite differences,
a student's submission behind its adapter), so comparing and reporting are written once.

    Trace.loss                  scalar (0-d array in the model's dtype)
    Trace.layers[i].name        "dense_1", "sigmoid_1", ... in forward order
    Trace.layers[i].out         forward output of the layer           (batch, *out shape)
    Trace.layers[i].grad_out    dL/d(out)                              (batch, *out shape)
    Trace.layers[i].grad_in     dL/d(input of the layer)               (batch, *in shape)

Shapes per sample are (n,) for flat layers and (C, H, W) for images, NCHW in every implementation
(the keras twin converts from its NHWC).
    Trace.layers[i].grads       {"W": dL/dW, "b": dL/db} for layers with parameters

Any field may be None when an implementation cannot reveal it (a student's submission that only
returns parameter gradients, say); comparisons skip what one side does not have and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

# The per-layer fields in the order they are computed by forward then backward.
FORWARD_FIELDS = ("out",)
BACKWARD_FIELDS = ("grad_out", "grads", "grad_in")


@dataclass
class LayerTrace:
    name: str
    out: np.ndarray | None = None
    grad_out: np.ndarray | None = None
    grad_in: np.ndarray | None = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Trace:
    loss: np.ndarray | float | None
    layers: list[LayerTrace]

    def __getitem__(self, name: str) -> LayerTrace:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in this trace; layers are {self.names}")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def tensors(self) -> Iterator[tuple[str, np.ndarray | None]]:
        """Every tensor with its qualified name, in the order they are computed.

        Forward outputs first (first layer to last), then the loss, then the backward pass walking
        back from the loss: for each layer from last to first, grad_out, its parameter gradients,
        grad_in. The first tensor in this order that diverges is where a bug is.
        """
        for layer in self.layers:
            yield f"{layer.name}.out", layer.out
        yield "loss", None if self.loss is None else np.asarray(self.loss)
        for layer in reversed(self.layers):
            yield f"{layer.name}.grad_out", layer.grad_out
            for pname in sorted(layer.grads):
                yield f"{layer.name}.d{pname}", layer.grads[pname]
            yield f"{layer.name}.grad_in", layer.grad_in

    def as_dict(self) -> dict[str, np.ndarray]:
        """Flat {qualified name: array} of every tensor present (for baselines and reports)."""
        return {name: np.asarray(a) for name, a in self.tensors() if a is not None}
