"""Hostile: never returns, burning CPU (spin) or not (sleep)."""

import time


def spin():
    while True:
        pass


def sleep():
    time.sleep(10_000)
