"""The trusted driver of the hostile submissions: call one function of the submission by name."""

import numpy as np


def load(module):
    """Only import the submission."""
    return "loaded"


def call(module, name, **kwargs):
    """module.<name>(**kwargs)."""
    return getattr(module, name)(**kwargs)


def dot(module, a, b):
    """np.dot in the child, after the submission was imported (and perhaps patched numpy)."""
    return np.dot(a, b)
