"""TorchTwin: the reference's model rebuilt in PyTorch from the very same weights.

The contract (the twin API of oracles/__init__.py, shared with the keras twin):

    twin = TorchTwin(spec, params, seed=0, threads=1)   spec.dtype model, `params` copied in, torch.optim built
    twin.trace(x, y, train=True, masks=None)     -> Trace: loss, per layer out, grad_out, grad_in, grads
    twin.step(x, y, masks=None) -> float         one torch.optim step; the loss before it
    twin.train_epoch(x, y, order, batch_size)    one epoch in reference.train.batches order
    twin.evaluate(x, y) -> (loss, accuracy)      as reference.train.evaluate
    twin.get_params() / set_params(p)            canonical layout; numpy -> twin -> numpy is bit-exact
    twin.get_state() / set_state(s)              batchnorm running statistics

Layout. torch's `nn.Linear.weight` is (n_out, n_in), the canonical W is (n_in, n_out): the one
transpose lives in `_to_torch` / `_to_numpy` below. Copying a transpose is exact, so round trips are.

Gradients. Every layer output gets `retain_grad()` and the input `requires_grad`, so one
`loss.backward()` fills dL/d(out) of every layer, dL/d(input) of the first, and `.grad` of every
parameter: torch's own autograd, nothing hand-differentiated.

What torch expresses exactly, and what it cannot (NotImplementedError says which, at build time):
- Images: conv2d = nn.Conv2d (weight (F, C, KH, KW): the canonical layout, no conversion),
  maxpool2d / avgpool2d = nn.MaxPool2d / nn.AvgPool2d (ceil_mode=False), flatten = nn.Flatten (NCHW
  order, the reference's). Max-pool ties: torch routes to the first maximum, as the reference.
- Layers: dense = nn.Linear, relu/leaky_relu/sigmoid/tanh = nn.*, softmax = nn.Softmax(dim=1),
  batchnorm = nn.BatchNorm1d, layernorm = nn.LayerNorm(n, eps) (weight = gamma, bias = beta; the
  same default eps 1e-5), dropout = x * (mask / (1 - rate)) (keep given: x * (mask / keep)) with
  the caller's 0/1 keep-mask
  (torch's own nn.Dropout draws from torch's RNG and could not share the reference's mask). Without
  a mask the twin draws one from numpy.random.default_rng([seed, 1]) exactly as the reference does,
  so a twin and a reference built with the same seed and driven in lockstep drop the same units.
- BatchNorm, "torch" convention: nn.BatchNorm1d(momentum=m, eps=eps) is the reference's rule.
  "keras" convention: momentum 1 - m and eps 1e-3 give the same training-mode outputs and gradients,
  the same running_mean, and the same eval-mode results from given statistics. torch cannot match
  keras' running_var: it always folds in the *unbiased* batch variance (n/(n-1) var, hard-coded in
  torch's batch_norm), keras the biased one. The "cs231n" and "mytorch" conventions are keras' rule
  with momentum 0.9 (torch momentum 0.1), eps 1e-5 / 1e-8 and the biased variance, so the same holds
  for them; cs231n's running_var starts at zeros (filled at build). After a training-mode forward through such a layer,
  get_state() and every eval-mode computation raise NotImplementedError until set_state();
  `torch_state()` still returns torch's own buffers.
- Losses (each checked against reference/losses.py's docstring):
    softmax_cross_entropy   F.cross_entropy(logits, y)               -log softmax(z)_y
    cross_entropy           F.nll_loss(log p, y)                     -log p_y, no clipping
    nll                     F.nll_loss(log clamp(p, eps, 1-eps), y)  keras' clip; torch's nll_loss has
                            none, so torch.clamp adds it (its gradient is 0 outside [eps, 1-eps],
                            the boundary included, as in the reference)
    mse, l1                 F.mse_loss, F.l1_loss                    mean over all elements
    multiclass_hinge        F.multi_margin_loss(z, y, margin=1) * C  torch's nn.MultiMarginLoss divides each
                            sample's sum_{j != y} max(0, 1 - z_y + z_j) by the number of classes C
                            (measured: exactly 1/C of the reference's, CS231n's, loss and gradient);
                            multiplying C back keeps torch's own kernel as the oracle. Its gradient at
                            a margin of exactly 0 is 0, as CS231n's and the reference's.
    bce                     -(t log p + (1-t) log1p(-p)) in torch ops, the reference's formula.
                            F.binary_cross_entropy is a different function near 0 and 1: it clamps
                            log p and log(1-p) at -100 and divides its gradient by max(p(1-p), 1e-12),
                            so for 0 < p(1-p) < 1e-12 (p = 1 - 1e-13 in float64, say) it is off by
                            up to 10x where the reference is finite; elsewhere it is the same number.
  `spec.l2` adds l2 * sum(W**2) over the dense kernels to the loss, in torch (autograd adds 2 l2 W).
- Optimisers: torch.optim.SGD (momentum, nesterov), RMSprop, Adam, AdamW, each hyper-parameter
  resolved as the reference resolves it. Weight decay "coupled" is torch's weight_decay=;
  "decoupled" is AdamW for adam, and for plain SGD the same maths as coupled
  (p - lr wd p - lr g, either way). torch has no decoupled form for momentum, Nesterov or RMSprop:
  NotImplementedError. decay_biases=False puts the biases and batchnorm parameters in a parameter
  group with weight_decay=0.
  convention="keras": SGD is the same rule. Momentum and Nesterov are torch's SGD: keras' velocity
  is -lr times torch's buffer (v_k = mu v_k - lr g  <=>  v_t = mu v_t + g with v_k = -lr v_t), so the
  parameters are the same numbers up to rounding. Adam: keras adds eps to the uncorrected sqrt(v),
  which is torch's Adam with eps_t = eps / sqrt(1 - b2^t); the twin sets that per step on the
  param groups (as an LR scheduler sets lr). RMSprop: keras puts eps inside the square root,
  sqrt(s + eps), torch outside, sqrt(s) + eps: NotImplementedError.

Speed. train_epoch is the plain eager loop (forward, loss.backward(), optimizer.step()) on
`threads` torch threads (default THREADS, one), each batch a view into a chunk of rows gathered once.
Where nothing lies between the modules (no dropout, batchnorm or L2, no hook registered: every
preset) a step takes the same ops with less Python around them (_fast_step: Module.forward in turn,
torch.optim's step without its profiler wrapper), bit for bit the general step, 0.70-0.81x of its
CPU on the per-sample preset; `twin.fast = False` turns it off. Its backward is the autograd
engine's call that loss.backward() ends in (torch.autograd.graph._engine_run_backward, with a kept
dL/dL = 1 instead of a new ones_like per step): 0.86-0.93x of the step's CPU on the per-sample
presets, bit for bit. Measured and left out (2026-12-02, AMD EPYC, 2 cores, one thread): on the
CNN, each ReLU run after its max-pool (exact, as the reference does; the pool then sees unclipped
values and gets slower: 0.93-1.00x in float64, 1.01-1.07x in float32), the max-pools on a
channels_last copy (1.10x; and that kernel routes tied maxima elsewhere, so with the ReLU after it
the parameters differ by 8e-16), the whole net in channels_last (1.25x in float64 and the
parameters off by 1e-15; 1.04x and 4e-7 in float32), conv2d without oneDNN in float32 (1.5x); calling
cross_entropy's C op directly (0.99x of the engine call). evaluate runs in torch.inference_mode
(0.96x of no_grad's CPU on the CNN, the same numbers). Measured on the per-sample preset
(2 busy cores, CPU time per step): foreach=True and fused=True within noise of the default,
calling torch.func.grad then optimizer.step() 2x slower, torch.compile of the step 2x slower per
step after an 87 s compile; torch's per-op dispatch (about 35 ops a step) is the floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import _engine_run_backward  # what torch.autograd.backward calls (see _fast_step)

from oracles import OnStep, check_epoch
from reference.errors import DTypeError, ShapeError, check_array, describe
from reference.layers import BatchNorm, LayerNorm
from reference.losses import check_labels, check_targets, make_loss
from reference.optimizers import resolved
from reference.spec import ModelSpec, OptimizerSpec
from reference.trace import LayerTrace, Trace
from reference.train import evaluate_chunks

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
CLASSIFICATION = ("softmax_cross_entropy", "cross_entropy", "nll", "multiclass_hinge")

# Threads for train_epoch (the default of TorchTwin's `threads`), measured on 2 cores shared with
# other jobs (CPU time per step, medians of interleaved rounds, real MNIST): per-sample 784-32-32-10
# is dispatch-bound, 1 thread 497 us vs 2 threads 507 us (float32); at batch 128 (784-128-10) 2
# threads spin against the other jobs: 2.3 ms vs 44 ms per step (float32), 3.9 ms vs 30 ms
# (float64). One thread for both.
THREADS = 1
# torch.optim's single-tensor loop (foreach=False): within noise of foreach=True for 4-6 small
# tensors (497 vs 477 us per-sample float32, 593 vs 654 us float64); the simpler code path.
FOREACH = False


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch.set_num_threads(n), restoring the caller's setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SharedMaskDropout(nn.Module):
    """Inverted dropout with a given 0/1 keep-mask: out = x * (mask / (1 - rate)), or x * (mask / keep)."""

    def __init__(self, rate: float, keep: float | None = None) -> None:
        super().__init__()
        self.rate = rate if keep is None else 1 - keep
        self.keep_prob = 1 - rate if keep is None else keep  # the divisor, as reference Dropout.keep_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return x
        # The divisor rounded to the dtype first, then one division: the reference's exact numbers.
        return x * (mask / torch.tensor(self.keep_prob, dtype=x.dtype))  # (batch, n)


def _to_torch(name: str, value: np.ndarray) -> torch.Tensor:
    """Canonical numpy -> torch layout: dense W (n_in, n_out) becomes nn.Linear.weight (n_out, n_in).

    A conv2d W (F, C, KH, KW) is nn.Conv2d.weight's own layout: no change.
    """
    return torch.from_numpy(value.T if name.endswith(".W") and value.ndim == 2 else value)


def _to_numpy(name: str, value: torch.Tensor) -> np.ndarray:
    """torch -> canonical numpy layout, a fresh C-contiguous array (the transpose undone for dense W),
    in one copy (the divergence runs read every parameter after every step)."""
    a = value.detach().numpy()
    return np.array(a.T if name.endswith(".W") and a.ndim == 2 else a, order="C")


def build_optimizer(opt: OptimizerSpec, named: dict[str, nn.Parameter]) -> tuple[torch.optim.Optimizer, float | None]:
    """torch.optim for `opt` over `named` parameters; also keras-Adam's eps (None: no eps schedule)."""
    keras = opt.convention == "keras"
    wd = opt.weight_decay
    decoupled = wd != 0 and opt.decay_mode == "decoupled"
    where = f"torch twin: optimizer {opt.name!r} (convention {opt.convention!r})"
    if decoupled and opt.name in ("momentum", "nesterov", "rmsprop"):
        raise NotImplementedError(
            f"{where}: decoupled weight decay (p -= lr*wd*p before the rule) has no torch.optim form for "
            f"{opt.name}; torch's weight_decay= is coupled (g += wd*p, which then enters the "
            f"{'momentum buffer' if opt.name != 'rmsprop' else 'square average'}), only AdamW decouples"
        )
    if keras and opt.name == "rmsprop":
        raise NotImplementedError(
            f"{where}: keras' RMSprop divides by sqrt(s + eps) (eps inside the root), torch.optim.RMSprop "
            "by sqrt(s) + eps; no setting of torch's optimiser gives keras' rule"
        )
    decay_all = opt.decay_biases or wd == 0
    weights = [p for n, p in named.items() if decay_all or n.endswith(".W")]
    others = [p for n, p in named.items() if not (decay_all or n.endswith(".W"))]
    groups: list[dict] = [{"params": weights, "weight_decay": wd}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    if opt.name in ("sgd", "momentum", "nesterov"):
        # Plain SGD: decoupled p - lr wd p - lr g is coupled p - lr (g + wd p), the same maths.
        mu = 0.0 if opt.name == "sgd" else opt.momentum
        nesterov = opt.name == "nesterov" and mu > 0  # mu = 0: the reference's Nesterov is plain SGD
        return torch.optim.SGD(groups, lr=opt.lr, momentum=mu, nesterov=nesterov, foreach=FOREACH), None
    if opt.name == "rmsprop":
        rho, eps = resolved(opt, "rho"), resolved(opt, "eps")
        return torch.optim.RMSprop(groups, lr=opt.lr, alpha=rho, eps=eps, foreach=FOREACH), None
    if opt.name == "adam":
        eps = resolved(opt, "eps")
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        built = cls(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=eps, foreach=FOREACH)
        return built, (eps if keras else None)
    raise NotImplementedError(f"{where}: unknown optimizer")


class TorchTwin:
    kind = "torch"

    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray], seed: int = 0, threads: int = THREADS) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"torch twin: expected threads >= 1, got {threads!r}")
        self.spec = spec
        self.threads = threads  # torch's intra-op threads while train_epoch runs
        self.dtype = np.dtype(spec.dtype)
        self.tdtype = TORCH_DTYPES[spec.dtype]
        self.names = spec.layer_names()
        self.rng = np.random.default_rng([seed, 1])  # the reference's dropout stream
        self.modules: list[nn.Module] = []
        self.named: dict[str, nn.Parameter] = {}  # canonical name -> torch parameter
        self.batchnorms: dict[str, tuple[nn.BatchNorm1d, str]] = {}  # name -> (module, convention)
        self.kernels: list[nn.Parameter] = []  # dense weights, for spec.l2
        shape = spec.sample_shape
        for name, ls, out_shape in zip(self.names, spec.layers, spec.layer_shapes()):
            self.modules.append(self._build_layer(name, ls, shape[0], shape))
            shape = out_shape
        self.dropouts = [name for name, ls in zip(self.names, spec.layers) if ls.kind == "dropout"]
        self._keras_bn_stale: set[str] = set()  # keras-convention batchnorms torch has updated
        self.loss_fn = self._build_loss()
        self.set_params(params)
        self.params = list(self.named.values())
        self.optimizer, self._keras_adam_eps = build_optimizer(spec.optimizer, self.named)
        self.steps_taken = 0
        self.fast = True  # False: every step through the general _train_step (the fast step's yardstick)
        self._one = torch.ones((), dtype=self.tdtype)  # dL/dL, the fast step's gradient for backward

    # Building -----------------------------------------------------------------------------------

    def _build_layer(self, name: str, ls, n_in: int, in_shape: tuple[int, ...] = ()) -> nn.Module:
        if ls.kind == "conv2d":
            # nn.Conv2d is a cross-correlation with weight (F, C, KH, KW): the canonical layout.
            kernel, stride, padding = ls.pairs()
            conv = nn.utils.skip_init(
                nn.Conv2d, in_shape[0], ls.filters, kernel, stride=stride, padding=padding, dtype=self.tdtype
            )
            self.named[f"{name}.W"], self.named[f"{name}.b"] = conv.weight, conv.bias
            return conv
        if ls.kind in ("maxpool2d", "avgpool2d"):
            # ceil_mode=False (the default) drops what no window reaches, as the reference does;
            # AvgPool2d without padding has nothing for count_include_pad to change.
            pool, stride, _ = ls.pairs()
            return (nn.MaxPool2d if ls.kind == "maxpool2d" else nn.AvgPool2d)(pool, stride=stride)
        if ls.kind == "flatten":
            return nn.Flatten()  # (batch, C, H, W) -> (batch, C H W) in C order, as the reference
        if ls.kind == "dense":
            # skip_init: no draw from torch's global RNG; set_params fills every value.
            lin = nn.utils.skip_init(nn.Linear, n_in, ls.units, dtype=self.tdtype)
            self.named[f"{name}.W"], self.named[f"{name}.b"] = lin.weight, lin.bias
            self.kernels.append(lin.weight)
            return lin
        if ls.kind == "batchnorm":
            m, eps = BatchNorm.resolve(ls.convention, ls.momentum, ls.eps)
            # keras' (cs231n's, mytorch's) running = m r + (1-m) s is torch's (1-m') r + m' s with m' = 1 - m.
            bn = nn.BatchNorm1d(n_in, eps=eps, momentum=m if ls.convention == "torch" else 1 - m, dtype=self.tdtype)
            with torch.no_grad():
                bn.running_var.fill_(BatchNorm.INITIAL_VAR[ls.convention])  # cs231n starts from zeros
            self.named[f"{name}.gamma"], self.named[f"{name}.beta"] = bn.weight, bn.bias
            self.batchnorms[name] = (bn, ls.convention)
            return bn
        if ls.kind == "layernorm":
            # nn.LayerNorm(n): per-row mean and biased variance over the last axis, eps inside the root.
            eps = LayerNorm.EPS if ls.eps is None else ls.eps
            ln = nn.LayerNorm(n_in, eps=eps, dtype=self.tdtype)
            self.named[f"{name}.gamma"], self.named[f"{name}.beta"] = ln.weight, ln.bias
            return ln
        if ls.kind == "dropout":
            return SharedMaskDropout(ls.rate, ls.keep)
        return {
            "relu": nn.ReLU,
            "leaky_relu": lambda: nn.LeakyReLU(ls.alpha),
            "sigmoid": nn.Sigmoid,
            "tanh": nn.Tanh,
            "softmax": lambda: nn.Softmax(dim=1),
        }[ls.kind]()

    def _build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        name, red = self.spec.loss, self.spec.reduction
        if name == "softmax_cross_entropy":
            return lambda z, y: F.cross_entropy(z, y, reduction=red)
        if name == "cross_entropy":
            return lambda p, y: F.nll_loss(torch.log(p), y, reduction=red)
        if name == "nll":
            eps = make_loss("nll").eps  # the reference's clip (keras' 1e-7)
            return lambda p, y: F.nll_loss(torch.log(torch.clamp(p, eps, 1 - eps)), y, reduction=red)
        if name == "mse":
            return lambda p, t: F.mse_loss(p, t, reduction=red)
        if name == "l1":
            return lambda p, t: F.l1_loss(p, t, reduction=red)
        if name == "bce":
            return lambda p, t: _reduce(-(t * torch.log(p) + (1 - t) * torch.log1p(-p)), red)
        if name == "multiclass_hinge":
            # F.multi_margin_loss is sum_{j != y} max(0, 1 - s_y + s_j) / C per sample: the reference's
            # (CS231n's) sum divided by the number of classes C. The twin multiplies C back, so the
            # number compared is torch's own kernel (forward and backward), not the formula re-typed.
            return lambda z, y: F.multi_margin_loss(z, y, p=1, margin=1.0, reduction=red) * z.shape[1]
        raise NotImplementedError(f"torch twin: loss {name!r} has no torch counterpart here")

    # Parameters and state ---------------------------------------------------------------------

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: _to_numpy(k, p) for k, p in self.named.items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        if set(params) != set(self.named):
            raise ShapeError(f"torch twin: expected parameters {sorted(self.named)}, got {sorted(params)}")
        for k, v in params.items():
            dense_w = k.endswith(".W") and self.named[k].ndim == 2
            shape = tuple(self.named[k].shape[::-1] if dense_w else self.named[k].shape)
            if not isinstance(v, np.ndarray) or v.shape != shape:
                raise ShapeError(f"torch twin: parameter {k}: expected shape {shape}, got {describe(v)}")
            if v.dtype != self.dtype:
                raise DTypeError(f"torch twin: parameter {k}: expected dtype {self.dtype}, got {describe(v)}")
        with torch.no_grad():
            for k, v in params.items():
                self.named[k].copy_(_to_torch(k, v))

    def torch_state(self) -> dict[str, np.ndarray]:
        """torch's own running statistics, whatever the convention (see the module docstring)."""
        out = {}
        for name, (bn, _) in self.batchnorms.items():
            out[f"{name}.running_mean"] = bn.running_mean.numpy().copy()
            out[f"{name}.running_var"] = bn.running_var.numpy().copy()
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        self._check_state_exact("get_state")
        return self.torch_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        expected = set(self.torch_state())
        if set(state) != expected:
            raise ShapeError(f"torch twin: expected state {sorted(expected)}, got {sorted(state)}")
        with torch.no_grad():
            for key, v in state.items():
                name, stat = key.rsplit(".", 1)
                buf = getattr(self.batchnorms[name][0], stat)
                if not isinstance(v, np.ndarray) or v.shape != tuple(buf.shape) or v.dtype != self.dtype:
                    raise ShapeError(
                        f"torch twin: state {key}: expected {self.dtype} array of shape {tuple(buf.shape)}, "
                        f"got {describe(v)}"
                    )
                buf.copy_(torch.from_numpy(v))
        self._keras_bn_stale.clear()

    def _check_state_exact(self, what: str) -> None:
        if self._keras_bn_stale:
            names = sorted(self._keras_bn_stale)
            raise NotImplementedError(
                f"torch twin: {what}: {names} (keras, cs231n or mytorch convention) were updated by torch in "
                "training mode; torch folds the unbiased batch variance n/(n-1)*var into running_var, keras, "
                "CS231n and MyTorch (and the reference's conventions of theirs) the biased one, so the running "
                "statistics no longer match. "
                "Outputs and gradients in training mode and running_mean do match; call set_state() "
                "to evaluate from given statistics, or torch_state() for torch's own buffers"
            )

    # Forward, loss, backward ------------------------------------------------------------------

    def _inputs(self, x: np.ndarray, y: np.ndarray, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked numpy (x, y) as torch tensors: labels int64, targets in the model's dtype."""
        check_array(x, f"torch twin {where}: input", self.dtype, sample_shape=self.spec.sample_shape)
        like = np.broadcast_to(np.zeros((), self.dtype), (x.shape[0], self.spec.n_out))  # no memory
        if self.spec.loss in CLASSIFICATION:
            check_labels(y, like, f"torch twin {where}: labels")
            return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64, copy=False))
        check_targets(y, like, f"torch twin {where}: targets")
        return torch.from_numpy(x), torch.from_numpy(y)

    def _mask(self, name: str, shape: tuple[int, ...], masks: dict[str, np.ndarray] | None) -> torch.Tensor:
        mask = (masks or {}).get(name)
        if mask is None:  # the reference's draw: rng.random(shape) >= rate, or < keep
            ls = self.spec.layers[self.names.index(name)]
            u = self.rng.random(shape)
            mask = (u >= ls.rate if ls.keep is None else u < ls.keep).astype(self.dtype)
        elif mask.shape != shape:
            raise ShapeError(f"torch twin: {name}: expected a mask of shape {shape}, got {describe(mask)}")
        return torch.from_numpy(mask.astype(self.dtype, copy=False))

    def _set_mode(self, train: bool, batch: int) -> None:
        for name, (bn, convention) in self.batchnorms.items():
            bn.train(train)
            if train and batch < 2:
                raise ShapeError(f"torch twin: {name}: training mode needs a batch of at least 2, got {batch}")
            if train and convention != "torch":
                self._keras_bn_stale.add(name)
        if not train:
            self._check_state_exact("eval-mode forward")

    def _check_masks(self, masks: dict[str, np.ndarray] | None) -> None:
        """A mask for a layer that is not a dropout layer would be ignored: an error, as in Network."""
        if masks and not set(masks) <= set(self.dropouts):
            raise ShapeError(
                f"torch twin: expected masks for the dropout layers {self.dropouts} only, got {sorted(masks)}"
            )

    def _forward(self, x: torch.Tensor, train: bool, masks=None, retain: bool = False) -> list[torch.Tensor]:
        """Every layer's output, first to last; `retain` keeps their gradients for the trace."""
        self._check_masks(masks)
        self._set_mode(train, x.shape[0])
        outs, h = [], x
        for name, module in zip(self.names, self.modules):
            if isinstance(module, SharedMaskDropout):
                h = module(h, self._mask(name, tuple(h.shape), masks) if train and module.rate > 0 else None)
            else:
                h = module(h)
            if retain and h.requires_grad:
                h.retain_grad()
            outs.append(h)
        return outs

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The data loss, plus l2 * sum W^2 over the dense kernels when spec.l2 is set."""
        loss = self.loss_fn(out, target)
        if self.spec.l2:
            loss = loss + self.spec.l2 * sum((w * w).sum() for w in self.kernels)
        return loss

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        check_array(x, "torch twin forward: input", self.dtype, sample_shape=self.spec.sample_shape)
        with torch.no_grad():
            return self._forward(torch.from_numpy(x), train)[-1].numpy().copy()

    def trace(self, x: np.ndarray, y: np.ndarray, train: bool = True, masks=None) -> Trace:
        """Loss and every per-layer tensor by one torch backward pass; parameters unchanged."""
        xt, yt = self._inputs(x, y, "trace")
        xt = xt.clone().requires_grad_(True)
        for p in self.named.values():
            p.grad = None
        with torch.enable_grad():
            outs = self._forward(xt, train, masks, retain=True)
            loss = self._loss(outs[-1], yt)
            loss.backward()
        records = []
        for k, (name, out) in enumerate(zip(self.names, outs)):
            before = xt if k == 0 else outs[k - 1]
            rec = LayerTrace(name, out=_np(out), grad_out=_np(out.grad), grad_in=_np(before.grad))
            prefix = f"{name}."
            rec.grads = {q[len(prefix) :]: _to_numpy(q, p.grad) for q, p in self.named.items() if q.startswith(prefix)}
            records.append(rec)
        for p in self.named.values():
            p.grad = None
        return Trace(loss=_np(loss), layers=records)

    # Training ---------------------------------------------------------------------------------

    def _optimizer_step(self, step: Callable[[], object] | None = None) -> None:
        """torch.optim's step (`step`: the same step without its profiler wrapper, see _fast_step);
        keras-convention Adam first gets this step's eps (module docstring)."""
        self.steps_taken += 1
        if self._keras_adam_eps is not None:
            eps_t = self._keras_adam_eps / math.sqrt(1 - self.spec.optimizer.beta2**self.steps_taken)
            for group in self.optimizer.param_groups:
                group["eps"] = eps_t
        (step or self.optimizer.step)()
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its profiler hooks
            p.grad = None

    def _train_step(self, xt: torch.Tensor, yt: torch.Tensor, masks=None) -> torch.Tensor:
        """The general step: every layer through _forward (masks, batchnorm modes), the loss with L2."""
        loss = self._loss(self._forward(xt, True, masks)[-1], yt)
        loss.backward()
        self._optimizer_step()
        return loss.detach()

    def _fast_step_parts(self) -> tuple[list[Callable], Callable[[], object]] | None:
        """(each module's forward, the optimizer's step) for _fast_step, or None where the general step
        must run: self.fast off, a dropout (its mask), a batchnorm (its mode and statistics), an L2
        term, or a hook registered on a module, on nn.Module globally or on the optimizer (the fast
        step would skip it). Checked once per train_epoch or step() call, not per step."""
        if not self.fast or self.dropouts or self.batchnorms or self.spec.l2:
            return None
        if _module_hooks() or any(_module_hooks(m) for m in self.modules) or _optimizer_hooks(self.optimizer):
            return None
        step = type(self.optimizer).step
        # Optimizer._patch_step_function wraps the class's step once in profile_hook_step (a
        # record_function around it and the step-hook loops); functools.wraps keeps the step it
        # wrapped, still inside torch.optim's own no_grad wrapper (_use_grad_for_differentiable).
        inner = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
        return [m.forward for m in self.modules], (inner.__get__(self.optimizer) if inner else self.optimizer.step)

    def _fast_step(self, xt: torch.Tensor, yt: torch.Tensor, parts) -> torch.Tensor:
        """The general step's very ops where nothing lies between the modules: each Module.forward
        called in turn (what Module.__call__ does when no hook is registered), the loss, torch's
        autograd engine as loss.backward() calls it, then torch.optim's step without the profiler
        wrapper. Bit for bit the general step (tests/test_torch_twin.py, every step); 0.70-0.81x of
        its CPU per step on the per-sample preset (scripts/torch_loop_variants.py, README "The
        torch twin's fast step"), and the direct engine call 0.86-0.93x of that again."""
        forwards, step = parts
        h = xt
        for forward in forwards:
            h = forward(h)
        loss = self.loss_fn(h, yt)
        # loss.backward() is torch.autograd.backward(loss), which checks its arguments, makes
        # ones_like(loss) and calls _engine_run_backward with these very arguments: the engine
        # gets the same call, with a kept scalar 1 (autograd never writes to an incoming gradient).
        _engine_run_backward((loss,), (self._one,), False, False, (), allow_unreachable=True, accumulate_grad=True)
        self._optimizer_step(step)
        return loss.detach()

    def step(self, x: np.ndarray, y: np.ndarray, masks=None) -> float:
        xt, yt = self._inputs(x, y, "step")
        parts = self._fast_step_parts() if masks is None else None
        with torch.enable_grad():
            if parts is not None:
                return float(self._fast_step(xt, yt, parts))
            return float(self._train_step(xt, yt, masks))

    def train_epoch(self, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int, on_step: OnStep = None):
        """One epoch over x[order], one torch.optim step per batch; the mean of the per-step losses."""
        order = check_epoch(x, order, batch_size, "torch twin train_epoch")
        xt, yt = self._inputs(x, y, "train_epoch")  # checked once, shared memory, no copy
        order_t = torch.from_numpy(order.astype(np.int64, copy=False))
        losses = []
        parts = self._fast_step_parts()
        with torch_threads(self.threads), torch.enable_grad():
            # Chunks of whole batches gathered once: each step then takes a view, not a gather.
            chunk = batch_size * max(1, 4096 // batch_size)
            for start in range(0, len(order), chunk):
                idx = order_t[start : start + chunk]
                xc, yc = xt.index_select(0, idx), yt.index_select(0, idx)
                for b in range(0, len(idx), batch_size):
                    xb, yb = xc[b : b + batch_size], yc[b : b + batch_size]
                    loss = self._train_step(xb, yb) if parts is None else self._fast_step(xb, yb, parts)
                    losses.append(loss)
                    if on_step is not None:
                        on_step(len(losses) - 1, float(loss))
        return float(torch.stack(losses).to(torch.float64).sum()) / len(losses)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, batch_size: int = 10_000, predictions: list | None = None
    ) -> tuple[float, float]:
        """(mean loss per sample, accuracy) in inference mode; the data loss, as the reference's. With a
        list `predictions`, each chunk's predicted classes (argmax of the output) are appended to it."""
        xt, yt = self._inputs(x, y, "evaluate")

        def predict(xb: torch.Tensor, yb: torch.Tensor) -> tuple[np.ndarray, float]:
            out = self._forward(xb, train=False)[-1]
            if predictions is not None:
                predictions.append(out.numpy().argmax(axis=1))
            return out.numpy(), float(self.loss_fn(out, yb))

        with torch.inference_mode():  # no_grad without version counters: 0.96x of its CPU on the CNN
            classification = self.spec.loss in CLASSIFICATION
            return evaluate_chunks(predict, xt, yt, self.spec.reduction, classification, batch_size)


def _module_hooks(module: nn.Module | None = None) -> bool:
    """Whether a hook is registered on `module`, or (None) on every nn.Module: Module._call_impl's test."""
    from torch.nn.modules import module as m

    if module is None:
        hooks = (m._global_backward_pre_hooks, m._global_backward_hooks, m._global_forward_hooks)
        return any(hooks) or bool(m._global_forward_pre_hooks)
    hooks = module._backward_hooks or module._backward_pre_hooks or module._forward_hooks or module._forward_pre_hooks
    return bool(hooks) or getattr(module, "_compiled_call_impl", None) is not None  # Module.compile()'d


def _optimizer_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step hook is registered on `optimizer` or on every optimizer."""
    from torch.optim import optimizer as o

    local = optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
    return bool(local or o._global_optimizer_pre_hooks or o._global_optimizer_post_hooks)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Element-wise losses -> their sum, or their mean over every element."""
    return losses.sum() if reduction == "sum" else losses.mean()


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A detached numpy copy (None stays None)."""
    return None if t is None else t.detach().numpy().copy()
