"""Convolutional layers: what the shared suites cannot say about them.

The image cases of tests/cases.py (CONV_CASES: conv2d, maxpool2d, avgpool2d, flatten on non-square
(2, 7, 6) images, strides 1 and 2, pads 0 and 1, non-square kernels) run through every suite that
iterates LAYER_CASES: finite differences (test_numeric), batch == its samples (test_batching), the
torch and keras parity suites (batch 1, 7, 128, both dtypes), hypothesis (test_properties). Here:

- the spec: shapes inferred layer by layer, a kernel that does not fit refused with both shapes;
- initialisers count fan-in as C KH KW (and Glorot's fan-out as F KH KW);
- layer-by-layer parity at batch 32 for every image case, both twins, both dtypes;
- the pitfalls of the keras twin, measured: a Dense after a Flatten of NHWC images needs its rows
  permuted; padding="same" is not explicit zero padding;
- max-pool ties: the gradient goes to the first maximum in row-major order, in all three;
- the CNN preset's structure against finite differences (max-pool before ReLU: the same function).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cases import CONV_CASES, DTYPES, LAYER_CASES, make_batch
from test_numeric import check_numeric, kink_free_batch

from oracles.compare import compare, rel_error
from oracles.numeric import draw_masks
from reference import conv
from reference.errors import ShapeError, SpecError
from reference.init import conv_kernel
from reference.network import Network
from reference.spec import LayerSpec, ModelSpec, preset

L = LayerSpec


def image_spec(*layers: LayerSpec, shape=(2, 7, 6), **kw) -> ModelSpec:
    return ModelSpec(n_in=int(np.prod(shape)), input_shape=shape, layers=layers, **kw)


# The spec --------------------------------------------------------------------------------------


def test_every_layer_shape_is_inferred():
    spec = preset("mnist-cnn")
    assert spec.layer_shapes() == [
        (8, 28, 28),
        (8, 28, 28),
        (8, 14, 14),
        (16, 14, 14),
        (16, 14, 14),
        (16, 7, 7),
        (784,),
        (10,),
    ]
    unpadded = spec.replace(layers=tuple(dataclasses.replace(ls, padding=0) for ls in spec.layers))
    # 11 // 2: the last row and column are dropped, as torch (ceil_mode=False) and keras ("valid") drop them
    assert unpadded.layer_shapes()[3:7] == [(16, 11, 11), (16, 11, 11), (16, 5, 5), (400,)]
    net = Network(spec, seed=0)
    outs, _ = net.forward_cached(np.zeros((3, 1, 28, 28)))
    assert [o.shape[1:] for o in outs] == spec.layer_shapes()
    assert {k: v.shape for k, v in net.params.items()} == {
        "conv2d_1.W": (8, 1, 3, 3),
        "conv2d_1.b": (8,),
        "conv2d_2.W": (16, 8, 3, 3),
        "conv2d_2.b": (16,),
        "dense_1.W": (784, 10),
        "dense_1.b": (10,),
    }


def test_stride_and_padding_in_the_shape():
    spec = image_spec(
        L("conv2d", filters=4, kernel=(3, 2), stride=(2, 1), padding=(1, 0)),
        L("avgpool2d", pool=(2, 2), stride=1),
        L("flatten"),
        L("dense", units=3),
    )
    # H: (7 + 2 - 3) // 2 + 1 = 4, W: (6 - 2) // 1 + 1 = 5; pool 2 stride 1: (3, 4)
    assert spec.layer_shapes() == [(4, 4, 5), (4, 3, 4), (48,), (3,)]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            (L("conv2d", filters=2, kernel=(8, 3)), L("flatten"), L("dense", units=3)),
            r"layers\[0\] \(conv2d\): kernel \(8, 3\) does not fit the input \(2, 7, 6\)",
        ),
        (
            (L("conv2d", filters=2, kernel=(3, 3)), L("maxpool2d", pool=(6, 2)), L("flatten"), L("dense", units=3)),
            r"layers\[1\] \(maxpool2d\): pool \(6, 2\) does not fit the input \(2, 5, 4\)",
        ),
        ((L("dense", units=3),), r"layers\[0\] \(dense\) expects a flat input \(add a flatten layer"),
        ((L("flatten"), L("conv2d", filters=2, kernel=(1, 1)), L("dense", units=3)), r"expects an image input"),
        ((L("conv2d", kernel=(3, 3)), L("flatten"), L("dense", units=3)), r"needs filters >= 1, got None"),
        ((L("conv2d", filters=2), L("flatten"), L("dense", units=3)), r"needs kernel = \(KH, KW\)"),
        ((L("conv2d", filters=2, kernel=3, stride=0), L("flatten"), L("dense", units=3)), r"needs stride >= 1"),
        ((L("conv2d", filters=2, kernel=3, padding=-1), L("flatten"), L("dense", units=3)), r"needs padding >= 0"),
        ((L("maxpool2d", pool=2, padding=1), L("flatten"), L("dense", units=3)), r"no padding"),
        ((L("batchnorm"), L("flatten"), L("dense", units=3)), r"batchnorm\) expects a flat input"),
        ((L("flatten"), L("dense", units=3), L("flatten")), r"expects an image input"),
    ],
    ids=[
        "kernel-too-tall",
        "pool-too-tall",
        "dense-on-images",
        "conv-after-flatten",
        "no-filters",
        "no-kernel",
        "stride-0",
        "negative-padding",
        "padded-pool",
        "batchnorm-on-images",
        "flatten-of-a-vector",
    ],
)
def test_a_spec_that_does_not_fit_is_refused_naming_the_layer(layers, message):
    with pytest.raises(SpecError, match=message):
        image_spec(*layers)


def test_input_shape_and_n_in_must_agree():
    with pytest.raises(SpecError, match=r"n_in must be C\*H\*W = 84 for input_shape \(2, 7, 6\), got 80"):
        ModelSpec(n_in=80, input_shape=(2, 7, 6), layers=(L("flatten"), L("dense", units=3)))
    with pytest.raises(SpecError, match=r"input_shape must be \(C, H, W\)"):
        ModelSpec(n_in=84, input_shape=(84,), layers=(L("dense", units=3),))


def test_an_image_spec_round_trips_through_json():
    spec = LAYER_CASES["conv2d-k2x2-s2x1-p1x0"]
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.input_shape == (2, 7, 6) and again.layers[0].stride == (2, 1)


def test_image_inputs_of_the_wrong_shape_are_named():
    net = Network(LAYER_CASES["cnn"], seed=0)
    x, y = make_batch(net.spec, 4)
    for bad in (x.reshape(4, -1), x[:, :, :, :5], x[:, :1]):
        with pytest.raises(
            ShapeError,
            match=r"network input \(to conv2d_1\): expected shape \(batch, C, H, W\) = "
            r"\(batch, 2, 7, 6\), got float64 array of shape",
        ):
            net.trace(bad, y)


# Initialisers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "variance"),
    [
        ("he_normal", 2 / (8 * 3 * 5)),
        ("he_uniform", 2 / (8 * 3 * 5)),
        ("normal_std_inv_fan_in", (1 / (8 * 3 * 5)) ** 2),
        ("glorot_uniform", 2 / (8 * 3 * 5 + 64 * 3 * 5)),
        ("glorot_normal", 2 / (8 * 3 * 5 + 64 * 3 * 5)),
    ],
)
def test_conv_initialisers_count_fan_in_as_c_kh_kw(init, variance):
    """A (64, 8, 3, 5) kernel: fan-in 8*3*5 = 120, Glorot's fan-out 64*3*5 = 960 (torch, keras)."""
    W, b = conv_kernel(init, np.random.default_rng(0), (64, 8, 3, 5))
    assert W.shape == (64, 8, 3, 5) and b.shape == (64,) and not b.any()
    assert abs(W.var() / variance - 1) < 0.05, (W.var(), variance)


