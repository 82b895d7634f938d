"""grading.sandbox: each hostile submission gets a one-line verdict within its limits; the grader is unaffected.

The hostile submissions live in tests/hostile/ (one small file per attack) and are called through
tests/hostile/driver.py. Limits are small (5 s wall, 512 MB) so the file runs in well under a minute
with -n 2. Leftover processes are looked up in /proc.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from grading import _child, integrity, sandbox
from grading.sandbox import Limits, Outcome, SandboxError, run_call, run_calls

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox uses Linux namespaces and /proc")

HOSTILE = Path(__file__).resolve().parent / "hostile"
DRIVER = HOSTILE / "driver.py"
PROJECT = Path(__file__).resolve().parent.parent
LIMITS = Limits(wall_s=5, cpu_s=10, memory_mb=512)
# The submissions that hang: what they test is that the wall limit kills them and says so, not its
# size; 2 s is still ten times a call's start on the loaded 2-core machine (was LIMITS' 5 s: 3 s each).
HANG_LIMITS = Limits(wall_s=2, cpu_s=10, memory_mb=512)
SLACK_S = 3.0  # start-up, kill and clean-up on a loaded 2-core machine, on top of the wall limit


def call(name: str, function: str, limits: Limits = LIMITS, scan: bool = True, **kwargs) -> Outcome:
    """Run tests/hostile/<name>.py's `function` through the driver's `call` (scan=False: without the
    static scan for forbidden imports, to reach the run-time barriers)."""
    calls = [("call", {"name": function, **kwargs})]
    return run_calls(HOSTILE / f"{name}.py", DRIVER, calls, limits, _isolation={"scan": scan})[0]


def live_processes(uid: int) -> list[int]:
    """Pids of the processes (not zombies) owned by `uid`, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] not in ("Z", "X"):
                        pids.append(int(name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def namespace_pid(pid: int) -> int | None:
    """`pid`'s pid in its own (innermost) pid namespace: 1 for a namespace's init, 2 for the runner."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next((x for x in f if x.startswith("NSpid:")), "")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(line.split()[-1]) if line else None


def assert_clean_failure(outcome: Outcome, limits: Limits = LIMITS) -> None:
    assert not outcome.ok and outcome.value is None
    assert outcome.verdict and "\n" not in outcome.verdict, f"verdict must be one line: {outcome.verdict!r}"
    assert outcome.wall_s <= limits.wall_s + SLACK_S
    for text in (outcome.verdict, outcome.traceback or ""):
        assert "bprop-sandbox-" not in text and "_child.py" not in text, f"sandbox paths leak into {text!r}"


# --------------------------------------------------------------------------------------------------
# One verdict per hostile submission

VERDICTS = [
    # id, file, driver function, kwargs, limits, verdict (regex, whole line), traceback (regex, searched)
    ("exit-at-import", "exit_at_import", "load", {}, LIMITS, r"exited with status 3 while importing", None),
    (
        "sys-exit-at-import",
        "sys_exit_at_import",
        "load",
        {},
        LIMITS,
        r"called sys\.exit\(\) while importing",
        r'File "sys_exit_at_import.py", line 5, in <module>\n    sys.exit\(\)',
    ),
    (
        "name-error-at-import",
        "import_error",
        "load",
        {},
        LIMITS,
        r"raised NameError while importing: name 'undefined_name' is not defined",
        'File "import_error.py", line 5, in <module>',
    ),
    (
        "segfault",
        "segfault",
        "call",
        {"name": "crash"},
        LIMITS,
        r"killed by signal SIGSEGV \(segmentation fault\)",
        'File "segfault.py", line 7 in crash',
    ),
    (
        "busy-loop",
        "hang",
        "call",
        {"name": "spin"},
        HANG_LIMITS,
        r"timed out after 2 s",
        r'File "hang.py", line [78] in spin',
    ),
    (
        "sleep-forever",
        "hang",
        "call",
        {"name": "sleep"},
        HANG_LIMITS,
        r"timed out after 2 s",
        r'Stack \(most recent call first\):\n  File "hang.py", line 12 in sleep',
    ),
    (
        "cpu-limit",
        "hang",
        "call",
        {"name": "spin"},
        Limits(wall_s=30, cpu_s=1, memory_mb=512),  # wall far above: a loaded machine gives the spin little CPU
        r"CPU time limit of 1 s exceeded",
        r'File "hang.py", line [78] in spin',
    ),
    (
        "memory-50GB-numpy",
        "memory_hog",
        "call",
        {"name": "numpy_array"},
        LIMITS,
        r"memory limit of 512 MB exceeded \(MemoryError: Unable to allocate 50\.0 GiB .*\)",
        r'File "memory_hog.py", line 9, in numpy_array\n    return np.ones\(50 \* GB // 8\)',
    ),
    (
        "memory-50GB-bytearray",
        "memory_hog",
        "call",
        {"name": "python_bytes"},
        LIMITS,
        r"memory limit of 512 MB exceeded \(MemoryError\)",
        'File "memory_hog.py", line 13, in python_bytes',
    ),
    (
        "one-1GB-file",
        "disk_filler",
        "call",
        {"name": "one_big_file"},
        Limits(wall_s=5, memory_mb=512, disk_mb=16),
        r"raised OSError: \[Errno 27\] File too large",  # RLIMIT_FSIZE (Python ignores SIGXFSZ)
        r'File "disk_filler.py", line 9, in one_big_file',
    ),
    (
        "1000-files-of-1MB",
        "disk_filler",
        "call",
        {"name": "many_files"},
        Limits(wall_s=5, memory_mb=512, disk_mb=16),
        r"raised OSError: \[Errno 28\] No space left on device",  # the working directory's tmpfs
        r'File "disk_filler.py", line 15, in many_files',
    ),
    (
        "shape-error",
        "raises",
        "call",
        {"name": "forward"},
        LIMITS,
        r"raised ValueError: shapes \(1,784\) and \(32,10\) not aligned: 784 \(dim 1\) != 32 \(dim 0\)",
        r'File "raises.py", line 9, in forward\n    return x.dot\(w\)',
    ),
    (
        "kill-the-grader",
        "kill_parent",
        "call",
        {"name": "kill_parent"},
        LIMITS,
        r"raised PermissionError: \[Errno 1\] Operation not permitted",
        'File "kill_parent.py", line 8, in kill_parent',
    ),
    (
        "returns-an-object",
        "bad_values",
        "call",
        {"name": "an_object"},
        LIMITS,
        r"returned a value that cannot be sent back: value\['weights'\]: a value of type builtins\.object cannot be sent .*",
        None,
    ),
    (
        "returns-object-array",
        "bad_values",
        "call",
        {"name": "object_array"},
        LIMITS,
        r"returned a value that cannot be sent back: value: arrays of dtype object cannot be sent .*",
        None,
    ),
    (
        "returns-a-long-list",
        "bad_values",
        "call",
        {"name": "long_list"},
        LIMITS,
        r"returned a value that cannot be sent back: its structure takes 9\.5 MB as JSON \(at most 8 MB\): "
        r"return numpy arrays rather than long lists of numbers",
        None,
    ),
    (
        "result-too-large",
        "bad_values",
        "call",
        {"name": "sixteen_mb"},
        Limits(wall_s=5, memory_mb=512, max_result_mb=1),
        r"sent back more than 1 MB",
        None,
    ),
    (
        "garbage-on-result-pipe",
        "bad_values",
        "call",
        {"name": "garbage"},
        LIMITS,
        r"sent back data the grader cannot read \(frame of unknown kind b't'\)",
        None,
    ),
    (
        "forged-8TB-array-header",
        "bad_values",
        "call",
        {"name": "forged_huge_array"},
        LIMITS,
        r"sent back data the grader cannot read \(value: array header says \(1000000000000,\) float64 "
        r"\(8000000000000 bytes\) but 16 bytes follow\)",
        None,
    ),
    (
        "forged-pickle-array",
        "bad_values",
        "call",
        {"name": "forged_object_array"},
        LIMITS,
        r"sent back data the grader cannot read \(value: array of dtype object \(expected numbers or bools\)\)",
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "function", "kwargs", "limits", "verdict", "trace"),
    [v[1:] for v in VERDICTS],
    ids=[v[0] for v in VERDICTS],
)
def test_hostile_submission_gets_its_verdict(name, function, kwargs, limits, verdict, trace):
    cwd = os.getcwd()
    outcome = run_call(HOSTILE / f"{name}.py", DRIVER, function, kwargs, limits)
    assert_clean_failure(outcome, limits)
    assert re.fullmatch(verdict, outcome.verdict), outcome.verdict
    if trace:  # where it happened, in the submission's own file
        assert re.search(trace, outcome.traceback or ""), outcome.traceback
    assert os.getcwd() == cwd and "submission" not in sys.modules  # the grader's process is untouched


def test_output_flood_is_capped_and_the_value_survives():
    outcome = call("flood", "answer")
    assert outcome.ok and outcome.value == 42 and outcome.verdict is None
    # 100 lines of 1,000,001 bytes on stdout, 10 on stderr; the first 64,000 bytes of each are kept
    assert outcome.stdout == "x" * 64_000 + "\n[... 99,936,100 bytes dropped]"
    assert outcome.stderr == "x" * 64_000 + "\n[... 9,936,010 bytes dropped]"


def test_numpy_patch_stays_in_the_child():
    outcome = run_call(
        HOSTILE / "numpy_patch.py", DRIVER, "dot", {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    )
    assert outcome.ok and outcome.value == 0  # the child's numpy.dot is the submission's lambda
    assert np.dot(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 11.0  # the grader's is not
    # nor the next child's, forked from the same fork server
    after = run_call(HOSTILE / "echo.py", DRIVER, "dot", {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])})
    assert after.ok and after.value == 11.0


# --------------------------------------------------------------------------------------------------
# The fork server (numpy imported once; a child forked per run): no way back to it, nothing shared


def _server():
    """The grader's current fork server (started by a first call if there is none yet)."""
    assert call("echo", "echo").ok
    return sandbox._ForkServer._current


def test_a_child_holds_no_way_back_to_the_fork_server():
    """Beyond stdin/stdout/stderr the child has its result and crash pipes and nothing else: not the
    server's request socket (through which it could have a child of its choosing forked as root), nor
    another child's control socket (through which it could forge that child's exit)."""
    outcome = call("fork_server", "reach")
    assert outcome.ok, outcome.verdict
    assert outcome.value == {"3": "pipe", "4": "pipe"}


def test_the_exec_path_gives_the_same_verdicts(monkeypatch):
    """FORK_SERVER = False (scripts/sandbox_bench.py's bubblewrap backend): each child exec'd, as before."""
    forked = [call("raises", "forward"), call("kill_parent", "kill_parent"), call("fork_server", "reach")]
    forked.append(run_calls(HOSTILE / "exit_at_import.py", DRIVER, [("load", {})], LIMITS)[0])
    monkeypatch.setattr(sandbox, "FORK_SERVER", False)
    execd = [call("raises", "forward"), call("kill_parent", "kill_parent"), call("fork_server", "reach")]
    execd.append(run_calls(HOSTILE / "exit_at_import.py", DRIVER, [("load", {})], LIMITS)[0])
    assert [o.verdict for o in execd] == [o.verdict for o in forked]
    assert forked[3].verdict == "exited with status 3 while importing"
    assert sorted(execd[2].value.values()) == ["pipe", "pipe"]  # at the fd numbers the grader's pipes had


def test_a_killed_fork_server_is_replaced_and_reaps_every_child():
    server = _server()
    assert [call("hang", "sleep", limits=Limits(wall_s=1)).verdict for _ in range(2)] == ["timed out after 1 s"] * 2
    assert children(server.proc.pid) == []  # every child reaped, none left a zombie
    server.proc.kill()
    server.proc.wait()
    assert call("echo", "echo").ok
    assert sandbox._ForkServer._current is not server and sandbox._ForkServer._current.alive()


def test_the_fork_server_outlives_the_thread_that_started_it():
    """Its PDEATHSIG is tied to the thread that started it: a thread of its own, not a grading thread."""
    import threading

    server = _server()
    server.proc.kill()
    server.proc.wait()
    worker = threading.Thread(target=lambda: call("echo", "echo"))
    worker.start()
    worker.join()
    started = sandbox._ForkServer._current
    assert started is not server
    time.sleep(0.5)  # a PDEATHSIG would have killed it by now
    assert started.alive() and call("echo", "echo").ok and sandbox._ForkServer._current is started


def test_network_is_unreachable():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))  # loopback only: the test never touches an outside address
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        outcome = call("network", "connect", port=port)
        assert_clean_failure(outcome)
        assert outcome.verdict == "raised OSError: [Errno 101] Network is unreachable"
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing arrived
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # control: the listener works
            conn, _ = listener.accept()
            conn.close()


