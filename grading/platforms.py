"""Reports for the platforms courses grade on: Gradescope, PrairieLearn, Autolab, JUnit XML, the class CSV.

    REPORTS                                         the formats `bprop check --report` takes
    parse_reports("gradescope,csv,junit") -> tuple  the formats, checked (ReportError names a bad one)
    visibilities(assignment) -> {title: str}         each check's visibility ("layers: forward" -> "hidden")
    summary_line(result, visibility) -> str          "7 of 9 checks passed" (never "all" when one is hidden)
    gradescope(result, visibility, isolation) -> dict   Gradescope's results.json, with test visibility
    prairielearn(result, visibility, isolation) -> dict PrairieLearn's external-grader results.json
    autolab(result) -> dict                          Autolab's {"scores": {check title: points}}
    junit(results) -> bytes                          JUnit XML: a testsuite per submission, a testcase per check
    write_reports(results, out_dir, formats, assignment, isolation=None) -> [Path]

Files, per format (DIR is --out; <name> the submission's results folder):
    gradescope    DIR/<name>/results.json               (Gradescope's autograder output format)
    prairielearn  DIR/<name>/prairielearn.json          (PrairieLearn's /grade/results/results.json)
    autolab       DIR/<name>/autolab.json               and, for a single submission, the same JSON as the
                                                        last line of standard output (printed by the CLI)
    junit         DIR/junit.xml
    csv           DIR/summary.csv and DIR/summary.md    (the class; grading/feedback.py)

Schemas, as the platforms document them (each checked by tests/test_reports.py):
  Gradescope (gradescope-autograders.readthedocs.io, "Autograder Specifications", "Output format"):
    {score, output, output_format, visibility, extra_data, tests: [{name, score, max_score, status,
    output, output_format, visibility}]}; test visibility "visible" | "hidden" | "after_due_date" |
    "after_published".
  PrairieLearn (prairielearn.readthedocs.io, "External Grading", "Grading results"):
    {gradable: bool, score: number in [0, 1], message, output, tests: [{name, points, max_points,
    output, message}]}; gradable false (input that cannot be graded, no attempt charged) with
    format_errors instead of a score.
  Autolab (Tango / the autograder's output): the last line of the autograder's standard output is
    {"scores": {problem name: points, ...}}, optionally with "scoreboard": [...]; problem names must
    equal the assessment's problem names (here: the check titles, "layers: forward").
  JUnit (the Ant/Jenkins junit format as GitHub Actions' reporters and GitLab's junit artifacts read
    it): <testsuites> of <testsuite name tests failures errors skipped time> of <testcase name
    classname time>, a failed check with <failure message type>text</failure>, a submission that
    could not be graded with <error>.

Everything a submission controls is data in every format: text goes through grading/escaping.py's
printable (control characters, lone surrogates, bidi overrides as visible escapes); XML additionally
never carries a character XML 1.0 forbids (printable leaves U+FFFE and U+FFFF, escaped here) and is
written by xml.etree, which escapes markup.
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from grading.escaping import folder_names, printable

REPORTS = ("gradescope", "prairielearn", "autolab", "junit", "csv")
DEFAULT_REPORTS = ("gradescope", "csv")
HIDDEN_WORDS = {
    "hidden": "hidden",
    "after_due_date": "shown after the due date",
    "after_published": "shown once published",
}


class ReportError(ValueError):
    """A --report value that names no known format."""


def parse_reports(text: str) -> tuple[str, ...]:
    """ "gradescope,csv,junit" -> ("gradescope", "csv", "junit"): known formats, in order, once each."""
    names = [n.strip().lower() for n in str(text).split(",")]
    bad = [n for n in names if n not in REPORTS]
    if bad or not names:
        raise ReportError(
            f"--report: unknown format {', '.join(map(repr, bad)) or repr(text)}; expected a comma list of {', '.join(REPORTS)}"
        )
    return tuple(dict.fromkeys(names))


def visibilities(assignment) -> dict[str, str]:
    """Each check's title ("<part>: <check>", as CheckResult.title) -> its visibility."""
    if assignment is None:
        return {}
    return {f"{p.id}: {c.name}": getattr(c, "visibility", "visible") for p in assignment.parts for c in p.checks}


def summary_line(result, visibility: dict[str, str] | None = None) -> str:
    """One line a student may read: the score and how many checks passed. When some checks are not
    shown, it counts only the visible ones as passed and says how many are withheld: it never says
    "all checks passed" while a withheld check may have failed."""
    visibility = visibility or {}
    shown = [c for c in result.checks if visibility.get(c.title, "visible") == "visible"]
    withheld = [c for c in result.checks if visibility.get(c.title, "visible") != "visible"]
    head = f"Score: {result.score:g} / {result.max_score:g}."
    if result.error:
        return f"{head} Nothing could be graded."
    passed = sum(c.passed for c in shown)
    if not withheld:
        if passed == len(shown):
            return f"{head} All {len(shown)} check{'s' if len(shown) != 1 else ''} passed."
        return f"{head} {passed} of {len(shown)} checks passed."
    kinds: dict[str, int] = {}
    for c in withheld:
        word = HIDDEN_WORDS[visibility[c.title]]
        kinds[word] = kinds.get(word, 0) + 1
    why = ", ".join(f"{n} {w}" for w, n in kinds.items())
    return (
        f"{head} {passed} of {len(shown)} visible checks passed; {len(withheld)} more not shown here ({why}), "
        "their points are in the score."
    )


