"""ModelSpec: the declarative, serialisable model that every oracle builds from.

A spec names the layers, their sizes, the loss and its reduction, the dtype, the initialiser, the
optimiser and the training set-up (batch size, epochs, input preprocessing). The numpy reference,
the torch twin and the keras twin are all built from the same spec and the same parameter arrays.
`spec.to_dict()` / `ModelSpec.from_dict()` round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from reference.errors import SpecError

LAYER_KINDS = (
    "dense",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "softmax",
    "dropout",
    "batchnorm",
    "layernorm",
    "conv2d",
    "maxpool2d",
    "avgpool2d",
    "flatten",
)
IMAGE_KINDS = ("conv2d", "maxpool2d", "avgpool2d")  # (C, H, W) in, (C', H', W') out
ELEMENTWISE_KINDS = ("relu", "leaky_relu", "sigmoid", "tanh", "dropout")  # any shape, kept
LOSSES = ("softmax_cross_entropy", "cross_entropy", "nll", "mse", "l1", "bce", "multiclass_hinge")
REDUCTIONS = ("mean", "sum")
DTYPES = ("float32", "float64")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
CONVENTIONS = ("torch", "keras")  # optimizer.convention
BATCHNORM_CONVENTIONS = ("torch", "keras", "cs231n", "mytorch")  # reference/layers.py BatchNorm says each
PREPROCESSING = ("raw", "scale255", "scale16", "standardise")  # see data_loaders.preprocess


@dataclass(frozen=True)
class LayerSpec:
    """One layer. Only the fields that matter for its kind are read."""

    kind: str
    units: int | None = None  # dense: n_out
    init: str | None = None  # dense, conv2d: initialiser name (None: the model's)
    alpha: float = 0.01  # leaky_relu: negative slope
    rate: float = 0.5  # dropout: probability of dropping a unit
    keep: float | None = None  # dropout: CS231n's keep probability p (out = x * mask / p); set, rate is not read
    momentum: float | None = None  # batchnorm: None -> the convention's default (torch 0.1, keras 0.99, ...)
    eps: float | None = None  # batchnorm: None -> the convention's default (torch 1e-5, keras 1e-3, ...);
    # layernorm: None -> 1e-5 (torch's nn.LayerNorm; keras' LayerNormalization defaults to 1e-3)
    convention: str = "torch"  # batchnorm: whose running-statistics convention (BATCHNORM_CONVENTIONS)
    filters: int | None = None  # conv2d: F, the number of output channels
    kernel: tuple[int, int] | None = None  # conv2d: (KH, KW)
    stride: int | tuple[int, int] | None = None  # conv2d: None -> 1; pools: None -> the pool size
    padding: int | tuple[int, int] = 0  # conv2d: zero padding (ph, pw) on both sides
    pool: tuple[int, int] | None = None  # maxpool2d, avgpool2d: the window (PH, PW)

    def __post_init__(self) -> None:
        for name in ("kernel", "stride", "padding", "pool"):  # JSON gives lists: keep specs comparable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def pairs(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(window, stride, padding) as pairs: the kernel (conv2d) or pool, the stride and padding resolved."""
        window = self.kernel if self.kind == "conv2d" else self.pool
        stride = (1 if self.kind == "conv2d" else window) if self.stride is None else self.stride
        return _pair(window), _pair(stride), _pair(self.padding)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser and its hyper-parameters; `convention` picks torch's or keras' definition."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0  # momentum, nesterov (and rmsprop's optional momentum is not modelled)
    rho: float | None = None  # rmsprop decay; None -> convention default (torch 0.99, keras 0.9)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float | None = None  # None -> convention default (torch 1e-8, keras 1e-7)
    weight_decay: float = 0.0
    decay_mode: str = "coupled"  # coupled: g += wd*p (torch weight_decay); decoupled: p -= lr*wd*p
    decay_biases: bool = True  # torch applies weight_decay to every parameter in the group
    convention: str = "torch"


