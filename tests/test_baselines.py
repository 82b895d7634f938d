"""Golden baselines: the numbers the numpy reference computes today, for every preset and dtype.

Someone changes the numpy core (a faster backward, a new layer, a refactor); these tests say at once
whether any number moved, which one, and by how much.

What is recorded, per preset x dtype, in tests/test_baselines/<preset>-<dtype>.npz (pytest-regressions'
`ndarrays_regression`, compressed .npz):

    trace.<tensor>    every tensor of net.trace(x, y) on the first TRACE_ROWS training rows, in train
                      mode: forward outputs, the loss, grad_out / dW / db / grad_in of every layer
                      (Trace.as_dict(), the names `compare` uses: trace.dense_1.out ... trace.dense_1.grad_in)
    steps.loss        the loss before each of the first STEPS optimiser steps
    steps.<param>     the parameters after those STEPS steps
    dtypes            "key:dtype" for every array (the fixture alone treats float32 == float64)

Set-up, fixed: Network(spec, seed=0) (the preset's initialiser), make_optimizer(spec.optimizer), the
preset's batch size, rows taken in file order (order = arange), real data: the first rows of the
MNIST training set (the pinned wheel, checksum-verified by data_loaders) or of the 8x8 digits
training split, preprocessed by data_loaders.preprocess with the preset's rule, in the dtype (a
standardisation is fitted on the whole training split, as data_loaders.load_for_spec fits it).

Tolerance: the "twin" entries of oracles/compare.py (TOLERANCE and ATOL), applied with compare's own
measure, max|now - baseline| / max(|now|, |baseline|) per tensor. Why the twin bar: a baseline is the
same function, from the same weights, in the same dtype and the same code path, so the only
legitimate differences are those a twin shows: rounding from a different summation order (another
BLAS kernel or CPU, another thread split). Anything bigger is a change in the maths. A stricter bar
(bit equality) would fail on another machine; a looser one (the numeric or submission entries) would
let a 1e-9 error in a gradient through, and that is exactly what tests here show it catches.

A failure names preset, dtype and tensor, the first tensor that moved in computation order (where the
change is), the worst element now vs baseline and the relative error against the tolerance.

Regenerate after an intended change (the failure lists what moved; review with git diff --stat):

    pytest tests/test_baselines.py --force-regen       # rewrites the files that moved, fails those tests
    pytest tests/test_baselines.py                     # passes
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from oracles.compare import Row, atol, compare_arrays, quantity_of, tolerance
from reference import Network, make_optimizer, preset
from reference.layers import Dense, Sigmoid
from reference.spec import PRESETS, ModelSpec
from reference.train import batches, train_step

pytest.importorskip("pytest_regressions", reason="golden baselines need pytest-regressions")

BASELINES = Path(__file__).with_suffix("")  # tests/test_baselines/, pytest-regressions' data dir
TRACE_ROWS = 8  # the trace is taken on the first 8 training rows
STEPS = 20  # optimiser steps from the initial parameters
SEED = 0  # Network(spec, seed=SEED)
REGEN = "pytest tests/test_baselines.py --force-regen"
CASES = [(name, dtype) for name in PRESETS for dtype in ("float32", "float64")]


@functools.cache
def training_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The training split of `dataset` ("mnist" or "digits"): canonical uint8 images, int64 labels."""
    try:
        from data_loaders import load_digits, load_mnist
        from data_loaders.errors import DataNotFoundError
    except ImportError as e:  # pragma: no cover - the data package is part of the repository
        pytest.skip(f"golden baselines use real data: {e}")
    try:
        (x, y), _ = load_mnist() if dataset == "mnist" else load_digits()
    except (DataNotFoundError, ImportError) as e:
        pytest.skip(f"golden baselines use real {dataset} rows, not available here: {e}")
    return x, y.astype(np.int64)


