"""The sandbox child: isolate this process, then load a submission and call a trusted driver on it.

Started by grading/sandbox.py as `python -I -S -B -X utf8 _child.py CONFIG` in a new session. It is
self-contained (stdlib only until numpy is imported from the explicit sys.path): `grading` itself is
not importable here. The grader imports this file too, for the codec (`encode`, `decode`,
`pop_frame`), so both sides share one definition of the wire format.

Steps (trusted code, before any submission code runs):
  1. read CONFIG (written by the grader, outside the box); PDEATHSIG: die with the grader;
  2. enter(): new mount, network, IPC and pid namespaces (as root: unshare(NEWNS|NEWNET|NEWIPC|NEWPID);
     otherwise a user namespace as well); a read-only root built from bind mounts of only what
     Python needs (/usr, /lib*, the interpreter, site-packages, the box) plus a size-capped tmpfs as
     the working directory, then chroot into it. No interface is up, so no socket reaches anything;
     System V shared memory, semaphores and message queues are private and die with the namespace;
  3. split_pid1(): fork init (pid 1 of the namespace), which forks the runner; when init ends, the
     kernel kills whatever the submission left in the namespace;
  4. confine() (the runner): rlimits (CPU, AS, FSIZE, NPROC, CORE=0), then drop to the grader's
     uid for this run (root) or drop all capabilities (user namespace); PR_SET_NO_NEW_PRIVS;
  5. serve(): sys.path = stdlib + site-packages only, a meta-path blocker for the forbidden modules
     (the assignment's and the grader's own, whose files build_root has hidden as well); import numpy and the driver, send {"ready": ...}; then for each call: send
     {"phase": "import"}, import the submission afresh as module `submission`, send
     {"phase": "call"}, call driver.<function>(module, **kwargs), send {"result": ...}.

Wire format (the result pipe): frames of 1 kind byte + 4-byte big-endian length + payload. Kind
b"J": a JSON message. Kind b"A": one array as .npy bytes (np.save's, allow_pickle=False: npy_bytes). A value is
a JSON tree in which arrays and numpy scalars are {"$nd": k} / {"$sc": k} (the k-th following array
frame), tuples {"$tuple": [...]}, dicts {"$dict": [[key, value], ...]} (keys str or int), floats
that JSON cannot hold {"$f": "nan"}. Nothing is pickled and decoding never executes anything. The
kwargs of all calls travel the other way in one file of the same frames (`write_inputs`), so that
a whole run costs a handful of file operations.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import sys
import time
import traceback

# --------------------------------------------------------------------------------------------------
# Codec (shared with the grader)

FRAME_HEADER = struct.Struct(">cI")  # kind, payload length
MAX_DEPTH = 64  # nesting depth of a value
MAX_ITEMS = 1_000_000  # JSON nodes in one value
MAX_JSON_BYTES = 8 * 1024 * 1024  # one JSON message from the child: its Python objects cost ~10x that
ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: no object, str or structured arrays


class CodecError(ValueError):
    """A value that cannot cross the sandbox boundary (what, where, why)."""


def frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(payload)) + payload


_PLAIN = (type(None), bool, int, str)  # exact types that are their own JSON


def _where(path: tuple) -> str:
    """("weights", 0) -> "value['weights'][0]": formatted only for an error message."""
    return "value" + "".join(f"[{k!r}]" for k in path)


def encode(value: object) -> tuple[object, list[memoryview]]:
    """value -> (JSON tree, [npy bytes]); raises CodecError naming the path of what cannot travel."""
    import numpy as np

    arrays: list[memoryview] = []

    def npy(a, path: tuple) -> int:
        if a.dtype.kind not in ARRAY_KINDS or a.dtype.fields is not None:
            raise CodecError(f"{_where(path)}: arrays of dtype {a.dtype} cannot be sent (only numbers and bools)")
        arrays.append(npy_bytes(a))
        return len(arrays) - 1

    def items(seq, path: tuple, depth: int) -> list:
        out = []
        for i, x in enumerate(seq):  # plain numbers inline: a list of a million floats stays fast
            t = type(x)
            if (t is float and math.isfinite(x)) or t in _PLAIN:
                out.append(x)
            else:
                out.append(walk(x, (*path, i), depth + 1))
        return out

    def walk(v, path: tuple, depth: int):
        if depth > MAX_DEPTH:
            raise CodecError(f"{_where(path)}: nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$f": repr(v)}
        if isinstance(v, np.ndarray):
            return {"$nd": npy(v, path)}
        if isinstance(v, np.generic):
            return {"$sc": npy(np.asarray(v), path)}
        if isinstance(v, tuple):
            return {"$tuple": items(v, path, depth)}
        if isinstance(v, list):
            return items(v, path, depth)
        if isinstance(v, dict):
            pairs = []
            for k, x in v.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise CodecError(f"{_where(path)}: dict key {k!r} of type {type(k).__name__} (expected str or int)")
                pairs.append([k, walk(x, (*path, k), depth + 1)])
            return {"$dict": pairs}
        raise CodecError(
            f"{_where(path)}: a value of type {type(v).__module__}.{type(v).__qualname__} cannot be sent "
            "(expected numpy arrays, numbers, bools, str, None, or lists/tuples/dicts of them)"
        )

    return walk(value, (), 0), arrays


def npy_bytes(a) -> bytes:
    """np.save(f, a, allow_pickle=False)'s bytes, byte for byte (tests/test_sandbox.py pins it), without
    its cost per array (~25 us of header formatting; a grading sends and gets back a few thousand small
    arrays): numpy's own header, made once per dtype, order and shape, then the data."""
    from numpy.lib import format as npy_format

    d = npy_format.header_data_from_array_1_0(a)
    key = (d["descr"], d["fortran_order"], d["shape"])
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        try:
            npy_format.write_array_header_1_0(buf, d)  # what np.save writes, for every header under 64 KB
        except ValueError:  # longer: np.save picks format 2.0; not cached
            import numpy as np

            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            return buf.getvalue()
        header = buf.getvalue()
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[key] = header
    return header + a.tobytes(order="F" if d["fortran_order"] else "C")


