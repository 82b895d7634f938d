"""Reports: the explanation next to each score, Gradescope's results.json, the class CSV, the terminal.

    explain_check(findings, passed) -> str          the output text of one check
    gradescope(result) -> dict                      {"score", "max_score", "output", "tests": [...]}
    write_results(results, out_dir) -> [Path]       DIR/<name>/results.json and DIR/summary.csv
    terminal(results, details=True) -> str          what a student or a TA reads after a run

Gradescope's schema: score, max_score, and tests, each with name, score, max_score, status
("passed" / "failed") and output (https://gradescope-autograders.readthedocs.io, "Output format").
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict
from pathlib import Path

NAMES = ("yours", "reference")
SUMMARY_FIELDS = ("submission", "file", "status", "score", "max_score", "first_divergence", "diagnosis", "error")


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


def gradescope(result) -> dict:
    head = []
    if result.error:
        head.append(f"Nothing could be graded: {result.error}")
    if result.first_divergence:
        head.append(f"First diverging tensor: {result.first_divergence}")
        if result.diagnosis:
            head.append(f"Diagnosis: {result.diagnosis}")
    head.extend(result.notes)
    return {
        "score": result.score,
        "max_score": result.max_score,
        "output": "\n".join(head),
        "tests": [
            {
                "name": c.title,
                "score": c.score,
                "max_score": c.points,
                "status": "passed" if c.passed else "failed",
                "output": c.output,
            }
            for c in result.checks
        ],
    }


def write_results(results: list, out_dir: Path) -> list[Path]:
    """One results.json per submission, and summary.csv for the class (one row each, input order)."""
    out_dir = Path(out_dir)
    written = []
    for r in results:
        folder = out_dir / (r.name or r.path.stem)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "results.json"
        target.write_text(json.dumps(gradescope(r), indent=2) + "\n", encoding="utf-8")
        written.append(target)
    with (out_dir / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow(
                {
                    "submission": r.name or r.path.stem,
                    "file": str(r.path),
                    "status": r.status,  # graded | crashed | timed out | refused | forbidden import
                    "score": r.score,
                    "max_score": r.max_score,
                    "first_divergence": r.first_divergence or "",
                    "diagnosis": r.diagnosis or "",
                    "error": r.error or "",
                }
            )
    written.append(out_dir / "summary.csv")
    return written


def terminal(results: list, details: bool = True) -> str:
    """Per submission: the score, each check with its score, and the explanation of what failed."""
    blocks = []
    for r in results:
        lines = [
            f"{r.name or r.path.stem} ({r.path.name}): {r.score:g} / {r.max_score:g}  [{r.assignment}, {r.seconds:.1f} s]"
        ]
        if r.error:
            lines.append(f"  nothing could be graded: {r.error}")
        elif r.first_divergence:
            lines.append(f"  first diverging tensor: {r.first_divergence}")
            if r.diagnosis:
                lines.append(f"  diagnosis: {r.diagnosis}")
        if details and not r.error:
            for c in r.checks:
                mark = "ok  " if c.passed else "FAIL"
                lines.append(f"  {mark} {c.title:<34} {c.score:g}/{c.points:g}")
                if not c.passed:
                    lines.extend("       " + line for line in c.output.splitlines())
            lines.extend("  " + line for note in r.notes for line in note.splitlines())
        blocks.append("\n".join(lines))
    if len(results) > 1:
        width = max(len(r.name or r.path.stem) for r in results)
        table = [
            f"{'submission':<{width}}  score",
            *(f"{(r.name or r.path.stem):<{width}}  {r.score:g}/{r.max_score:g}" for r in results),
        ]
        blocks.append("\n".join(table))
    return "\n\n".join(blocks)
