"""scikit-learn's 8x8 digits: verified, split exactly as the digits lab splits them."""

import hashlib

import numpy as np
import pytest

from data_loaders import DIGITS, load_digits
from data_loaders.checksums import sha256_array
from data_loaders.digits import digits_arrays, lab_split

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return digits_arrays()


def test_digits_checksums(digits):
    assert digits["x"].shape == (1797, 8, 8) and digits["x"].dtype == np.uint8 and digits["x"].max() == 16
    assert sha256_array(digits["x"]) == DIGITS.sha256["x"] and sha256_array(digits["y"]) == DIGITS.sha256["y"]


def test_split_is_the_labs_train_test_split_exactly(digits):
    """The lab: train_test_split(data, target, test_size=0.15, random_state=37) on float32 / int32."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    data, target = np.asarray(bunch.data, dtype="float32"), np.asarray(bunch.target, dtype="int32")
    x_train, x_test, y_train, y_test = train_test_split(data, target, test_size=0.15, random_state=37)
    (mx_train, my_train), (mx_test, my_test) = load_digits()
    assert mx_train.dtype == np.uint8 and my_train.dtype == np.uint8 and mx_test.shape == (270, 8, 8)
    # the same rows in the same order
    np.testing.assert_array_equal(mx_train.reshape(len(mx_train), -1), x_train)
    np.testing.assert_array_equal(mx_test.reshape(len(mx_test), -1), x_test)
    np.testing.assert_array_equal(my_train, y_train)
    np.testing.assert_array_equal(my_test, y_test)


PINNED_TEST_ROWS = "acdb7f3dbe9a9ea4"  # sha256 of the test indices as little-endian int64 (first 16 hex digits)
PINNED_TRAIN_ROWS = "f39c833759f6f6ec"


def test_split_is_pinned_and_a_partition(digits):
    train, test = lab_split(1797)
    assert len(train) == 1527 and len(test) == 270
    assert hashlib.sha256(test.astype("<i8")).hexdigest()[:16] == PINNED_TEST_ROWS
    assert hashlib.sha256(train.astype("<i8")).hexdigest()[:16] == PINNED_TRAIN_ROWS
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert test[:5].tolist() == [1169, 1355, 793, 233, 1752]  # shuffled, not sorted: the lab's order


def test_other_state_other_split():
    assert not np.array_equal(lab_split(1797, 0.15, 37)[1], lab_split(1797, 0.15, 38)[1])


@pytest.mark.parametrize("size", [0.0, 1.0, -0.1])
def test_bad_test_size_is_named(size):
    with pytest.raises(ValueError, match=r"test_size must be in \(0, 1\)"):
        lab_split(10, size)
