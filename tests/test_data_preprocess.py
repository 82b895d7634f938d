"""Preprocessing by name (raw, scale255, scale16), in the requested dtype, and the validation split.
(standardise, which is fitted on the training split: tests/test_data_standardise.py.)"""

import tracemalloc

import numpy as np
import pytest

from data_loaders import DataError, load_for_spec, preprocess, validation_split
from reference.spec import preset

PIXELS = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)  # every value 0..255 once


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, divisor", [("raw", None), ("scale255", 255), ("scale16", 16)])
def test_values_are_the_correctly_rounded_quotient_in_that_dtype(name, divisor, dtype):
    out = preprocess(PIXELS, name, dtype)
    assert out.shape == (4, 64) and out.dtype == np.dtype(dtype) and out.flags.c_contiguous
    # The reference value: the exact quotient, rounded once to `dtype` (float64 division of
    # integers < 2**8 by 255 is within half an ulp of float64, so rounding it to float32 is exact).
    exact = PIXELS.reshape(4, 64).astype(np.float64) / (divisor or 1)
    np.testing.assert_array_equal(out, exact.astype(dtype))
    # ... and what the notebooks write: x.astype(dtype) / 255
    seed_style = PIXELS.reshape(4, -1).astype(dtype) / (divisor or 1)
    assert seed_style.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, seed_style)


@pytest.mark.parametrize("name", ["raw", "scale255", "scale16"])
def test_float32_never_makes_a_float64_array(name):
    # numpy reports its allocations to tracemalloc: a float64 temporary would double the peak.
    big = np.zeros((2000, 28, 28), np.uint8)
    tracemalloc.start()
    try:
        out = preprocess(big, name, "float32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32 and out.nbytes == 2000 * 784 * 4
    assert peak < 1.25 * out.nbytes, f"peak {peak} bytes for a {out.nbytes}-byte float32 result"


def test_the_input_is_not_changed():
    before = PIXELS.copy()
    preprocess(PIXELS, "scale255", "float32")
    np.testing.assert_array_equal(PIXELS, before)


@pytest.mark.parametrize(
    "x, name, dtype, message",
    [
        (
            PIXELS,
            "scale256",
            "float32",
            r"unknown preprocessing 'scale256'; expected one of \['raw', 'scale16', 'scale255', 'standardise'\]",
        ),
        (PIXELS, "raw", "int32", "expected a float dtype, got int32"),
        (
            PIXELS.astype(np.float32),
            "raw",
            "float32",
            r"expected canonical uint8 images \(n, h, w\), got float32 \(4, 8, 8\)",
        ),
        (PIXELS.ravel(), "raw", "float32", r"got uint8 \(256,\)"),
    ],
    ids=["unknown-name", "int-dtype", "float-input", "1d-input"],
)
def test_bad_requests_are_named(x, name, dtype, message):
    with pytest.raises(DataError, match=message):
        preprocess(x, name, dtype)


def test_validation_split_is_the_last_rows():
    x, y = np.arange(30).reshape(15, 2), np.arange(15)
    (x_tr, y_tr), (x_val, y_val) = validation_split(x, y, n_val=5)
    np.testing.assert_array_equal(x_val, x[10:])
    np.testing.assert_array_equal(y_tr, y[:10])
    np.testing.assert_array_equal(x_tr, x[:10])
    np.testing.assert_array_equal(y_val, y[10:])
    with pytest.raises(DataError, match="need 0 < n_val < 15"):
        validation_split(x, y, n_val=15)


def test_load_for_spec_digits():
    pytest.importorskip("sklearn")
    spec = preset("digits-sigmoid-per-sample", dtype="float32")
    x_train, y_train, x_test, y_test = load_for_spec(spec)
    assert x_train.shape == (1527, 64) and x_test.shape == (270, 64) and x_train.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64 and x_test.dtype == np.float32
    # standardised on the training split: every column centred, unit variance or constant 0
    assert np.abs(x_train.mean(axis=0, dtype=np.float64)).max() < 1e-6
    std = x_train.std(axis=0, dtype=np.float64)
    assert np.all((np.abs(std - 1) < 1e-6) | (std == 0)) and (std == 0).sum() == 3


def test_load_for_spec_rejects_an_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_for_spec(preset("mnist-relu-batched").replace(dataset="cifar"))
