"""Grading throughput, and the hand-written sandbox against bubblewrap (issue 11).

    python scripts/sandbox_bench.py rate [--backend native|bwrap] [--copies 4]
        grades `copies` correct submissions of each built-in assignment (workers=2) and prints one
        JSON line: submissions per minute, and how many got full marks. Runs against whatever
        `grading` is on PYTHONPATH, so the same command measures main and a branch.
    python scripts/sandbox_bench.py hostile [--backend native|bwrap]
        runs tests/test_sandbox.py with that backend and prints pytest's summary line.
    python scripts/sandbox_bench.py compare --main /work/main --rounds 3
        interleaves the runs above (main, native, bwrap, main, ...) and prints the ratios.

The bwrap backend runs the same child (grading/_child.py), told not to make namespaces of its own,
inside `bwrap --unshare-ipc --unshare-pid --unshare-net --unshare-uts --unshare-cgroup-try
--die-with-parent --new-session`, with the same read-only binds, masks and size-capped tmpfs as the
hand-written code. bwrap cannot drop to a per-run uid without a user namespace, so the child still
does that itself (as root), and the rlimits. It needs `apt-get install -y bubblewrap`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def use_bwrap() -> None:
    """Patch grading.sandbox so that every child runs under bubblewrap (see the module docstring)."""
    from grading import sandbox

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("bubblewrap is not installed: apt-get install -y bubblewrap")
    original_config = sandbox._Run.config

    def config(self, first, uid, result_fd, crash_fd, env=None):
        saved = self.isolation
        self.isolation = {**saved, "namespaces": False}  # bwrap makes them
        try:
            return original_config(self, first, uid, result_fd, crash_fd, env)
        finally:
            self.isolation = saved

    def argv(self, cfg_path: str) -> list[str]:
        run = self.run_
        cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        cmd += ["--die-with-parent", "--new-session"]
        binds = sandbox._binds(run.box)
        parents = sorted({str(q) for b in binds for q in Path(b).parents if str(q) != "/"})
        for d in parents:  # bwrap would copy /root's 0700 onto the directories it makes
            if not any(d == b or d.startswith(b + "/") for b in binds):
                cmd += ["--perms", "0755", "--dir", d]
        for path in binds:
            if os.path.islink(path):
                cmd += ["--symlink", os.readlink(path), path]
            else:
                cmd += ["--ro-bind", path, path]
        for path in sandbox._masks(run.forbidden):
            if not any(path.startswith(b + "/") for b in binds if not os.path.islink(b)):
                continue  # not visible anyway
            if os.path.isdir(path):
                cmd += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.isfile(path):
                cmd += ["--ro-bind", "/dev/null", path]
        cmd += ["--ro-bind", cfg_path, cfg_path, "--ro-bind", str(sandbox.CHILD), str(sandbox.CHILD)]
        cmd += ["--size", str(int(run.limits.disk_mb * 1024 * 1024)), "--tmpfs", f"{run.box}/work"]
        cmd += ["--chdir", f"{run.box}/work", "--"]
        child = sandbox._Child.argv.__wrapped__(self, cfg_path)
        return [*cmd, os.path.realpath(child[0]), *child[1:]]  # the venv's bin/ is not bound; its target is

    plain = sandbox._Child.argv
    argv.__wrapped__ = plain
    sandbox._Run.config = config
    sandbox._Child.argv = argv
    sandbox.FORK_SERVER = False  # bwrap execs the child: no fork server


def rate(copies: int) -> dict:
    from grading.assignment import load_assignment
    from grading.checks import grade_many

    out = {"submissions": 0, "full_marks": 0, "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="bprop-bench-") as tmp:
        jobs = []
        for name, folder in (("layer-api", "layer"), ("function-api", "function"), ("class-api", "class")):
            paths = []
            for k in range(copies):
                p = Path(tmp) / folder / f"student{k}.py"
                p.parent.mkdir(exist_ok=True)
                shutil.copy(ROOT / "tests" / "submissions" / folder / "correct.py", p)
                paths.append(p)
            jobs.append((load_assignment(name), paths))
        t = time.perf_counter()
        for assignment, paths in jobs:
            for r in grade_many(paths, assignment, workers=2):
                out["submissions"] += 1
                out["full_marks"] += r.score == r.max_score
        out["seconds"] = time.perf_counter() - t
    out["per_minute"] = 60 * out["submissions"] / out["seconds"]
    return out


def hostile() -> str:
    import pytest

    code = pytest.main(
        [str(ROOT / "tests" / "test_sandbox.py"), "-q", "-n", "0", "-p", "no:cacheprovider", "-m", "not slow"]
    )
    return f"pytest exit {int(code)}"


def _run(pythonpath: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip().splitlines()[-1]


def compare(main: str, rounds: int, copies: int) -> None:
    rates: dict[str, list[float]] = {"main": [], "native": [], "bwrap": []}
    for _ in range(rounds):
        for variant in rates:
            path = main if variant == "main" else str(ROOT)
            args = ["rate", "--copies", str(copies)] + (["--backend", variant] if variant != "main" else [])
            result = json.loads(_run(path, *args))
            rates[variant].append(result["per_minute"])
            print(variant, json.dumps(result), flush=True)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "mean_per_minute": mean,
                "native/main": mean["native"] / mean["main"],
                "bwrap/native": mean["bwrap"] / mean["native"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("rate", "hostile", "compare"))
    parser.add_argument("--backend", choices=("native", "bwrap"), default="native")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--main", default="/work/main")
    args = parser.parse_args()
    if args.backend == "bwrap":
        use_bwrap()
    if args.what == "rate":
        print(json.dumps(rate(args.copies)))
    elif args.what == "hostile":
        print(hostile())
    else:
        compare(args.main, args.rounds, args.copies)


if __name__ == "__main__":
    main()
