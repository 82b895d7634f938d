"""The shared catalogue of test cases: small models that exercise every layer, loss and optimiser.

Every oracle suite (numeric, torch, keras) parametrises over these, so a new layer or loss is added
here once and is checked by all of them.

    LAYER_CASES[id]      -> ModelSpec   one case per layer kind (and batchnorm convention)
    LOSS_CASES[id]       -> ModelSpec   one case per loss x reduction
    OPTIMIZER_CASES[id]  -> OptimizerSpec
    make_batch(spec, batch, seed) -> (x, y) in the spec's dtype, labels or targets as the loss needs
"""

from __future__ import annotations

import numpy as np

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
    "batchnorm_torch": _net(L("batchnorm", convention="torch"), L("tanh")),
    "batchnorm_keras": _net(L("batchnorm", convention="keras"), L("tanh")),
    "l2": _net(L("tanh"), l2=0.01),
}

_LOSS_HEADS = {
    "softmax_cross_entropy": (),
    "cross_entropy": (L("softmax"),),
    "nll": (L("softmax"),),
    "mse": (),
    "l1": (),
    "bce": (L("sigmoid"),),
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
    x = rng.normal(size=(batch, spec.n_in)).astype(spec.dtype)
    n_out = spec.n_out
    if spec.loss in ("softmax_cross_entropy", "cross_entropy", "nll"):
        return x, rng.integers(0, n_out, batch)
    if spec.loss == "bce":
        return x, rng.random((batch, n_out)).astype(spec.dtype)
    return x, rng.normal(size=(batch, n_out)).astype(spec.dtype)