_NPY_HEADERS: dict = {}  # (descr, fortran_order, shape) -> header bytes


# The one header np.save writes (numpy/lib/format.py): keys in this order, a shape of plain ints.
# Parsed with this regex, in time linear in its (capped) length, and never with ast.literal_eval:
# a forged header 10 KB long, repeated 20,000 times, cost the grader 69 s of CPU that way.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([^'\\]{1,16})', 'fortran_order': (True|False), "
    rb"'shape': \(((?:[0-9]{1,19}, ?){0,64}(?:[0-9]{1,19})?)\), \} *\n"
)
MAX_NPY_HEADER = 4096  # bytes; np.save writes < 200 for any shape of <= 64 dimensions
MAX_ARRAYS = 100_000  # array frames in one value (the built-in drivers send a few hundred)


def load_npy(blob: bytes, where: str):
    """npy bytes -> array: the header checked against a strict pattern and against the size, so that
    neither a huge allocation nor slow parsing can be forced on the reader."""
    import numpy as np

    if blob[:6] != b"\x93NUMPY" or len(blob) < 10:
        raise CodecError(f"{where}: not a valid .npy array (bad magic)")
    version = (blob[6], blob[7])
    if version == (1, 0):
        hlen, start = struct.unpack_from("<H", blob, 8)[0], 10
    elif version in ((2, 0), (3, 0)):
        if len(blob) < 12:
            raise CodecError(f"{where}: not a valid .npy array (truncated header)")
        hlen, start = struct.unpack_from("<I", blob, 8)[0], 12
    else:
        raise CodecError(f"{where}: .npy version {version} not accepted")
    if hlen > MAX_NPY_HEADER:
        raise CodecError(f"{where}: a .npy header of {hlen:,} bytes (at most {MAX_NPY_HEADER:,})")
    m = _NPY_HEADER.fullmatch(blob, start, start + hlen)
    if m is None:
        head = bytes(blob[start : start + min(hlen, 80)])
        raise CodecError(f"{where}: not the .npy header np.save writes: {head!r}")
    try:
        dtype = np.dtype(m.group(1).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise CodecError(f"{where}: bad dtype {m.group(1)!r} ({e})") from None
    if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.hasobject:
        raise CodecError(f"{where}: array of dtype {dtype} (expected numbers or bools)")
    fortran = m.group(2) == b"True"
    shape = tuple(int(n) for n in m.group(3).split(b",") if n.strip())
    if len(shape) > 64:
        raise CodecError(f"{where}: an array of {len(shape)} dimensions (at most 64)")
    nbytes = math.prod(shape) * dtype.itemsize
    data = memoryview(blob)[start + hlen :]
    if len(data) != nbytes:
        raise CodecError(f"{where}: array header says {shape} {dtype} ({nbytes} bytes) but {len(data)} bytes follow")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape)).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


