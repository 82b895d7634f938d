"""KerasTwin: the numpy reference's model rebuilt in Keras 3 (TensorFlow backend) from the same weights.

The contract is the twin API (oracles/__init__.py, make_twin): built from a ModelSpec and the
reference's parameters, it answers trace(x, y) with the same Trace the reference returns, steps and
trains with Keras' OWN optimiser (keras.optimizers.*) and TensorFlow's autodiff, never a hand-written
update. A spec feature Keras cannot express exactly raises NotImplementedError saying which and why.

How each part is matched, and why (every claim here is tested in tests/test_keras_twin.py):

- Layout. A Keras Dense kernel is W itself, (n_in, n_out); the bias is b (n_out,). No transpose.
- Images. Keras is NHWC: the input is transposed once inside the graph (so the tape's dL/dx is
  NCHW), a Conv2D kernel is W.transpose(2, 3, 1, 0) (KH, KW, C, F), explicit zero padding is a
  ZeroPadding2D before a valid Conv2D (padding="same" is another function for even kernels and
  strides > 1), and the trace reports image tensors back in NCHW. A Flatten of NHWC orders the
  features (h W + w) C + c, the reference c H W + h W + w: the Dense after it takes W's rows in
  Keras' order (flatten_permutation), converted in _to_keras/_to_canonical, written once.
  Without it (permute_flatten_rows=False, for the pitfall's test) the logits are another function.
  Dropout masks on images or permuted features are the reference's masks, converted the same way.
- Layers are called one by one: Dense, then a separate Activation layer (Dense(activation=...) would
  hide the pre-activation), so a GradientTape sees every intermediate and gives dL/d(every output).
- dtype. `keras.config.set_floatx` alone is silently ignored once the dtype policy has been read,
  and a layer-level dtype leaves the loss and the optimiser's learning rate in float32
  (0.10000000149 for 0.1, a 3e-9 drift per epoch in float64). So every layer, the loss and the
  optimiser are built inside `floatx_scope(spec.dtype)`, which sets floatx AND the dtype policy and
  restores both afterwards (to "unset" if they were), and every layer and loss also gets the dtype
  explicitly. Every public method runs in the same scope, so a float32 and a float64 twin live side
  by side in one process without leaking global state into each other or into the caller.
- hyper-parameters. Keras casts scalars with tf.cast (SGD's momentum, Adam's betas in the bias
  correction, weight decay, the L2 factor), and tf.cast sends a Python float through float32:
  tf.cast(0.9, float64) is 0.8999999762. A float64 twin hands them over as numpy float64 (still a
  Python float to Keras' argument checks), which tf.cast keeps exact. Measured with Python floats,
  after 20 float64 steps: 1.3e-7 (momentum), 6.7e-6 (Adam), 9e-10 (the L2 factor alone).
- leaky_relu. TensorFlow's LeakyRelu op keeps its slope in a float32 attribute: in float64,
  keras.layers.LeakyReLU(0.1) has slope 0.10000000149 (1.5e-8 off). It is used where its slope is
  exactly the spec's (float32, or a slope float32 represents); otherwise the layer is the same
  function written with keras.ops: where(x > 0, x, alpha * x).
- dropout shares the reference's keep-mask: out = x * (mask / (1 - rate)) (a keep probability given:
  x * (mask / keep), CS231n's p), computed in the graph as the reference computes it. keras.layers.Dropout draws its own mask from Keras' seed generator (a
  mask cannot be handed to it), so it could never be compared element by element. Without masks
  the twin draws them the reference's way, from numpy.random.default_rng([seed, 1]), so a twin and
  a Network with the same seed drop the same units.
- batchnorm is keras.layers.BatchNormalization: momentum 0.99, epsilon 1e-3, running statistics
  m * running + (1 - m) * batch_stat with the biased batch variance (tf.nn.moments) -- the
  reference's "keras" convention exactly. The "torch" convention raises NotImplementedError: Keras
  can match torch's momentum (momentum = 1 - 0.1) and epsilon, hence every training-mode output and
  gradient, but its running variance always takes the biased batch variance, never torch's unbiased
  n / (n - 1) one, so running_var and everything evaluated after training would differ.
  The "cs231n" and "mytorch" conventions are keras' rule with their own momentum (0.9) and epsilon
  (1e-5, 1e-8): BatchNormalization(momentum=0.9, epsilon=...) exactly, cs231n's running variance
  starting at zeros (moving_variance_initializer="zeros", the course's bn_param default).
- layernorm is keras.layers.LayerNormalization(axis=-1, epsilon=eps): per sample over the features,
  the biased variance, eps inside the root, as torch's nn.LayerNorm. Its default epsilon is 1e-3,
  torch's (and the reference's) 1e-5: the twin always passes the spec's. keras adds a Python-float
  epsilon to the variance tensor in that tensor's dtype, so a float64 1e-5 arrives exact.
- losses, with Keras' own loss classes where they define the reference's number:
    softmax_cross_entropy  keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mse, l1                keras.losses.MeanSquaredError / MeanAbsoluteError on (batch * n_out, 1)
                           views: Keras averages over the last axis first, so on the flat view its
                           "sum" is the reference's sum over every element and its mean divides by
                           batch * n_out once, as the reference does
    cross_entropy, nll     ProbabilityCrossEntropy below: -log p_y (nll: clipped to [1e-7, 1-1e-7]).
                           keras.losses.CategoricalCrossentropy is a different function of the
                           probabilities: on a softmax output it silently takes the logits (the
                           `_keras_logits` attribute in eager mode, the op type "Softmax" in a
                           graph) and never differentiates through p; on other tensors it
                           renormalises p / sum(p) and clips every p, which adds 1/d to every entry
                           of dL/dp (d = batch for "mean"): invisible in dL/dlogits (the softmax
                           Jacobian annihilates constant rows), visible in the softmax layer's
                           grad_out.
    multiclass_hinge       MulticlassHinge below, in keras ops: sum_{j != y} relu(s_j - s_y + 1). Keras'
                           hinge losses are other functions: Hinge and SquaredHinge are one-vs-all
                           binary hinges, mean over the classes of max(0, 1 - t s) (squared), with the
                           one-hot t mapped to -1/+1; CategoricalHinge is max(0, 1 + max((1 - t) s)
                           - s_y): the largest wrong score only (Crammer-Singer), not the sum, and
                           floored at 0, since the label's entry is zeroed, not dropped
                           (tests/test_keras_twin.py measures each against the reference).
    bce                    BinaryCrossEntropy below: -(t log p + (1 - t) log1p(-p)), unclipped.
                           keras.losses.BinaryCrossentropy takes the logits of a sigmoid output the
                           same way, and otherwise clips p to [1e-7, 1 - 1e-7] and uses log(1 - p).
  Reductions: "mean" is Keras' "sum_over_batch_size" (sum / batch; sum / elements for mse, l1 and
  bce, whose per-element values are reduced), "sum" is "sum".
- l2 is keras.regularizers.L2(l2) on each Dense kernel (l2 * sum W^2, added to the loss), its
  factor stored as a hyper-parameter of the twin's dtype (see above).
- optimisers: keras.optimizers.SGD (momentum, nesterov), RMSprop, Adam, AdamW; the reference's
  convention="keras" rules. convention="torch" is accepted where the two define the same sequence
  of parameters (SGD; momentum and Nesterov with a constant learning rate, v_keras = -lr v_torch),
  and raises NotImplementedError for RMSprop and Adam (torch puts eps elsewhere). Keras computes
  Adam's bias corrections (beta^t, 1 - beta2^t) in the variable's dtype, the reference in float64:
  in float32 that alone leaves the parameters 8.5e-6 apart after 20 steps (relative; the policy is
  1e-5), 3.5e-7 if the reference rounded them the same way. Decoupled weight
  decay is Keras' `weight_decay=` (p <- p - lr wd p before the rule). Coupled weight decay
  (g <- g + wd p) has no Keras optimiser option; it is expressed exactly through the training
  objective: objective = loss + (wd / 2) * sum p^2 over the decayed parameters, whose gradient
  adds wd * p (rounded once, as the reference's). It enters step()/train_epoch() only: trace()
  and the returned losses are the reference's loss, which does not include it.
- speed. train_epoch runs the whole epoch in one compiled tf.function: a tf.while_loop over the
  steps gathers each batch by index from the epoch's tensors and runs the very step that step()
  runs (the same Python function traced into the loop body). No XLA: jit_compile=True breaks
  float32 parity (7e-4 after one epoch, measured in issue 3). evaluate runs each chunk's forward
  pass (inference mode) through one compiled function too, as model.predict does, and the loss
  eagerly on its output. float64: the eager layer calls' outputs, loss and predictions bit for bit.
  float32: Grappler's remapper fuses a Dense's MatMul and BiasAdd into one oneDNN kernel, whose
  outputs can differ from the eager two ops' by an ulp (measured on 7-row chunks: up to 1.2e-7;
  with remapping off, bit for bit); tests/test_keras_twin.py bounds it at 4 ulps. The training
  step always ran fused. On the CNN preset the compiled evaluation takes 0.6x (float64) and
  0.4x (float32) of the eager one's CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras.src.backend.common import global_state  # private: the only way to restore "unset"

from oracles import OnStep, check_epoch
from reference.errors import DTypeError, ShapeError, SpecError, check_array, describe
from reference.layers import BatchNorm, LayerNorm
from reference.losses import check_labels, check_targets
from reference.optimizers import resolved
from reference.spec import ModelSpec, OptimizerSpec
from reference.trace import LayerTrace, Trace
from reference.train import batches, evaluate_chunks

if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(f"oracles.keras_twin needs the TensorFlow backend of Keras, got {keras.backend.backend()!r}")

CLASSIFICATION_LOSSES = ("softmax_cross_entropy", "cross_entropy", "nll", "multiclass_hinge")
REDUCTIONS = {"mean": "sum_over_batch_size", "sum": "sum"}


def limit_tensorflow_threads(threads: int = 1) -> bool:
    """Run TensorFlow's ops on `threads` inter- and intra-op threads; False if its runtime already started.

    A per-sample step is a few hundred tiny ops, and handing them between threads costs more than
    they do: on this 2-core machine one thread made the compiled per-sample loop about 2.5x faster
    (230-270 instead of 670-1100 us a step) and a 784-100-200-10 batch-32 epoch 1.8x faster.
    Process-wide and accepted only before TensorFlow's first op, so the caller (a job, a test
    module) decides; the twin never calls it.
    """
    try:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # "cannot be modified after initialization"
        return False
    return True


# dtype ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def floatx_scope(dtype: str) -> Iterator[None]:
    """Keras' floatx and global dtype policy set to `dtype` inside; both restored on exit."""
    saved_floatx = keras.config.floatx()
    saved_policy = global_state.get_global_attribute("dtype_policy", None)  # None: never read yet
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(saved_floatx)
        global_state.set_global_attribute("dtype_policy", saved_policy)


