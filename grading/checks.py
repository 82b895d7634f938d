"""Grading one submission: reference cases, sandboxed probes, per-tensor comparison, scored checks.

    result = grade_submission(path, assignment)                  # SubmissionResult
    results = grade_many(paths, assignment, workers=2)           # in input order, one per path

Cases (built once per assignment part, in the grader): known weights and inputs, and the reference
Network's Trace on them (reference/network.py), for
    small-<dtype>      synthetic inputs on the part's small shapes (the full shapes for the function
                       format, whose notebook fixes 784 inputs)
    mnist-<dtype>      real MNIST test rows (data_loaders.load_mnist), preprocessed as the part says;
                       left out, with a note, when MNIST is not available on this machine
    stability-float64  the last layer scaled so the logits reach +-1e3, labels on the smallest logit
Known weights put every pre-activation at O(1) (no saturated derivative hides a bug) and biases
are non-zero (a dropped bias shows). Each probe (grading/adapters.py) is one sandboxed call of the
driver covering every case; the adapters turn what came back into a Trace and extra tensors, and
oracles.compare.compare(..., oracle="submission") decides each tensor. A check's score is its
points times the fraction of its (case, tensor) comparisons that pass; its output names the first
diverging tensor, the worst element and, where a hypothesis matches, the diagnosis
(grading/diagnose.py).

Which tensors belong to which check (CHECKS in grading/assignment.py):
    forward               every layer's output (function format: the prediction, sigmoid(z),
                          softmax(z), and the parameters unchanged by feed_forward_sample)
    loss                  the loss (function format: also cross_entropy_loss(y, p))
    loss_gradient         dL/d(logits) from the loss-gradient function (layer format)
    backward              each layer's dL/d(input) (layer format)
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
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from grading import adapters
from grading.adapters import Failed, ProbeRequest
from grading.assignment import Assignment, Part
from grading.diagnose import Diagnosis, RefView, diagnose
from grading.notebook import Extracted, SubmissionError, write_module
from grading.sandbox import Limits, run_calls
from oracles.compare import Row, atol, compare, compare_arrays, quantity_of, rel_error, tolerance
from reference.layers import sigmoid, softmax
from reference.network import Network
from reference.trace import LayerTrace, Trace

SEED = 20240611
STABILITY_LOGIT = 1e3
MNIST_ROWS = (0, 1, 2, 3, 4, 5, 6, 7)  # test-set rows: fixed, so every student gets the same


# Cases ------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str  # "small-float64", "mnist-float32", "stability-float64"
    kind: str  # "small" | "mnist" | "stability"
    dtype: str
    spec: object  # ModelSpec
    params: dict[str, np.ndarray]
    x: np.ndarray  # (batch, n_in)
    y: np.ndarray  # (batch,) int labels
    trace: Trace
    step_x: np.ndarray  # the batch of the training-step check (one row for per-sample formats)
    step_y: np.ndarray
    step_trace: Trace
    extra_ref: dict[str, np.ndarray] = field(default_factory=dict)  # tensors outside the Trace
    loss_finite_only: bool = False  # stability with a loss of probabilities: only finiteness


@lru_cache(maxsize=1)
def _mnist_test() -> tuple[np.ndarray, np.ndarray] | None:
    from data_loaders import DataError, load_mnist

    try:
        _, (x_test, y_test) = load_mnist()
    except DataError:
        return None
    return x_test, y_test


def _known_params(spec, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights scaled to the actual input so every pre-activation is O(1); biases in U(-0.5, 0.5)."""
    params = {}
    h = x.astype(np.float64)
    for name, ls in zip(spec.layer_names(), spec.layers):
        if ls.kind == "dense":
            n_in = h.shape[1]
            rms = float(np.sqrt((h**2).mean())) or 1.0
            W = rng.normal(0.0, 1.0 / (np.sqrt(n_in) * rms), (n_in, ls.units))
            b = rng.uniform(-0.5, 0.5, ls.units)
            params[f"{name}.W"], params[f"{name}.b"] = W, b
            h = h @ W + b
        elif ls.kind == "sigmoid":
            h = sigmoid(h)
        elif ls.kind == "relu":
            h = np.maximum(h, 0)
        elif ls.kind == "tanh":
            h = np.tanh(h)
    return params