@dataclass(frozen=True)
class ModelSpec:
    n_in: int
    layers: tuple[LayerSpec, ...]
    loss: str = "softmax_cross_entropy"
    reduction: str = "mean"
    dtype: str = "float64"
    init: str = "glorot_uniform"
    l2: float = 0.0  # keras kernel_regularizer L2: loss += l2 * sum(W**2) over dense kernels
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_size: int = 32
    epochs: int = 3
    preprocess: str = "scale255"
    dataset: str = "mnist"
    name: str = "custom"
    description: str = ""
    input_shape: tuple[int, int, int] | None = None  # images: (C, H, W), inputs (batch, C, H, W); n_in = C H W

    def __post_init__(self) -> None:
        if isinstance(self.input_shape, list):
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        validate(self)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input sample: input_shape for images, else (n_in,)."""
        return self.input_shape if self.input_shape is not None else (self.n_in,)

    def layer_shapes(self) -> list[tuple[int, ...]]:
        """The output shape of one sample after each layer (SpecError naming the layer if one does not fit)."""
        return _infer_shapes(self)

    @property
    def n_out(self) -> int:
        return [layer.units for layer in self.layers if layer.kind == "dense"][-1]

    def layer_names(self) -> list[str]:
        """Names as every Trace uses them: kind_k, counted per kind from 1 ("dense_1", "relu_1")."""
        counts: dict[str, int] = {}
        names = []
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
            names.append(f"{layer.kind}_{counts[layer.kind]}")
        return names

    def replace(self, **changes) -> ModelSpec:
        """A copy with some fields changed (`optimizer` may be given as a dict of its fields)."""
        if isinstance(changes.get("optimizer"), dict):
            changes["optimizer"] = dataclasses.replace(self.optimizer, **changes["optimizer"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        d = dict(d)
        try:
            d["layers"] = tuple(LayerSpec(**layer) for layer in d["layers"])
            d["optimizer"] = OptimizerSpec(**d.get("optimizer", {}))
            return cls(**d)
        except TypeError as e:
            raise SpecError(f"model spec: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))


def _pair(value) -> tuple[int, int]:
    """An int or a pair of ints as a pair."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _is_pair(value, low: int) -> bool:
    """An int >= low, or a pair of ints >= low (bools are not ints here)."""
    items = (value,) if isinstance(value, int) else value
    ok_len = isinstance(value, int) or (isinstance(value, tuple) and len(value) == 2)
    return ok_len and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in items)


def _infer_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Each layer's per-sample output shape, from spec.sample_shape; SpecError where a layer does not fit."""
    from reference.conv import out_size  # local: conv.py is numpy maths, kept free of the spec

    shapes, shape = [], spec.sample_shape
    for i, layer in enumerate(spec.layers):
        where = f"model spec: layers[{i}] ({layer.kind})"
        if layer.kind in IMAGE_KINDS:
            if len(shape) != 3:
                raise SpecError(f"{where} expects an image input (C, H, W), got shape {shape}")
            window_name = "kernel" if layer.kind == "conv2d" else "pool"
            window, stride, padding = getattr(layer, window_name), layer.stride, layer.padding
            if not _is_pair(window, 1):
                raise SpecError(f"{where} needs {window_name} = (KH, KW) of ints >= 1, got {window!r}")
            if stride is not None and not _is_pair(stride, 1):
                raise SpecError(f"{where} needs stride >= 1 (an int or a pair), got {stride!r}")
            if not _is_pair(padding, 0) or (layer.kind != "conv2d" and _pair(padding) != (0, 0)):
                what = (
                    "padding >= 0 (an int or a pair)" if layer.kind == "conv2d" else "no padding (pools are valid-only)"
                )
                raise SpecError(f"{where} needs {what}, got {padding!r}")
            (kh, kw), (sh, sw), (ph, pw) = layer.pairs()
            c, h, w = shape
            if kh > h + 2 * ph or kw > w + 2 * pw:
                raise SpecError(
                    f"{where}: {window_name} {(kh, kw)} does not fit the input {shape} "
                    f"(padded to {(c, h + 2 * ph, w + 2 * pw)} by padding {(ph, pw)})"
                )
            if layer.kind == "conv2d":
                if not isinstance(layer.filters, int) or isinstance(layer.filters, bool) or layer.filters < 1:
                    raise SpecError(f"{where} needs filters >= 1, got {layer.filters!r}")
                c = layer.filters
            shape = (c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw))
        elif layer.kind == "flatten":
            if len(shape) != 3:
                raise SpecError(f"{where} expects an image input (C, H, W), got shape {shape}")
            shape = (shape[0] * shape[1] * shape[2],)
        elif layer.kind not in ELEMENTWISE_KINDS and len(shape) != 1:
            raise SpecError(f"{where} expects a flat input (add a flatten layer before it), got shape {shape}")
        elif layer.kind == "dense":
            shape = (layer.units,)
        shapes.append(shape)
    if len(shape) != 1:
        raise SpecError(f"model spec: the last layer's output must be flat (batch, n_out), got shape {shape}")
    return shapes


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise SpecError(f"model spec: {what} must be one of {allowed}, got {value!r}")


