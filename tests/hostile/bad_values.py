"""Hostile: returns what cannot or must not travel back, or forges the result channel."""

import json
import os
import stat
import struct

import numpy as np


def an_object():
    return {"weights": object()}


def object_array():
    return np.array([None, "x"], dtype=object)


def sixteen_mb():
    return np.zeros(2 * 2**20)  # 16 MB of float64


def long_list():
    return [0.5] * 2_000_000  # ~10 MB as JSON


def nan_array():
    return np.array([np.nan, np.inf, 1.0])


def _pipes():
    return [fd for fd in range(3, 64) if _is_pipe(fd)]


def _is_pipe(fd):
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def garbage():
    for fd in _pipes():
        os.write(fd, b"this is not a frame" * 10)
    return 1


def _frame(kind, payload):
    return struct.pack(">cI", kind, len(payload)) + payload


def forged_huge_array():
    """A well-formed result whose .npy header claims 8 TB but carries 16 bytes."""
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 16
    msg = json.dumps({"result": 0, "ok": True, "value": {"$nd": 0}, "arrays": 1}).encode()
    for fd in _pipes():
        os.write(fd, _frame(b"J", msg) + _frame(b"A", npy))
    return 1


def forged_object_array():
    """A well-formed result whose .npy holds a pickled object array."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."
    msg = json.dumps({"result": 0, "ok": True, "value": {"$nd": 0}, "arrays": 1}).encode()
    for fd in _pipes():
        os.write(fd, _frame(b"J", msg) + _frame(b"A", npy))
    return 1