def test_writing_outside_its_folder_is_denied():
    tag = uuid.uuid4().hex
    site = sandbox._child_sys_path()[-1]
    targets = [
        f"/tmp/bprop-hostile-{tag}",
        f"/dev/shm/bprop-hostile-{tag}",
        f"{PROJECT}/bprop-hostile-{tag}",
        f"{site}/bprop-hostile-{tag}.pth",
        f"../bprop-hostile-{tag}",  # next to its working directory: the run's read-only folder
    ]
    outcome = call("write_outside", "write", paths=targets)
    assert outcome.ok, outcome.verdict
    for path in targets:  # the chroot either has no such folder or shows it read-only
        denied = ("OSError: [Errno 30] Read-only file system", "FileNotFoundError: [Errno 2] No such file or directory")
        assert outcome.value[path].startswith(denied), outcome.value[path]
        assert not os.path.isabs(path) or not os.path.exists(path)
    assert outcome.value[targets[-1]].startswith("OSError: [Errno 30] Read-only file system")
    assert outcome.value["own_file.txt"] == "mine"  # control: its own working directory is writable
    assert outcome.value["cwd"].endswith("/box/work")


def test_the_reference_is_neither_importable_nor_readable():
    outcome = call("steal_reference", "steal", scan=False, project=str(PROJECT))
    assert outcome.ok, outcome.verdict
    results = outcome.value
    # the hostile file's own list of what it tries: every one of the grader's packages among them
    tried = {k.removeprefix("import ") for k in results if k.startswith("import ") and " " not in k[7:]}
    assert {"reference", "oracles.compare", "grading", "data_loaders", "bprop"} <= tried, tried
    for name in tried:
        assert results[f"import {name}"].startswith("ModuleNotFoundError"), results[f"import {name}"]
    assert results["import after removing the blocker"].startswith("ModuleNotFoundError")
    assert results["read reference/network.py"].startswith("FileNotFoundError")
    assert results["numpy"] == np.__version__  # control: numpy is importable