def _inputs(part: Part, kind: str, sizes, rng) -> tuple[np.ndarray, np.ndarray] | None:
    n_out = sizes[-1]
    if kind == "mnist":
        data = _mnist_test()
        if data is None or sizes[0] != 784 or n_out != 10:
            return None
        from data_loaders import preprocess

        rows = list(MNIST_ROWS[: part.batch])
        return preprocess(data[0][rows], part.preprocess, "float64"), data[1][rows].astype(np.int64)
    top = 255.0 if part.preprocess == "raw" else 1.0
    x = rng.uniform(0.0, top, (part.batch, sizes[0]))
    return x, rng.integers(0, n_out, part.batch)


def _trace(spec, params, x, y) -> Trace:
    with np.errstate(all="ignore"):  # the stability case drives a loss of probabilities to log(0)
        return Network(spec, params).trace(x, y)


def _stable_trace(part: Part, spec, params, x, y) -> Trace:
    """The stability case's reference: for probabilities, the gradients from the logits' loss.

    softmax then cross-entropy of probabilities loses -log(0) = inf at +-1e3 logits, but softmax
    cross-entropy of the logits is the same function, computed stably; the softmax layer's
    dL/d(input) is that loss's gradient, its dL/d(output) and the loss value are left uncompared."""
    if part.loss != "cross_entropy":
        return _trace(spec, params, x, y)
    folded = spec.replace(layers=tuple(spec.layers[:-1]), loss="softmax_cross_entropy")
    logit_trace = _trace(folded, params, x, y)
    outs, _ = Network(spec, params).forward_cached(x, train=True)
    layers = [
        LayerTrace(rec.name, out, rec.grad_out, rec.grad_in, rec.grads) for rec, out in zip(logit_trace.layers, outs)
    ]
    softmax_name = spec.layer_names()[-1]
    layers.append(LayerTrace(softmax_name, outs[-1], None, logit_trace.layers[-1].grad_out, {}))
    return Trace(loss=None, layers=layers)


def build_cases(part: Part) -> list[Case]:
    """Every case of `part` (see the module doc), each with its reference trace (built once)."""
    _PARTS[_freeze(part)] = part
    return list(_build_cases(_freeze(part)))


def _freeze(part: Part):
    return (
        part.id,
        part.format,
        part.sizes,
        part.small_sizes,
        part.activations,
        part.loss,
        part.reduction,
        part.learning_rate,
        part.batch,
        part.dtypes,
        part.preprocess,
    )


_PARTS: dict = {}


@lru_cache(maxsize=16)
def _build_cases(key) -> tuple[Case, ...]:
    part = _PARTS[key]
    cases = []
    small = part.small_sizes or part.sizes
    plan = (
        [("small", small, d) for d in part.dtypes]
        + [("mnist", part.sizes, d) for d in part.dtypes]
        + [("stability", small, "float64")]
    )
    for kind, sizes, dtype in plan:
        rng = np.random.default_rng([SEED, len(sizes), sizes[0], 0 if kind != "mnist" else 1])
        data = _inputs(part, kind, sizes, rng)
        if data is None:
            continue
        x64, y = data
        spec64 = part.spec(tuple(sizes), "float64")
        params = _known_params(spec64, x64, rng)
        if kind == "stability":
            logits = (
                Network(spec64, params).forward(x64)
                if part.loss == "softmax_cross_entropy"
                else _logits(spec64, params, x64)
            )
            last = [n for n, ls in zip(spec64.layer_names(), spec64.layers) if ls.kind == "dense"][-1]
            peak = logits.flat[np.abs(logits).argmax()]
            scale = STABILITY_LOGIT / peak  # the largest logit becomes +1e3 (exp overflows past ~709)
            logits = logits * scale
            params[f"{last}.W"] *= scale
            params[f"{last}.b"] *= scale
            y = np.argmin(logits, axis=1)  # the worst case: the true class has the smallest logit
        spec = part.spec(tuple(sizes), dtype)
        params = {k: v.astype(dtype) for k, v in params.items()}
        x = x64.astype(dtype)
        trace = _stable_trace(part, spec, params, x, y) if kind == "stability" else _trace(spec, params, x, y)
        step_x, step_y = (x[:1], y[:1]) if part.format == "class" else (x, y)
        step_trace = trace if kind == "stability" else _trace(spec, params, step_x, step_y)  # no step check there
        case = Case(f"{kind}-{dtype}", kind, dtype, spec, params, x, y, trace, step_x, step_y, step_trace)
        case.loss_finite_only = kind == "stability" and part.format != "layer"
        case.extra_ref = _extra_reference(part, case)
        cases.append(case)
    return tuple(cases)


