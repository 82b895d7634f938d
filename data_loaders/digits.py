"""scikit-learn's 8x8 digits (shipped inside scikit-learn) for the digits lab, with a fixed split.

    (x_train, y_train), (x_test, y_test) = load_digits()
        x uint8 (n, 8, 8) in 0..16, y uint8 (n,); 1,438 train / 359 test.

The split is stratified and fixed: for each class c in 0..9 (in order), the indices of class c are
permuted by one numpy.random.default_rng(DIGITS_SPLIT_SEED) generator and the first
floor(DIGITS_TEST_FRACTION * n_c + 0.5) go to the test set; both index sets are then sorted, so each
part keeps the file's order (the batch order comes from epoch_orders, not from the split).
The resulting test indices are pinned by a checksum in the tests.
"""

from __future__ import annotations

import numpy as np

from data_loaders.checksums import DIGITS, verify
from data_loaders.errors import DataFormatError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

Split = tuple[np.ndarray, np.ndarray]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted: round-half-up test_fraction of every class goes to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"stratified_split: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[: int(np.floor(test_fraction * len(members) + 0.5))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)  # sorted
    return train_idx, test_idx


def digits_arrays() -> dict[str, np.ndarray]:
    """All 1,797 digits as verified uint8 arrays: x (1797, 8, 8), y (1797,)."""
    from sklearn.datasets import load_digits as sklearn_digits  # optional dependency (the cli extra)

    bunch = sklearn_digits()
    data = bunch.data
    if data.min() < 0 or data.max() > 16 or not np.array_equal(data, np.round(data)):
        raise DataFormatError("scikit-learn digits: expected integer pixels in 0..16")
    arrays = {"x": data.astype(np.uint8).reshape(-1, 8, 8), "y": bunch.target.astype(np.uint8)}
    verify(arrays, DIGITS, "scikit-learn load_digits()")
    return arrays


def load_digits(test_fraction: float = DIGITS_TEST_FRACTION, seed: int = DIGITS_SPLIT_SEED) -> tuple[Split, Split]:
    """(x_train, y_train), (x_test, y_test) of the 8x8 digits, split as the module doc says."""
    arrays = digits_arrays()
    train_idx, test_idx = stratified_split(arrays["y"], test_fraction, seed)
    x, y = arrays["x"], arrays["y"]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
