"""`bprop check PATH... --assignment NAME --out DIR`: grade submissions, write Gradescope results.

    add_parser(subparsers)      adds the `check` sub-command to bprop's argparse parser
    run(args) -> int            grades; 0 whenever grading ran (whatever the scores), 2 on bad usage
    main(argv) -> int           the same, standalone: python -m grading.cli PATH... --assignment NAME

Writes DIR/<submission stem>/results.json (Gradescope's schema), DIR/summary.csv, and prints a
summary: per submission its score, the first diverging tensor with its diagnosis, and each failed
check's explanation. Submissions are graded in parallel (--workers, default 2), each submission's
calls in their own sandboxed children; a submission that cannot run still gets a result (0, with
the reason).
"""

from __future__ import annotations

import argparse
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
    from grading.checks import collect_submissions, grade_many
    from grading.report import terminal, write_results

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
    limits = None
    if args.wall_s is not None:
        from grading.sandbox import Limits

        limits = Limits(wall_s=args.wall_s, cpu_s=args.wall_s)
    print(f"grading {len(paths)} submission(s) against {assignment.name} ({assignment.title})", file=sys.stderr)
    results = grade_many(paths, assignment, workers=args.workers, limits=limits)
    write_results(results, args.out)
    print(terminal(results, details=not args.brief))
    print(f"\nresults written to {args.out}/ (results.json per submission, summary.csv)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bprop check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
