"""Preprocessing as the course notebooks do it, by the names ModelSpec.preprocess uses.

    preprocess(x_uint8, "raw" | "scale255" | "scale16", dtype) -> (n, h*w) array of `dtype`
        raw          the pixel values 0..255 (or 0..16) as floats
        scale255     x / 255  (MNIST: the batched seeds)
        scale16      x / 16   (scikit-learn digits)
        standardise  (x - mean) / scale per feature, mean and scale fitted on the training split
                     (the digits lab: scikit-learn's StandardScaler); needs `fitted=`:
    fitted = fit_preprocessing(x_train_uint8, name, dtype)   a Standardisation, or None (fixed rules)
    preprocess(x_uint8, name, dtype, fitted) -> the same rule for the training and the test split
    validation_split(x, y)  -> (x[:-10000], y[:-10000]), (x[-10000:], y[-10000:])
    prepare_for_spec(spec) -> SpecData(x_train, y_train, x_test, y_test, fitted)
    load_for_spec(spec, dtype=None) -> x_train, y_train, x_test, y_test, ready for spec's model

Computed once, in numpy, in the requested dtype: the uint8 array is cast to `dtype` first and then
divided by a scalar *of that dtype*, so every value is the correctly rounded x / 255 in that dtype
(what `x.astype("float32") / 255` gives in numpy 2 and in the frameworks) and no float64 array is
ever made for a float32 result.

Standardisation is fitted in the requested dtype too, with no float64 array or accumulator: the
mean is the column sum over the number of rows (the sum of integer pixels is exact in float32 up
to 2**24, which covers all of MNIST: 60,000 x 255 < 2**24), the variance the mean squared deviation
(population variance, as StandardScaler), both summed with numpy's pairwise summation along
contiguous rows of a transposed block of columns (error O(log n) ulps, not O(n)). A feature with
zero training variance keeps scale 1, as StandardScaler does (for integer pixels a feature's
computed variance is 0 exactly when the feature is constant). The training mean and scale are kept
in the returned Standardisation, so the test split, every framework and every worker process get
the same bytes from the same uint8 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_loaders.errors import DataError

STANDARDISE = "standardise"
PREPROCESSING = {"raw": None, "scale255": 255, "scale16": 16, STANDARDISE: None}
N_VALIDATION = 10_000
_BLOCK = 8  # columns per block when fitting a standardisation (bounds the temporary to n x 8 values)


@dataclass(frozen=True, eq=False)
class Standardisation:
    """Per-feature training mean and scale in one dtype: x -> (x - mean) / scale (StandardScaler)."""

    mean: np.ndarray  # (features,)
    scale: np.ndarray  # (features,), 1 where the training variance is 0
    n_samples: int  # training rows it was fitted on

    @property
    def dtype(self) -> np.dtype:
        return self.mean.dtype

    def to_dict(self) -> dict:
        return {"n_samples": self.n_samples, "mean": self.mean.tolist(), "scale": self.scale.tolist()}


def _check_request(x: np.ndarray, name: str, dtype: str | np.dtype, where: str = "preprocess") -> np.dtype:
    if name not in PREPROCESSING:
        raise DataError(f"{where}: unknown preprocessing {name!r}; expected one of {sorted(PREPROCESSING)}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"{where}: expected a float dtype, got {dtype}")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim < 2:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{where}: expected canonical uint8 images (n, h, w), got {got}")
    return dtype


def fit_standardisation(x_train: np.ndarray, dtype: str | np.dtype = "float32") -> Standardisation:
    """The training split's per-feature mean and population standard deviation, in `dtype`."""
    dtype = _check_request(x_train, STANDARDISE, dtype, "fit_standardisation")
    if len(x_train) < 1:
        raise DataError("fit_standardisation: expected at least one training row, got 0")
    rows = x_train.reshape(len(x_train), -1)
    n, features = rows.shape
    mean, var = np.empty(features, dtype), np.empty(features, dtype)
    for start in range(0, features, _BLOCK):
        block = rows[:, start : start + _BLOCK].T.astype(dtype, order="C")  # (block, n): pairwise sums
        mean[start : start + _BLOCK] = block.sum(axis=1) / dtype.type(n)
        block -= mean[start : start + _BLOCK, None]
        np.square(block, out=block)
        var[start : start + _BLOCK] = block.sum(axis=1) / dtype.type(n)
    scale = np.sqrt(var)
    scale[var == 0] = 1  # a constant training feature: centred, not scaled (StandardScaler)
    return Standardisation(mean=mean, scale=scale, n_samples=n)


