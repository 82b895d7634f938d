"""scikit-learn's 8x8 digits (shipped inside scikit-learn) for the digits lab, split as the lab does.

    (x_train, y_train), (x_test, y_test) = load_digits()
        x uint8 (n, 8, 8) in 0..16, y uint8 (n,); 1,527 train / 270 test.

The split is the lab's (m2dsupsdlclass/lectures-labs, labs/02_backprop/Backpropagation_numpy.ipynb,
the "Preprocessing" cell): scikit-learn's `train_test_split(data, target, test_size=0.15,
random_state=37)`, exactly: the same rows in the same (shuffled) order. It is computed on the row
indices, so the uint8 images are never converted; the resulting test indices are pinned by a
checksum in the tests (scikit-learn's ShuffleSplit draws from numpy's legacy RandomState, whose
stream is frozen).
"""

from __future__ import annotations

import numpy as np

from data_loaders.checksums import DIGITS, verify
from data_loaders.errors import DataFormatError

DIGITS_TEST_SIZE = 0.15  # the lab's train_test_split(..., test_size=0.15, random_state=37)
DIGITS_RANDOM_STATE = 37

Split = tuple[np.ndarray, np.ndarray]


def lab_split(n: int, test_size: float = DIGITS_TEST_SIZE, random_state: int = DIGITS_RANDOM_STATE) -> Split:
    """(train_idx, test_idx): the rows scikit-learn's train_test_split puts in each part, in its order."""
    from sklearn.model_selection import train_test_split  # optional dependency (the cli extra)

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"lab_split: test_size must be in (0, 1), got {test_size}")
    train_idx, test_idx = train_test_split(np.arange(n), test_size=test_size, random_state=random_state)
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


def load_digits(test_size: float = DIGITS_TEST_SIZE, random_state: int = DIGITS_RANDOM_STATE) -> tuple[Split, Split]:
    """(x_train, y_train), (x_test, y_test) of the 8x8 digits, split as the module doc says."""
    arrays = digits_arrays()
    train_idx, test_idx = lab_split(len(arrays["y"]), test_size, random_state)
    x, y = arrays["x"], arrays["y"]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