def _in_scope(method: Callable) -> Callable:
    """Run a KerasTwin method inside floatx_scope(self.spec.dtype)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with floatx_scope(self.spec.dtype):
            return method(self, *args, **kwargs)

    return wrapper


# Losses ---------------------------------------------------------------------------------------


class ProbabilityCrossEntropy(keras.losses.Loss):
    """L_i = -log p_{i, y_i}; with clip: -log clip(p_{i, y_i}, eps, 1 - eps), eps = keras.config.epsilon()."""

    def __init__(self, clip: bool, reduction: str, dtype: str, name: str) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.clip = clip

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")  # Loss.__call__ cast the integer labels to the float dtype
        p_y = ops.take_along_axis(y_pred, ops.expand_dims(labels, 1), axis=1)[:, 0]  # (batch,)
        if self.clip:
            eps = keras.config.epsilon()
            p_y = ops.clip(p_y, eps, 1 - eps)  # gradient passes inside [eps, 1 - eps], 0 outside
        return -ops.log(p_y)


class BinaryCrossEntropy(keras.losses.Loss):
    """L_ij = -(t log p + (1 - t) log1p(-p)), element-wise and unclipped."""

    def call(self, y_true, y_pred):
        return -(y_true * ops.log(y_pred) + (1 - y_true) * ops.log1p(-y_pred))  # (batch, n_out)


class MulticlassHinge(keras.losses.Loss):
    """L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + 1) in keras ops (none of keras.losses is this function).

    relu, not maximum: TensorFlow's Maximum sends the gradient to x where x >= y, so maximum(m, 0)
    would count a margin of exactly 0; relu's gradient there is 0, CS231n's and the reference's rule.
    """

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "int32")  # Loss.__call__ cast the integer labels to the float dtype
        s_y = ops.take_along_axis(y_pred, ops.expand_dims(labels, 1), axis=1)  # (batch, 1)
        wrong = 1 - ops.one_hot(labels, ops.shape(y_pred)[1], dtype=y_pred.dtype)  # 0 on the label
        return ops.sum(ops.relu(y_pred - s_y + 1) * wrong, axis=1)  # (batch,)


class FlatElementwise:
    """A Keras loss that averages over the last axis, applied to (batch * n_out, 1) views."""

    def __init__(self, loss: keras.losses.Loss) -> None:
        self.loss = loss

    def __call__(self, y_true, y_pred):
        return self.loss(ops.reshape(y_true, (-1, 1)), ops.reshape(y_pred, (-1, 1)))


def make_keras_loss(spec: ModelSpec) -> Callable:
    """loss(y_true, y_pred) -> scalar: the reference's spec.loss with spec.reduction, in spec.dtype."""
    kw = {"reduction": REDUCTIONS[spec.reduction], "dtype": spec.dtype}
    if spec.loss == "softmax_cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, **kw)
    if spec.loss in ("cross_entropy", "nll"):
        return ProbabilityCrossEntropy(clip=spec.loss == "nll", name=spec.loss, **kw)
    if spec.loss == "mse":
        return FlatElementwise(keras.losses.MeanSquaredError(**kw))
    if spec.loss == "l1":
        return FlatElementwise(keras.losses.MeanAbsoluteError(**kw))
    if spec.loss == "bce":
        return BinaryCrossEntropy(name="bce", **kw)
    if spec.loss == "multiclass_hinge":
        return MulticlassHinge(name="multiclass_hinge", **kw)
    raise SpecError(f"keras twin: no Keras loss for {spec.loss!r}")


