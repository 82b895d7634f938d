"""Errors raised by the reference: each names where it happened, what was expected and what came."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Base class: bad input to the reference (never a wrong number instead)."""


class SpecError(InputError):
    """A model spec that cannot be built."""


class ShapeError(InputError):
    """An array of the wrong shape."""


class DTypeError(InputError):
    """An array whose dtype is not the spec's dtype."""


class NonFiniteError(InputError):
    """NaN or Inf where finite numbers are required."""


class LabelError(InputError):
    """Labels of the wrong kind, shape or range."""


def describe(a: object) -> str:
    """A short description of an array-like for error messages: dtype and shape."""
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return f"{type(a).__name__}"


def check_array(
    a: object,
    where: str,
    dtype: np.dtype,
    ndim: int | None = None,
    width: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Check that `a` is a finite ndarray of `dtype` with `ndim` dims and last axis `width`.

    sample_shape: instead of ndim and width, the shape of one row, a = (batch, *sample_shape):
    (n_in,) for flat inputs, (C, H, W) for images.
    """
    if not isinstance(a, np.ndarray):
        raise ShapeError(f"{where}: expected a numpy array, got {describe(a)}")
    if a.dtype != dtype:
        raise DTypeError(
            f"{where}: expected dtype {np.dtype(dtype)}, got {describe(a)}"
            " (cast explicitly; the reference never up- or down-casts silently)"
        )
    if sample_shape is not None and len(sample_shape) == 1:
        ndim, width = 2, sample_shape[0]
    elif sample_shape is not None and (a.ndim != len(sample_shape) + 1 or a.shape[1:] != tuple(sample_shape)):
        expected = f"(batch, {', '.join(str(d) for d in sample_shape)})"
        raise ShapeError(f"{where}: expected shape (batch, C, H, W) = {expected}, got {describe(a)}")
    if ndim is not None and a.ndim != ndim:
        expected = "(batch, features)" if ndim == 2 else f"{ndim} dimensions"
        raise ShapeError(f"{where}: expected shape {expected}, got {describe(a)}")
    if width is not None and a.shape[-1] != width:
        raise ShapeError(f"{where}: expected shape (batch, {width}), got {describe(a)}")
    if a.size and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise NonFiniteError(
            f"{where}: expected finite values, got {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )
    return a
