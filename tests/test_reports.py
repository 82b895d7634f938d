"""`bprop check --report ...`: each platform's report against that platform's documented schema.

The schemas are written down here from the platforms' documentation (grading/platforms.py names the
pages); a report that drops a required field, gives a score outside [0, 1] to PrairieLearn, or puts
anything but the scores on Autolab's last line fails. Everything a submission controls is escaped in
every format (tests/hostile/report_escapes.py, report_surrogate.py, and a result built with every
character XML 1.0 forbids).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from grading import cli, platforms
from grading.checks import CheckResult, SubmissionResult

jsonschema = pytest.importorskip("jsonschema")

TESTS = Path(__file__).parent
LAYER = TESTS / "submissions" / "layer"
HOSTILE = TESTS / "hostile"
ROOT = TESTS.parent

# Gradescope, "Autograder Specifications" > "Output format": score / output / visibility /
# stdout_visibility / extra_data / tests; each test name, score, max_score, status, output,
# output_format, visibility ("visible", "hidden", "after_due_date", "after_published").
VISIBILITY = {"enum": ["visible", "hidden", "after_due_date", "after_published"]}
FORMAT = {"enum": ["text", "html", "simple_format", "md", "ansi"]}
GRADESCOPE = {
    "type": "object",
    "required": ["score", "tests"],
    "additionalProperties": False,
    "properties": {
        "score": {"type": "number"},
        "max_score": {"type": "number"},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "output_format": FORMAT,
        "visibility": VISIBILITY,
        "stdout_visibility": VISIBILITY,
        "extra_data": {"type": "object"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "score", "max_score"],
                "additionalProperties": False,
                "properties": {
                    "score": {"type": "number"},
                    "max_score": {"type": "number"},
                    "status": {"enum": ["passed", "failed"]},
                    "name": {"type": "string"},
                    "name_format": FORMAT,
                    "number": {"type": "string"},
                    "output": {"type": "string"},
                    "output_format": FORMAT,
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "visibility": VISIBILITY,
                    "extra_data": {"type": "object"},
                },
            },
        },
    },
}
# PrairieLearn, "External Grading" > "Grading results": gradable, score in [0, 1], message, output,
# images, tests with name, description, points, max_points, message, output, images; gradable false
# (no points, no attempt charged) with format_errors and no score needed.
PRAIRIELEARN = {
    "type": "object",
    "required": ["gradable"],
    "if": {"properties": {"gradable": {"const": True}}},
    "then": {"required": ["score"]},
    "else": {"required": ["format_errors"], "not": {"required": ["score"]}},
    "additionalProperties": False,
    "properties": {
        "gradable": {"type": "boolean"},
        "format_errors": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "message": {"type": "string"},
        "output": {"type": "string"},
        "images": {"type": "array"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "points", "max_points"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "points": {"type": "number", "minimum": 0},
                    "max_points": {"type": "number", "minimum": 0},
                    "message": {"type": "string"},
                    "output": {"type": "string"},
                    "images": {"type": "array"},
                },
            },
        },
    },
}
# Autolab: the autograder's last line of standard output, {"scores": {problem: number}} (optionally
# "scoreboard": [numbers]).
AUTOLAB = {
    "type": "object",
    "required": ["scores"],
    "additionalProperties": False,
    "properties": {
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "scoreboard": {"type": "array"},
    },
}


def check_junit(data: bytes) -> ET.Element:
    """JUnit XML as GitHub's and GitLab's junit readers take it: a <testsuites> root of <testsuite
    name tests failures errors skipped time>, each of <testcase name classname time> with at most
    one <failure>/<error>/<skipped> (message attribute) and the counts matching the cases."""
    root = ET.fromstring(data)  # raises on anything that is not well-formed XML 1.0
    assert root.tag == "testsuites"
    total = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        assert suite.tag == "testsuite"
        assert suite.get("name")
        cases = suite.findall("testcase")
        counts = {"tests": len(cases), "failures": 0, "errors": 0}
        for case in cases:
            assert case.get("name") and case.get("classname")
            float(case.get("time"))
            outcome = [c for c in case if c.tag in ("failure", "error", "skipped")]
            assert len(outcome) <= 1
            for c in outcome:
                assert "message" in c.attrib
                counts["failures" if c.tag == "failure" else "errors"] += c.tag != "skipped"
        for key, value in counts.items():
            assert int(suite.get(key)) == value, (suite.get("name"), key)
            total[key] += value
        int(suite.get("skipped"))
        float(suite.get("time"))
    for key, value in total.items():
        assert int(root.get(key)) == value
    return root


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A correct, a buggy, two hostile and one unparsable layer-api submission, every report at once."""
    folder = tmp_path_factory.mktemp("class")
    correct = (LAYER / "correct.py").read_text()
    shutil.copy(LAYER / "correct.py", folder / "alice.py")
    shutil.copy(LAYER / "transpose_dW.py", folder / "bob.py")
    (folder / "mallory.py").write_text(correct + "\n\n" + (HOSTILE / "report_escapes.py").read_text())
    (folder / "sam.py").write_text(correct + "\n\n" + (HOSTILE / "report_surrogate.py").read_text())
    (folder / "erin.py").write_text("def Dense(:\n")  # does not parse
    out = tmp_path_factory.mktemp("out")
    status = cli.main(
        [
            str(folder),
            "--assignment",
            "layer-api",
            "--out",
            str(out),
            "--report",
            "gradescope,csv,junit,prairielearn,autolab",
        ]
    )
    assert status == 0
    return out


