"""Feedback: the explanation next to each score, Gradescope's results.json, the class CSV, the terminal.

    explain_check(findings, passed) -> str          the output text of one check
    gradescope(result) -> dict                      {"score", "max_score", "output", "tests": [...]}
    write_results(results, out_dir) -> [Path]       DIR/<name>/results.json, DIR/summary.csv, DIR/summary.md
    write_summary(results, out_dir, folders)        DIR/summary.csv, DIR/summary.md (the class)
    terminal(results, details=True) -> str          what a student or a TA reads after a run
    counterexample_lines(result) -> [str]           the hand-sized counterexample (grading/shrink.py)

Gradescope's schema: score, max_score, and tests, each with name, score, max_score, status
("passed" / "failed") and output (https://gradescope-autograders.readthedocs.io, "Output format");
output_format "text", so nothing a submission prints is rendered as HTML or Markdown.

Everything a submission controls (its file name, what it prints, its exception messages, and so every
check's output) is data: each writer passes it through grading/escaping.py (terminal, CSV, JSON,
Markdown, folder names). The other platforms' reports (PrairieLearn, Autolab, JUnit) and Gradescope's
test visibility are in grading/platforms.py. A write that fails for one submission does not stop the others
(ResultsWriteError at the end names what failed).
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path

from grading.escaping import csv_cell, display_name, folder_names, markdown_cell, printable

NAMES = ("yours", "reference")
SUMMARY_FIELDS = ("submission", "file", "status", "score", "max_score", "first_divergence", "diagnosis", "error")


class ResultsWriteError(OSError):
    """Some results could not be written; every other submission's were."""


def explain_check(findings: list, passed: int) -> str:
    """Agreement with its worst margin, or the first diverging tensor, its numbers and diagnosis."""
    n = len(findings)
    cases = list(OrderedDict.fromkeys(f.case for f in findings))
    if passed == n:
        compared = [f.row for f in findings if f.row.worst_index is not None]
        worst = max(compared, key=lambda r: r.rel / r.tol, default=None)
        margin = f"; worst {worst.name} at {worst.rel:.2g} (tolerance {worst.tol:.0e})" if worst else ""
        return f"all {n} comparisons agree with the reference ({', '.join(cases)}){margin}"
    failed = [f for f in findings if not f.passed]
    first = failed[0]
    lines = [
        f"{len(failed)} of {n} comparisons diverge. First: {first.row.name} in case {first.case}:",
        f"  {first.row.describe(NAMES)}",
    ]
    if first.diagnosis is not None:
        lines.append(f"  diagnosis: {first.diagnosis.text}")
    others: OrderedDict[str, list[str]] = OrderedDict()
    for f in failed[1:]:
        others.setdefault(f.row.name, []).append(f.case)
    if others:
        also = "; ".join(f"{name} ({', '.join(cs)})" for name, cs in list(others.items())[:8])
        lines.append(f"  also diverging: {also}" + (" ..." if len(others) > 8 else ""))
    diagnosed = OrderedDict()
    for f in failed[1:]:
        if f.diagnosis is not None and f.row.name != first.row.name:
            diagnosed.setdefault(f.row.name, f.diagnosis.bug)
    if diagnosed:
        lines.append("  other diagnoses: " + "; ".join(f"{k}: {v}" for k, v in diagnosed.items()))
    return "\n".join(lines)


def verdict_lines(result, with_error: bool = True) -> list[tuple[str, str]]:
    """(label, text) of the submission's verdict: what could not be graded, the first diverging tensor
    and its diagnosis (`with_error=False`: the divergence only when nothing failed as a whole)."""
    lines = [("Nothing could be graded", result.error)] if result.error else []
    if result.first_divergence and (with_error or not result.error):
        lines.append(("First diverging tensor", result.first_divergence))
        if result.diagnosis:
            lines.append(("Diagnosis", result.diagnosis))
    return lines


def gradescope(result) -> dict:
    head = [f"{label}: {text}" for label, text in verdict_lines(result)]
    head.extend(counterexample_lines(result))
    head.extend(result.notes)
    return {
        "score": result.score,
        "max_score": result.max_score,
        "output": printable("\n".join(head)),
        "output_format": "text",
        "tests": [
            {
                "name": printable(c.title, newlines=False),
                "score": c.score,
                "max_score": c.points,
                "status": "passed" if c.passed else "failed",
                "output": printable(c.output),
                "output_format": "text",
            }
            for c in result.checks
        ],
    }


