"""IDX files (MNIST, Fashion-MNIST): round trips, and a clear error for every way a file goes wrong."""

import gzip
import re

import numpy as np
import pytest

from data_loaders import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    write_idx,
)
from data_loaders.idx import IDX_NAMES, find_idx_files, read_idx_set

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
LABELS = RNG.integers(0, 10, size=(7,), dtype=np.uint8)


def write_set(folder, n_train=7, n_test=3, gz=False, seed=0):
    """Four small MNIST-shaped IDX files in `folder`; returns their arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=(n_train,), dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=(n_test,), dtype=np.uint8),
    }
    for key, a in arrays.items():
        write_idx(folder / (IDX_NAMES[key] + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "array",
    [
        IMAGES,
        LABELS,
        np.arange(12, dtype=np.int32).reshape(3, 4) - 5,
        np.linspace(-1, 1, 6),
        np.zeros((0, 28, 28), np.uint8),
    ],
    ids=["images-u8", "labels-u8", "int32", "float64", "empty"],
)
def test_write_read_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"a{suffix}", array)
    back = read_idx(path, ndim=array.ndim)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable and back.flags.c_contiguous


def test_header_is_lecuns(tmp_path):
    raw = write_idx(tmp_path / "x", IMAGES).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == (7).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(raw) == 16 + IMAGES.size


def test_gzip_is_detected_by_content_not_name(tmp_path):
    plain = tmp_path / "images"
    plain.write_bytes(gzip.compress(write_idx(tmp_path / "tmp", IMAGES).read_bytes()))
    np.testing.assert_array_equal(read_idx(plain, ndim=3), IMAGES)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b"\x08\x03\x00\x00" + b[4:], "wrong IDX magic number 0x08030000: expected 0x00000803"),
        (lambda b: b[:2] + b"\x07" + b[3:], "wrong IDX magic number 0x00000703"),
        (
            lambda b: b[:3] + b"\x01" + b[4:],
            "wrong IDX magic number 0x00000801: expected 0x00000803 (3 dimensions), the file has 1",
        ),
        (lambda b: b[:100], "truncated: header says 7x28x28 uint8 = 5488 bytes of data, the file has 84"),
        (lambda b: b[:10], "truncated: 10 bytes, shorter than its 16-byte IDX header"),
        (lambda b: b[:3], "truncated: 3 bytes, shorter than the 4-byte IDX magic number"),
        (lambda b: b + b"\x00\x00", "2 unexpected bytes after the data"),
    ],
    ids=[
        "swapped-magic",
        "bad-type",
        "labels-not-images",
        "truncated-data",
        "truncated-header",
        "truncated-magic",
        "trailing",
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_bad_file_is_named_with_what_is_wrong(tmp_path, mangle, message, gz):
    good = write_idx(tmp_path / "good", IMAGES).read_bytes()
    bad = tmp_path / ("bad.gz" if gz else "bad")
    bad.write_bytes(gzip.compress(mangle(good)) if gz else mangle(good))
    with pytest.raises(DataFormatError) as e:
        read_idx(bad, ndim=3)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value)


def test_truncated_gzip_is_named(tmp_path):
    data = gzip.compress(write_idx(tmp_path / "good", IMAGES).read_bytes())
    bad = tmp_path / "cut.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(bad))}: truncated or corrupted gzip"):
        read_idx(bad)


@pytest.mark.parametrize(
    "layout",
    ["", "raw", "MNIST/raw", "FashionMNIST/raw", "windows-names", "mixed-gz"],
)
def test_finds_the_four_files_where_people_keep_them(tmp_path, layout):
    folder = tmp_path / layout if layout in ("raw", "MNIST/raw", "FashionMNIST/raw") else tmp_path
    arrays = write_set(folder, gz=layout == "mixed-gz")
    if layout == "windows-names":  # train-images.idx3-ubyte, as Windows tools unpack them
        for stem in IDX_NAMES.values():
            (folder / stem).rename(folder / stem.replace("-idx", ".idx"))
    if layout == "mixed-gz":
        (folder / (IDX_NAMES["y_test"] + ".gz")).write_bytes(
            gzip.decompress((folder / (IDX_NAMES["y_test"] + ".gz")).read_bytes())
        )
        (folder / (IDX_NAMES["y_test"] + ".gz")).rename(folder / IDX_NAMES["y_test"])
    got = read_idx_set(find_idx_files(tmp_path))
    for key in arrays:
        np.testing.assert_array_equal(got[key], arrays[key])


def test_missing_file_says_where_it_looked(tmp_path):
    write_set(tmp_path)
    (tmp_path / IDX_NAMES["y_test"]).unlink()
    with pytest.raises(DataNotFoundError) as e:
        find_idx_files(tmp_path)
    msg = str(e.value)
    assert f"{tmp_path} (missing t10k-labels-idx1-ubyte)" in msg
    assert f"{tmp_path / 'MNIST' / 'raw'} (no such folder)" in msg


def test_load_mnist_from_wrong_sized_idx_files_names_the_array(tmp_path):
    write_set(tmp_path)  # 7 training images where MNIST has 60000
    with pytest.raises(DataFormatError, match=r"MNIST x_train: expected shape \(60000, 28, 28\), got \(7, 28, 28\)"):
        load_mnist(path=tmp_path)


def test_load_mnist_missing_folder_names_it(tmp_path):
    with pytest.raises(DataNotFoundError, match=rf"{re.escape(str(tmp_path / 'nope'))}: no such file or folder"):
        load_mnist(path=tmp_path / "nope")


def test_load_mnist_empty_folder_lists_places_and_npz(tmp_path):
    with pytest.raises(
        DataNotFoundError,
        match=rf"looked in: {re.escape(str(tmp_path))} \(missing .*; and no {re.escape(str(tmp_path / 'mnist.npz'))}",
    ):
        load_mnist(path=tmp_path)


def test_fashion_needs_a_path(monkeypatch):
    monkeypatch.delenv("BPROP_FASHION_MNIST", raising=False)
    with pytest.raises(DataNotFoundError, match="BPROP_FASHION_MNIST"):
        load_fashion_mnist()


def test_fashion_gz_files_are_checked_against_the_published_sha256(tmp_path):
    write_set(tmp_path, gz=True)
    with pytest.raises(
        ChecksumError, match=r"Fashion-MNIST x_train \(.gz as published\): sha256 mismatch: expected 3aede38d"
    ) as e:
        load_fashion_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value)


def test_fashion_label_counts_are_checked(tmp_path, monkeypatch):
    # Full-sized but unbalanced labels: Fashion-MNIST has exactly 6000 / 1000 of each class.
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    write_idx(folder / IDX_NAMES["x_train"], np.zeros((60000, 28, 28), np.uint8))
    write_idx(folder / IDX_NAMES["x_test"], np.zeros((10000, 28, 28), np.uint8))
    write_idx(folder / IDX_NAMES["y_train"], np.repeat(np.arange(10, dtype=np.uint8), 6000))
    write_idx(folder / IDX_NAMES["y_test"], np.zeros(10000, np.uint8))
    monkeypatch.setenv("BPROP_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ChecksumError, match=r"Fashion-MNIST y_test: label counts mismatch: expected \[1000, 1000"):
        load_fashion_mnist()
    write_idx(folder / IDX_NAMES["y_test"], np.repeat(np.arange(10, dtype=np.uint8), 1000))
    (x_train, _), (_, y_test) = load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28) and y_test.dtype == np.uint8 and np.bincount(y_test).tolist() == [1000] * 10