def test_an_unparsable_submission_is_not_gradable_on_prairielearn(graded):
    pl = json.loads((graded / "erin" / "prairielearn.json").read_text())
    jsonschema.validate(pl, PRAIRIELEARN)
    assert pl["gradable"] is False and "score" not in pl
    assert "syntax" in pl["format_errors"][0].lower() or "parse" in pl["format_errors"][0].lower()
    jsonschema.validate(json.loads((graded / "erin" / "results.json").read_text()), GRADESCOPE)


@pytest.mark.parametrize("name", ["alice", "bob", "mallory", "sam"])
def test_each_report_matches_its_platforms_schema(graded, name):
    gs = json.loads((graded / name / "results.json").read_text())
    pl = json.loads((graded / name / "prairielearn.json").read_text())
    al = json.loads((graded / name / "autolab.json").read_text())
    jsonschema.validate(gs, GRADESCOPE)
    jsonschema.validate(pl, PRAIRIELEARN)
    jsonschema.validate(al, AUTOLAB)
    assert pl["score"] == pytest.approx(gs["score"] / gs["max_score"])
    assert sum(al["scores"].values()) == pytest.approx(gs["score"])
    assert [t["points"] for t in pl["tests"]] == [t["score"] for t in gs["tests"]]


def test_scores_are_the_graders(graded):
    alice = json.loads((graded / "alice" / "prairielearn.json").read_text())
    bob = json.loads((graded / "bob" / "prairielearn.json").read_text())
    assert alice["score"] == 1.0 and alice["message"].startswith("Score: 13 / 13. All 9 checks passed.")
    assert 0 < bob["score"] < 1
    failed = [t["name"] for t in bob["tests"] if t["points"] < t["max_points"]]
    assert "layers: weight_gradients" in failed


def test_junit_has_one_testcase_per_check_and_the_feedback(graded):
    root = check_junit((graded / "junit.xml").read_bytes())
    suites = {s.get("name"): s for s in root}
    assert sorted(suites) == ["alice", "bob", "erin", "mallory", "sam"]
    assert suites["erin"].get("errors") == "9" and suites["erin"].get("failures") == "0"
    assert suites["alice"].get("failures") == "0" and len(suites["alice"].findall("testcase")) == 9
    failure = suites["bob"].find("testcase[@name='weight_gradients']/failure")
    assert failure is not None and "diverge" in failure.text and "transpose" in failure.text


