"""The pytest plugin: `pytest --submission PATH --assignment NAME`, one test per check per submission.

Run as a real pytest in a subprocess (the plugin loads through its pytest11 entry point in
pyproject.toml), with xdist and --junitxml, on a correct and a buggy submission.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = Path(__file__).parent / "submissions"


def run_pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def junit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    folder = tmp / "subs"
    folder.mkdir()
    (folder / "good.py").write_text((SUBMISSIONS / "class" / "correct.py").read_text())
    # named like a test module: pytest must grade it, never import it
    (folder / "test_bad.py").write_text((SUBMISSIONS / "class" / "seed_pre_activation.py").read_text())
    xml = tmp / "junit.xml"
    proc = run_pytest(
        "--submission",
        str(folder),
        "--assignment",
        "class-api",
        "-n",
        "2",
        "--dist",
        "loadfile",
        f"--junitxml={xml}",
        cwd=tmp,
    )
    return proc, ET.parse(xml).getroot()


def test_one_test_per_check_per_submission(junit):
    proc, root = junit
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a check failed: pytest says so
    cases = root.findall(".//testcase")
    names = sorted(f"{c.get('classname')}::{c.get('name')}" for c in cases)
    assert len(cases) == 2 * 11, names  # class-api: 5 logistic + 6 mlp checks
    assert "subs.good::mlp-weight_gradients" in names and "subs.test_bad::logistic-forward" in names


def test_scores_are_junit_properties_and_failures_explain(junit):
    _, root = junit
    by_name = {f"{c.get('classname')}::{c.get('name')}": c for c in root.findall(".//testcase")}
    bad = by_name["subs.test_bad::mlp-weight_gradients"]
    props = {p.get("name"): float(p.get("value")) for p in bad.findall(".//property")}
    assert props["max_score"] == 2 and props["score"] == 0  # the built-ins score each check all or nothing
    message = bad.find("failure").get("message") + (bad.find("failure").text or "")
    assert "dense_2.dW" in message and "pre-activation" in message
    good = by_name["subs.good::mlp-weight_gradients"]
    assert good.find("failure") is None
    assert {p.get("name"): float(p.get("value")) for p in good.findall(".//property")}["score"] == 2


def test_inert_and_cheap_without_submission(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import sys\n\ndef test_nothing_of_grading_loaded():\n"
        "    loaded = [m for m in sys.modules if m.startswith(('grading.', 'reference', 'oracles'))]\n"
        "    assert loaded == ['grading.pytest_plugin'], loaded\n"
    )
    proc = run_pytest("-q", str(tmp_path / "test_x.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 passed" in proc.stdout


def test_missing_assignment_is_a_usage_error(tmp_path):
    proc = run_pytest("--submission", str(SUBMISSIONS / "layer" / "correct.py"), cwd=tmp_path)
    assert proc.returncode == 4
    assert "--submission needs --assignment" in proc.stderr


def test_a_symlink_and_a_forbidden_import_get_verdicts_not_silence(tmp_path):
    """A symlink to a root-only file outside the folder is collected and refused unread; a
    submission that imports torch fails every check with the verdict."""
    folder = tmp_path / "subs"
    folder.mkdir()
    secret = tmp_path / "root-only.py"
    secret.write_text('TOP_SECRET = "the exam answers"\n')
    secret.chmod(0o600)
    (folder / "steal.py").symlink_to(secret)
    correct = (SUBMISSIONS / "class" / "correct.py").read_text()
    (folder / "cheat.py").write_text(
        "import torch\n" + correct.replace("import numpy as np", "import numpy as np\nnp.t = torch", 1)
    )
    proc = run_pytest("--submission", str(folder), "--assignment", "class-api", "-q", "-rf", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "22 failed" in out, out[-3000:]  # 11 checks each, all 0
    assert "a symbolic link; submissions must be regular files" in out
    assert "forbidden import: torch at line 1 (import torch)" in out
    assert "TOP_SECRET" not in out
