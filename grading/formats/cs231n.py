"""CS231n assignment 2 (`cs231n-a2`): the course's modular layer functions, update rules and FullyConnectedNet.

    affine_forward(x, w, b) -> (out, cache)          x (N, d1..dk) flattened to (N, D); w (D, M); b (M,)
    affine_backward(dout, cache) -> (dx, dw, db)     dx shaped like x
    relu_forward(x) / relu_backward(dout, cache)
    softmax_loss(x, y) / svm_loss(x, y) -> (loss, dx)     means over N; svm: multiclass hinge, margin 1
    batchnorm_forward(x, gamma, beta, bn_param)      bn_param: mode, eps, momentum; running_mean and
                                                     running_var updated IN bn_param (from zeros,
                                                     running = momentum * running + (1 - momentum) * batch,
                                                     biased variance); test mode uses them
    batchnorm_backward / batchnorm_backward_alt (dout, cache) -> (dx, dgamma, dbeta)
    layernorm_forward(x, gamma, beta, ln_param) / layernorm_backward
    dropout_forward(x, dropout_param) / dropout_backward   p is the KEEP probability, inverted dropout,
                                                     mask: np.random.seed(seed); np.random.rand(*x.shape) < p
    conv_forward_naive(x, w, b, conv_param) / conv_backward_naive      stride and pad in conv_param
    max_pool_forward_naive(x, pool_param) / max_pool_backward_naive    pool_height, pool_width, stride
    sgd / sgd_momentum / rmsprop / adam (w, dw, config) -> (next_w, config)   state in config; Adam's
                                                     t incremented before use
    FullyConnectedNet(hidden_dims, input_dim, num_classes, dropout_keep_ratio, normalization, reg,
                      weight_scale, dtype, seed): params W1, b1, gamma1, beta1, ...;
                      loss(X) -> scores, loss(X, y) -> (loss, grads); L2 0.5 reg sum(W**2) over weights

Every function is probed on inputs of its own (drawn here, never the reference chain's), and the
expected values come from the reference on those inputs, in this process only: Dense (affine), ReLU,
SoftmaxCrossEntropy, MulticlassHinge (svm), BatchNorm (CS231n's running-statistics convention),
LayerNorm, Dropout with a keep probability and the course's mask, Conv2D and MaxPool2D (stride, pad),
and the optimisers SGD, Momentum (keras' form v = mu v - lr g, w += v: CS231n's), RMSProp (torch's:
eps outside the root) and Adam (torch's: bias-corrected, eps outside the root, t before use). A
backward is always called on its own forward's cache, inside the child (cs231n_driver.py).

Cases (each function on the kinds that matter to it):
    small       every function; affine's x has two trailing dims; float32 too where the part asks
    square      N = D = M (a sum over the wrong axis has the right shape there), a square net
    batch1      N = 1 (no batchnorm: one sample has no batch variance)
    stride2     conv stride 2 pad 1 and a 3x2 pool at stride 2, on non-square images (H != W)
    pad0        conv stride 1 pad 0 with a 2x3 kernel; a 2x2 pool at stride 1 (overlapping windows)
    settings    batchnorm with momentum 0.8 and eps 1e-3 (read from bn_param, not hard-coded)
    test        dropout in test mode
    state       the update rules from a given state (velocity, cache, m, v, t = 5) and other settings
    reg, batchnorm, layernorm, dropout    the net with reg > 0, each normalisation, dropout (seeded)
    stability   softmax_loss and svm_loss at logits of +-1e3, the label on the smallest
Each known CS231n bug is a hypothesis (Expected.alternatives), computed here on the same inputs and
shown only when the student's tensor matches it (grading.diagnose.diagnose_alternatives).

Checks and their tensors (Key.tensor "<function>.<output>"): affine (out, dx, dw, db), relu (out, dx),
losses (softmax_loss and svm_loss: loss, dx), batchnorm (out, running_mean and running_var after each
of three training calls, out in test mode; both backwards' dx, dgamma, dbeta), layernorm, dropout,
conv (out, dx, dw, db), pool (out, dx), update_rules (next_w after each of four steps), fc_net_loss
(FullyConnectedNet.scores and .loss), fc_net_grads (FullyConnectedNet.grads[W1] ...), stability (the
losses at +-1e3). A submission is one .py / .ipynb, or the course's folder (`assemble`, below).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from grading import pyast
from grading.adapters import Expected, Key, Problem
from grading.adapters import observe as observe_records
from grading.diagnose import generic_alternatives
from grading.formats import FormatCase
from reference import conv as rconv
from reference.layers import BatchNorm, Conv2D, Dense, Dropout, LayerNorm, MaxPool2D, ReLU, cs231n_dropout_mask
from reference.losses import MulticlassHinge, SoftmaxCrossEntropy
from reference.optimizers import SGD, Adam, Momentum, RMSProp
from reference.spec import OptimizerSpec

NAME = "cs231n"
TITLE = (
    "CS231n assignment 2: layers.py (affine, relu, losses, batch/layer norm, dropout, conv, pool), optim.py, fc_net.py"
)
DRIVER = Path(__file__).with_name("cs231n_driver.py")

FUNCTIONS = (
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "softmax_loss",
    "svm_loss",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
    "dropout_forward",
    "dropout_backward",
    "conv_forward_naive",
    "conv_backward_naive",
    "max_pool_forward_naive",
    "max_pool_backward_naive",
    "sgd",
    "sgd_momentum",
    "rmsprop",
    "adam",
    "FullyConnectedNet",
)
NAMES = {f: f for f in FUNCTIONS}

# check -> the API names it calls (what the extraction keeps; what a part without the check skips)
USES: dict[str, tuple[str, ...]] = {
    "affine": ("affine_forward", "affine_backward"),
    "relu": ("relu_forward", "relu_backward"),
    "losses": ("softmax_loss", "svm_loss"),
    "batchnorm": ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt"),
    "layernorm": ("layernorm_forward", "layernorm_backward"),
    "dropout": ("dropout_forward", "dropout_backward"),
    "conv": ("conv_forward_naive", "conv_backward_naive"),
    "pool": ("max_pool_forward_naive", "max_pool_backward_naive"),
    "update_rules": ("sgd", "sgd_momentum", "rmsprop", "adam"),
    "fc_net_loss": ("FullyConnectedNet",),
    "fc_net_grads": ("FullyConnectedNet",),
    "stability": ("softmax_loss", "svm_loss"),
}
CHECKS = tuple(USES)

BN_EPS, BN_MOMENTUM = 1e-5, 0.9  # CS231n's bn_param defaults
STABILITY_LOGIT = 1e3


def parse_options(raw: dict, where: str, source: str) -> dict:
    """The format has no fields of its own: its shapes and settings are the course's (the module doc)."""
    from grading.assignment import AssignmentError

    if raw:
        raise AssignmentError(
            f"{source}: {where}: unknown field(s) {sorted(raw)} for the cs231n format "
            "(known: id, format, names, checks, limits, dtypes)"
        )
    return {}


def needed_names(part) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.names[f] for c in part.check_names for f in USES[c]))


# Planning ---------------------------------------------------------------------------------------