def test_a_conv_layer_takes_its_own_initialiser():
    spec = image_spec(L("conv2d", filters=4, kernel=2, init="small_normal"), L("flatten"), L("dense", units=3))
    assert 0.005 < Network(spec, seed=0).params["conv2d_1.W"].std() < 0.015


# Parity at batch 32, both twins, both dtypes ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("kind", ["torch", "keras"])
def test_image_case_matches_the_twin_at_batch_32(kind, case, dtype):
    pytest.importorskip(kind if kind == "torch" else "keras")
    from oracles import make_twin

    net = Network(LAYER_CASES[case].replace(dtype=dtype), seed=1)
    x, y = make_batch(net.spec, 32, seed=3)
    masks = draw_masks(net, x)
    twin = make_twin(kind, net.spec, net.get_params())
    result = compare(net.trace(x, y, masks=masks), twin.trace(x, y, masks=masks), oracle="twin", dtype=dtype)
    result.assert_ok()
    assert len(result.rows) == len(list(net.trace(x, y, masks=masks).tensors()))


# The keras pitfalls, measured -----------------------------------------------------------------------


def keras_pair(spec: ModelSpec, **kw):
    pytest.importorskip("keras")
    from oracles.keras_twin import KerasTwin

    net = Network(spec, seed=1)
    return net, KerasTwin(spec, net.get_params(), **kw)


