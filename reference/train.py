"""Training loops (per-sample and batched) and evaluation.

The batch order always comes from the caller: `order` is a permutation of the training rows for one
epoch, drawn once (data_loaders) and handed to every framework, so all of them see the same batches.
Per-sample training is batched training with batch_size=1.

    history = fit(net, opt, x, y, orders=[perm_epoch_1, ...], batch_size=128,
                  on_step=lambda step, loss: ..., on_epoch=lambda epoch, net: ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from reference.errors import ShapeError, check_array
from reference.network import Network
from reference.optimizers import Optimizer


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index arrays of consecutive `batch_size` slices of `order`; the last one may be shorter."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def check_inputs(net: Network, x: np.ndarray, where: str) -> None:
    """check_array's checks (ndarray, dtype, (n, n_in), no NaN/Inf) on a whole training set, fast.

    The plain form is check_array(x, where, net.dtype, sample_shape=net.spec.sample_shape). A finite sum
    proves every element finite (a NaN or an Inf makes any sum non-finite) in one pass without the
    boolean temporary of np.isfinite(x).all(); only when the sum is not finite (a bad element, or a
    sum that overflowed) does check_array scan element by element, and name the culprit.
    """
    sample = net.spec.sample_shape
    if isinstance(x, np.ndarray) and x.dtype == net.dtype and x.ndim == len(sample) + 1 and x.shape[1:] == sample:
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite sum only means: look closer
            if np.isfinite(x.sum()):
                return
    check_array(x, where, net.dtype, sample_shape=sample)


def train_step(net: Network, opt: Optimizer, x: np.ndarray, y: np.ndarray, check_input: bool = True) -> np.ndarray:
    """One step: loss and gradients on (x, y), then the optimiser update. Returns the loss.

    check_input=False skips the scan of x for dtype, shape and NaN/Inf (train_epoch scans its whole
    training set once, rather than every batch again).
    """
    loss, grads = net.loss_and_grads(x, y, train=True, check_input=check_input)
    opt.step(net.params, grads)
    return loss


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
    total, steps = 0.0, 0
    for idx in batches(order, batch_size):
        loss = train_step(net, opt, x[idx], y[idx], check_input=False)
        total += float(loss)
        if on_step is not None:
            on_step(steps, loss)
        steps += 1
    return total / steps


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