def test_an_orphan_that_left_the_session_is_killed():
    outcome = call("fork", "orphan")
    assert outcome.ok, outcome.verdict
    assert outcome.value["grandchild"] == "forked"
    assert live_processes(outcome.value["uid"]) == [], "the setsid grandchild survived the run"


def test_a_hanging_fork_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "TMP_BASE", str(tmp_path))
    outcome = call("fork", "fork_and_hang", limits=HANG_LIMITS)
    assert_clean_failure(outcome, HANG_LIMITS)
    assert outcome.verdict == "timed out after 2 s"
    uid = int(re.fullmatch(r"uid (\d+)\n", outcome.stdout).group(1))
    assert live_processes(uid) == []
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone, even after the kill


def test_nothing_survives_when_the_grader_itself_is_killed(tmp_path):
    """SIGKILL the grader mid-call: its fork server dies with it (PDEATHSIG), the child with the fork
    server (PDEATHSIG), and with that child the pid namespace, whose teardown kills the submission's
    own children."""
    if not sandbox.isolation()["pidns"]:
        pytest.skip("no pid namespace here")
    script = tmp_path / "grader.py"
    script.write_text(
        "import sys\nfrom grading.sandbox import Limits, run_call\n"
        f"run_call({str(HOSTILE / 'fork.py')!r}, {str(DRIVER)!r}, 'call', {{'name': 'fork_and_hang'}}, Limits(wall_s=60))\n"
    )
    grader = subprocess.Popen([sys.executable, str(script)], cwd=PROJECT)
    try:
        runner = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and runner is None:  # fork server -> bootstrap -> init -> runner -> child
            time.sleep(0.2)
            runner = next((p for p in descendants(grader.pid) if namespace_pid(p) == 2 and children(p)), None)
        assert runner is not None, "the submission did not start within 60 s"
        uid = os.stat(f"/proc/{runner}").st_uid
        assert len(live_processes(uid)) == 2  # the hanging runner and its sleeping child
    finally:
        grader.kill()
        grader.wait()
    deadline = time.monotonic() + 10
    while live_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_processes(uid) == []
    # its temporary folder stayed (no clean-up ran); the next grader removes it
    base = Path(sandbox._tmp_base())
    stale = [p.name for p in base.glob(f"{sandbox.TMP_PREFIX}{grader.pid}-*")]
    assert len(stale) == 1
    assert stale[0] in sandbox.remove_stale_dirs()
    assert not (base / stale[0]).exists()


