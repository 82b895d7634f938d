"""Every test submission, graded in the real sandbox: the correct ones pass everything, each buggy one
is flagged on the right tensor with the right diagnosis.

The expectations live in the submissions themselves (tests/submissions/<format>/*.py):
    # expect: <check> <tensor> <bug>       a failing comparison of <tensor> in <check> is diagnosed
                                           <bug> (a label of grading/diagnose.py), or "error" when the
                                           call itself failed (crash, wrong kind of value)
    # assignment: <path>                   an assignment file instead of the format's built-in
"""

from __future__ import annotations

import re
from pathlib import Path

import notebook_cells
import pytest

ROOT = Path(__file__).parent / "submissions"
BUILTIN = {"layer": "layer-api", "function": "function-api", "class": "class-api"}
FILES = sorted(p.relative_to(ROOT).as_posix() for fmt in BUILTIN for p in (ROOT / fmt).glob("*.py"))
BUGGY = [f for f in FILES if not f.endswith("/correct.py")]


def graded(rel: str):
    """The grading of grade_submission(ROOT / rel, its assignment), shared with test_notebook_agree and
    test_notebook_shrink (notebook_cells.graded: once per process), and the file's expectations."""
    text = (ROOT / rel).read_text()
    return notebook_cells.graded(rel), re.findall(r"^# expect: (\S+) (.+) (\S+)$", text, re.M)


def test_every_buggy_submission_states_what_it_expects():
    for rel in BUGGY:
        assert re.search(r"^# expect: ", (ROOT / rel).read_text(), re.M), f"{rel} has no '# expect:' line"


@pytest.mark.parametrize("fmt", sorted(BUILTIN))
def test_correct_submission_passes_everything(fmt):
    result, _ = graded(f"{fmt}/correct.py")
    failed = [f"{c.title}: {c.output}" for c in result.checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert result.score == result.max_score > 0
    assert result.first_divergence is None and result.error is None
    compared = sum(len(c.findings) for c in result.checks)
    assert compared > 50, f"only {compared} comparisons: the cases did not run"
    cases = {f.case for c in result.checks for f in c.findings}
    assert {"small-float64", "small-float32", "stability-float64"} <= cases
    assert {"square-float64", "distinct-float64", "width1-float64", "odd-float64"} <= cases  # the shape sweep
    assert result.status == "graded"


@pytest.mark.parametrize("rel", BUGGY)
def test_buggy_submission_is_flagged_with_its_diagnosis(rel):
    result, expectations = graded(rel)
    assert result.score < result.max_score
    assert result.first_divergence is not None
    for check, tensor, bug in expectations:
        findings = [f for c in result.checks if c.name == check for f in c.findings if f.row.name == tensor]
        assert findings, f"{rel}: no comparison of {tensor} in check {check}"
        failing = [f for f in findings if not f.passed]
        assert failing, f"{rel}: {tensor} passed in every case of {check}"
        got = {
            ("error" if f.diagnosis is None and f.row.worst_index is None else f.diagnosis and f.diagnosis.bug)
            for f in failing
        }
        assert bug in got, f"{rel}: {tensor} in {check}: expected {bug}, got {got}:\n" + "\n".join(
            f"  {f.case}: {f.row.describe(('yours', 'reference'))} | {f.diagnosis}" for f in failing
        )
        check_result = next(c for c in result.checks if c.name == check and any(f in c.findings for f in failing))
        assert check_result.score < check_result.points
        assert tensor in check_result.output  # the explanation names a diverging tensor of the check


@pytest.mark.parametrize("rel", [f for f in BUGGY if "seed" in f])
def test_the_seeds_real_bugs_are_the_first_divergence(rel):
    """The seeds' bugs are each the FIRST diverging tensor, with the diagnosis in the headline."""
    result, expectations = graded(rel)
    _, tensor, bug = expectations[0]
    assert result.first_divergence.startswith(tensor)
    if bug != "error":
        assert result.diagnosis is not None


def test_diagnosis_reports_its_numbers():
    result, _ = graded("class/seed_pre_activation.py")
    assert result.first_divergence == "dense_2.dW (small-float64)"
    assert "pre-activation" in result.diagnosis
    assert "relative error of" in result.diagnosis and "differs from the reference by" in result.diagnosis


def test_crash_at_import_is_a_verdict_not_a_lost_result():
    result, _ = graded("layer/crash_at_import.py")
    assert result.score == 0
    assert "ModuleNotFoundError" in result.error and "course_utils" in result.error
    assert all("course_utils" in c.output for c in result.checks)


def test_nan_and_wrong_shape_get_clear_verdicts():
    nan, _ = graded("layer/returns_nan.py")
    assert "nan" in nan.diagnosis and "unstable" in nan.diagnosis
    shape, _ = graded("layer/wrong_shape.py")
    forward = next(c for c in shape.checks if c.name == "forward")
    assert "shape: expected (4, 5), got (5, 4)" in forward.output
    loss = next(c for c in shape.checks if c.name == "loss")
    assert "expected one loss per sample" in loss.output
