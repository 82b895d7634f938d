"""IDX files, the format MNIST and Fashion-MNIST ship in (raw or .gz), read strictly.

Layout (big-endian): magic 0x00 0x00 <type> <ndim>, then ndim uint32 sizes, then the data.
    images 0x00000803 (uint8, 3 dims: n, 28, 28)      labels 0x00000801 (uint8, 1 dim: n)
A file whose magic, length or shape disagrees with this raises DataFormatError naming the file.

    read_idx(path, ndim=3) -> np.ndarray          one file (gzip detected by its magic, not its name)
    write_idx(path, array)                         the inverse (.gz name -> gzip)
    find_idx_files(directory) -> {key: Path}       the four files, in the layouts people have them
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from data_loaders.errors import DataFormatError, DataNotFoundError

IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"

# LeCun's names; torchvision keeps them under <root>/MNIST/raw (or FashionMNIST/raw), unpacked.
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_NDIM = {"x_train": 3, "y_train": 1, "x_test": 3, "y_test": 1}
SUBDIRS = (".", "raw", "MNIST/raw", "FashionMNIST/raw")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path}: truncated or corrupted gzip ({type(e).__name__}: {e})") from e


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in an IDX file, in native byte order; `ndim` checks the magic's dimension count."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: truncated: {len(data)} bytes, shorter than the 4-byte IDX magic number")
    zero, type_code, n_dims = struct.unpack(">HBB", data[:4])
    expected = f"0x00000{8:1X}{ndim:02X}" if ndim is not None else "0x0000TTNN"
    if zero != 0 or type_code not in IDX_TYPES:
        raise DataFormatError(
            f"{path}: wrong IDX magic number 0x{data[:4].hex().upper()}: expected {expected} "
            f"(two zero bytes, a type code in {sorted(hex(t) for t in IDX_TYPES)}, the number of dimensions)"
        )
    if ndim is not None and n_dims != ndim:
        raise DataFormatError(
            f"{path}: wrong IDX magic number 0x{data[:4].hex().upper()}: expected {expected} "
            f"({ndim} dimension{'s' if ndim != 1 else ''}), the file has {n_dims}"
        )
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated: {len(data)} bytes, shorter than its {header}-byte IDX header")
    shape = struct.unpack(f">{n_dims}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[type_code])
    need = math.prod(shape) * dtype.itemsize
    have = len(data) - header
    what = f"header says {'x'.join(map(str, shape))} {dtype.name} = {need} bytes of data"
    if have < need:
        raise DataFormatError(f"{path}: truncated: {what}, the file has {have}")
    if have > need:
        raise DataFormatError(f"{path}: {have - need} unexpected bytes after the data ({what}, the file has {have})")
    array = np.frombuffer(data, dtype, count=math.prod(shape), offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-order copy


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file (gzip when the name ends in .gz)."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise DataFormatError(f"{path}: IDX cannot store dtype {array.dtype}; it stores {sorted(set(map(str, codes)))}")
    header = struct.pack(">HBB", 0, codes[dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.dtype(IDX_TYPES[codes[dtype]])).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _candidates(stem: str) -> list[str]:
    # "train-images-idx3-ubyte" and the Windows-unpacked "train-images.idx3-ubyte", raw or .gz.
    dotted = stem.replace("-idx", ".idx")
    return [stem, f"{stem}.gz", dotted, f"{dotted}.gz"]


def find_idx_files(directory: str | Path, what: str = "MNIST") -> dict[str, Path]:
    """The four IDX files in `directory` or its raw/, MNIST/raw/, FashionMNIST/raw/ subfolders."""
    directory = Path(directory)
    looked = []
    for sub in SUBDIRS:
        folder = (directory / sub).resolve() if sub != "." else directory
        found = {}
        for key, stem in IDX_NAMES.items():
            hits = [folder / name for name in _candidates(stem) if (folder / name).is_file()]
            if hits:
                found[key] = hits[0]
        if len(found) == len(IDX_NAMES):
            return found
        if folder.is_dir():
            missing = [IDX_NAMES[k] for k in IDX_NAMES if k not in found]
            looked.append(f"{folder} (missing {', '.join(missing)})")
        else:
            looked.append(f"{folder} (no such folder)")
    names = ", ".join(f"{stem}[.gz]" for stem in IDX_NAMES.values())
    raise DataNotFoundError(f"no complete set of {what} IDX files ({names}); looked in: " + "; ".join(looked))


def read_idx_set(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The four arrays of an IDX set, images (n, rows, cols) and labels (n,)."""
    return {key: read_idx(path, ndim=IDX_NDIM[key]) for key, path in files.items()}
