# ruff: noqa  -- a hostile submission (test fixture)
"""Hostile, layer API: no arithmetic at all; every answer is looked up in what the grader sent.

It walks up the stack from its own methods to the sandbox child's loop, decodes every call's
inputs (the call file the child read: `inputs`, with the child's own `decode`), and searches them
for the array it was given. When the grader sends layer k+1's input = layer k's reference output,
and layer k-1's grad_output = layer k's reference dL/dx, the "next" array is the answer.
On main this scored 6/13 on layer-api. With probes of their own per layer it finds nothing.
"""

import sys

import numpy as np


def _sent():
    """Every dict of layer specs the grader sent to this child, in every call."""
    f = sys._getframe()
    while f is not None:
        if "inputs" in f.f_locals and "decode" in f.f_globals:
            found = []
            for tree, arrays in f.f_locals["inputs"]:
                _walk(f.f_globals["decode"](tree, arrays), found)
            return found
        f = f.f_back
    return []


def _walk(value, found):
    if isinstance(value, dict):
        if isinstance(value.get("layers"), list):
            found.append(value)
        for v in value.values():
            _walk(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk(v, found)


def _same(a, b):
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)


def _lookup_forward(x):
    for case in _sent():
        layers = case["layers"]
        for k, spec in enumerate(layers):
            if _same(spec.get("x"), x):
                if k + 1 < len(layers) and "x" in layers[k + 1]:
                    return layers[k + 1]["x"]
                if "logits" in case:
                    return case["logits"]
    return None


def _lookup_backward(x, g):
    for case in _sent():
        layers = case["layers"]
        for k, spec in enumerate(layers):
            if _same(spec.get("x"), x) and _same(spec.get("grad_out"), g) and k > 0:
                return layers[k - 1]["grad_out"]
    return None


class Layer:
    def forward(self, input):
        out = _lookup_forward(input)
        return out if out is not None else np.zeros_like(input)

    def backward(self, input, grad_output):
        out = _lookup_backward(input, grad_output)
        return out if out is not None else np.zeros_like(input)


class ReLU(Layer):
    pass


class Dense(Layer):
    def __init__(self, input_units, output_units, learning_rate=0.1):
        self.learning_rate = learning_rate
        self.weights = np.zeros((input_units, output_units))
        self.biases = np.zeros(output_units)

    def forward(self, input):
        out = _lookup_forward(input)
        return out if out is not None else np.zeros((len(input), self.biases.size))


def softmax_crossentropy_with_logits(logits, reference_answers):
    return np.zeros(len(logits))


def grad_softmax_crossentropy_with_logits(logits, reference_answers):
    for case in _sent():
        if _same(case.get("logits"), logits):
            return case["layers"][-1]["grad_out"]
    return np.zeros_like(logits)


def forward(network, X):
    activations = []
    for layer in network:
        X = layer.forward(X)
        activations.append(X)
    return activations


def train(network, X, y):
    return 0.0
