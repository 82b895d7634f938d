"""Optimisers, each in torch's and in keras' definition.

The contract, stated once:

    opt = make_optimizer(spec.optimizer)
    opt.step(params, grads)      params, grads: {"dense_1.W": array, ...}; params updated in place
    opt.step(params, grads, owned=True)
                                 the same numbers; the caller owns the grads (distinct arrays nobody
                                 reads afterwards, as train_step's): a rule may overwrite them

State (velocities, moments, the step count) lives in the optimiser, keyed by parameter name.
Where torch and keras define a rule differently, `convention` picks one, so each twin is matched
exactly; the differences are written next to each rule. Weight decay:
    coupled    g <- g + wd * p before the rule         (torch's `weight_decay=`)
    decoupled  p <- p - lr * wd * p before the rule    (torch AdamW, keras' `weight_decay=`)
`decay_biases=False` applies it to weight matrices only ("*.W"); keras decays every variable.
"""

from __future__ import annotations

import math

import numpy as np

from reference.errors import SpecError
from reference.spec import OptimizerSpec

# What a spec leaves as None, by convention (torch.optim's and keras.optimizers' defaults).
DEFAULTS: dict[str, dict[str, float]] = {"torch": {"rho": 0.99, "eps": 1e-8}, "keras": {"rho": 0.9, "eps": 1e-7}}


def resolved(spec: OptimizerSpec, name: str) -> float:
    """spec.<name> ("rho" or "eps"), or its convention's default when the spec leaves it None."""
    value = getattr(spec, name)
    return DEFAULTS[spec.convention][name] if value is None else value


class Optimizer:
    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec
        self.lr = spec.lr
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.buffers: dict[str, np.ndarray] = {}  # scratch space for in-place updates, not state
        self.t = 0  # steps taken

    def _decays(self, name: str) -> bool:
        """Whether a non-zero weight decay applies to parameter `name`."""
        return self.spec.decay_biases or name.endswith(".W")

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], owned: bool = False) -> None:
        self.t += 1
        for name, p in params.items():
            g = grads[name]
            if self.spec.weight_decay != 0 and self._decays(name):
                if self.spec.decay_mode == "coupled":
                    g = g + self.spec.weight_decay * p
                else:
                    p -= self.lr * self.spec.weight_decay * p
            self.update(name, p, g, owned)

    def update(self, name: str, p: np.ndarray, g: np.ndarray, owned: bool = False) -> None:
        raise NotImplementedError

    def _slot(self, name: str, key: str, like: np.ndarray) -> np.ndarray:
        """State `key` of parameter `name`, zeros of `like`'s shape and dtype the first time."""
        slots = self.state.setdefault(name, {})
        if key not in slots:  # not setdefault(key, zeros_like(...)): that allocates on every call
            slots[key] = np.zeros_like(like)
        return slots[key]


class SGD(Optimizer):
    def update(self, name, p, g, owned=False):
        """p <- p - lr g"""
        # p -= lr * g, with lr * g written into g itself when the caller owns g and it has p's dtype (one
        # array fewer through the cache: 784 x 128 float64 is 800 KB, ~7 % of a batched epoch), else
        # into a buffer kept from step to step (no allocation). The same roundings either way.
        if owned and g.dtype == p.dtype:
            lr_g = g
        else:
            lr_g = self.buffers.get(name)
            if lr_g is None:
                lr_g = self.buffers[name] = np.empty(p.shape, p.dtype)  # C order (SampleSGD writes np.dot's out= here)
        np.multiply(g, self.lr, out=lr_g)
        p -= lr_g


class Momentum(Optimizer):
    def update(self, name, p, g, owned=False):
        """torch: v <- mu v + g, p <- p - lr v;   keras: v <- mu v - lr g, p <- p + v"""
        v, mu = self._slot(name, "v", p), self.spec.momentum
        if self.spec.convention == "torch":
            # torch stores the first buffer as g itself (not mu * 0 + g): the same number.
            v[...] = mu * v + g
            p -= self.lr * v
        else:
            v[...] = mu * v - self.lr * g
            p += v


class Nesterov(Optimizer):
    def update(self, name, p, g, owned=False):
        """torch: v <- mu v + g, p <- p - lr (g + mu v);   keras: v <- mu v - lr g, p <- p + mu v - lr g"""
        v, mu = self._slot(name, "v", p), self.spec.momentum
        if self.spec.convention == "torch":
            v[...] = mu * v + g
            p -= self.lr * (g + mu * v)
        else:
            v[...] = mu * v - self.lr * g
            p += mu * v - self.lr * g


class RMSProp(Optimizer):
    def update(self, name, p, g, owned=False):
        """torch: s <- a s + (1-a) g^2, p <- p - lr g / (sqrt(s) + eps)   (eps outside the root)
        keras: s <- r s + (1-r) g^2, p <- p - lr g / sqrt(s + eps)          (eps inside the root)"""
        torch = self.spec.convention == "torch"
        rho, eps = resolved(self.spec, "rho"), resolved(self.spec, "eps")
        s = self._slot(name, "s", p)
        s[...] = rho * s + (1 - rho) * g * g
        p -= self.lr * g / ((np.sqrt(s) + eps) if torch else np.sqrt(s + eps))


class Adam(Optimizer):
    def update(self, name, p, g, owned=False):
        """m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2, then
        torch: p <- p - lr m_hat / (sqrt(v_hat) + eps)     m_hat = m/(1-b1^t), v_hat = v/(1-b2^t)
        keras: p <- p - lr_t m / (sqrt(v) + eps)           lr_t = lr sqrt(1-b2^t)/(1-b1^t)
        (the same rule but for where eps sits: keras' eps acts on the uncorrected sqrt(v))"""
        torch = self.spec.convention == "torch"
        b1, b2 = self.spec.beta1, self.spec.beta2
        eps = resolved(self.spec, "eps")
        m, v = self._slot(name, "m", p), self._slot(name, "v", p)
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        # Bias correction.
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        if torch:
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + eps)
        else:
            p -= (self.lr * math.sqrt(c2) / c1) * m / (np.sqrt(v) + eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "rmsprop": RMSProp,
    "adam": Adam,
}


def make_optimizer(spec: OptimizerSpec) -> Optimizer:
    if spec.name not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {spec.name!r}; optimizers are {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[spec.name](spec)
