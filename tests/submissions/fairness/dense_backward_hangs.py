# ruff: noqa  -- a student submission (test fixture): its style and bugs are deliberate
"""Layer API, correct except that Dense.backward never returns (an endless loop). The checks that
never call Dense.backward keep their points."""

import numpy as np


class Layer:
    def forward(self, input):
        return input

    def backward(self, input, grad_output):
        return grad_output


class ReLU(Layer):
    def forward(self, input):
        return np.maximum(input, 0)

    def backward(self, input, grad_output):
        return grad_output * (input > 0)


class Sigmoid(Layer):
    def forward(self, input):
        return 0.5 * (1 + np.tanh(0.5 * input))

    def backward(self, input, grad_output):
        s = self.forward(input)
        return grad_output * s * (1 - s)


class Tanh(Layer):
    def forward(self, input):
        return np.tanh(input)

    def backward(self, input, grad_output):
        return grad_output * (1 - np.tanh(input) ** 2)


class Dense(Layer):
    def __init__(self, input_units, output_units, learning_rate=0.1):
        self.learning_rate = learning_rate
        self.weights = np.random.randn(input_units, output_units) * 0.01
        self.biases = np.zeros(output_units)

    def forward(self, input):
        return input @ self.weights + self.biases

    def backward(self, input, grad_output):
        while True:
            pass
        grad_input = grad_output @ self.weights.T
        grad_weights = input.T @ grad_output
        grad_biases = grad_output.sum(axis=0)
        self.weights = self.weights - self.learning_rate * grad_weights
        self.biases = self.biases - self.learning_rate * grad_biases
        return grad_input


def softmax_crossentropy_with_logits(logits, reference_answers):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    return log_norm - shifted[np.arange(len(logits)), reference_answers]


def grad_softmax_crossentropy_with_logits(logits, reference_answers):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    p[np.arange(len(logits)), reference_answers] -= 1
    return p / logits.shape[0]


def forward(network, X):
    activations = []
    for layer in network:
        X = layer.forward(X)
        activations.append(X)
    return activations


def train(network, X, y):
    activations = forward(network, X)
    inputs = [X] + activations[:-1]
    logits = activations[-1]
    loss = softmax_crossentropy_with_logits(logits, y)
    grad = grad_softmax_crossentropy_with_logits(logits, y)
    for layer, layer_input in zip(reversed(network), reversed(inputs)):
        grad = layer.backward(layer_input, grad)
    return np.mean(loss)


# top-level work a student leaves in: skipped by the grader
network = [Dense(784, 100), ReLU(), Dense(100, 200), ReLU(), Dense(200, 10)]
for epoch in range(1000):
    print("training...")