def test_a_fork_bomb_is_stopped_by_the_process_limit():
    # Outer guard: without RLIMIT_NPROC in force, the bomb is bounded only by its children's 1 s
    # lifetime; don't run it then.
    if not sandbox.isolation()["nproc"]:
        pytest.skip("RLIMIT_NPROC is not in force (not root): the bounded bomb would still fork freely")
    outcome = call("fork_bomb", "bomb")
    assert_clean_failure(outcome)
    assert outcome.verdict == "raised BlockingIOError: [Errno 11] Resource temporarily unavailable"
    refused = int(re.fullmatch(r"fork number (\d+) refused\n", outcome.stdout).group(1))
    assert refused <= LIMITS.processes


# --------------------------------------------------------------------------------------------------
# Values travel without pickle, exactly


def test_values_round_trip_exactly():
    kwargs = {
        "f64": np.linspace(-1, 1, 6).reshape(2, 3),
        "f32": np.arange(4, dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "i64": np.array([[1, -2]], dtype=np.int64),
        "u8": np.array([0, 255], dtype=np.uint8),
        "bool": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "empty": np.zeros((0, 3)),
        "scalar32": np.float32(0.1),
        "zero_d": np.array(2.5),
        "special": [float("nan"), float("inf"), -float("inf"), 1e-300],
        "nested": {"t": (1, "a", None, True), 3: [2.5, {"deep": (np.int16(7),)}]},
    }
    outcome = run_call(HOSTILE / "echo.py", DRIVER, "call", {"name": "echo", **kwargs}, LIMITS)
    assert outcome.ok, outcome.verdict
    got = outcome.value
    for key in ("f64", "f32", "fortran", "i64", "u8", "bool", "complex", "empty", "zero_d"):
        assert got[key].dtype == kwargs[key].dtype and got[key].shape == kwargs[key].shape, key
        np.testing.assert_array_equal(got[key], kwargs[key])
    assert type(got["scalar32"]) is np.float32 and got["scalar32"] == np.float32(0.1)
    assert np.isnan(got["special"][0]) and got["special"][1:] == [float("inf"), -float("inf"), 1e-300]
    assert got["nested"]["t"] == (1, "a", None, True) and isinstance(got["nested"]["t"], tuple)
    assert type(got["nested"][3][1]["deep"][0]) is np.int16


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


BAD_TREES = [
    ("plain-object", {"a": 1}, [], "unexpected dict"),
    ("unknown-tag", {"$eval": "__import__('os')"}, [], "unexpected dict"),
    ("missing-array", {"$nd": 0}, [], "bad array reference 0"),
    ("array-used-twice", [{"$nd": 0}, {"$nd": 0}], [_npy(np.zeros(2))], "bad array reference 0"),
    ("bool-array-index", {"$nd": True}, [_npy(np.zeros(2))], "bad array reference True"),
    ("bool-dict-key", {"$dict": [[True, 1]]}, [], "dict key True"),
    ("too-deep", json.loads("[" * 70 + "]" * 70), [], "nested deeper than 64"),
    ("truncated-npy", {"$nd": 0}, [_npy(np.zeros(4))[:-8]], "but 24 bytes follow"),
    ("not-npy", {"$nd": 0}, [b"PK\x03\x04 a zip file"], "not a valid .npy array"),
    ("string-array", {"$nd": 0}, [_npy(np.array(["a"]))], "array of dtype <U1"),
    ("scalar-not-0d", {"$sc": 0}, [_npy(np.zeros(2))], "a numpy scalar must be 0-d"),
    ("bad-float-tag", {"$f": "1e999"}, [], "unexpected dict"),
]


@pytest.mark.parametrize(("tree", "arrays", "message"), [b[1:] for b in BAD_TREES], ids=[b[0] for b in BAD_TREES])
def test_decoder_rejects_non_conforming_data(tree, arrays, message):
    with pytest.raises(_child.CodecError, match=re.escape(message)):
        _child.decode(tree, arrays)


# --------------------------------------------------------------------------------------------------
# run_calls: several calls in one child, a fresh module each, a fresh child after a kill


def test_run_calls_gives_each_call_its_own_verdict():
    mixed = HOSTILE / "mixed.py"
    calls = [
        ("call", {"name": "ok", "x": 1}),
        ("call", {"name": "spin"}),
        ("call", {"name": "ok", "x": 2}),
        ("call", {"name": "crash"}),
        ("call", {"name": "fail"}),
        ("call", {"name": "leave"}),
        ("call", {"name": "ok", "x": 3}),
    ]
    outcomes = run_calls(mixed, DRIVER, calls, HANG_LIMITS)
    assert [o.ok for o in outcomes] == [True, False, True, False, False, False, True]
    assert [o.value for o in outcomes if o.ok] == [2, 3, 4]
    assert [o.verdict for o in outcomes if not o.ok] == [
        "timed out after 2 s",
        "killed by signal SIGSEGV (segmentation fault)",
        "raised KeyError: 'dense_1.W'",
        "exited with status 7",
    ]


def test_run_calls_imports_the_submission_afresh_for_each_call():
    outcomes = run_calls(HOSTILE / "echo.py", DRIVER, [("call", {"name": "bump"})] * 3, LIMITS)
    assert [o.value for o in outcomes] == [1, 1, 1]  # module state does not leak between calls


def test_run_calls_wall_limit_is_per_call():
    # 7 s in all, over the 6 s limit of one call: both complete only if the limit is per call. Each
    # call's wall_s includes the submission's import (about 1 s on a loaded machine), hence the margin;
    # no upper bound on wall_s is asserted (a timing bound is noise; a call over its limit is killed).
    # A call's clock is the grader's: it starts when the grader has read the previous result, and the
    # child starts the next call as soon as it has sent that result, so on a busy machine one call
    # can read up to the grader's lag short of its 3.5 s (seen: a full test run beside mutation
    # testing). Together the two cannot read less than 7 s less that lag.
    limits = Limits(wall_s=6, memory_mb=512)
    calls = [("call", {"name": "nap", "seconds": 3.5})] * 2
    outcomes = run_calls(HOSTILE / "mixed.py", DRIVER, calls, limits)
    assert [o.verdict for o in outcomes] == [None, None]
    assert [o.value for o in outcomes] == [3.5] * 2
    assert sum(o.wall_s for o in outcomes) >= 7.0 - SLACK_S, outcomes


def test_a_deadly_import_is_not_rerun_for_every_call():
    t = time.monotonic()
    outcomes = run_calls(HOSTILE / "exit_at_import.py", DRIVER, [("load", {})] * 5, LIMITS)
    assert [o.verdict for o in outcomes] == ["exited with status 3 while importing"] * 5
    assert [o.wall_s for o in outcomes[1:]] == [0.0] * 4
    assert time.monotonic() - t < 1 + 2 * SLACK_S  # one child, not five


def test_an_exception_at_import_is_reported_for_each_call_from_one_child():
    outcomes = run_calls(HOSTILE / "import_error.py", DRIVER, [("load", {})] * 3, LIMITS)
    assert [o.verdict for o in outcomes] == [
        "raised NameError while importing: name 'undefined_name' is not defined"
    ] * 3
    assert all('File "import_error.py", line 5' in o.traceback for o in outcomes)


# --------------------------------------------------------------------------------------------------
# Errors that are the grader's, not the submission's


def test_a_driver_without_the_function_is_a_sandbox_error():
    with pytest.raises(SandboxError, match=re.escape("the driver driver.py has no function nonexistent")):
        run_call(HOSTILE / "echo.py", DRIVER, "nonexistent", {}, LIMITS)


@pytest.mark.parametrize(
    ("submission", "function", "kwargs", "error", "message"),
    [
        (HOSTILE / "missing.py", "load", {}, ValueError, "expected an existing .py file"),
        (HOSTILE / "driver.py", "not a name", {}, ValueError, "is not a function name"),
        (HOSTILE / "echo.py", "call", {"x": object()}, TypeError, "kwargs of call 0: value['x']"),
    ],
    ids=["missing-file", "bad-function-name", "kwargs-not-sendable"],
)
def test_bad_arguments_are_refused_before_any_child_starts(submission, function, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        run_call(submission, DRIVER, function, kwargs, LIMITS)


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match=re.escape("Limits.wall_s must be a positive number, got 0")):
        Limits(wall_s=0)


# --------------------------------------------------------------------------------------------------
# What protects, here and in the weaker modes


def test_isolation_as_root_uses_namespaces_and_an_own_uid():
    info = sandbox.isolation()
    if not info["root"]:
        pytest.skip("not root: no uid of its own")
    assert info["namespaces"] and info["chroot"] and info["pidns"] and info["nproc"]
    assert sandbox.UID_BASE <= info["uid"] < sandbox.UID_BASE + 2**24
    assert info["network"] == "none (empty network namespace)"
    assert info["ipc"] == "private (own IPC namespace)"


MODES = [
    pytest.param({"namespaces": False, "drop_uid": False}, id="no-namespaces"),
    pytest.param({"userns": True}, id="user-namespace"),
]


@pytest.mark.parametrize("mode", MODES)
def test_weaker_modes_still_block_imports_and_report_verdicts(mode):
    """The user-namespace mode (what a non-root grader gets where user namespaces are allowed) keeps the
    chroot and the empty network namespace. Without namespaces only sys.path and the import blocker keep
    the reference out of a plain `import`: a submission that removes the blocker and extends sys.path
    gets it, and it can read the files (the test says so, so the weakness stays visible)."""
    outcomes = run_calls(
        HOSTILE / "steal_reference.py",
        DRIVER,
        [("call", {"name": "steal", "project": str(PROJECT)})],
        LIMITS,
        _isolation={**mode, "scan": False},
    )
    results = outcomes[0].value
    chroot = mode.get("namespaces", True)
    assert results["import reference.network"].startswith("ModuleNotFoundError")
    assert results["import after removing the blocker"].startswith("ModuleNotFoundError") == chroot
    assert results["read reference/network.py"].startswith("FileNotFoundError") == chroot
    exited = run_calls(HOSTILE / "exit_at_import.py", DRIVER, [("load", {})], LIMITS, _isolation=mode)[0]
    assert exited.verdict == "exited with status 3 while importing"
    raised = run_calls(HOSTILE / "raises.py", DRIVER, [("call", {"name": "forward"})], LIMITS, _isolation=mode)[0]
    assert raised.verdict.startswith("raised ValueError: shapes (1,784) and (32,10) not aligned")


# --------------------------------------------------------------------------------------------------
# System V IPC: nothing one submission plants reaches the next one, or outlives the run


def _host_ipc(key: int) -> dict[str, int]:
    """shmget/msgget of `key` in the grader's own IPC namespace: the ids, -1 where none exists."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return {"shm": libc.shmget(key, 0, 0), "msg": libc.msgget(key, 0)}


def _remove_host_ipc(key: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ids = _host_ipc(key)
    if ids["shm"] >= 0:
        libc.shmctl(ids["shm"], 0, None)  # IPC_RMID
    if ids["msg"] >= 0:
        libc.msgctl(ids["msg"], 0, None)


@pytest.mark.parametrize("mode", [{}, {"userns": True}], ids=["root", "user-namespace"])
def test_sysv_ipc_is_private_to_each_child_and_dies_with_it(mode):
    key = 0x5B00_0000 + int.from_bytes(os.urandom(2), "big")
    secret = f"from-the-first-submission-{key:x}"

    def ipc(function, **kwargs):
        calls = [("call", {"name": function, **kwargs})]
        return run_calls(HOSTILE / "sysv_ipc.py", DRIVER, calls, LIMITS, _isolation=mode)[0]

    try:
        planted = ipc("plant", key=key, secret=secret)
        assert planted.ok and planted.value == "planted", planted
        seen = ipc("read", key=key)
        assert seen.ok, seen
        assert seen.value == {}, f"the next submission read what the first one planted: {seen.value}"
        assert _host_ipc(key) == {"shm": -1, "msg": -1}, "a segment or queue outlived the child"
    finally:
        _remove_host_ipc(key)


# --------------------------------------------------------------------------------------------------
# The grader's own work on what a child sends back is bounded


@pytest.mark.parametrize(
    ("kwargs", "verdict"),
    [
        ({"n": 20_000, "pad": 600}, r"a \.npy header of 9,076 bytes \(at most 4,096\)"),
        ({"n": 450_000, "pad": 0}, r"450,000 arrays in one value \(at most 100,000\)"),
    ],
    ids=["slow-headers", "too-many-arrays"],
)
def test_forged_npy_frames_cost_the_grader_little_and_get_a_verdict(kwargs, verdict):
    """Before: 20,000 headers of 9 KB took 69 s of grader CPU (numpy's literal_eval reader) and passed."""
    t = time.thread_time()
    outcome = call("forged_npy", "many_arrays", limits=Limits(wall_s=20, cpu_s=20, memory_mb=1024), **kwargs)
    grader_cpu = time.thread_time() - t
    assert not outcome.ok
    assert re.search(r"^sent back data the grader cannot read \(.*" + verdict, outcome.verdict), outcome.verdict
    assert grader_cpu < 5.0, f"the grader spent {grader_cpu:.1f} s of its own CPU on one call's result"


def test_decoding_stops_at_its_cpu_budget():
    arrays = [_npy(np.zeros(0))] * 5000
    tree = [{"$nd": k} for k in range(len(arrays))]
    assert len(_child.decode(tree, arrays, cpu_s=10.0)) == 5000
    with pytest.raises(_child.CodecError, match=r"took more than 0 s of the grader's CPU"):
        _child.decode(tree, arrays, cpu_s=0.0)


def test_the_npy_reader_takes_what_np_save_writes():
    for a in (np.zeros(()), np.arange(3.0), np.ones((2, 3), np.float32).T, np.array([True]), np.zeros((1,) * 64)):
        for version in ((1, 0), (2, 0)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=version)
            b = _child.load_npy(buf.getvalue(), "x")
            assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
            assert (b.flags.c_contiguous, b.flags.f_contiguous) == (a.flags.c_contiguous, a.flags.f_contiguous)


NPY_CASES = [
    np.zeros(()),
    np.float32(2.5) * np.ones(()),
    np.arange(3.0),
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.ones((2, 3), np.float32).T,  # Fortran order
    np.arange(24.0).reshape(2, 3, 4)[:, ::2, 1:],  # neither C nor Fortran order
    np.zeros((0, 5)),
    np.zeros((10**12, 0), np.uint8),  # a 13-digit first axis: less growth padding
    np.array([True, False]),
    np.arange(6, dtype=np.int8),
    np.arange(6, dtype=np.uint16),
    np.arange(4, dtype=np.float16),
    np.arange(4, dtype=">f8"),  # big-endian
    np.array([1 + 2j, 3 - 4j], np.complex64),
    np.array([1 + 2j], np.complex128),
    np.zeros((1,) * 64),
]


@pytest.mark.parametrize("a", NPY_CASES, ids=lambda a: f"{a.dtype.str}-{a.shape}"[:40])
def test_the_npy_writer_is_np_save_byte_for_byte(a):
    """The codec's npy_bytes (a header made once per dtype, order and shape) is np.save's plain form."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    for _ in range(2):  # made, then from its cache
        assert bytes(_child.npy_bytes(a)) == buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Academic integrity: forbidden modules found in the source, and absent at run time

SCANS = [
    ("import", "import torch", "torch", 1),
    ("import-as", "import numpy as np\nimport torch.autograd as ag", "torch", 2),
    ("from-import", "from scipy.special import expit", "scipy", 1),
    ("dunder-import", 'x = __import__("tensorflow")', "tensorflow", 1),
    ("concatenated", 'import importlib\nm = importlib.import_module("to" + "rch")', "torch", 2),
    (
        "aliased-importlib",
        'import importlib as il\ndef f():\n    return il.import_module("".join(["j", "ax"]))',
        "jax",
        3,
    ),
    ("reversed-name", 'from importlib import import_module as im\nname = "hcrot"[::-1]\nim(name)', "torch", 3),
    ("getattr-builtins", 'import builtins\ngetattr(builtins, "__im" + "port__")("keras")', "keras", 2),
    ("builtins-dict", '__builtins__["__import__"]("autograd")', "autograd", 1),
    ("exec-constant", 'exec("import " + "torch")', "torch", 1),
    ("chr", 'import importlib\nimportlib.import_module(chr(116) + "orch")', "torch", 2),
    ("f-string", 'a = "sci"\n__import__(f"{a}py")', "scipy", 2),
    ("alias-variable", 'imp = __import__\nimp("torch")', "torch", 2),
    ("implied", "import functorch", "functorch", 1),
    ("own-package", "from reference import network", "reference", 1),
    ("dynamic", "import importlib\ndef f(n):\n    return importlib.import_module(n)", integrity.DYNAMIC, 3),
]


@pytest.mark.parametrize(("source", "module", "line"), [s[1:] for s in SCANS], ids=[s[0] for s in SCANS])
def test_the_static_scan_finds_each_way_of_importing(source, module, line):
    uses = integrity.scan(source, integrity.DEFAULT_FORBIDDEN)
    assert [(u.module, u.line) for u in uses] == [(module, line)], uses


def test_the_static_scan_lets_allowed_code_through():
    source = 'import numpy as np\nimport math\nimport importlib\nnp2 = importlib.import_module("numpy")\nexec("x = 1")'
    assert integrity.scan(source, integrity.DEFAULT_FORBIDDEN) == []
    assert integrity.scan("import scipy", ("torch",)) == []  # the assignment decides
    assert [u.module for u in integrity.scan("import grading", ())] == ["grading"]  # the grader's: always


def test_source_too_deep_to_check_is_a_finding_not_a_crash():
    """2,000 attribute accesses parse, but are deeper than the scanner can follow: a finding (the
    submission is not credited), not a crash of the grader; deeper still does not parse (no finding:
    the notebook extraction refuses it)."""
    deep = "import importlib\nimportlib" + ".x" * 2000 + "(1)"
    assert [(u.module, u.code) for u in integrity.scan(deep, ())] == [
        (integrity.DYNAMIC, "the source is nested too deeply to be checked")
    ]
    assert integrity.scan("import importlib\nimportlib" + ".x" * 20000 + "(1)", ()) == []


def test_a_forbidden_import_in_the_source_is_a_verdict_before_anything_runs(tmp_path):
    sub = tmp_path / "sub.py"
    sub.write_text(
        'import numpy as np\n\n\ndef forward(x):\n    import torch\n    return torch.ones(1)\nopen("/never", "w")\n'
    )
    outcome = run_call(sub, DRIVER, "call", {"name": "forward", "x": 1}, LIMITS)
    assert not outcome.ok and outcome.wall_s == 0.0
    assert outcome.verdict.startswith("forbidden import: torch at line 5 (import torch). This assignment forbids it")


def test_a_forbidden_import_hidden_from_the_scan_is_refused_at_run_time():
    for function, module in (("use_torch", "torch"), ("use_scipy", "scipy")):
        outcome = call("forbidden_evasive", function)
        assert not outcome.ok
        assert re.fullmatch(
            rf"forbidden import: {module} at line \d+ \(this assignment does not allow .*", outcome.verdict
        )


def test_undoing_the_blocker_finds_no_forbidden_file():
    sites = list(sandbox._package_dirs())
    assert any(os.path.isdir(os.path.join(s, "torch")) for s in sites), "control: torch is installed here"
    outcome = call("forbidden_undo", "undo", scan=False, sites=sites)
    assert outcome.ok, outcome.verdict
    for what, result in outcome.value.items():
        assert not result.startswith(("imported", "loaded")), f"{what}: {result}"


NON_EDITABLE_SCRIPT = """
import json, sys
from pathlib import Path
import grading, reference
from grading import sandbox
from grading.assignment import load_assignment
from grading.checks import grade_submission
hostile, submission, site = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
out = {"grading": grading.__file__, "reference": reference.__file__, "masks": list(sandbox._masks(
    sandbox.integrity.expand(sandbox.integrity.DEFAULT_FORBIDDEN)))}
calls = [("call", {"name": "undo", "sites": list(sandbox._package_dirs())})]
undo = sandbox.run_calls(hostile / "forbidden_undo.py", hostile / "driver.py", calls, _isolation={"scan": False})[0]
out["undo"] = undo.value if undo.ok else undo.verdict
r = grade_submission(submission, load_assignment("layer-api"))
out["graded"] = {"score": r.score, "max_score": r.max_score, "error": r.error}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_non_editable_install_keeps_its_own_packages_and_torch_out_of_the_sandbox(tmp_path):
    """`pip install .` (not editable, as an autograder image does) puts reference/ and grading/ into a
    site-packages the sandbox binds: they must be masked there too, and torch with them."""
    import shutil
    import sysconfig
    from importlib import metadata

    try:  # pip builds the project without isolation: pyproject.toml's backend must be here already
        backend = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
        metadata.version("pip")
    except metadata.PackageNotFoundError as e:
        pytest.skip(f"needs pip and setuptools>=68 in this venv: {e}")
    if backend < (68, 0):
        pytest.skip(f"needs setuptools>=68 (pyproject.toml's build backend), found {backend}")
    src = tmp_path / "src"
    shutil.copytree(
        PROJECT, src, ignore=shutil.ignore_patterns(".*", "tests", "build", "*.egg-info", "__pycache__", "scripts")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    subprocess.run([*pip, "--target", str(site), str(src)], check=True, capture_output=True)
    assert (site / "reference" / "network.py").is_file() and (site / "grading" / "sandbox.py").is_file()
    (site / "shared.pth").write_text(sysconfig.get_path("purelib") + "\n")  # numpy, torch: as a layered image
    submission = tmp_path / "student.py"
    correct = (PROJECT / "tests" / "submissions" / "layer" / "correct.py").read_text()
    uses_reference = (
        "\nfrom reference.network import Network as _Reference\n\n\nclass ReLU(ReLU):\n    ref = _Reference\n"
    )
    submission.write_text(correct + uses_reference + (HOSTILE / "torch_backward.py").read_text())
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", NON_EDITABLE_SCRIPT, str(HOSTILE), str(submission), str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["grading"].startswith(str(site)) and out["reference"].startswith(str(site))  # the installed copy
    assert {f"{site}/reference", f"{site}/grading"} <= set(out["masks"])
    assert isinstance(out["undo"], dict), out["undo"]
    for what, result in out["undo"].items():
        assert not result.startswith(("imported", "loaded")), f"{what}: {result}"
    assert out["graded"]["score"] == 0 and out["graded"]["max_score"] == 13
    assert out["graded"]["error"].startswith("forbidden import: reference at line"), out["graded"]
    assert "torch at line" in out["graded"]["error"]


def test_masks_cover_each_form_a_forbidden_module_can_take(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    for d in ("torch", "torch-2.0-py3.11.egg", "torchvision", "numpy", "scipy.libs", "tensorflow-2.15.dist-info"):
        (site / d).mkdir(parents=True)
    for f in ("autograd.py", "keras.cpython-311-x86_64-linux-gnu.so", "jaxlib.pyc", "six.py"):
        (site / f).write_text("")
    monkeypatch.setattr(sandbox, "_package_dirs", lambda: (str(site),))
    masks = {os.path.basename(m) for m in sandbox._masks.__wrapped__(integrity.expand(integrity.DEFAULT_FORBIDDEN))}
    expected = {"torch", "torch-2.0-py3.11.egg", "torchvision", "autograd.py", "keras.cpython-311-x86_64-linux-gnu.so"}
    assert expected | {"jaxlib.pyc"} <= masks
    assert not masks & {"numpy", "six.py", "scipy.libs", "tensorflow-2.15.dist-info"}  # not importable as those


def test_a_forked_grader_starts_a_fork_server_of_its_own():
    """multiprocessing's fork start method copies the grader: the copy must not share its parent's
    server (nor a lock held at the fork): it starts its own, and its calls still get their verdicts."""
    import select
    import signal

    parent = _server()
    r, w = os.pipe()
    import threading

    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another grading thread, starting a server at the moment of the fork
        with sandbox._ForkServer._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    pid = os.fork()  # the copy has the lock held by a thread it does not have
    release.set()
    holder.join()
    if pid == 0:  # the forked grader
        try:
            outcome = call("raises", "forward")
            mine = sandbox._ForkServer._current
            ok = mine is not None and mine is not parent and mine.proc.pid != parent.proc.pid
            os.write(w, f"{ok} {outcome.verdict}".encode())
        finally:
            os._exit(0)
    os.close(w)
    if not select.select([r], [], [], 60)[0]:
        os.kill(pid, signal.SIGKILL)
    with os.fdopen(r) as f:
        said = f.read()
    os.waitpid(pid, 0)
    assert said.startswith("True raised ValueError: shapes (1,784) and (32,10) not aligned"), said
    assert sandbox._ForkServer._current is parent and parent.alive()


def test_a_fork_server_that_cannot_start_is_a_sandbox_error_with_its_reason(monkeypatch):
    """No numpy on the child's path: the server's start fails, and the error carries its traceback."""
    import sysconfig

    stdlib = sysconfig.get_path("stdlib")
    monkeypatch.setattr(sandbox, "_child_sys_path", lambda: (stdlib, os.path.join(stdlib, "lib-dynload")))
    monkeypatch.setattr(sandbox._ForkServer, "_current", None)
    with pytest.raises(sandbox.SandboxError, match=r"(?s)fork server did not start.*No module named 'numpy'"):
        call("echo", "echo")
