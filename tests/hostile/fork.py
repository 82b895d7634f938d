"""Hostile: leaves processes behind.

orphan(): a grandchild that leaves the process group and session (setsid) and sleeps; the call
returns normally, with the uid the processes run under.
fork_and_hang(): a child in the same group sleeps, the parent hangs; the uid is printed first.
"""

import os
import time


def orphan():
    r, w = os.pipe()
    if os.fork() == 0:  # child: start a new session, fork the grandchild, report, leave
        os.setsid()
        if os.fork() == 0:
            time.sleep(10_000)
            os._exit(0)
        os.write(w, b"forked")
        os._exit(0)
    os.close(w)
    return {"uid": os.getuid(), "grandchild": os.read(r, 64).decode()}


def fork_and_hang():
    if os.fork() == 0:
        time.sleep(10_000)
        os._exit(0)
    print(f"uid {os.getuid()}", flush=True)
    time.sleep(10_000)
