"""Sequential network: forward with a cache, backward to a Trace.

    net = Network(spec, seed=0)                 # or Network(spec, params={"dense_1.W": ..., ...})
    trace = net.trace(x, y)                     # loss and every per-layer tensor (reference/trace.py)
    loss, grads = net.loss_and_grads(x, y)      # the same numbers by the same code, only what training
                                                # needs (no records, no dL/d(network input))
    out = net.forward(x)                        # inference (dropout off, batchnorm running stats)

loss_and_grads and forward run a ReLU directly followed by a MaxPool2D in the other order, pool
then ReLU (training_order): the same numbers, on a PH PW times smaller array for the ReLU.

Parameters are named "<layer>.<param>" ("dense_1.W", "dense_1.b", "batchnorm_1.gamma"), W is
(n_in, n_out) and b is (n_out,): the canonical layout every twin converts from and to. A conv2d W
is (F, C, KH, KW), its b (F,); image inputs are (batch, C, H, W) (spec.input_shape).
"""

from __future__ import annotations

import numpy as np

from reference.errors import DTypeError, ShapeError, check_array, describe
from reference.init import INITIALIZERS, conv_kernel
from reference.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from reference.losses import make_loss
from reference.spec import ModelSpec
from reference.trace import LayerTrace, Trace

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}


def training_order(layers: list) -> tuple[int, ...]:
    """The layers' indices in the order loss_and_grads and forward run them: every ReLU directly
    followed by a MaxPool2D swapped with it, the rest in place.

    max-pool(relu(x)) = relu(max-pool(x)), since relu is monotone. The gradients are the same too.
    In both orders dL/dx is g at the first maximum of each window whose maximum m is positive, and
    g * 0 everywhere else (+-0 with g's sign, or NaN where g is not finite). Layer by layer that is
    (g * [first max]) * [x > 0]; swapped, (g * [m > 0]) * [first max]. The first maxima of x and of
    relu(x) coincide where m > 0, and every factor is 0 or 1. Only for pools that tile (stride =
    pool): where windows overlap, an element's dL/dx is a sum over its windows, and a zero of it
    can come out -0 one way and +0 the other (the same value; not the same bits). The ReLU then
    works on the pooled array, PH PW times smaller, and its two full-size passes (forward and
    backward) are gone (mnist-cnn: the two ReLUs were ~12 % of a training step).
    tests/test_fast_forms.py pins the swapped order to the layer order, bit for bit.
    """
    order = list(range(len(layers)))
    for i in range(len(layers) - 1):
        relu, pool = layers[order[i]], layers[order[i + 1]]
        if type(relu) is ReLU and type(pool) is MaxPool2D and pool.stride == pool.pool:
            order[i], order[i + 1] = order[i + 1], order[i]
    return tuple(order)


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters for `spec` from numpy.random.default_rng(seed), in the spec's dtype."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    shape = spec.sample_shape
    for name, layer, out_shape in zip(spec.layer_names(), spec.layers, spec.layer_shapes()):
        if layer.kind == "dense":
            W, b = INITIALIZERS[layer.init or spec.init](rng, shape[0], layer.units)
            params[f"{name}.W"], params[f"{name}.b"] = W.astype(spec.dtype), b.astype(spec.dtype)
        elif layer.kind == "conv2d":
            W, b = conv_kernel(layer.init or spec.init, rng, conv_weight_shape(layer, shape))
            params[f"{name}.W"], params[f"{name}.b"] = W.astype(spec.dtype), b.astype(spec.dtype)
        elif layer.kind in ("batchnorm", "layernorm"):
            params[f"{name}.gamma"] = np.ones(shape[0], spec.dtype)
            params[f"{name}.beta"] = np.zeros(shape[0], spec.dtype)
        shape = out_shape
    return params


