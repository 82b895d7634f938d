"""Hostile: makes the grader, not itself, do the work: hundreds of thousands of .npy frames whose
headers are as long and as slow to parse as numpy's reader allows, inside the 200 MB result cap.

The child spends almost nothing (it writes the same bytes again and again); the grader used to spend
its own CPU, outside every limit, decoding them (88 s against a 30 s limit).
"""

import json
import os
import stat
import struct


def _pipes():
    out = []
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                out.append(fd)
        except OSError:
            continue
    return out


def _frame(kind, payload):
    return struct.pack(">cI", kind, len(payload)) + payload


def _npy(pad):
    """A valid zero-size float64 array whose header repeats its shape key `pad` more times (the
    last one wins, so numpy's reader accepts it after parsing it all)."""
    header = ("{'descr': '<f8', 'fortran_order': False, " + "'shape': (0,), " * (pad + 1) + "}").encode()
    header += b" " * (63 - (12 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header


def many_arrays(n=450_000, pad=0):
    """One result of n arrays (a list of n {"$nd": k}); the JSON stays under the 8 MB message cap."""
    msg = json.dumps({"result": 0, "ok": True, "value": [{"$nd": k} for k in range(n)], "arrays": n}).encode()
    blob = _frame(b"A", _npy(pad))
    for fd in _pipes():
        os.write(fd, _frame(b"J", msg))
        chunk = blob * 1000
        for _ in range(n // 1000):
            os.write(fd, chunk)
    return 1
