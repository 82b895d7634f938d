"""Keras-style .npz files (x_train, y_train, x_test, y_test) and the verified, atomic local cache.

    read_npz(path) -> {key: array}                 never unpickles (allow_pickle=False)
    write_npz_atomic(path, arrays)                 temp file in the same folder, fsync, os.replace
    cached(path, info, build, source) -> arrays    read + verify, or rebuild with a warning

Atomic: the cache file appears under its name only complete (os.replace is atomic on one file
system). A process killed mid-write leaves at most a hidden `.<name>.*.tmp` beside it, which is never
read. A cache file that is truncated or altered anyway (disk full, a copy cut short, a hand edit)
fails `verify` and is rebuilt with a CacheWarning, never used.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_loaders.checksums import KEYS, DatasetInfo, verify
from data_loaders.errors import CacheWarning, ChecksumError, DataFormatError


def read_npz(path: str | Path, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file; DataFormatError naming the file when it cannot be read."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataFormatError(f"{path}: missing arrays {missing} (expected {list(keys)}, found {f.files})")
            return {k: f[k] for k in keys}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not a readable .npz (truncated or corrupted?): {type(e).__name__}: {e}") from e


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write an uncompressed .npz so that `path` is either absent, the old file, or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is ordinary readable data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached(
    path: Path,
    info: DatasetInfo,
    build: Callable[[], dict[str, np.ndarray]],
    source: str,
) -> dict[str, np.ndarray]:
    """Verified arrays from the cache at `path`, else from `build()` (verified, then cached)."""
    if path.is_file():
        try:
            arrays = read_npz(path, tuple(info.shapes))
            verify(arrays, info, path)
            return arrays
        except (DataFormatError, ChecksumError) as e:
            warnings.warn(f"{path}: damaged {info.name} cache, rebuilding it from {source}: {e}", CacheWarning, 2)
    arrays = build()
    verify(arrays, info, source)
    try:
        write_npz_atomic(path, arrays)
    except OSError as e:
        warnings.warn(
            f"{path}: could not write the {info.name} cache ({e}); it will be rebuilt next time", CacheWarning, 2
        )
    return arrays