class _Plan:
    """Adds one call's item and its expected tensors to a case (where each is read back: case.notes)."""

    def __init__(self, part, case: FormatCase):
        self.part, self.case = part, case
        case.notes.setdefault("where", [])

    def item(self, label: str, driver: str, common: dict, item: dict) -> int:
        entry = self.case.probes.setdefault(label, (driver, common, []))
        entry[2].append(item)
        return len(entry[2]) - 1

    def expect(self, check, label, index, output, value, quantity, alternatives=(), tensor=None) -> None:
        value = np.asarray(value)
        key = Key(check, label, tensor or f"{label}.{output}", None, output)
        alts = tuple((b, t, np.asarray(v)) for b, t, v in alternatives)
        self.case.expected.append(Expected(key, value, None, quantity, alternatives=alts))
        self.case.notes["where"].append((label, index, output))


def _n(part, f: str) -> str:
    return part.names[f]


def _generic(value: np.ndarray, batch: int | None = None) -> list:
    """The layout-free hypotheses (sign, transpose, a batch factor), as for every format."""
    return generic_alternatives(np.asarray(value), batch)


def _normal(rng, shape, dtype, loc=0.0, scale=1.0) -> np.ndarray:
    return rng.normal(loc, scale, shape).astype(dtype)


def _away(rng, shape, dtype) -> np.ndarray:
    """Inputs 0.1 away from relu's kink (and from max-pool ties)."""
    v = rng.normal(0.0, 1.0, shape)
    return (np.sign(v) * np.maximum(np.abs(v), 0.1)).astype(dtype)


# Affine, relu -----------------------------------------------------------------------------------

AFFINE = {"small": ((4, 2, 3), 5), "square": ((5, 5), 5), "batch1": ((1, 4), 3)}


def _plan_affine(p: _Plan, kind, dtype, rng):
    if kind not in AFFINE:
        return
    xshape, M = AFFINE[kind]
    N, D = xshape[0], int(np.prod(xshape[1:]))
    fwd, bwd = _n(p.part, "affine_forward"), _n(p.part, "affine_backward")
    x, w, b = _normal(rng, xshape, dtype), _normal(rng, (D, M), dtype, scale=D**-0.5), _normal(rng, M, dtype)
    out, _ = Dense("affine", w, b).forward(x.reshape(N, D))
    i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x, w, b]})
    missing_b = [("missing_bias", "the bias is not added: out = x @ w", x.reshape(N, D) @ w)]
    p.expect("affine", fwd, i, "out", out, "forward", _generic(out, N) + missing_b)
    xb, wb, bb = _normal(rng, xshape, dtype), _normal(rng, (D, M), dtype, scale=D**-0.5), _normal(rng, M, dtype)
    g = _normal(rng, (N, M), dtype)
    dx, grads = Dense("affine", wb, bb).backward(g, xb.reshape(N, D))
    outputs = ["dx", "dw", "db"]
    i = p.item(
        bwd, "backward_call", {"forward": fwd, "backward": bwd, "outputs": outputs}, {"args": [xb, wb, bb], "dout": g}
    )
    dx = dx.reshape(xshape)
    dx_alts = _generic(dx, N)
    if D == M:
        dx_alts.append(("transpose", "dout @ w where dout @ w.T belongs", (g @ wb).reshape(xshape)))
    p.expect("affine", bwd, i, "dx", dx, "gradient", dx_alts)
    p.expect("affine", bwd, i, "dw", grads["W"], "gradient", _generic(grads["W"], N))
    db_alts = [
        *_generic(grads["b"], N),
        (
            "wrong_axis",
            "summed over the wrong axis: dout.sum(axis=1) where the bias gradient sums over the batch, axis 0",
            g.sum(axis=1),
        ),
        ("not_summed", f"kept per sample, shape {g.shape}: sum dout over the batch (axis 0)", g),
    ]
    p.expect("affine", bwd, i, "db", grads["b"], "gradient", db_alts)


RELU = {"small": (4, 6), "batch1": (1, 5)}


def _plan_relu(p: _Plan, kind, dtype, rng):
    if kind not in RELU:
        return
    shape = RELU[kind]
    fwd, bwd = _n(p.part, "relu_forward"), _n(p.part, "relu_backward")
    x = _away(rng, shape, dtype)
    out, _ = ReLU("relu").forward(x)
    i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x]})
    p.expect("relu", fwd, i, "out", out, "forward", [("activation_not_applied", "relu is not applied: out = x", x)])
    xb, g = _away(rng, shape, dtype), _normal(rng, shape, dtype)
    dx, _ = ReLU("relu").backward(g, xb)
    i = p.item(bwd, "backward_call", {"forward": fwd, "backward": bwd, "outputs": ["dx"]}, {"args": [xb], "dout": g})
    alts = [
        ("missing_derivative", "relu's derivative is missing: dx = dout", g),
        ("wrong_mask", "masked by dout's sign instead of x's: dx = dout * (dout > 0)", g * (g > 0)),
    ]
    p.expect("relu", bwd, i, "dx", dx, "gradient", _generic(dx) + alts)


# Losses -----------------------------------------------------------------------------------------

LOSSES = {"small": (4, 5), "square": (5, 5), "batch1": (1, 4), "stability": (4, 5)}


def _logits(rng, N, C, dtype, stable):
    z = rng.normal(0.0, 2.0, (N, C))
    y = rng.integers(0, C, N)
    if stable:
        z = z * (STABILITY_LOGIT / np.abs(z).max())
        y = np.argmin(z, axis=1)
    return z.astype(dtype), y.astype(np.int64)


def _plan_losses(p: _Plan, kind, dtype, rng):
    if kind not in LOSSES or (kind == "stability") != ("stability" in p.case.kind):
        return
    N, C = LOSSES[kind]
    check = "losses"
    sm, svm = _n(p.part, "softmax_loss"), _n(p.part, "svm_loss")
    x, y = _logits(rng, N, C, dtype, kind == "stability")
    loss, dx = SoftmaxCrossEntropy("mean").value_and_grad(x, y)
    i = p.item(sm, "loss_call", {"name": sm}, {"x": x, "y": y})
    onehot = np.eye(C, dtype=dtype)[y]
    p.expect(check, sm, i, "loss", loss, "loss", _generic(loss, N))
    dx_alts = [
        *_generic(dx, N),
        ("missing_label_term", "the -1 at the label is missing: dx = softmax(x) / N", dx + onehot / N),
    ]
    p.expect(check, sm, i, "dx", dx, "gradient", dx_alts)
    x, y = _logits(rng, N, C, dtype, kind == "stability")
    loss, dx = MulticlassHinge("mean").value_and_grad(x, y)
    i = p.item(svm, "loss_call", {"name": svm}, {"x": x, "y": y})
    own = [("own_margin", "the correct class's own margin (always 1) is counted: the loss is 1 too large", loss + 1)]
    p.expect(check, svm, i, "loss", loss, "loss", _generic(loss, N) + own)
    p.expect(check, svm, i, "dx", dx, "gradient", _generic(dx, N))


# Batchnorm --------------------------------------------------------------------------------------

BATCHNORM = {"small": (6, 4, BN_MOMENTUM, BN_EPS), "square": (5, 5, BN_MOMENTUM, BN_EPS), "settings": (4, 3, 0.8, 1e-3)}
BN_CALLS = 3


