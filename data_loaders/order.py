"""One batch order for every framework: a seeded permutation per epoch, drawn once in numpy.

    orders = epoch_orders(n, epochs, seed)      [perm_epoch_1, perm_epoch_2, ...], int64 (n,) each
    for idx in reference.train.batches(order, batch_size): ... x[idx], y[idx] ...

The same list is handed to the reference and to every twin (`train_epoch(x, y, order, batch_size)`),
for per-sample (batch_size=1) and batched training alike, so they all see the same rows in the same
batches in the same sequence. numpy.random.default_rng (PCG64) makes the draw reproducible for a
numpy version; numpy does not promise the same stream across versions, so a test pins a checksum of
the orders and says so if an upgrade changes them.
"""

from __future__ import annotations

import numpy as np


def epoch_orders(n: int, epochs: int, seed: int = 0) -> list[np.ndarray]:
    """`epochs` permutations of range(n) from numpy.random.default_rng(seed), one per epoch."""
    if int(n) != n or n < 1 or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epoch_orders: expected n >= 1 and epochs >= 0, got n={n!r}, epochs={epochs!r}")
    rng = np.random.default_rng(seed)
    return [rng.permutation(int(n)).astype(np.int64) for _ in range(int(epochs))]
