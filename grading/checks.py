"""Grading one submission: reference cases, sandboxed probes, per-tensor comparison, scored checks.

    result = grade_submission(path, assignment)                  # SubmissionResult
    results = grade_many(paths, assignment, workers=2)           # in input order, one per path

Cases (built once per distinct assignment part, in the grader, by the part's format: its
build_cases, grading/formats/; the cache key is every field of the part). The notebook formats'
(grading/formats/_mlp.py) are known weights, inputs and labels on
    small-<dtype>      the part's own small shapes (the full shapes for the function format)
    square-, distinct-, width1-, odd-float64
                       the shape sweep (Part.sweep): every layer square; every size and the batch
                       different; a width of 1 with a batch of 1; odd sizes with an odd batch
    mnist-<dtype>      real MNIST test rows (data_loaders.load_mnist), preprocessed as the part says;
                       left out, with a note, when MNIST is not available on this machine
    stability-float64  the last layer scaled so the logits reach +-1e3, labels on the smallest logit
Known weights put every pre-activation at O(1) (no saturated derivative hides a bug) and biases
are non-zero (a dropped bias shows). Per case the format's plan draws each
function's probe inputs of its own (per layer, per helper: never the reference chain) and compute
the reference's value of every tensor on them (adapters.Expected); none of it is sent. One
sandboxed call per student function covers every case (a crash costs only that function). What
came back is hostile input: anything but a real-number array of the expected shape fails with the
reason (_hostile_value); the rest is compared under the "submission" policy of oracles/compare.py.
A check scores all or nothing (the default) or, with `scoring = "fraction"`, its points times the
fraction of its (case, tensor) comparisons that agree; its output names the first diverging
tensor, the worst element and, where a hypothesis matches, the diagnosis (grading/diagnose.py).

Which tensors belong to which check of a notebook format (its CHECKS; Key.check):
    forward               each layer's output, each alone on its own input (function format: the
                          prediction, sigmoid(z), softmax(z), and the parameters unchanged by
                          feed_forward_sample; class format: the probabilities)
    loss                  the loss (function format: also cross_entropy_loss(y, p) unless provided)
    loss_gradient         dL/d(logits) from the loss-gradient function (layer format)
    backward              each layer's dL/d(input) for a dL/d(output) of its own (layer format)
    activation_derivative dsigmoid(z) (function format)
    weight_gradients      each dense layer's dL/dW (read back from the update where needed)
    bias_gradients        each dense layer's dL/db
    network_forward       forward(network, X): every activation (layer format)
    training_step         the parameters after one training step at the assignment's rate
    stability             every tensor above in the stability case: finite, and equal to the
                          reference (a loss of probabilities only needs to be finite)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from grading import adapters
from grading import formats as format_modules
from grading.adapters import Failed, Key, ProbeRequest, Problem
from grading.assignment import Assignment, Part
from grading.diagnose import Diagnosis, diagnose, diagnose_alternatives
from grading.formats._mlp import MNIST_ROWS, Case, make_case  # noqa: F401 (moved there; kept importable here)
from grading.formats._mlp import known_params as _known_params  # noqa: F401
from grading.notebook import Extracted, SubmissionError, write_module
from grading.sandbox import Limits, run_calls
from oracles.compare import Row, atol, compare_arrays, tolerance

SEED = 20240611  # the public default; BPROP_PROBE_SEED overrides it (see probe_seed)
SEED_ENV = "BPROP_PROBE_SEED"


def probe_seed() -> int:
    """The seed of every case's weights, inputs and probe inputs: BPROP_PROBE_SEED when set.

    The default is in this public file, so anyone can rebuild the cases offline and ship a table of
    answers keyed by input; an instructor who keeps BPROP_PROBE_SEED secret (any integer, the same
    for the whole class so that every student gets the same probes) closes that door."""
    raw = os.environ.get(SEED_ENV)
    if raw is None or raw == "":
        return SEED
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}: expected a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{SEED_ENV}: expected a non-negative integer, got {raw!r}")
    return value


# Cases ------------------------------------------------------------------------------------------


def build_cases(part: Part) -> list[Case]:
    """Every case of `part` (see the module doc), each with its probes and expected values (built once
    per distinct part: the cache key is the whole part, names, checks and provided functions included)."""
    key = (_freeze(part), probe_seed())
    _PARTS[key] = part
    return list(_build_cases(key))


def _freeze(value):
    """A hashable image of everything a case depends on: every field of the part, dicts included."""
    if dataclasses.is_dataclass(value):
        return (type(value).__name__, *((f.name, _freeze(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


_PARTS: dict = {}


@lru_cache(maxsize=16)
def _build_cases(key) -> tuple[Case, ...]:
    part, seed = _PARTS[key], key[1]
    return tuple(format_modules.get(part.format).build_cases(part, seed))  # the format plans its cases


# Comparing --------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One tensor of one case, compared; its diagnosis when it diverges."""

    case: str
    check: str
    row: Row
    diagnosis: Diagnosis | None = None
    key: Key | None = None
    yours: np.ndarray | None = None  # what came back (None: no usable array), for the notebook's picture
    expected: np.ndarray | None = None  # the reference's value (grader side only; never sent)

    @property
    def passed(self) -> bool:
        return self.row.passed


