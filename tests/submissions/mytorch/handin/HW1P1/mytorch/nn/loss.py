# ruff: noqa  -- a student submission (test fixture): the handout's package layout
import numpy as np


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