# Optimisers -----------------------------------------------------------------------------------


def hyperparameter(dtype: str) -> Callable[[float], float]:
    """How a scalar hyper-parameter is handed to Keras so that it arrives exactly in `dtype`.

    Keras casts hyper-parameters with tf.cast (SGD momentum, Adam's betas, weight decay, the L2
    factor), and tf.cast turns a Python float into a float32 tensor first: tf.cast(0.9, float64) is
    0.8999999762. A numpy float64 is still a Python float to Keras' checks, and tf.cast keeps it
    exact. In float32 a Python float is what users pass, and it rounds once, as numpy's does.
    """
    return np.float64 if dtype == "float64" else float


def make_keras_optimizer(opt: OptimizerSpec, dtype: str) -> keras.optimizers.Optimizer:
    """keras.optimizers.* for `opt` (coupled weight decay is not an optimiser option: see KerasTwin)."""
    h = hyperparameter(dtype)
    if opt.convention == "torch" and opt.name in ("rmsprop", "adam"):
        where = "sqrt(s) + eps vs sqrt(s + eps)" if opt.name == "rmsprop" else "sqrt(v_hat) + eps vs sqrt(v) + eps"
        raise NotImplementedError(
            f"keras twin: optimizer {opt.name!r} with convention 'torch' puts eps elsewhere than "
            f"keras.optimizers does ({where}); use convention='keras'"
        )
    kw: dict = {"learning_rate": h(opt.lr)}
    if opt.weight_decay and opt.decay_mode == "decoupled":
        kw["weight_decay"] = h(opt.weight_decay)
    eps = resolved(opt, "eps")
    if opt.name == "sgd":
        return keras.optimizers.SGD(**kw)
    if opt.name in ("momentum", "nesterov"):
        return keras.optimizers.SGD(momentum=h(opt.momentum), nesterov=opt.name == "nesterov", **kw)
    if opt.name == "rmsprop":
        rho = resolved(opt, "rho")
        # momentum=0: the reference does not model RMSprop's optional momentum.
        return keras.optimizers.RMSprop(rho=h(rho), epsilon=h(eps), momentum=0.0, **kw)
    if opt.name == "adam":
        cls = keras.optimizers.AdamW if "weight_decay" in kw else keras.optimizers.Adam
        return cls(beta_1=h(opt.beta1), beta_2=h(opt.beta2), epsilon=h(eps), **kw)
    raise SpecError(f"keras twin: no Keras optimizer for {opt.name!r}")


