"""Hostile: dereferences NULL."""

import ctypes


def crash():
    return ctypes.string_at(0)
