"""The oracles the reference is checked against: torch and keras twins, finite differences.

twin = make_twin("torch" | "keras", spec, params)     the same model in a framework (kinds: TWIN_KINDS)
twin.trace(x, y) -> Trace                             the same record as the reference
"""

from __future__ import annotations

TWIN_KINDS = ("torch", "keras")


def make_twin(kind: str, spec, params, seed: int = 0, threads: int = 1):
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
