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


def conv_gemm_epoch(spec: ModelSpec, order: np.ndarray, batch_size: int, seed: int = 0) -> Callable[[], None]:
    """The GEMMs of one epoch of a CNN `spec` (reference/conv.py's fast forms), back to back.

    Per batch, for every conv2d layer (F filters over C channels, kernel KH x KW, output OH x OW,
    P = b OH OW positions) the three products of reference/conv.py:
        forward    W2 (F, KH KW C) @ cols (KH KW C, P)          out
        backward   g_T (F, P) @ cols^T (P, KH KW C)             dL/dW
                   W2^T (KH KW C, F) @ g_T (F, P)               dL/d(cols), every conv layer but the first
    and for every dense layer those of gemm_epoch. Nothing else: no im2col copy, no col2im, no
    pooling, no activation, no loss, no update.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    shape = spec.sample_shape
    shapes = spec.layer_shapes()
    products: list[tuple[str, tuple[int, ...]]] = []  # (kind, dims) per conv or dense layer, in order
    for layer, out_shape in zip(spec.layers, shapes):
        if layer.kind == "conv2d":
            (kh, kw), _, _ = layer.pairs()
            products.append(("conv", (layer.filters, kh * kw * shape[0], out_shape[1] * out_shape[2])))
        elif layer.kind == "dense":
            products.append(("dense", (shape[0], layer.units)))
        shape = out_shape
    sizes = [len(idx) for idx in batches(order, batch_size)]

    def operands(b: int) -> list[tuple[np.ndarray, ...]]:
        """Per layer: (A, B, out) triples for its forward, dW and (if needed) d-input products."""
        per_layer = []
        for k, (kind, dims) in enumerate(products):
            if kind == "conv":
                f, kdim, hw = dims
                W2, cols, g = (rng.normal(size=s).astype(dtype) for s in ((f, kdim), (kdim, b * hw), (f, b * hw)))
                triples = [(W2, cols, np.empty((f, b * hw), dtype)), (g, cols.T, np.empty((f, kdim), dtype))]
                if k > 0:
                    triples.append((W2.T, g, np.empty((kdim, b * hw), dtype)))
            else:
                n_in, n_out = dims
                h, W, g = (rng.normal(size=s).astype(dtype) for s in ((b, n_in), (n_in, n_out), (b, n_out)))
                triples = [(h, W, np.empty((b, n_out), dtype)), (h.T, g, np.empty((n_in, n_out), dtype))]
                if k > 0:
                    triples.append((g, W.T, np.empty((b, n_in), dtype)))
            per_layer.append(triples)
        return per_layer

    per_size = {b: operands(b) for b in set(sizes)}

    def epoch() -> None:
        for b in sizes:
            for triples in per_size[b]:
                for A, B, out in triples:
                    np.matmul(A, B, out=out)

    return epoch
