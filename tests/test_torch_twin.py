"""What is particular to the torch twin: torch's layout, the torch behaviours it works around, and
its own settings. Its parity with the reference (every layer, loss and optimiser case, dropout,
batchnorm, the epoch loop, trajectories) is tested in tests/test_parity.py, with the keras twin's.

    nn.Linear.weight is W.T (the one transpose); trace() leaves no .grad behind
    F.binary_cross_entropy is another function near p = 1 (why the twin writes BCE out)
    nn.MultiMarginLoss is the multiclass hinge over C (the twin multiplies C back); nn.Dropout's p drops
    nn.LayerNorm's eps is the reference's; a cs231n batchnorm's running_var starts at zeros in the twin
    a keras-convention batchnorm: what torch matches, and the running variance it cannot
    keras' Adam is torch's Adam with a per-step eps, and measurably not without it
    threads: the twin's own count while it trains, the caller's restored after
    the defaults the twin reads from the reference are torch's own
    errors only the torch twin raises (masks for layers that are not dropout layers, order bounds)
    the fast step is the general step bit for bit (every step of three presets, every optimiser);
    where it must not run (dropout, batchnorm, L2, a registered hook) the general step does
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import DTYPES, LAYER_CASES, OPTIMIZER_CASES, make_batch  # noqa: E402
from helpers import mnist_for, reference_state  # noqa: E402

from oracles.compare import compare, compare_params, rel_error  # noqa: E402
from oracles.torch_twin import TorchTwin  # noqa: E402
from reference.errors import ShapeError  # noqa: E402
from reference.layers import BatchNorm, Dropout, LayerNorm  # noqa: E402
from reference.losses import make_loss  # noqa: E402
from reference.network import Network, init_params  # noqa: E402
from reference.optimizers import DEFAULTS, make_optimizer  # noqa: E402
from reference.spec import LayerSpec, ModelSpec, OptimizerSpec  # noqa: E402
from reference.train import train_step  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch on one thread (on 2 busy cores spinning threads made batch-128 steps 10-20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built(spec, seed: int = 0) -> tuple[Network, TorchTwin]:
    """A reference network and its torch twin holding the very same parameters."""
    net = Network(spec, seed=seed)
    return net, TorchTwin(spec, net.get_params(), seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_weight_is_w_transposed(dtype):
    """The one transpose: nn.Linear.weight (n_out, n_in) is the canonical W (n_in, n_out) transposed."""
    spec = LAYER_CASES["dense"].replace(dtype=dtype)
    params = {k: np.random.default_rng(7).normal(size=v.shape).astype(dtype) for k, v in init_params(spec).items()}
    twin = TorchTwin(spec, params)
    assert torch.equal(twin.modules[0].weight.detach(), torch.from_numpy(params["dense_1.W"].T.copy()))


def test_trace_leaves_no_gradients_behind():
    _, twin = built(LAYER_CASES["l2"])
    twin.trace(*make_batch(twin.spec, 7))
    assert all(p.grad is None for p in twin.named.values())


def test_torch_bce_differs_near_one_which_is_why_the_twin_writes_it_out():
    """F.binary_cross_entropy divides by max(p(1-p), 1e-12): 10x off at p = 1 - 1e-13 (module docstring)."""
    p = np.array([[1 - 1e-13]])
    t = np.array([[0.5]])
    _, grad = make_loss("bce", "sum").value_and_grad(p, t)
    pt = torch.from_numpy(p.copy()).requires_grad_(True)
    torch.nn.functional.binary_cross_entropy(pt, torch.from_numpy(t), reduction="sum").backward()
    assert rel_error(pt.grad.numpy(), grad) > 0.5


@pytest.mark.parametrize("n_classes", [3, 10])
def test_multi_margin_loss_is_the_hinge_divided_by_the_number_of_classes(n_classes):
    """nn.MultiMarginLoss(margin=1) = CS231n's svm_loss / C, value and gradient (the kink's 0 included);
    the twin's loss, which multiplies C back, is the reference's."""
    rng = np.random.default_rng(n_classes)
    scores, labels = rng.normal(0, 2, (8, n_classes)), rng.integers(0, n_classes, 8)
    scores[0, (labels[0] + 1) % n_classes] = scores[0, labels[0]] - 1  # a margin of exactly 0
    value, grad = make_loss("multiclass_hinge").value_and_grad(scores, labels)
    z = torch.from_numpy(scores.copy()).requires_grad_(True)
    loss = torch.nn.MultiMarginLoss(margin=1.0)(z, torch.from_numpy(labels))
    loss.backward()
    assert rel_error(loss.detach().numpy() * n_classes, value) < 1e-15  # measured: the ratio is C to 1 ulp
    assert rel_error(z.grad.numpy() * n_classes, grad) < 1e-15
    assert rel_error(loss.detach().numpy(), value) > 0.6  # used as it is, 1/C of the loss
    spec = ModelSpec(n_in=4, layers=(LayerSpec("dense", units=n_classes),), loss="multiclass_hinge")
    twin = TorchTwin(spec, Network(spec).get_params())
    z = torch.from_numpy(scores.copy()).requires_grad_(True)
    twin.loss_fn(z, torch.from_numpy(labels)).backward()
    assert rel_error(z.grad.numpy(), grad) < 1e-15


def test_torch_dropout_p_is_the_drop_probability_not_cs231ns_keep():
    """nn.Dropout(0.3) keeps 70 % of the units; CS231n's p = 0.3 (Dropout(keep=0.3)) keeps 30 %."""
    n = 200_000
    layer = torch.nn.Dropout(0.3)
    torch.manual_seed(0)
    kept_torch = float((layer(torch.ones(1, n)) != 0).double().mean())
    kept_keep = float((Dropout("dropout_1", None, np.random.default_rng(0), keep=0.3).draw_mask((1, n), float)).mean())
    sd = np.sqrt(0.21 / n)
    assert abs(kept_torch - 0.7) < 5 * sd and abs(kept_keep - 0.3) < 5 * sd


