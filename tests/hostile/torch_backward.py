"""Hostile (appended to a correct layer-api submission): Dense.backward done by torch.autograd.

The import is hidden from a reader who greps for "import torch": the module name is built at run
time from two halves. Before: full marks (torch is installed where the grader runs).
"""

import importlib


class Dense(Dense):  # noqa: F821  (the correct submission's Dense, defined above)
    def backward(self, input, grad_output):
        torch = importlib.import_module("to" + "rch")
        x = torch.tensor(input, requires_grad=True)
        w = torch.tensor(self.weights, requires_grad=True)
        b = torch.tensor(self.biases, requires_grad=True)
        (x @ w + b).backward(torch.tensor(grad_output))
        self.weights = self.weights - self.learning_rate * w.grad.numpy()
        self.biases = self.biases - self.learning_rate * b.grad.numpy()
        return x.grad.numpy()
