"""The loaders courses use, kept real: Keras, tensorflow-datasets, torchvision.

Each calls the framework's own loader and returns the canonical arrays of load_mnist():
(x_train, y_train), (x_test, y_test), x uint8 (n, 28, 28), y uint8 (n,). None downloads: offline they
either find their data already on disk or raise DataNotFoundError saying where they looked.

    load_keras_mnist(path="mnist.npz")     keras.datasets.mnist.load_data(path): the file must be
        Keras' own mnist.npz in $KERAS_HOME/datasets (default ~/.keras/datasets). Keras 3 checks its
        sha256 and, on a mismatch, re-downloads it and DELETES the local file when that fails; so the
        file is checked here first and anything else is refused before Keras sees it.
    load_tfds_mnist(data_dir=None)         tfds.load("mnist", split=["train", "test"], as_supervised=True,
        download=False). tfds stores its own row order: with verify=True (the default) the rows are
        matched one-to-one with canonical MNIST and returned in its order (a row that is not in MNIST
        raises); verify=False returns them converted, in tfds' order.
    load_torchvision_mnist(root)           torchvision.datasets.MNIST(root, download=False): reads the
        IDX files in <root>/MNIST/raw, in the original order; verified like load_mnist.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from data_loaders.checksums import FASHION_MNIST, KERAS_MNIST_NPZ_SHA256, MNIST, sha256_file
from data_loaders.checksums import verify as verify_arrays
from data_loaders.errors import ChecksumError, DataFormatError, DataNotFoundError

Split = tuple[np.ndarray, np.ndarray]


def _arrays(x_train, y_train, x_test, y_test) -> dict[str, np.ndarray]:
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _pairs(a: dict[str, np.ndarray]) -> tuple[Split, Split]:
    return (a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])


# ---- Keras -------------------------------------------------------------------------------------


def keras_datasets_dir() -> Path:
    """Where keras.utils.get_file looks: $KERAS_HOME (read when keras is imported) or ~/.keras, /datasets."""
    from keras.src.backend import config  # get_file's own default; there is no public accessor

    base = os.path.expanduser(config.keras_home())
    if not os.access(base, os.W_OK):  # get_file's fallback
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "datasets"


def load_keras_mnist(path: str = "mnist.npz") -> tuple[Split, Split]:
    """keras.datasets.mnist.load_data(path), only when Keras' genuine file is there (never downloads)."""
    keras = importlib.import_module("keras")
    target = keras_datasets_dir() / path
    if not target.is_file():
        raise DataNotFoundError(
            f"{target}: missing. keras.datasets.mnist.load_data(path={path!r}) reads this file and downloads "
            "it when it is missing, and this machine is offline. Put Keras' own mnist.npz there, or use "
            "data_loaders.load_mnist() (the same arrays, from the installed package)"
        )
    got = sha256_file(target)
    if got != KERAS_MNIST_NPZ_SHA256:
        raise ChecksumError(
            f"{target}: not Keras' mnist.npz: sha256 expected {KERAS_MNIST_NPZ_SHA256}, got {got}. Keras "
            "would try to download it again and delete this file when that fails; refused before calling "
            "Keras. Point data_loaders.load_mnist(path=...) at the file to use it anyway"
        )
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data(path=path)
    arrays = _arrays(x_train, y_train, x_test, y_test)
    verify_arrays(arrays, MNIST, target)
    return _pairs(arrays)


# ---- tensorflow-datasets -------------------------------------------------------------------------


