"""What is particular to the keras twin: Keras' layout, the Keras behaviours it works around (each
pinned here, so an upgrade that changes one says so), and Keras' global state. Its parity with the
reference (every layer, loss and optimiser case, dropout, batchnorm, the compiled epoch loop,
trajectories) is tested in tests/test_parity.py, with the torch twin's.

    a Dense kernel is W itself; torch's batchnorm convention: what Keras matches and what not
    hyper-parameters exact in float64; float32 and float64 twins side by side; floatx_scope
    the compiled loop: its per-step losses, a batchnorm batch of one refused before training
    CategoricalCrossentropy, BinaryCrossentropy, LeakyReLU and tf.cast: what Keras does instead
    Hinge, SquaredHinge, CategoricalHinge: not the multiclass hinge; LayerNormalization's epsilon 1e-3
    model.fit over the same batches lands on the reference
    the defaults the twin reads from the reference are Keras' own
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from cases import DTYPES, LAYER_CASES, LOSS_CASES, OPTIMIZER_CASES, make_batch  # noqa: E402
from helpers import close, epoch_sizes, mnist_for, reference_state  # noqa: E402

from oracles.compare import compare, compare_params  # noqa: E402
from oracles.keras_twin import KerasTwin, floatx_scope, limit_tensorflow_threads  # noqa: E402
from reference import train as ref_train  # noqa: E402
from reference.errors import ShapeError  # noqa: E402
from reference.layers import BatchNorm  # noqa: E402
from reference.losses import make_loss  # noqa: E402
from reference.network import Network  # noqa: E402
from reference.optimizers import DEFAULTS, make_optimizer  # noqa: E402
from reference.spec import LayerSpec, preset  # noqa: E402

pytestmark = pytest.mark.keras
limit_tensorflow_threads(1)  # tiny models: faster on one thread (a no-op if TensorFlow already ran here)

KERAS_OPTIMIZERS = {k: v for k, v in OPTIMIZER_CASES.items() if v.convention == "keras"}
OPTIMIZER_MODEL = LAYER_CASES["l2"]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """The reference's matmuls on one BLAS thread: next to TensorFlow's threads on 2 busy cores,
    OpenBLAS' spinning threads made a 784-100-200-10 step 30-300 times slower (measured)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_kernel_is_w_itself(dtype):
    spec = LAYER_CASES["dense"].replace(dtype=dtype)
    params = Network(spec, seed=3).get_params()
    twin = KerasTwin(spec, params)
    kernel = twin.layers["dense_1"].kernel.numpy()
    assert np.array_equal(kernel, params["dense_1.W"]), "a Keras Dense kernel is W (n_in, n_out) itself"


def test_the_defaults_the_twin_reads_are_keras_own():
    """The twin reads reference.optimizers.DEFAULTS and BatchNorm.DEFAULTS instead of copies of its
    own; keras' convention there must be keras.optimizers' and keras.layers' defaults."""
    rms, adam, bn = keras.optimizers.RMSprop(), keras.optimizers.Adam(), keras.layers.BatchNormalization()
    assert (rms.rho, rms.epsilon, adam.epsilon) == (
        DEFAULTS["keras"]["rho"],
        DEFAULTS["keras"]["eps"],
        DEFAULTS["keras"]["eps"],
    )
    assert (bn.momentum, bn.epsilon) == BatchNorm.DEFAULTS["keras"]


# The multiclass hinge: Keras' three hinge losses are other functions ------------------------------


def hinge_batch(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n_classes)
    return rng.normal(0, 2, (8, n_classes)), rng.integers(0, n_classes, 8)


