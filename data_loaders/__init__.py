"""Data: real MNIST offline (verified, cached), Fashion-MNIST and 8x8 digits, one batch order.

    (x_train, y_train), (x_test, y_test) = load_mnist()     canonical uint8, identical to Keras'
    load_fashion_mnist(path), load_digits()                 the same shapes of tuple
    x = preprocess(x_uint8, "raw" | "scale255" | "scale16", dtype)  -> (n, features)
    fitted = fit_preprocessing(x_train, "standardise", dtype)  the training split's mean and scale
    x = preprocess(x_uint8, "standardise", dtype, fitted)   the same for the train and test split
    x_train, y_train, x_test, y_test = load_for_spec(spec)  all a preset needs, preprocessed
    orders = epoch_orders(n, epochs, seed)                  one permutation per epoch, for everyone

The framework loaders courses use (Keras, tensorflow-datasets, torchvision) are wrapped in
data_loaders.frameworks and return the same canonical arrays when their data is present.
This package stands alone: numpy only (scikit-learn for digits, each framework for its adapter).
"""

from data_loaders.checksums import DIGITS, FASHION_MNIST, MNIST, DatasetInfo, verify
from data_loaders.digits import load_digits
from data_loaders.errors import (
    CacheWarning,
    ChecksumError,
    DataError,
    DataFormatError,
    DataNotFoundError,
    UnsafePickleError,
)
from data_loaders.idx import read_idx, write_idx
from data_loaders.mnist import load_fashion_mnist, load_mnist
from data_loaders.order import epoch_orders
from data_loaders.preprocess import (
    SpecData,
    Standardisation,
    fit_preprocessing,
    fit_standardisation,
    load_for_spec,
    prepare_for_spec,
    preprocess,
    validation_split,
)

__all__ = [
    "DIGITS",
    "FASHION_MNIST",
    "MNIST",
    "CacheWarning",
    "ChecksumError",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "DatasetInfo",
    "SpecData",
    "Standardisation",
    "UnsafePickleError",
    "epoch_orders",
    "fit_preprocessing",
    "fit_standardisation",
    "load_digits",
    "load_fashion_mnist",
    "load_for_spec",
    "load_mnist",
    "prepare_for_spec",
    "preprocess",
    "read_idx",
    "validation_split",
    "verify",
    "write_idx",
]