def _hostile_value(value, expected: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """What came back from the child, as a real-number ndarray of the expected shape, or why not.

    Anything from the child is hostile input: None, a missing entry, an object, string, bool or
    complex value, or the wrong shape fails its comparison with the reason; it never passes."""
    if isinstance(value, Problem):
        return None, str(value)
    if value is None:
        return None, "no answer: None came back"
    if isinstance(value, bool | np.bool_):
        return None, f"a bool ({value}) came back, expected an array of numbers"
    if isinstance(value, int | float | np.integer | np.floating):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        return None, f"a {type(value).__name__} came back, expected an array of numbers"
    if value.dtype.kind not in "iuf":
        return value, f"dtype {value.dtype} came back, expected real numbers (int or float)"
    if value.shape != expected.shape:
        return value, f"shape: expected {expected.shape}, got {value.shape}"
    return value, None


def compare_case(part: Part, case: Case, observed: dict) -> list[Finding]:
    """Every expected tensor of the case, in computation order, compared and diagnosed; a tensor
    with no usable answer fails with the reason."""
    findings = []
    floor = atol("submission", case.dtype)
    for exp in case.expected:
        key = exp.key
        tol = tolerance("submission", case.dtype, exp.quantity)
        yours, problem = _hostile_value(observed.get(key, Problem(f"{key.function}: no answer came back")), exp.value)
        if problem is not None:
            row = Row(key.tensor, tol, passed=False, note=problem)
        elif exp.finite_only:
            finite = bool(yours.size) and bool(np.isfinite(yours.astype(np.float64)).all())
            note = (
                "finite, as required (the value of a clipped log is not compared)" if finite else f"not finite: {yours}"
            )
            row = Row(key.tensor, tol, passed=finite, note=note)
        else:
            row = compare_arrays(key.tensor, yours, exp.value, tol, check_dtype=False, atol=floor)
        check = "stability" if case.kind == "stability" else key.check
        finding = Finding(case.id, check, row, key=key, yours=yours, expected=exp.value)
        if not row.passed and yours is not None and yours.dtype.kind in "iuf":
            finding.diagnosis = _diagnose(part, case, exp, yours)
        findings.append(finding)
    return findings


def _diagnose(part: Part, case, exp, yours: np.ndarray) -> Diagnosis | None:
    if exp.alternatives is not None:  # a registered format's hypotheses, computed when it planned the case
        with np.errstate(all="ignore"):
            return diagnose_alternatives(exp.key.tensor, yours, exp.value, exp.alternatives, case.dtype, exp.quantity)
    module = format_modules.get(part.format)
    if hasattr(module, "diagnose"):  # a format's own (the notebook formats': the RefView hypotheses)
        return module.diagnose(part, case, exp, yours)
    with np.errstate(all="ignore"):
        return diagnose(exp.key.tensor, yours, exp.view, expected=exp.value, key=exp.key)


# Running ----------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    part: str
    name: str
    points: float
    score: float
    output: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.part}: {self.name}"

    @property
    def passed(self) -> bool:
        return self.score >= self.points


