# ruff: noqa  -- a student submission (test fixture): its style and bugs are deliberate
"""Function API, correct, with the notebook's own given cross_entropy_loss (NaN at logits of +-1e3:
0 * log(0)). The assignment marks it provided: it is not graded and costs the student nothing."""
import math

import numpy as np


def sigmoid(x):
    x = np.clip(x, -500, 500)
    return 1.0 / (1.0 + np.exp(-x))


def dsigmoid(x):
    s = sigmoid(x)
    return s * (1 - s)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def cross_entropy_loss(y, yHat):
    return -np.sum(y * np.log(yHat))


def integer_to_one_hot(x, max):
    v = np.zeros(max)
    v[x] = 1
    return v


weights = [
    np.random.normal(0, 1 / math.sqrt(784), (784, 32)),
    np.random.normal(0, 1 / math.sqrt(32), (32, 32)),
    np.random.normal(0, 1 / math.sqrt(32), (32, 10)),
]
biases = [np.zeros((1, 32)), np.zeros((1, 32)), np.zeros((1, 10))]


def feed_forward_sample(sample, y):
    a0 = np.reshape(sample, (1, 28 * 28))
    h1 = sigmoid(a0 @ weights[0] + biases[0])
    h2 = sigmoid(h1 @ weights[1] + biases[1])
    p = softmax(h2 @ weights[2] + biases[2])
    loss = cross_entropy_loss(integer_to_one_hot(y, 10), p)
    return loss, integer_to_one_hot(int(np.argmax(p)), 10)


def train_one_sample(sample, y, learning_rate=0.003):
    a0 = np.reshape(sample, (1, 28 * 28))
    z1 = a0 @ weights[0] + biases[0]
    a1 = sigmoid(z1)
    z2 = a1 @ weights[1] + biases[1]
    a2 = sigmoid(z2)
    z3 = a2 @ weights[2] + biases[2]
    p = softmax(z3)
    delta3 = p - integer_to_one_hot(y, 10)
    dW3, db3 = a2.T @ delta3, delta3
    delta2 = (delta3 @ weights[2].T) * dsigmoid(z2)
    dW2, db2 = a1.T @ delta2, delta2
    delta1 = (delta2 @ weights[1].T) * dsigmoid(z1)
    dW1, db1 = a0.T @ delta1, delta1
    for i, (dW, db) in enumerate(((dW1, db1), (dW2, db2), (dW3, db3))):
        weights[i] = weights[i] - learning_rate * dW
        biases[i] = biases[i] - learning_rate * db


# the notebook's training: skipped by the grader
(x_train, y_train), (x_test, y_test) = __import__("tensorflow").keras.datasets.mnist.load_data()
for epoch in range(3):
    for i in range(x_train.shape[0]):
        train_one_sample(x_train[i], y_train[i])
