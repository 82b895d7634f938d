# ruff: noqa  -- a hostile student submission (test fixture): every trick is deliberate
"""Coursera DNN, hostile: junk printing, wrong return types, a caches list that lies, an exception, a
function that kills its own process. Each costs only the marks of the function that does it:
linear_forward (junk printed, the right Z), L_model_forward (the right AL and number of caches),
linear_backward and update_parameters are correct and keep their points."""
import os
import sys

import numpy as np
from dnn_utils import relu, sigmoid

print("\x1b[2J\x1b[31mTOP-LEVEL JUNK\x1b[0m " * 500)


def linear_forward(A, W, b):
    print("\x1b[2J\u202e noise \x00" * 2000)  # terminal escapes, a bidi override, NUL: printed during the call
    sys.stderr.write("\x1b]0;owned\x07" * 100)
    return np.dot(W, A) + b, (A, W, b)


def linear_activation_forward(A_prev, W, b, activation):
    return "A", {"not": "a cache"}  # a string where A belongs


def L_model_forward(X, parameters):
    caches, A = [], X
    L = len(parameters) // 2
    for l in range(1, L + 1):
        A_prev, W, b = A, parameters["W" + str(l)], parameters["b" + str(l)]
        Z = W @ A_prev + b
        A = sigmoid(Z)[0] if l == L else relu(Z)[0]
        caches.append((A_prev.T, W, b, Z))  # a 4-tuple, A_prev transposed: not the notebook's cache
    return A, caches[::-1]  # the right AL and count; caches in the wrong order and of the wrong shape


def compute_cost(AL, Y):
    raise RuntimeError("compute_cost refuses")


def linear_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    return W.T @ dZ, dZ @ A_prev.T / m, dZ.sum(axis=1, keepdims=True) / m


def relu_backward(dA, cache):
    return None


def sigmoid_backward(dA, cache):
    os._exit(3)  # kills the sandboxed child: the next function gets a fresh one


def linear_activation_backward(dA, cache, activation):
    linear_cache, Z = cache  # linear_activation_forward's dict: unpacks into its keys
    return linear_backward(dA, linear_cache)


def L_model_backward(AL, Y, caches):
    grads = {}
    L = len(caches)
    dA = -(Y / AL - (1 - Y) / (1 - AL))
    for l in reversed(range(L)):
        (A_prev, W, b), Z = caches[l][:3], caches[l][3]
        dZ = dA * (Z > 0)
        grads["dA" + str(l)], grads["dW" + str(l + 1)], grads["db" + str(l + 1)] = linear_backward(dZ, (A_prev, W, b))
        dA = grads["dA" + str(l)]
    return grads


def update_parameters(params, grads, learning_rate):
    return {k: v - learning_rate * grads["d" + k] for k, v in params.items()}