def _batchnorm(D, dtype, gamma, beta, momentum, eps, convention="cs231n", var0=0.0):
    """The reference BatchNorm; CS231n's convention: running = m running + (1 - m) batch, the biased
    variance, both running statistics from zeros (var0: a hypothesis's other starting variance)."""
    bn = BatchNorm("batchnorm", D, dtype, convention=convention, momentum=momentum, eps=eps)
    bn.params["gamma"][...] = gamma
    bn.params["beta"][...] = beta
    bn.state["running_var"][...] = var0  # the conventions' own start (cs231n's is 0); a hypothesis may differ
    return bn


def _plan_batchnorm(p: _Plan, kind, dtype, rng):
    if kind not in BATCHNORM:
        return
    N, D, mom, eps = BATCHNORM[kind]
    fwd = _n(p.part, "batchnorm_forward")
    gamma, beta = rng.uniform(0.5, 1.5, D).astype(dtype), _normal(rng, D, dtype)
    xs = [_normal(rng, (N, D), dtype, loc=rng.uniform(-2, 2, D), scale=rng.uniform(0.5, 2, D)) for _ in range(BN_CALLS)]
    test_x = _normal(rng, (N, D), dtype, loc=1.0, scale=1.5)
    bn_param = {"mode": "train", "eps": eps, "momentum": mom}
    i = p.item(
        fwd,
        "batchnorm_sequence",
        {"name": fwd},
        {"xs": xs, "gamma": gamma, "beta": beta, "bn_param": bn_param, "test_x": test_x},
    )
    ref = _batchnorm(D, dtype, gamma, beta, mom, eps)
    # the running statistics under each known bug, from the same calls (reference BatchNorm variants)
    variants = {
        "momentum_side": (
            f"the running-statistics momentum is on the wrong side: running = {1 - mom:g} * running + {mom:g} * batch",
            _batchnorm(D, dtype, gamma, beta, 1 - mom, eps),
        ),
        "unbiased_variance": (
            "the running variance is updated with the unbiased batch variance (N - 1 divisor, torch's); CS231n keeps the biased one",
            _batchnorm(D, dtype, gamma, beta, 1 - mom, eps, convention="torch"),
        ),
        "running_var_from_ones": (
            "the running variance starts at ones (torch's initial value); CS231n's starts at zeros",
            _batchnorm(D, dtype, gamma, beta, mom, eps, var0=1.0),
        ),
    }
    if mom != BN_MOMENTUM:
        variants["ignores_bn_param"] = (
            f"bn_param's momentum ({mom:g}) is not read: CS231n's default {BN_MOMENTUM:g} is used instead",
            _batchnorm(D, dtype, gamma, beta, BN_MOMENTUM, eps),
        )
    for k, x in enumerate(xs, start=1):
        out, (_, x_hat, var) = ref.forward(x, train=True)
        mu = x.mean(axis=0)
        alts = [
            *_generic(out, N),
            (
                "unbiased_variance",
                "normalised with the unbiased batch variance (N - 1 divisor); CS231n's is biased",
                gamma * (x - mu) / np.sqrt(var * N / (N - 1) + eps) + beta,
            ),
            (
                "eps_outside_sqrt",
                "eps added outside the square root: (x - mu) / (sqrt(var) + eps)",
                gamma * (x - mu) / (np.sqrt(var) + eps) + beta,
            ),
            ("affine_not_applied", "gamma and beta are not applied: out = x_hat", x_hat),
        ]
        if eps != BN_EPS:
            text = f"bn_param's eps ({eps:g}) is not read: CS231n's default {BN_EPS:g} is used instead"
            alts.append(("ignores_bn_param", text, gamma * (x - mu) / np.sqrt(var + BN_EPS) + beta))
        p.expect("batchnorm", fwd, i, f"out (call {k})", out, "forward", alts)
        stats = {}
        for bug, (text, layer) in variants.items():
            layer.forward(x, train=True)
            stats[bug] = (text, layer.state["running_mean"].copy(), layer.state["running_var"].copy())
        for which in ("running_mean", "running_var"):
            alts = [(bug, text, m if which == "running_mean" else v) for bug, (text, m, v) in stats.items()]
            p.expect("batchnorm", fwd, i, f"{which} (call {k})", ref.state[which].copy(), "forward", alts)
    out, _ = ref.forward(test_x, train=False)
    batch_stats, _ = _batchnorm(D, dtype, gamma, beta, mom, eps).forward(test_x, train=True)
    alts = [
        (
            "test_uses_batch",
            "test mode normalised with the batch's own statistics instead of the running ones",
            batch_stats,
        )
    ]
    for bug, (text, layer) in variants.items():
        alts.append(
            (
                bug,
                f"test mode with running statistics from a wrong update ({text})",
                layer.forward(test_x, train=False)[0],
            )
        )
    p.expect("batchnorm", fwd, i, "out (test mode)", out, "forward", alts)
    # backward and backward_alt: a training-mode forward of their own, then the backward on its cache
    x = _normal(rng, (N, D), dtype, loc=0.5, scale=1.5)
    g = _normal(rng, (N, D), dtype)
    layer = _batchnorm(D, dtype, gamma, beta, mom, eps)
    _, cache = layer.forward(x, train=True)
    dx, grads = layer.backward(g, cache)
    _, x_hat, var = cache
    s = gamma / np.sqrt(var + eps)
    dx_alts = [
        *_generic(dx, N),
        (
            "no_mean_var_terms",
            "the mean and variance terms are missing: dx = dout * gamma / sqrt(var + eps), as if mu and var were constants",
            g * s,
        ),
        (
            "no_var_term",
            "the variance term is missing: dx = gamma / sigma * (dout - mean(dout))",
            s * (g - g.mean(axis=0)),
        ),
        (
            "no_mean_term",
            "the mean term is missing: dx = gamma / sigma * (dout - x_hat * mean(dout * x_hat))",
            s * (g - x_hat * (g * x_hat).mean(axis=0)),
        ),
    ]
    for name in ("batchnorm_backward", "batchnorm_backward_alt"):
        bwd = _n(p.part, name)
        common = {"forward": fwd, "backward": bwd, "outputs": ["dx", "dgamma", "dbeta"]}
        j = p.item(
            bwd,
            "backward_call",
            common,
            {"args": [x, gamma, beta, {"mode": "train", "eps": eps, "momentum": mom}], "dout": g},
        )
        p.expect("batchnorm", bwd, j, "dx", dx, "gradient", dx_alts)
        dgamma_alts = [
            *_generic(grads["gamma"], N),
            ("x_not_normalised", "dgamma = sum(dout * x) where sum(dout * x_hat) belongs", (g * x).sum(axis=0)),
            ("wrong_axis", "summed over the wrong axis (axis 1)", (g * x_hat).sum(axis=1)),
        ]
        p.expect("batchnorm", bwd, j, "dgamma", grads["gamma"], "gradient", dgamma_alts)
        dbeta_alts = [*_generic(grads["beta"], N), ("wrong_axis", "summed over the wrong axis (axis 1)", g.sum(axis=1))]
        p.expect("batchnorm", bwd, j, "dbeta", grads["beta"], "gradient", dbeta_alts)


# Layernorm --------------------------------------------------------------------------------------

LAYERNORM = {"small": (4, 6), "square": (5, 5), "batch1": (1, 6)}


