"""`standardise`: the digits lab's StandardScaler, fitted on the training split only, in the spec's dtype.

What is pinned: the statistics come from the training rows alone (another test split changes nothing
of them), they agree with scikit-learn's StandardScaler in float64 and with exact rational
arithmetic to about an ulp in both dtypes, a zero-variance feature keeps scale 1, the dtype is kept
with no float64 array along the way, and every framework sees the same bytes: the validation job's
loader, a fresh worker process with the frameworks imported, and the reference and both twins fed
through an identity layer.
"""

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from decimal import Decimal, getcontext
from pathlib import Path

import numpy as np
import pytest

import data_loaders
from data_loaders import DataError, fit_preprocessing, fit_standardisation, prepare_for_spec, preprocess
from oracles.compare import compare_arrays, tolerance
from reference.network import Network
from reference.spec import LayerSpec, ModelSpec, preset

pytest.importorskip("sklearn")
DTYPES = ["float32", "float64"]
ROOT = Path(__file__).resolve().parents[1]
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


@pytest.fixture(scope="module")
def digits():
    return data_loaders.load_digits()


def exact_stats(x_uint8: np.ndarray) -> tuple[list[Decimal], list[Decimal]]:
    """Mean and population standard deviation per feature, from integer sums, to 40 digits."""
    getcontext().prec = 40
    x = x_uint8.reshape(len(x_uint8), -1).astype(np.int64)
    n, s, q = len(x), x.sum(axis=0), (x**2).sum(axis=0)
    mean = [Decimal(int(v)) / Decimal(n) for v in s]
    std = [(Decimal(int(n * qi - si * si)) / Decimal(n * n)).sqrt() for si, qi in zip(s, q)]
    return mean, std


def ulps(got: np.ndarray, exact: list[Decimal], dtype: str) -> float:
    """Largest |got - exact| over the features, in units of eps * |exact| (0 where exact is 0)."""
    worst = 0.0
    for g, e in zip(got.tolist(), exact):
        if e != 0:
            worst = max(worst, float(abs(Decimal(g) - e) / abs(e)) / EPS[dtype])
        else:
            assert g == 0
    return worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_statistics_are_the_training_splits_to_an_ulp(digits, dtype):
    (x_train, _), _ = digits
    fitted = fit_standardisation(x_train, dtype)
    mean, std = exact_stats(x_train)
    assert fitted.mean.dtype == fitted.scale.dtype == np.dtype(dtype) and fitted.n_samples == 1527
    # Measured: mean 0.37 (float64) / 0.45 ulp (float32), scale 0.79 / 0.77 ulp (the exact sum of
    # integer pixels, then pairwise sums of squared deviations).
    assert ulps(fitted.mean, mean, dtype) <= 1.0
    nonconstant = fitted.scale != 1
    assert ulps(fitted.scale[nonconstant], [s for s, keep in zip(std, nonconstant) if keep], dtype) <= 2.0
    # ... and not the statistics of all 1,797 digits (nor of the test split)
    every = fit_standardisation(data_loaders.digits.digits_arrays()["x"], dtype)
    assert not np.array_equal(every.mean, fitted.mean) and not np.array_equal(every.scale, fitted.scale)


