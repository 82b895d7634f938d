"""Hostile: tries to kill its parent (the grader, or init of its pid namespace)."""

import os
import signal


def kill_parent():
    os.kill(os.getppid(), signal.SIGKILL)
    return "survived?"
