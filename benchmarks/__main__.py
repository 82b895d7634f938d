"""python -m benchmarks --out FILE [--quick] [--repeats N] [--threads N] [--only reference,torch]"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports tensorflow


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import CONTENDERS, run, verdict_line
    from benchmarks.speed_table import markdown

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="write the results here as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test of the code")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="numpy BLAS threads (threadpoolctl; default 1)")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="contenders, comma-separated")
    args = parser.parse_args(argv)
    contenders = tuple(c for c in args.only.split(",") if c)
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"--only: unknown contenders {sorted(unknown)}; expected some of {list(CONTENDERS)}")
    doc = run(quick=args.quick, repeats=args.repeats, threads=args.threads, contenders=contenders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(markdown(doc))
    print()
    machine = doc["machine"]["name"]
    for dtype, ratios in doc["ratios"].items():
        for name, value in ratios.items():
            if "forward_backward" not in name:
                print(f"{dtype}  {name}: {value:.2f}  [{machine}]")
    print(
        "\ntargets (the median of the rounds' paired ratios, wall clock; their range and the CPU-time median in brackets):"
    )
    for verdict in doc["targets"]:
        print(verdict_line(verdict))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