@dataclass
class SubmissionResult:
    path: Path
    assignment: str
    checks: list[CheckResult]
    first_divergence: str | None = None  # "dense_2.dW (small-float64)"
    diagnosis: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why nothing could be graded
    seconds: float = 0.0
    name: str = ""  # the results folder name (the file stem, made unique in a batch)
    verdicts: list[str] = field(default_factory=list)  # "<function>: <sandbox verdict>" of calls that failed
    first_finding: Finding | None = None  # the comparison first_divergence names
    findings: list[Finding] = field(default_factory=list)  # every comparison, in computation order
    counterexample: object = None  # grading.shrink.Counterexample for the first failing comparison, if one fails

    @property
    def status(self) -> str:
        """graded | crashed | timed out | refused | forbidden import (summary.csv's status column)."""
        texts = [self.error or "", *self.verdicts]
        if any("forbidden" in t.lower() for t in texts):
            return "forbidden import"
        if self.error and not self.verdicts and not any(c.findings for c in self.checks):
            return "refused"  # nothing ran: the file could not be read or extracted
        if any("timed out" in t or "CPU time limit" in t for t in self.verdicts):
            return "timed out"
        if self.verdicts:
            return "crashed"
        return "graded"

    @property
    def score(self) -> float:
        return round(sum(c.score for c in self.checks), 2)

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.checks)


def default_limits(part: Part, base: Limits | None = None) -> Limits:
    base = base or Limits()
    return dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in part.limits.items()})


def run_probes(
    module_path: Path,
    parts: list[Part],
    limits: Limits | None = None,
    verdicts: list[str] | None = None,
    functions=None,
) -> list[dict[str, list]]:
    """Per part, {student function: [per-case record or Failed]}: one sandboxed call per student
    function, all of them in one child where the submission allows (each call imports the submission
    afresh; a call that kills its child gets its verdict and the rest run in a fresh child, so a crash
    costs only the function that crashed). Parts whose limits differ run in children of their own.
    The failed calls' verdicts are appended to `verdicts` as "<function>: <verdict>". `functions`, a
    predicate on the call's name, leaves the other calls out (bprop.check's `only=`)."""
    plans = [(part, build_cases(part)) for part in parts]
    out: list[dict[str, list]] = [{} for _ in parts]
    groups: dict[Limits, list[int]] = {}
    for k, part in enumerate(parts):
        groups.setdefault(default_limits(part, limits), []).append(k)
    for group_limits, members in groups.items():
        reqs = [(k, r) for k in members for r in adapters.requests(plans[k][0], plans[k][1])]
        if functions is not None:  # only these student functions (Key.function) are called; the rest "not run"
            reqs = [(k, r) for k, r in reqs if functions(r.name)]
        by_driver: dict[Path, list] = {}
        for k, r in reqs:  # each registered format has a driver of its own
            by_driver.setdefault(driver_of(plans[k][0]), []).append((k, r))
        done = []
        for driver, group in by_driver.items():
            calls = [(r.function, r.kwargs) for _, r in group]
            done.extend(zip(group, run_calls(module_path, driver, calls, group_limits)))
        for (k, req), outcome in done:
            out[k][req.name] = _per_case(req, outcome, len(plans[k][1]))
            if not outcome.ok and verdicts is not None:
                verdicts.append(f"{req.name}: {outcome.verdict}")
    return out


def driver_of(part: Part) -> Path:
    """The child-side driver file of the part's format."""
    return format_modules.get(part.format).DRIVER


def observe(part: Part, case, results: dict) -> dict:
    """{Key: what came back}, read by the part's format (grading/formats/)."""
    return format_modules.get(part.format).observe(part, case, results)


def case_notes(part: Part) -> list[str]:
    """What the part's format says about its cases (the notebook formats: MNIST not available)."""
    module = format_modules.get(part.format)
    return list(module.notes(part, build_cases(part))) if hasattr(module, "notes") else []


def _per_case(req: ProbeRequest, outcome, n_cases: int) -> list:
    per_case: list = [None] * n_cases
    if not outcome.ok:
        reason = outcome.verdict or "the sandboxed call failed"
        if outcome.stdout.strip():
            reason += f"\n    output: {outcome.stdout.strip()[-300:]}"
        if outcome.traceback:
            reason += "\n    " + outcome.traceback.strip().splitlines()[-1][:300]
        for i in req.cases:
            per_case[i] = Failed(reason)
        return per_case
    values = outcome.value
    if not isinstance(values, list) or len(values) != len(req.cases):
        for i in req.cases:
            per_case[i] = Failed(f"the driver returned {type(values).__name__}, expected one record per case")
        return per_case
    for i, v in zip(req.cases, values):
        per_case[i] = v
    return per_case


