"""A restricted unpickler for third-party pickles of numpy arrays.

`pickle.load` calls whatever callable the file names, so a pickle from a package is code. This
unpickler resolves only the globals a (nested tuple/list/dict of) numpy array(s) needs and refuses
every other one *before* it is called: `find_class` is the only way a pickle reaches a callable.

Allowed (module, name), the same for Python-2 and Python-3 pickles, numpy 1.x and 2.x names:
  numpy.core.multiarray._reconstruct / numpy._core.multiarray._reconstruct   ndarray.__reduce__
  numpy.core.numeric._frombuffer / numpy._core.numeric._frombuffer           protocol 5
  numpy.ndarray, numpy.dtype                                                 the array and its dtype
  _codecs.encode                                                             bytes in protocol 2 (py3)
Tuples, lists, dicts, strings and numbers are pickle opcodes, not globals: they need nothing.
Object arrays are refused after loading (their elements could only be allowed objects, but an array
of Python objects is never numeric data).
"""

from __future__ import annotations

import _codecs
import io
import pickle

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from data_loaders.errors import DataFormatError, UnsafePickleError

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class knows only ALLOWED_GLOBALS."""

    def __init__(self, file, source: str = "<pickle>"):
        # latin1: Python-2 pickles of numpy arrays carry their data as 8-bit str.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle: it asks for {module}.{name}, and only numpy arrays "
                f"are allowed ({', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))})"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to unpickle: persistent id {pid!r}")


def _check_no_objects(obj, source: str) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{source}: refused: an array of Python objects (dtype {obj.dtype})")
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _check_no_objects(item, source)
    elif isinstance(obj, dict):
        for item in obj.values():
            _check_no_objects(item, source)


def loads_arrays(data: bytes, source: str = "<pickle>"):
    """Unpickle `data`, allowing only numpy arrays inside tuples, lists, dicts and scalars."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataFormatError(f"{source}: not a readable pickle of numpy arrays: {type(e).__name__}: {e}") from e
    _check_no_objects(obj, source)
    return obj
