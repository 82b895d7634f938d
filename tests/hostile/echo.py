"""Benign control: returns what it is given, and counts its calls in a module global."""

calls = 0


def echo(**kwargs):
    return kwargs


def bump():
    global calls
    calls += 1
    return calls
