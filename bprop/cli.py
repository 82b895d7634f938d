"""bprop command line: `bprop validate` (three-way MNIST validation), `bprop check` (submissions).

    bprop validate                         every preset, float64 and float32, seed 0, 3 epochs
    bprop validate --preset mnist-relu-batched --dtype float64 --epochs 1 --limit 5000
    bprop validate --seeds 5 --preset mnist-sigmoid-per-sample
    bprop check ...                        grading.cli (student submissions)
    bprop merge OUT SHARD_OUT...           grading.cli (the outputs of `bprop check --shard I/N`)
    bprop autograder PLATFORM ...          grading.deploy (a Gradescope zip, a PrairieLearn grader)

Exit status: 0 every acceptance check passes; 1 some check fails (the reasons are printed);
2 the command could not run (bad options, missing data or framework).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _frameworks(text: str) -> tuple[str, ...]:
    from bprop.jobs import FRAMEWORKS

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if n not in FRAMEWORKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(FRAMEWORKS)}, got {text!r}")
    return names


def add_validate_parser(subparsers) -> None:
    from bprop.jobs import FRAMEWORKS
    from reference.spec import DTYPES, PRESETS

    p = subparsers.add_parser(
        "validate",
        help="train the reference, the torch twin and the keras twin side by side on MNIST and compare",
        description="Train the numpy reference, the PyTorch twin and the Keras twin side by side from "
        "identical weights and batch order, compare them after every epoch, judge each preset against "
        "its acceptance, and write a report (table on stdout, OUT/report.md, OUT/results.json, PNGs).",
    )
    p.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        dest="presets",
        help="a preset to run (repeatable; default: all)",
    )
    p.add_argument(
        "--dtype", action="append", choices=list(DTYPES), dest="dtypes", help="float64 and/or float32 (default: both)"
    )
    p.add_argument("--epochs", type=_positive_int, help="epochs per run (default: each preset's, 3)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds", type=_positive_int, metavar="N", help="run seeds 0..N-1 (mean and spread are reported)"
    )
    seeds.add_argument("--seed", type=int, action="append", help="run this seed (repeatable; default: 0)")
    p.add_argument(
        "--frameworks",
        type=_frameworks,
        default=FRAMEWORKS,
        help=f"comma-separated twins to run besides the reference (default: {','.join(FRAMEWORKS)})",
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="use only the first N training and N test rows")
    p.add_argument(
        "--out", type=Path, default=Path("bprop-report"), metavar="DIR", help="output folder (default: ./bprop-report)"
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="worker processes (default 2; 1 runs everything in this process, one framework after another)",
    )
    p.add_argument(
        "--divergence-steps",
        type=int,
        default=3000,
        metavar="N",
        help="per-sample presets: steps of the step-by-step divergence run (default 3000; 0: none)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", action="store_true", default=None, help="progress bars even when not on a terminal"
    )
    progress.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")


def run_validate(args: argparse.Namespace, argv: list[str]) -> int:
    from bprop.validate import Options, frameworks_to_run, run

    seeds = list(range(args.seeds)) if args.seeds else (args.seed or [0])
    options = Options(
        presets=args.presets or Options().presets,
        dtypes=args.dtypes or Options().dtypes,
        seeds=seeds,
        epochs=args.epochs,
        frameworks=args.frameworks,
        limit=args.limit,
        out=args.out,
        workers=args.workers,
        divergence_steps=args.divergence_steps,
        progress=args.progress,
        plots=not args.no_plots,
        command="bprop " + " ".join(shlex.quote(a) for a in argv),
    )
    try:
        options.check()
        missing = _missing_frameworks(frameworks_to_run(options))
        if missing:
            print(f"bprop validate: {missing}", file=sys.stderr)
            return EXIT_USAGE
        _check_data(options)
    except ValueError as e:
        print(f"bprop validate: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(options)


def _missing_frameworks(frameworks: tuple[str, ...]) -> str | None:
    """A message naming the frameworks that cannot be imported (without importing them), or None."""
    from importlib.util import find_spec

    from oracles import TWIN_KINDS

    missing = [f for f in frameworks if f in TWIN_KINDS and find_spec(f) is None]  # a twin kind is its module
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not installed; install the oracles extra (pip install -e '.[oracles]') "
        f"or leave it out with --frameworks {','.join(f for f in frameworks if f not in missing)}"
    )


def _check_data(options) -> None:
    """Fail early (ValueError, with the loader's message) when a preset's dataset cannot be loaded."""
    from bprop.jobs import load_data
    from data_loaders import DataError
    from reference.spec import preset

    seen = set()
    for name in options.presets:
        spec = preset(name, dtype=options.dtypes[0])
        if spec.dataset in seen:
            continue
        seen.add(spec.dataset)
        try:
            load_data(spec, options.limit)
        except DataError as e:
            raise ValueError(f"cannot load {spec.dataset} for preset {name}: {e}") from e


def add_check_parser(subparsers) -> bool:
    """The `check` subcommand from grading.cli; False (and a stub parser) when grading is not there."""
    try:
        from grading import cli as grading_cli
    except ImportError as e:
        p = subparsers.add_parser("check", help="check student submissions (needs the grading package)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(check_unavailable=f"{type(e).__name__}: {e}")
        return False
    grading_cli.add_parser(subparsers)
    grading_cli.add_merge_parser(subparsers)
    from grading import deploy

    deploy.add_parser(subparsers)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bprop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_validate_parser(subparsers)
    add_check_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return run_validate(args, argv)
    if args.command == "check":
        unavailable = getattr(args, "check_unavailable", None)
        if unavailable:
            print(f"bprop check: the grading package is not available ({unavailable})", file=sys.stderr)
            return EXIT_USAGE
        from grading import cli as grading_cli

        return grading_cli.run(args)
    if args.command in ("merge", "autograder"):  # registered with `check` (grading.cli, grading.deploy)
        return args.func(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
