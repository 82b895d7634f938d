"""scikit-learn's 8x8 digits: verified, with the fixed stratified 80/20 split of the digits lab."""

import hashlib

import numpy as np
import pytest

from data_loaders import DIGITS, load_digits
from data_loaders.checksums import sha256_array
from data_loaders.digits import digits_arrays, stratified_split

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return digits_arrays()


def test_digits_checksums(digits):
    assert digits["x"].shape == (1797, 8, 8) and digits["x"].dtype == np.uint8 and digits["x"].max() == 16
    assert sha256_array(digits["x"]) == DIGITS.sha256["x"] and sha256_array(digits["y"]) == DIGITS.sha256["y"]


def test_split_is_pinned_stratified_and_a_partition(digits):
    train, test = stratified_split(digits["y"], 0.2, seed=0)
    assert hashlib.sha256(test.astype("<i8")).hexdigest()[:16] == "f71c9ddf317ebe27"
    assert len(train) == 1438 and len(test) == 359
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    per_class = np.bincount(digits["y"][test])
    np.testing.assert_array_equal(per_class, np.floor(0.2 * np.bincount(digits["y"]) + 0.5))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # both keep the file's order


def test_load_digits_returns_the_split(digits):
    (x_train, y_train), (x_test, y_test) = load_digits()
    train, test = stratified_split(digits["y"], 0.2, seed=0)
    np.testing.assert_array_equal(x_train, digits["x"][train])
    np.testing.assert_array_equal(y_test, digits["y"][test])
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8 and x_test.shape == (359, 8, 8)


def test_other_seed_other_split(digits):
    assert not np.array_equal(stratified_split(digits["y"], 0.2, 0)[1], stratified_split(digits["y"], 0.2, 1)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction_is_named(fraction):
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        stratified_split(np.zeros(10, np.uint8), fraction, 0)