def _layernorm(D, dtype, gamma, beta):
    ln = LayerNorm("layernorm", D, dtype, eps=BN_EPS)
    ln.params["gamma"][...] = gamma
    ln.params["beta"][...] = beta
    return ln


def _plan_layernorm(p: _Plan, kind, dtype, rng):
    if kind not in LAYERNORM:
        return
    N, D = LAYERNORM[kind]
    fwd, bwd = _n(p.part, "layernorm_forward"), _n(p.part, "layernorm_backward")
    gamma, beta = rng.uniform(0.5, 1.5, D).astype(dtype), _normal(rng, D, dtype)
    x = _normal(rng, (N, D), dtype, loc=rng.uniform(-2, 2, (N, 1)), scale=rng.uniform(0.5, 2, (N, 1)))
    out, _ = _layernorm(D, dtype, gamma, beta).forward(x)
    i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x, gamma, beta, {"eps": BN_EPS}]})
    alts = _generic(out, N)
    if N > 1:
        over_batch, _ = _batchnorm(D, dtype, gamma, beta, BN_MOMENTUM, BN_EPS).forward(x, train=True)
        alts.append(
            (
                "batch_axis",
                "normalised over the batch axis (axis 0, batchnorm's) instead of each sample's features (axis 1)",
                over_batch,
            )
        )
    p.expect("layernorm", fwd, i, "out", out, "forward", alts)
    x = _normal(rng, (N, D), dtype, loc=rng.uniform(-2, 2, (N, 1)), scale=rng.uniform(0.5, 2, (N, 1)))
    g = _normal(rng, (N, D), dtype)
    ln = _layernorm(D, dtype, gamma, beta)
    out, cache = ln.forward(x)
    dx, grads = ln.backward(g, cache)
    x_hat = (out - beta) / gamma
    common = {"forward": fwd, "backward": bwd, "outputs": ["dx", "dgamma", "dbeta"]}
    j = p.item(bwd, "backward_call", common, {"args": [x, gamma, beta, {"eps": BN_EPS}], "dout": g})
    dx_alts = _generic(dx, N)
    if N > 1:
        bn = _batchnorm(D, dtype, gamma, beta, BN_MOMENTUM, BN_EPS)
        bdx, _ = bn.backward(g, bn.forward(x, train=True)[1])
        dx_alts.append(
            (
                "batch_axis",
                "backpropagated over the batch axis (batchnorm's backward) instead of each sample's features",
                bdx,
            )
        )
    sigma = np.sqrt(x.var(axis=1, keepdims=True) + BN_EPS)
    dx_alts.append(
        ("no_mean_var_terms", "the mean and variance terms are missing: dx = dout * gamma / sigma", g * gamma / sigma)
    )
    p.expect("layernorm", bwd, j, "dx", dx, "gradient", dx_alts)
    p.expect(
        "layernorm",
        bwd,
        j,
        "dgamma",
        grads["gamma"],
        "gradient",
        [
            *_generic(grads["gamma"], N),
            ("wrong_axis", "summed over the features (axis 1) instead of the batch", (g * x_hat).sum(axis=1)),
        ],
    )
    p.expect(
        "layernorm",
        bwd,
        j,
        "dbeta",
        grads["beta"],
        "gradient",
        [
            *_generic(grads["beta"], N),
            ("wrong_axis", "summed over the features (axis 1) instead of the batch", g.sum(axis=1)),
        ],
    )


# Dropout ----------------------------------------------------------------------------------------

DROPOUT = {"small": ((5, 8), 0.7, "train"), "batch1": ((1, 10), 0.6, "train"), "test": ((4, 6), 0.7, "test")}


def course_mask(seed: int, shape, keep: float, dtype=np.float64) -> np.ndarray:
    """CS231n's skeleton: np.random.seed(seed); mask = np.random.rand(*x.shape) < p (the reference's draw)."""
    return cs231n_dropout_mask(tuple(shape), keep, seed, dtype)


def _dropout(keep: float) -> Dropout:
    return Dropout("dropout", None, None, keep=keep)


def _plan_dropout(p: _Plan, kind, dtype, rng):
    if kind not in DROPOUT:
        return
    shape, keep, mode = DROPOUT[kind]
    fwd, bwd = _n(p.part, "dropout_forward"), _n(p.part, "dropout_backward")
    train = mode == "train"
    for label in (fwd, bwd):
        seed = int(rng.integers(0, 2**31 - 1))
        x, g = _normal(rng, shape, dtype), _normal(rng, shape, dtype)
        mask = course_mask(seed, shape, keep, dtype)
        drop_mask = course_mask(seed, shape, 1 - keep, dtype)
        layer = _dropout(keep)
        out, cache = layer.forward(x, train=train, mask=mask)
        param = {"mode": mode, "p": keep, "seed": seed}
        if label == fwd:
            i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x, param]})
            if train:
                alts = [
                    (
                        "not_inverted",
                        f"not inverted: out = x * mask (inverted dropout divides by p = {keep:g} in training)",
                        x * mask,
                    ),
                    (
                        "p_as_drop",
                        "p used as the DROP probability: mask = rand < 1 - p, out = x * mask / (1 - p)",
                        x * drop_mask / (1 - keep),
                    ),
                ]
            else:
                alts = [
                    (
                        "not_inverted",
                        f"test mode scales by p (non-inverted dropout): out = x * {keep:g}; inverted dropout returns x",
                        x * keep,
                    ),
                    ("test_applies_mask", "the mask is applied in test mode too", x * mask / keep),
                ]
            p.expect("dropout", fwd, i, "out", out, "forward", _generic(out) + alts)
        else:
            dx, _ = layer.backward(g, cache)
            common = {"forward": fwd, "backward": bwd, "outputs": ["dx"]}
            i = p.item(bwd, "backward_call", common, {"args": [x, param], "dout": g})
            alts = (
                [
                    ("not_inverted", "not inverted: dx = dout * mask without the 1 / p", g * mask),
                    ("p_as_drop", "p used as the DROP probability", g * drop_mask / (1 - keep)),
                ]
                if train
                else [("test_applies_mask", "the mask is applied in test mode too", g * mask / keep)]
            )
            p.expect("dropout", bwd, i, "dx", dx, "gradient", _generic(dx) + alts)


# Conv, pool -------------------------------------------------------------------------------------

# kind -> (x shape, w shape, stride, pad)
CONV = {
    "small": ((2, 3, 5, 6), (4, 3, 3, 3), 1, 1),
    "stride2": ((2, 2, 7, 6), (3, 2, 3, 3), 2, 1),
    "pad0": ((3, 3, 4, 5), (2, 3, 2, 3), 1, 0),
    "batch1": ((1, 2, 5, 5), (2, 2, 3, 3), 2, 0),
}


