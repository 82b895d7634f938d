"""The test suite's one comparison helper, reading the one tolerance policy (oracles/compare.py).

    close(name, mine, theirs, dtype, quantity, oracle="twin") -> Row       the verdict, not asserted
    assert_close(name, mine, theirs, dtype, quantity, oracle="twin", names=("mine", "theirs"))
        shape, then dtype (unless check_dtype=False), then finiteness, then values: within
        tolerance(oracle, dtype, quantity) relative to the tensor's largest magnitude, or under the
        absolute floor atol(oracle, dtype); an AssertionError names the tensor, the worst element,
        mine vs theirs and the error against the bar. Returns the Row.
    strict_fp()              overflow, division by zero and invalid operations raise; so does any warning
    reference_state(net)     a Network's batchnorm running statistics, named as the twins name them
    has_kind(spec, kind)     whether a ModelSpec has a layer of that kind
    mnist_for(mnist, spec, n)            the first n rows of epoch 1's order, preprocessed for spec
    epoch_sizes()                        a few thousand rows by default, the full epoch with --mnist

Everything here is numpy and the reference: the numpy-only test run (tox -e reference) imports it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from oracles.compare import Row, atol, compare_arrays, tolerance
from reference.layers import BatchNorm
from reference.network import Network


def close(
    name: str,
    mine,
    theirs,
    dtype="float64",
    quantity: str = "gradient",
    oracle: str = "twin",
    check_dtype: bool = True,
) -> Row:
    """compare_arrays against the policy's bar and floor for (oracle, dtype, quantity)."""
    bar, floor = tolerance(oracle, dtype, quantity), atol(oracle, dtype)
    return compare_arrays(name, mine, theirs, bar, check_dtype=check_dtype, atol=floor)


def assert_close(name: str, mine, theirs, *args, names: tuple[str, str] = ("mine", "theirs"), **kwargs) -> Row:
    """close(name, mine, theirs, ...) asserted: the failure message is the Row's description with `names`."""
    row = close(name, mine, theirs, *args, **kwargs)
    assert row.passed, row.describe(names)
    return row


@contextlib.contextmanager
def strict_fp() -> Iterator[None]:
    """Overflow, division by zero and invalid operations raise; so does any warning (underflow to 0 is fine)."""
    with np.errstate(over="raise", divide="raise", invalid="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def reference_state(net: Network) -> dict[str, np.ndarray]:
    """The reference's batchnorm running statistics, named as the twins name them."""
    return {
        f"{layer.name}.{k}": v.copy()
        for layer in net.layers
        if isinstance(layer, BatchNorm)
        for k, v in layer.state.items()
    }


def has_kind(spec, kind: str) -> bool:
    return any(layer.kind == kind for layer in spec.layers)


SMALL_EPOCH = 4096  # samples per "epoch" in the default run; --mnist runs the full 60,000


def mnist_for(mnist, spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n rows of epoch 1's order (data_loaders.epoch_orders), in that order, preprocessed
    as `spec` says; the batch order is then arange(n). `mnist`: the conftest fixture."""
    from data_loaders import epoch_orders, preprocess

    (x, y), _ = mnist
    rows = epoch_orders(len(x), 1, seed=seed)[0][:n]
    return preprocess(x[rows], spec.preprocess, spec.dtype), y[rows].astype(np.int64), np.arange(n)


def epoch_sizes() -> list:
    return [
        pytest.param(SMALL_EPOCH, id=f"first-{SMALL_EPOCH}"),
        pytest.param(60_000, id="full-epoch", marks=[pytest.mark.mnist, pytest.mark.slow]),
    ]
