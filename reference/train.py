"""Training loops (per-sample and batched) and evaluation.

The batch order always comes from the caller: `order` is a permutation of the training rows for one
epoch, drawn once (data_loaders) and handed to every framework, so all of them see the same batches.
Per-sample training is batched training with batch_size=1.

    history = fit(net, opt, x, y, orders=[perm_epoch_1, ...], batch_size=128,
                  on_step=lambda step, loss: ..., on_epoch=lambda epoch, net: ...)
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from reference.errors import ShapeError, check_array
from reference.layers import Dense, ReLU, Sigmoid, Tanh
from reference.losses import SoftmaxCrossEntropy, check_labels
from reference.network import Network
from reference.optimizers import SGD, Optimizer


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index arrays of consecutive `batch_size` slices of `order`; the last one may be shorter."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def check_inputs(net: Network, x: np.ndarray, where: str) -> None:
    """check_array's checks (ndarray, dtype, (n, n_in), no NaN/Inf) on a whole training set, fast.

    The plain form is check_array(x, where, net.dtype, sample_shape=net.spec.sample_shape). A finite sum
    proves every element finite (a NaN or an Inf makes any sum non-finite) in one pass without the
    boolean temporary of np.isfinite(x).all(); only when the sum is not finite (a bad element, or a
    sum that overflowed) does check_array scan element by element, and name the culprit. The sum is
    einsum's (one SIMD pass, 1.8-2.5x faster than x.sum()'s pairwise one here: the check was 5-10 %
    of a batched epoch); its rounding does not matter, only whether it is finite.
    """
    sample = net.spec.sample_shape
    if isinstance(x, np.ndarray) and x.dtype == net.dtype and x.ndim == len(sample) + 1 and x.shape[1:] == sample:
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite sum only means: look closer
            if np.isfinite(np.einsum("abcdefgh"[: x.ndim] + "->", x)):
                return
    check_array(x, where, net.dtype, sample_shape=sample)


def check_epoch_labels(net: Network, y: np.ndarray, order: np.ndarray) -> None:
    """Every label an epoch over `order` will use, once: the classification loss's per-step check_labels
    (integer labels, each in [0, n_out)), the index in the message being the position in `order`."""
    where = f"train_epoch: labels y[order] ({net.loss.name})"
    (n_out,) = net.spec.layer_shapes()[-1]
    check_labels(y[order], np.empty((len(order), n_out), net.dtype), where)


def train_step(
    net: Network, opt: Optimizer, x: np.ndarray, y: np.ndarray, check_input: bool = True, labels_checked: bool = False
) -> np.ndarray:
    """One step: loss and gradients on (x, y), then the optimiser update. Returns the loss.

    check_input=False skips the scan of x for dtype, shape and NaN/Inf, labels_checked=True a
    classification loss's check of y (train_epoch checks its whole training set and every label of
    the epoch once, rather than every batch again).
    """
    loss, grads = net.loss_and_grads(x, y, train=True, check_input=check_input, labels_checked=labels_checked)
    opt.step(net.params, grads, owned=True)  # fresh gradients nobody else holds: the optimiser may overwrite them
    return loss


ACTIVATIONS = (Sigmoid, Tanh, ReLU)


def dense_sgd_network(net: Network, opt: Optimizer) -> bool:
    """Dense layers with sigmoid, tanh or ReLU between them, softmax cross-entropy, plain SGD, no L2 or
    weight decay: the networks SampleSGD and BatchSGD train (train_step's numbers, bit for bit)."""
    layers, spec = net.layers, net.spec
    return (
        type(opt) is SGD
        and spec.optimizer.weight_decay == 0
        and not spec.l2
        and type(net.loss) is SoftmaxCrossEntropy
        and all(type(layer) is Dense for layer in layers[::2])
        and all(type(layer) in ACTIVATIONS for layer in layers[1::2])
        and len(layers) % 2 == 1
    )


def dense_chain(net: Network) -> list[tuple]:
    """Per Dense layer of a dense_sgd_network: (its live W, its live b, the activation after it or None)."""
    return [
        (dense.params["W"], dense.params["b"], net.layers[2 * k + 1] if 2 * k + 1 < len(net.layers) else None)
        for k, dense in enumerate(net.layers[::2])
    ]


def dense_chain_forward(chain: list[tuple], h: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Dense.forward, then the activation's forward, for each (W, b, activation or None) of `chain`.

    Returns (the output, every Dense layer's input, every activation's cache): SampleSGD's and
    BatchSGD's forward, train_step's calls in its order.
    """
    inputs, caches = [], []
    for W, b, act in chain:
        inputs.append(h)
        h = np.dot(h, W)
        h += b
        if act is not None:
            h, cache = act.forward(h)
            caches.append(cache)
    return h, inputs, caches


class BatchSGD:
    """Mini-batch SGD on SampleSGD's kind of network, as one loop body: train_step's numbers, bit for bit.

    The calls train_step makes: Dense's np.dot(x, W) and += b, the activations' own forward and
    backward, the loss's value_and_grad (the epoch's labels checked once, before the first step),
    np.dot(x^T, g), g.sum(axis=0) and np.dot(g, W^T), SGD.update itself (lr * g written into the fresh
    gradient and p -= it) for each layer as soon as its gradients are made; without the Network's lists,
    dictionaries and per-layer checks or the optimiser's dictionary walk. tests/test_fast_forms.py
    pins it to train_step bit for bit.
    """

    @classmethod
    def applies(cls, net: Network, opt: Optimizer, batch_size: int) -> bool:
        return batch_size > 1 and dense_sgd_network(net, opt)

    def __init__(self, net: Network, opt: Optimizer) -> None:
        self.loss, self.opt = net.loss, opt
        self.chain = dense_chain(net)  # W and b updated in place
        self.names = [dense.name for dense in net.layers[::2]]

    def step(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One SGD step on the rows x (batch, n_in) with their (checked) labels; returns the loss."""
        h, inputs, caches = dense_chain_forward(self.chain, x)
        loss, g = self.loss.value_and_grad(h, labels, labels_checked=True)
        # Backward (Dense.param_grads and Dense.backward, the activation's backward) with each layer's
        # SGD update (p -= lr * g, into the fresh gradient) as soon as its dL/dW, dL/db and dL/dx are
        # made: nothing later in the step reads that layer's W or b, so the numbers are train_step's,
        # which updates after the whole backward. The small passes (dL/db, b's update) come before the
        # big dL/dW product, not after it: right after a GEMM that streamed 1.6 MB a small pass costs
        # 3-5x more (float64 (128, 128): `+= b` 22.5 us after x @ W1, 6.3 us done again at once).
        # The update is the optimiser's own SGD.update (owned: lr * g into the fresh gradient, then
        # p -= it), called per parameter: one definition of the rule, which a broken update breaks here too.
        update = self.opt.update
        for k in range(len(self.chain) - 1, -1, -1):
            (W, b, _), name = self.chain[k], self.names[k]
            update(f"{name}.b", b, g.sum(axis=0), owned=True)
            dW = np.dot(inputs[k].T, g)
            if k > 0:
                g, _ = self.chain[k - 1][2].backward(np.dot(g, W.T), caches[k - 1])
            update(f"{name}.W", W, dW, owned=True)
        self.opt.t += 1
        return loss


class SampleSGD:
    """Per-sample SGD (batch 1) written as one loop body: train_step's numbers, bit for bit, faster.

    For the homework's kind of network: Dense layers with sigmoid, tanh or ReLU between them, softmax
    cross-entropy, plain SGD, no L2 or weight decay (`applies`). Each step is train_step's arithmetic,
    formula for formula and in its order (the layers' own forward and backward, the loss's formulas,
    dW = np.dot(x^T, g), p -= lr g), without what batch 1 makes costly: the Network's caches and
    dictionaries, the label check of every step (train_epoch checks all labels once, before the
    first step), the gather of a row (a slice is a view), the optimiser's dictionary walk, and a fresh dL/dW
    array (it is written into the optimiser's buffer). tests/test_fast_forms.py pins it to train_step
    bit for bit, signed zeros and IEEE corners included.
    """

    @classmethod
    def applies(cls, net: Network, opt: Optimizer, batch_size: int) -> bool:
        return batch_size == 1 and dense_sgd_network(net, opt)

    def __init__(self, net: Network, opt: Optimizer) -> None:
        # lr and 0 as 0-d arrays of the parameters' dtype: the numbers numpy converts the Python lr and 0
        # to in `lr * g` and `0 + g`, without the conversion in every call (~0.3 us each, 9 a step).
        self.net, self.lr, self.zero = net, np.asarray(opt.lr, net.dtype), np.zeros((), net.dtype)
        self.opt = opt
        # Per Dense layer: its live W and b (updated in place), the activation after it (None for the
        # last), and the buffers for lr * dL/dW and lr * dL/db (the optimiser's own, SGD.update's).
        self.chain = dense_chain(net)
        self.buffers = [
            tuple(
                opt.buffers.setdefault(f"{dense.name}.{n}", np.empty(p.shape, p.dtype)) for n, p in (("W", W), ("b", b))
            )
            for dense, (W, b, _) in zip(net.layers[::2], self.chain)
        ]

    def step(self, x1: np.ndarray, label: int) -> np.ndarray:
        """One SGD step on the row x1 (1, n_in) with its label; returns the loss (a 0-d value)."""
        h, inputs, caches = dense_chain_forward(self.chain, x1)
        # SoftmaxCrossEntropy.value_and_grad at batch 1: its divisor is 1 for "mean" and "sum" alike, and
        # the max and sum of the one row are those of the whole (1, n_out) array (0-d: no keepdims).
        shifted = h - h.max()
        e = np.exp(shifted)
        total = e.sum()
        loss = np.log(total) - shifted[0, label]  # the sum over a batch of one
        g = np.divide(e, total, out=e)
        g[0, label] -= 1
        # Backward: every gradient before any update, as train_step. dL/dW and dL/db go straight into
        # the optimiser's buffers, which SGD.update's lr * g then scales in place: the same product, the
        # same roundings (np.dot(x^T, g) then * lr), without a fresh (n_in, n_out) array every step.
        for k in range(len(self.chain) - 1, -1, -1):  # Dense.backward, then the activation's backward
            W, (lr_dW, lr_db) = self.chain[k][0], self.buffers[k]
            np.dot(inputs[k].T, g, out=lr_dW)  # dL/dW = x^T g
            np.add(g[0], self.zero, out=lr_db)  # dL/db = g.sum(axis=0) at batch 1: 0 + g, the sum starts at +0
            if k > 0:
                g, _ = self.chain[k - 1][2].backward(np.dot(g, W.T), caches[k - 1])
        for (W, b, _), (lr_dW, lr_db) in zip(self.chain, self.buffers):  # SGD.update: p -= lr * g
            W -= np.multiply(lr_dW, self.lr, out=lr_dW)
            b -= np.multiply(lr_db, self.lr, out=lr_db)
        self.opt.t += 1
        return loss


@contextmanager
def cycle_collector_paused() -> Generator[None, None, None]:
    """Python's cycle collector off for the block, then back as it was (also on an error).

    A training step allocates small containers only (tuples, dicts, lists; no reference cycles), and
    every ~700 of them the collector scans the young objects: 5-6 % of a batched epoch, measured.
    Reference counting frees everything a step makes at once either way.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def train_epoch(
    net: Network,
    opt: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> float:
    """One pass over `x[order]` in batches; returns the mean of the per-step losses."""
    if len(order) == 0 or len(order) > len(x):
        raise ShapeError(f"train_epoch: expected an order of 1..{len(x)} row indices, got {len(order)}")
    check_inputs(net, x, "train_epoch: training inputs x")  # once per epoch, not every batch
    labels_checked = net.loss.classification and len(net.spec.layer_shapes()[-1]) == 1  # outputs (batch, n_out)
    if labels_checked:  # once per epoch, not every batch (an element-wise loss checks its targets per step)
        check_epoch_labels(net, y, order)
    if SampleSGD.applies(net, opt, batch_size):  # batch-1 SGD: train_step's numbers bit for bit, faster
        fast = SampleSGD(net, opt)
        items: Iterable = order

        def step(i):
            return fast.step(x[i : i + 1], y[i])
    elif labels_checked and BatchSGD.applies(net, opt, batch_size):  # train_step's numbers bit for bit, faster
        batched = BatchSGD(net, opt)
        items = batches(order, batch_size)

        def step(idx):
            return batched.step(np.take(x, idx, axis=0), y[idx])  # np.take(x, idx, axis=0): x[idx], faster
    else:
        items = batches(order, batch_size)

        def step(idx):
            # np.take(x, idx, axis=0) is x[idx] (a copy of the rows), ~10 % faster on MNIST's 6 KB rows.
            return train_step(net, opt, np.take(x, idx, axis=0), y[idx], False, labels_checked)

    total, n = 0.0, 0
    with cycle_collector_paused():  # (on_step's cycles, if it makes any, are collected after the epoch)
        for item in items:
            loss = step(item)
            total += float(loss)
            if on_step is not None:
                on_step(n, loss)
            n += 1
    return total / n


def evaluate(net: Network, x: np.ndarray, y: np.ndarray, batch_size: int = 10_000) -> tuple[float, float]:
    """(mean loss per sample, accuracy) in inference mode, in chunks to bound memory."""

    def predict(xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, float]:
        out = net.forward(xb, train=False)
        return out, net.loss.value(out, yb)

    return evaluate_chunks(predict, x, y, net.loss.reduction, net.loss.classification, batch_size)


def evaluate_chunks(
    predict: Callable, x, y, reduction: str, classification: bool, batch_size: int = 10_000
) -> tuple[float, float]:
    """(mean loss per sample, accuracy) from predict(x_chunk, y_chunk) -> (outputs, loss value), chunk
    by chunk: the one definition the reference and both twins evaluate by (x, y: arrays or tensors)."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out, value = predict(xb, yb)
        # The loss's own reduction, turned into a per-sample sum so chunks add up.
        total_loss += float(value) * (len(xb) if reduction == "mean" else 1)
        if classification:
            correct += int((np.asarray(out).argmax(axis=1) == np.asarray(yb)).sum())
    return total_loss / len(x), correct / len(x)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


def fit(
    net: Network,
    opt: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    orders: Sequence[np.ndarray],
    batch_size: int,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    on_step: Callable[[int, np.ndarray], None] | None = None,
    on_epoch: Callable[[int, Network], None] | None = None,
) -> History:
    """One epoch per entry of `orders`; evaluates on (x_test, y_test) after each epoch if given."""
    history = History()
    for epoch, order in enumerate(orders):
        history.train_loss.append(train_epoch(net, opt, x, y, order, batch_size, on_step))
        if x_test is not None:
            loss, acc = evaluate(net, x_test, y_test)
            history.test_loss.append(loss)
            history.test_accuracy.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, net)
    return history