# Layers ---------------------------------------------------------------------------------------


def _float32_exact(value: float) -> bool:
    return float(np.float32(value)) == value


def _build_layer(name: str, kind: str, ls, spec: ModelSpec, width) -> keras.layers.Layer | None:
    """The Keras layer for one LayerSpec (None for dropout, applied as a mask in the graph)."""
    policy = keras.DTypePolicy(spec.dtype)
    if kind == "dense":
        reg = None
        if spec.l2:
            reg = keras.regularizers.L2(spec.l2)
            reg.l2 = hyperparameter(spec.dtype)(spec.l2)  # L2() stores float(l2), which tf.cast rounds
        layer = keras.layers.Dense(ls.units, kernel_regularizer=reg, dtype=policy, name=name)
        layer.build((None, width))
        return layer
    if kind in ("relu", "sigmoid", "tanh", "softmax"):
        return keras.layers.Activation(kind, dtype=policy, name=name)
    if kind == "leaky_relu":
        if ls.alpha >= 0 and (spec.dtype == "float32" or _float32_exact(ls.alpha)):
            return keras.layers.LeakyReLU(negative_slope=ls.alpha, dtype=policy, name=name)
        alpha = ls.alpha  # TF's LeakyRelu op would round the slope to float32: the same function in ops
        return keras.layers.Activation(lambda x: ops.where(x > 0, x, alpha * x), dtype=policy, name=name)
    if kind == "dropout":
        return None
    if kind == "conv2d":
        # Valid convolution on an input ZeroPadding2D has padded (KerasTwin keeps the two apart).
        # padding="same" is another function: for an even kernel or a stride > 1 it pads
        # asymmetrically (more at the bottom/right), never (ph, pw) on both sides.
        kernel, stride, _ = ls.pairs()
        layer = keras.layers.Conv2D(ls.filters, kernel, strides=stride, padding="valid", dtype=policy, name=name)
        layer.build((None, *width))  # width: the padded (H, W, C) input
        return layer
    if kind in ("maxpool2d", "avgpool2d"):
        pool, stride, _ = ls.pairs()
        cls = keras.layers.MaxPooling2D if kind == "maxpool2d" else keras.layers.AveragePooling2D
        return cls(pool_size=pool, strides=stride, padding="valid", dtype=policy, name=name)
    if kind == "flatten":
        return keras.layers.Flatten(dtype=policy, name=name)  # NHWC: feature (h W + w) C + c
    if kind == "layernorm":
        # axis=-1 (per sample, over the features) is keras' default; its default epsilon is 1e-3, the
        # reference's (torch's, CS231n's) 1e-5, so the epsilon is always given.
        eps = LayerNorm.EPS if ls.eps is None else ls.eps
        layer = keras.layers.LayerNormalization(axis=-1, epsilon=eps, dtype=policy, name=name)
        layer.build((None, width))
        return layer
    if kind == "batchnorm":
        if ls.convention == "torch":
            raise NotImplementedError(
                f"keras twin: {name} uses the 'torch' batchnorm convention, whose running variance "
                "takes the unbiased batch variance (n/(n-1)); keras.layers.BatchNormalization always "
                "takes the biased one. Keras matches torch's momentum (1 - 0.1) and eps, so training-mode "
                "outputs and gradients would agree, but running_var and evaluation after training would not"
            )
        # keras, cs231n, mytorch: m * running + (1 - m) * batch_stat, the biased variance (their own defaults)
        momentum, eps = BatchNorm.resolve(ls.convention, ls.momentum, ls.eps)
        initial_var = "zeros" if BatchNorm.INITIAL_VAR[ls.convention] == 0 else "ones"  # cs231n: zeros
        layer = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=eps, moving_variance_initializer=initial_var, dtype=policy, name=name
        )
        layer.build((None, width))
        return layer
    raise SpecError(f"keras twin: no Keras layer for {kind!r}")


# Image layout: the canonical NCHW against Keras' NHWC -------------------------------------------