def decode(tree: object, arrays: list[bytes], cpu_s: float | None = None) -> object:
    """(JSON tree, [npy bytes]) -> value; raises CodecError on anything that does not conform, or
    when decoding takes more than `cpu_s` seconds of this thread's CPU."""
    used: set[int] = set()
    count = 0
    if len(arrays) > MAX_ARRAYS:
        raise CodecError(f"{len(arrays):,} arrays in one value (at most {MAX_ARRAYS:,})")
    deadline = None if cpu_s is None else time.thread_time() + cpu_s

    def array(k, path: tuple):
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(arrays) or k in used:
            raise CodecError(f"{_where(path)}: bad array reference {k!r}")
        used.add(k)
        if deadline is not None and len(used) % 256 == 0 and time.thread_time() > deadline:
            raise CodecError(f"decoding it took more than {cpu_s:g} s of the grader's CPU")
        return load_npy(arrays[k], _where(path))

    def items(seq: list, path: tuple, depth: int) -> list:
        nonlocal count
        count += len(seq)
        if count > MAX_ITEMS:
            raise CodecError(f"{_where(path)}: more than {MAX_ITEMS} items")
        return [
            x if type(x) in _PLAIN or type(x) is float else walk(x, (*path, i), depth + 1) for i, x in enumerate(seq)
        ]

    def walk(v, path: tuple, depth: int):
        if depth > MAX_DEPTH:
            raise CodecError(f"{_where(path)}: nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, int, str, float)):
            return v
        if isinstance(v, list):
            return items(v, path, depth)
        if isinstance(v, dict) and len(v) == 1:
            ((tag, body),) = v.items()
            if tag == "$nd":
                return array(body, path)
            if tag == "$sc":
                a = array(body, path)
                if a.shape != ():
                    raise CodecError(f"{_where(path)}: a numpy scalar must be 0-d, got shape {a.shape}")
                return a[()]
            if tag == "$f" and body in ("nan", "inf", "-inf"):
                return float(body)
            if tag == "$tuple" and isinstance(body, list):
                return tuple(items(body, path, depth))
            if tag == "$dict" and isinstance(body, list):
                out = {}
                for item in body:
                    if not (isinstance(item, list) and len(item) == 2):
                        raise CodecError(f"{_where(path)}: a dict item must be [key, value], got {str(item)[:80]}")
                    k, x = item
                    if not isinstance(k, (str, int)) or isinstance(k, bool):
                        raise CodecError(f"{_where(path)}: dict key {str(k)[:80]} (expected str or int)")
                    out[k] = walk(x, (*path, k), depth + 1)
                return out
        raise CodecError(f"{_where(path)}: unexpected {type(v).__name__} {str(v)[:80]}")

    return walk(tree, (), 0)


def pop_frame(buf: bytearray, max_json: int | None = MAX_JSON_BYTES) -> tuple[bytes, bytes] | None:
    """Remove and return the first complete frame of `buf` (the result pipe, read incrementally)."""
    if len(buf) < FRAME_HEADER.size:
        return None
    kind, n = FRAME_HEADER.unpack_from(buf)
    if kind not in (b"J", b"A"):
        raise CodecError(f"frame of unknown kind {kind!r}")
    if kind == b"J" and max_json is not None and n > max_json:
        raise CodecError(f"a message of {n:,} bytes (at most {max_json:,}: arrays travel as .npy, not in JSON)")
    if len(buf) < FRAME_HEADER.size + n:
        return None
    payload = bytes(buf[FRAME_HEADER.size : FRAME_HEADER.size + n])
    del buf[: FRAME_HEADER.size + n]
    return kind, payload


def write_inputs(path: str, kwargs_list: list[dict]) -> None:
    """All calls' kwargs in one file of frames (the grader -> child direction): per call a J frame
    {"call": k, "value": tree, "arrays": n} and its n A frames. One file, not one per array: file
    operations are slow on some disks."""
    with open(path, "wb") as f:
        for k, kwargs in enumerate(kwargs_list):
            try:
                tree, arrays = encode(kwargs)
            except CodecError as e:
                raise CodecError(f"kwargs of call {k}: {e}") from None
            payload = json.dumps({"call": k, "value": tree, "arrays": len(arrays)}).encode()
            f.write(frame(b"J", payload))
            for blob in arrays:
                f.write(FRAME_HEADER.pack(b"A", len(blob)))
                f.write(blob)


def read_inputs(path: str) -> list[tuple[object, list[bytes]]]:
    """write_inputs' file -> [(tree, [npy bytes]) per call], decoded later, one call at a time."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    calls: list[tuple[object, list[bytes]]] = []
    while (f := pop_frame(buf, max_json=None)) is not None:  # the grader's own data
        kind, payload = f
        if kind == b"J":
            msg = json.loads(payload)
            calls.append((msg["value"], []))
        else:
            calls[-1][1].append(payload)
    return calls


# --------------------------------------------------------------------------------------------------
# Isolation (Linux; runs before any submission code)

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
# statvfs f_flag bit -> mount flag, so a read-only remount keeps the flags a user namespace may not drop
_ST_TO_MS = {
    1: MS_RDONLY,
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}


class _Libc:
    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        self.check(self.lib.unshare(flags), f"unshare({flags:#x})")

    def mount(self, src, target: str, fstype, flags: int, data=None) -> None:
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        self.check(self.lib.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def prctl(self, option: int, arg: int) -> None:
        self.check(self.lib.prctl(option, arg, 0, 0, 0), f"prctl({option})")

    def drop_capabilities(self) -> None:
        """capset(all zero): no capability left, in this user namespace or any other."""
        ctypes = self.ctypes

        class Header(ctypes.Structure):
            _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

        class Data(ctypes.Structure):
            _fields_ = (
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            )

        header, data = Header(0x20080522, 0), (Data * 2)()
        self.check(self.lib.capset(ctypes.byref(header), data), "capset")


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind_readonly(libc: _Libc, src: str, dst: str) -> None:
    libc.mount(src, dst, None, MS_BIND | MS_REC)
    keep = 0
    for st_bit, ms_bit in _ST_TO_MS.items():
        if os.statvfs(src).f_flag & st_bit:
            keep |= ms_bit
    libc.mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | keep)


def build_root(libc: _Libc, cfg: dict, owner: tuple[int, int]) -> None:
    """A read-only tmpfs root holding bind mounts of only what Python needs; chroot into it."""
    new = cfg["newroot"]
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    libc.mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in cfg["binds"]:  # sorted, parents before children
        if os.path.islink(path):
            _mkdirs(os.path.dirname(new + path))
            os.symlink(os.readlink(path), new + path)
        elif os.path.isdir(path):
            _mkdirs(new + path)
            _bind_readonly(libc, path, new + path)
        elif os.path.exists(path):  # a file such as /etc/ld.so.cache or /dev/null
            _mkdirs(os.path.dirname(new + path))
            open(new + path, "w").close()
            _bind_readonly(libc, path, new + path)
    for path in cfg["masks"]:  # forbidden packages (and the grader's) inside a bound directory: hidden
        if os.path.isdir(new + path):
            libc.mount("tmpfs", new + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
        elif os.path.isfile(new + path):  # a module file or an extension: an empty file instead
            _bind_readonly(libc, "/dev/null", new + path)
    uid, gid = owner
    size = f"size={int(cfg['limits']['disk_mb'] * 1024 * 1024)},nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
    libc.mount("tmpfs", new + cfg["work"], "tmpfs", MS_NOSUID | MS_NODEV, size)
    libc.mount(None, new, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    os.chdir(new)
    os.chroot(".")


def _user_tasks(uid: int) -> int:
    """Threads of `uid` now: RLIMIT_NPROC counts every task of the real uid, the grader's included."""
    n = 0
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
                n += len(os.listdir(f"/proc/{name}/task"))
        except OSError:  # the process ended meanwhile
            continue
    return n


def enter(cfg: dict, libc: _Libc) -> dict:
    """Namespaces (mount, network, IPC, pid) and the chroot, done by the bootstrap as root (or in a user
    namespace). Returns what is in force (for the report)."""
    want = cfg["isolation"]
    root = os.geteuid() == 0
    drop = root and want["drop_uid"] and not want.get("userns")
    info = {"namespaces": False, "chroot": False, "pidns": False, "uid": os.getuid(), "nproc": False}
    info["caps_dropped"], info["drop"] = False, drop
    info["tasks_before"] = 0 if drop else _user_tasks(os.getuid())  # while /proc is still visible
    if want["namespaces"]:
        uid, gid = os.getuid(), os.getgid()
        base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | (0 if root and not want.get("userns") else CLONE_NEWUSER)
        for flags in (base | CLONE_NEWPID, base):  # some hosts refuse a pid namespace only
            try:
                libc.unshare(flags)
            except OSError as e:
                info["namespaces_error"] = str(e)
                continue
            if flags & CLONE_NEWUSER:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} {gid} 1")
                info["userns"] = True
            info["namespaces"], info["pidns"] = True, bool(flags & CLONE_NEWPID)
            info.pop("namespaces_error", None)
            break
    owner = (cfg["uid"], cfg["gid"]) if drop else (os.getuid(), os.getgid())
    if info["namespaces"]:
        build_root(libc, cfg, owner)
        info["chroot"] = True
    else:  # no mount namespace: the work directory is a real directory the grader made
        os.chown(cfg["work"], *owner)
    os.chdir(cfg["work"])
    return info


