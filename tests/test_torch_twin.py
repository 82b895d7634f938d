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
from reference.spec import LayerSpec, ModelSpec  # noqa: E402
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
    assert float(fast._one) == 1.0  # the fast step's kept dL/dL: autograd never wrote to it
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["cnn", "batchnorm_torch", "tanh"])
def test_evaluate_in_inference_mode_is_no_grads_evaluation_bit_for_bit(case, dtype):
    """evaluate runs under torch.inference_mode: the loss, accuracy and every chunk's predictions of the
    same chunks under torch.no_grad, bit for bit (chunks of 7 and a short one, after a few steps)."""
    from reference.train import evaluate_chunks

    spec = LAYER_CASES[case].replace(dtype=dtype)
    _, twin = built(spec, seed=2)
    x, y = make_batch(spec, 40, seed=5)
    twin.train_epoch(x, y, np.random.default_rng(0).permutation(40), 8)
    got_classes, want_classes = [], []
    got = twin.evaluate(x, y, 7, predictions=got_classes)

    def predict(xb, yb):
        out = twin._forward(xb, train=False)[-1]
        want_classes.append(out.numpy().argmax(axis=1))
        return out.numpy(), float(twin.loss_fn(out, yb))

    with torch.no_grad():
        xt, yt = twin._inputs(x, y, "evaluate")
        want = evaluate_chunks(predict, xt, yt, spec.reduction, True, 7)
    assert got == want
    assert len(got_classes) == 6 and all(np.array_equal(a, b) for a, b in zip(got_classes, want_classes))
