"""Hostile: writes 100 MB to stdout and 10 MB to stderr at import, then answers normally."""

import sys

CHUNK = "x" * 1_000_000 + "\n"
for _ in range(100):
    sys.stdout.write(CHUNK)
for _ in range(10):
    sys.stderr.write(CHUNK)


def answer():
    return 42