def validate(spec: ModelSpec) -> None:
    """Raise SpecError naming the field when the spec cannot describe a network."""
    from reference.init import INITIALIZERS  # local: init imports nothing from here, avoid a cycle

    _one_of(spec.loss, LOSSES, "loss")
    _one_of(spec.reduction, REDUCTIONS, "reduction")
    _one_of(spec.dtype, DTYPES, "dtype")
    _one_of(spec.init, tuple(INITIALIZERS), "init")
    _one_of(spec.optimizer.name, OPTIMIZERS, "optimizer.name")
    _one_of(spec.optimizer.convention, CONVENTIONS, "optimizer.convention")
    _one_of(spec.optimizer.decay_mode, ("coupled", "decoupled"), "optimizer.decay_mode")
    _one_of(spec.preprocess, PREPROCESSING, "preprocess")
    if not isinstance(spec.n_in, int) or spec.n_in < 1:
        raise SpecError(f"model spec: n_in must be a positive int, got {spec.n_in!r}")
    if spec.input_shape is not None:
        shape = spec.input_shape
        if not (isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(d, int) and d >= 1 for d in shape)):
            raise SpecError(f"model spec: input_shape must be (C, H, W) of positive ints, got {shape!r}")
        if spec.n_in != shape[0] * shape[1] * shape[2]:
            raise SpecError(
                f"model spec: n_in must be C*H*W = {shape[0] * shape[1] * shape[2]} for input_shape {shape}, "
                f"got {spec.n_in}"
            )
    if not spec.layers or not any(layer.kind == "dense" for layer in spec.layers):
        raise SpecError("model spec: layers must contain at least one dense layer")
    for i, layer in enumerate(spec.layers):
        _one_of(layer.kind, LAYER_KINDS, f"layers[{i}].kind")
        if layer.kind == "dense":
            if not isinstance(layer.units, int) or layer.units < 1:
                raise SpecError(f"model spec: layers[{i}] (dense) needs units >= 1, got {layer.units!r}")
        if layer.kind in ("dense", "conv2d"):
            if layer.init is not None:
                _one_of(layer.init, tuple(INITIALIZERS), f"layers[{i}].init")
        if layer.kind == "dropout" and layer.keep is None and not 0.0 <= layer.rate < 1.0:
            raise SpecError(f"model spec: layers[{i}] (dropout) rate must be in [0, 1), got {layer.rate}")
        if layer.kind == "dropout" and layer.keep is not None and not 0.0 < layer.keep <= 1.0:
            raise SpecError(f"model spec: layers[{i}] (dropout) keep must be in (0, 1], got {layer.keep}")
        if layer.kind == "batchnorm":
            _one_of(layer.convention, BATCHNORM_CONVENTIONS, f"layers[{i}].convention")
        if layer.kind == "layernorm" and layer.eps is not None and not layer.eps > 0:
            raise SpecError(f"model spec: layers[{i}] (layernorm) eps must be > 0, got {layer.eps}")
    if spec.batch_size < 1 or spec.epochs < 0:
        raise SpecError(f"model spec: batch_size must be >= 1 and epochs >= 0, got {spec.batch_size}, {spec.epochs}")
    _infer_shapes(spec)


