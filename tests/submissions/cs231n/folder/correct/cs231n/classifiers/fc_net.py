from builtins import range
from builtins import object
import numpy as np

from ..layers import *
from ..layer_utils import *


class FullyConnectedNet(object):
    def __init__(
        self,
        hidden_dims,
        input_dim=3 * 32 * 32,
        num_classes=10,
        dropout_keep_ratio=1,
        normalization=None,
        reg=0.0,
        weight_scale=1e-2,
        dtype=np.float32,
        seed=None,
    ):
        self.normalization = normalization
        self.use_dropout = dropout_keep_ratio != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}
        dims = [input_dim] + list(hidden_dims) + [num_classes]
        for l in range(1, self.num_layers + 1):
            self.params["W%d" % l] = weight_scale * np.random.randn(dims[l - 1], dims[l])
            self.params["b%d" % l] = np.zeros(dims[l])
            if normalization is not None and l < self.num_layers:
                self.params["gamma%d" % l] = np.ones(dims[l])
                self.params["beta%d" % l] = np.zeros(dims[l])
        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout_keep_ratio}
            if seed is not None:
                self.dropout_param["seed"] = seed
        self.bn_params = []
        if self.normalization == "batchnorm":
            self.bn_params = [{"mode": "train"} for i in range(self.num_layers - 1)]
        if self.normalization == "layernorm":
            self.bn_params = [{} for i in range(self.num_layers - 1)]
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode
        caches = []
        h = X
        for l in range(1, self.num_layers):
            h, fc = affine_forward(h, self.params["W%d" % l], self.params["b%d" % l])
            nc = None
            if self.normalization == "batchnorm":
                h, nc = batchnorm_forward(h, self.params["gamma%d" % l], self.params["beta%d" % l], self.bn_params[l - 1])
            elif self.normalization == "layernorm":
                h, nc = layernorm_forward(h, self.params["gamma%d" % l], self.params["beta%d" % l], self.bn_params[l - 1])
            h, rc = relu_forward(h)
            dc = None
            if self.use_dropout:
                h, dc = dropout_forward(h, self.dropout_param)
            caches.append((fc, nc, rc, dc))
        L = self.num_layers
        scores, last = affine_forward(h, self.params["W%d" % L], self.params["b%d" % L])
        if mode == "test":
            return scores
        loss, grads = 0.0, {}
        loss, dscores = softmax_loss(scores, y)
        for l in range(1, L + 1):
            loss += 0.5 * self.reg * np.sum(self.params["W%d" % l] ** 2)
        dh, dW, db = affine_backward(dscores, last)
        grads["W%d" % L] = dW + self.reg * self.params["W%d" % L]
        grads["b%d" % L] = db
        for l in range(L - 1, 0, -1):
            fc, nc, rc, dc = caches[l - 1]
            if self.use_dropout:
                dh = dropout_backward(dh, dc)
            dh = relu_backward(dh, rc)
            if self.normalization == "batchnorm":
                dh, grads["gamma%d" % l], grads["beta%d" % l] = batchnorm_backward_alt(dh, nc)
            elif self.normalization == "layernorm":
                dh, grads["gamma%d" % l], grads["beta%d" % l] = layernorm_backward(dh, nc)
            dh, dW, db = affine_backward(dh, fc)
            grads["W%d" % l] = dW + self.reg * self.params["W%d" % l]
            grads["b%d" % l] = db
        return loss, grads