def inputs(spec: ModelSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n training rows of the spec's dataset, preprocessed as the spec says, in its dtype."""
    from data_loaders import fit_preprocessing, preprocess

    x, y = training_set(spec.dataset)
    fitted = fit_preprocessing(x, spec.preprocess, spec.dtype)  # standardise: the training split's statistics
    x = preprocess(x[:n], spec.preprocess, spec.dtype, fitted)
    return (x if spec.input_shape is None else x.reshape(-1, *spec.input_shape)), y[:n]


def baseline_arrays(name: str, dtype: str) -> dict[str, np.ndarray]:
    """Everything recorded for one preset and dtype, in computation order (see the module doc)."""
    spec = preset(name, dtype=dtype)
    x, y = inputs(spec, max(TRACE_ROWS, STEPS * spec.batch_size))
    data = {
        f"trace.{k}": v for k, v in Network(spec, seed=SEED).trace(x[:TRACE_ROWS], y[:TRACE_ROWS]).as_dict().items()
    }
    net, opt = Network(spec, seed=SEED), make_optimizer(spec.optimizer)
    losses = [
        train_step(net, opt, x[idx], y[idx]) for idx in batches(np.arange(STEPS * spec.batch_size), spec.batch_size)
    ]
    data["steps.loss"] = np.array(losses, dtype=dtype)
    data.update({f"steps.{k}": v for k, v in net.get_params().items()})
    return data


def quantity(key: str) -> str:
    """'trace.dense_1.dW' -> 'gradient', 'steps.loss' -> 'loss', 'steps.dense_1.W' -> 'parameters'."""
    kind, rest = key.split(".", 1)
    if kind == "trace":
        return quantity_of(rest)
    return "loss" if rest == "loss" else "parameters"


def compare_to_baseline(now: dict[str, np.ndarray], stored: Path, dtype: str) -> list[Row]:
    """One row per key of `now` against the stored file, by the twin policy (compare_arrays)."""
    with np.load(stored) as f:
        baseline = {k: f[k] for k in f.files if k != "dtypes"}
    rows = []
    for key, a in now.items():
        if key not in baseline:
            rows.append(Row(key, 0.0, passed=False, note="new: not in the baseline"))
            continue
        tol = tolerance("twin", dtype, quantity(key))
        rows.append(compare_arrays(key, a, baseline[key], tol, check_dtype=True, atol=atol("twin", dtype)))
    rows += [
        Row(k, 0.0, passed=False, note="missing: in the baseline, not computed now") for k in baseline if k not in now
    ]
    return rows


def summary(rows: list[Row], name: str, dtype: str) -> str:
    """'golden baseline moved: preset P, dtype D: k of n tensors ...', first divergence first."""
    moved = [r for r in rows if not r.passed]
    if not moved:
        return f"golden baseline for preset {name}, dtype {dtype}: all {len(rows)} tensors within the twin policy"
    lines = [
        f"golden baseline moved: preset {name}, dtype {dtype}: {len(moved)} of {len(rows)} tensors beyond the "
        f"twin tolerance policy (oracles/compare.py); first in computation order: {moved[0].name}",
    ]
    lines += ["  " + r.describe(("now", "baseline")) for r in moved]
    return "\n".join(lines)


def check_baseline(ndarrays_regression, data: dict[str, np.ndarray], name: str, dtype: str, fullpath=None) -> None:
    """ndarrays_regression.check with the twin policy; failures say preset, dtype, tensor, how far."""
    __tracebackhide__ = True
    data = dict(data)
    data["dtypes"] = np.array([f"{k}:{v.dtype}" for k, v in data.items()])
    stored = Path(fullpath) if fullpath else BASELINES / f"{name}-{dtype}.npz"
    rows = (
        compare_to_baseline({k: v for k, v in data.items() if k != "dtypes"}, stored, dtype) if stored.is_file() else []
    )
    # compare's measure through the fixture's element-wise np.isclose(a, b, rtol=0, atol): with
    # atol = max(tol * max(|now|, |baseline|), ATOL) it passes exactly when the policy does.
    scales = {r.name: r.scale for r in rows if r.worst_index is not None}
    tolerances = {
        k: {"rtol": 0.0, "atol": max(tolerance("twin", dtype, quantity(k)) * scales.get(k, 0.0), atol("twin", dtype))}
        for k in data
        if k != "dtypes"
    }
    kwargs = {"fullpath": fullpath} if fullpath else {"basename": f"{name}-{dtype}"}
    try:
        ndarrays_regression.check(data, tolerances=tolerances, **kwargs)
    except AssertionError as e:  # the fixture's element tables, after our summary
        detail = str(e)
        detail = detail if len(detail) < 3000 else detail[:3000] + "\n    ... (pytest-regressions' detail cut)"
        raise AssertionError(
            f"{summary(rows, name, dtype)}\nIf the change is intended, regenerate: {REGEN}\n\n"
            f"pytest-regressions says:\n{detail}"
        ) from None
    except pytest.fail.Exception as e:  # --force-regen rewrote the file (say what moved), or it was new
        raise pytest.fail.Exception(f"{summary(rows, name, dtype)}\n{e}" if rows else str(e)) from None
    if any(not r.passed for r in rows):  # cannot happen unless the fixture and the policy disagree
        raise AssertionError(f"{summary(rows, name, dtype)}\nIf the change is intended, regenerate: {REGEN}")


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_baseline(ndarrays_regression, name, dtype):
    check_baseline(ndarrays_regression, baseline_arrays(name, dtype), name, dtype)


def _scale_param_grad(original, factor):
    def backward(self, *args, **kwargs):
        dL_dx, grads = original(self, *args, **kwargs)
        return dL_dx, {**grads, "W": grads["W"] * factor}

    return backward


def _scale_grad_in(original, factor):
    def backward(self, *args, **kwargs):
        dL_dx, grads = original(self, *args, **kwargs)
        return dL_dx * factor, grads

    return backward


# (preset, the layer class whose backward is perturbed, how, the first tensor that must move)
BITES = {
    "dense-dW": ("mnist-relu-batched", Dense, _scale_param_grad, "trace.dense_2.dW"),
    "sigmoid-grad_in": ("mnist-sigmoid-per-sample", Sigmoid, _scale_grad_in, "trace.sigmoid_2.grad_in"),
}


@pytest.mark.parametrize("case", BITES)
def test_baselines_bite(ndarrays_regression, monkeypatch, tmp_path, request, case):
    """A gradient off by a relative 1e-9 in float64 fails the baseline, naming preset, dtype, tensor."""
    name, layer_cls, perturb, first = BITES[case]
    stored = BASELINES / f"{name}-float64.npz"
    if not stored.is_file():
        pytest.skip(f"no baseline recorded yet at {stored}; run {REGEN}")
    training_set("mnist")  # skips here, not inside pytest.raises, when the data is not installed
    copy = tmp_path / stored.name  # the fixture never writes to the real baseline from this test
    shutil.copy(stored, copy)
    monkeypatch.setattr(request.config.option, "force_regen", False)
    monkeypatch.setattr(request.config.option, "regen_all", False)

    check_baseline(ndarrays_regression, baseline_arrays(name, "float64"), name, "float64", fullpath=copy)

    monkeypatch.setattr(layer_cls, "backward", perturb(layer_cls.backward, 1 + 1e-9))
    with pytest.raises(AssertionError) as failure:
        check_baseline(ndarrays_regression, baseline_arrays(name, "float64"), name, "float64", fullpath=copy)
    message = str(failure.value)
    assert f"preset {name}, dtype float64" in message, message
    assert f"first in computation order: {first}" in message, message
    assert REGEN in message, message