def test_keras_conv_kernel_is_kh_kw_c_f_and_round_trips_bit_exact():
    net, twin = keras_pair(LAYER_CASES["cnn"])
    kernel = twin._vars["conv2d_1.W"].numpy()
    assert kernel.shape == (3, 3, 2, 4)
    np.testing.assert_array_equal(kernel, net.params["conv2d_1.W"].transpose(2, 3, 1, 0))
    for k, v in twin.get_params().items():
        np.testing.assert_array_equal(v, net.params[k], err_msg=k)


def test_flatten_after_nhwc_needs_the_dense_rows_permuted():
    """Without the permutation the Dense after the Flatten computes another function.

    Measured on the CNN preset at 1 x 12 x 12 (seed 1, batch 16): the logits are off by about
    the size of the logits themselves (relative error ~1, recorded in the README), and every
    gradient below is wrong; with it, every tensor agrees to 1e-15.
    """
    spec = preset("mnist-cnn", n_in=256, input_shape=(1, 16, 16))
    net, right = keras_pair(spec)
    _, wrong = keras_pair(spec, permute_flatten_rows=False)
    x, y = make_batch(spec, 16, seed=2)
    mine = net.trace(x, y)
    compare(mine, right.trace(x, y), oracle="twin").assert_ok()
    broken = compare(mine, wrong.trace(x, y), oracle="twin")
    assert not broken.passed
    assert broken.first_divergence.name == "dense_1.out", broken.report()
    err = rel_error(mine["dense_1"].out, wrong.trace(x, y)["dense_1"].out)
    assert err > 0.1, err  # not a rounding matter: another function
    # The flatten itself is the same set of features in another order: its output agrees once reordered.
    assert next(row for row in broken.rows if row.name == "flatten_1.out").passed


def test_torch_flatten_needs_no_permutation():
    pytest.importorskip("torch")
    from oracles.torch_twin import TorchTwin

    spec = preset("mnist-cnn", n_in=256, input_shape=(1, 16, 16))
    net = Network(spec, seed=1)
    twin = TorchTwin(spec, net.get_params())
    np.testing.assert_array_equal(twin.named["dense_1.W"].detach().numpy(), net.params["dense_1.W"].T)
    x, y = make_batch(spec, 16, seed=2)
    compare(net.trace(x, y), twin.trace(x, y), oracle="twin").assert_ok()


def keras_conv(x_nchw: np.ndarray, W: np.ndarray, stride, padding) -> np.ndarray:
    """Keras Conv2D with padding="valid" or "same" on NCHW data and a canonical kernel."""
    keras = pytest.importorskip("keras")
    layer = keras.layers.Conv2D(W.shape[0], W.shape[2:], strides=stride, padding=padding, dtype="float64")
    layer.build((None, *x_nchw.shape[2:], x_nchw.shape[1]))
    layer.kernel.assign(W.transpose(2, 3, 1, 0))
    layer.bias.assign(np.zeros(W.shape[0]))
    return np.asarray(layer(x_nchw.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("kernel", "stride", "same_is_explicit"),
    [((3, 3), 1, True), ((5, 5), 1, True), ((3, 3), 2, False), ((2, 2), 1, False), ((4, 2), 1, False)],
    ids=["k3-s1", "k5-s1", "k3-s2", "k2-s1", "k4x2-s1"],
)
def test_keras_padding_same_is_explicit_zero_padding_only_for_odd_kernels_at_stride_1(kernel, stride, same_is_explicit):
    """'same' pads total = max((ceil(H/s) - 1) s + K - H, 0), the odd pixel at the bottom/right: for
    an odd kernel at stride 1 that is (K - 1) / 2 on each side, the reference's padding. Otherwise
    the output has another shape (even K) or is shifted by a pixel (stride 2 on an even input)."""
    rng = np.random.default_rng(0)
    x, W = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(4, 3, *kernel))
    pad = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    explicit, _ = conv.conv2d_forward(x, W, np.zeros(4), (stride, stride), pad)
    same = keras_conv(x, W, stride, "same")
    if same_is_explicit:
        assert same.shape == explicit.shape and rel_error(same, explicit) < 1e-14
    else:
        assert same.shape != explicit.shape or rel_error(same, explicit) > 0.1


