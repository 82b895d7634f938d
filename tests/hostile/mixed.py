"""Hostile in some calls only: for run_calls, where each call must get its own verdict."""

import ctypes
import os
import time


def ok(x):
    return x + 1


def spin():
    while True:
        pass


def crash():
    ctypes.string_at(0)


def fail():
    raise KeyError("dense_1.W")


def leave():
    os._exit(7)


def nap(seconds):
    time.sleep(seconds)
    return seconds