def split_pid1(libc: _Libc) -> None:
    """bootstrap -> init (pid 1 of the new pid namespace) -> runner; returns in the runner only.

    When init ends, the kernel kills every process left in the namespace, so nothing the submission
    starts (setsid and double fork included) outlives the run, even when the grader itself is
    killed: the grader's death kills the bootstrap (PDEATHSIG), whose death kills init (PDEATHSIG).
    The bootstrap ends the way the runner ended (same exit status or signal), so the grader reads
    the runner's fate from its own child's wait status.
    """
    import signal

    r, w = os.pipe()
    init = os.fork()
    if init == 0:  # init
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(r)
        runner = os.fork()
        if runner == 0:
            os.close(w)
            return  # the runner goes on to confine() and serve()
        signal.signal(signal.SIGUSR1, lambda *_: os.kill(runner, signal.SIGUSR1))
        while True:  # reap every orphan of the namespace until the runner ends
            pid, status = os.waitpid(-1, 0)
            if pid == runner:
                os.write(w, struct.pack("i", status))
                os._exit(0)
    os.close(w)
    signal.signal(signal.SIGUSR1, lambda *_: os.kill(init, signal.SIGUSR1))
    os.waitpid(init, 0)
    data = os.read(r, 4)
    status = struct.unpack("i", data)[0] if len(data) == 4 else 0x09  # init itself killed: SIGKILL
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not terminate by default
    os._exit(os.waitstatus_to_exitcode(status))


