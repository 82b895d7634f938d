"""The oracles the reference is checked against: torch and keras twins, finite differences.

twin = make_twin("torch" | "keras", spec, params)     the same model in a framework (kinds: TWIN_KINDS)
twin.trace(x, y) -> Trace                             the same record as the reference
class Twin                                            the whole API (step, train_epoch, evaluate, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from reference.errors import ShapeError, describe
from reference.trace import Trace

TWIN_KINDS = ("torch", "keras")
OnStep = Callable[[int, float], None] | None  # train_epoch's callback: (step index, that step's loss)


class Twin(Protocol):
    """The twin API, which both twins implement (and tests/test_parity.py checks for every kind)."""

    kind: str

    def trace(self, x: np.ndarray, y: np.ndarray, train: bool = True, masks: dict | None = None) -> Trace: ...
    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray: ...
    def step(self, x: np.ndarray, y: np.ndarray, masks: dict | None = None) -> float: ...
    def train_epoch(
        self, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int, on_step: OnStep = None
    ) -> float: ...
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 10_000) -> tuple[float, float]: ...
    def get_params(self) -> dict[str, np.ndarray]: ...
    def set_params(self, params: dict[str, np.ndarray]) -> None: ...
    def get_state(self) -> dict[str, np.ndarray]: ...
    def set_state(self, state: dict[str, np.ndarray]) -> None: ...


def check_epoch(x: np.ndarray, order, batch_size, where: str) -> np.ndarray:
    """The arguments of a twin's train_epoch, checked alike: a batch size >= 1 and an integer order of
    1..len(x) row indices, each in [0, len(x)). Returns the order as an array."""
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ShapeError(f"{where}: expected a batch size >= 1, got {batch_size!r}")
    order = np.asarray(order)
    if order.ndim != 1 or len(order) == 0 or len(order) > len(x) or order.dtype.kind not in "iu":
        raise ShapeError(f"{where}: expected an order of 1..{len(x)} integer row indices, got {describe(order)}")
    if order.min() < 0 or order.max() >= len(x):
        raise ShapeError(f"{where}: order indices must lie in [0, {len(x)}), got {order.min()}..{order.max()}")
    return order


def make_twin(kind: str, spec, params, seed: int = 0, threads: int = 1) -> Twin:
    """A framework twin of `spec` holding exactly `params` (canonical numpy layout).

    threads: torch's intra-op threads while the torch twin trains. TensorFlow's thread pools are
    process-wide and fixed before its first op, so the keras twin leaves them to the caller
    (oracles.keras_twin.limit_tensorflow_threads).
    """
    if kind == "torch":
        from oracles.torch_twin import TorchTwin

        return TorchTwin(spec, params, seed=seed, threads=threads)
    if kind == "keras":
        from oracles.keras_twin import KerasTwin

        return KerasTwin(spec, params, seed=seed)
    raise ValueError(f"unknown twin {kind!r}; twins are {TWIN_KINDS}")
