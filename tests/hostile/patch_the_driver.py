# ruff: noqa  -- a hostile submission (test fixture)
"""Hostile, class API: no hidden-layer maths; it patches the trusted driver so that the gradients
and updated weights it cannot compute come back as None.

At import it finds the driver module (loaded before the submission, in the same process: a local
of the child's loop, one frame up the stack) and replaces the helpers that read grad_loss's result and the parameters after train.
On main a None tensor was "not compared" and passed: 14/14 on class-api. Anything that comes back
from the child is hostile input: a missing or None answer fails the comparison it belongs to.
"""

import sys

import numpy as np

def _drivers():
    f = sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()):
            if type(v).__name__ == "module" and (hasattr(v, "class_probe") or hasattr(v, "_grads")):
                yield v
        f = f.f_back


def _patch():
    for mod in list(_drivers()):
        real_grads = getattr(mod, "_grads", None)

        def _grads(value, keys, names, *args, **kwargs):
            if isinstance(value, dict):
                return {k: (np.asarray(value[names[k]]) if names[k] in value else None) for k in keys}
            return real_grads(value, keys, names, *args, **kwargs)

        def _read_attrs(obj, names, attrs, *args, **kwargs):
            return {a: (np.array(getattr(obj, names[a])) if a in ("W_o", "b_o", "W", "b") else None) for a in attrs}

        mod._grads = _grads
        mod._read_attrs = _read_attrs
    return True


def softmax(X):
    e = np.exp(X - np.max(X, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def one_hot(n, y):
    return np.eye(n)[np.asarray(y, dtype=int)]


def nll(Y, P):
    return -np.sum(Y * np.log(np.clip(P, 1e-15, 1 - 1e-15)))


class LogisticRegression:
    def __init__(self, input_size, output_size):
        self.W = np.zeros((input_size, output_size))
        self.b = np.zeros(output_size)
        self.output_size = output_size

    def forward(self, X):
        return softmax(X @ self.W + self.b)

    def loss(self, X, y):
        return nll(one_hot(self.output_size, y), self.forward(X))

    def grad_loss(self, X, y_true, y_pred):
        error = y_pred - y_true
        return X.T @ error, error.sum(axis=0)


class NeuralNet:
    _patched = _patch()  # a class body runs at import, so the grader's extraction keeps it

    def __init__(self, input_size, hidden_size, output_size):
        self.W_h = np.zeros((input_size, hidden_size))
        self.b_h = np.zeros(hidden_size)
        self.W_o = np.zeros((hidden_size, output_size))
        self.b_o = np.zeros(output_size)
        self.output_size = output_size

    def forward(self, X):
        self.H = 1 / (1 + np.exp(-np.clip(X @ self.W_h + self.b_h, -500, 500)))
        return softmax(self.H @ self.W_o + self.b_o)

    def loss(self, X, y):
        return nll(one_hot(self.output_size, y), self.forward(X))

    def grad_loss(self, X, y_true):
        error_o = self.forward(X) - one_hot(self.output_size, y_true)
        return {"W_o": self.H.T @ error_o, "b_o": error_o.sum(axis=0)}  # no hidden layer: W_h, b_h missing

    def train(self, x, y, learning_rate):
        grads = self.grad_loss(x[np.newaxis, :], y)
        self.W_o = self.W_o - learning_rate * grads["W_o"]
        self.b_o = self.b_o - learning_rate * grads["b_o"]
