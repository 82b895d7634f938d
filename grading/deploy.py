"""Deploying the grader where courses grade: a Gradescope autograder zip, a PrairieLearn grader.

    bprop autograder gradescope --assignment NAME [--out autograder.zip] [--numpy bundle|pin]
    bprop autograder prairielearn --assignment NAME [--out prairielearn-grader]
    python -m grading.deploy run gradescope|prairielearn      what run_autograder / run.sh execute

The Gradescope zip (gradescope-autograders.readthedocs.io, "Autograder Specifications"):
    setup.sh        run once as root when Gradescope builds the image: a venv with numpy only
                    ($ROOT/bprop-venv, readable by the sandbox uid), and this project installed from
                    the wheel in the zip into $ROOT/bprop-lib (root only: the sandboxed submission can
                    read neither the grader nor the assignment); never torch or keras
    run_autograder  grades $ROOT/submission into $ROOT/results/results.json; $ROOT is
                    $AUTOGRADER_ROOT, default /autograder (so a test runs it on a temporary tree)
    assignment.toml (or .json) the assignment file
    probe_seed      with --probe-seed N: BPROP_PROBE_SEED for grading (root-only after setup; the
                    probes cannot then be rebuilt offline from this public repository)
    wheels/         bprop-<version>-py3-none-any.whl and, with --numpy bundle (the default), the numpy
                    wheel repacked from the numpy this grader runs with: setup.sh then downloads nothing
                    (with --numpy pin it pip-installs numpy==<that version> from PyPI)

The PrairieLearn grader folder (prairielearn.readthedocs.io, "External Grading"): a Dockerfile for
the course's grader image (python:3.11-slim, numpy and this project from the same wheels), and
tests/run.sh plus tests/assignment.toml to put in the question's tests/ folder; run.sh grades
$PL_GRADE_ROOT/student (default /grade/student) into $PL_GRADE_ROOT/results/results.json.

At run time, before any submission code runs (run()): the results folder is made root-owned and
not writable by others, any results file already there is removed, the grader's files (source/,
bprop-lib/, the assignment) are made root-only; the submission is graded in the sandbox, with
whatever isolation the container allows (grading/sandbox.py: without CAP_SYS_ADMIN there are no
namespaces, and the submission runs under an unprivileged uid of its own with rlimits and a wall
clock); the results name that isolation ("Isolation: ..." in the output, extra_data.isolation).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PLATFORMS = ("gradescope", "prairielearn")
SEED_FILE = "probe_seed"  # beside the assignment, root-only: BPROP_PROBE_SEED for this course
ROOT_VARS = {"gradescope": ("AUTOGRADER_ROOT", "/autograder"), "prairielearn": ("PL_GRADE_ROOT", "/grade")}
PYTHON = "python3.11"  # the project requires 3.11 (pyproject.toml: requires-python)
PACKAGES = ("reference", "oracles", "data_loaders", "grading", "bprop", "benchmarks")  # pyproject's packages.find


class DeployError(RuntimeError):
    """The autograder could not be built (what and why)."""


# --------------------------------------------------------------------------------------------------
# Building


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "autograder",
        help="build a Gradescope autograder zip or a PrairieLearn grader for an assignment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="platform", required=True)
    gs = sub.add_parser("gradescope", help="autograder.zip for Gradescope")
    gs.add_argument("--assignment", required=True, help="a built-in assignment or the path of an assignment file")
    gs.add_argument("--out", type=Path, default=Path("autograder.zip"), help="the zip (default autograder.zip)")
    gs.add_argument(
        "--numpy",
        choices=("bundle", "pin"),
        default="bundle",
        help="bundle: the numpy this grader runs with, as a wheel in the zip (setup downloads nothing; the "
        "default); pin: setup.sh installs numpy==<that version> from PyPI",
    )
    pl = sub.add_parser("prairielearn", help="a grader folder for PrairieLearn's external grading")
    pl.add_argument("--assignment", required=True, help="a built-in assignment or the path of an assignment file")
    pl.add_argument(
        "--out", type=Path, default=Path("prairielearn-grader"), help="the folder (default prairielearn-grader)"
    )
    pl.add_argument("--numpy", choices=("bundle", "pin"), default="bundle", help="as for gradescope")
    for q in (gs, pl):
        q.add_argument(
            "--probe-seed",
            type=int,
            default=None,
            metavar="N",
            help="BPROP_PROBE_SEED for grading, kept in a root-only file beside the assignment (keep it secret: "
            "nobody can then rebuild the probes offline)",
        )
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    from grading.assignment import AssignmentError

    try:
        build = build_gradescope if args.platform == "gradescope" else build_prairielearn
        out = build(args.assignment, args.out, numpy=args.numpy, probe_seed=args.probe_seed)
    except (AssignmentError, DeployError) as e:
        print(f"bprop autograder: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def assignment_file(name_or_path: str) -> tuple[str, bytes]:
    """(file name in the zip, its bytes) of a built-in or a given assignment, checked by loading it."""
    from grading.assignment import BUILTIN_DIR, load_assignment

    load_assignment(name_or_path)  # an assignment that cannot be used is refused now, not on the platform
    path = Path(name_or_path)
    if not path.is_file():
        path = BUILTIN_DIR / f"{name_or_path}.toml"
    return f"assignment{path.suffix}", path.read_bytes()


def project_wheel(dest: Path) -> Path:
    """This project as a wheel: built from the source tree when there is one, else repacked."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and two
        # builds at once in one tree (tests under xdist) would race there
        tree = dest / "bprop-src"
        tree.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, tree / name)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in PACKAGES:
            if (root / package).is_dir():
                shutil.copytree(root / package, tree / package, ignore=skip)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest)]
        proc = subprocess.run(
            [*cmd, str(tree)], capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"}
        )
        shutil.rmtree(tree, ignore_errors=True)
        if proc.returncode != 0:
            raise DeployError(f"building the bprop wheel failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        wheels = sorted(dest.glob("bprop-*.whl"))
        if not wheels:
            raise DeployError(f"pip wheel wrote no bprop wheel into {dest}")
        return wheels[-1]
    return repack_wheel("bprop", dest)


def repack_wheel(dist_name: str, dest: Path) -> Path:
    """An installed distribution (its files as its RECORD lists them, scripts left out) as a wheel,
    with its own WHEEL tags, so the zip carries exactly the build this grader was tested with."""
    dist = importlib.metadata.distribution(dist_name)
    meta = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Tag:")]
    if not tags or dist.files is None:
        raise DeployError(f"{dist_name} {dist.version}: installed without WHEEL tags or RECORD; cannot repack it")
    parts = [sorted({t.split("-")[k] for t in tags}) for k in range(3)]
    name = dist.metadata["Name"].replace("-", "_")
    wheel = dest / f"{name}-{dist.version}-{'.'.join(parts[0])}-{'.'.join(parts[1])}-{'.'.join(parts[2])}.whl"
    info = f"{name}-{dist.version}.dist-info"
    skip = {f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/REQUESTED", f"{info}/direct_url.json"}
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(dist.files, key=str):
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc") or rel in skip:
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            z.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _numpy_version() -> str:
    return importlib.metadata.version("numpy")


SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image. It installs only what
# grading needs: numpy in a venv the sandboxed submission can read, and this project (bprop: the
# reference, the oracles' tolerance policy, the grader) where only root can read it. No torch, no keras.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
SRC="$ROOT/source"
PYTHON="${{BPROP_PYTHON:-{python}}}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  apt-get update && apt-get install -y --no-install-recommends {python} {python}-venv
fi
"$PYTHON" -m venv "$ROOT/bprop-venv"
{numpy_line}
rm -rf "$ROOT/bprop-lib"
"$ROOT/bprop-venv/bin/pip" install --no-deps --no-index --target "$ROOT/bprop-lib" "$SRC"/wheels/bprop-*.whl
chmod -R go-rwx "$ROOT/bprop-lib" "$SRC"
chmod -R go+rX "$ROOT/bprop-venv"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this once per submission: grade $ROOT/submission into $ROOT/results/results.json.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
export AUTOGRADER_ROOT="$ROOT"
cd "$ROOT"
PYTHONPATH="$ROOT/bprop-lib" exec "$ROOT/bprop-venv/bin/python" -m grading.deploy run gradescope
"""


def _numpy_install(numpy: str, wheel_dir: str) -> str:
    version = _numpy_version()
    if numpy == "bundle":
        return f'"$ROOT/bprop-venv/bin/pip" install --no-index --find-links "{wheel_dir}" "numpy=={version}"'
    return f'"$ROOT/bprop-venv/bin/pip" install "numpy=={version}"'


def _wheels(numpy: str, tmp: Path) -> list[Path]:
    wheels = [project_wheel(tmp)]
    if numpy == "bundle":
        wheels.append(repack_wheel("numpy", tmp))
    return wheels


def _add(z: zipfile.ZipFile, name: str, data: bytes | str, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data.encode() if isinstance(data, str) else data)


def _seed_text(probe_seed: int | None) -> str | None:
    if probe_seed is None:
        return None
    if isinstance(probe_seed, bool) or not isinstance(probe_seed, int) or probe_seed < 0:
        raise DeployError(f"--probe-seed: expected a non-negative integer, got {probe_seed!r}")
    return f"{probe_seed}\n"


def build_gradescope(assignment: str, out: Path, numpy: str = "bundle", probe_seed: int | None = None) -> Path:
    """The autograder zip (see the module doc); setup.sh and run_autograder at its root."""
    name, data = assignment_file(assignment)
    seed = _seed_text(probe_seed)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="bprop-autograder-") as tmp:
        wheels = _wheels(numpy, Path(tmp))
        setup = SETUP_SH.format(python=PYTHON, numpy_line=_numpy_install(numpy, "$SRC/wheels"))
        with zipfile.ZipFile(out, "w") as z:
            _add(z, "setup.sh", setup, 0o755)
            _add(z, "run_autograder", RUN_AUTOGRADER, 0o755)
            _add(z, name, data)
            if seed is not None:
                _add(z, SEED_FILE, seed, 0o600)
            for w in wheels:
                _add(z, f"wheels/{w.name}", w.read_bytes())
    return out


PL_DOCKERFILE = """# The course's grader image for PrairieLearn's external grading (docker build -t COURSE/bprop-grader .)
FROM python:3.11-slim
COPY wheels/ /opt/bprop-wheels/
RUN python -m venv /opt/bprop-venv \\
 && {numpy_line} \\
 && /opt/bprop-venv/bin/pip install --no-deps --no-index --target /opt/bprop-lib /opt/bprop-wheels/bprop-*.whl \\
 && chmod -R go-rwx /opt/bprop-lib /opt/bprop-wheels && chmod -R go+rX /opt/bprop-venv
"""

PL_RUN_SH = """#!/usr/bin/env bash
# PrairieLearn's entrypoint (info.json: "externalGradingOptions": {"image": "COURSE/bprop-grader",
# "entrypoint": "/grade/tests/run.sh", "timeout": 120}): grade $ROOT/student into $ROOT/results/results.json.
set -euo pipefail
ROOT="${PL_GRADE_ROOT:-/grade}"
export PL_GRADE_ROOT="$ROOT"
LIB="${BPROP_LIB:-/opt/bprop-lib}"
VENV="${BPROP_VENV:-/opt/bprop-venv}"
cd "$ROOT"
PYTHONPATH="$LIB" exec "$VENV/bin/python" -m grading.deploy run prairielearn
"""


def build_prairielearn(assignment: str, out: Path, numpy: str = "bundle", probe_seed: int | None = None) -> Path:
    """The grader folder: Dockerfile and wheels/ for the image, tests/run.sh and the assignment."""
    name, data = assignment_file(assignment)
    seed = _seed_text(probe_seed)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DeployError(f"{out}: exists and is not empty")
    (out / "wheels").mkdir(parents=True)
    (out / "tests").mkdir()
    _wheels(numpy, out / "wheels")
    version = _numpy_version()
    line = (
        f'/opt/bprop-venv/bin/pip install --no-index --find-links /opt/bprop-wheels "numpy=={version}"'
        if numpy == "bundle"
        else f'/opt/bprop-venv/bin/pip install "numpy=={version}"'
    )
    (out / "Dockerfile").write_text(PL_DOCKERFILE.format(numpy_line=line))
    (out / "tests" / "run.sh").write_text(PL_RUN_SH)
    (out / "tests" / "run.sh").chmod(0o755)
    (out / "tests" / name).write_bytes(data)
    if seed is not None:
        (out / "tests" / SEED_FILE).write_text(seed)
        (out / "tests" / SEED_FILE).chmod(0o600)
    return out


# --------------------------------------------------------------------------------------------------
# Running on the platform


def layout(platform: str) -> dict[str, Path]:
    """Where the submission, the results and the grader's own files are, under $AUTOGRADER_ROOT
    (Gradescope, default /autograder) or $PL_GRADE_ROOT (PrairieLearn, default /grade)."""
    var, default = ROOT_VARS[platform]
    root = Path(os.environ.get(var) or default)
    if platform == "gradescope":
        return {
            "root": root,
            "submission": root / "submission",
            "results": root / "results",
            "assignment_dir": root / "source",
            "private": [root / "source", root / "bprop-lib", root / "run_autograder"],
        }
    return {
        "root": root,
        "submission": root / "student",
        "results": root / "results",
        "assignment_dir": root / "tests",
        "private": [root / "tests", root / "data", root / "serverFilesCourse"],
    }


def _lock_down(paths: dict) -> None:
    """Before any submission code runs: the results folder root-owned and writable by its owner only,
    no results file left from anyone else, the grader's files readable by their owner only."""
    root = paths["root"]
    if os.geteuid() == 0 and root.stat().st_uid == 0:  # others may pass through, not list it
        os.chmod(root, 0o711)
    results = paths["results"]
    results.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(results, 0, 0)
    os.chmod(results, 0o755)
    for f in results.glob("results.json*"):
        f.unlink()
    for p in paths["private"]:
        if p.exists():
            os.chmod(p, 0o700 if p.is_dir() else 0o700 if os.access(p, os.X_OK) else 0o600)


def _find_assignment(folder: Path) -> Path:
    found = sorted(p for p in folder.glob("assignment.*") if p.suffix in (".toml", ".json"))
    if len(found) != 1:
        raise DeployError(f"{folder}: expected one assignment.toml or assignment.json, found {[p.name for p in found]}")
    return found[0]


def apply_probe_seed(folder: Path) -> str | None:
    """BPROP_PROBE_SEED from the root-only seed file beside the assignment, when there is one (it
    overrides the environment); checked as grading.checks.probe_seed checks it."""
    from grading.checks import SEED_ENV, probe_seed

    path = folder / SEED_FILE
    if not path.is_file():
        return None
    os.environ[SEED_ENV] = path.read_text().strip()
    probe_seed()  # a bad file fails here, naming the variable and the value
    return os.environ[SEED_ENV]


def run(platform: str) -> int:
    """Grade the platform's submission folder into its results file; 0 when a result was written."""
    from grading import platforms
    from grading.assignment import load_assignment
    from grading.checks import collect_submissions, grade_many
    from grading.cli import refused_result, screen
    from grading.escaping import printable
    from grading.feedback import terminal
    from grading.sandbox import SandboxError, isolation

    paths = layout(platform)
    _lock_down(paths)
    assignment = load_assignment(_find_assignment(paths["assignment_dir"]))
    apply_probe_seed(paths["assignment_dir"])
    try:
        info = isolation()
    except SandboxError as e:
        info = {"error": str(e)}
    found = collect_submissions([paths["submission"]]) if paths["submission"].is_dir() else []
    refused = screen([paths["submission"]], found)
    if len(found) == 1 and not refused:
        result = grade_many(found, assignment, workers=1)[0]
    else:
        why = (
            refused.get(found[0])
            if len(found) == 1
            else f"expected one .py or .ipynb file in the submission, found {len(found)}"
            + (f" ({', '.join(p.name for p in found[:10])})" if found else "")
        )
        result = refused_result(found[0] if found else paths["submission"] / "none", assignment, why)
    vis = platforms.visibilities(assignment)
    data = (
        platforms.gradescope(result, vis, info)
        if platform == "gradescope"
        else platforms.prairielearn(result, vis, info)
    )
    target = paths["results"] / "results.json"
    tmp = target.with_name("results.json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    print(terminal([result]))
    print(printable(platforms.isolation_text(info)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="grade the platform's submission folder (what run_autograder / run.sh call)")
    r.add_argument("platform", choices=PLATFORMS)
    args = parser.parse_args(argv)
    return run(args.platform)


if __name__ == "__main__":
    sys.exit(main())
