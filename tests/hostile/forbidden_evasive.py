"""Hostile: imports torch and scipy in a way no static scan can see (code decoded at run time).

What stops it is the sandbox at run time: the import is refused with a verdict naming the module
and the line of the exec.
"""

import base64

HIDDEN = base64.b64encode(b"import torch\nRESULT = torch.ones(3).sum().item()\n")
HIDDEN_SCIPY = base64.b64encode(b"import scipy.special\nRESULT = float(scipy.special.expit(0.0))\n")


def use_torch():
    scope = {}
    exec(base64.b64decode(HIDDEN).decode(), scope)
    return scope["RESULT"]


def use_scipy():
    scope = {}
    exec(base64.b64decode(HIDDEN_SCIPY).decode(), scope)
    return scope["RESULT"]
