"""Errors raised by data_loaders: each names the file, what was expected and what came."""

from __future__ import annotations

import pickle


class DataError(ValueError):
    """Base class: data that cannot be used (never silently replaced by other data)."""


class DataFormatError(DataError):
    """A file that is not what it claims: wrong IDX magic, truncated, wrong shape, unreadable npz."""


class ChecksumError(DataError):
    """Arrays or a file whose sha256 or label counts differ from the published ones."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No data where it was looked for; the message lists every place looked."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle that asks for anything but numpy arrays (refused before anything runs)."""


class CacheWarning(UserWarning):
    """The local cache was damaged and is being rebuilt (or could not be written)."""
