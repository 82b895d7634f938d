"""Hostile: forks up to 10,000 children that each sleep.

Self-bounded so that a failing sandbox cannot take the machine down: every child exits after
LIFETIME seconds, so at most (forks per second) x LIFETIME children are alive at any time.
"""

import os
import time

LIFETIME = 1.0


def bomb(n=10_000):
    for i in range(n):
        try:
            pid = os.fork()
        except OSError:
            print(f"fork number {i + 1} refused", flush=True)
            raise
        if pid == 0:
            time.sleep(LIFETIME)
            os._exit(0)
    return n
