"""`bprop check PATH... --assignment NAME --out DIR`: grade submissions, write Gradescope results.

    add_parser(subparsers)      adds the `check` sub-command to bprop's argparse parser
    run(args) -> int            grades; 0 whenever grading ran (whatever the scores), 1 if a result could
                                not be written, 2 on bad usage
    main(argv) -> int           the same, standalone: python -m grading.cli PATH... --assignment NAME

Writes DIR/<submission stem>/results.json (Gradescope's schema), DIR/summary.csv, DIR/summary.md,
and prints a summary: per submission its score, the first diverging tensor with its diagnosis, and each failed
check's explanation. Submissions are graded in parallel (--workers, default 2), each submission's
calls in their own sandboxed children; a submission that cannot run still gets a result (0, with
the reason). Symbolic links and files that resolve outside the folder they were found in are
refused unread; a submission that uses a module the assignment forbids (`forbidden`, by default
torch, tensorflow, keras, jax, autograd, scipy) gets 0 with a verdict naming the module and the line.
Exit status 0 whenever grading ran and every result was written, 1 if a result could not be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check",
        help="grade student backprop submissions (.py or .ipynb) against the reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="submission files or folders of them")
    p.add_argument(
        "--assignment",
        required=True,
        help="a built-in assignment (layer-api, function-api, class-api) or the path of an assignment file",
    )
    p.add_argument("--out", default="grading-results", type=Path, help="results folder (default: grading-results)")
    p.add_argument("--workers", type=int, default=2, help="submissions graded at once (default: 2)")
    p.add_argument(
        "--wall-s", type=float, default=None, help="wall-clock limit per sandboxed call, seconds (default 30)"
    )
    p.add_argument("--brief", action="store_true", help="only the score and first divergence per submission")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grading.assignment import AssignmentError, load_assignment
    from grading.checks import collect_submissions, grade_many, unique_names
    from grading.escaping import printable
    from grading.feedback import ResultsWriteError, terminal, write_results

    try:
        assignment = load_assignment(args.assignment)
    except AssignmentError as e:
        print(f"bprop check: {e}", file=sys.stderr)
        return 2
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"bprop check: no such file or folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    paths = collect_submissions(args.paths)
    if not paths:
        print(f"bprop check: no .py or .ipynb submissions under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    refused = screen(args.paths, paths)
    from grading.sandbox import Limits

    limits = Limits(forbidden=assignment.forbidden)
    if args.wall_s is not None:
        limits = Limits(wall_s=args.wall_s, cpu_s=args.wall_s, forbidden=assignment.forbidden)
    print(f"grading {len(paths)} submission(s) against {assignment.name} ({assignment.title})", file=sys.stderr)
    graded = iter(grade_many([p for p in paths if p not in refused], assignment, workers=args.workers, limits=limits))
    results = [refused_result(p, assignment, refused[p]) if p in refused else next(graded) for p in paths]
    for r, name in zip(results, unique_names(paths)):
        r.name = name
    for stream in (sys.stdout, sys.stderr):  # a terminal that is not UTF-8 gets escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    status = 0
    try:
        write_results(results, args.out)
    except ResultsWriteError as e:
        print(f"bprop check: {e}", file=sys.stderr)
        status = 1
    print(terminal(results, details=not args.brief))
    print(
        f"\nresults written to {printable(str(args.out), False)}/ (results.json per submission, summary.csv, summary.md)"
    )
    return status


def screen(roots: list, paths: list[Path]) -> dict[Path, str]:
    """Submissions the grader must not open, with the reason: a symbolic link (to a root-only file,
    say), or a file that resolves outside the folder it was found in. Nothing is read from them."""
    folders = [(Path(r), Path(os.path.realpath(r))) for r in roots if Path(r).is_dir()]
    refused = {}
    for p in paths:
        real = Path(os.path.realpath(p))
        found_in = [resolved for given, resolved in folders if Path(p).is_relative_to(given)]
        if os.path.islink(p):
            refused[p] = "refused: a symbolic link (submissions must be regular files inside the submissions folder)"
        elif found_in and not any(real.is_relative_to(f) for f in found_in):
            refused[p] = "refused: the file resolves outside the submissions folder"
        elif not real.is_file():
            refused[p] = "refused: not a regular file"
    return refused


def refused_result(path: Path, assignment, reason: str):
    """A result for a submission that was not graded: every check 0, with the reason."""
    from grading.checks import CheckResult, SubmissionResult

    checks = [
        CheckResult(p.id, c.name, c.points, 0.0, f"not run: {reason}") for p in assignment.parts for c in p.checks
    ]
    return SubmissionResult(Path(path), assignment.name, checks, error=reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bprop check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
