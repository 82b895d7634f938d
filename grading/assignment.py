"""Assignments: which API a submission implements, the model it must compute, the checks and points.

    assignment = load_assignment("layer-api")          # a built-in, or a path to a .toml / .json file
    part = assignment.parts[0]
    part.spec(sizes, dtype) -> ModelSpec                # a notebook format's reference model

An assignment file (TOML or JSON, read with the standard library) has `name`, `title` and one or
more `[[parts]]`. Every part has:

    id             a short name used in check names ("mlp", "logistic")
    format         a registered format (grading/formats/: FORMATS), whose module reads the rest
    dtypes         ["float64", "float32"]
    names          optional table renaming the API (defaults: the format's NAMES)
    limits         optional {wall_s, cpu_s, memory_mb} per sandboxed call
    checks         [{name, points, scoring, visibility}] from the format's CHECKS; scoring is
                   "all_or_nothing" (the default, and the built-ins': the points when every comparison
                   agrees, else 0) or "fraction" (the points times the fraction of comparisons that
                   agree); visibility (Gradescope's names) "visible" (the default) | "hidden" |
                   "after_due_date" | "after_published": when a student sees the check's result

and its format's own fields (its parse_options). Those of the four notebook formats, "layer" |
"function" | "class" | "logistic" (a dense network: grading/formats/_mlp.py):

    sizes          the real-data architecture [n_in, hidden..., n_out]
    small_sizes    the same network with small shapes (synthetic inputs); the function format
                   has none (its notebook reshapes every sample to 784)
    activations    one per hidden layer: "relu" | "sigmoid" | "tanh"
    loss           "softmax_cross_entropy" (from logits) or "cross_entropy" (of softmax outputs)
    reduction      "mean" | "sum" over the batch
    learning_rate  the rate of the training-step check
    batch          rows per synthetic / real-data case (1 for per-sample formats)
    preprocess     "raw" | "scale255" for the MNIST rows
    provided       optional list of the API's function names the instructor gives (the notebook's
                   own helpers): they are not graded and cost nothing; only the function format's
                   helpers can be (activation, derivative, softmax, loss)

Check names are fixed per format (its CHECKS); what each covers is written in grading/checks.py
and the format's module. Besides small_sizes, every check of a notebook format runs on a sweep of
shapes (`Part.sweep`: all square, all different, a width of 1 with a batch of 1, odd sizes), so
that a bug that shows only on some shapes shows.
Top level, optionally: `forbidden`, the modules a submission may not use (default
grading.integrity.DEFAULT_FORBIDDEN; the grader's own packages are always forbidden).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from grading import formats as format_modules
from grading.integrity import DEFAULT_FORBIDDEN
from reference.spec import ModelSpec

BUILTIN_DIR = Path(__file__).parent / "assignments"
FORMATS = format_modules.names()  # every registered format (grading/formats/)


def __getattr__(name: str):
    """The per-format tables of before the registry (CHECKS, DEFAULT_NAMES), read from it."""
    if name == "CHECKS":
        return {f: tuple(format_modules.get(f).CHECKS) for f in FORMATS}
    if name == "DEFAULT_NAMES":
        return {f: dict(format_modules.get(f).NAMES) for f in FORMATS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AssignmentError(ValueError):
    """An assignment file that cannot be used; the message names the file and the field."""


SCORING = ("all_or_nothing", "fraction")
VISIBILITY = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's test visibility


@dataclass(frozen=True)
class Check:
    name: str
    points: float
    scoring: str = "all_or_nothing"
    visibility: str = "visible"  # one of VISIBILITY


@dataclass(frozen=True)
class Part:
    id: str
    format: str
    sizes: tuple[int, ...]
    small_sizes: tuple[int, ...] | None
    activations: tuple[str, ...]
    loss: str
    reduction: str
    learning_rate: float
    batch: int
    dtypes: tuple[str, ...]
    preprocess: str
    names: dict[str, str]
    checks: tuple[Check, ...]
    limits: dict[str, float] = field(default_factory=dict)
    provided: tuple[str, ...] = ()  # function names given by the instructor: not graded
    options: dict = field(default_factory=dict)  # the format's own fields beyond these (its parse_options)

    def sweep(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(label, sizes, batch) of a notebook format's synthetic cases (its `sweep`: grading/formats/)."""
        return format_modules.get(self.format).sweep(self)

    def spec(self, sizes: tuple[int, ...], dtype: str) -> ModelSpec:
        """A notebook format's reference model on `sizes` (grading/formats/_mlp.py: model_spec)."""
        from grading.formats._mlp import model_spec

        return model_spec(self, sizes, dtype)

    @property
    def check_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)

    def needed_names(self) -> tuple[str, ...]:
        """Module-level names the drivers use: what the notebook extraction must keep."""
        return tuple(format_modules.get(self.format).needed_names(self))


