"""Hostile: asks for 50 GB."""

import numpy as np

GB = 2**30


def numpy_array():
    return np.ones(50 * GB // 8)


def python_bytes():
    return bytearray(50 * GB)
