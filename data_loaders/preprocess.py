"""Preprocessing as the course notebooks do it, by the names ModelSpec.preprocess uses.

    preprocess(x_uint8, "raw" | "scale255" | "scale16", dtype) -> (n, h*w) array of `dtype`
        raw       the pixel values 0..255 (or 0..16) as floats
        scale255  x / 255  (MNIST: the batched seeds)
        scale16   x / 16   (scikit-learn digits)
    validation_split(x, y)  -> (x[:-10000], y[:-10000]), (x[-10000:], y[-10000:])
    load_for_spec(spec, dtype=None) -> x_train, y_train, x_test, y_test, ready for spec's model

Computed once, in numpy, in the requested dtype: the uint8 array is cast to `dtype` first and then
divided by a scalar *of that dtype*, so every value is the correctly rounded x / 255 in that dtype
(what `x.astype("float32") / 255` gives in numpy 2 and in the frameworks) and no float64 array is
ever made for a float32 result.
"""

from __future__ import annotations

import numpy as np

from data_loaders.errors import DataError

PREPROCESSING = {"raw": None, "scale255": 255, "scale16": 16}
N_VALIDATION = 10_000


def preprocess(x: np.ndarray, name: str, dtype: str | np.dtype = "float32") -> np.ndarray:
    """(n, ...) uint8 -> (n, prod(...)) `dtype`: x (raw), x / 255 (scale255) or x / 16 (scale16)."""
    if name not in PREPROCESSING:
        raise DataError(f"preprocess: unknown preprocessing {name!r}; expected one of {sorted(PREPROCESSING)}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"preprocess: expected a float dtype, got {dtype}")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim < 2:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"preprocess: expected canonical uint8 images (n, h, w), got {got}")
    out = x.reshape(len(x), -1).astype(dtype)  # (n, h*w), a fresh array
    divisor = PREPROCESSING[name]
    if divisor is not None:
        np.divide(out, dtype.type(divisor), out=out)
    return out


def validation_split(x: np.ndarray, y: np.ndarray, n_val: int = N_VALIDATION) -> tuple[tuple, tuple]:
    """The last `n_val` training rows are the validation set (50,000 / 10,000 for MNIST)."""
    if not 0 < n_val < len(x) or len(x) != len(y):
        raise DataError(f"validation_split: need 0 < n_val < {len(x)} rows and len(y) == len(x), got {n_val}, {len(y)}")
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


def load_for_spec(
    spec, dtype: str | np.dtype | None = None, holdout: str = "test"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, y_train, x_test, y_test for `spec` (its dataset, preprocess and dtype); labels int64.

    holdout="test": the official test set; holdout="validation": train on the first 50,000 rows
    and hold out the last 10,000 (MNIST) in place of the test set.
    """
    from data_loaders.digits import load_digits  # local: scikit-learn only when digits are asked for
    from data_loaders.mnist import load_mnist

    loaders = {"mnist": load_mnist, "digits": load_digits}
    if spec.dataset not in loaders:
        raise DataError(f"load_for_spec: unknown dataset {spec.dataset!r}; expected one of {sorted(loaders)}")
    (x_train, y_train), (x_test, y_test) = loaders[spec.dataset]()
    if holdout == "validation":
        (x_train, y_train), (x_test, y_test) = validation_split(x_train, y_train)
    elif holdout != "test":
        raise DataError(f"load_for_spec: holdout must be 'test' or 'validation', got {holdout!r}")
    dtype = dtype or spec.dtype
    x_train, x_test = preprocess(x_train, spec.preprocess, dtype), preprocess(x_test, spec.preprocess, dtype)
    if x_train.shape[1] != spec.n_in:
        raise DataError(
            f"load_for_spec: {spec.dataset} rows have {x_train.shape[1]} features, spec n_in is {spec.n_in}"
        )
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)