# Presets: the configurations the course notebooks train (see README, "Presets").


def _mlp(sizes: list[int], activation: str, **kw) -> tuple[LayerSpec, ...]:
    """Dense layers of `sizes[1:]`, `activation` between them, none after the last (logits)."""
    layers: list[LayerSpec] = []
    for i, n in enumerate(sizes[1:]):
        layers.append(LayerSpec("dense", units=n))
        if i < len(sizes) - 2:
            layers.append(LayerSpec(activation, **kw))
    return tuple(layers)


PRESETS: dict[str, ModelSpec] = {
    # The per-sample homework: 784-32-32-10 sigmoid, softmax + cross-entropy, raw 0..255 pixels.
    "mnist-sigmoid-per-sample": ModelSpec(
        n_in=784,
        layers=_mlp([784, 32, 32, 10], "sigmoid"),
        loss="softmax_cross_entropy",
        reduction="mean",
        init="normal_inv_max_fan",
        optimizer=OptimizerSpec("sgd", lr=0.003),
        batch_size=1,
        preprocess="raw",
        name="mnist-sigmoid-per-sample",
        description="784-32-32-10 sigmoid, softmax cross-entropy, N(0, 1/max(n_in, n_out)) weights, "
        "zero biases, SGD lr 0.003, raw 0..255 pixels, one sample at a time",
    ),
    # The batched ReLU net: 784-128-10, batch 128, lr 0.1, pixels / 255.
    "mnist-relu-batched": ModelSpec(
        n_in=784,
        layers=_mlp([784, 128, 10], "relu"),
        init="normal_std_inv_fan_in",
        optimizer=OptimizerSpec("sgd", lr=0.1),
        batch_size=128,
        preprocess="scale255",
        name="mnist-relu-batched",
        description="784-128-10 ReLU, softmax cross-entropy (mean), N(0, (1/n_in)^2) weights, "
        "SGD lr 0.1, batch 128, pixels / 255",
    ),
    # The batched ReLU notebook as it runs (seed 001, In [19]-[23]): the same net on raw 0..255 pixels
    # with lr 1e-5. Measured with the reference, seeds 0-4: 85.43 to 85.74 % after 3 epochs (the
    # notebook: 0.8575). mnist-relu-batched (pixels / 255, lr 0.1) is the usual recipe beside it.
    "mnist-relu-batched-raw": ModelSpec(
        n_in=784,
        layers=_mlp([784, 128, 10], "relu"),
        init="normal_std_inv_fan_in",
        optimizer=OptimizerSpec("sgd", lr=1e-5),
        batch_size=128,
        preprocess="raw",
        name="mnist-relu-batched-raw",
        description="784-128-10 ReLU, softmax cross-entropy (mean), N(0, (1/n_in)^2) weights, "
        "SGD lr 1e-5, batch 128, raw 0..255 pixels (the notebook's own set-up)",
    ),
    # The deeper ReLU net: 784-100-200-10, batch 32, lr 0.1, He-normal weights. Seed 004 starts it
    # from randn * 0.01 and claims '>97%' after 25 epochs; the validation issue asks 97 % after 3.
    # Measured with the reference (real MNIST, 3 epochs): randn * 0.01 gives 96.33 to 96.99 % over
    # seeds 0-5 (never 97); He-normal 97.44 / 97.07 / 96.93 / 97.40 / 97.18 % over seeds 0-4.
    # He init is the seed's own suggested next step ("Option I: initialization");
    # preset("mnist-relu-deep", init="small_normal") is the seed's start exactly.
    "mnist-relu-deep": ModelSpec(
        n_in=784,
        layers=_mlp([784, 100, 200, 10], "relu"),
        init="he_normal",
        optimizer=OptimizerSpec("sgd", lr=0.1),
        batch_size=32,
        preprocess="scale255",
        name="mnist-relu-deep",
        description="784-100-200-10 ReLU, softmax cross-entropy (mean), He-normal weights N(0, 2/n_in), "
        "SGD lr 0.1, batch 32, pixels / 255",
    ),
    # The LeNet-like CNN (issue 13): conv 3x3 x8 (zero padding 1), relu, maxpool 2, conv 3x3 x16
    # (padding 1), relu, maxpool 2, flatten, dense 10 on 1x28x28 images (28 -> 14 -> 7: 784
    # features), 9,098 parameters; SGD with momentum 0.9, lr 0.05, batch 64, pixels / 255, He-uniform.
    # Measured with the reference (float64, seed 0, 3 epochs): 98.21 / 98.03 / 98.60 %; without the
    # padding (28 -> 26 -> 13 -> 11 -> 5: 400 features) 97.85 / 98.20 / 98.38 %, under the 98.5 %.
    "mnist-cnn": ModelSpec(
        n_in=784,
        input_shape=(1, 28, 28),
        layers=(
            LayerSpec("conv2d", filters=8, kernel=(3, 3), padding=1),
            LayerSpec("relu"),
            LayerSpec("maxpool2d", pool=(2, 2)),
            LayerSpec("conv2d", filters=16, kernel=(3, 3), padding=1),
            LayerSpec("relu"),
            LayerSpec("maxpool2d", pool=(2, 2)),
            LayerSpec("flatten"),
            LayerSpec("dense", units=10),
        ),
        init="he_uniform",
        optimizer=OptimizerSpec("momentum", lr=0.05, momentum=0.9),
        batch_size=64,
        preprocess="scale255",
        name="mnist-cnn",
        description="1x28x28 -> conv 3x3 x8 pad 1, ReLU, max-pool 2 -> conv 3x3 x16 pad 1, ReLU, max-pool 2 -> "
        "flatten (784) -> dense 10; softmax cross-entropy (mean), He-uniform weights, SGD momentum 0.9 "
        "lr 0.05, batch 64, pixels / 255",
    ),
    # The digits lab (seed 003; the public lab is m2dsupsdlclass/lectures-labs,
    # labs/02_backprop/Backpropagation_numpy.ipynb): 64-32-10, sigmoid hidden, softmax output layer,
    # summed NLL, per-sample SGD. Inputs as the lab's "Preprocessing" cell: train_test_split(data,
    # target, test_size=0.15, random_state=37), StandardScaler fitted on the training split. The rate
    # is seed 003's stated `learning_rate = 0.01` (In [34], its per-sample SGD loop); the lab's own
    # NeuralNet cell trains at 0.1. Measured with the reference, seed 0: 68.5 / 80.4 / 93.0 % after
    # epochs 1-3 at 0.01; 94.1 / 96.3 / 96.3 % at 0.1 (see README, "Presets").
    "digits-sigmoid-per-sample": ModelSpec(
        n_in=64,
        layers=(
            LayerSpec("dense", units=32),
            LayerSpec("sigmoid"),
            LayerSpec("dense", units=10),
            LayerSpec("softmax"),
        ),
        loss="cross_entropy",
        reduction="sum",
        init="uniform_0.1",
        optimizer=OptimizerSpec("sgd", lr=0.01),
        batch_size=1,
        preprocess="standardise",
        dataset="digits",
        name="digits-sigmoid-per-sample",
        description="64-32-10, sigmoid hidden, softmax output layer, summed cross-entropy on "
        "probabilities, U(-0.1, 0.1) weights and biases, SGD lr 0.01 (seed 003's stated rate, "
        "`learning_rate = 0.01`; the lab's NeuralNet cell uses 0.1), one sample at a time, "
        "scikit-learn 8x8 digits standardised (StandardScaler fitted on the training split), "
        "train_test_split(test_size=0.15, random_state=37): 1,527 train / 270 test",
    ),
}


def preset(name: str, **changes) -> ModelSpec:
    """A named preset, optionally with fields changed: preset("mnist-relu-batched", dtype="float32")."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