def grade_part(part: Part, probes: dict[str, list]) -> tuple[list[CheckResult], list[Finding]]:
    """The checks of one part from its probes' results (see run_probes)."""
    cases = build_cases(part)
    findings: list[Finding] = []
    for i, case in enumerate(cases):
        results = {name: values[i] for name, values in probes.items() if values[i] is not None}
        findings.extend(compare_case(part, case, observe(part, case, results)))
    return [_score(part, check, [f for f in findings if f.check == check.name]) for check in part.checks], findings


def grade_module(
    module_path: Path,
    parts: list[Part],
    limits: Limits | None = None,
    verdicts: list[str] | None = None,
    functions=None,
) -> list[tuple[list[CheckResult], list[Finding]]]:
    """Every part of an assignment on an extracted submission module (see run_probes for `functions`)."""
    probes = run_probes(module_path, parts, limits, verdicts, functions)
    return [grade_part(part, part_probes) for part, part_probes in zip(parts, probes)]


def _score(part: Part, check, findings: list[Finding]) -> CheckResult:
    from grading.feedback import explain_check

    if not findings:
        return CheckResult(
            part.id, check.name, check.points, 0.0, "nothing to compare: the cases produced no tensor for this check"
        )
    passed = sum(f.passed for f in findings)
    if check.scoring == "fraction":
        score = round(check.points * passed / len(findings), 2)
    else:  # all_or_nothing
        score = check.points if passed == len(findings) else 0.0
    output = explain_check(findings, passed)
    if check.scoring != "fraction" and passed < len(findings):
        output += f"\n  (scored all or nothing: {passed} of {len(findings)} agree)"
    return CheckResult(part.id, check.name, check.points, score, output, findings)


def grade_submission(
    path: Path, assignment: Assignment, limits: Limits | None = None, shrink: bool = True, functions=None
) -> SubmissionResult:
    """Every check of every part for one submission; a result with the reason even when nothing ran.
    With `shrink`, the first failing comparison also gets a counterexample (grading/shrink.py);
    `functions` (a predicate on a student function's name) calls only those (run_probes)."""
    start = time.perf_counter()
    path = Path(path)
    result = SubmissionResult(path, assignment.name, [], name=path.stem)
    with tempfile.TemporaryDirectory(prefix="bprop-grade-") as tmp:
        try:
            module_path, extracted = write_submission(path, assignment, Path(tmp))
        except (SubmissionError, OSError, UnicodeDecodeError) as e:
            return _nothing_ran(result, assignment, str(e), start)
        result.notes.append(extracted.summary())
        result.notes.extend(dict.fromkeys(n for p in assignment.parts for n in case_notes(p)))
        all_findings, owner = [], []
        for part, (checks, findings) in zip(
            assignment.parts, grade_module(module_path, list(assignment.parts), limits, result.verdicts, functions)
        ):
            result.checks.extend(checks)
            all_findings.extend(findings)
            owner.extend([part] * len(findings))
        result.findings = all_findings
        first = _first_divergence(result, all_findings)
        if shrink and first is not None:
            from grading.shrink import ShrinkFailed, counterexample

            try:
                result.counterexample = counterexample(
                    module_path, next(p for p, f in zip(owner, all_findings) if f is first), first, limits
                )
            except ShrinkFailed as e:
                result.notes.append(f"no counterexample: {e}")
    _whole_failure(result, all_findings, extracted)
    result.seconds = time.perf_counter() - start
    return result


def write_submission(path: Path, assignment: Assignment, out_dir: Path) -> tuple[Path, Extracted]:
    """The submission as one module in out_dir: a registered format's own shape (its `assemble`,
    such as CS231n's cs231n/ folder), else the notebook or .py file's extraction."""
    for part in assignment.parts:
        module = format_modules.get(part.format)
        if module is not None and hasattr(module, "assemble"):
            made = module.assemble(path, assignment.needed_names(), out_dir)
            if made is not None:
                return made
    return write_module(path, assignment.needed_names(), out_dir)


