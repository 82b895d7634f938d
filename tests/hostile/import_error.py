"""Not hostile, just broken at import: a NameError at top level."""

import numpy as np

weights = [np.zeros((784, 32)), undefined_name]  # noqa: F821