def _plan_conv(p: _Plan, kind, dtype, rng):
    if kind not in CONV:
        return
    xshape, wshape, s, pad = CONV[kind]
    fwd, bwd = _n(p.part, "conv_forward_naive"), _n(p.part, "conv_backward_naive")
    fan_in = int(np.prod(wshape[1:]))
    conv_param = {"stride": s, "pad": pad}
    x, w, b = (
        _normal(rng, xshape, dtype),
        _normal(rng, wshape, dtype, scale=fan_in**-0.5),
        _normal(rng, wshape[0], dtype),
    )
    out, _ = Conv2D("conv", w, b, (s, s), (pad, pad)).forward(x)
    i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x, w, b, conv_param]})
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
    alts = [
        *_generic(out, xshape[0]),
        (
            "flipped_kernel",
            "the kernel is flipped (a convolution where CS231n's conv, like every framework's, is a cross-correlation)",
            Conv2D("conv", flipped, b, (s, s), (pad, pad)).forward(x)[0],
        ),
        (
            "missing_bias",
            "the bias is not added",
            Conv2D("conv", w, np.zeros_like(b), (s, s), (pad, pad)).forward(x)[0],
        ),
    ]
    p.expect("conv", fwd, i, "out", out, "forward", alts)
    x, w, b = (
        _normal(rng, xshape, dtype),
        _normal(rng, wshape, dtype, scale=fan_in**-0.5),
        _normal(rng, wshape[0], dtype),
    )
    layer = Conv2D("conv", w, b, (s, s), (pad, pad))
    out, cache = layer.forward(x)
    g = _normal(rng, out.shape, dtype)
    dx, grads = layer.backward(g, cache)
    common = {"forward": fwd, "backward": bwd, "outputs": ["dx", "dw", "db"]}
    j = p.item(bwd, "backward_call", common, {"args": [x, w, b, conv_param], "dout": g})
    no_stride = rconv.conv2d_backward_plain(g, x, w, (1, 1), (pad, pad)) if s > 1 else None
    padded_dx = rconv.conv2d_backward_plain(g, rconv.pad_images(x, (pad, pad)), w, (s, s), (0, 0))[0] if pad else None
    flip_layer = Conv2D("conv", np.ascontiguousarray(w[:, :, ::-1, ::-1]), b, (s, s), (pad, pad))
    flip_dx, _ = flip_layer.backward(g, flip_layer.forward(x)[1])
    dx_alts = [*_generic(dx, xshape[0]), ("flipped_kernel", "backpropagated through the flipped kernel", flip_dx)]
    if padded_dx is not None:
        dx_alts.append(
            (
                "padding_not_removed",
                f"the padding is not removed from dx: shape {padded_dx.shape}, the padded input's",
                padded_dx,
            )
        )
    if no_stride is not None:
        dx_alts.append(
            (
                "stride_missing",
                f"the stride ({s}) is left out of dx: windows placed at i, j instead of i * stride, j * stride",
                no_stride[0],
            )
        )
    p.expect("conv", bwd, j, "dx", dx, "gradient", dx_alts)
    dw_alts = [
        *_generic(grads["W"], xshape[0]),
        ("flipped_kernel", "dw flipped (the kernel is flipped in the forward pass)", grads["W"][:, :, ::-1, ::-1]),
    ]
    if no_stride is not None:
        dw_alts.append(
            (
                "stride_missing",
                f"the stride ({s}) is left out of dw: the input window of output (i, j) read at i, j instead of i * stride, j * stride",
                no_stride[1],
            )
        )
    p.expect("conv", bwd, j, "dw", grads["W"], "gradient", dw_alts)
    db_alts = [
        *_generic(grads["b"], xshape[0]),
        (
            "wrong_axis",
            "summed over the wrong axes: dout.sum(axis=(1, 2, 3)) where db sums over (0, 2, 3)",
            g.sum(axis=(1, 2, 3)),
        ),
    ]
    p.expect("conv", bwd, j, "db", grads["b"], "gradient", db_alts)


# kind -> (x shape, (pool_height, pool_width), stride)
POOL = {
    "small": ((2, 3, 4, 6), (2, 2), 2),
    "stride2": ((2, 2, 7, 6), (3, 2), 2),
    "pad0": ((2, 2, 5, 4), (2, 2), 1),
    "batch1": ((1, 2, 4, 4), (2, 2), 2),
}


def _plan_pool(p: _Plan, kind, dtype, rng):
    if kind not in POOL:
        return
    xshape, (ph, pw), s = POOL[kind]
    fwd, bwd = _n(p.part, "max_pool_forward_naive"), _n(p.part, "max_pool_backward_naive")
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": s}
    x = _away(rng, xshape, dtype) + rng.permutation(int(np.prod(xshape))).reshape(xshape).astype(dtype) * 1e-3
    out, _ = MaxPool2D("pool", (ph, pw), (s, s)).forward(x)
    i = p.item(fwd, "forward_call", {"name": fwd}, {"args": [x, pool_param]})
    alts = [("average", "the window's mean where its maximum belongs", rconv.avgpool2d_forward(x, (ph, pw), (s, s)))]
    p.expect("pool", fwd, i, "out", out, "forward", _generic(out) + alts)
    x = _away(rng, xshape, dtype) + rng.permutation(int(np.prod(xshape))).reshape(xshape).astype(dtype) * 1e-3
    layer = MaxPool2D("pool", (ph, pw), (s, s))
    out, cache = layer.forward(x)
    g = _normal(rng, out.shape, dtype)
    dx, _ = layer.backward(g, cache)
    j = p.item(
        bwd, "backward_call", {"forward": fwd, "backward": bwd, "outputs": ["dx"]}, {"args": [x, pool_param], "dout": g}
    )
    alts = [
        (
            "whole_window",
            "dout routed to the whole window instead of its maximum only",
            rconv.avgpool2d_backward(g, x.shape, (ph, pw), (s, s)) * (ph * pw),
        ),
        (
            "average",
            "dout spread over the window as an average pool's (dout / window size)",
            rconv.avgpool2d_backward(g, x.shape, (ph, pw), (s, s)),
        ),
    ]
    if s < ph or s < pw:  # overlapping windows: an element can be the maximum of several
        first = np.argmax(np.stack(cache[1]), axis=0)  # per window, the offset u * PW + v of its first maximum
        over = np.zeros_like(x)
        n_idx, c_idx = np.meshgrid(range(xshape[0]), range(xshape[1]), indexing="ij")
        for oi in range(g.shape[2]):
            for oj in range(g.shape[3]):
                u, v = np.divmod(first[:, :, oi, oj].astype(np.intp), pw)
                over[n_idx, c_idx, oi * s + u, oj * s + v] = g[:, :, oi, oj]
        text = (
            "dx assigned (=) where it must accumulate (+=): with overlapping windows an element that is the "
            "maximum of several keeps only the last window's dout"
        )
        alts.append(("overwritten", text, over))
    p.expect("pool", bwd, j, "dx", dx, "gradient", _generic(dx) + alts)


# Update rules -----------------------------------------------------------------------------------

STEPS = 4


def _run_rule(opt, w, dws, fresh=None) -> list[np.ndarray]:
    """The reference optimiser over the steps: w after each. fresh() -> a new optimiser per step (state not carried)."""
    params, out = {"w": w.copy()}, []
    for dw in dws:
        if fresh is not None:
            opt = fresh()
        opt.step(params, {"w": dw})
        out.append(params["w"].copy())
    return out


def _optimizer(cls, spec, state=None, t=0):
    opt = cls(spec)
    if state:
        opt.state["w"] = {k: v.copy() for k, v in state.items()}
    opt.t = t
    return opt