def test_cs231n_batchnorm_starts_from_a_zero_running_variance():
    """torch's BatchNorm1d starts running_var at ones; the twin fills CS231n's zeros (mytorch keeps ones)."""
    for convention, start in (("cs231n", 0.0), ("mytorch", 1.0), ("torch", 1.0)):
        _, twin = built(LAYER_CASES[f"batchnorm_{convention}"])
        assert np.all(twin.torch_state()["batchnorm_1.running_var"] == start), convention


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_keras_convention_what_torch_matches_and_what_not(dtype):
    spec = LAYER_CASES["batchnorm_keras"].replace(dtype=dtype)
    net, twin = built(spec)
    x, y = make_batch(spec, 7, seed=21)
    compare(net.trace(x, y), twin.trace(x, y)).assert_ok()  # training mode: outputs, gradients
    ref, tor = reference_state(net), twin.torch_state()
    mean, var = "batchnorm_1.running_mean", "batchnorm_1.running_var"
    compare_params({mean: tor[mean]}, {mean: ref[mean]}).assert_ok()
    # running_var: torch folds in the unbiased variance, keras the biased one; exactly that apart.
    n, m = 7, 1 - 0.99
    bn_input = net.forward_cached(x, train=False)[0][0].astype(np.float64)  # dense_1's output
    predicted = (1 - m) * 1.0 + m * bn_input.var(axis=0) * n / (n - 1)
    compare_params({var: tor[var]}, {var: predicted.astype(dtype)}).assert_ok()
    assert not compare_params({var: tor[var]}, {var: ref[var]}).passed
    with pytest.raises(NotImplementedError, match="unbiased"):
        twin.get_state()
    with pytest.raises(NotImplementedError, match="unbiased"):
        twin.forward(x)
    twin.set_state(ref)  # from statistics given to it, eval mode matches
    x, y = make_batch(spec, 7, seed=22)
    compare(net.trace(x, y, train=False), twin.trace(x, y, train=False)).assert_ok()