def _nothing_ran(result: SubmissionResult, assignment: Assignment, reason: str, start: float) -> SubmissionResult:
    result.error = reason
    for part in assignment.parts:
        for check in part.checks:
            result.checks.append(CheckResult(part.id, check.name, check.points, 0.0, f"not run: {reason}"))
    result.seconds = time.perf_counter() - start
    return result


def _first_divergence(result: SubmissionResult, findings: list[Finding]) -> Finding | None:
    ordered = [f for f in findings if "stability" not in f.case] + [f for f in findings if "stability" in f.case]
    first = next((f for f in ordered if not f.passed), None)
    if first is not None:
        result.first_divergence = f"{first.row.name} ({first.case})"
        result.diagnosis = first.diagnosis.text if first.diagnosis else None
        result.first_finding = first
    return first


def _whole_failure(result: SubmissionResult, findings: list[Finding], extracted: Extracted) -> None:
    """When every comparison failed for one and the same reason (an import crash), that is the verdict."""
    notes = {f.row.note.removeprefix(f"{f.key.function}: ") if f.key else f.row.note for f in findings if not f.passed}
    if findings and not any(f.passed for f in findings) and len(notes) == 1 and next(iter(notes)):
        result.error = next(iter(notes)).splitlines()[0]


def _folder_submission(path: Path) -> bool:
    """A folder some registered format grades as ONE submission (CS231n's: it holds the cs231n/ package)."""
    return any(
        getattr(format_modules.get(name), "is_folder_submission", lambda _: False)(path)
        for name in format_modules.names()
    )


def collect_submissions(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched (recursively) for .py and .ipynb, sorted; checkpoints skipped.
    A folder a registered format grades whole (one holding CS231n's cs231n/ package) is one
    submission, its files not graded one by one; so is such a folder given directly."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and _folder_submission(p):
            out.append(p)
        elif p.is_dir():
            hidden = lambda f, top=p: any(part.startswith((".", "__")) for part in f.relative_to(top).parts)  # noqa: E731
            whole = [d for d in sorted(p.rglob("*")) if d.is_dir() and not d.is_symlink() and not hidden(d)]
            whole = [d for d in whole if _folder_submission(d)]
            whole = [d for d in whole if not any(d != o and d.is_relative_to(o) for o in whole)]  # the outermost
            found = [
                f
                for f in sorted(p.rglob("*"))
                if f.suffix in (".py", ".ipynb")
                and f.is_file()
                and not hidden(f)
                and not any(f.is_relative_to(d) for d in whole)
            ]
            out.extend(sorted(found + whole))
        else:
            out.append(p)
    return out


def unique_names(paths: list[Path]) -> list[str]:
    """The results folder per submission: its file stem; a later clash gets the suffix, then a number."""
    taken: set[str] = set()
    out = []
    for p in paths:
        name, k = p.stem, 2
        if name in taken:
            name = f"{p.stem}_{p.suffix.lstrip('.')}"
        while name in taken:
            name, k = f"{p.stem}_{k}", k + 1
        taken.add(name)
        out.append(name)
    return out


def grade_many(
    paths: list[Path],
    assignment: Assignment,
    workers: int = 2,
    limits: Limits | None = None,
    on_result=None,
    shrink: bool = True,
) -> list[SubmissionResult]:
    """Grade in parallel (each submission's calls in their own sandbox children); input order kept.
    `shrink=False`: no hand-sized counterexample (one sandboxed call less per failing submission)."""
    names = unique_names(paths)
    for part in assignment.parts:  # build the reference cases once, before the workers share them
        build_cases(part)

    def one(i: int) -> SubmissionResult:
        try:
            r = grade_submission(paths[i], assignment, limits, shrink=shrink)
        except Exception as e:  # a grader bug must not lose the batch: this submission gets the reason
            r = _nothing_ran(
                SubmissionResult(Path(paths[i]), assignment.name, []),
                assignment,
                f"internal grading error: {type(e).__name__}: {e}",
                time.perf_counter(),
            )
        r.name = names[i]
        if on_result is not None:
            on_result(r)
        return r

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, range(len(paths))))
