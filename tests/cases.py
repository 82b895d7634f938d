"""The shared catalogue of test cases: small models that exercise every layer, loss and optimiser.

Every oracle suite (numeric, torch, keras) parametrises over these, so a new layer or loss is added
here once and is checked by all of them.

    LAYER_CASES[id]      -> ModelSpec   one case per layer kind (batchnorm convention, dropout form); the
                                        image kinds (conv2d, maxpool2d, avgpool2d, flatten) on
                                        non-square (2, 7, 6) images, strides 1 and 2, pads 0 and 1
    CONV_CASES           the ids of the image cases (a subset of LAYER_CASES)
    LOSS_CASES[id]       -> ModelSpec   one case per loss x reduction
    OPTIMIZER_CASES[id]  -> OptimizerSpec
    make_batch(spec, batch, seed) -> (x, y) in the spec's dtype, labels or targets as the loss needs;
                                     x is (batch, C, H, W) for a spec with input_shape
"""

from __future__ import annotations

import numpy as np

from reference.losses import LOSSES
from reference.spec import LayerSpec, ModelSpec, OptimizerSpec

N_IN, N_HIDDEN, N_OUT = 6, 5, 3
L = LayerSpec


def _net(*middle: LayerSpec, head: tuple[LayerSpec, ...] = (), loss="softmax_cross_entropy", **kw) -> ModelSpec:
    """dense(6->5) -> middle... -> dense(5->3) -> head...  with tanh-free defaults."""
    layers = (L("dense", units=N_HIDDEN), *middle, L("dense", units=N_OUT), *head)
    return ModelSpec(n_in=N_IN, layers=layers, loss=loss, init="glorot_uniform", **kw)


LAYER_CASES: dict[str, ModelSpec] = {
    "dense": _net(),
    "relu": _net(L("relu")),
    "leaky_relu": _net(L("leaky_relu", alpha=0.1)),
    "sigmoid": _net(L("sigmoid")),
    "tanh": _net(L("tanh")),
    "softmax": _net(L("tanh"), head=(L("softmax"),), loss="cross_entropy"),
    "dropout": _net(L("tanh"), L("dropout", rate=0.4)),
    # CS231n's keep probability p: out = x * mask / p; 0.3, where 1 - (1 - p) is not p in float64
    "dropout_keep": _net(L("tanh"), L("dropout", keep=0.3)),
    "batchnorm_torch": _net(L("batchnorm", convention="torch"), L("tanh")),
    "batchnorm_keras": _net(L("batchnorm", convention="keras"), L("tanh")),
    "batchnorm_cs231n": _net(L("batchnorm", convention="cs231n"), L("tanh")),
    "batchnorm_mytorch": _net(L("batchnorm", convention="mytorch"), L("tanh")),
    "layernorm": _net(L("layernorm"), L("tanh")),
    "l2": _net(L("tanh"), l2=0.01),
}

# Image cases: (2, 7, 6) inputs -> ... -> flatten -> dense(3). Tanh, not ReLU, feeds the max-pools:
# a window of ReLU zeros is a tie, where the max is not differentiable and finite differences say
# nothing (max and ReLU commute, so "cnn" pools before its ReLU: the same function as ReLU first).
IMAGE = (2, 7, 6)


def _cnn(*body: LayerSpec, dense: tuple[LayerSpec, ...] = (), **kw) -> ModelSpec:
    layers = (*body, L("flatten"), *dense, L("dense", units=N_OUT))
    return ModelSpec(n_in=84, input_shape=IMAGE, layers=layers, init="glorot_uniform", **kw)


def _conv(filters=3, kernel=(3, 2), stride=1, padding=0) -> LayerSpec:
    return L("conv2d", filters=filters, kernel=kernel, stride=stride, padding=padding)


CONV_LAYER_CASES: dict[str, ModelSpec] = {
    "flatten": _cnn(),
    "conv2d-k3x2-s1-p0": _cnn(_conv(), L("tanh")),
    "conv2d-k2x3-s1-p1": _cnn(_conv(kernel=(2, 3), padding=1), L("tanh")),
    "conv2d-k3x2-s2-p0": _cnn(_conv(stride=2), L("tanh")),
    "conv2d-k3x3-s2-p1": _cnn(_conv(kernel=(3, 3), stride=2, padding=1), L("tanh")),
    "conv2d-k2x2-s2x1-p1x0": _cnn(_conv(kernel=(2, 2), stride=(2, 1), padding=(1, 0)), L("tanh")),
    "maxpool2d-p2-s2": _cnn(_conv(kernel=(3, 3), padding=1), L("tanh"), L("maxpool2d", pool=(2, 2))),
    "maxpool2d-p2x3-s1": _cnn(_conv(), L("tanh"), L("maxpool2d", pool=(2, 3), stride=1)),
    "avgpool2d-p2-s2": _cnn(_conv(kernel=(3, 3), padding=1), L("tanh"), L("avgpool2d", pool=(2, 2))),
    "avgpool2d-p3x2-s1": _cnn(_conv(), L("tanh"), L("avgpool2d", pool=(3, 2), stride=1)),
    "cnn": _cnn(
        _conv(filters=4, kernel=(3, 3), padding=1),
        L("maxpool2d", pool=(2, 2)),
        L("relu"),
        _conv(filters=3, kernel=(2, 2)),
        L("tanh"),
        dense=(L("dense", units=N_HIDDEN), L("relu")),
    ),
    "conv2d-dropout": _cnn(_conv(), L("tanh"), L("dropout", rate=0.3)),
}
LAYER_CASES.update(CONV_LAYER_CASES)
CONV_CASES = tuple(CONV_LAYER_CASES)

_LOSS_HEADS = {
    "softmax_cross_entropy": (),
    "cross_entropy": (L("softmax"),),
    "nll": (L("softmax"),),
    "mse": (),
    "l1": (),
    "bce": (L("sigmoid"),),
    "multiclass_hinge": (),
}

LOSS_CASES: dict[str, ModelSpec] = {
    f"{loss}-{reduction}": _net(L("tanh"), head=head, loss=loss, reduction=reduction)
    for loss, head in _LOSS_HEADS.items()
    for reduction in ("mean", "sum")
}

OPTIMIZER_CASES: dict[str, OptimizerSpec] = {
    f"{name}-{convention}{'-' + decay if decay else ''}": OptimizerSpec(
        name=name,
        lr={"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.01, "adam": 0.01}[name],
        momentum=0.9 if name in ("momentum", "nesterov") else 0.0,
        weight_decay=0.01 if decay else 0.0,
        decay_mode=decay or "coupled",
        convention=convention,
    )
    for name in ("sgd", "momentum", "nesterov", "rmsprop", "adam")
    for convention in ("torch", "keras")
    for decay in (None, "coupled", "decoupled")
}

DTYPES = ("float32", "float64")
BATCH_SIZES = (1, 7, 128)


def make_batch(spec: ModelSpec, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs N(0, 1) and labels (classification) or targets shaped like the output, in spec.dtype."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *spec.sample_shape)).astype(spec.dtype)
    n_out = spec.n_out
    if LOSSES[spec.loss].classification:
        return x, rng.integers(0, n_out, batch)
    if spec.loss == "bce":
        return x, rng.random((batch, n_out)).astype(spec.dtype)
    return x, rng.normal(size=(batch, n_out)).astype(spec.dtype)