def isolation_text(info: dict | None) -> str:
    """What protected the grader from the submission, in one line (results.json names it)."""
    if not info:
        return ""
    if info.get("namespaces"):
        parts = ["namespaces (mount, network, IPC" + (", pid" if info.get("pidns") else "") + ")"]
        parts.append("read-only chroot" if info.get("chroot") else "no chroot")
    else:
        err = info.get("namespaces_error")
        parts = ["no namespaces" + (f" (refused: {err})" if err else "")]
        parts.append("network and System V IPC NOT isolated")
    own_uid = info.get("root") and info.get("nproc")
    if own_uid:
        parts.append("an unprivileged uid of its own per run, with a process limit")
        if not info.get("namespaces"):
            parts.append("the grader's files and the results kept from it by file permissions")
    elif info.get("caps_dropped"):
        parts.append("a user namespace with every capability dropped")
    else:
        parts.append("the grader's own uid" + ("" if info.get("namespaces") else ": NOT kept from the grader's files"))
    parts.append("rlimits (CPU, memory, file size, core) and a wall clock per call")
    return "Isolation: " + "; ".join(parts) + "."


def _feedback_lines(result, visibility: dict[str, str]) -> list[str]:
    """feedback.gradescope's submission-level text (already escaped), line by line; without the
    first divergence and its diagnosis when those belong only to checks a student may not see yet."""
    from grading import feedback

    if not _withheld_divergence(result, visibility):
        return feedback.gradescope(result)["output"].splitlines()
    # naming the tensor, its diagnosis or a counterexample would tell what a hidden check found
    lines = feedback.gradescope(dataclasses.replace(result, counterexample=None))["output"].splitlines()
    return [line for line in lines if not line.startswith(("First diverging tensor:", "Diagnosis:"))]


def _withheld_divergence(result, visibility: dict[str, str]) -> bool:
    """The first diverging tensor belongs to a check a student may not see yet: every failed check is
    withheld, or the first divergence's own check is (the visible checks' outputs still say what
    failed in them)."""
    if not result.first_divergence:
        return False
    failed = [c for c in result.checks if not c.passed]
    if failed and all(visibility.get(c.title, "visible") != "visible" for c in failed):
        return True
    first = getattr(result, "first_finding", None)
    own = [v for title, v in visibility.items() if first is not None and title.endswith(f": {first.check}")]
    return any(v != "visible" for v in own)


def gradescope(result, visibility: dict[str, str] | None = None, isolation: dict | None = None) -> dict:
    """Gradescope's results.json: feedback.gradescope's fields, each test's visibility, the summary
    line first, and the isolation it ran with (in the output and in extra_data)."""
    from grading import feedback

    visibility = visibility or {}
    out = feedback.gradescope(result)
    head = [printable(summary_line(result, visibility)), *_feedback_lines(result, visibility)]
    text = isolation_text(isolation)
    if text:
        head.append(printable(text))
        out["extra_data"] = {"isolation": isolation_record(isolation)}
    out["output"] = "\n".join(head)
    for test, check in zip(out["tests"], result.checks):
        test["visibility"] = visibility.get(check.title, "visible")
    if any(t["visibility"] != "visible" for t in out["tests"]):  # run_autograder's stdout lists every check
        out["stdout_visibility"] = "hidden"
    return out


def prairielearn(result, visibility: dict[str, str] | None = None, isolation: dict | None = None) -> dict:
    """PrairieLearn's external-grader results: score as a fraction; checks a student may not see
    yet are left out of `tests` (PrairieLearn shows every test) but count in the score. A
    submission of which nothing could run (it does not parse, no file, refused) is `gradable:
    false` with the reason in `format_errors`: PrairieLearn then charges no attempt for it."""
    visibility = visibility or {}
    if result.status == "refused":
        reason = printable(result.error or "nothing could be graded")
        return {"gradable": False, "message": f"Not graded: {reason}", "format_errors": [reason]}
    score = result.score / result.max_score if result.max_score > 0 else 0.0
    lines = [printable(summary_line(result, visibility)), *_feedback_lines(result, visibility)]
    text = isolation_text(isolation)
    if text:
        lines.append(printable(text))
    tests = [
        {
            "name": printable(c.title, newlines=False),
            "points": c.score,
            "max_points": c.points,
            "output": printable(c.output),
            "message": "passed" if c.passed else "failed",
        }
        for c in result.checks
        if visibility.get(c.title, "visible") == "visible"
    ]
    return {
        "gradable": True,
        "score": min(1.0, max(0.0, score)),
        "message": lines[0],
        "output": "\n".join(lines[1:]),
        "tests": tests,
    }


