# ruff: noqa  -- a student submission (test fixture): its style and bugs are deliberate
"""Class API: the hidden layer's dW is transposed, but only when that layer is square (the bug shows
only on a square first layer; the built-in's small shapes have none: the shape sweep's "square" case).
"""
# expect: weight_gradients dense_1.dW transpose
import numpy as np


def one_hot(n_classes, y):
    return np.eye(n_classes)[np.asarray(y, dtype=int)]


def softmax(X):
    e = np.exp(X - np.max(X, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def nll(Y_true, Y_pred):
    return -np.sum(np.asarray(Y_true) * np.log(np.clip(Y_pred, 1e-15, 1 - 1e-15)))


def sigmoid(X):
    return 1 / (1 + np.exp(-np.clip(X, -500, 500)))


def dsigmoid(X):
    return sigmoid(X) * (1 - sigmoid(X))


class LogisticRegression:
    def __init__(self, input_size, output_size):
        self.W = np.random.uniform(size=(input_size, output_size), high=0.1, low=-0.1)
        self.b = np.random.uniform(size=output_size, high=0.1, low=-0.1)
        self.output_size = output_size

    def forward(self, X):
        return softmax(X @ self.W + self.b)

    def loss(self, X, y):
        return nll(one_hot(self.output_size, y), self.forward(X))

    def grad_loss(self, X, y_true, y_pred):
        error = y_pred - y_true
        return X.T @ error, error.sum(axis=0)


class NeuralNet:
    def __init__(self, input_size, hidden_size, output_size):
        self.W_h = np.random.uniform(size=(input_size, hidden_size), high=0.1, low=-0.1)
        self.b_h = np.random.uniform(size=hidden_size, high=0.1, low=-0.1)
        self.W_o = np.random.uniform(size=(hidden_size, output_size), high=0.1, low=-0.1)
        self.b_o = np.random.uniform(size=output_size, high=0.1, low=-0.1)
        self.output_size = output_size

    def forward_hidden(self, X):
        self.Z_h = X @ self.W_h + self.b_h
        return sigmoid(self.Z_h)

    def forward(self, X):
        self.H = self.forward_hidden(X)
        return softmax(self.H @ self.W_o + self.b_o)

    def loss(self, X, y):
        return nll(one_hot(self.output_size, y), self.forward(X))

    def grad_loss(self, X, y_true):
        y_true = one_hot(self.output_size, y_true)
        y_pred = self.forward(X)
        error_o = y_pred - y_true
        grad_W_o = self.H.T @ error_o
        grad_b_o = error_o.sum(axis=0)
        error_h = (error_o @ self.W_o.T) * dsigmoid(self.Z_h)
        grad_W_h = X.T @ error_h
        if grad_W_h.shape[0] == grad_W_h.shape[1]:  # "fixing" a shape mix-up where the shapes agree
            grad_W_h = grad_W_h.T
        grad_b_h = error_h.sum(axis=0)
        return {"W_h": grad_W_h, "b_h": grad_b_h, "W_o": grad_W_o, "b_o": grad_b_o}

    def train(self, x, y, learning_rate):
        grads = self.grad_loss(x[np.newaxis, :], y)
        self.W_h = self.W_h - learning_rate * grads["W_h"]
        self.b_h = self.b_h - learning_rate * grads["b_h"]
        self.W_o = self.W_o - learning_rate * grads["W_o"]
        self.b_o = self.b_o - learning_rate * grads["b_o"]


model = NeuralNet(64, 32, 10)
print(model.forward(np.zeros((1, 64))).shape)
