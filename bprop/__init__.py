"""bprop: the command-line tool (validate, check) of the backprop reference-validation suite.

In a notebook: `import bprop; bprop.check("layer-api")` (bprop/notebook.py), or `%load_ext bprop`
and `%bprop_check layer-api`. Importing bprop stays light: the grader loads on the first check.
"""

import sys


def check(assignment="layer-api", only=None, **options):
    """Grade what this kernel defines against `assignment`, as `bprop check` would (bprop/notebook.py)."""
    from bprop.notebook import check as _check

    return _check(assignment, only, _caller=sys._getframe(1).f_globals, **options)


def load_ipython_extension(ipython):
    """`%load_ext bprop`: registers the %bprop_check magic."""
    from bprop.notebook import load_ipython_extension as _load

    _load(ipython)
