"""`bprop check PATH... --assignment NAME --out DIR [--report ...] [--shard I/N]`: grade submissions.

    add_parser(subparsers)      adds the `check` sub-command to bprop's argparse parser
    run(args) -> int            grades; 0 whenever grading ran (whatever the scores), 1 if a result could
                                not be written, 2 on bad usage
    main(argv) -> int           the same, standalone: python -m grading.cli PATH... --assignment NAME

Writes the reports --report names (grading/platforms.py; default gradescope,csv:
DIR/<submission stem>/results.json in Gradescope's schema, DIR/summary.csv, DIR/summary.md; also
prairielearn, autolab, junit), each naming the isolation the children ran with, and prints a
summary: per submission its score, the first diverging tensor with its diagnosis, and each failed
check's explanation. Submissions are graded in parallel (--workers, default 2), each submission's
calls in their own sandboxed children; a submission that cannot run still gets a result (0, with
the reason). Symbolic links and files that resolve outside the folder they were found in are
refused unread; a submission that uses a module the assignment forbids (`forbidden`, by default
torch, tensorflow, keras, jax, autograd, scipy) gets 0 with a verdict naming the module and the line.
Exit status 0 whenever grading ran and every result was written, 1 if a result could not be written.
`--shard I/N` grades the I-th of N slices of the submissions sorted by name (grading/shards.py);
`bprop merge OUT SHARD_OUT...` combines the slices' folders (add_merge_parser, run_merge).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument(
        "--no-counterexample",
        action="store_true",
        help="skip the hand-sized counterexample of the first failing check (one sandboxed call less per "
        "failing submission: faster for a whole class)",
    )
    p.add_argument(
        "--report",
        default="gradescope,csv",
        help="a comma list of reports: gradescope (<name>/results.json), prairielearn (<name>/prairielearn.json), "
        "autolab (<name>/autolab.json; one submission: its scores as the last line of stdout), junit "
        "(junit.xml), csv (summary.csv, summary.md); default gradescope,csv",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="grade only the I-th of N slices of the submissions sorted by name (Slurm arrays, Kubernetes "
        "Indexed Jobs, CI matrices); `bprop merge` combines the slices' --out folders",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grading.assignment import AssignmentError, load_assignment
    from grading.checks import collect_submissions, grade_many, unique_names
    from grading.escaping import folder_names, printable
    from grading.feedback import ResultsWriteError, terminal
    from grading.platforms import ReportError, autolab, parse_reports, write_reports
    from grading.shards import ShardError, parse_shard, select, write_manifest

    try:
        assignment = load_assignment(args.assignment)
        formats = parse_reports(getattr(args, "report", "gradescope,csv"))
        shard = parse_shard(args.shard) if getattr(args, "shard", None) is not None else None
    except (AssignmentError, ReportError, ShardError) as e:
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
    all_names = folder_names(unique_names(paths))  # over the whole folder: a shard names them as the whole run
    total = len(paths)
    if shard is not None:
        chosen = select(paths, shard)
        paths, all_names = [paths[k] for k in chosen], [all_names[k] for k in chosen]
    refused = screen(args.paths, paths)
    from grading.sandbox import Limits

    limits = Limits(forbidden=assignment.forbidden)
    if args.wall_s is not None:
        limits = Limits(wall_s=args.wall_s, cpu_s=args.wall_s, forbidden=assignment.forbidden)
    of = f" (shard {shard[0]}/{shard[1]} of {total})" if shard else ""
    print(f"grading {len(paths)} submission(s){of} against {assignment.name} ({assignment.title})", file=sys.stderr)
    graded = iter(
        grade_many(
            [p for p in paths if p not in refused],
            assignment,
            workers=args.workers,
            limits=limits,
            shrink=not args.no_counterexample,
        )
    )
    results = [refused_result(p, assignment, refused[p]) if p in refused else next(graded) for p in paths]
    for r, name in zip(results, all_names):
        r.name = name
    for stream in (sys.stdout, sys.stderr):  # a terminal that is not UTF-8 gets escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    status = 0
    try:
        write_reports(results, args.out, formats, assignment, isolation=_isolation_once())
        if shard is not None:
            write_manifest(args.out, shard, [r.name for r in results], total, assignment.name, formats)
    except ResultsWriteError as e:
        print(f"bprop check: {e}", file=sys.stderr)
        status = 1
    print(terminal(results, details=not args.brief))
    print(f"\nresults written to {printable(str(args.out), False)}/ ({', '.join(formats)})")
    if "autolab" in formats:
        if len(results) == 1:  # Autolab reads the last line of the autograder's standard output
            sys.stdout.flush()
            print(json.dumps(autolab(results[0])))
        else:
            print(
                "bprop check: autolab scores are printed for one submission only (see <name>/autolab.json)",
                file=sys.stderr,
            )
    return status


def _isolation_once() -> dict | None:
    """What protected the children of this run (one probe child; None if even that cannot start)."""
    from grading.sandbox import SandboxError, isolation

    try:
        return isolation()
    except SandboxError as e:
        print(f"bprop check: the isolation probe failed: {e}", file=sys.stderr)
        return None


def screen(roots: list, paths: list[Path]) -> dict[Path, str]:
    """Submissions the grader must not open, with the reason: a symbolic link (to a root-only file,
    say), a file that resolves outside the folder it was found in, or a hard link (one file under two
    names: which name is the author's cannot be told, so neither is graded and the instructor sees
    why). Nothing is read from them."""
    folders = [(Path(r), Path(os.path.realpath(r))) for r in roots if Path(r).is_dir()]
    refused = {}
    for p in paths:
        real = Path(os.path.realpath(p))
        found_in = [resolved for given, resolved in folders if Path(p).is_relative_to(given)]
        if os.path.islink(p):
            refused[p] = "refused: a symbolic link (submissions must be regular files inside the submissions folder)"
        elif found_in and not any(real.is_relative_to(f) for f in found_in):
            refused[p] = "refused: the file resolves outside the submissions folder"
        elif not real.is_file() and not real.is_dir():  # a folder here is a folder submission (collect_submissions)
            refused[p] = "refused: not a regular file"
        elif real.is_file() and os.stat(p).st_nlink > 1:  # (a folder's link count is its subfolders + 2)
            refused[p] = (
                f"refused: a hard link (one file with {os.stat(p).st_nlink} names; a submission must be a file of its own)"
            )
    return refused


def refused_result(path: Path, assignment, reason: str):
    """A result for a submission that was not graded: every check 0, with the reason."""
    from grading.checks import CheckResult, SubmissionResult

    checks = [
        CheckResult(p.id, c.name, c.points, 0.0, f"not run: {reason}") for p in assignment.parts for c in p.checks
    ]
    return SubmissionResult(Path(path), assignment.name, checks, error=reason)


def add_merge_parser(subparsers) -> argparse.ArgumentParser:
    """`bprop merge OUT SHARD_OUT...`: one summary.csv and one folder of results from the shards."""
    p = subparsers.add_parser(
        "merge",
        help="combine the --out folders of `bprop check --shard I/N` runs into one",
        description="Combine the --out folders of `bprop check --shard I/N` runs: one summary.csv, summary.md, "
        "junit.xml and one folder of per-submission results. Refuses a shard given twice, a submission two shards "
        "graded, shards of different runs, and names any missing shard. Exit 0 merged, 1 refused.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="the merged results folder (must be new or empty)")
    p.add_argument("shards", nargs="+", type=Path, metavar="SHARD_OUT", help="the shards' --out folders")
    p.set_defaults(func=run_merge)
    return p


def run_merge(args: argparse.Namespace) -> int:
    from grading.shards import MergeError, merge

    try:
        written = merge(args.out, args.shards)
    except MergeError as e:
        print(f"bprop merge: {printable_line(str(e))}", file=sys.stderr)
        return 1
    folders = sum(1 for p in written if p.is_dir())
    print(f"merged {len(args.shards)} shard(s): {folders} submission(s) into {printable_line(str(args.out))}/")
    return 0


def printable_line(text: str) -> str:
    from grading.escaping import printable

    return printable(text, newlines=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bprop check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
