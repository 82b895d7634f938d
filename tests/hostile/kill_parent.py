"""Hostile: tries to kill the grader."""

import os
import signal


def kill_parent():
    os.kill(os.getppid(), signal.SIGKILL)
    return "survived?"