@pytest.mark.parametrize(
    ("reference_rule", "per_step_eps"),
    [("adam-torch", True), ("adam-keras", False)],
    ids=["keras-adam-is-not-torch-adam", "keras-adam-needs-the-per-step-eps"],
)
def test_keras_adam_in_torch_is_told_apart(reference_rule, per_step_eps):
    """The conventions differ measurably, so the parity suite's keras-convention match is not vacuous;
    and without eps_t = eps / sqrt(1 - b2^t) torch's Adam is not keras' (float64, 20 steps)."""
    model = LAYER_CASES["l2"]
    net = Network(model.replace(optimizer=OPTIMIZER_CASES[reference_rule]), seed=0)
    twin = TorchTwin(model.replace(optimizer=OPTIMIZER_CASES["adam-keras"]), net.get_params())
    if not per_step_eps:
        twin._keras_adam_eps = None  # torch's Adam with the constant eps 1e-7
    ref_opt = make_optimizer(net.spec.optimizer)
    for step in range(20):
        x, y = make_batch(net.spec, 7, seed=100 + step)
        train_step(net, ref_opt, x, y)
        twin.step(x, y)
    assert not compare_params(net.get_params(), twin.get_params()).passed


@pytest.mark.parametrize("threads", [1, 2])
def test_train_epoch_runs_on_the_twins_threads_and_restores_the_callers(threads):
    spec = LAYER_CASES["tanh"]
    net = Network(spec)
    twin = TorchTwin(spec, net.get_params(), threads=threads)
    x, y = make_batch(spec, 10)
    seen = []
    twin.train_epoch(x, y, np.arange(10), 5, on_step=lambda i, loss: seen.append(torch.get_num_threads()))
    assert seen == [threads, threads] and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="expected threads >= 1, got 0"):
        TorchTwin(spec, net.get_params(), threads=0)


def test_the_defaults_the_twin_reads_are_torchs_own():
    """The twin reads reference.optimizers.DEFAULTS and BatchNorm.DEFAULTS instead of copies of its
    own; torch's convention there must be torch.optim's and torch.nn's defaults."""

    def default(f, name):
        return inspect.signature(f).parameters[name].default

    rms, adam, bn = torch.optim.RMSprop.__init__, torch.optim.Adam.__init__, torch.nn.BatchNorm1d.__init__
    assert (default(rms, "alpha"), default(rms, "eps"), default(adam, "eps")) == (
        DEFAULTS["torch"]["rho"],
        DEFAULTS["torch"]["eps"],
        DEFAULTS["torch"]["eps"],
    )
    assert (default(bn, "momentum"), default(bn, "eps")) == BatchNorm.DEFAULTS["torch"]
    assert default(torch.nn.LayerNorm.__init__, "eps") == LayerNorm.EPS


def test_a_mask_for_a_layer_that_is_not_dropout_is_an_error():
    """A mask for a layer that is not a dropout layer is an error, as in Network (keras ignores it)."""
    spec = LAYER_CASES["dropout"]
    _, twin = built(spec)
    x, y = make_batch(spec, 7)
    with pytest.raises(ShapeError, match="dropout layers"):
        twin.trace(x, y, masks={"tanh_1": np.ones((7, 5))})


# The fast step (TorchTwin._fast_step) against the general one (twin.fast = False) ----------------


def every_step(twin: TorchTwin, x, y, order, batch_size: int, steps: int) -> list:
    """(loss, parameters) after each step: train_epoch over all but the last `steps` batches of
    order, then step() over those (the divergence runs' call)."""
    seen = []
    head = len(order) - steps * batch_size
    twin.train_epoch(x, y, order[:head], batch_size, on_step=lambda i, loss: seen.append((loss, twin.get_params())))
    for b in range(head, len(order), batch_size):
        idx = order[b : b + batch_size]
        seen.append((twin.step(x[idx], y[idx]), twin.get_params()))
    return seen


