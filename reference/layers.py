"""Layers with hand-written backward passes.

The contract, stated once for every layer in this file:

    out, cache = layer.forward(x, train)      x (batch, n_in) -> out (batch, n_out); images (batch, C, H, W)
                                              -> (batch, F, OH, OW); element-wise layers keep any shape
    dL_dx, grads = layer.backward(dL_dout, cache)
                                              grads: {"W": dL/dW, "b": dL/db} (or {"gamma", "beta"});
                                              {} for layers without parameters
    grads = layer.param_grads(dL_dout, cache) the same grads without dL_dx (the network's first
                                              layer in training: nobody needs dL/d(input))
    layer.params                              {name: array}; the optimiser updates these in place

`forward` never changes parameters; BatchNorm in training mode updates its running statistics
(`layer.state`), as torch and keras do. `cache` holds what `backward` needs and nothing else.
Every array keeps the dtype it came with: nothing here upcasts.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from reference import conv
from reference.errors import ShapeError, SpecError, describe


class Layer:
    name: str = "layer"
    params: dict[str, np.ndarray]

    def __init__(self, name: str) -> None:
        self.name = name
        self.params = {}

    def forward(self, x: np.ndarray, train: bool = True) -> tuple[np.ndarray, object]:
        raise NotImplementedError

    def backward(self, dL_dout: np.ndarray, cache: object) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def param_grads(self, dL_dout: np.ndarray, cache: object) -> dict[str, np.ndarray]:
        """The parameter gradients of `backward`, for a caller that does not need dL/dx."""
        return self.backward(dL_dout, cache)[1]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{v.shape}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name}{', ' + shapes if shapes else ''})"


class Dense(Layer):
    def __init__(self, name: str, W: np.ndarray, b: np.ndarray) -> None:
        super().__init__(name)
        if W.ndim != 2 or b.shape != (W.shape[1],) or W.dtype != b.dtype:
            raise ShapeError(
                f"{name}: expected W (n_in, n_out) and b (n_out,) of one dtype, got W {describe(W)}, b {describe(b)}"
            )
        self.params = {"W": W, "b": b}

    def forward(self, x, train=True):
        """out = x @ W + b"""
        W, b = self.params["W"], self.params["b"]
        if x.ndim != 2 or x.shape[1] != W.shape[0]:
            raise ShapeError(f"{self.name}: expected input of shape (batch, {W.shape[0]}), got {describe(x)}")
        out = np.dot(x, W)  # (batch, n_out): x @ W, with less call overhead (tests/test_fast_forms.py pins the two)
        out += b  # x @ W + b, without a second (batch, n_out) array
        return out, x

    def backward(self, dL_dout, x):
        """dL/dW = x^T g,  dL/db = sum_batch g,  dL/dx = g W^T"""
        return np.dot(dL_dout, self.params["W"].T), self.param_grads(dL_dout, x)  # (batch, n_in): g @ W^T

    def param_grads(self, dL_dout, x):
        """dL/dW = x^T g,  dL/db = sum_batch g"""
        # np.dot(x.T, g) is x.T @ g; for a batch of 1 (an outer product, k = 1) numpy's matmul does
        # not call BLAS and is ~4x slower (tests/test_fast_forms.py pins the two together).
        # dL/db before the big product, not after it: right after a GEMM a small pass costs 3-5x more.
        dL_db = dL_dout.sum(axis=0)  # (n_out,)
        dL_dW = np.dot(x.T, dL_dout)  # (n_in, n_out)
        return {"W": dL_dW, "b": dL_db}


class ReLU(Layer):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.work = conv.Workspace()  # out, mask and dL/dx handed out again from step to step when free

    def forward(self, x, train=True):
        """out = max(x, 0)"""
        return np.maximum(x, self.zeros(x), out=self.work.empty_like("out", x)), x

    def zeros(self, x: np.ndarray) -> np.ndarray:
        """A kept array of zeros of one sample's shape (x.shape[1:]), to broadcast over the batch.

        np.maximum(x, zeros) gives np.maximum(x, 0)'s numbers bit for bit (NaN and -0.0 included;
        tests/test_fast_forms.py) at about twice its speed: numpy 2.4's loop for a scalar operand
        is not vectorised, its loop for two arrays is.
        """
        z = self.work.arrays.get("zeros")
        if z is None or z.shape != x.shape[1:] or z.dtype != x.dtype:
            z = self.work.arrays["zeros"] = np.zeros(x.shape[1:], x.dtype)
        return z

    def backward(self, dL_dout, x):
        """dL/dx = g * [x > 0]   (the subgradient at 0 is 0, as in torch and keras)"""
        mask = np.greater(x, 0, out=self.work.empty_like("mask", x, bool))
        return np.multiply(dL_dout, mask, out=self.work.empty_like("grad", dL_dout)), {}


class LeakyReLU(Layer):
    def __init__(self, name: str, alpha: float) -> None:
        super().__init__(name)
        self.alpha = alpha

    def forward(self, x, train=True):
        """out = x if x > 0 else alpha * x"""
        return np.where(x > 0, x, self.alpha * x), x

    def backward(self, dL_dout, x):
        """dL/dx = g * (1 if x > 0 else alpha)"""
        return dL_dout * np.where(x > 0, 1, self.alpha).astype(dL_dout.dtype), {}


def _kept_ones() -> dict[np.dtype, np.ndarray]:
    ones = {}
    for t in (np.float32, np.float64):
        one = np.ones((), t)
        one.flags.writeable = False
        ones[np.dtype(t)] = one
    return ones


_ONES = _kept_ones()


def one_like(x: np.ndarray) -> np.ndarray | int:
    """1 in x's dtype, a kept read-only 0-d array (Python's 1 for other dtypes): `one_like(x) - x` is
    `1 - x` to the bit, without numpy converting a Python scalar on every call (0.3-0.6 us at batch 1)."""
    return _ONES.get(x.dtype, 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """s = 1 / (1 + exp(-x)), computed from exp(-|x|) so no exp ever overflows."""
    z = np.exp(-np.abs(x))  # in [0, 1]
    # x >= 0: 1 / (1 + exp(-x));  x < 0: exp(x) / (1 + exp(x)). One division for both branches, the
    # numerator max(z, sign(x)): 1 for x > 0 (z <= 1), z for x < 0 (z >= 0 > -1), max(1, +-0) = 1 = z at
    # x = +-0, z's NaN for a NaN: np.where(x >= 0, 1 / (1 + z), z / (1 + z)) bit for bit (tests/
    # test_fast_forms.py). sign and maximum are plain vectorised float loops; np.where(x >= 0, 1, z) cost
    # 3.8 us to this form's 2.2 at (1, 32) (AMD EPYC), 10.7 to 8.8 at (128, 32) float32.
    return np.maximum(z, np.sign(x)) / (one_like(z) + z)


class Sigmoid(Layer):
    def forward(self, x, train=True):
        """out = 1 / (1 + exp(-x))"""
        s = sigmoid(x)
        return s, s

    def backward(self, dL_dout, s):
        """dL/dx = g * s * (1 - s)"""
        return dL_dout * s * (one_like(s) - s), {}


class Tanh(Layer):
    def forward(self, x, train=True):
        """out = tanh(x)"""
        t = np.tanh(x)
        return t, t

    def backward(self, dL_dout, t):
        """dL/dx = g * (1 - t^2)"""
        return dL_dout * (one_like(t) - t * t), {}


def softmax(x: np.ndarray) -> np.ndarray:
    """s_i = exp(x_i - max x) / sum_j exp(x_j - max x), row by row."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Softmax(Layer):
    def forward(self, x, train=True):
        """out = softmax(x) along the last axis"""
        s = softmax(x)
        return s, s

    def backward(self, dL_dout, s):
        """dL/dx = J^T g with J = diag(s) - s s^T, i.e. s * (g - <g, s>) row by row"""
        return s * (dL_dout - (dL_dout * s).sum(axis=-1, keepdims=True)), {}