def _logits(spec, params, x) -> np.ndarray:
    """The input of the final softmax layer."""
    outs, _ = Network(spec, params).forward_cached(x, train=True)
    return outs[-2]


def _extra_reference(part: Part, case: Case) -> dict[str, np.ndarray]:
    """The reference for every tensor outside the Trace: unit functions, network forward, the step."""
    ref: dict[str, np.ndarray] = {}
    t, names = case.trace, case.spec.layer_names()
    dense = [n for n, ls in zip(names, case.spec.layers) if ls.kind == "dense"]
    if part.format == "function":
        ref["prediction"] = np.eye(t.layers[-1].out.shape[1], dtype=case.dtype)[int(np.argmax(t.layers[-1].out[0]))]
        for d in dense:
            for p in ("W", "b"):
                ref[f"unchanged by {part.names['forward']}: {d}.{p}"] = case.params[f"{d}.{p}"]
        for k, d in enumerate(dense[:-1], start=1):
            z = t[d].out  # (1, n_hidden)
            a, da = {
                "sigmoid": lambda z: (sigmoid(z), sigmoid(z) * (1 - sigmoid(z))),
                "tanh": lambda z: (np.tanh(z), 1 - np.tanh(z) ** 2),
                "relu": lambda z: (np.maximum(z, 0), (z > 0).astype(z.dtype)),
            }[part.activations[k - 1]](z)
            ref[f"{part.names['activation']}(z_{k})"] = a
            ref[f"{part.names['derivative']}(z_{k})"] = da
        ref["softmax(z_out)"] = softmax(t.layers[-1].out)
        with np.errstate(divide="ignore"):
            ref["cross_entropy_loss(y, p)"] = np.asarray(-np.log(ref["softmax(z_out)"][0, case.y[0]]))
    if case.kind == "stability":
        return ref
    if part.format == "layer" and "network_forward" in part.check_names:
        for name, rec in zip(names, case.step_trace.layers):
            ref[f"network: {name}.out"] = rec.out
    if "training_step" in part.check_names:
        for d in reversed(dense):  # backprop's order: the last layer's update is computed first
            for p in ("W", "b"):
                ref[f"step: {d}.{p}"] = case.params[f"{d}.{p}"] - part.learning_rate * case.step_trace[d].grads[p]
    return ref


# Comparing --------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One tensor of one case, compared; its diagnosis when it diverges."""

    case: str
    check: str
    row: Row
    diagnosis: Diagnosis | None = None

    @property
    def passed(self) -> bool:
        return self.row.passed


def check_of(part: Part, name: str) -> str:
    """The check a tensor belongs to (see the module doc)."""
    n = part.names
    if name.startswith("step: "):
        return "training_step"
    if name.startswith("network: "):
        return "network_forward"
    if name.startswith(("unchanged by", "prediction", "softmax(")) or name.startswith(f"{n.get('activation')}("):
        return "forward"
    if name.startswith(f"{n.get('derivative')}("):
        return "activation_derivative"
    if name.startswith("cross_entropy_loss") or name == "loss":
        return "loss"
    if name.endswith(".out"):
        return "forward"
    if name.endswith(".grad_out"):
        return "loss_gradient"
    if name.endswith(".grad_in"):
        return "backward"
    return "weight_gradients" if name.endswith(".dW") else "bias_gradients"