def test_what_a_submission_prints_is_escaped_in_every_format(graded):
    texts = [(graded / "mallory" / f).read_text() for f in ("results.json", "prairielearn.json")]
    texts += [(graded / "sam" / f).read_text() for f in ("results.json", "prairielearn.json")]
    junit = (graded / "junit.xml").read_bytes().decode()
    for text in [*(json.dumps(json.loads(t), ensure_ascii=False) for t in texts), junit]:
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", text.replace("\n", ""))
    assert "\\\\x1b[1A" in texts[0]  # shown as an escape (JSON doubles the backslash)
    assert "\\x1b[1A" in junit


@pytest.mark.parametrize(
    ("info", "says"),
    [
        ({"namespaces": True, "pidns": True, "chroot": True, "root": True, "nproc": True}, "namespaces (mount"),
        ({"namespaces": False, "root": True, "nproc": True}, "kept from it by file permissions"),
        (
            {"namespaces": False, "root": False, "nproc": False},
            "the grader's own uid: NOT kept from the grader's files",
        ),
    ],
    ids=["namespaces", "uid", "minimal"],
)
def test_the_isolation_line_claims_only_what_is_in_force(info, says):
    text = platforms.isolation_text(info)
    assert says in text
    if not info["root"]:
        assert "file permissions" not in text and "unprivileged" not in text


def test_xml_never_carries_a_character_xml_forbids():
    nasty = "a\x00b\x0bc\x1b[2Jd\ufffe\uffff\ud800 </failure>]]>&<!-- \u202e"
    check = CheckResult("layers", "forward", 2.0, 0.0, nasty)
    result = SubmissionResult(Path(nasty + ".py"), "layer-api", [check], first_divergence=nasty, name=nasty)
    data = platforms.junit([result])
    root = check_junit(data)  # well-formed, so no forbidden character and no markup got through
    text = root.find("testsuite/testcase/failure").text
    assert "\\x00" in text and "\\ufffe" in text and "\\uffff" in text and "\\ud800" in text and "\\u202e" in text
    assert "</failure>]]>&<!--" in text  # markup is text, not structure
    for report in (platforms.prairielearn(result), platforms.gradescope(result)):
        dumped = json.dumps(report, ensure_ascii=False)
        assert not re.search("[\x00-\x08\x0b-\x1f\ud800-\udfff]", dumped)