def assert_fast_is_general_bit_for_bit(spec, x, y, order, batch_size: int, steps: int = 5) -> None:
    params = init_params(spec, 0)
    fast, general = TorchTwin(spec, params), TorchTwin(spec, params)
    general.fast = False
    assert fast._fast_step_parts() is not None and general._fast_step_parts() is None
    mine, theirs = every_step(fast, x, y, order, batch_size, steps), every_step(general, x, y, order, batch_size, steps)
    assert len(mine) == len(theirs) == -(-len(order) // batch_size)
    for i, ((loss_f, p_f), (loss_g, p_g)) in enumerate(zip(mine, theirs)):
        assert loss_f == loss_g, f"step {i}: loss, fast {loss_f!r} vs general {loss_g!r}"
        for k in p_g:
            same = np.array_equal(p_f[k], p_g[k])
            assert same, f"step {i}: {k}, max |fast - general| {np.abs(p_f[k] - p_g[k]).max()}"
    n = len(order)
    epoch_f, epoch_g = TorchTwin(spec, params), TorchTwin(spec, params)
    epoch_g.fast = False
    assert epoch_f.train_epoch(x, y, order, batch_size) == epoch_g.train_epoch(x, y, order, batch_size), n
    assert all(np.array_equal(a, b) for a, b in zip(epoch_f.get_params().values(), epoch_g.get_params().values()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "steps"), [("mnist-sigmoid-per-sample", 300), ("mnist-relu-deep", 40), ("mnist-cnn", 12)]
)
def test_fast_step_is_the_general_step_bit_for_bit_on_a_preset(mnist, name, steps, dtype):
    """Every step's loss and every parameter after it, over the first `steps` batches of real MNIST
    in the preset's order; then whole epochs without on_step (the jobs' call)."""
    from reference.spec import preset

    spec = preset(name, dtype=dtype)
    x, y, order = mnist_for(mnist, spec, steps * spec.batch_size)
    if spec.input_shape is not None:
        x = x.reshape(-1, *spec.input_shape)
    assert_fast_is_general_bit_for_bit(spec, x, y, order, spec.batch_size)


def torch_builds(opt: str) -> bool:
    spec = LAYER_CASES["tanh"].replace(optimizer=OPTIMIZER_CASES[opt])
    try:
        TorchTwin(spec, init_params(spec, 0))
    except NotImplementedError:  # no torch.optim form; the twin says why (tests/test_parity.py)
        return False
    return True


@pytest.mark.parametrize("opt", [opt for opt in sorted(OPTIMIZER_CASES) if torch_builds(opt)])
def test_fast_step_is_the_general_step_bit_for_bit_with_every_optimizer(opt):
    """torch.optim's step without its profiler wrapper is the same step for every optimiser the twin
    builds (keras-convention Adam's per-step eps included); 7 batches of 5 and a short one."""
    spec = LAYER_CASES["tanh"].replace(optimizer=OPTIMIZER_CASES[opt], dtype="float64")
    x, y = make_batch(spec, 38)
    assert_fast_is_general_bit_for_bit(spec, x, y, np.random.default_rng(1).permutation(38), 5, steps=3)


@pytest.mark.parametrize("case", ["dropout", "batchnorm_torch", "l2"])
def test_the_general_step_runs_where_the_fast_one_would_skip_something(case):
    """A dropout's mask, a batchnorm's mode and statistics, an L2 term: only the general step."""
    _, twin = built(LAYER_CASES[case])
    assert twin._fast_step_parts() is None


def test_a_hook_turns_the_fast_step_off_and_is_run():
    """The fast step skips Module.__call__ and the optimizer's step wrapper, so a registered hook
    (on a module, every module, or the optimizer) sends the steps through the general path."""
    spec = LAYER_CASES["tanh"]
    _, twin = built(spec)
    x, y = make_batch(spec, 10)
    calls = []
    for register in (
        lambda: twin.modules[1].register_forward_hook(lambda *a: calls.append("module")),
        lambda: torch.nn.modules.module.register_module_forward_hook(lambda *a: calls.append("global")),
        lambda: twin.optimizer.register_step_post_hook(lambda *a: calls.append("optimizer")),
    ):
        handle = register()
        try:
            assert twin._fast_step_parts() is None
            twin.train_epoch(x, y, np.arange(10), 5)
            twin.step(x[:5], y[:5])
        finally:
            handle.remove()
        assert twin._fast_step_parts() is not None
    assert calls == ["module"] * 3 + ["global"] * (3 * len(twin.modules)) + ["optimizer"] * 3


def relu_pool_spec(pool: tuple[int, int], stride: int | None, dtype: str = "float64") -> ModelSpec:
    """conv 3x3 (padding 1) -> ReLU -> max-pool -> flatten -> dense 3 on (2, 7, 6) images."""
    layers = (
        LayerSpec("conv2d", filters=3, kernel=(3, 3), padding=1),
        LayerSpec("relu"),
        LayerSpec("maxpool2d", pool=pool, stride=stride),
        LayerSpec("flatten"),
        LayerSpec("dense", units=3),
    )
    opt = OptimizerSpec("momentum", lr=0.05, momentum=0.9)
    return ModelSpec(n_in=84, input_shape=(2, 7, 6), layers=layers, init="glorot_uniform", optimizer=opt, dtype=dtype)


def tied_batch(spec: ModelSpec, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Inputs in {-1, 0, 1} and parameters on a grid of 1/8: the conv's outputs are exact, and many of a
    window's values are equal (zero-input patches give the bias itself; negative ones give ReLU zeros)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, size=(n, *spec.sample_shape)).astype(spec.dtype)
    x[:, :, :3] = 0  # a blank band: every window there is a tie of the conv's bias
    params = {k: (np.round(v * 8) / 8).astype(spec.dtype) for k, v in init_params(spec, 0).items()}
    params["conv2d_1.b"] = np.array([0.25, -0.125, 0.0], spec.dtype)  # positive, negative and zero ties
    return x, rng.integers(0, 3, n), params


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_step_pools_before_the_relu_where_the_windows_tile_and_is_bit_for_bit_with_ties(dtype):
    """The fast step runs a ReLU directly followed by a tiling max-pool as max-pool, then ReLU (the CNN
    preset's two pairs); on inputs full of tied maxima (positive, zero and negative ties: each checked
    present) every step's loss and parameters are the general step's (layer order) bit for bit."""
    spec = relu_pool_spec((2, 2), None, dtype)
    x, y, params = tied_batch(spec, 48)
    twin = TorchTwin(spec, params)
    assert twin._fast_order() == [0, 2, 1, 3, 4]
    with torch.no_grad():
        conv = twin.modules[0](torch.from_numpy(x)).numpy()[:, :, :6, :6]  # the pooled part of each map
    windows = conv.reshape(48, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top = windows.max(axis=1)
    tied = (windows == top[:, None]).sum(axis=1) > 1
    assert tied[top > 0].sum() > 50 and tied[top == 0].sum() > 50 and tied[top < 0].sum() > 50, "no ties to test"
    order = np.random.default_rng(4).permutation(48)
    for p in (params, init_params(spec, 1)):  # the tie-heavy start, and a generic one
        fast, general = TorchTwin(spec, p), TorchTwin(spec, p)
        general.fast = False
        mine, theirs = every_step(fast, x, y, order, 4, 4), every_step(general, x, y, order, 4, 4)
        for i, ((loss_f, p_f), (loss_g, p_g)) in enumerate(zip(mine, theirs)):
            assert loss_f == loss_g, f"step {i}: loss, fast {loss_f!r} vs general {loss_g!r}"
            for k in p_g:
                assert np.array_equal(p_f[k], p_g[k]), f"step {i}: {k}, max |diff| {np.abs(p_f[k] - p_g[k]).max()}"
        assert float(fast._one) == 1.0  # the kept dL/dL, never written by autograd


@pytest.mark.parametrize(("pool", "stride"), [((2, 2), 1), ((3, 2), 2)])
def test_fast_step_keeps_the_layer_order_where_pool_windows_overlap(pool, stride):
    """Where windows overlap (stride < pool) the fast step keeps the layers' order, as the reference's
    training_order does (its proof is for tiling pools, and the pooled tensor is hardly smaller), and is
    still the general step bit for bit."""
    spec = relu_pool_spec(pool, stride)
    twin = TorchTwin(spec, init_params(spec, 0))
    assert twin._fast_order() == [0, 1, 2, 3, 4]
    x, y, _ = tied_batch(spec, 24)
    assert_fast_is_general_bit_for_bit(spec, x, y, np.arange(24), 4, steps=2)


def test_the_cnn_preset_pools_before_each_relu_in_the_fast_step():
    from reference.spec import preset

    spec = preset("mnist-cnn")
    twin = TorchTwin(spec, init_params(spec, 0))
    assert [type(twin.modules[k]).__name__ for k in twin._fast_order()] == [
        "Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Linear"
    ]  # fmt: skip
