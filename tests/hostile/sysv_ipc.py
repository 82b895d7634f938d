"""Hostile: plants System V shared memory and a message queue for the next submission to read.

Without an IPC namespace of its own, a segment outlives the process (and the grader) and any later
submission that knows the key can attach it: a channel between students, and memory that is never
freed. `plant(key)` creates both and writes `secret`; `read(key)` looks for them.
"""

import ctypes

IPC_CREAT, IPC_NOWAIT = 0o1000, 0o4000
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


class Msg(ctypes.Structure):
    _fields_ = (("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64))


def plant(key, secret, mb=1):
    shm = libc.shmget(key, mb * 1024 * 1024, IPC_CREAT | 0o666)
    if shm < 0:
        return f"shmget failed: errno {ctypes.get_errno()}"
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, secret.encode(), len(secret))
    q = libc.msgget(key, IPC_CREAT | 0o666)
    msg = Msg(1, secret.encode())
    libc.msgsnd(q, ctypes.byref(msg), 64, IPC_NOWAIT)
    return "planted"


def read(key):
    found = {}
    shm = libc.shmget(key, 0, 0)
    if shm >= 0:
        addr = libc.shmat(shm, None, 0o10000)  # SHM_RDONLY
        found["shm"] = ctypes.string_at(addr, 64).split(b"\0")[0].decode()
    q = libc.msgget(key, 0)
    if q >= 0:
        msg = Msg()
        if libc.msgrcv(q, ctypes.byref(msg), 64, 0, IPC_NOWAIT) >= 0:
            found["msg"] = msg.mtext.decode()
    return found
