# ruff: noqa  -- a student submission (test fixture): the handout's package layout
import numpy as np
from mytorch.nn.linear import Linear
from mytorch.nn.activation import ReLU


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