def _plan_updates(p: _Plan, kind, dtype, rng):
    if kind not in ("small", "state") or dtype != "float64":
        return
    shape = (4, 3)
    given = kind == "state"
    rules = {}
    lr = 1e-2 if not given else 3e-2
    # sgd
    config = {"learning_rate": lr}
    rules["sgd"] = (config, lambda st=None, t=0: _optimizer(SGD, OptimizerSpec("sgd", lr)), [])
    # momentum (CS231n: v = mu v - lr dw; w += v: keras' form of the reference Momentum)
    mu = 0.9 if not given else 0.8
    v0 = _normal(rng, shape, dtype, scale=0.1) if given else None
    config = {"learning_rate": lr} | ({"momentum": mu, "velocity": v0} if given else {})
    mom = lambda conv="keras", st=({"v": v0} if given else None): _optimizer(  # noqa: E731
        Momentum, OptimizerSpec("momentum", lr, momentum=mu, convention=conv), st
    )
    rules["sgd_momentum"] = (
        config,
        mom,
        [
            (
                "torch_momentum",
                "v = mu v + dw; w -= lr v (torch's form): it reads the given velocity with the other sign and scale",
                lambda: mom("torch"),
            ),
        ],
    )
    # rmsprop (CS231n: eps outside the root: the reference RMSProp's torch convention)
    rho, eps = (0.99, 1e-8) if not given else (0.9, 1e-6)
    c0 = rng.uniform(0.01, 0.1, shape).astype(dtype) if given else None
    config = {"learning_rate": lr} | ({"decay_rate": rho, "epsilon": eps, "cache": c0} if given else {})
    rms = lambda conv="torch": _optimizer(  # noqa: E731
        RMSProp, OptimizerSpec("rmsprop", lr, rho=rho, eps=eps, convention=conv), {"s": c0} if given else None
    )
    rules["rmsprop"] = (
        config,
        rms,
        [
            ("eps_inside_sqrt", "eps inside the square root: dw / sqrt(cache + eps)", lambda: rms("keras")),
        ],
    )
    # adam (CS231n: t += 1 before use, bias-corrected, eps outside the root: the torch convention)
    b1, b2, aeps = (0.9, 0.999, 1e-8) if not given else (0.8, 0.99, 1e-6)
    m0, s0 = (
        (_normal(rng, shape, dtype, scale=0.1), rng.uniform(0.01, 0.1, shape).astype(dtype)) if given else (None, None)
    )
    t0 = 5 if given else 0
    config = {"learning_rate": lr} | (
        {"beta1": b1, "beta2": b2, "epsilon": aeps, "m": m0, "v": s0, "t": t0} if given else {}
    )
    adam = lambda conv="torch", t=t0: _optimizer(  # noqa: E731
        Adam,
        OptimizerSpec("adam", lr, beta1=b1, beta2=b2, eps=aeps, convention=conv),
        {"m": m0, "v": s0} if given else None,
        t,
    )
    rules["adam"] = (
        config,
        adam,
        [
            (
                "t_after_use",
                "t incremented after its use in the bias correction (CS231n increments it first)",
                lambda: adam("torch", t0 - 1),
            ),
            ("eps_placement", "eps added to the uncorrected sqrt(v) (keras' placement)", lambda: adam("keras")),
        ],
    )
    w = _normal(rng, shape, dtype)
    dws = [_normal(rng, shape, dtype) for _ in range(STEPS)]
    for rule, (config, make, bugs) in rules.items():
        label = _n(p.part, rule)
        i = p.item(
            label,
            "update_sequence",
            {"name": label},
            {"w": w, "dws": dws, "config": {k: v for k, v in config.items() if v is not None}},
        )
        expected = _run_rule(make(), w, dws)
        with np.errstate(all="ignore"):
            hyps = [(bug, text, _run_rule(f(), w, dws)) for bug, text, f in bugs]
            hyps.append(
                (
                    "state_not_carried",
                    "the state is not carried from step to step (not stored back in config)",
                    _run_rule(None, w, dws, fresh=make),
                )
            )
        for k in range(STEPS):
            alts = [(b, t, v[k]) for b, t, v in hyps]
            if rule == "sgd":
                alts.append(("sign", "the step goes the wrong way: w + learning_rate * dw", 2 * w - expected[k]))
            p.expect("update_rules", label, i, f"next_w (step {k + 1})", expected[k], "parameters", alts)


# FullyConnectedNet ------------------------------------------------------------------------------

# kind -> (N, input shape, hidden_dims, classes, reg, normalization, keep)
NET = {
    "small": (4, (2, 3), [5, 4], 3, 0.0, None, 1.0),
    "reg": (4, (6,), [5, 4], 3, 0.3, None, 1.0),
    "square": (5, (5,), [5, 5], 5, 0.2, None, 1.0),
    "batch1": (1, (6,), [4], 3, 0.1, None, 1.0),
    "batchnorm": (5, (6,), [5, 4], 3, 0.1, "batchnorm", 1.0),
    "layernorm": (4, (6,), [5, 4], 3, 0.1, "layernorm", 1.0),
    "dropout": (6, (6,), [5, 7], 3, 0.05, None, 0.6),
}
NET_SEED = 231


class _Net:
    """The reference FullyConnectedNet: {affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine -
    softmax, from reference layers; L2 as the reference network's (ModelSpec.l2 = reg / 2: l2 sum W^2, 2 l2 W)."""

    def __init__(self, params, hidden, norm, keep, reg, dtype, seed):
        self.layers, self.names = [], []
        L = len(hidden) + 1
        for k in range(1, L + 1):
            self.layers.append(Dense(f"affine{k}", params[f"W{k}"], params[f"b{k}"]))
            self.names.append(("W", k))
            if k == L:
                break
            n = hidden[k - 1]
            if norm == "batchnorm":
                self.layers.append(_batchnorm(n, dtype, params[f"gamma{k}"], params[f"beta{k}"], BN_MOMENTUM, BN_EPS))
                self.names.append(("gamma", k))
            elif norm == "layernorm":
                self.layers.append(_layernorm(n, dtype, params[f"gamma{k}"], params[f"beta{k}"]))
                self.names.append(("gamma", k))
            self.layers.append(ReLU(f"relu{k}"))
            self.names.append((None, k))
            if keep < 1:
                self.layers.append(_dropout(keep))
                self.names.append(("dropout", k))
        self.keep, self.reg, self.seed, self.params = keep, reg, seed, params
        self.l2 = reg / 2  # the reference network's l2 (loss += l2 sum W^2, dW += 2 l2 W)

    def forward(self, X, train):
        h, caches = X.reshape(X.shape[0], -1), []
        for layer in self.layers:
            if isinstance(layer, Dropout):
                mask = course_mask(self.seed, h.shape, self.keep, h.dtype)
                h, cache = layer.forward(h, train=train, mask=mask)
            elif isinstance(layer, BatchNorm):
                h, cache = layer.forward(h, train=train)
            else:
                h, cache = layer.forward(h)
            caches.append(cache)
        return h, caches

    def loss(self, X, y):
        scores, caches = self.forward(X, True)
        data_loss, g = SoftmaxCrossEntropy("mean").value_and_grad(scores, y)
        weights = [self.params[k] for k in self.params if k.startswith("W")]
        penalty = self.l2 * sum(float((W.astype(np.float64) ** 2).sum()) for W in weights)
        grads = {}
        for layer, (kind, k), cache in zip(reversed(self.layers), reversed(self.names), reversed(caches)):
            g, pg = layer.backward(g, cache)
            if kind == "W":
                grads[f"W{k}"] = pg["W"] + 2 * self.l2 * self.params[f"W{k}"]
                grads[f"b{k}"] = pg["b"]
            elif kind == "gamma":
                grads[f"gamma{k}"], grads[f"beta{k}"] = pg["gamma"], pg["beta"]
        return data_loss, penalty, grads


