"""Named initialisers. Contract: init(rng, n_in, n_out) -> (W (n_in, n_out), b (n_out,)) in float64.

A conv2d layer (F filters over C channels, kernel KH x KW) is the GEMM of im2col: its kernel is
drawn as the (C KH KW, F) matrix, fan-in C KH KW, and reshaped to (F, C, KH, KW) (`conv_kernel`).
Glorot's fan-out is then F KH KW, as torch and keras count it (`receptive` below).

Every draw comes from the caller's seeded `numpy.random.Generator`, W before b, layer by layer, so
the same seed gives the same weights; the network casts to the spec's dtype afterwards (a float32
model starts from the float64 draw rounded once).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def normal_inv_max_fan(rng: np.random.Generator, n_in: int, n_out: int):
    """W ~ N(0, 1/max(n_in, n_out)), b = 0 (the per-sample homework)."""
    return rng.normal(0.0, np.sqrt(1.0 / max(n_in, n_out)), (n_in, n_out)), np.zeros(n_out)


def normal_std_inv_fan_in(rng: np.random.Generator, n_in: int, n_out: int):
    """W ~ N(0, (1/n_in)^2), b = 0 (the batched ReLU notebook: standard deviation 1/n_in)."""
    return rng.normal(0.0, 1.0 / n_in, (n_in, n_out)), np.zeros(n_out)


def small_normal(rng: np.random.Generator, n_in: int, n_out: int):
    """W = 0.01 * N(0, 1), b = 0 (the layer-API notebook: randn * 0.01)."""
    return rng.standard_normal((n_in, n_out)) * 0.01, np.zeros(n_out)


def uniform_01(rng: np.random.Generator, n_in: int, n_out: int):
    """W, b ~ U(-0.1, 0.1) (the digits lab draws the biases too)."""
    return rng.uniform(-0.1, 0.1, (n_in, n_out)), rng.uniform(-0.1, 0.1, n_out)


def glorot_normal(rng: np.random.Generator, n_in: int, n_out: int, receptive: int = 1):
    """W ~ N(0, 2/(n_in + n_out * receptive)), b = 0 (torch xavier_normal_; keras' GlorotNormal truncates)."""
    return rng.normal(0.0, np.sqrt(2.0 / (n_in + n_out * receptive)), (n_in, n_out)), np.zeros(n_out)


def glorot_uniform(rng: np.random.Generator, n_in: int, n_out: int, receptive: int = 1):
    """W ~ U(-a, a), a = sqrt(6/(n_in + n_out * receptive)), b = 0 (Glorot & Bengio 2010)."""
    a = np.sqrt(6.0 / (n_in + n_out * receptive))
    return rng.uniform(-a, a, (n_in, n_out)), np.zeros(n_out)


def he_normal(rng: np.random.Generator, n_in: int, n_out: int):
    """W ~ N(0, 2/n_in), b = 0 (He et al. 2015; keras' HeNormal truncates)."""
    return rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out)), np.zeros(n_out)


def he_uniform(rng: np.random.Generator, n_in: int, n_out: int):
    """W ~ U(-a, a), a = sqrt(6/n_in), b = 0."""
    a = np.sqrt(6.0 / n_in)
    return rng.uniform(-a, a, (n_in, n_out)), np.zeros(n_out)


INITIALIZERS: dict[str, Initializer] = {
    "normal_inv_max_fan": normal_inv_max_fan,
    "normal_std_inv_fan_in": normal_std_inv_fan_in,
    "small_normal": small_normal,
    "uniform_0.1": uniform_01,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
}


def conv_kernel(name: str, rng: np.random.Generator, shape: tuple[int, int, int, int]):
    """(W (F, C, KH, KW), b (F,)): initialiser `name` with fan-in C KH KW (and Glorot fan-out F KH KW)."""
    F, C, KH, KW = shape
    extra = {"receptive": KH * KW} if name.startswith("glorot") else {}
    W, b = INITIALIZERS[name](rng, C * KH * KW, F, **extra)  # (C KH KW, F): the im2col GEMM's matrix
    return np.ascontiguousarray(W.T).reshape(F, C, KH, KW), b