def fit_preprocessing(x_train: np.ndarray, name: str, dtype: str | np.dtype = "float32") -> Standardisation | None:
    """What `name` learns from the training split: a Standardisation, or None for the fixed rules."""
    _check_request(x_train, name, dtype, "fit_preprocessing")
    return fit_standardisation(x_train, dtype) if name == STANDARDISE else None


def preprocess(
    x: np.ndarray, name: str, dtype: str | np.dtype = "float32", fitted: Standardisation | None = None
) -> np.ndarray:
    """(n, ...) uint8 -> (n, prod(...)) `dtype`: x (raw), x / 255 (scale255), x / 16 (scale16) or
    (x - fitted.mean) / fitted.scale (standardise, `fitted` from the training split)."""
    dtype = _check_request(x, name, dtype)
    if name == STANDARDISE:
        if not isinstance(fitted, Standardisation):
            raise DataError(
                "preprocess: 'standardise' needs the training split's statistics: "
                f"fitted=fit_standardisation(x_train, {str(dtype)!r}), got {type(fitted).__name__}"
            )
        if fitted.dtype != dtype or fitted.mean.shape != (int(np.prod(x.shape[1:])),):
            raise DataError(
                f"preprocess: the standardisation was fitted on {fitted.mean.shape[0]} {fitted.dtype} features, "
                f"asked for {int(np.prod(x.shape[1:]))} {dtype} features"
            )
    elif fitted is not None:
        raise DataError(f"preprocess: {name!r} is a fixed rule and takes no fitted statistics, got {fitted!r}")
    out = x.reshape(len(x), -1).astype(dtype)  # (n, h*w), a fresh array
    divisor = PREPROCESSING[name]
    if divisor is not None:
        np.divide(out, dtype.type(divisor), out=out)
    if name == STANDARDISE:
        np.subtract(out, fitted.mean, out=out)
        np.divide(out, fitted.scale, out=out)
    return out


def validation_split(x: np.ndarray, y: np.ndarray, n_val: int = N_VALIDATION) -> tuple[tuple, tuple]:
    """The last `n_val` training rows are the validation set (50,000 / 10,000 for MNIST)."""
    if not 0 < n_val < len(x) or len(x) != len(y):
        raise DataError(f"validation_split: need 0 < n_val < {len(x)} rows and len(y) == len(x), got {n_val}, {len(y)}")
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


@dataclass(frozen=True, eq=False)
class SpecData:
    """A preset's data, preprocessed: the arrays, and what the preprocessing learnt from x_train."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fitted: Standardisation | None  # standardise: the training split's mean and scale; else None


def load_for_spec(
    spec, dtype: str | np.dtype | None = None, holdout: str = "test"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, y_train, x_test, y_test for `spec` (its dataset, preprocess and dtype); labels int64.

    holdout="test": the official test set; holdout="validation": train on the first 50,000 rows
    and hold out the last 10,000 (MNIST) in place of the test set. A fitted preprocessing
    (standardise) is fitted on the rows trained on and applied to both (see prepare_for_spec).
    """
    d = prepare_for_spec(spec, dtype, holdout)
    return d.x_train, d.y_train, d.x_test, d.y_test


def prepare_for_spec(spec, dtype: str | np.dtype | None = None, holdout: str = "test") -> SpecData:
    """load_for_spec's arrays and the fitted preprocessing (None for the fixed rules)."""
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
    fitted = fit_preprocessing(x_train, spec.preprocess, dtype)  # the training rows only
    x_train = preprocess(x_train, spec.preprocess, dtype, fitted)
    x_test = preprocess(x_test, spec.preprocess, dtype, fitted)
    if x_train.shape[1] != spec.n_in:
        raise DataError(
            f"load_for_spec: {spec.dataset} rows have {x_train.shape[1]} features, spec n_in is {spec.n_in}"
        )
    return SpecData(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), fitted)