def cpu_hard_limit(cpu_s: float, calls: int) -> int:
    """RLIMIT_CPU's hard limit for a child serving `calls` calls: each call's soft limit is set to
    its own cpu_s on top of what was used before it; the hard limit (SIGKILL) covers them all, plus
    5 s of start-up. The grader reads a SIGKILL near it as the CPU limit (sandbox._death_verdict)."""
    return math.ceil(cpu_s) * calls + 5


def confine(cfg: dict, info: dict, libc: _Libc) -> None:
    """rlimits, then the privilege drop (own uid as root, no capabilities in a user namespace)."""
    import resource

    lim = cfg["limits"]
    mb = 1024 * 1024
    setrl = resource.setrlimit
    setrl(resource.RLIMIT_CORE, (0, 0))
    memory, disk = int(lim["memory_mb"] * mb), int(lim["disk_mb"] * mb)
    setrl(resource.RLIMIT_AS, (memory, memory))
    setrl(resource.RLIMIT_FSIZE, (disk, disk))
    cpu_hard = cpu_hard_limit(lim["cpu_s"], len(cfg["calls"]))
    setrl(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
    drop = info.pop("drop")
    nproc = int(lim["processes"]) + info.pop("tasks_before")
    setrl(resource.RLIMIT_NPROC, (nproc, nproc))
    info["nproc"] = drop  # root ignores RLIMIT_NPROC; another user's count includes the grader's own
    if drop:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        info["uid"] = os.getuid()
        unreadable = [p for p in cfg["sys_path"] if not os.access(p, os.R_OK | os.X_OK)]
        if unreadable:
            raise PermissionError(
                f"the sandbox uid {cfg['uid']} cannot read {', '.join(unreadable)} (no chroot here to expose it): "
                "install Python where other users can read it, or allow mount namespaces"
            )
    elif info.get("userns"):
        libc.drop_capabilities()
        info["caps_dropped"] = True
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(PR_SET_PDEATHSIG, 9)  # after the uid change, which clears it: die with the parent


# --------------------------------------------------------------------------------------------------
# The runner


class _Blocker:
    """A meta-path finder that refuses the forbidden modules (the assignment's and the grader's own),
    whatever sys.path says. A submission can remove it: then the files are still not there (their
    directories are masked in the chroot, see build_root), so this is for the verdict, not the wall."""

    def __init__(self, names, submission: str):
        self.names, self.submission = frozenset(names), submission

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.names or top.startswith("__editable__"):
            frame, line = sys._getframe(1), None
            while frame is not None and line is None:
                line = frame.f_lineno if frame.f_code.co_filename == self.submission else None
                frame = frame.f_back
            at = f" at line {line}" if line else ""
            raise ModuleNotFoundError(f"forbidden import: {top}{at} (this assignment does not allow {name!r})")
        return None


class _Channel:
    """The result pipe, child side: frames written whole, arrays without a copy."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, message: dict) -> None:
        self.send_encoded(json.dumps(message).encode())

    def send_encoded(self, payload: bytes, arrays: list = ()) -> None:
        self._write(FRAME_HEADER.pack(b"J", len(payload)))
        self._write(payload)
        for blob in arrays:  # written in place: no copy of a large array
            self._write(FRAME_HEADER.pack(b"A", len(blob)))
            self._write(blob)

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self.fd, view) :]


def _load(name: str, path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _error(exc: BaseException, phase: str) -> dict:
    """An exception -> the facts the grader turns into a verdict (the child's own frames dropped)."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, limit=60)
    for t in _chain(te):
        keep = [f for f in t.stack if f.filename != __file__ and not f.filename.startswith("<frozen importlib")]
        t.stack = traceback.StackSummary.from_list(keep)
    text = "".join(te.format())
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    out = {"phase": phase, "type": type(exc).__name__, "message": message[:500], "traceback": text[-20000:]}
    if isinstance(exc, SystemExit):
        out["exit"] = exc.code if isinstance(exc.code, (int, str, type(None))) else repr(exc.code)
    out["memory"] = isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == 12)  # ENOMEM
    return out


def _report(chan: _Channel, i: int, exc: BaseException, phase: str) -> None:
    _flush()
    try:
        error = _error(exc, phase)
    except BaseException:  # MemoryError while formatting, a __str__ that raises: send the bare facts
        memory = isinstance(exc, MemoryError)
        error = {"phase": phase, "type": type(exc).__name__, "message": "", "traceback": "", "memory": memory}
    chan.send({"result": i, "ok": False, "error": error})


def _chain(te):
    seen = set()
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        yield te
        te = te.__cause__ or te.__context__


def _flush() -> None:
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        try:
            stream.flush()
        except Exception:  # a submission may have replaced the stream with anything
            continue


def serve(cfg: dict, chan: _Channel, info: dict) -> None:
    import builtins
    import faulthandler
    import resource
    import signal

    sys.path[:] = cfg["sys_path"]
    sys.meta_path.insert(0, _Blocker(cfg["forbidden"], cfg["submission"]))
    sys.dont_write_bytecode = True
    builtins.exit = builtins.quit = sys.exit  # site.py would add these; -S skips it
    try:
        crash = os.fdopen(cfg["crash_fd"], "w")
        faulthandler.enable(crash)  # SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL: where it died
        faulthandler.register(signal.SIGXCPU, crash, chain=True)  # CPU limit: where it was, then die
        faulthandler.register(signal.SIGUSR1, crash)  # the grader's "time is up": where it hangs
        import numpy

        info["numpy"] = numpy.__version__
        driver = _load("bprop_driver", cfg["driver"])
        missing = sorted({c["function"] for c in cfg["calls"]} - set(dir(driver)))
        if missing:
            raise AttributeError(f"the driver {os.path.basename(cfg['driver'])} has no function {', '.join(missing)}")
    except BaseException as e:  # reported to the grader as a sandbox error
        chan.send({"startup_error": _error(e, "start-up (numpy, the driver)")})
        return
    inputs = read_inputs(cfg["inputs"])
    chan.send({"ready": info})
    streams = (sys.stdin, sys.stdout, sys.stderr)
    for i in range(cfg["first"], len(cfg["calls"])):
        call = cfg["calls"][i]
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft = min(math.ceil(used + cfg["limits"]["cpu_s"]), resource.getrlimit(resource.RLIMIT_CPU)[1])
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))
        sys.stdin, sys.stdout, sys.stderr = streams
        os.chdir(cfg["work"])
        kwargs = decode(*inputs[i])
        chan.send({"phase": "import", "call": i})
        try:
            module = _load("submission", cfg["submission"])
        except BaseException as e:  # everything a submission raises is its verdict
            _report(chan, i, e, "import")
            continue
        chan.send({"phase": "call", "call": i})
        try:
            value = getattr(driver, call["function"])(module, **kwargs)
        except BaseException as e:
            _report(chan, i, e, "call")
            continue
        try:
            tree, arrays = encode(value)
            message = json.dumps({"result": i, "ok": True, "value": tree, "arrays": len(arrays)}).encode()
            if len(message) > MAX_JSON_BYTES:
                raise CodecError(
                    f"its structure takes {len(message) / 2**20:.1f} MB as JSON (at most {MAX_JSON_BYTES // 2**20} MB): "
                    "return numpy arrays rather than long lists of numbers"
                )
        except BaseException as e:  # CodecError, or MemoryError while copying
            _report(chan, i, e, "send")
            continue
        _flush()
        chan.send_encoded(message, arrays)
        del value, tree, arrays, module


