"""The limit: the matrix products one batched epoch of a dense network needs, back to back.

Per batch of b rows, for every dense layer k (input h_{k-1} (b, n_in), weights W_k (n_in, n_out)):
    forward    h_{k-1} @ W_k              (b, n_out)
    backward   np.dot(h_{k-1}.T, g_k)     (n_in, n_out)   dL/dW_k
               g_k @ W_k.T                (b, n_in)       dL/dh_{k-1}, for every layer but the first
(the first layer's dL/dx is not needed to train). The same calls the reference makes
(reference/layers.py), into preallocated outputs: no activation, no loss, no update, no gather.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np

from reference.spec import ModelSpec
from reference.train import batches


def gemm_epoch(spec: ModelSpec, order: np.ndarray, batch_size: int, seed: int = 0) -> Callable[[], None]:
    """A function that runs the GEMMs of one epoch of `spec` over `order` in `batch_size` batches."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    widths = [spec.n_in] + [layer.units for layer in spec.layers if layer.kind == "dense"]
    weights = [rng.normal(size=(a, b)).astype(dtype) for a, b in pairwise(widths)]
    sizes = [len(idx) for idx in batches(order, batch_size)]

    def buffers(b: int) -> list[tuple[np.ndarray, ...]]:
        """(h_in, g, out, dW, dh) per layer for a batch of b rows."""
        return [
            (
                rng.normal(size=(b, W.shape[0])).astype(dtype),  # h_{k-1}
                rng.normal(size=(b, W.shape[1])).astype(dtype),  # g_k = dL/dh_k
                np.empty((b, W.shape[1]), dtype),
                np.empty(W.shape, dtype),
                np.empty((b, W.shape[0]), dtype),
            )
            for W in weights
        ]

    per_size = {b: buffers(b) for b in set(sizes)}

    def epoch() -> None:
        for b in sizes:
            layers = per_size[b]
            for W, (h, _, out, _, _) in zip(weights, layers):
                np.matmul(h, W, out=out)
            for k in range(len(weights) - 1, -1, -1):
                h, g, _, dW, dh = layers[k]
                np.dot(h.T, g, out=dW)
                if k > 0:
                    np.matmul(g, weights[k].T, out=dh)

    return epoch