def counterexample_lines(result) -> list[str]:
    """The first failing comparison's hand-sized counterexample (grading/shrink.py), as lines; none without one."""
    cx = getattr(result, "counterexample", None)
    return cx.text().splitlines() if cx is not None else []


def write_each(results: list, folders: list[str], out_dir: Path, filename: str, build) -> tuple[list[Path], list[str]]:
    """out_dir/<folder>/filename = json of build(result), per submission: (written, failures); a write
    that fails loses only that one file."""
    written, failed = [], []
    for r, name in zip(results, folders):
        target = out_dir / name / filename
        try:
            target.parent.mkdir(exist_ok=True)
            target.write_text(json.dumps(build(r), indent=2) + "\n", encoding="utf-8")
        except (OSError, ValueError, TypeError) as e:  # this one is lost; the others are not
            failed.append(f"{name}/{filename}: {type(e).__name__}: {e}")
            continue
        written.append(target)
    return written, failed


def write_results(results: list, out_dir: Path) -> list[Path]:
    """One results.json per submission, and summary.csv for the class (one row each, input order)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = folder_names([r.name or os.fsdecode(r.path.stem) for r in results])
    written, failed = write_each(results, folders, out_dir, "results.json", gradescope)
    written += write_summary(results, out_dir, folders)
    if failed:
        raise ResultsWriteError("could not write " + "; ".join(map(printable, failed)))
    return written


def write_summary(results: list, out_dir: Path, folders: list[str]) -> list[Path]:
    """DIR/summary.csv (one row per submission, input order) and DIR/summary.md."""
    out_dir = Path(out_dir)
    with (out_dir / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for r, name in zip(results, folders):
            row = {
                "submission": name,
                "file": str(r.path),
                "status": r.status,  # graded | crashed | timed out | refused | forbidden import
                "score": r.score,
                "max_score": r.max_score,
                "first_divergence": r.first_divergence or "",
                "diagnosis": r.diagnosis or "",
                "error": r.error or "",
            }
            writer.writerow({k: csv_cell(v) for k, v in row.items()})
    (out_dir / "summary.md").write_text(summary_markdown(results, folders), encoding="utf-8")
    return [out_dir / "summary.csv", out_dir / "summary.md"]


def summary_markdown(results: list, folders: list[str] | None = None) -> str:
    """The class as a Markdown table (submission, score, first divergence, error), cells escaped."""
    folders = folders or folder_names([r.name or os.fsdecode(r.path.stem) for r in results])
    lines = ["| submission | score | first diverging tensor | error |", "|---|---|---|---|"]
    for r, name in zip(results, folders):
        cells = (name, f"{r.score:g} / {r.max_score:g}", r.first_divergence or "", r.error or "")
        lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def terminal(results: list, details: bool = True) -> str:
    """Per submission: the score, each check with its score, and the explanation of what failed."""
    blocks = []
    names = [printable(r.name or os.fsdecode(r.path.stem), newlines=False) for r in results]
    for r, name in zip(results, names):
        lines = [
            f"{name} ({display_name(r.path)}): {r.score:g} / {r.max_score:g}  [{printable(r.assignment, False)}, {r.seconds:.1f} s]"
        ]
        for label, text in verdict_lines(r, with_error=False):
            lines.append(f"  {label[0].lower()}{label[1:]}: {printable(text, newlines=False)}")
        if not r.error and r.first_divergence:
            lines.extend("  " + printable(line, newlines=False) for line in counterexample_lines(r))
        if details and not r.error:
            for c in r.checks:
                mark = "ok  " if c.passed else "FAIL"
                lines.append(f"  {mark} {printable(c.title, False):<34} {c.score:g}/{c.points:g}")
                if not c.passed:
                    lines.extend("       " + line for line in printable(c.output).splitlines())
            lines.extend("  " + line for note in r.notes for line in printable(note).splitlines())
        blocks.append("\n".join(lines))
    if len(results) > 1:
        width = max(len(n) for n in names)
        table = [
            f"{'submission':<{width}}  score",
            *(f"{n:<{width}}  {r.score:g}/{r.max_score:g}" for r, n in zip(results, names)),
        ]
        blocks.append("\n".join(table))
    return "\n\n".join(blocks)