class Dropout(Layer):
    """Inverted dropout: in training, out = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate).

    keep given (CS231n's p, the keep probability): out = x * mask / keep, mask ~ Bernoulli(keep),
    drawn as `random < keep` (the course's `rand(*shape) < p`). The divisor is `keep` itself, not
    1 - (1 - keep): for p = 0.3 those differ in the last bit (1 - 0.7 = 0.30000000000000004).
    """

    def __init__(self, name: str, rate: float | None, rng: np.random.Generator, keep: float | None = None) -> None:
        super().__init__(name)
        if keep is not None:
            if not 0 < keep <= 1:
                raise SpecError(f"{name}: keep must be a probability in (0, 1], got {keep!r}")
            if rate is not None and abs(rate - (1 - keep)) > 1e-12:
                raise SpecError(f"{name}: rate {rate!r} and keep {keep!r} disagree (rate = 1 - keep); give one")
            rate = 1 - keep
        elif rate is None:
            raise SpecError(f"{name}: expected a rate or a keep probability, got neither")
        self.rate, self.keep = rate, keep
        self.rng = rng

    @property
    def keep_prob(self) -> float:
        """The divisor of inverted dropout: keep if given, else 1 - rate (a Python float)."""
        return 1 - self.rate if self.keep is None else self.keep

    def draw_mask(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A 0/1 keep-mask from this layer's seeded generator (hand it to a twin to share it)."""
        if self.keep is not None:
            return (self.rng.random(shape) < self.keep).astype(dtype)
        return (self.rng.random(shape) >= self.rate).astype(dtype)

    def forward(self, x, train=True, mask=None):
        """train: out = x * mask / (1 - rate)  (or x * mask / keep);  eval: out = x"""
        if not train or self.rate == 0:
            return x, None
        if mask is None:
            mask = self.draw_mask(x.shape, x.dtype)
        elif mask.shape != x.shape:
            raise ShapeError(f"{self.name}: expected a mask of shape {x.shape}, got {describe(mask)}")
        scale = mask.astype(x.dtype) / x.dtype.type(self.keep_prob)
        return x * scale, scale

    def backward(self, dL_dout, scale):
        """dL/dx = g * mask / (1 - rate)  (or g * mask / keep; identity in eval mode)"""
        return (dL_dout if scale is None else dL_dout * scale), {}


def cs231n_dropout_mask(shape: tuple[int, ...], p: float, seed: int, dtype) -> np.ndarray:
    """mask = rand(*shape) < p after np.random.seed(seed), CS231n's draw, without touching np.random's global state."""
    # np.random.seed(seed) reseeds the global RandomState (MT19937); a fresh RandomState(seed) is the
    # same stream, so its rand() gives the skeleton's numbers (tests/test_layers.py pins the two).
    return (np.random.RandomState(seed).rand(*shape) < p).astype(dtype)


class BatchNorm(Layer):
    """Batch normalisation over the batch axis (BatchNorm1d), affine, with running statistics.

    Training normalises with the batch mean and the biased batch variance. Running statistics:
      torch:   running = (1 - m) * running + m * batch_stat, m = 0.1, the *unbiased* variance, eps 1e-5
      keras:   running = m * running + (1 - m) * batch_stat, m = 0.99, the biased variance, eps 1e-3
      cs231n:  as keras with m = 0.9, eps 1e-5, running mean AND variance starting at zeros (the
               course's bn_param.get("running_var", np.zeros(D)))
      mytorch: as keras with alpha m = 0.9, eps 1e-8, running mean 0 and variance 1 (CMU 11-785 BatchNorm1d)
    torch and keras start at running mean 0, variance 1. Evaluation normalises with the running statistics.
    """

    DEFAULTS: ClassVar[dict[str, tuple[float, float]]] = {
        "torch": (0.1, 1e-5),
        "keras": (0.99, 1e-3),
        "cs231n": (0.9, 1e-5),
        "mytorch": (0.9, 1e-8),
    }
    INITIAL_VAR: ClassVar[dict[str, float]] = {"torch": 1.0, "keras": 1.0, "cs231n": 0.0, "mytorch": 1.0}

    def __init__(self, name: str, n: int, dtype, convention="torch", momentum=None, eps=None) -> None:
        super().__init__(name)
        if convention not in self.DEFAULTS:
            raise SpecError(f"{name}: convention must be one of {tuple(self.DEFAULTS)}, got {convention!r}")
        self.convention = convention
        self.momentum, self.eps = self.resolve(convention, momentum, eps)
        self.params = {"gamma": np.ones(n, dtype), "beta": np.zeros(n, dtype)}
        self.state = {
            "running_mean": np.zeros(n, dtype),
            "running_var": np.full(n, self.INITIAL_VAR[convention], dtype),
        }

    @classmethod
    def resolve(cls, convention: str, momentum: float | None, eps: float | None) -> tuple[float, float]:
        """(momentum, eps): the given values, or the convention's defaults where None (the twins read these)."""
        m0, e0 = cls.DEFAULTS[convention]
        return (m0 if momentum is None else momentum), (e0 if eps is None else eps)

    def forward(self, x, train=True):
        """out = gamma * (x - mu) / sqrt(var + eps) + beta"""
        gamma, beta = self.params["gamma"], self.params["beta"]
        if x.ndim != 2 or x.shape[1] != gamma.shape[0]:
            raise ShapeError(f"{self.name}: expected input of shape (batch, {gamma.shape[0]}), got {describe(x)}")
        if not train:
            x_hat = (x - self.state["running_mean"]) / np.sqrt(self.state["running_var"] + self.eps)
            return gamma * x_hat + beta, ("eval", x_hat, self.state["running_var"].copy())
        n = x.shape[0]
        if n < 2:
            raise ShapeError(f"{self.name}: training mode needs a batch of at least 2, got {describe(x)}")
        mu = x.mean(axis=0)
        var = ((x - mu) ** 2).mean(axis=0)  # biased
        x_hat = (x - mu) / np.sqrt(var + self.eps)
        self._update_running(mu, var, n)
        return gamma * x_hat + beta, ("train", x_hat, var)

    def _update_running(self, mu, var, n):
        m, s = self.momentum, self.state
        if self.convention == "torch":
            s["running_mean"][...] = (1 - m) * s["running_mean"] + m * mu
            s["running_var"][...] = (1 - m) * s["running_var"] + m * var * (n / (n - 1))
        else:  # keras, cs231n, mytorch: the momentum weighs the old statistic, the batch's is biased
            s["running_mean"][...] = m * s["running_mean"] + (1 - m) * mu
            s["running_var"][...] = m * s["running_var"] + (1 - m) * var

    def backward(self, dL_dout, cache):
        """train: dL/dx = gamma / (N sigma) * (N g - sum g - x_hat sum(g x_hat));  eval: gamma g / sigma"""
        mode, x_hat, var = cache
        gamma = self.params["gamma"]
        grads = {"gamma": (dL_dout * x_hat).sum(axis=0), "beta": dL_dout.sum(axis=0)}
        inv_sigma = 1 / np.sqrt(var + self.eps)
        if mode == "eval":
            return dL_dout * gamma * inv_sigma, grads
        n = dL_dout.shape[0]
        dL_dx = (gamma * inv_sigma / n) * (n * dL_dout - grads["beta"] - x_hat * grads["gamma"])
        return dL_dx, grads


class LayerNorm(Layer):
    """Layer normalisation: each sample normalised over its features (torch's nn.LayerNorm(n), affine).

    mu and var (biased) are per row, over the n features; gamma and beta are per feature. There are
    no running statistics: training and evaluation compute the same function, a batch of 1 included.
    """

    EPS: ClassVar[float] = 1e-5  # torch's nn.LayerNorm default (and CS231n's); keras' LayerNormalization: 1e-3

    def __init__(self, name: str, n: int, dtype, eps: float = EPS) -> None:
        super().__init__(name)
        self.eps = eps
        self.params = {"gamma": np.ones(n, dtype), "beta": np.zeros(n, dtype)}

    def forward(self, x, train=True):
        """out = gamma * (x - mu_row) / sqrt(var_row + eps) + beta"""
        gamma, beta = self.params["gamma"], self.params["beta"]
        if x.ndim != 2 or x.shape[1] != gamma.shape[0]:
            raise ShapeError(f"{self.name}: expected input of shape (batch, {gamma.shape[0]}), got {describe(x)}")
        mu = x.mean(axis=1, keepdims=True)  # (batch, 1)
        var = ((x - mu) ** 2).mean(axis=1, keepdims=True)  # biased, (batch, 1)
        inv_sigma = 1 / np.sqrt(var + self.eps)
        x_hat = (x - mu) * inv_sigma  # (batch, n)
        return gamma * x_hat + beta, (x_hat, inv_sigma)

    def backward(self, dL_dout, cache):
        """dL/dx = 1 / (D sigma) * (D h - sum_row h - x_hat sum_row(h x_hat)), h = gamma g;  dgamma = sum g x_hat"""
        x_hat, inv_sigma = cache
        grads = {"gamma": (dL_dout * x_hat).sum(axis=0), "beta": dL_dout.sum(axis=0)}
        h = dL_dout * self.params["gamma"]  # dL/dx_hat
        d = x_hat.shape[1]
        dL_dx = (inv_sigma / d) * (
            d * h - h.sum(axis=1, keepdims=True) - x_hat * (h * x_hat).sum(axis=1, keepdims=True)
        )
        return dL_dx, grads


# Images: NCHW, x (batch, C, H, W); the maths in reference/conv.py -----------------------------


class Conv2D(Layer):
    """Cross-correlation with F filters W (F, C, KH, KW), bias b (F,), stride and zero padding."""

    def __init__(self, name: str, W: np.ndarray, b: np.ndarray, stride, padding) -> None:
        super().__init__(name)
        if W.ndim != 4 or b.shape != (W.shape[0],) or W.dtype != b.dtype:
            raise ShapeError(
                f"{name}: expected W (F, C, KH, KW) and b (F,) of one dtype, got W {describe(W)}, b {describe(b)}"
            )
        self.params = {"W": W, "b": b}
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.work = conv.Workspace()  # arrays handed out again from step to step (see conv.Workspace)

    def forward(self, x, train=True):
        """out[n, f, i, j] = b[f] + sum_{c,u,v} W[f, c, u, v] xp[n, c, i sh + u, j sw + v]"""
        W = self.params["W"]
        if x.ndim != 4 or x.shape[1] != W.shape[1]:
            raise ShapeError(f"{self.name}: expected input of shape (batch, {W.shape[1]}, H, W), got {describe(x)}")
        out, cols = conv.conv2d_forward(x, W, self.params["b"], self.stride, self.padding, self.work)
        return out, (x.shape, cols)  # out (batch, F, OH, OW)

    def backward(self, dL_dout, cache):
        """dL/dW = sum g (x) window,  dL/db = sum_{n,i,j} g,  dL/dx = col2im(g W)"""
        x_shape, _ = cache
        dL_dx = conv.conv2d_input_grad(dL_dout, self.params["W"], x_shape, self.stride, self.padding, self.work)
        return dL_dx, self.param_grads(dL_dout, cache)  # (batch, C, H, W)

    def param_grads(self, dL_dout, cache):
        """dL/dW[f,c,u,v] = sum_{n,i,j} g[n,f,i,j] xp[n,c,i sh+u,j sw+v],  dL/db = sum_{n,i,j} g"""
        dL_dW, dL_db = conv.conv2d_param_grads(dL_dout, cache[1], self.params["W"])
        return {"W": dL_dW, "b": dL_db}


class MaxPool2D(Layer):
    """Max over PH x PW windows; ties: the gradient goes to the first maximum in row-major order."""

    def __init__(self, name: str, pool, stride) -> None:
        super().__init__(name)
        self.pool, self.stride = tuple(pool), tuple(stride)
        self.work = conv.Workspace()  # arrays handed out again from step to step (see conv.Workspace)

    def forward(self, x, train=True):
        """out[n, c, i, j] = max_{u, v} x[n, c, i sh + u, j sw + v]"""
        _check_images(self.name, x)
        out, chosen = conv.maxpool2d_forward(x, self.pool, self.stride, self.work)
        return out, (x, chosen)

    def backward(self, dL_dout, cache):
        """dL/dx[window's first argmax] += g (every other element of the window gets 0)"""
        x, chosen = cache
        return conv.maxpool2d_backward(dL_dout, chosen, x.shape, self.pool, self.stride, like=x, work=self.work), {}


class AvgPool2D(Layer):
    """Mean over PH x PW windows."""

    def __init__(self, name: str, pool, stride) -> None:
        super().__init__(name)
        self.pool, self.stride = tuple(pool), tuple(stride)

    def forward(self, x, train=True):
        """out[n, c, i, j] = sum_{u, v} x[n, c, i sh + u, j sw + v] / (PH PW)"""
        _check_images(self.name, x)
        return conv.avgpool2d_forward(x, self.pool, self.stride), x.shape

    def backward(self, dL_dout, x_shape):
        """dL/dx[window] += g / (PH PW)"""
        return conv.avgpool2d_backward(dL_dout, x_shape, self.pool, self.stride), {}


class Flatten(Layer):
    """(batch, C, H, W) -> (batch, C H W) in C order: feature c H W + h W + w (torch's nn.Flatten)."""

    def forward(self, x, train=True):
        """out[n, (c, h, w)] = x[n, c, h, w]"""
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, dL_dout, x_shape):
        """dL/dx = g reshaped back to the input's shape"""
        return dL_dout.reshape(x_shape), {}


def _check_images(name: str, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected input of shape (batch, C, H, W), got {describe(x)}")