@pytest.mark.parametrize("n_classes", [3, 10])
def test_keras_hinge_losses_are_other_functions(n_classes):
    """Each of keras' hinge losses is its own formula (written out here), none the multiclass hinge.

    Measured on these batches (float64), the batch mean keras / reference: Hinge 0.517 (C = 3) and
    0.069 (C = 10), SquaredHinge 1.942 and 0.157, CategoricalHinge 1.021 and 0.235. CategoricalHinge's
    mean lands within 2 % at C = 3 while its samples are up to 3.1 apart: compare per sample.
    """
    scores, labels = hinge_batch(n_classes)
    ours = make_loss("multiclass_hinge", "sum")
    per_sample = np.array([float(ours.value(scores[i : i + 1], labels[i : i + 1])) for i in range(8)])
    onehot = np.eye(n_classes)[labels]
    sign = 2 * onehot - 1  # Hinge and SquaredHinge map 0/1 targets to -1/+1
    s_y = scores[np.arange(8), labels]
    best_wrong = np.where(onehot == 1, -np.inf, scores).max(axis=1)
    formulas = {
        keras.losses.Hinge: np.maximum(0, 1 - sign * scores).mean(axis=1),  # one-vs-all, mean over C
        keras.losses.SquaredHinge: (np.maximum(0, 1 - sign * scores) ** 2).mean(axis=1),
        # the largest wrong score only, and floored at 0: keras zeroes the label's entry ((1 - t) s), it
        # does not drop it, so with every wrong score below 0 the "largest" is the label's 0
        keras.losses.CategoricalHinge: np.maximum(0, 1 + np.maximum(best_wrong, 0) - s_y),
    }
    ratios = {}
    for cls, formula in formulas.items():
        values = cls(reduction=None, dtype="float64")(onehot, tf.constant(scores)).numpy()  # (batch,)
        assert close(cls.__name__, values, formula, "float64", "loss").passed
        assert np.abs(values - per_sample).max() > 3, cls.__name__
        ratios[cls.__name__] = round(values.mean() / per_sample.mean(), 3)
    expected = {
        3: {"Hinge": 0.517, "SquaredHinge": 1.942, "CategoricalHinge": 1.021},
        10: {"Hinge": 0.069, "SquaredHinge": 0.157, "CategoricalHinge": 0.235},
    }
    assert ratios == expected[n_classes]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_twins_hinge_is_the_reference_at_the_kink_too(dtype):
    """MulticlassHinge in keras ops (relu: gradient 0 at a margin of exactly 0), against the reference."""
    scores, labels = hinge_batch(3)
    scores[0, (labels[0] + 1) % 3] = scores[0, labels[0]] - 1  # a margin of exactly 0
    scores = scores.astype(dtype)
    spec = LOSS_CASES["multiclass_hinge-mean"].replace(dtype=dtype)
    twin = KerasTwin(spec, Network(spec).get_params())
    value, grad = make_loss("multiclass_hinge").value_and_grad(scores, labels)
    with floatx_scope(dtype):
        z = tf.constant(scores)
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = twin.loss_fn(tf.constant(labels), z)
        twin_grad = tape.gradient(loss, z).numpy()
    assert close("loss", np.asarray(loss.numpy()), value, dtype, "loss").passed
    assert close("dL/dscores", twin_grad, grad, dtype).passed
    assert twin_grad[0, (labels[0] + 1) % 3] == 0
    # ops.maximum would count that margin: TensorFlow's Maximum sends the gradient to x where x >= y
    with tf.GradientTape() as tape:
        m = tf.constant(np.zeros(1, dtype))
        tape.watch(m)
        out = keras.ops.maximum(m, 0.0)
    assert float(tape.gradient(out, m)[0]) == 1.0


# LayerNormalization ---------------------------------------------------------------------------


def test_keras_layer_normalization_defaults_to_epsilon_1e3():
    """keras' default epsilon is 1e-3, torch's and CS231n's 1e-5: measured on rows of N(0, s^2), the
    default-eps output is 3.0e-3 (s = 1), 0.20 (s = 0.1) and 0.53 (s = 0.03) off (relative to max |out|)."""
    from reference.layers import LayerNorm

    default = keras.layers.LayerNormalization(dtype="float64")
    assert default.epsilon == 1e-3 and default.axis == -1  # per sample, over the last (feature) axis
    x = np.random.default_rng(0).normal(size=(16, 6))
    errors = {}
    for scale in (1.0, 0.1, 0.03):
        ours = LayerNorm("layernorm_1", 6, np.float64).forward(x * scale)[0]
        theirs = default(tf.constant(x * scale)).numpy()
        errors[scale] = float(np.abs(ours - theirs).max() / np.abs(ours).max())
    assert [round(errors[s], 3) for s in (1.0, 0.1, 0.03)] == [0.003, 0.197, 0.526]
    spec = LAYER_CASES["layernorm"]
    twin = KerasTwin(spec, Network(spec).get_params())
    assert twin.layers["layernorm_1"].epsilon == LayerNorm.EPS == 1e-5