def test_agrees_with_sklearn_standard_scaler_in_float64(digits):
    from sklearn.preprocessing import StandardScaler

    (x_train, _), (x_test, _) = digits
    rows_train, rows_test = x_train.reshape(len(x_train), -1).astype(np.float64), x_test.reshape(len(x_test), -1)
    scaler = StandardScaler().fit(rows_train)
    fitted = fit_standardisation(x_train, "float64")
    tol = tolerance("twin", "float64", "forward")
    for name, mine, theirs in [
        ("mean", fitted.mean, scaler.mean_),
        ("scale", fitted.scale, scaler.scale_),
        ("x_train", preprocess(x_train, "standardise", "float64", fitted), scaler.transform(rows_train)),
        ("x_test", preprocess(x_test, "standardise", "float64", fitted), scaler.transform(rows_test.astype(float))),
    ]:
        row = compare_arrays(name, mine, theirs, tol, check_dtype=True)
        assert row.passed, row.describe(("bprop", "sklearn"))
    # Measured: scale within 2.1e-14 relative of StandardScaler's, ours within 0.79 ulp of exact
    # (StandardScaler sums the 1,527 rows one after another; numpy's pairwise sum is closer).
    np.testing.assert_array_equal(fitted.scale == 1, scaler.var_ == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_variance_feature_keeps_scale_one(digits, dtype):
    (x_train, _), _ = digits
    fitted = fit_standardisation(x_train, dtype)
    rows = x_train.reshape(len(x_train), -1)
    constant = np.flatnonzero(rows.min(axis=0) == rows.max(axis=0))
    assert constant.tolist() == [0, 32, 39]  # always 0 in the lab's training split
    assert np.flatnonzero(fitted.scale == 1).tolist() == [0, 32, 39]
    assert np.all(preprocess(x_train, "standardise", dtype, fitted)[:, constant] == 0)
    # a constant feature that is not 0: centred, not scaled; a test value elsewhere keeps its distance
    x = np.full((5, 1, 2), 7, np.uint8)
    x[:, 0, 1] = [0, 1, 2, 3, 4]
    f = fit_standardisation(x, dtype)
    assert f.mean.tolist() == [7.0, 2.0] and f.scale[0] == 1 and f.scale[1] == np.sqrt(np.array(2.0, dtype))
    out = preprocess(np.array([[[9, 2]]], np.uint8), "standardise", dtype, f)
    assert out.dtype == np.dtype(dtype) and out[0, 0] == 2.0 and out[0, 1] == 0.0


def test_fitted_on_the_training_split_only(digits, monkeypatch):
    """Another test split leaves the training rows and the statistics byte for byte as they were."""
    spec = preset("digits-sigmoid-per-sample")
    before = prepare_for_spec(spec)
    (x_train, y_train), (x_test, y_test) = digits
    monkeypatch.setattr(
        data_loaders.digits, "load_digits", lambda: ((x_train, y_train), (16 - x_test, y_test))
    )  # the loader prepare_for_spec imports at call time
    after = prepare_for_spec(spec)
    assert after.x_train.tobytes() == before.x_train.tobytes()
    assert after.fitted.mean.tobytes() == before.fitted.mean.tobytes()
    assert after.fitted.scale.tobytes() == before.fitted.scale.tobytes()
    assert after.x_test.tobytes() != before.x_test.tobytes()
    # the training split is standardised (mean 0, standard deviation 1 or a constant 0), the test split not
    xt = before.x_train.astype(np.float64)
    varying = before.fitted.scale != 1
    assert np.abs(xt.mean(axis=0)).max() < 1e-13 and np.abs(xt.std(axis=0)[varying] - 1).max() < 1e-13
    assert np.abs(before.x_test.mean(axis=0)).max() > 0.05


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_for_spec_is_the_training_fit_applied_to_both_splits(digits, dtype):
    (x_train, y_train), (x_test, y_test) = digits
    spec = preset("digits-sigmoid-per-sample", dtype=dtype)
    got = prepare_for_spec(spec)
    fitted = fit_standardisation(x_train, dtype)
    np.testing.assert_array_equal(got.fitted.mean, fitted.mean)
    np.testing.assert_array_equal(got.fitted.scale, fitted.scale)
    for mine, x in ((got.x_train, x_train), (got.x_test, x_test)):
        # (x - mean) / scale, each operation once in the dtype
        plain = (x.reshape(len(x), -1).astype(dtype) - fitted.mean) / fitted.scale
        assert mine.dtype == np.dtype(dtype) and mine.flags.c_contiguous
        assert mine.tobytes() == plain.tobytes()
    assert data_loaders.load_for_spec(spec)[0].tobytes() == got.x_train.tobytes()
    np.testing.assert_array_equal(got.y_train, y_train)
    np.testing.assert_array_equal(got.y_test, y_test)
    assert got.y_train.dtype == np.int64 and json.dumps(got.fitted.to_dict())  # records mean and scale


def test_float32_never_makes_a_float64_array():
    # numpy reports its allocations to tracemalloc: a float64 copy, or a float64 temporary of the
    # fit, would at least double the peak.
    big = np.random.default_rng(0).integers(0, 256, (4000, 28, 28), dtype=np.uint8)
    tracemalloc.start()
    try:
        fitted = fit_preprocessing(big, "standardise", "float32")
        fit_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        out = preprocess(big, "standardise", "float32", fitted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32 and fitted.mean.dtype == fitted.scale.dtype == np.float32
    assert out.nbytes == 4000 * 784 * 4
    assert fit_peak < 0.05 * out.nbytes, f"fit peak {fit_peak} bytes; the float32 result is {out.nbytes}"
    assert peak < 1.25 * out.nbytes, f"peak {peak} bytes for a {out.nbytes}-byte float32 result"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: preprocess(x, "standardise", "float32"), r"'standardise' needs the training split's statistics"),
        (
            lambda x: preprocess(x, "standardise", "float32", fit_standardisation(x, "float64")),
            r"fitted on 64 float64 features, asked for 64 float32 features",
        ),
        (
            lambda x: preprocess(x[:, :4], "standardise", "float64", fit_standardisation(x, "float64")),
            r"fitted on 64 float64 features, asked for 32 float64 features",
        ),
        (
            lambda x: preprocess(x, "scale16", "float64", fit_standardisation(x, "float64")),
            r"'scale16' is a fixed rule and takes no fitted statistics",
        ),
        (lambda x: fit_standardisation(x.astype(np.float32), "float32"), r"fit_standardisation: expected canonical"),
        (lambda x: fit_standardisation(x[:0], "float32"), r"at least one training row, got 0"),
        (lambda x: fit_preprocessing(x, "zscore", "float32"), r"fit_preprocessing: unknown preprocessing 'zscore'"),
    ],
    ids=["no-fit", "other-dtype", "other-width", "fixed-rule", "float-input", "no-rows", "unknown"],
)
def test_bad_requests_are_named(call, message):
    x = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8) % 17
    with pytest.raises(DataError, match=message):
        call(x)


