# ruff: noqa  -- a student submission (test fixture): the handout's package layout
import numpy as np


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