def main(cfg: dict | None = None) -> None:
    """One child, from `python _child.py CONFIG` or, with `cfg` read already, forked by the fork server."""
    if cfg is None:
        with open(sys.argv[1]) as f:
            cfg = json.load(f)
    chan = _Channel(cfg["result_fd"])
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the bootstrap re-raises the runner's signal
        libc = _Libc()
        libc.prctl(PR_SET_PDEATHSIG, 9)  # die with the grader's thread that started us (or the fork server)
        if "parent" in cfg and os.getppid() != cfg["parent"]:
            os._exit(1)  # the fork server died before the prctl: nobody would kill this child
        info = enter(cfg, libc)
    except BaseException as e:  # reported to the grader as a sandbox error
        chan.send({"startup_error": _error(e, "isolation")})
        os._exit(0)
    if info["pidns"]:
        split_pid1(libc)  # returns in the runner only
    try:
        confine(cfg, info, libc)
    except BaseException as e:
        chan.send({"startup_error": _error(e, "isolation")})
        os._exit(0)
    try:
        serve(cfg, chan, info)
    finally:
        _flush()
        os._exit(0)  # no atexit handlers, no waiting for the submission's threads


# --------------------------------------------------------------------------------------------------
# The fork server: numpy imported once, a fresh child forked for each run (trusted code only)