def autolab(result) -> dict:
    """Autolab's scores: one entry per check (problem name = the check's title), points as numbers."""
    return {"scores": {printable(c.title, newlines=False): c.score for c in result.checks}}


# A character XML 1.0 cannot carry (https://www.w3.org/TR/xml/#charsets): after printable only the
# noncharacters U+FFFE and U+FFFF are left to catch; the C0 controls and surrogates are escaped there.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object, newlines: bool = True) -> str:
    """Text for an XML element or attribute: printable, and no character XML 1.0 forbids."""
    return _XML_FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", printable(value, newlines))


def junit(results: list, names: list[str] | None = None) -> bytes:
    """JUnit XML: one <testsuite> per submission (named by its results folder), one <testcase> per
    check (classname bprop.<assignment>.<part>), a failed check as <failure> with its feedback, a
    submission that could not be graded as <error> on every check."""
    names = names or folder_names([r.name or os.fsdecode(r.path.stem) for r in results])
    root = ET.Element("testsuites", name="bprop check")
    total = {"tests": 0, "failures": 0, "errors": 0}
    for r, name in zip(results, names):
        suite = ET.SubElement(root, "testsuite", name=xml_text(name, False))
        counts = {"tests": 0, "failures": 0, "errors": 0}
        per_check = f"{r.seconds / max(1, len(r.checks)):.3f}"
        for c in r.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                name=xml_text(c.name, False),
                classname=xml_text(f"bprop.{r.assignment}.{c.part}", False),
                time=per_check,
            )
            counts["tests"] += 1
            ET.SubElement(case, "properties")
            props = case.find("properties")
            ET.SubElement(props, "property", name="score", value=f"{c.score:g}")
            ET.SubElement(props, "property", name="max_score", value=f"{c.points:g}")
            if r.error:
                counts["errors"] += 1
                err = ET.SubElement(case, "error", message=xml_text(r.error, False)[:500], type="not graded")
                err.text = xml_text(c.output)
            elif not c.passed:
                counts["failures"] += 1
                first = c.output.splitlines()[0] if c.output else "failed"
                fail = ET.SubElement(
                    case, "failure", message=xml_text(first, False)[:500], type=f"{c.score:g} of {c.points:g} points"
                )
                fail.text = xml_text(c.output)
        for k, v in counts.items():
            suite.set(k, str(v))
            total[k] += v
        suite.set("skipped", "0")
        suite.set("time", f"{r.seconds:.3f}")
        out = ET.SubElement(suite, "system-out")
        out.text = xml_text(f"{name}: {r.score:g} / {r.max_score:g}\n" + "\n".join(_feedback_lines(r, {})))
    for k, v in total.items():
        root.set(k, str(v))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def isolation_record(info: dict) -> dict:
    """The isolation facts for a report, without what changes from run to run (the probe child's
    random uid: every child gets its own), so that the same submission gets the same report."""
    record = {k: v for k, v in info.items() if k != "uid"}
    record["own_uid"] = bool(info.get("root") and info.get("nproc") and info.get("uid", 0) != 0)
    return _plain(record)


def _plain(value):
    """A JSON-safe copy of an isolation record (its strings printable)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return printable(value)


def write_reports(
    results: list, out_dir: Path, formats=DEFAULT_REPORTS, assignment=None, isolation: dict | None = None
) -> list[Path]:
    """The chosen reports (see the module doc). A write that fails for one submission does not stop
    the others: feedback.ResultsWriteError at the end names what failed."""
    from grading import feedback

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    visibility = visibilities(assignment)
    folders = folder_names([r.name or os.fsdecode(r.path.stem) for r in results])
    per_submission = {
        "gradescope": ("results.json", lambda r: gradescope(r, visibility, isolation)),
        "prairielearn": ("prairielearn.json", lambda r: prairielearn(r, visibility, isolation)),
        "autolab": ("autolab.json", autolab),
    }
    written, failed = [], []
    for fmt in formats:
        if fmt in per_submission:
            w, f = feedback.write_each(results, folders, out_dir, *per_submission[fmt])
            written, failed = written + w, failed + f
    if "junit" in formats:
        (out_dir / "junit.xml").write_bytes(junit(results, folders))
        written.append(out_dir / "junit.xml")
    if "csv" in formats:
        written += feedback.write_summary(results, out_dir, folders)
    if failed:
        raise feedback.ResultsWriteError("could not write " + "; ".join(map(printable, failed)))
    return written