# Max-pool ties ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("pool", "stride"), [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((2, 3), (1, 2))], ids=["p2-s2", "p3-s1", "p2x3-s1x2"]
)
def test_max_pool_ties_go_to_the_first_maximum_in_all_three(pool, stride, dtype):
    """Inputs from {0, 1, 2}: most windows tie. The reference routes each window's gradient to its
    first maximum in row-major order; torch's max_pool2d and TensorFlow's MaxPool gradient do the
    same (with overlapping windows the sums differ only by rounding, in another order)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(3, 2, 7, 8)).astype(dtype)
    out, first = conv.maxpool2d_forward(x, pool, stride)
    g = rng.normal(size=out.shape).astype(dtype)
    mine = conv.maxpool2d_backward(g, first, x.shape, pool, stride)
    # The rule itself, by hand, on one window: all of g to the first maximum in row-major order.
    window = x[:1, :1, : pool[0], : pool[1]]
    u, v = np.argwhere(window[0, 0] == window.max())[0]
    _, first_one = conv.maxpool2d_forward(window, pool, stride)
    routed = conv.maxpool2d_backward(np.ones((1, 1, 1, 1), dtype), first_one, window.shape, pool, stride)
    assert routed.sum() == 1 and routed[0, 0, u, v] == 1
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.max_pool2d(xt, pool, stride).backward(torch.from_numpy(g))
    x_nhwc = tf.constant(x.transpose(0, 2, 3, 1))
    with tf.GradientTape() as tape:
        tape.watch(x_nhwc)
        y = tf.nn.max_pool2d(x_nhwc, pool, stride, "VALID")
    d_tf = tape.gradient(y, x_nhwc, output_gradients=tf.constant(g.transpose(0, 2, 3, 1))).numpy()
    eps = np.finfo(dtype).eps
    for theirs in (xt.grad.numpy(), d_tf.transpose(0, 3, 1, 2)):
        assert np.abs(theirs - mine).max() <= 4 * eps * np.abs(g).sum(), "another element got the gradient"
        np.testing.assert_array_equal(theirs != 0, mine != 0)  # the same elements, exactly
    # Routing to every tied element (or splitting) would differ by a whole g somewhere:
    ties = int(sum((w == w.max()).sum() > 1 for w in conv.windows(x, pool, stride).reshape(-1, pool[0] * pool[1])))
    assert ties > 30  # of 72 (p2-s2), 150 (p2x3-s1x2), 180 (p3-s1) windows


# The CNN preset against finite differences ---------------------------------------------------------------


def test_cnn_preset_structure_matches_finite_differences():
    """mnist-cnn's layers at 1 x 12 x 12 with each max-pool before its ReLU: max(relu(x)) = relu(max(x)),
    so the same function, but one that finite differences can check (a window of ReLU zeros ties)."""
    layers = list(preset("mnist-cnn").layers)
    layers[1], layers[2] = layers[2], layers[1]
    layers[4], layers[5] = layers[5], layers[4]
    spec = preset("mnist-cnn", n_in=144, input_shape=(1, 12, 12), layers=tuple(layers))
    assert [ls.kind for ls in spec.layers][:6] == ["conv2d", "maxpool2d", "relu", "conv2d", "maxpool2d", "relu"]
    net = Network(spec, seed=1)
    same = Network(preset("mnist-cnn", n_in=144, input_shape=(1, 12, 12)), params=net.get_params())
    x, y = kink_free_batch(net, 2, seed=2)
    np.testing.assert_array_equal(net.forward(x), same.forward(x))
    check_numeric(net, x, y)


# Training: the twins' own epoch loops on images ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["cnn", "conv2d-dropout", "avgpool2d-p3x2-s1"])
@pytest.mark.parametrize("kind", ["torch", "keras"])
def test_twin_train_epoch_on_images_matches_the_reference(kind, case, dtype):
    """40 rows in batches of 8 with momentum: the twins' fast loops (keras: one compiled graph, the
    dropout masks in NHWC) against reference.train.train_epoch, parameters within the twin policy."""
    pytest.importorskip(kind if kind == "torch" else "keras")
    from oracles import make_twin
    from oracles.compare import compare_params
    from reference.optimizers import make_optimizer
    from reference.train import train_epoch

    spec = LAYER_CASES[case].replace(dtype=dtype, optimizer={"name": "momentum", "lr": 0.05, "momentum": 0.9})
    net = Network(spec, seed=1)
    twin = make_twin(kind, spec, net.get_params(), seed=1)
    x, y = make_batch(spec, 40, seed=4)
    order = np.random.default_rng(0).permutation(40)
    mine = train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 8)
    theirs = twin.train_epoch(x, y, order, 8)
    assert abs(mine - theirs) <= 1e-5 * abs(mine) if dtype == "float32" else abs(mine - theirs) <= 1e-12 * abs(mine)
    compare_params(net.get_params(), twin.get_params(), "twin", dtype).assert_ok()
