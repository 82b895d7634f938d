# ruff: noqa  -- a student submission (test fixture): its style and bugs are deliberate
"""Linear.backward sums dLdZ over axis 1 (the outputs) for dLdb instead of over the batch."""
# expect: bias_gradients Linear: dLdb wrong_axis

import numpy as np


class Linear:
    def __init__(self, in_features, out_features, debug=False):
        self.W = np.zeros((out_features, in_features))
        self.b = np.zeros((out_features, 1))
        self.debug = debug

    def forward(self, A):
        self.A = A
        self.N = A.shape[0]
        self.Ones = np.ones((self.N, 1))
        return A @ self.W.T + self.Ones @ self.b.T

    def backward(self, dLdZ):
        dLdA = dLdZ @ self.W
        self.dLdW = dLdZ.T @ self.A
        self.dLdb = np.sum(dLdZ, axis=1, keepdims=True)
        if self.debug:
            self.dLdA = dLdA
        return dLdA


class Identity:
    def forward(self, Z):
        self.A = Z
        return self.A

    def backward(self, dLdA):
        return dLdA * np.ones(self.A.shape, dtype="f")


class Sigmoid:
    def forward(self, Z):
        self.A = 0.5 * (1 + np.tanh(0.5 * Z))
        return self.A

    def backward(self, dLdA):
        return dLdA * (self.A - self.A * self.A)


class Tanh:
    def forward(self, Z):
        self.A = np.tanh(Z)
        return self.A

    def backward(self, dLdA):
        return dLdA * (1 - self.A * self.A)


class ReLU:
    def forward(self, Z):
        self.A = np.maximum(0, Z)
        return self.A

    def backward(self, dLdA):
        return dLdA * np.where(self.A > 0, 1, 0)


class MSELoss:
    def forward(self, A, Y):
        self.A, self.Y = A, Y
        self.N, self.C = A.shape
        se = (A - Y) * (A - Y)
        sse = np.ones((self.N, 1)).T @ se @ np.ones((self.C, 1))
        return (sse / (self.N * self.C)).item()

    def backward(self):
        return 2 * (self.A - self.Y) / (self.N * self.C)


class CrossEntropyLoss:
    def forward(self, A, Y):
        self.A, self.Y = A, Y
        N, C = A.shape
        shifted = A - A.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        self.softmax = e / e.sum(axis=1, keepdims=True)
        log_softmax = shifted - np.log(e.sum(axis=1, keepdims=True))
        crossentropy = (-Y * log_softmax) @ np.ones((C, 1))
        return (np.ones((N, 1)).T @ crossentropy / N).item()

    def backward(self):
        return (self.softmax - self.Y) / self.A.shape[0]


class BatchNorm1d:
    def __init__(self, num_features, alpha=0.9):
        self.alpha = alpha
        self.eps = 1e-8
        self.BW = np.ones((1, num_features))
        self.Bb = np.zeros((1, num_features))
        self.dLdBW = np.zeros((1, num_features))
        self.dLdBb = np.zeros((1, num_features))
        self.running_M = np.zeros((1, num_features))
        self.running_V = np.ones((1, num_features))

    def forward(self, Z, eval=False):
        self.Z = Z
        self.N = Z.shape[0]
        if eval:
            NZ = (Z - self.running_M) / np.sqrt(self.running_V + self.eps)
            return self.BW * NZ + self.Bb
        self.M = Z.mean(axis=0, keepdims=True)
        self.V = Z.var(axis=0, keepdims=True)
        self.NZ = (Z - self.M) / np.sqrt(self.V + self.eps)
        self.BZ = self.BW * self.NZ + self.Bb
        self.running_M = self.alpha * self.running_M + (1 - self.alpha) * self.M
        self.running_V = self.alpha * self.running_V + (1 - self.alpha) * self.V
        return self.BZ

    def backward(self, dLdBZ):
        self.dLdBW = np.sum(dLdBZ * self.NZ, axis=0, keepdims=True)
        self.dLdBb = np.sum(dLdBZ, axis=0, keepdims=True)
        dLdNZ = dLdBZ * self.BW
        inv = (self.V + self.eps) ** -0.5
        dLdV = -0.5 * np.sum(dLdNZ * (self.Z - self.M) * inv**3, axis=0, keepdims=True)
        dLdM = -np.sum(dLdNZ * inv, axis=0, keepdims=True) - 2 / self.N * dLdV * np.sum(self.Z - self.M, axis=0, keepdims=True)
        return dLdNZ * inv + dLdV * 2 / self.N * (self.Z - self.M) + dLdM / self.N


class SGD:
    def __init__(self, model, lr=0.1, momentum=0):
        self.l = model.layers
        self.L = len(model.layers)
        self.lr = lr
        self.mu = momentum
        self.v_W = [np.zeros(self.l[i].W.shape) for i in range(self.L)]
        self.v_b = [np.zeros(self.l[i].b.shape) for i in range(self.L)]

    def step(self):
        for i in range(self.L):
            if self.mu == 0:
                self.l[i].W = self.l[i].W - self.lr * self.l[i].dLdW
                self.l[i].b = self.l[i].b - self.lr * self.l[i].dLdb
            else:
                self.v_W[i] = self.mu * self.v_W[i] + self.l[i].dLdW
                self.v_b[i] = self.mu * self.v_b[i] + self.l[i].dLdb
                self.l[i].W = self.l[i].W - self.lr * self.v_W[i]
                self.l[i].b = self.l[i].b - self.lr * self.v_b[i]


class MLP0:
    def __init__(self, debug=False):
        self.layers = [Linear(2, 3), ReLU()]
        self.debug = debug

    def forward(self, A0):
        Z0 = self.layers[0].forward(A0)
        A1 = self.layers[1].forward(Z0)
        return A1

    def backward(self, dLdA1):
        dLdZ0 = self.layers[1].backward(dLdA1)
        dLdA0 = self.layers[0].backward(dLdZ0)
        return dLdA0


class MLP1:
    def __init__(self, debug=False):
        self.layers = [Linear(2, 3), ReLU(), Linear(3, 2), ReLU()]
        self.debug = debug

    def forward(self, A0):
        A = A0
        for layer in self.layers:
            A = layer.forward(A)
        return A

    def backward(self, dLdA2):
        dLdA = dLdA2
        for layer in reversed(self.layers):
            dLdA = layer.backward(dLdA)
        return dLdA


class MLP4:
    def __init__(self, debug=False):
        self.layers = [
            Linear(2, 4), ReLU(), Linear(4, 8), ReLU(), Linear(8, 8), ReLU(),
            Linear(8, 4), ReLU(), Linear(4, 2), ReLU(),
        ]
        self.debug = debug

    def forward(self, A):
        for layer in self.layers:
            A = layer.forward(A)
        return A

    def backward(self, dLdA):
        for layer in reversed(self.layers):
            dLdA = layer.backward(dLdA)
        return dLdA