def test_autolab_scores_are_the_last_line_of_stdout(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bprop", "check", str(LAYER / "transpose_dW.py"), "--assignment", "layer-api"]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--report", "autolab"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    jsonschema.validate(last, AUTOLAB)
    assert last == json.loads((out / "transpose_dW" / "autolab.json").read_text())
    assert last["scores"]["layers: weight_gradients"] == 0 and last["scores"]["layers: forward"] == 2
    assert not (out / "summary.csv").exists()  # only the reports asked for


@pytest.mark.parametrize("bad", ["gradescope,pdf", "", "junit,,csv"])
def test_an_unknown_report_is_refused(bad, capsys):
    assert cli.main([str(LAYER / "correct.py"), "--assignment", "layer-api", "--report", bad]) == 2
    assert "--report: unknown format" in capsys.readouterr().err


# -- visibility ------------------------------------------------------------------------------------


def result_with(passed: dict[str, bool]) -> SubmissionResult:
    checks = [
        CheckResult("layers", n, 1.0, 1.0 if ok else 0.0, "ok" if ok else "1 of 1 diverge") for n, ok in passed.items()
    ]
    return SubmissionResult(
        Path("s.py"), "layer-api", checks, first_divergence="dense_1.dW (small)" if not all(passed.values()) else None
    )


def test_the_summary_never_says_all_passed_when_a_hidden_check_failed():
    r = result_with({"forward": True, "loss": True, "weight_gradients": False})
    vis = {"layers: weight_gradients": "hidden"}
    line = platforms.summary_line(r, vis)
    assert line == (
        "Score: 2 / 3. 2 of 2 visible checks passed; 1 more not shown here (1 hidden), their points are in the score."
    )
    assert "All" not in line
    gs = platforms.gradescope(r, vis)
    assert gs["output"].startswith(line)
    assert "dense_1.dW" not in gs["output"]  # the hidden check's finding is not told through the summary
    assert [t["visibility"] for t in gs["tests"]] == ["visible", "visible", "hidden"]
    assert gs["stdout_visibility"] == "hidden"  # the instructor's log lists the hidden check's result
    assert "stdout_visibility" not in platforms.gradescope(r)
    pl = platforms.prairielearn(r, vis)
    assert [t["name"] for t in pl["tests"]] == ["layers: forward", "layers: loss"] and pl["score"] == pytest.approx(
        2 / 3
    )
    assert platforms.summary_line(r) == "Score: 2 / 3. 2 of 3 checks passed."
    assert platforms.summary_line(result_with({"forward": True})) == "Score: 1 / 1. All 1 check passed."


def test_visibility_comes_from_the_assignment_file(tmp_path):
    from grading.assignment import BUILTIN_DIR, AssignmentError, load_assignment

    text = (BUILTIN_DIR / "layer-api.toml").read_text()
    text = text.replace(
        '{ name = "weight_gradients", points = 2 }',
        '{ name = "weight_gradients", points = 2, visibility = "after_due_date" }',
    )
    (tmp_path / "a.toml").write_text(text)
    out = tmp_path / "out"
    assert cli.main([str(LAYER / "transpose_dW.py"), "--assignment", str(tmp_path / "a.toml"), "--out", str(out)]) == 0
    gs = json.loads((out / "transpose_dW" / "results.json").read_text())
    jsonschema.validate(gs, GRADESCOPE)
    vis = {t["name"]: t["visibility"] for t in gs["tests"]}
    assert vis["layers: weight_gradients"] == "after_due_date" and vis["layers: forward"] == "visible"
    assert "(1 shown after the due date)" in gs["output"].splitlines()[0]
    (tmp_path / "b.toml").write_text(text.replace('"after_due_date"', '"secret"'))
    with pytest.raises(AssignmentError, match=r"checks\[4\]\.visibility: expected one of .*got 'secret'"):
        load_assignment(tmp_path / "b.toml")


def _with_hidden_weight_gradients():
    """The built-in layer-api with its weight_gradients check hidden, as an instructor's file would."""
    import dataclasses

    from grading.assignment import load_assignment

    a = load_assignment("layer-api")
    parts = tuple(
        dataclasses.replace(
            p,
            checks=tuple(
                dataclasses.replace(c, visibility="hidden") if c.name == "weight_gradients" else c for c in p.checks
            ),
        )
        for p in a.parts
    )
    return dataclasses.replace(a, parts=parts)


def test_a_hidden_check_s_counterexample_is_not_shown():
    """transpose_dW fails only weight_gradients: with that check hidden, neither its tensor, its
    diagnosis nor the counterexample built from it reaches the student's output."""
    from grading.checks import grade_submission

    a = _with_hidden_weight_gradients()
    r = grade_submission(LAYER / "transpose_dW.py", a)
    assert r.counterexample is not None and r.first_divergence.startswith("dense_")  # the grader knows
    vis = platforms.visibilities(a)
    out = platforms.gradescope(r, vis)["output"]
    assert "counterexample" not in out and "First diverging tensor" not in out and "Diagnosis" not in out
    shown = platforms.gradescope(r, {})["output"]  # the same result with every check visible: all told
    assert "counterexample" in shown and "First diverging tensor" in shown


def test_the_notebook_check_runs_no_hidden_check():
    """bprop.check grades visible_only(assignment): a hidden check is neither run nor shown."""
    from grading.assignment import visible_only

    a = _with_hidden_weight_gradients()
    names = [c.name for p in visible_only(a).parts for c in p.checks]
    assert "weight_gradients" not in names and "forward" in names
    assert len(names) == sum(len(p.checks) for p in a.parts) - 1
    import inspect

    from bprop import notebook

    assert "visible_only(load_assignment(assignment))" in inspect.getsource(notebook.check)