def _net_params(rng, D, hidden, C, norm, dtype):
    dims, params = [D, *hidden, C], {}
    for k in range(1, len(dims)):
        params[f"W{k}"] = _normal(rng, (dims[k - 1], dims[k]), dtype, scale=dims[k - 1] ** -0.5 * 1.5)
        params[f"b{k}"] = rng.uniform(-0.5, 0.5, dims[k]).astype(dtype)
        if norm and k < len(dims) - 1:
            params[f"gamma{k}"] = rng.uniform(0.5, 1.5, dims[k]).astype(dtype)
            params[f"beta{k}"] = rng.uniform(-0.5, 0.5, dims[k]).astype(dtype)
    return params


def _plan_net(p: _Plan, kind, dtype, rng):
    checks = set(p.part.check_names)
    if kind not in NET or dtype != "float64" or not {"fc_net_loss", "fc_net_grads"} & checks:
        return
    N, xdims, hidden, C, reg, norm, keep = NET[kind]
    D = int(np.prod(xdims))
    params = _net_params(rng, D, hidden, C, norm, dtype)
    X, y = _normal(rng, (N, *xdims), dtype, loc=0.2), rng.integers(0, C, N).astype(np.int64)
    test_X = _normal(rng, (N, *xdims), dtype, loc=0.2)
    label = _n(p.part, "FullyConnectedNet")
    kwargs = {
        "hidden_dims": list(hidden),
        "input_dim": D,
        "num_classes": C,
        "dropout_keep_ratio": keep,
        "normalization": norm,
        "reg": reg,
        "weight_scale": 1e-2,
        "dtype": dtype,
        "seed": NET_SEED,
    }
    item = {"kwargs": kwargs, "params": params, "X": X, "y": y, "test_X": test_X, "train_first": norm == "batchnorm"}
    net = _Net(params, hidden, norm, keep, reg, dtype, NET_SEED)
    data_loss, penalty, grads = net.loss(X, y)  # a training-mode pass: batchnorm's running statistics updated
    if "fc_net_loss" in checks:
        scores_label = f"{label}.loss(X)"
        if norm != "batchnorm":
            net = _Net(params, hidden, norm, keep, reg, dtype, NET_SEED)
        scores, _ = net.forward(test_X, False)
        i = p.item(scores_label, "net_call", {"name": label, "call": "scores"}, item)
        p.expect(
            "fc_net_loss", scores_label, i, "scores", scores, "forward", _generic(scores, N), tensor=f"{label}.scores"
        )
    loss_label = f"{label}.loss(X, y)"
    i = p.item(loss_label, "net_call", {"name": label, "call": "loss"}, item)
    bias_sq = sum(float((v**2).sum()) for k, v in params.items() if not k.startswith("W"))
    loss = data_loss + penalty
    alts = _generic(loss)
    if reg:
        alts += [
            (
                "l2_no_half",
                "the L2 term without its 0.5: reg * sum(W**2) where CS231n's is 0.5 * reg * sum(W**2)",
                loss + penalty,
            ),
            ("l2_missing", "the L2 term is missing from the loss", data_loss),
            (
                "l2_on_all_params",
                "the L2 term also over the biases (and gamma, beta): CS231n's is over the weights only",
                loss + 0.5 * reg * bias_sq,
            ),
        ]
    if "fc_net_loss" in checks:
        p.expect("fc_net_loss", loss_label, i, "loss", loss, "loss", alts, tensor=f"{label}.loss")
    if "fc_net_grads" not in checks:
        return
    for key in params:
        value = grads[key]
        alts = _generic(value, N)
        if key.startswith("W") and reg:
            W = params[key]
            alts += [
                (
                    "l2_no_half",
                    "the L2 gradient 2 * reg * W (the derivative of reg * sum(W**2), the term without its 0.5)",
                    value + reg * W,
                ),
                ("l2_missing", "the L2 gradient reg * W is missing", value - reg * W),
            ]
        if not key.startswith("W") and reg:
            alts.append(
                (
                    "l2_on_all_params",
                    f"an L2 gradient reg * {key} added to a parameter that is not a weight",
                    value + reg * params[key],
                )
            )
        p.expect(
            "fc_net_grads", loss_label, i, f"grads[{key}]", value, "gradient", alts, tensor=f"{label}.grads[{key}]"
        )


# Cases ------------------------------------------------------------------------------------------

PLANNERS = {
    "affine": _plan_affine,
    "relu": _plan_relu,
    "losses": _plan_losses,
    "batchnorm": _plan_batchnorm,
    "layernorm": _plan_layernorm,
    "dropout": _plan_dropout,
    "conv": _plan_conv,
    "pool": _plan_pool,
    "update_rules": _plan_updates,
    "fc_net_loss": _plan_net,
}
KINDS = (
    "small",
    "square",
    "batch1",
    "stride2",
    "pad0",
    "settings",
    "test",
    "state",
    "reg",
    "batchnorm",
    "layernorm",
    "dropout",
)
FLOAT32 = ("affine", "relu", "losses", "batchnorm", "layernorm", "dropout", "conv", "pool")  # in the small float32 case


def build_cases(part, seed: int) -> list[FormatCase]:
    checks = set(part.check_names)
    plan = [(k, "float64") for k in KINDS]
    if "float32" in part.dtypes:
        plan.insert(1, ("small", "float32"))
    if "float64" not in part.dtypes:
        plan = [(k, d) for k, d in plan if d != "float64" or k != "small"]
    if "stability" in checks:
        plan.append(("stability", "float64"))
    cases = []
    for n, (kind, dtype) in enumerate(plan):
        case = FormatCase(f"{kind}-{dtype}", kind, dtype)
        p = _Plan(part, case)
        for check, planner in PLANNERS.items():
            wanted = check in checks or (check == "fc_net_loss" and "fc_net_grads" in checks)
            wanted = wanted or (check == "losses" and kind == "stability")
            if not wanted or (dtype == "float32" and check not in FLOAT32):
                continue
            rng = np.random.default_rng([seed, 231, n, CHECKS.index(check)])
            planner(p, kind, dtype, rng)
        if case.expected:
            cases.append(case)
    return cases


# Reading back -----------------------------------------------------------------------------------


def observe(part, case: FormatCase, results: dict) -> dict:
    """{Key: what came back | Problem} for every expected tensor of the case. The loop over the
    tensors (a call not run or failed) is adapters.observe's; this reads one record's output."""
    where = {id(exp): (index, output) for exp, (_, index, output) in zip(case.expected, case.notes["where"])}

    def extract(part, case, exp, record, items):
        label, (index, output) = exp.key.function, where[id(exp)]
        if not isinstance(record, list) or index >= len(record) or not isinstance(record[index], dict):
            return Problem(f"{label}: the driver returned no record {index} ({type(record).__name__})")
        entry = record[index].get(output)
        if not isinstance(entry, dict) or ("error" not in entry and "value" not in entry):
            return Problem(f"{label}: no {output} came back")
        return Problem(str(entry["error"])) if "error" in entry else entry["value"]

    return observe_records(part, case, results, extract=extract)


