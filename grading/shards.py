"""Grading past one machine: a stable 1/N slice of the submissions, and merging the slices' outputs.

    parse_shard("2/3") -> (2, 3)                    I/N, 1 <= I <= N (ShardError otherwise)
    select(items, shard) -> [indices]               the I-th of N round-robin slices of items sorted by name
    write_manifest(out, shard, names, assignment, formats)   OUT/shard.json: which slice, which submissions
    merge(out, shard_dirs) -> [Path]                one summary.csv / summary.md / junit.xml and one folder of
                                                    results from the shards' --out folders

A slice is chosen from the submissions sorted by their path (not by the order given), so every
machine of a Slurm array, a Kubernetes Indexed Job or a CI matrix computes the same partition from
the same folder. The merged files list the submissions in name order (the unsharded run's order for
a folder). Results folder names are made unique over the whole folder before slicing, so a
sharded run names every submission as the unsharded run does. merge refuses two shards with the same
index, a submission that two shards both graded, shards of different N or assignments, and names the
missing shards (MergeError); it never overwrites an existing file in OUT.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from grading.escaping import printable

MANIFEST = "shard.json"
CLASS_FILES = ("summary.csv", "summary.md", "junit.xml", MANIFEST)


class ShardError(ValueError):
    """A --shard value that is not I/N with 1 <= I <= N."""


class MergeError(ValueError):
    """Shards that cannot be merged: the message names the shard folders and what is wrong."""


def parse_shard(text: str) -> tuple[int, int]:
    """ "2/3" -> (2, 3); anything else raises ShardError saying what was expected."""
    raw = str(text).strip()
    i_s, sep, n_s = raw.partition("/")
    try:
        i, n = int(i_s), int(n_s)
    except ValueError:
        i = n = 0
    if not sep or str(i) != i_s.strip() or str(n) != n_s.strip() or n < 1 or not 1 <= i <= n:
        raise ShardError(
            f"--shard: expected I/N with whole numbers 1 <= I <= N (the I-th of N slices, e.g. 1/4), got {printable(raw, False)!r}"
        )
    return i, n


def select(paths: list, shard: tuple[int, int]) -> list[int]:
    """Indices (into `paths`) of the I-th of N slices, in name order: the paths sorted by name (as
    collect_submissions sorts a folder), every N-th from the I-th. merge interleaves them back."""
    i, n = shard
    order = sorted(range(len(paths)), key=lambda k: (Path(paths[k]), k))
    return order[i - 1 :: n]


def write_manifest(out: Path, shard: tuple[int, int], names: list[str], total: int, assignment: str, formats) -> Path:
    path = Path(out) / MANIFEST
    data = {
        "shard": shard[0],
        "of": shard[1],
        "assignment": assignment,
        "submissions": total,  # in the whole folder
        "graded": names,  # this shard's results folders, in their order in summary.csv
        "reports": list(formats),
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _read_manifest(d: Path) -> dict:
    path = d / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"{d}: no {MANIFEST} (not the --out folder of `bprop check --shard I/N`)") from None
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    need = {"shard": int, "of": int, "assignment": str, "submissions": int, "graded": list, "reports": list}
    for key, kind in need.items():
        if not isinstance(data.get(key), kind):
            raise MergeError(f"{path}: field {key!r}: expected {kind.__name__}, got {data.get(key)!r}")
    return data


def merge(out: Path, shard_dirs: list[Path]) -> list[Path]:
    """Combine the shards' outputs into `out` (see the module doc). Returns what was written."""
    out = Path(out)
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise MergeError("no shard folders given")
    manifests = [_read_manifest(d) for d in dirs]
    first = manifests[0]
    for d, m in zip(dirs, manifests):
        for key in ("of", "assignment", "submissions", "reports"):
            if m[key] != first[key]:
                raise MergeError(f"{d}: {key} is {m[key]!r}, but {dirs[0]} has {first[key]!r}: not shards of one run")
    seen: dict[int, Path] = {}
    for d, m in zip(dirs, manifests):
        if m["shard"] in seen:
            raise MergeError(f"shard {m['shard']}/{m['of']} given twice: {seen[m['shard']]} and {d}")
        seen[m["shard"]] = d
    missing = [k for k in range(1, first["of"] + 1) if k not in seen]
    if missing:
        n = first["of"]
        raise MergeError(
            f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{n}' for k in missing)} "
            f"(have {', '.join(f'{k}/{n}' for k in sorted(seen))})"
        )
    owner: dict[str, Path] = {}
    for d, m in zip(dirs, manifests):
        for name in m["graded"]:
            if name.casefold() in owner:
                raise MergeError(f"submission {name!r} graded by two shards: {owner[name.casefold()]} and {d}")
            owner[name.casefold()] = d
    if sum(len(m["graded"]) for m in manifests) != first["submissions"]:
        raise MergeError(
            f"the shards graded {sum(len(m['graded']) for m in manifests)} submissions; the folder had {first['submissions']}"
        )
    if set(first["reports"]) & {"gradescope", "prairielearn", "autolab"}:  # per-submission folders expected
        lost = [str(d / name) for d, m in zip(dirs, manifests) for name in m["graded"] if not (d / name).is_dir()]
        if lost:
            raise MergeError(f"results folders missing from their shard: {', '.join(lost[:10])}")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out}: exists and is not empty (merge never overwrites results)")
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(zip(dirs, manifests), key=lambda dm: dm[1]["shard"])
    written: list[Path] = []
    for d, m in ordered:  # the results folders, each copied whole
        for name in m["graded"]:
            if (d / name).is_dir():
                shutil.copytree(d / name, out / name)
                written.append(out / name)
    written += _merge_class_files(out, dirs, manifests)
    return written