def compare_case(part: Part, case: Case, observed: adapters.Observed) -> list[Finding]:
    """Every tensor of the case in computation order (the trace's, then the extras), diagnosed."""
    comparison = compare(
        observed.trace,
        case.trace,
        oracle="submission",
        dtype=case.dtype,
        names=("yours", "reference"),
        check_dtype=False,
    )
    by_name = {row.name: row for row in comparison.rows}
    yours = dict(observed.trace.tensors())
    findings = []
    ordered = [(name, ref) for name, ref in case.trace.tensors() if ref is not None] + list(case.extra_ref.items())
    for name, ref in ordered:
        tol, floor = tolerance("submission", case.dtype, _quantity(part, name)), atol("submission", case.dtype)
        if name in observed.problems:
            row = Row(name, tol, passed=False, note=observed.problems[name])
        elif name in by_name:
            row = by_name[name]
        elif name in observed.extras:
            row = compare_arrays(name, observed.extras[name], ref, tol, check_dtype=False, atol=floor)
            yours[name] = observed.extras[name]
        else:
            continue  # the format does not reveal this tensor (a trace field the driver cannot see)
        if case.loss_finite_only and name in ("loss", "cross_entropy_loss(y, p)") and name not in observed.problems:
            value = np.asarray(yours.get(name, observed.extras.get(name)), np.float64)
            finite = bool(value.size) and bool(np.isfinite(value).all())
            row = Row(
                name,
                tol,
                passed=finite,
                note="finite, as required (the value of a clipped log is not compared)"
                if finite
                else f"not finite: {value}",
            )
        check = "stability" if case.kind == "stability" else check_of(part, name)
        finding = Finding(case.id, check, row)
        if not row.passed and name not in observed.problems:
            finding.diagnosis = _diagnose(part, case, name, yours.get(name), ref)
        findings.append(finding)
    return findings


def _quantity(part: Part, name: str) -> str:
    """The tolerance policy's quantity for a tensor (oracles/compare.py)."""
    if name.startswith(("step: ", "unchanged by")):
        return "parameters"
    by_check = {"forward": "forward", "network_forward": "forward", "loss": "loss", "activation_derivative": "gradient"}
    return by_check.get(check_of(part, name)) or quantity_of(name)


def _diagnose(part: Part, case: Case, name: str, yours, ref) -> Diagnosis | None:
    if yours is None:
        return None
    yours = np.asarray(yours)
    if name.startswith("unchanged by"):
        return _diagnose_side_effect(case, name, yours)
    view = _view(case, "step", part) if name.startswith("step: ") else _view(case, "main")
    return diagnose(name, yours, view, expected=ref)


def _diagnose_side_effect(case: Case, name: str, yours: np.ndarray) -> Diagnosis:
    """A parameter the forward pass changed; np.dot(a, W, b) overwrites b with a @ W."""
    layer, p = name.split(": ")[1].split(".")
    i = case.spec.layer_names().index(layer)
    x_in = case.x if i == 0 else case.trace.layers[i - 1].out
    product = x_in @ case.params[f"{layer}.W"]  # (1, n_out)
    if p == "b" and yours.size == product.size:
        err = rel_error(yours.reshape(product.shape), product)
        tol = tolerance("submission", case.dtype, "forward")
        if err <= tol:
            return Diagnosis(
                "overwritten",
                f"the forward pass overwrote {layer}'s bias with x @ W (relative error {err:.1g}): np.dot's third "
                "argument is `out`, so np.dot(a, W, b) writes the product into b instead of adding b",
            )
    return Diagnosis("overwritten", f"the forward pass changed {layer}.{p}; a forward pass must not modify parameters")


def _view(case: Case, which: str, part: Part | None = None) -> RefView:
    if which == "step":
        return RefView(
            case.spec, case.params, case.step_x, case.step_y, case.step_trace, part.learning_rate, case.dtype
        )
    return RefView(case.spec, case.params, case.x, case.y, case.trace, adapters.PROBE_LR, case.dtype)


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

    @property
    def score(self) -> float:
        return round(sum(c.score for c in self.checks), 2)

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.checks)


def default_limits(part: Part, base: Limits | None = None) -> Limits:
    base = base or Limits()
    return dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in part.limits.items()})


def run_probes(module_path: Path, parts: list[Part], limits: Limits | None = None) -> list[dict[str, list]]:
    """Per part, {probe: [per-case record or Failed]}: one sandboxed call per probe, all of them in
    one child where the submission allows (each call imports the submission afresh; a call that
    kills its child gets its verdict and the next call a new child). Parts whose limits differ run
    in children of their own."""
    plans = [(part, build_cases(part)) for part in parts]
    out: list[dict[str, list]] = [{} for _ in parts]
    groups: dict[Limits, list[int]] = {}
    for k, part in enumerate(parts):
        groups.setdefault(default_limits(part, limits), []).append(k)
    for group_limits, members in groups.items():
        reqs = [(k, r) for k in members for r in adapters.requests(plans[k][0], plans[k][1])]
        outcomes = run_calls(module_path, adapters.DRIVER, [(r.function, r.kwargs) for _, r in reqs], group_limits)
        for (k, req), outcome in zip(reqs, outcomes):
            out[k][req.name] = _per_case(req, outcome, len(plans[k][1]))
    return out


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
        findings.extend(compare_case(part, case, adapters.observe(part, case, results)))
    return [_score(part, check, [f for f in findings if f.check == check.name]) for check in part.checks], findings