# The course's folder layout ---------------------------------------------------------------------

# the files, in dependency order (each may import the ones before it)
LAYOUT = ("layers.py", "optim.py", "layer_utils.py", "classifiers/fc_net.py")
PACKAGE = "cs231n"
MAX_ENTRIES = 5_000  # files and folders of one folder submission (the course's skeleton has ~40)


def _package_dir(path: Path) -> Path | None:
    """The cs231n/ package of a folder submission (the folder's cs231n/, or the folder itself), else None."""
    if not path.is_dir() or path.is_symlink():
        return None
    if (path / PACKAGE).is_dir() and not (path / PACKAGE).is_symlink():
        return path / PACKAGE
    if path.name == PACKAGE and (path / "layers.py").is_file():
        return path
    return None


def is_folder_submission(path: Path) -> bool:
    """A folder that holds the course's cs231n/ package: one submission (grading.checks.collect_submissions)."""
    return _package_dir(Path(path)) is not None


def _walk(path: Path) -> list[Path]:
    """Every .py file under the folder; a symbolic link anywhere, or an entry resolving outside, refuses it."""
    from grading.notebook import SubmissionError

    root = Path(os.path.realpath(path))
    files, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        seen += len(dirnames) + len(filenames)
        if seen > MAX_ENTRIES:
            raise SubmissionError(f"{path.name}: more than {MAX_ENTRIES:,} files and folders; not graded")
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            if full.is_symlink():
                raise SubmissionError(f"{rel}: a symbolic link; a submission folder holds regular files only")
            if not Path(os.path.realpath(full)).is_relative_to(root):
                raise SubmissionError(f"{rel}: resolves outside the submission folder")
            if full.is_file() and os.stat(full).st_nlink > 1:  # bprop check refuses a hard-linked file too
                raise SubmissionError(f"{rel}: a hard link (one file under several names); not graded")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def assemble(path, needed, out_dir: Path):
    """A cs231n/ folder -> one module (None: not a folder submission, the generic extraction applies).

    layers.py, optim.py, layer_utils.py and classifiers/fc_net.py, those present, are bundled in that
    order; each file's imports of the package itself (`from .layers import *`, `from ..layer_utils
    import *`, `from cs231n.layers import *`) are dropped, since what they import is defined above
    (`from cs231n.layers import affine_forward as af` becomes `af = affine_forward`). Then the
    generic extraction keeps what the graded API reaches, and every kept or skipped statement is
    named by its file and line ("cs231n/layers.py, line 12"). Every .py file of the folder (also
    solver.py, data_utils.py, ...) is appended inside `if False:`: never run, but the sandbox's
    static scan for forbidden imports reads it, so a forbidden import in any file refuses the
    submission. A symbolic link, or an entry resolving outside the folder, refuses it too."""
    from grading.notebook import MAX_BYTES, Extracted, Skipped, SubmissionError, _read, extract

    path = Path(path)
    package = _package_dir(path)
    if package is None:
        return None
    files = _walk(path)
    sources: dict[Path, str] = {}
    total = 0
    for f in files:
        data = _read(f)
        total += len(data)
        if total > MAX_BYTES:
            raise SubmissionError(f"{path.name}: its .py files hold more than {MAX_BYTES // 2**20} MB; not graded")
        sources[f] = data.decode("utf-8", errors="replace")
    present = [name for name in LAYOUT if (package / name) in sources]
    if "layers.py" not in present:
        raise SubmissionError(f"{path.name}: a {PACKAGE} folder without {PACKAGE}/layers.py")
    lines, origin, future = [], {}, []  # bundle line (1-based) -> "cs231n/layers.py, line 12"
    for name in present:
        rel = f"{PACKAGE}/{name}"
        source = sources[package / name]
        try:
            tree = pyast.parse(source)
        except SyntaxError as e:
            at = f" at line {e.lineno}" if e.lineno else ""
            raise SubmissionError(f"{rel}: syntax error{at}: {e.msg}") from e
        except (ValueError, RecursionError, MemoryError) as e:
            raise SubmissionError(f"{rel}: the parser gave up ({type(e).__name__}: {e})") from None
        src_lines = source.splitlines()
        for node in tree.body:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            end = node.end_lineno or node.lineno
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":  # must come first: hoisted
                future.append((f"{rel}, line {start}", ast.unparse(node)))
                continue
            if _internal_import(node):
                for alias in getattr(node, "names", []):
                    if isinstance(node, ast.ImportFrom) and alias.asname and alias.name != "*":
                        origin[len(lines) + 1] = f"{rel}, line {start}"
                        lines.append(f"{alias.asname} = {alias.name}")
                continue
            for k in range(start, end + 1):
                origin[len(lines) + 1] = f"{rel}, line {k}"
                lines.append(src_lines[k - 1])
    hoisted = list(dict.fromkeys(code for _, code in future))
    origin = {k + len(hoisted): v for k, v in origin.items()}
    for k, code in enumerate(hoisted, start=1):
        origin[k] = next(where for where, c in future if c == code)
    lines = hoisted + lines
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / "cs231n_bundle.py"
    bundle.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extracted = extract(bundle, needed)
    bundle.unlink()
    where = lambda w: origin.get(int(w.split()[-1]), w) if w.startswith("line ") else w  # noqa: E731
    skipped = [Skipped(where(s.where), s.why, s.code) for s in extracted.skipped]
    source = extracted.source
    if source.startswith("# Generated"):  # statements sharing a line: blocks headed "# line N"
        source = "\n".join(f"# {where(m[2:])}" if m.startswith("# line ") else m for m in source.splitlines()) + "\n"
    scanned = []
    for f, text in sources.items():
        rel = f.relative_to(path).as_posix()
        try:
            tree = pyast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # it cannot run either
            skipped.append(
                Skipped(rel, f"not bundled, not scanned: the parser refused it ({type(e).__name__})", "the whole file")
            )
            continue
        text_lines = text.splitlines()
        for node in tree.body:  # a __future__ import is legal only at the top of a module
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                for k in range(node.lineno - 1, node.end_lineno or node.lineno):
                    text_lines[k] = ""
        body = "\n".join("    " + line for line in text_lines)
        try:
            pyast.parse(f"if False:\n    pass\n{body}")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            skipped.append(
                Skipped(rel, f"not scanned: indented, it does not parse ({type(e).__name__})", "the whole file")
            )
            continue
        scanned.append(f"if False:  # {rel}: read by the scan for forbidden imports, never run\n    pass\n{body}")
    module = out_dir / "cs231n_submission.py"
    module.write_text(source + "\n\n" + "\n\n".join(scanned) + "\n", encoding="utf-8")
    return module, Extracted(source, f"folder {PACKAGE}/ ({', '.join(present)})", extracted.kept, skipped)


def _internal_import(node) -> bool:
    """`from .layers import *`, `from ..layer_utils import *`, `from cs231n.layers import *`, `import cs231n.optim`."""
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == PACKAGE
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == PACKAGE for a in node.names)
    return False
