"""`bprop autograder gradescope|prairielearn`: the zip built as the README says, set up and run on a
temporary $AUTOGRADER_ROOT, grading a correct and a buggy submission with the expected scores; with
CAP_SYS_ADMIN dropped too (no namespaces: Gradescope's containers), where a hostile submission can
neither write the results nor read the grader's files.

What this machine cannot show: Gradescope's, PrairieLearn's and Autolab's own runners. Here
setup.sh runs as root on this Debian (Gradescope: Ubuntu), with a Python 3.11 that other users can
read (the sandbox uid must run it), and pip only against the wheels inside the zip (PIP_NO_INDEX=1:
nothing downloads). The capsh tests need Debian's libcap2-bin (.ci/run installs it); without capsh
they skip and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from test_reports import GRADESCOPE, PRAIRIELEARN

jsonschema = pytest.importorskip("jsonschema")

TESTS = Path(__file__).parent
LAYER = TESTS / "submissions" / "layer"
PROJECT = TESTS.parent
CAPSH = shutil.which("capsh") or shutil.which("capsh", path="/usr/sbin:/sbin")
SECRET = "assignment-secret-7c1f04"  # a comment the test puts into the assignment file
SEED = "918273645"  # BPROP_PROBE_SEED of the grading run: the submission must not read it

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the autograder runs as root (Gradescope's containers)")


def other_readable_python() -> str | None:
    """A python3.11 with venv that an unprivileged uid can run (the sandbox runs the student as one)."""
    for cand in (sys.executable, "/usr/bin/python3.11", "/usr/local/bin/python3.11"):
        real = os.path.realpath(cand)
        if not os.path.exists(real):
            continue
        probe = subprocess.run(
            [real, "-c", "import sys, venv, ensurepip; print(sys.prefix, sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0 or not probe.stdout.strip().endswith("True"):
            continue
        paths = [real, probe.stdout.split()[0]]
        if all(_others_can_reach(p) for p in paths):
            return real
    return None


def _others_can_reach(path: str) -> bool:
    p = Path(path)
    for q in [p, *p.parents]:
        mode = q.stat().st_mode
        if not mode & (stat.S_IXOTH if q.is_dir() else stat.S_IROTH):
            return False
    return True


PYTHON = other_readable_python()
needs_python = pytest.mark.skipif(PYTHON is None, reason="no Python 3.11 with venv that other users can run")
needs_capsh = pytest.mark.skipif(CAPSH is None, reason="capsh not found (Debian: apt-get install -y libcap2-bin)")


def bprop(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "bprop", *args], capture_output=True, text=True, env=env, cwd=PROJECT)


@pytest.fixture(scope="module")
def assignment_file(tmp_path_factory) -> Path:
    from grading.assignment import BUILTIN_DIR

    path = tmp_path_factory.mktemp("assignment") / "layer-api.toml"
    path.write_text(f"# {SECRET}\n" + (BUILTIN_DIR / "layer-api.toml").read_text())
    return path


@pytest.fixture(scope="module")
def autograder(assignment_file):
    """The zip as the README builds it, unpacked into a fresh $AUTOGRADER_ROOT, setup.sh run."""
    if PYTHON is None:
        pytest.skip("no Python 3.11 with venv that other users can run")
    root = Path(tempfile.mkdtemp(prefix="bprop-autograder-test-", dir="/tmp"))  # not under pytest's 0700 tmp
    try:
        os.chmod(root, 0o755)
        zip_path = root.parent / f"{root.name}.zip"
        args = ("--assignment", str(assignment_file), "--out", str(zip_path), "--probe-seed", SEED)
        proc = bprop("autograder", "gradescope", *args)
        assert proc.returncode == 0, proc.stderr
        with zipfile.ZipFile(zip_path) as z:
            names = z.namelist()
            assert {"setup.sh", "run_autograder", "assignment.toml", "probe_seed"} <= set(names)
            assert z.read("probe_seed") == f"{SEED}\n".encode()
            assert (z.getinfo("probe_seed").external_attr >> 16) & 0o777 == 0o600
            assert not any(n.split("/")[-1].startswith(("torch", "keras", "tensorflow")) for n in names)
            z.extractall(root / "source")
        zip_path.unlink()
        for name in ("setup.sh", "run_autograder"):
            os.chmod(root / "source" / name, 0o755)
        shutil.copy(root / "source" / "run_autograder", root / "run_autograder")  # as Gradescope does
        (root / "submission").mkdir()
        env = {**os.environ, "AUTOGRADER_ROOT": str(root), "BPROP_PYTHON": PYTHON, "PIP_NO_INDEX": "1"}
        env.pop("PIP_FIND_LINKS", None)
        setup = subprocess.run(["bash", str(root / "source" / "setup.sh")], capture_output=True, text=True, env=env)
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        listed = subprocess.run(
            [str(root / "bprop-venv" / "bin" / "python"), "-m", "pip", "list", "--format=json"],
            capture_output=True,
            text=True,
        )
        installed = {d["name"].lower() for d in json.loads(listed.stdout)}
        assert "numpy" in installed and not installed & {"torch", "keras", "tensorflow", "tensorflow-cpu"}
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def grade(root: Path, source: str, *, drop_sys_admin: bool) -> dict:
    sub = root / "submission"
    shutil.rmtree(sub)
    sub.mkdir()
    (sub / "homework.py").write_text(source)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "AUTOGRADER_ROOT": str(root), "BPROP_PROBE_SEED": SEED}
    cmd = ["bash", str(root / "run_autograder")]
    if drop_sys_admin:
        cmd = [CAPSH, "--drop=cap_sys_admin", "--", "-c", f"exec bash {root}/run_autograder"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    jsonschema.validate(results, GRADESCOPE)
    return results


CORRECT = (LAYER / "correct.py").read_text()
BUGGY = (LAYER / "transpose_dW.py").read_text()


@needs_python
@pytest.mark.parametrize(
    "drop", [False, pytest.param(True, marks=needs_capsh, id="cap_sys_admin-dropped")], ids=lambda d: str(d)
)
def test_the_zip_grades_a_correct_and_a_buggy_submission(autograder, drop):
    ok = grade(autograder, CORRECT, drop_sys_admin=drop)
    bug = grade(autograder, BUGGY, drop_sys_admin=drop)
    assert (ok["score"], ok["max_score"]) == (13.0, 13.0)
    assert (bug["score"], bug["max_score"]) == (5.0, 13.0)
    assert {t["name"]: t["status"] for t in bug["tests"]}["layers: weight_gradients"] == "failed"
    iso = ok["extra_data"]["isolation"]
    assert iso["namespaces"] is (not drop) and iso["chroot"] is (not drop)
    assert iso["nproc"] is True and iso["own_uid"] is True and "uid" not in iso  # an unprivileged uid per run
    assert iso["mode"].startswith("uid: no namespaces" if drop else "namespaces")
    line = "no namespaces (refused: " if drop else "namespaces (mount, network, IPC"
    assert line in ok["output"] and "Isolation: " in ok["output"]
    if drop:
        assert "network and System V IPC NOT isolated" in ok["output"]
        assert "the grader's files and the results kept from it by file permissions" in ok["output"]


@needs_python
@pytest.mark.parametrize(
    "drop", [False, pytest.param(True, marks=needs_capsh, id="cap_sys_admin-dropped")], ids=lambda d: str(d)
)
def test_a_hostile_submission_can_neither_forge_the_results_nor_read_the_grader(autograder, drop):
    hostile = (TESTS / "hostile" / "autograder_escape.py").read_text().replace("__AUTOGRADER_ROOT__", str(autograder))
    results = grade(autograder, CORRECT + "\n\n" + hostile, drop_sys_admin=drop)
    text = json.dumps(results)
    outputs = [t["output"] for t in results["tests"] if "FINDINGS " in t["output"]]
    assert outputs, text[:2000]
    findings = json.loads(re.search(r"FINDINGS (\{[^}]*\})", outputs[0]).group(1))
    assert set(findings) == {"w_results", "w_dir", "r_assign", "r_run", "r_seed", "ls_lib", "r_lib", "r_env"}
    assert "SUCCEEDED" not in findings.values(), findings
    expected = "PermissionError" if drop else "FileNotFoundError"  # no chroot: permissions; chroot: not there
    assert findings["w_results"] == findings["r_assign"] == findings["r_seed"] == findings["r_lib"] == expected, (
        findings
    )
    assert 0 < results["score"] < 13.0 and results["max_score"] == 13.0  # its loss fails; the rest is graded
    assert {t["name"]: t["status"] for t in results["tests"]}["layers: loss"] == "failed"
    assert '"score": 100' not in text
    assert SECRET not in text and SEED not in text
    time.sleep(1.5)  # the straggler it forked would have written by now
    again = json.loads((autograder / "results" / "results.json").read_text())
    assert again == results
    assert sorted(p.name for p in (autograder / "results").iterdir()) == ["results.json"]


@needs_python
def test_prairielearn_grader_runs_on_a_temporary_grade_root(autograder, assignment_file, tmp_path):
    out = tmp_path / "pl"
    proc = bprop(
        "autograder", "prairielearn", "--assignment", str(assignment_file), "--out", str(out), "--numpy", "pin"
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "Dockerfile").read_text().startswith("# The course's grader image")
    grade_root = Path(tempfile.mkdtemp(prefix="bprop-pl-test-", dir="/tmp"))
    try:
        os.chmod(grade_root, 0o755)
        shutil.copytree(out / "tests", grade_root / "tests")
        for source, score in ((CORRECT, 1.0), (BUGGY, 5 / 13)):
            shutil.rmtree(grade_root / "student", ignore_errors=True)
            (grade_root / "student").mkdir()
            (grade_root / "student" / "homework.py").write_text(source)
            env = {
                "PATH": "/usr/bin:/bin",
                "PL_GRADE_ROOT": str(grade_root),
                "BPROP_LIB": str(autograder / "bprop-lib"),  # the image's /opt/bprop-lib, here the zip's install
                "BPROP_VENV": str(autograder / "bprop-venv"),
            }
            run = subprocess.run(
                ["bash", str(grade_root / "tests" / "run.sh")], capture_output=True, text=True, env=env
            )
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
            results = json.loads((grade_root / "results" / "results.json").read_text())
            jsonschema.validate(results, PRAIRIELEARN)
            assert results["gradable"] is True and results["score"] == pytest.approx(score)
    finally:
        shutil.rmtree(grade_root, ignore_errors=True)


def test_the_seed_file_sets_the_probe_seed(tmp_path, monkeypatch):
    from grading import deploy
    from grading.checks import probe_seed

    monkeypatch.setenv("BPROP_PROBE_SEED", "1")
    assert deploy.apply_probe_seed(tmp_path) is None and probe_seed() == 1  # no file: the environment's
    (tmp_path / "probe_seed").write_text("424242\n")
    assert deploy.apply_probe_seed(tmp_path) == "424242" and probe_seed() == 424242
    (tmp_path / "probe_seed").write_text("secret\n")
    with pytest.raises(ValueError, match=r"BPROP_PROBE_SEED: expected a non-negative integer, got 'secret'"):
        deploy.apply_probe_seed(tmp_path)
    with pytest.raises(deploy.DeployError, match=r"--probe-seed: expected a non-negative integer, got -3"):
        deploy.build_gradescope("layer-api", tmp_path / "a.zip", probe_seed=-3)


def test_an_assignment_that_cannot_be_used_is_refused_when_building(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    proc = bprop("autograder", "gradescope", "--assignment", str(bad), "--out", str(tmp_path / "a.zip"))
    assert proc.returncode == 2 and "bprop autograder: " in proc.stderr
    assert not (tmp_path / "a.zip").exists()