@dataclass(frozen=True)
class Assignment:
    name: str
    title: str
    parts: tuple[Part, ...]
    source: str  # the file it was read from
    forbidden: tuple[str, ...] = DEFAULT_FORBIDDEN  # modules a submission may not import (grading/integrity.py)

    @property
    def max_score(self) -> float:
        return sum(c.points for p in self.parts for c in p.checks)

    def needed_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for p in self.parts for name in p.needed_names()))


def visible_only(assignment: Assignment) -> Assignment:
    """The assignment as a student may run it before grades are out: only the checks whose visibility
    is "visible" (a part left without checks is dropped). bprop.check in a notebook grades this."""
    parts = tuple(
        dataclasses.replace(p, checks=tuple(c for c in p.checks if c.visibility == "visible")) for p in assignment.parts
    )
    return dataclasses.replace(assignment, parts=tuple(p for p in parts if p.checks))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def load_assignment(name_or_path: str | Path) -> Assignment:
    """A built-in assignment by name ("layer-api"), or an assignment file (.toml or .json) by path."""
    path = Path(name_or_path)
    if not path.suffix and (BUILTIN_DIR / f"{name_or_path}.toml").exists():
        path = BUILTIN_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise AssignmentError(
            f"assignment {str(name_or_path)!r}: no such file, and not a built-in (built-ins: {', '.join(builtin_names())})"
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise AssignmentError(f"{path}: cannot parse: {e}") from e
    return parse_assignment(data, str(path))


def need(d: dict, key: str, where: str, kind: type | tuple[type, ...], source: str):
    """d[key], which must be there and of `kind`; else an AssignmentError naming the file and the field."""
    if key not in d:
        raise AssignmentError(f"{source}: {where}: missing field {key!r}")
    if not isinstance(d[key], kind):
        raise AssignmentError(f"{source}: {where}.{key}: expected {kind}, got {d[key]!r}")
    return d[key]


def parse_assignment(data: dict, source: str = "<dict>") -> Assignment:
    def field_of(d: dict, key: str, where: str, kind: type | tuple[type, ...]):
        return need(d, key, where, kind, source)

    name = field_of(data, "name", "top level", str)
    raw_parts = field_of(data, "parts", "top level", list)
    if not raw_parts:
        raise AssignmentError(f"{source}: parts: expected at least one [[parts]] table")
    parts = []
    for i, p in enumerate(raw_parts):
        where = f"parts[{i}]"
        fmt = field_of(p, "format", where, str)
        if fmt not in FORMATS:
            raise AssignmentError(f"{source}: {where}.format: expected one of {FORMATS}, got {fmt!r}")
        parts.append(_parse_part(p, where, source, fmt, field_of))
    ids = [p.id for p in parts]
    if len(set(ids)) != len(ids):
        raise AssignmentError(f"{source}: parts: ids must be distinct, got {ids}")
    forbidden = data.get("forbidden", list(DEFAULT_FORBIDDEN))
    if not isinstance(forbidden, list) or not all(isinstance(m, str) and m.isidentifier() for m in forbidden):
        raise AssignmentError(f"{source}: forbidden: expected a list of top-level module names, got {forbidden!r}")
    return Assignment(
        name=name, title=str(data.get("title", name)), parts=tuple(parts), source=source, forbidden=tuple(forbidden)
    )


def _parse_checks(p: dict, where: str, source: str, fmt: str, known: tuple[str, ...], need) -> tuple[Check, ...]:
    checks = []
    for j, c in enumerate(need(p, "checks", where, list)):
        cname = need(c, "name", f"{where}.checks[{j}]", str)
        if cname not in known:
            raise AssignmentError(
                f"{source}: {where}.checks[{j}].name: {cname!r} is not a {fmt}-format check; known: {known}"
            )
        points = need(c, "points", f"{where}.checks[{j}]", (int, float))
        if points < 0:
            raise AssignmentError(f"{source}: {where}.checks[{j}].points: expected >= 0, got {points}")
        scoring = c.get("scoring", "all_or_nothing")
        if scoring not in SCORING:
            raise AssignmentError(f"{source}: {where}.checks[{j}].scoring: expected one of {SCORING}, got {scoring!r}")
        visibility = c.get("visibility", "visible")
        if visibility not in VISIBILITY:
            raise AssignmentError(
                f"{source}: {where}.checks[{j}].visibility: expected one of {VISIBILITY}, got {visibility!r}"
            )
        checks.append(Check(cname, float(points), scoring, visibility))
    return tuple(checks)


def _parse_limits(p: dict, where: str, source: str) -> dict:
    limits = dict(p.get("limits", {}))
    bad = set(limits) - {"wall_s", "cpu_s", "memory_mb"}
    if bad:
        raise AssignmentError(f"{source}: {where}.limits: unknown keys {sorted(bad)}; known wall_s, cpu_s, memory_mb")
    return limits


def _parse_names(p: dict, where: str, source: str, defaults: dict[str, str]) -> dict[str, str]:
    unknown = set(p.get("names", {})) - set(defaults)
    if unknown:
        raise AssignmentError(f"{source}: {where}.names: unknown keys {sorted(unknown)}; known {sorted(defaults)}")
    return {**defaults, **p.get("names", {})}


def _parse_part(p: dict, where: str, source: str, fmt: str, need) -> Part:
    """A part: the common fields here, the format's own in its module (grading/formats/)."""
    module = format_modules.get(fmt)
    dtypes = tuple(p.get("dtypes", ["float64"]))
    if not dtypes or any(d not in ("float32", "float64") for d in dtypes):
        raise AssignmentError(
            f"{source}: {where}.dtypes: expected a subset of ['float64', 'float32'], got {list(dtypes)}"
        )
    common = {"id", "format", "names", "checks", "limits", "dtypes"}
    options = module.parse_options({k: v for k, v in p.items() if k not in common}, where, source)
    network = getattr(module, "NETWORK", False)  # a dense network's format fills Part's network fields
    fields = {k: options.pop(k) for k in NETWORK_FIELDS if k in options} if network else {}
    part = Part(
        id=str(p.get("id", fmt)),
        format=fmt,
        **{**NO_NETWORK, **fields},
        dtypes=dtypes,
        names=_parse_names(p, where, source, module.NAMES),
        checks=_parse_checks(p, where, source, fmt, tuple(module.CHECKS), need),
        limits=_parse_limits(p, where, source),
        options=options,
    )
    if hasattr(module, "validate"):  # checks across fields (provided helpers against the names)
        module.validate(part, where, source)
    return part


# the Part fields of a dense network (the notebook formats: grading/formats/_mlp.py), and their
# values for a format without one
NO_NETWORK = {
    "sizes": (),
    "small_sizes": None,
    "activations": (),
    "loss": "",
    "reduction": "mean",
    "learning_rate": 0.0,
    "batch": 0,
    "preprocess": "raw",
    "provided": (),
}
NETWORK_FIELDS = tuple(NO_NETWORK)