# A layer output's layout inside the Keras model: None (canonical), NHWC (an image, channels last),
# or a permutation array: a flat vector whose feature k is canonical feature perm[k] (the output of
# a Flatten of NHWC images, and of the element-wise layers after it, up to the next Dense).
NHWC = "nhwc"


def flatten_permutation(shape: tuple[int, int, int]) -> np.ndarray:
    """perm with keras_flat[:, k] = canonical_flat[:, perm[k]] for a Flatten of (C, H, W) images.

    torch and the reference flatten NCHW: feature c H W + h W + w. Keras flattens NHWC: feature
    (h W + w) C + c. The same features in another order, so the Dense after a Flatten computes the
    reference's function only with its kernel rows permuted: kernel = W[perm].
    """
    c, h, w = shape
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def to_canonical(a: np.ndarray, layout) -> np.ndarray:
    """A Keras-layout batch (NHWC image, or permuted features) in the canonical layout."""
    if layout is None:
        return a
    if isinstance(layout, str):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
    out = np.empty_like(a)
    out[:, layout] = a
    return out


def from_canonical(a: np.ndarray, layout) -> np.ndarray:
    """The inverse of to_canonical: a canonical batch in the Keras layout."""
    if layout is None:
        return a
    if isinstance(layout, str):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
    return a[:, layout]


# The twin -------------------------------------------------------------------------------------


class HeldData(NamedTuple):
    """Training data checked and converted to tensors once (KerasTwin.hold), for many train_epoch calls."""

    x: np.ndarray  # as given: the order's checks read it, and so does the per-step path (on_step)
    y: np.ndarray
    x_t: tf.Tensor  # copies: changing x or y afterwards changes neither (the compiled epoch reads these)
    labels_t: tf.Tensor