def _tfds_split(ds, source: str) -> Split:
    import tensorflow_datasets as tfds

    xs, ys = [], []
    for images, labels in tfds.as_numpy(ds.batch(10_000)):  # (b, 28, 28, 1) uint8, (b,) int64
        xs.append(images)
        ys.append(labels)
    x = np.concatenate(xs) if xs else np.zeros((0, 28, 28, 1), np.uint8)
    y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28, 1):
        raise DataFormatError(f"{source}: expected uint8 images (n, 28, 28, 1), got {x.dtype} {x.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataFormatError(f"{source}: labels outside 0..9: {y.min()}..{y.max()}")
    return np.ascontiguousarray(x[..., 0]), y.astype(np.uint8)


def _rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One opaque row per example, image bytes then label, for sorting and matching."""
    flat = np.concatenate([x.reshape(len(x), -1), y.reshape(-1, 1)], axis=1)  # (n, 785) uint8
    return np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel()


def match_order(x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray, source: str) -> Split:
    """(x, y) permuted into the order of (x_ref, y_ref); raises unless they hold the same examples."""
    if x.shape != x_ref.shape or y.shape != y_ref.shape:
        raise ChecksumError(
            f"{source}: expected {x_ref.shape} images and {y_ref.shape} labels, got {x.shape}, {y.shape}"
        )
    rows, ref = _rows(x, y), _rows(x_ref, y_ref)
    by_row, by_ref = np.argsort(rows, kind="stable"), np.argsort(ref, kind="stable")
    if not np.array_equal(rows[by_row], ref[by_ref]):
        ref_sorted = ref[by_ref]
        at = np.minimum(np.searchsorted(ref_sorted, rows), len(ref_sorted) - 1)
        absent = np.flatnonzero(ref_sorted[at] != rows)
        detail = (
            f"{len(absent)} of its rows are not in it, the first is row {absent[0]} (label {int(y[absent[0]])})"
            if len(absent)
            else "the same rows but not as often (duplicates differ)"
        )
        raise ChecksumError(f"{source}: not the same examples as canonical MNIST: {detail}")
    perm = np.empty_like(by_ref)
    perm[by_ref] = by_row  # canonical position -> row of (x, y)
    return x[perm], y[perm]


def load_tfds_mnist(data_dir: str | Path | None = None, verify: bool = True) -> tuple[Split, Split]:
    """MNIST through tfds.load, as canonical arrays (verify=True) or in tfds' own order (False)."""
    import tensorflow_datasets as tfds

    try:
        ds_train, ds_test = tfds.load(
            "mnist",
            split=["train", "test"],
            as_supervised=True,
            shuffle_files=False,
            data_dir=None if data_dir is None else str(data_dir),
            download=False,
        )
    except AssertionError as e:  # tfds' way of saying the prepared data is not there
        raise DataNotFoundError(f"tensorflow-datasets mnist (download=False): {e}") from None
    source = f"tfds mnist ({data_dir or 'default data_dir'})"
    (x_train, y_train), (x_test, y_test) = _tfds_split(ds_train, source), _tfds_split(ds_test, source)
    if not verify:
        return (x_train, y_train), (x_test, y_test)
    from data_loaders.mnist import load_mnist

    (ref_x_train, ref_y_train), (ref_x_test, ref_y_test) = load_mnist()
    x_train, y_train = match_order(x_train, y_train, ref_x_train, ref_y_train, f"{source} train")
    x_test, y_test = match_order(x_test, y_test, ref_x_test, ref_y_test, f"{source} test")
    arrays = _arrays(x_train, y_train, x_test, y_test)
    verify_arrays(arrays, MNIST, source)
    return _pairs(arrays)


def _uint8(a: np.ndarray, top: int, source: str) -> np.ndarray:
    if a.size and (a.min() < 0 or a.max() > top):
        raise DataFormatError(f"{source}: values outside 0..{top}: {a.min()}..{a.max()}")
    return np.ascontiguousarray(a, dtype=np.uint8)


# ---- torchvision ---------------------------------------------------------------------------------


def load_torchvision_mnist(root: str | Path, verify: bool = True, fashion: bool = False) -> tuple[Split, Split]:
    """torchvision.datasets.MNIST (or FashionMNIST) from <root>, never downloading; canonical arrays."""
    datasets = importlib.import_module("torchvision.datasets")
    cls, info = (datasets.FashionMNIST, FASHION_MNIST) if fashion else (datasets.MNIST, MNIST)
    try:
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataNotFoundError(f"{root}: torchvision {cls.__name__} (download=False): {e}") from None
    source = f"torchvision {cls.__name__} in {root}"
    arrays = _arrays(
        _uint8(train.data.numpy(), 255, source),
        _uint8(train.targets.numpy(), 9, source),
        _uint8(test.data.numpy(), 255, source),
        _uint8(test.targets.numpy(), 9, source),
    )
    if verify:
        verify_arrays(arrays, info, source)
    return _pairs(arrays)