def grade_module(
    module_path: Path, parts: list[Part], limits: Limits | None = None
) -> list[tuple[list[CheckResult], list[Finding]]]:
    """Every part of an assignment on an extracted submission module."""
    return [grade_part(part, probes) for part, probes in zip(parts, run_probes(module_path, parts, limits))]


def _score(part: Part, check, findings: list[Finding]) -> CheckResult:
    from grading.feedback import explain_check

    if not findings:
        return CheckResult(
            part.id, check.name, check.points, 0.0, "nothing to compare: the cases produced no tensor for this check"
        )
    passed = sum(f.passed for f in findings)
    score = round(check.points * passed / len(findings), 2)
    return CheckResult(part.id, check.name, check.points, score, explain_check(findings, passed), findings)


def grade_submission(path: Path, assignment: Assignment, limits: Limits | None = None) -> SubmissionResult:
    """Every check of every part for one submission; a result with the reason even when nothing ran."""
    start = time.perf_counter()
    path = Path(path)
    result = SubmissionResult(path, assignment.name, [], name=path.stem)
    with tempfile.TemporaryDirectory(prefix="bprop-grade-") as tmp:
        try:
            module_path, extracted = write_module(path, assignment.needed_names(), Path(tmp))
        except (SubmissionError, OSError, UnicodeDecodeError) as e:
            return _nothing_ran(result, assignment, str(e), start)
        result.notes.append(extracted.summary())
        if any(not any(c.kind == "mnist" for c in build_cases(p)) for p in assignment.parts):
            result.notes.append(
                "Real MNIST rows were not checked: MNIST is not available on this machine (data_loaders)."
            )
        all_findings = []
        for checks, findings in grade_module(module_path, list(assignment.parts), limits):
            result.checks.extend(checks)
            all_findings.extend(findings)
    _first_divergence(result, all_findings)
    _whole_failure(result, all_findings, extracted)
    result.seconds = time.perf_counter() - start
    return result


def _nothing_ran(result: SubmissionResult, assignment: Assignment, reason: str, start: float) -> SubmissionResult:
    result.error = reason
    for part in assignment.parts:
        for check in part.checks:
            result.checks.append(CheckResult(part.id, check.name, check.points, 0.0, f"not run: {reason}"))
    result.seconds = time.perf_counter() - start
    return result


def _first_divergence(result: SubmissionResult, findings: list[Finding]) -> None:
    ordered = [f for f in findings if "stability" not in f.case] + [f for f in findings if "stability" in f.case]
    first = next((f for f in ordered if not f.passed), None)
    if first is not None:
        result.first_divergence = f"{first.row.name} ({first.case})"
        result.diagnosis = first.diagnosis.text if first.diagnosis else None


def _whole_failure(result: SubmissionResult, findings: list[Finding], extracted: Extracted) -> None:
    """When every comparison failed for one and the same reason (an import crash), that is the verdict."""
    notes = {f.row.note for f in findings if not f.passed}
    if findings and not any(f.passed for f in findings) and len(notes) == 1:
        result.error = next(iter(notes)).splitlines()[0]


def collect_submissions(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched (recursively) for .py and .ipynb, sorted; checkpoints skipped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [
                f
                for f in sorted(p.rglob("*"))
                if f.suffix in (".py", ".ipynb")
                and f.is_file()
                and not any(part.startswith((".", "__")) for part in f.relative_to(p).parts)
            ]
            out.extend(found)
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
    paths: list[Path], assignment: Assignment, workers: int = 2, limits: Limits | None = None, on_result=None
) -> list[SubmissionResult]:
    """Grade in parallel (each submission's calls in their own sandbox children); input order kept."""
    names = unique_names(paths)
    for part in assignment.parts:  # build the reference cases once, before the workers share them
        build_cases(part)

    def one(i: int) -> SubmissionResult:
        try:
            r = grade_submission(paths[i], assignment, limits)
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