def test_keras_dropout_rate_is_the_drop_probability_not_cs231ns_keep():
    """keras.layers.Dropout(0.3) keeps 70 %; CS231n's p = 0.3 keeps 30 % (the twin's keep form divides by p)."""
    n = 200_000
    kept = float((keras.layers.Dropout(0.3, seed=1)(np.ones((1, n), np.float32), training=True).numpy() != 0).mean())
    assert abs(kept - 0.7) < 5 * np.sqrt(0.21 / n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_compiled_loop_keeps_its_per_step_losses(dtype):
    """last_losses: the compiled epoch's per-step losses, exactly those step() gives batch by batch."""
    spec = LAYER_CASES["dropout"].replace(dtype=dtype, optimizer=KERAS_OPTIMIZERS["nesterov-keras-coupled"])
    x, y = make_batch(spec, 51, seed=1)
    order = np.random.default_rng(3).permutation(51)  # batches of 7, the last of 2
    params = Network(spec, seed=0).get_params()
    fast, slow = KerasTwin(spec, params), KerasTwin(spec, params)
    fast.train_epoch(x, y, order, 7)
    losses = [slow.step(x[idx], y[idx]) for idx in ref_train.batches(order, 7)]
    assert np.array_equal(fast.last_losses, losses)


@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-cnn"])
def test_each_compiled_function_is_traced_once_per_twin(name):
    """The compiled epoch, step and evaluation are traced once per twin, whatever the epoch's length,
    its last batch, the batch size or the chunk: a retrace would put seconds of tracing into every
    epoch the benchmark and `bprop validate` time. (TensorFlow's "N out of the last N calls ...
    triggered tf.function retracing" warning in the benchmark counts the traces of one method over
    all the twins it builds, one each.)"""
    spec = preset(name, dtype="float32")
    twin = KerasTwin(spec, Network(spec, seed=0).get_params())
    x, y = make_batch(spec, 70, seed=1)
    rng = np.random.default_rng(2)
    for n, batch_size in ((70, 16), (64, 16), (33, 8)):  # a short last batch, none, another size
        twin.train_epoch(x, y, rng.permutation(70)[:n], batch_size)
        twin.evaluate(x[:n], y[:n])
        twin.step(x[: n // 4], y[: n // 4])
    counts = [f.experimental_get_tracing_count() for f in (twin._epoch_fn, twin._step_fn, twin._predict_fn)]
    assert counts == [1, 1, 1], counts


@pytest.mark.parametrize("name", ["mnist-relu-batched", "mnist-cnn"])
def test_held_data_trains_as_the_arrays_do_and_is_converted_once(name):
    """train_epoch(hold(x, y), None, ...) gives the losses and parameters of train_epoch(x, y, ...),
    epoch after epoch, without converting x again: the benchmark times keras' compiled loop so,
    not a copy of the whole training set per epoch (0.25 s float32, 1.0 s float64 for MNIST)."""
    spec = preset(name, dtype="float64")
    params = Network(spec, seed=0).get_params()
    arrays, held_twin = KerasTwin(spec, params), KerasTwin(spec, params)
    x, y = make_batch(spec, 50, seed=3)
    held = held_twin.hold(x, y)
    rng = np.random.default_rng(4)
    for n, batch_size in ((50, 16), (32, 8)):
        order = rng.permutation(50)[:n]
        assert held_twin.train_epoch(held, None, order, batch_size) == arrays.train_epoch(x, y, order, batch_size)
        assert np.array_equal(held_twin.last_losses, arrays.last_losses)
    mine, theirs = arrays.get_params(), held_twin.get_params()
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)  # bit for bit
    kept = x.copy()
    x[...] = np.nan  # a copy was converted: the held tensor keeps the values it was given
    assert np.array_equal(held.x_t.numpy(), kept)
    order = rng.permutation(50)
    loss = held_twin.train_epoch(held, None, order, 16)  # neither checked nor converted again: the values held
    assert np.isfinite(loss) and loss == arrays.train_epoch(kept, y, order, 16)
    with pytest.raises(ValueError, match="y must be None"):
        held_twin.train_epoch(held, y, order, 16)
    with pytest.raises(ShapeError):  # checked when held, as train_epoch checks its arrays
        held_twin.hold(kept[..., :3], y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_torch_convention_what_keras_can_and_cannot_match(dtype):
    """Keras matches torch's batchnorm in training (momentum 1 - 0.1, eps 1e-5), not its running variance."""
    torch_spec = LAYER_CASES["batchnorm_torch"].replace(dtype=dtype)
    with pytest.raises(NotImplementedError, match="unbiased"):
        KerasTwin(torch_spec, Network(torch_spec).get_params())
    layers = tuple(
        LayerSpec("batchnorm", convention="keras", momentum=0.9, eps=1e-5) if ls.kind == "batchnorm" else ls
        for ls in torch_spec.layers
    )
    keras_spec = torch_spec.replace(layers=layers)
    net = Network(torch_spec, seed=0)
    twin = KerasTwin(keras_spec, net.get_params())
    x, y = make_batch(torch_spec, 8)
    ref_trace = net.trace(x, y)
    compare(ref_trace, twin.trace(x, y), "twin").assert_ok()  # every training-mode output and gradient
    ref, got = reference_state(net), twin.get_state()
    row = close("running_mean", got["batchnorm_1.running_mean"], ref["batchnorm_1.running_mean"], dtype, "parameters")
    assert row.passed, row.describe()
    # running_var starts at 1: torch keeps 0.9 + 0.1 * var * n/(n-1), Keras 0.9 + 0.1 * var (biased).
    var = ref_trace["dense_1"].out.var(axis=0)
    keras_rule = close("running_var", got["batchnorm_1.running_var"], 0.9 + 0.1 * var, dtype, "parameters")
    torch_rule = close(
        "running_var", got["batchnorm_1.running_var"], ref["batchnorm_1.running_var"], dtype, "parameters"
    )
    assert keras_rule.passed and not torch_rule.passed, (keras_rule.describe(), torch_rule.describe())


def test_keras_optimizer_hyperparameters_are_exact_in_float64():
    """The learning rate variable, momentum and betas arrive in float64 without a float32 detour."""
    spec = OPTIMIZER_MODEL.replace(dtype="float64", optimizer=KERAS_OPTIMIZERS["adam-keras-decoupled"])
    twin = KerasTwin(spec, Network(spec).get_params())
    lr = twin.optimizer.learning_rate
    assert lr.dtype == "float64" and float(lr.numpy()) == spec.optimizer.lr
    assert float(keras.ops.cast(twin.optimizer.beta_2, "float64")) == 0.999
    assert float(keras.ops.cast(twin.optimizer.weight_decay, "float64")) == spec.optimizer.weight_decay


@pytest.mark.parametrize("first, second", [("float32", "float64"), ("float64", "float32")])
def test_float32_and_float64_twins_live_side_by_side(first, second):
    """Build and use one dtype, then the other; both stay exact and Keras' global state is unchanged."""
    before = (keras.config.floatx(), keras.config.dtype_policy().name)
    spec = OPTIMIZER_MODEL.replace(optimizer=KERAS_OPTIMIZERS["momentum-keras"])
    twins, nets = {}, {}
    for dtype in (first, second):
        s = spec.replace(dtype=dtype)
        nets[dtype] = Network(s, seed=0)
        twins[dtype] = KerasTwin(s, nets[dtype].get_params())
        assert (keras.config.floatx(), keras.config.dtype_policy().name) == before
    opts = {dtype: make_optimizer(spec.optimizer) for dtype in DTYPES}
    for step in range(5):
        for dtype in (second, first):  # interleaved
            x, y = make_batch(nets[dtype].spec, 7, seed=step)
            compare(nets[dtype].trace(x, y), twins[dtype].trace(x, y)).assert_ok()
            ref_train.train_step(nets[dtype], opts[dtype], x, y)
            twins[dtype].step(x, y)
            compare_params(nets[dtype].get_params(), twins[dtype].get_params(), "twin", dtype).assert_ok()
    for dtype, twin in twins.items():
        assert twin.optimizer.learning_rate.dtype == dtype
        assert all(v.dtype == dtype for v in twin.optimizer.variables if v.dtype.startswith("float"))
    assert (keras.config.floatx(), keras.config.dtype_policy().name) == before


def test_floatx_scope_restores_an_unread_policy():
    """If the dtype policy was never read, it stays unread: a later set_floatx still takes effect."""
    from keras.src.backend.common import global_state

    saved = global_state.get_global_attribute("dtype_policy", None)
    global_state.set_global_attribute("dtype_policy", None)
    try:
        with floatx_scope("float64"):
            assert keras.config.dtype_policy().name == "float64"
        assert global_state.get_global_attribute("dtype_policy", None) is None
    finally:
        global_state.set_global_attribute("dtype_policy", saved)


def test_train_epoch_refuses_a_batchnorm_batch_of_one_before_training():
    spec = LAYER_CASES["batchnorm_keras"]
    twin = KerasTwin(spec, Network(spec).get_params())
    x, y = make_batch(spec, 15)
    before = twin.get_params()
    with pytest.raises(ShapeError, match="at least 2"):
        twin.train_epoch(x, y, np.arange(15), 7)  # batches of 7, 7, 1
    assert all(np.array_equal(before[k], v) for k, v in twin.get_params().items())


def test_keras_categorical_crossentropy_is_another_function_of_the_probabilities():
    """Keras renormalises p: dL/dp gains 1/d on every entry; dL/dlogits does not change."""
    _, labels = make_batch(LOSS_CASES["cross_entropy-mean"], 5)
    z = tf.constant(np.random.default_rng(0).normal(size=(5, 3)))
    onehot = tf.one_hot(labels, 3, dtype=tf.float64)
    cce = keras.losses.CategoricalCrossentropy(dtype="float64")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        p = tf.nn.softmax(z)
        p_plain = tf.identity(p)  # hides the softmax from Keras' logits short-cut
        loss = cce(onehot, p_plain)
    _, ref_dp = make_loss("cross_entropy").value_and_grad(p.numpy(), labels)
    ref_dz = p.numpy() * (ref_dp - (ref_dp * p.numpy()).sum(axis=1, keepdims=True))  # softmax backward
    shifted = close("dL/dp", tape.gradient(loss, p_plain).numpy(), ref_dp + 1 / 5, "float64", "gradient")
    same_dz = close("dL/dz", tape.gradient(loss, z).numpy(), ref_dz, "float64", "gradient")
    assert shifted.passed and same_dz.passed, (shifted.describe(), same_dz.describe())
    # On a softmax layer's own output Keras takes the logits and never differentiates through p.
    with tf.GradientTape() as tape:
        tape.watch(z)
        p = keras.activations.softmax(z)
        loss = cce(onehot, p)
    assert tape.gradient(loss, p) is None


def test_keras_binary_crossentropy_clips_the_probabilities():
    """keras.losses.BinaryCrossentropy clips p to [1e-7, 1 - 1e-7]; the reference and the twin do not."""
    spec = LOSS_CASES["bce-sum"]
    p, t = np.array([[1e-9, 0.5, 0.25]]), np.array([[1.0, 0.0, 1.0]])
    ref_value, _ = make_loss("bce", "sum").value_and_grad(p, t)
    with floatx_scope("float64"):
        twin_value = KerasTwin(spec, Network(spec).get_params()).loss_fn(t, tf.constant(p))
        keras_value = keras.losses.BinaryCrossentropy(reduction="sum", dtype="float64")(t, tf.identity(p))
    assert close("bce", np.asarray(twin_value), ref_value, "float64", "loss").passed
    clipped = -(np.log(1e-7) + np.log(0.5) + np.log(0.25)) / 3  # Keras also averages over the last axis
    assert close("keras bce", np.asarray(keras_value), np.asarray(clipped), "float64", "loss").passed


def test_keras_leaky_relu_rounds_its_slope_to_float32():
    """TensorFlow's LeakyRelu keeps alpha in a float32 attribute, even for float64 tensors."""
    x = tf.constant([-1.0], tf.float64)
    assert float(keras.layers.LeakyReLU(negative_slope=0.1, dtype="float64")(x)[0]) == -float(np.float32(0.1))
    spec = LAYER_CASES["leaky_relu"].replace(dtype="float64")
    twin = KerasTwin(spec, Network(spec).get_params())
    assert float(twin.layers["leaky_relu_1"](x)[0]) == -0.1


def test_tf_cast_sends_python_floats_through_float32():
    """Why hyper-parameters are handed to Keras as numpy float64 in a float64 twin."""
    assert float(keras.ops.cast(0.9, "float64")) == float(np.float32(0.9)) != 0.9
    assert float(keras.ops.cast(np.float64(0.9), "float64")) == 0.9
    assert float(keras.regularizers.L2(0.01)(tf.constant([1.0], tf.float64))) == float(np.float32(0.01))


@pytest.mark.parametrize("n", epoch_sizes())
def test_keras_fit_consumes_the_same_batches(mnist, n):
    """model.fit(shuffle=False) on the pre-ordered rows, Keras' own training loop, lands on the reference."""
    spec = preset("mnist-relu-batched", dtype="float64")
    x, y, order = mnist_for(mnist, spec, n)
    net = Network(spec, seed=0)
    twin = KerasTwin(spec, net.get_params())
    ref_train.train_epoch(net, make_optimizer(spec.optimizer), x, y, order, spec.batch_size)
    with floatx_scope("float64"):
        model = keras.Sequential([keras.Input((spec.n_in,), dtype="float64"), *twin.layers.values()])
        model.compile(optimizer=twin.optimizer, loss=twin.loss_fn, jit_compile=False)
        model.fit(x, y, batch_size=spec.batch_size, epochs=1, shuffle=False, verbose=0)
    compare_params(net.get_params(), twin.get_params(), "twin", "float64", title="keras fit").assert_ok()


def eager_evaluate(twin: KerasTwin, x, y, batch_size: int, predictions: list, outputs: list) -> tuple[float, float]:
    """evaluate as it was before it was compiled: each chunk through the eager layer calls and the loss."""
    labels = twin._labels(x, y)

    def predict(xb, yb):
        out = twin._forward(tf.constant(xb), False, ())[-1]
        predictions.append(out.numpy().argmax(axis=1))
        outputs.append(out.numpy())
        return out.numpy(), float(twin.loss_fn(tf.constant(yb), out))

    with floatx_scope(twin.spec.dtype):
        return ref_train.evaluate_chunks(predict, x, labels, twin.spec.reduction, twin.classification, batch_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["cnn", "batchnorm_keras", "conv2d-dropout", "l2", "tanh"])
def test_compiled_evaluate_is_the_eager_layer_calls(case, dtype):
    """evaluate's compiled forward pass against the eager layer calls it replaced (batchnorm from its
    running statistics, dropout inactive, the L2 term left out as the reference does), after a few
    training steps, in chunks of 7 with a short one. float64: loss, accuracy, every chunk's outputs and
    predictions bit for bit. float32: Grappler fuses each Dense's MatMul and BiasAdd (one oneDNN
    kernel), so outputs may differ by an ulp: at most 4 ulps of the largest output here (the l2 case
    measured 1 ulp), and the same predictions."""
    spec = LAYER_CASES[case].replace(dtype=dtype)
    twin = KerasTwin(spec, Network(spec, seed=2).get_params(), seed=2)
    x, y = make_batch(spec, 40, seed=5)
    twin.train_epoch(x, y, np.random.default_rng(0).permutation(40), 8)
    eager, eager_out = [], []
    expected = eager_evaluate(twin, x, y, 7, eager, eager_out)
    compiled = []
    got = twin.evaluate(x, y, 7, predictions=compiled)
    assert twin._predict_graph is not None  # the compiled path ran
    assert len(compiled) == len(eager) == 6 and all(np.array_equal(a, b) for a, b in zip(compiled, eager))
    with floatx_scope(dtype):
        outs = [twin._predict_graph(tf.constant(x[i : i + 7])).numpy() for i in range(0, 40, 7)]
    if dtype == "float64":
        assert got == expected
        assert all(np.array_equal(a, b) for a, b in zip(outs, eager_out))
    else:
        ulp = np.finfo(np.float32).eps * max(float(np.abs(o).max()) for o in eager_out)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(outs, eager_out))
        assert worst <= 4 * ulp, f"compiled vs eager outputs: {worst:.3g} apart, {worst / ulp:.1f} ulps"
        assert got[1] == expected[1] and abs(got[0] - expected[0]) <= 4 * np.finfo(np.float32).eps * abs(expected[0])
