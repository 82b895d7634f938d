"""Hostile: leaves processes behind.

orphan(): a grandchild that leaves the process group (setsid) and sleeps, the call returns its pid.
fork_and_hang(): a child in the same group sleeps, the parent hangs; both pids are printed.
"""

import os
import time


def orphan():
    r, w = os.pipe()
    if os.fork() == 0:  # child: start a new session, fork the grandchild, report its pid, leave
        os.setsid()
        pid = os.fork()
        if pid == 0:
            time.sleep(10_000)
            os._exit(0)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    return int(os.read(r, 64))


def fork_and_hang():
    pid = os.fork()
    if pid == 0:
        time.sleep(10_000)
        os._exit(0)
    print(f"pids {os.getpid()} {pid}", flush=True)
    time.sleep(10_000)