SPAWN_FDS = ("stdout", "stderr", "result", "crash", "control", "config", "box")  # the fds of a b"spawn" request
CHILD_FDS = {"stdout": 1, "stderr": 2, "result": 3, "crash": 4}  # where a forked child finds them


def fork_server(request_fd: int, sys_path: list[str]) -> None:
    """`python _child.py --fork-server FD SYS_PATH_JSON`, started by the grader (sandbox._ForkServer).

    It imports numpy (and the stdlib the child uses) once, then waits on the request socket `FD` for
    b"spawn" messages, each carrying the SPAWN_FDS: the child's stdout, stderr, result and crash
    pipes, a control socket for this child alone, its open config file and its box directory. It
    never sees a path or anything else of a run, and it never runs submission code: for each request
    it forks, and the fork (already single-threaded, numpy already in sys.modules) becomes exactly
    the child `python _child.py CONFIG` would have been: a session of its own, those pipes on fds
    0-4 and every other fd closed (the request socket, other children's control sockets), the
    config's environment and working directory, then main(): namespaces, chroot, rlimits, its own uid,
    before any submission code runs. A child is forked from the server's pristine state, so nothing of
    one run reaches another.

    On the control socket the server sends {"pid": n}, then {"exited": true} once the child has exited
    (it stays a zombie, so its pid and process group cannot be reused); the grader answers b"reap"
    and gets {"status": wait status, "cpu": user + system seconds}. A control socket closed early
    (the grader's thread gone) kills and reaps its child; the request socket closed (the grader gone)
    kills every child, and the server exits. It dies with the grader's thread that started it
    (PDEATHSIG), and its children die with it."""
    import array
    import select
    import signal
    import socket

    libc = _Libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.getppid()
    if parent == 1:  # the grader died before the prctl
        os._exit(1)
    sys.path[:] = sys_path
    sys.dont_write_bytecode = True
    import builtins  # noqa: F401  (what serve() imports: loaded once here)
    import faulthandler  # noqa: F401
    import importlib.util  # noqa: F401
    import resource  # noqa: F401

    import numpy  # noqa: F401

    server = socket.socket(fileno=request_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler (not SIG_IGN: that would reap them)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, socket.socket] = {}  # pid -> its control socket
    exited: set[int] = set()
    server.send(b"ready")

    def reap(pid: int, reply: bool) -> None:
        ctl = children.pop(pid)
        exited.discard(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty
        _, status, usage = os.wait4(pid, 0)
        if reply:
            try:
                ctl.send(json.dumps({"status": status, "cpu": usage.ru_utime + usage.ru_stime}).encode())
            except OSError:
                pass  # the grader's end is gone: nobody to tell
        ctl.close()

    while True:
        ready, _, _ = select.select([server, wake_r, *children.values()], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        for pid in [p for p in children if p not in exited]:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None and info.si_pid != 0:
                exited.add(pid)
                try:
                    children[pid].send(b'{"exited": true}')
                except OSError:
                    reap(pid, reply=False)
        for pid, ctl in list(children.items()):
            if ctl in ready:
                try:
                    msg = ctl.recv(16)
                except OSError:
                    msg = b""
                reap(pid, reply=msg == b"reap")  # anything else, or the end of the socket: kill and reap
        if server not in ready:
            continue
        fds = array.array("i")
        msg, ancdata, _, _ = server.recvmsg(16, socket.CMSG_SPACE(len(SPAWN_FDS) * fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if msg != b"spawn" or len(fds) != len(SPAWN_FDS):
            for fd in fds:
                os.close(fd)
            if msg == b"":  # the grader is gone: nothing it started may stay
                for pid in list(children):
                    reap(pid, reply=False)
                os._exit(0)
            continue
        got = dict(zip(SPAWN_FDS, fds))
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                _forked_child(got, me)
            finally:
                os._exit(1)  # never back into the server's loop
        for name, fd in got.items():
            if name != "control":
                os.close(fd)
        ctl = socket.socket(fileno=got["control"])
        children[pid] = ctl
        try:
            ctl.send(json.dumps({"pid": pid}).encode())
        except OSError:
            reap(pid, reply=False)


def _forked_child(fds: dict[str, int], server: int) -> None:
    """In the fork: become what `python _child.py CONFIG` would have been, then main()."""
    import fcntl
    import signal

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    with os.fdopen(fds["config"], "r", closefd=True) as f:  # its own fd, above 4 or not: read it first
        cfg = json.load(f)
    os.fchdir(fds["box"])
    high = {name: fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for name, fd in fds.items() if name in CHILD_FDS}
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for name, fd in high.items():
        os.dup2(fd, CHILD_FDS[name])
    os.closerange(len(CHILD_FDS) + 1, os.sysconf("SC_OPEN_MAX"))  # the server's socket, other children's
    os.environ.clear()
    os.environ.update(cfg["env"])
    cfg["parent"] = server
    main(cfg)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"]:
        fork_server(int(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        main()
