"""The per-sample floor: the homework's SGD step written straight, in as few numpy calls as it takes.

mnist-sigmoid-per-sample is dense-sigmoid-dense-sigmoid-dense, softmax cross-entropy, SGD, batch 1.
Here its step is one loop body with the reference's own formulas, in the reference's order, so the
parameters come out the same bit for bit (tests/test_benchmarks.py), but with no layers, caches,
dictionaries, checks or loss value: what numpy itself costs per step on this machine, the bar the
reference's per-sample step is measured against (as the GEMM limit is for the batched epoch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reference.layers import sigmoid, softmax

NAMES = ("dense_1.W", "dense_1.b", "dense_2.W", "dense_2.b", "dense_3.W", "dense_3.b")


def straight_epoch(params: dict[str, np.ndarray], lr: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    """train(x, y, order): per-sample SGD over x[order], updating `params` (the live arrays) in place."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in NAMES)

    def train(x: np.ndarray, y: np.ndarray, order: np.ndarray) -> None:
        nonlocal W1, b1, W2, b2, W3, b3  # updated in place (-=), never rebound
        for i in order:
            x1 = x[i : i + 1]  # (1, 784)
            h1 = sigmoid(x1 @ W1 + b1)  # (1, 32)
            h2 = sigmoid(h1 @ W2 + b2)  # (1, 32)
            g = softmax(h2 @ W3 + b3)  # (1, 10): dL/dz = softmax(z) - onehot(y), batch 1: no division
            g[0, y[i]] -= 1
            dW3, db3, g = np.dot(h2.T, g), g.sum(axis=0), g @ W3.T
            g = g * h2 * (1 - h2)
            dW2, db2, g = np.dot(h1.T, g), g.sum(axis=0), g @ W2.T
            g = g * h1 * (1 - h1)
            dW1, db1 = np.dot(x1.T, g), g.sum(axis=0)
            W1 -= lr * dW1
            b1 -= lr * db1
            W2 -= lr * dW2
            b2 -= lr * db2
            W3 -= lr * dW3
            b3 -= lr * db3

    return train