class KerasTwin:
    """The spec's model in Keras, holding exactly the given parameters (canonical numpy layout)."""

    kind = "keras"

    def __init__(
        self, spec: ModelSpec, params: dict[str, np.ndarray], seed: int = 0, permute_flatten_rows: bool = True
    ) -> None:
        """permute_flatten_rows=False copies a Dense-after-Flatten kernel unpermuted: the pitfall, for its test."""
        self.permute_flatten_rows = permute_flatten_rows
        if not isinstance(spec, ModelSpec):
            raise SpecError(f"keras twin: expected a ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.names = spec.layer_names()
        self.classification = spec.loss in CLASSIFICATION_LOSSES
        self._rng = np.random.default_rng([seed, 1])  # the reference's dropout stream
        with floatx_scope(spec.dtype):
            self._build()
        self.set_params(params)

    def _build(self) -> None:
        spec = self.spec
        self.layers: dict[str, keras.layers.Layer | None] = {}
        self._dropouts: list[tuple[str, object, tuple, object]] = []  # (name, LayerSpec, shape, layout), active
        self._vars: dict[str, keras.Variable] = {}  # canonical name -> variable, in layer order
        self._pads: dict[str, keras.layers.ZeroPadding2D] = {}  # conv2d name -> its explicit zero padding
        self._row_perm: dict[str, np.ndarray] = {}  # dense after a flatten -> its kernel's row order
        self.layouts: list = []  # each layer's output layout in Keras (see flatten_permutation)
        shape = spec.sample_shape
        layout = NHWC if spec.input_shape is not None else None
        for name, ls, out_shape in zip(self.names, spec.layers, spec.layer_shapes()):
            width = shape[0]
            if ls.kind == "conv2d":
                _, _, (ph, pw) = ls.pairs()
                if (ph, pw) != (0, 0):
                    self._pads[name] = keras.layers.ZeroPadding2D((ph, pw), dtype=keras.DTypePolicy(spec.dtype))
                width = (shape[1] + 2 * ph, shape[2] + 2 * pw, shape[0])
            if ls.kind in ("batchnorm", "layernorm") and layout is not None:
                raise NotImplementedError(f"keras twin: {name}: a {ls.kind} between a flatten and a dense")
            layer = _build_layer(name, ls.kind, ls, spec, width)
            self.layers[name] = layer
            if ls.kind in ("dense", "conv2d"):
                self._vars[f"{name}.W"], self._vars[f"{name}.b"] = layer.kernel, layer.bias
                if ls.kind == "dense" and layout is not None and self.permute_flatten_rows:
                    self._row_perm[name] = layout
            elif ls.kind in ("batchnorm", "layernorm"):
                self._vars[f"{name}.gamma"], self._vars[f"{name}.beta"] = layer.gamma, layer.beta
            elif ls.kind == "dropout" and (ls.rate > 0 if ls.keep is None else ls.keep < 1):
                self._dropouts.append((name, ls, out_shape, layout))
            if ls.kind in ("conv2d", "maxpool2d", "avgpool2d"):
                layout = NHWC
            elif ls.kind == "flatten":
                layout = flatten_permutation(shape)
            elif ls.kind == "dense":
                layout = None
            self.layouts.append(layout)
            shape = out_shape
        if layout is not None:
            raise NotImplementedError("keras twin: the network's output must come from a dense layer after a flatten")
        self.n_out = spec.n_out
        self.loss_fn = make_keras_loss(spec)
        self.optimizer = make_keras_optimizer(spec.optimizer, spec.dtype)
        variables = list(self._vars.values())
        opt = spec.optimizer
        self._decayed = [v for k, v in self._vars.items() if opt.decay_biases or k.endswith(".W")]
        if opt.weight_decay and opt.decay_mode == "decoupled" and not opt.decay_biases:
            decayed = {id(v) for v in self._decayed}  # by identity: `in` would compare the variables' values
            self.optimizer.exclude_from_weight_decay(var_list=[v for v in variables if id(v) not in decayed])
        self._coupled_decay = float(opt.weight_decay) if opt.weight_decay and opt.decay_mode == "coupled" else 0.0
        self.optimizer.build(variables)  # slots now: variables cannot be created inside the epoch loop
        label = (
            tf.TensorSpec((None,), tf.int64) if self.classification else tf.TensorSpec((None, self.n_out), self.dtype)
        )
        mask_specs = tuple(
            tf.TensorSpec((None, *from_canonical(np.empty((1, *shape)), layout).shape[1:]), self.dtype)
            for _, _, shape, layout in self._dropouts
        )
        x_spec = tf.TensorSpec((None, *spec.sample_shape), self.dtype)
        self._step_fn = tf.function(
            self._train_step, input_signature=[x_spec, label, mask_specs], autograph=False, jit_compile=False
        )
        self._step_graph = None  # its concrete function, traced at the first step()
        # evaluate's forward pass, compiled as the training step is (no XLA), as model.predict is; the
        # eager layer calls' numbers without their per-layer dispatch per chunk (see "speed" above).
        self._predict_fn = tf.function(self._predict, input_signature=[x_spec], autograph=False, jit_compile=False)
        self._predict_graph = None  # its concrete function, traced at the first evaluate()
        index = tf.TensorSpec((None,), tf.int64)
        self._epoch_fn = tf.function(
            self._train_loop,
            input_signature=[x_spec, label, index, tf.TensorSpec((), tf.int64), mask_specs],
            autograph=False,
            jit_compile=False,
        )

    # Parameters and state -------------------------------------------------------------------

    @property
    def variables(self) -> list[keras.Variable]:
        return list(self._vars.values())

    def _to_keras(self, name: str, value: np.ndarray) -> np.ndarray:
        """Canonical -> Keras layout, written once: conv W (F, C, KH, KW) -> kernel (KH, KW, C, F);
        the Dense after a Flatten takes W's rows in Keras' NHWC feature order."""
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".W") and value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if name.endswith(".W") and layer in self._row_perm:
            return value[self._row_perm[layer]]
        return value

    def _to_canonical(self, name: str, value: np.ndarray) -> np.ndarray:
        """The inverse of _to_keras: a fresh canonical array."""
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".W") and value.ndim == 4:
            return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        if name.endswith(".W") and layer in self._row_perm:
            out = np.empty_like(value)
            out[self._row_perm[layer]] = value
            return out
        return np.array(value, copy=True)

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: self._to_canonical(k, v.numpy()) for k, v in self._vars.items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        if not isinstance(params, dict) or set(params) != set(self._vars):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ShapeError(f"keras twin: expected parameters {sorted(self._vars)}, got {got}")
        for k, v in params.items():
            var = self._vars[k]
            shape = self._to_canonical(k, np.empty(tuple(var.shape), self.dtype)).shape
            if not isinstance(v, np.ndarray) or v.shape != shape:
                raise ShapeError(f"keras twin: parameter {k}: expected shape {shape}, got {describe(v)}")
            if v.dtype != self.dtype:
                raise DTypeError(f"keras twin: parameter {k}: expected dtype {self.dtype}, got {describe(v)}")
            var.assign(self._to_keras(k, v))

    def _state_vars(self) -> dict[str, keras.Variable]:
        out = {}
        for name, layer in self.layers.items():
            if isinstance(layer, keras.layers.BatchNormalization):
                out[f"{name}.running_mean"], out[f"{name}.running_var"] = layer.moving_mean, layer.moving_variance
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.numpy(), copy=True) for k, v in self._state_vars().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        live = self._state_vars()
        if not isinstance(state, dict) or set(state) != set(live):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ShapeError(f"keras twin: expected state {sorted(live)}, got {got}")
        for k, v in state.items():
            if not isinstance(v, np.ndarray) or v.shape != tuple(live[k].shape) or v.dtype != self.dtype:
                raise ShapeError(
                    f"keras twin: state {k}: expected {self.dtype} array of shape {tuple(live[k].shape)}, got {describe(v)}"
                )
            live[k].assign(v)

    # Inputs ----------------------------------------------------------------------------------

    def _check_x(self, x: np.ndarray, train: bool) -> None:
        check_array(x, f"keras twin input (to {self.names[0]})", self.dtype, sample_shape=self.spec.sample_shape)
        if train:
            self._check_train_batch(x)

    def _check_train_batch(self, x: np.ndarray) -> None:
        if x.shape[0] < 2 and any(ls.kind == "batchnorm" for ls in self.spec.layers):
            raise ShapeError(f"keras twin: batchnorm in training mode needs a batch of at least 2, got {describe(x)}")

    def _labels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Labels as int64 (classification) or targets as they are, checked as the reference checks them."""
        proxy = np.empty((x.shape[0], self.n_out), self.dtype)  # the shape the predictions will have
        if self.classification:
            return check_labels(y, proxy, f"keras twin loss ({self.spec.loss})").astype(np.int64)
        return check_targets(y, proxy, f"keras twin loss ({self.spec.loss})")

    def _masks(self, batch: int, masks: dict[str, np.ndarray] | None) -> tuple[np.ndarray, ...]:
        """One 0/1 keep-mask per active dropout layer: the given one, else drawn as the reference draws."""
        out = []
        for name, ls, shape, layout in self._dropouts:
            m = (masks or {}).get(name)
            if m is None:  # as reference Dropout.draw_mask does, layer by layer, from the same stream
                u = self._rng.random((batch, *shape))
                m = u >= ls.rate if ls.keep is None else u < ls.keep
            elif not isinstance(m, np.ndarray) or m.shape != (batch, *shape):
                raise ShapeError(f"keras twin: {name}: expected a mask of shape {(batch, *shape)}, got {describe(m)}")
            out.append(from_canonical(m.astype(self.dtype), layout))  # the canonical mask, in Keras' layout
        return tuple(out)

    # The computation (shared by trace, step and the epoch loop) -------------------------------

    def _forward(self, x, training: bool, masks) -> list:
        """Every layer's output, first to last; dropout multiplies by mask / (1 - rate) in training."""
        outs, h = [], x
        if self.spec.input_shape is not None:
            h = ops.transpose(x, (0, 2, 3, 1))  # NCHW in, NHWC inside: dL/dx comes back NCHW
        mask_of = dict(zip([d[0] for d in self._dropouts], masks or ()))
        for name, ls in zip(self.names, self.spec.layers):
            layer = self.layers[name]
            if name in self._pads:
                h = self._pads[name](h)
            if ls.kind == "dropout":
                if training and name in mask_of:
                    keep = 1 - ls.rate if ls.keep is None else ls.keep  # reference Dropout.keep_prob
                    h = h * (mask_of[name] / tf.constant(keep, self.dtype))
            elif ls.kind == "batchnorm":
                h = layer(h, training=training)
            else:
                h = layer(h)
            outs.append(h)
        return outs

    def _loss(self, y, out):
        """The reference's loss: the data loss plus the kernels' L2 penalty."""
        loss = self.loss_fn(y, out)
        for name, ls in zip(self.names, self.spec.layers):
            if ls.kind == "dense" and self.spec.l2:
                loss = loss + tf.add_n(self.layers[name].losses)  # l2 * sum(W^2)
        return loss

    def _objective(self, loss):
        """What the optimiser minimises: the loss, plus (wd / 2) sum p^2 for coupled weight decay."""
        if not self._coupled_decay:
            return loss
        return loss + (0.5 * self._coupled_decay) * tf.add_n([tf.reduce_sum(tf.square(v)) for v in self._decayed])

    def _train_step(self, x, y, masks):
        """One optimiser step by keras' optimiser on TensorFlow's gradients; returns the loss before it."""
        variables = self.variables
        with tf.GradientTape() as tape:
            loss = self._loss(y, self._forward(x, True, masks)[-1])
            objective = self._objective(loss)
        grads = tape.gradient(objective, variables)
        self.optimizer.apply(grads, variables)
        return loss

    def _predict(self, x):
        """The inference-mode output: evaluate's forward pass, one chunk."""
        return self._forward(x, False, ())[-1]

    def _train_loop(self, x, y, order, batch_size, masks):
        """Every step of an epoch in one graph: batch i is order[i*bs : (i+1)*bs] (the last may be short)."""
        n = tf.shape(order, out_type=tf.int64)[0]
        n_steps = (n + batch_size - 1) // batch_size

        def body(i, losses):
            start = i * batch_size
            end = tf.minimum(start + batch_size, n)
            idx = order[start:end]
            loss = self._train_step(tf.gather(x, idx), tf.gather(y, idx), tuple(m[start:end] for m in masks))
            return i + 1, losses.write(tf.cast(i, tf.int32), loss)

        losses = tf.TensorArray(self.dtype, size=tf.cast(n_steps, tf.int32))
        _, losses = tf.while_loop(lambda i, _: i < n_steps, body, (tf.constant(0, tf.int64), losses))
        return losses.stack()

    # The twin API -----------------------------------------------------------------------------

    @_in_scope
    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        self._check_x(x, train)
        masks = self._masks(x.shape[0], None) if train else ()
        return self._forward(tf.constant(x), train, masks)[-1].numpy()

    @_in_scope
    def trace(
        self, x: np.ndarray, y: np.ndarray, train: bool = True, masks: dict[str, np.ndarray] | None = None
    ) -> Trace:
        """Loss and every per-layer tensor, from one GradientTape watching the input and each output."""
        self._check_x(x, train)
        y = self._labels(x, y)
        drop = self._masks(x.shape[0], masks) if train else ()
        x_t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            outs = self._forward(x_t, train, drop)
            loss = self._loss(tf.constant(y), outs[-1])
        hs = [x_t, *outs]  # hs[k] is the input of layer k, hs[k + 1] its output
        variables = self.variables
        d_hs, d_vars = tape.gradient(loss, (hs, variables))
        d_hs = [np.zeros(h.shape, self.dtype) if g is None else g.numpy() for h, g in zip(hs, d_hs)]
        grads = {k: self._to_canonical(k, g.numpy()) for k, g in zip(self._vars, d_vars)}
        layouts = [None, *self.layouts]  # layouts[k]: of layer k's input (x_t is the NCHW input itself)
        records = []
        for k, (name, ls) in enumerate(zip(self.names, self.spec.layers)):
            pnames = {"dense": ("W", "b"), "conv2d": ("W", "b"), "batchnorm": ("gamma", "beta")}.get(ls.kind, ())
            pnames = ("gamma", "beta") if ls.kind == "layernorm" else pnames
            records.append(
                LayerTrace(
                    name,
                    out=to_canonical(outs[k].numpy(), layouts[k + 1]),
                    grad_out=to_canonical(d_hs[k + 1], layouts[k + 1]),
                    grad_in=to_canonical(d_hs[k], layouts[k]),
                    grads={p: grads[f"{name}.{p}"] for p in pnames},
                )
            )
        return Trace(loss=np.asarray(loss.numpy()), layers=records)

    @_in_scope
    def step(self, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> float:
        self._check_x(x, True)
        y = self._labels(x, y)
        if self._step_graph is None:
            # Calling the concrete function skips tf.function's per-call dispatch (about 1 ms a step here).
            self._step_graph = self._step_fn.get_concrete_function()
        return float(self._step_graph(tf.constant(x), tf.constant(y), self._masks(x.shape[0], masks)))

    @_in_scope
    def hold(self, x: np.ndarray, y: np.ndarray) -> HeldData:
        """x and y checked and converted to tensors once: train_epoch(held, None, order, batch_size)
        then does neither again. Converting is a copy, and slow: the 60,000 MNIST rows take 0.25 s in
        float32 and 1.0 s in float64 (AMD EPYC Zen 3), 24 and 38 ms for 5,000 rows. A caller that
        trains many epochs on the same arrays (the benchmark) holds them, so an epoch's time is the
        compiled loop's, as the reference's and torch's (torch.from_numpy shares x's memory) are."""
        self._check_x(x, False)
        labels = self._labels(x, y)
        return HeldData(x, y, tf.constant(x), tf.constant(labels))

    @_in_scope
    def train_epoch(self, x, y, order: np.ndarray, batch_size: int, on_step: OnStep = None):
        """One epoch over x[order] in batches; the mean of the per-step losses.

        Without on_step the epoch runs in one compiled loop (self.last_losses holds its per-step
        losses). With on_step every step is a separate step() call, so on_step sees the twin after
        that step. For progress reports at full speed, call train_epoch on consecutive slices of
        `order` whose lengths are multiples of batch_size: the batches, hence the numbers, are the same.
        x, y: numpy arrays, converted to tensors in each call (see hold), or x = hold(x, y) and y = None.
        """
        held = x if isinstance(x, HeldData) else None
        if held is not None:
            if y is not None:
                raise ValueError(
                    f"keras twin train_epoch: with held data (KerasTwin.hold) y must be None, got {describe(y)}"
                )
            x, y = held.x, held.y
        order = check_epoch(x, order, batch_size, "keras twin train_epoch")
        if on_step is not None:
            losses = []
            for i, idx in enumerate(batches(order, batch_size)):
                losses.append(self.step(x[idx], y[idx]))
                on_step(i, losses[-1])
        else:
            held = self.hold(x, y) if held is None else held
            smallest = min(batch_size, len(order) - (len(order) - 1) // batch_size * batch_size)
            self._check_train_batch(x[:smallest])  # a batch of one: batchnorm raises as the reference does
            masks = self._epoch_masks(order, batch_size)
            out = self._epoch_fn(held.x_t, held.labels_t, tf.constant(order, tf.int64), batch_size, masks)
            losses = [float(v) for v in out.numpy()]
        self.last_losses = np.asarray(losses)
        total = 0.0
        for loss in losses:  # the reference's sum, in its order
            total += loss
        return total / len(losses)

    def _epoch_masks(self, order: np.ndarray, batch_size: int) -> tuple[np.ndarray, ...]:
        """The keep-masks of every step, drawn in the reference's order, rows aligned with `order`."""
        if not self._dropouts:
            return ()
        per_step = [self._masks(len(idx), None) for idx in batches(order, batch_size)]
        return tuple(np.concatenate([step[k] for step in per_step]) for k in range(len(self._dropouts)))

    @_in_scope
    def evaluate(
        self, x: np.ndarray, y: np.ndarray, batch_size: int = 10_000, predictions: list | None = None
    ) -> tuple[float, float]:
        """(mean loss per sample, accuracy) in inference mode, as reference.train.evaluate defines them.
        With a list `predictions`, each chunk's predicted classes (argmax of the output) are appended."""
        self._check_x(x, False)
        labels = self._labels(x, y)
        if self._predict_graph is None:
            self._predict_graph = self._predict_fn.get_concrete_function()

        def predict(xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, float]:
            # The loss stays eager, as before (compiled, its float32 mean can round an ulp apart too).
            out = self._predict_graph(tf.constant(xb))
            if predictions is not None:
                predictions.append(out.numpy().argmax(axis=1))
            return out.numpy(), float(self.loss_fn(tf.constant(yb), out))

        return evaluate_chunks(predict, x, labels, self.spec.reduction, self.classification, batch_size)