def _merge_class_files(out: Path, dirs: list[Path], manifests: list[dict]) -> list[Path]:
    """summary.csv / summary.md rows and junit.xml suites, in the unsharded run's order."""
    import xml.etree.ElementTree as ET

    written = []
    order = {name: k for k, name in enumerate(_global_order(manifests))}
    reports = manifests[0]["reports"]
    if "csv" in reports:
        header, rows = None, []
        md_head, md_rows = None, []
        for d, m in zip(dirs, manifests):
            with (d / "summary.csv").open(newline="", encoding="utf-8") as f:
                reader = list(csv.reader(f))
            if header is None:
                header = reader[0]
            elif reader[0] != header:
                raise MergeError(f"{d}/summary.csv: columns {reader[0]} differ from {header}")
            body = reader[1:]
            lines = (d / "summary.md").read_text(encoding="utf-8").splitlines()
            md_head = md_head or lines[:2]
            if len(body) != len(m["graded"]) or len(lines) - 2 != len(m["graded"]):
                raise MergeError(f"{d}: summary.csv / summary.md do not have one row per graded submission")
            rows += [(order[name], row) for name, row in zip(m["graded"], body)]
            md_rows += [(order[name], line) for name, line in zip(m["graded"], lines[2:])]
        with (out / "summary.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\r\n")
            writer.writerow(header)
            writer.writerows(row for _, row in sorted(rows, key=lambda t: t[0]))
        (out / "summary.md").write_text(
            "\n".join([*md_head, *(x for _, x in sorted(md_rows))]) + "\n", encoding="utf-8"
        )
        written += [out / "summary.csv", out / "summary.md"]
    if "junit" in reports:
        root = None
        suites = []
        for d, m in zip(dirs, manifests):
            tree = ET.parse(d / "junit.xml").getroot()
            root = root if root is not None else ET.Element(tree.tag, dict(tree.attrib))
            for suite, name in zip(tree.findall("testsuite"), m["graded"]):
                suites.append((order[name], suite))
        for key in ("tests", "failures", "errors"):
            root.set(key, str(sum(int(s.get(key, 0)) for _, s in suites)))
        for _, suite in sorted(suites, key=lambda t: t[0]):
            root.append(suite)
        ET.indent(root)
        (out / "junit.xml").write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
        written.append(out / "junit.xml")
    return written


def _global_order(manifests: list[dict]) -> list[str]:
    """The unsharded order: shard I holds sorted positions I-1, I-1+N, ...; interleave them back."""
    n = manifests[0]["of"]
    by_shard = {m["shard"]: m["graded"] for m in manifests}
    total = sum(len(v) for v in by_shard.values())
    out: list[str] = []
    for pos in range(total):
        i, k = pos % n + 1, pos // n
        out.append(by_shard[i][k])
    return out
