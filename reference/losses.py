"""Losses with their gradients.

The contract, stated once:

    loss = LOSSES[name](reduction)
    value, dL_dpred = loss.value_and_grad(pred, target)      value: 0-d array in pred's dtype
    loss.value_and_grad(pred, labels, labels_checked=True)   the same, for a caller that has checked the
                                                             labels itself (train_epoch: once an epoch)

Classification losses (softmax_cross_entropy, cross_entropy, nll, multiclass_hinge) take integer
labels (batch,) and sum over classes per sample; "mean" then divides by the batch size (torch's and keras' default).
Element-wise losses (mse, l1, bce) take targets shaped like `pred`; "mean" divides by the number of
elements (torch's convention; keras' mean over the last axis then the batch is the same number).
"""

from __future__ import annotations

import numpy as np

from reference.errors import DTypeError, LabelError, NonFiniteError, ShapeError, SpecError, check_array, describe


def check_labels(labels: object, pred: np.ndarray, where: str) -> np.ndarray:
    """Integer labels (batch,), one per row of `pred`, each in [0, n_classes)."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise LabelError(f"{where}: expected integer labels of shape ({pred.shape[0]},), got {describe(labels)}")
    if labels.shape != (pred.shape[0],):
        raise LabelError(
            f"{where}: expected labels of shape ({pred.shape[0]},) for predictions {pred.shape}, got {labels.shape}"
        )
    n_classes = pred.shape[1]
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise LabelError(f"{where}: expected labels in [0, {n_classes}), got {int(labels[i])} at index {i}")
    return labels


def check_targets(target: object, pred: np.ndarray, where: str) -> np.ndarray:
    """Finite targets shaped like `pred`, of its dtype."""
    if not isinstance(target, np.ndarray) or target.shape != pred.shape:
        raise ShapeError(f"{where}: expected a target array of shape {pred.shape}, got {describe(target)}")
    if target.dtype != pred.dtype:
        raise DTypeError(f"{where}: expected a target of dtype {pred.dtype}, got {describe(target)}")
    return check_array(target, f"{where} target", pred.dtype)  # NaN or Inf: an error, not a NaN loss


class Loss:
    name = "loss"
    classification = True

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise SpecError(f"{self.name}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def _divisor(self, pred: np.ndarray) -> int:
        if self.reduction == "sum":
            return 1
        return pred.shape[0] if self.classification else pred.size

    def check(self, pred: np.ndarray, target: np.ndarray, labels_checked: bool = False) -> np.ndarray:
        """The target checked against pred; labels_checked=True: a classification loss's labels were checked
        by the caller (check_labels on every label of the epoch), an element-wise loss's target still is."""
        if pred.ndim != 2:
            raise ShapeError(f"{self.name}: expected predictions of shape (batch, n_out), got {describe(pred)}")
        if self.classification:
            return target if labels_checked else check_labels(target, pred, self.name)
        return check_targets(target, pred, self.name)

    def _residual(self, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int]:
        """(p - t, the divisor), after checking both: what every element-wise regression loss starts from."""
        self.check(pred, target)
        return pred - target, self._divisor(pred)

    def value(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self.value_and_grad(pred, target)[0]

    def value_and_grad(
        self, pred: np.ndarray, target: np.ndarray, labels_checked: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def one_hot(labels: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """(batch,) integer labels -> (batch, n_classes) one-hot rows."""
    out = np.zeros((labels.shape[0], n_classes), dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


class SoftmaxCrossEntropy(Loss):
    name = "softmax_cross_entropy"

    def value_and_grad(self, logits, labels, labels_checked=False):
        """L = -log softmax(z)_y = logsumexp(z) - z_y;  dL/dz = softmax(z) - onehot(y)"""
        labels = self.check(logits, labels, labels_checked)
        rows = np.arange(logits.shape[0])
        # The row maxima, logits.max(axis=1, keepdims=True), taken as the element-wise maximum of the
        # columns: numpy reduces a (batch, 10) array along its short rows 2.5-3.5x slower (tests/test_fast_forms.py).
        row_max = np.ascontiguousarray(logits.T).max(axis=0)[:, None]
        shifted = logits - row_max  # stable for |z| up to float max
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        losses = np.log(total[:, 0]) - shifted[rows, labels]  # (batch,)
        grad = np.divide(e, total, out=e)  # softmax(logits), from the same exp (tests/test_fast_forms.py)
        grad[rows, labels] -= 1
        d = self._divisor(logits)
        grad /= d
        return losses.sum() / d, grad


class CrossEntropy(Loss):
    name = "cross_entropy"

    def value_and_grad(self, probs, labels, labels_checked=False):
        """L = -log p_y;  dL/dp_j = -1/p_y if j == y else 0"""
        labels = self.check(probs, labels, labels_checked)
        rows = np.arange(probs.shape[0])
        p_y = probs[rows, labels]
        if np.any(p_y <= 0):  # -log 0 = inf and -1/0: an error, not inf and NaN downstream
            i = int(np.argmax(p_y <= 0))
            raise NonFiniteError(
                f"{self.name}: expected the label's probability > 0, got {p_y[i]} at row {i} (label {labels[i]}); "
                "the loss would be infinite ('nll' clips, 'softmax_cross_entropy' works from logits)"
            )
        grad = np.zeros_like(probs)
        grad[rows, labels] = -1 / p_y
        d = self._divisor(probs)
        return -np.log(p_y).sum() / d, grad / d


class NLL(Loss):
    """Cross-entropy of probabilities clipped to [eps, 1 - eps] (keras' convention, eps = 1e-7)."""

    name = "nll"

    def __init__(self, reduction: str = "mean", eps: float = 1e-7) -> None:
        super().__init__(reduction)
        self.eps = eps

    def value_and_grad(self, probs, labels, labels_checked=False):
        """L = -log clip(p_y, eps, 1 - eps);  dL/dp_y = -1/p_y inside the clip range, 0 outside"""
        labels = self.check(probs, labels, labels_checked)
        rows = np.arange(probs.shape[0])
        p_y = probs[rows, labels]
        clipped = np.clip(p_y, self.eps, 1 - self.eps)
        grad = np.zeros_like(probs)
        grad[rows, labels] = np.where(clipped == p_y, -1 / clipped, 0)
        d = self._divisor(probs)
        return -np.log(clipped).sum() / d, grad / d


class MSE(Loss):
    name = "mse"
    classification = False

    def value_and_grad(self, pred, target, labels_checked=False):
        """L = sum (p - t)^2 / n;  dL/dp = 2 (p - t) / n"""
        diff, d = self._residual(pred, target)
        return (diff * diff).sum() / d, 2 * diff / d


class L1(Loss):
    name = "l1"
    classification = False

    def value_and_grad(self, pred, target, labels_checked=False):
        """L = sum |p - t| / n;  dL/dp = sign(p - t) / n  (subgradient 0 at p == t, as torch)"""
        diff, d = self._residual(pred, target)
        return np.abs(diff).sum() / d, np.sign(diff) / d


class BCE(Loss):
    """Binary cross-entropy of probabilities in (0, 1) against targets in [0, 1]."""

    name = "bce"
    classification = False

    def value_and_grad(self, probs, target, labels_checked=False):
        """L = -sum (t log p + (1 - t) log(1 - p)) / n;  dL/dp = (p - t) / (p (1 - p)) / n"""
        self.check(probs, target)
        outside = (probs <= 0) | (probs >= 1)
        if outside.any():  # log 0: an error, not inf and NaN (a float32 sigmoid is exactly 1.0 above x = 16.6)
            i = tuple(int(k) for k in np.argwhere(outside)[0])
            raise NonFiniteError(
                f"{self.name}: expected probabilities in (0, 1), got {probs[i]} at index {i}; the loss would be infinite"
            )
        d = self._divisor(probs)
        value = -(target * np.log(probs) + (1 - target) * np.log1p(-probs)).sum() / d
        return value, (probs - target) / (probs * (1 - probs)) / d


class MulticlassHinge(Loss):
    """The multiclass SVM loss (Weston-Watkins; CS231n's svm_loss), margin 1, on raw scores.

    At a kink (a margin exactly 0) the gradient counts only margins > 0, as CS231n's svm_loss does
    (`margins > 0`): the subgradient 0 at the hinge, like ReLU's. torch's nn.MultiMarginLoss is this
    sum divided by the number of classes C; keras' hinge losses are other functions (README, "Pitfalls").
    """

    name = "multiclass_hinge"
    margin = 1

    def value_and_grad(self, scores, labels, labels_checked=False):
        """L = sum_{j != y} max(0, s_j - s_y + 1);  dL/ds_j = [m_j > 0] (j != y),  dL/ds_y = -sum_{j != y} [m_j > 0]"""
        labels = self.check(scores, labels, labels_checked)
        rows = np.arange(scores.shape[0])
        margins = np.maximum(0, scores - scores[rows, labels][:, None] + self.margin)  # (batch, n_classes)
        margins[rows, labels] = 0  # the correct class has no margin against itself
        positive = (margins > 0).astype(scores.dtype)
        grad = positive
        grad[rows, labels] = -positive.sum(axis=1)
        d = self._divisor(scores)
        return margins.sum() / d, grad / d


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls for cls in (SoftmaxCrossEntropy, CrossEntropy, NLL, MSE, L1, BCE, MulticlassHinge)
}


def make_loss(name: str, reduction: str = "mean") -> Loss:
    if name not in LOSSES:
        raise SpecError(f"unknown loss {name!r}; losses are {sorted(LOSSES)}")
    return LOSSES[name](reduction)