def conv_weight_shape(layer, in_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(F, C, KH, KW) of a conv2d LayerSpec on a (C, H, W) input."""
    (kh, kw), _, _ = layer.pairs()
    return (layer.filters, in_shape[0], kh, kw)


class Network:
    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray] | None = None, seed: int = 0) -> None:
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.loss = make_loss(spec.loss, spec.reduction)
        dropout_rng = np.random.default_rng([seed, 1])  # apart from the init stream
        source = init_params(spec, seed) if params is None else params
        self.layers = []
        shape = spec.sample_shape
        for name, ls, out_shape in zip(spec.layer_names(), spec.layers, spec.layer_shapes()):
            n_in, in_shape, shape = shape[0], shape, out_shape
            if ls.kind == "dense":
                W, b = self._take(source, name, {"W": (n_in, ls.units), "b": (ls.units,)})
                self.layers.append(Dense(name, W, b))
            elif ls.kind == "conv2d":
                _, stride, padding = ls.pairs()
                W, b = self._take(source, name, {"W": conv_weight_shape(ls, in_shape), "b": (ls.filters,)})
                self.layers.append(Conv2D(name, W, b, stride, padding))
            elif ls.kind in ("maxpool2d", "avgpool2d"):
                pool, stride, _ = ls.pairs()
                self.layers.append((MaxPool2D if ls.kind == "maxpool2d" else AvgPool2D)(name, pool, stride))
            elif ls.kind == "flatten":
                self.layers.append(Flatten(name))
            elif ls.kind == "batchnorm":
                layer = BatchNorm(name, n_in, self.dtype, ls.convention, ls.momentum, ls.eps)
                gamma, beta = self._take(source, name, {"gamma": (n_in,), "beta": (n_in,)})
                layer.params = {"gamma": gamma, "beta": beta}
                self.layers.append(layer)
            elif ls.kind == "layernorm":
                layer = LayerNorm(name, n_in, self.dtype, LayerNorm.EPS if ls.eps is None else ls.eps)
                gamma, beta = self._take(source, name, {"gamma": (n_in,), "beta": (n_in,)})
                layer.params = {"gamma": gamma, "beta": beta}
                self.layers.append(layer)
            elif ls.kind == "leaky_relu":
                self.layers.append(LeakyReLU(name, ls.alpha))
            elif ls.kind == "dropout":
                rate = ls.rate if ls.keep is None else None  # keep given: the layer divides by keep itself
                self.layers.append(Dropout(name, rate, dropout_rng, keep=ls.keep))
            else:
                self.layers.append(ACTIVATIONS[ls.kind](name))
        if params is not None:
            self.set_params(params)  # checks shapes and dtypes, copies
        self._first_with_params = next(i for i, layer in enumerate(self.layers) if layer.params)
        self._train_order = training_order(self.layers)  # a swap moves no layer with parameters

    def _take(self, params, layer: str, shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
        """Copies of params["<layer>.<name>"], each checked against the shape the spec gives it."""
        missing = [f"{layer}.{n}" for n in shapes if f"{layer}.{n}" not in params]
        if missing:
            raise ShapeError(f"network: parameters {missing} missing; got {sorted(params)}")
        for n, shape in shapes.items():
            if np.shape(params[f"{layer}.{n}"]) != shape:
                got = describe(params[f"{layer}.{n}"])
                raise ShapeError(f"network: parameter {layer}.{n}: expected shape {shape} from the spec, got {got}")
        return [np.array(params[f"{layer}.{n}"], dtype=self.dtype) for n in shapes]

    # Parameters -----------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The live parameter arrays, by name; the optimiser updates these in place."""
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.params.items()}

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, new: dict[str, np.ndarray]) -> None:
        live = self.params
        if set(new) != set(live):
            raise ShapeError(f"network: expected parameters {sorted(live)}, got {sorted(new)}")
        for k, v in new.items():
            if not isinstance(v, np.ndarray) or v.shape != live[k].shape:
                raise ShapeError(f"network: parameter {k}: expected shape {live[k].shape}, got {describe(v)}")
            if v.dtype != self.dtype:
                raise DTypeError(f"network: parameter {k}: expected dtype {self.dtype}, got {describe(v)}")
            live[k][...] = v

    # Forward and backward -------------------------------------------------------------------

    def _check_input(self, x: np.ndarray) -> None:
        check_array(x, f"network input (to {self.layers[0].name})", self.dtype, sample_shape=self.spec.sample_shape)

    def _check_masks(self, masks: dict[str, np.ndarray] | None) -> None:
        """A mask for a layer that is not a dropout layer would be ignored: a fresh mask, silently."""
        if not masks:
            return
        dropouts = [layer.name for layer in self.layers if isinstance(layer, Dropout)]
        if not set(masks) <= set(dropouts):
            raise ShapeError(f"network: expected masks for the dropout layers {dropouts} only, got {sorted(masks)}")

    def forward_cached(self, x, train=True, masks=None, check_input=True, order=None):
        """Outputs and caches of every layer, first to last (check_input=False: the caller checked x).

        order: the layers' indices in the order to run them (training_order), or None (as listed);
        the outputs and caches come in that order.
        """
        if check_input:
            self._check_input(x)
        self._check_masks(masks)
        outs, caches = [], []
        h = x
        for layer in self.layers if order is None else [self.layers[i] for i in order]:
            if isinstance(layer, Dropout):
                h, cache = layer.forward(h, train, mask=(masks or {}).get(layer.name))
            else:
                h, cache = layer.forward(h, train)
            outs.append(h)
            caches.append(cache)
        return outs, caches

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        return self.forward_cached(x, train, order=self._train_order)[0][-1]

    def _loss_and_grad(self, out, y, labels_checked=False):
        if labels_checked:  # (only then the flag: a loss's value_and_grad(pred, target) call stays as it was)
            value, dL_dout = self.loss.value_and_grad(out, y, labels_checked=True)
        else:
            value, dL_dout = self.loss.value_and_grad(out, y)
        if self.spec.l2:
            value = value + self.spec.l2 * sum(
                (layer.params["W"] ** 2).sum() for layer in self.layers if isinstance(layer, Dense)
            )
        return value, dL_dout

    def trace(self, x: np.ndarray, y: np.ndarray, train: bool = True, masks=None) -> Trace:
        """Forward, loss and backward; every per-layer tensor recorded (see reference/trace.py)."""
        outs, caches = self.forward_cached(x, train, masks)
        loss, g = self._loss_and_grad(outs[-1], y)
        records = [LayerTrace(layer.name, out=out) for layer, out in zip(self.layers, outs)]
        self._backward(g, caches, records)
        return Trace(loss=loss, layers=records)

    def loss_and_grads(
        self,
        x: np.ndarray,
        y: np.ndarray,
        train: bool = True,
        masks=None,
        check_input: bool = True,
        labels_checked: bool = False,
    ):
        """(loss, {"dense_2.W": dL/dW, ...}): the numbers of `trace`, for training loops.

        check_input=False skips the scan of x for dtype, shape and NaN/Inf, labels_checked=True a
        classification loss's check of the labels: train_epoch checks the whole training set and
        every label of the epoch once instead of every batch.
        """
        outs, caches = self.forward_cached(x, train, masks, check_input, self._train_order)
        loss, g = self._loss_and_grad(outs[-1], y, labels_checked)
        return loss, self._backward(g, caches, order=self._train_order)

    def _backward(
        self, g: np.ndarray, caches: list, records: list[LayerTrace] | None = None, order=None
    ) -> dict[str, np.ndarray]:
        """From g = dL/d(network output) back through the layers: {"<layer>.<param>": gradient}.

        With `records` (trace) each layer's grad_out, grads and grad_in are recorded. Without
        (training), the walk stops at the first layer with parameters and skips its dL/dx, which
        only the trace reports. One loop for both, so training and trace give the same numbers.
        order: forward_cached's, whose caches these are (training_order moves no layer with parameters).
        """
        grads: dict[str, np.ndarray] = {}
        stop = 0 if records is not None else self._first_with_params
        for i in range(len(self.layers) - 1, stop - 1, -1):
            layer = self.layers[i if order is None else order[i]]
            if records is None and i == stop:
                grad_in, layer_grads = None, layer.param_grads(g, caches[i])
            else:
                grad_in, layer_grads = layer.backward(g, caches[i])
            if self.spec.l2 and isinstance(layer, Dense):
                layer_grads["W"] = layer_grads["W"] + 2 * self.spec.l2 * layer.params["W"]
            if records is not None:
                records[i].grad_out, records[i].grads, records[i].grad_in = g, layer_grads, grad_in
            for k, v in layer_grads.items():
                grads[f"{layer.name}.{k}"] = v
            g = grad_in
        return grads

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class per row (argmax of the last layer's output)."""
        return self.forward(x).argmax(axis=1)