# Identical bytes for every framework ------------------------------------------------------------


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode() + a.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def worker_digests() -> dict[str, str]:
    """dtype -> digest of (x_train, x_test) as one fresh process with torch and TensorFlow imported
    loads them, every dtype in turn, as a validation worker meets its jobs. One process for both
    dtypes: its start (the two frameworks' imports) was most of each test's 20 s under load."""
    code = (
        "import sys, importlib.util\n"
        "for m in ('torch', 'tensorflow'):\n"
        "    if importlib.util.find_spec(m): __import__(m)\n"
        "from reference.spec import preset\n"
        "from bprop.jobs import load_data\n"
        "import tests.test_data_standardise as t\n"
        f"for dtype in {DTYPES!r}:\n"
        "    x, y, xt, yt = load_data(preset('digits-sigmoid-per-sample', dtype=dtype))\n"
        "    print(dtype, t.digest(x, xt))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    env.pop("PYTEST_XDIST_WORKER", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(line.split() for line in out.stdout.splitlines()[-len(DTYPES) :])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_worker_process_with_the_frameworks_loaded_gets_the_same_bytes(dtype, worker_digests):
    """Each framework trains in its own worker process, which prepares the data itself."""
    here = prepare_for_spec(preset("digits-sigmoid-per-sample", dtype=dtype))
    assert worker_digests[dtype] == digest(here.x_train, here.x_test)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["reference", "torch", "keras"])
def test_every_framework_consumes_the_standardised_rows_unchanged(kind, dtype):
    """An identity layer (W = I, b = 0) gives back each input exactly: x_k * 1 plus zeros is x_k
    in any summation order. So its forward output, in the framework's own arithmetic, is the array
    the framework received, and it must be the loader's, bit for bit."""
    data = prepare_for_spec(preset("digits-sigmoid-per-sample", dtype=dtype))
    spec = ModelSpec(n_in=64, layers=(LayerSpec("dense", units=64),), loss="mse", dtype=dtype, name="identity")
    params = {"dense_1.W": np.eye(64, dtype=dtype), "dense_1.b": np.zeros(64, dtype)}
    if kind == "reference":
        model = Network(spec, params=params)
    else:
        pytest.importorskip(kind)
        from oracles import make_twin

        model = make_twin(kind, spec, params, seed=0)
    for x in (data.x_train, data.x_test):
        out = np.asarray(model.forward(x))
        assert out.dtype == np.dtype(dtype) and out.tobytes() == x.tobytes(), kind
        trace = model.trace(x[:7], np.zeros((7, 64), dtype))
        assert np.asarray(trace.layers[0].out).tobytes() == x[:7].tobytes(), kind
