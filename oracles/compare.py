"""compare(trace_a, trace_b) -> Comparison: the one tolerance policy of the project lives here.

The measure. For each tensor, err = max|a - b| / max(max|a|, max|b|): the largest absolute error
relative to the tensor's largest magnitude. Element-wise relative error is the wrong measure: an
element that is 1e-9 of the tensor's scale carries no more absolute precision than its neighbours,
so its own relative error can be 1e-3 in float32 with nothing wrong. Scaling by the tensor's
maximum keeps the bar at "as good as the dtype allows for this tensor" (README, "Tolerance policy").

The policy. TOLERANCE[(oracle kind, dtype, quantity)] is the largest allowed err, ATOL the floor
for true-zero tensors. The validation job's bars are here too (DIVERGENCE_BAR, FLOAT32_ACCURACY_GAP,
ACCURACY_SLACK). Tests, the CLI, the validation job and the grader all read them from here and never
invent numbers of their own. Named here, kept where they are claimed: the per-preset accuracy floors
and agreement stretches of the validation (bprop/acceptance.py, ACCEPTANCE: claims about what a
preset learns, not tolerances) and the grader's diagnosis bars (grading/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference.trace import Trace

QUANTITIES = ("forward", "loss", "gradient", "parameters")

# oracle kind -> dtype -> quantity -> largest allowed max|a-b| / max(|a|, |b|).
#   twin: torch or keras computing the same function from the same weights.
#   numeric: central finite differences in float64 (truncation error ~eps^2, rounding ~1e-16/eps).
#   submission: a student's code against the reference (it may compute in another order or dtype).
TOLERANCE: dict[str, dict[str, dict[str, float]]] = {
    "twin": {
        "float64": {"forward": 1e-12, "loss": 1e-12, "gradient": 1e-12, "parameters": 1e-12},
        "float32": {"forward": 1e-5, "loss": 1e-5, "gradient": 1e-5, "parameters": 1e-5},
    },
    "numeric": {
        "float64": {"forward": 1e-12, "loss": 1e-12, "gradient": 1e-7, "parameters": 1e-7},
        # A float32 network against finite differences of its float64 copy (same rounded weights):
        # only float32 rounding is measured. Worst seen: loss 2.0e-6 (logsumexp - z_y cancels on a
        # small loss), gradient 1.4e-6, forward 4.3e-7: the twin float32 bar fits.
        "float32": {"forward": 1e-5, "loss": 1e-5, "gradient": 1e-5, "parameters": 1e-5},
    },
    "submission": {
        "float64": {"forward": 1e-6, "loss": 1e-6, "gradient": 1e-6, "parameters": 1e-6},
        "float32": {"forward": 1e-4, "loss": 1e-4, "gradient": 1e-4, "parameters": 1e-4},
    },
}


# An absolute floor per oracle kind and dtype, for tensors whose true value is zero (the bias
# gradient of a dense layer that feeds a batchnorm is exactly 0; rounding leaves 1e-17 there, which
# is 100% of a zero scale). A tensor passes when err <= tolerance OR max|a - b| <= ATOL. The floors
# sit at the rounding level of an O(1) loss: float64 ~1e-16 per operation, float32 ~1e-7, and for
# finite differences (oracles/numeric.py: 5-point stencil, h = 1e-5) the rounding term
# ~1.5 eps |L| / h ~ 3e-11 |L|; measured on a true-zero gradient: 2e-12 (float64), 4.5e-8 (float32).
ATOL: dict[str, dict[str, float]] = {
    "twin": {"float64": 1e-14, "float32": 1e-7},
    "numeric": {"float64": 1e-10, "float32": 1e-7},
    "submission": {"float64": 1e-10, "float32": 1e-6},
}


# The validation job (bprop validate) -------------------------------------------------------------

# "The trajectories agree" (bprop.divergence): 1e-9 max |parameter difference| in float64 (the
# validation issue's figure, seven decades above float64 rounding and far below any bug: a wrong
# gradient moves parameters by ~lr * |g| ~ 1e-3 in the first step). float32 rounding alone is ~1e-7
# per step, so there the bar is the float32 twin policy for parameters.
DIVERGENCE_BAR: dict[str, float] = {"float64": 1e-9, "float32": TOLERANCE["twin"]["float32"]["parameters"]}

# float32 parity presets: largest |twin - reference| test accuracy after every epoch (the validation
# issue: 0.05 percentage points; rounding differences of 1e-7 do move a few borderline test images).
FLOAT32_ACCURACY_GAP = 0.0005

# Accuracies are fractions k / n_test: a gap of exactly FLOAT32_ACCURACY_GAP can come out of the
# subtraction a few ulps above it (0.9 - 0.8995 = 0.000500000000000056). Far below 1 / n_test.
ACCURACY_SLACK = 1e-12


def atol(oracle: str, dtype: str | np.dtype) -> float:
    return ATOL[oracle][np.dtype(dtype).name]


def tolerance(oracle: str, dtype: str | np.dtype, quantity: str) -> float:
    dtype = np.dtype(dtype).name
    try:
        return TOLERANCE[oracle][dtype][quantity]
    except KeyError:
        raise KeyError(f"no tolerance for oracle={oracle!r}, dtype={dtype!r}, quantity={quantity!r}") from None


def quantity_of(name: str) -> str:
    """The quantity a qualified tensor name belongs to: 'dense_1.out' -> 'forward', and so on."""
    if name == "loss":
        return "loss"
    if name.endswith(".out"):
        return "forward"
    if ("." in name and name.rsplit(".", 1)[1] in ("grad_out", "grad_in")) or ".d" in name:
        return "gradient"
    return "parameters"


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max(max|a|, max|b|); 0 when both are all zeros."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b).max(initial=0.0)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    if diff == 0:
        return 0.0
    return float(diff / scale) if scale > 0 else float("inf")


@dataclass
class Row:
    """One tensor compared: where it failed, by how much, and the worst element."""

    name: str
    tol: float
    passed: bool
    atol: float = 0.0
    rel: float = float("nan")
    max_abs: float = float("nan")
    scale: float = float("nan")
    worst_index: tuple[int, ...] | None = None
    mine: float | None = None
    theirs: float | None = None
    note: str = ""

    def describe(self, names: tuple[str, str] = ("mine", "theirs")) -> str:
        if self.note and self.worst_index is None:
            return f"{self.name}: {self.note}"
        at = f" at {list(self.worst_index)}" if self.worst_index else ""
        verdict = "<=" if self.rel <= self.tol else ">"
        floor = f", but max abs error <= floor {self.atol:.0e}" if self.passed and self.rel > self.tol else ""
        text = (
            f"{self.name}: worst element{at}: {names[0]} {self.mine:.10g} vs {names[1]} {self.theirs:.10g}; "
            f"max abs error {self.max_abs:.3g}, relative to max magnitude {self.scale:.3g}: "
            f"{self.rel:.3g} {verdict} tolerance {self.tol:.0e}{floor}"
        )
        return text + (f" ({self.note})" if self.note else "")


def compare_arrays(name: str, mine, theirs, tol: float, check_dtype: bool = True, atol: float = 0.0) -> Row:
    """Shape, then dtype, then finiteness, then values: the first problem found is reported."""
    if mine is None or theirs is None:  # a missing tensor is a failure, never a silent pass
        missing = "mine" if mine is None else "theirs"
        return Row(name, tol, passed=False, note=f"missing: {missing} is None")
    a, b = np.asarray(mine), np.asarray(theirs)
    if a.shape != b.shape:
        return Row(name, tol, passed=False, note=f"shape: expected {b.shape}, got {a.shape}")
    if check_dtype and a.dtype != b.dtype:
        return Row(name, tol, passed=False, note=f"dtype: expected {b.dtype}, got {a.dtype}")
    for label, arr in (("mine", a), ("theirs", b)):
        if arr.size and not np.isfinite(arr).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            return Row(name, tol, passed=False, note=f"non-finite value {arr[idx]} in {label} at {list(idx)}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    worst = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    max_abs = float(diff.max(initial=0.0))
    scale = float(max(np.abs(a64).max(initial=0.0), np.abs(b64).max(initial=0.0)))
    rel = rel_error(a64, b64)
    return Row(
        name,
        tol,
        passed=rel <= tol or max_abs <= atol,
        atol=atol,
        rel=rel,
        max_abs=max_abs,
        scale=scale,
        worst_index=tuple(int(i) for i in worst),
        mine=float(a64[worst]) if diff.size else 0.0,
        theirs=float(b64[worst]) if diff.size else 0.0,
    )


@dataclass
class Comparison:
    rows: list[Row]
    names: tuple[str, str] = ("mine", "theirs")
    title: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def first_divergence(self) -> Row | None:
        """The first failing tensor in computation order (forward, loss, then back from the loss)."""
        return next((row for row in self.rows if not row.passed), None)

    def worst(self) -> Row | None:
        compared = [r for r in self.rows if r.worst_index is not None]
        return max(compared, key=lambda r: r.rel / r.tol) if compared else None

    def report(self, verbose: bool = False) -> str:
        head = f"{self.title}: " if self.title else ""
        first = self.first_divergence
        lines = []
        if first is None:
            worst = self.worst()
            margin = f"; worst {worst.name} at {worst.rel:.3g} (tolerance {worst.tol:.0e})" if worst else ""
            lines.append(f"{head}{len(self.rows)} tensors agree ({self.names[0]} vs {self.names[1]}){margin}")
        else:
            failed = [r for r in self.rows if not r.passed]
            lines.append(
                f"{head}{len(failed)} of {len(self.rows)} tensors diverge ({self.names[0]} vs {self.names[1]}); "
                f"first divergence: {first.name}"
            )
            lines.append("  " + first.describe(self.names))
            index = self.rows.index(first)
            if index > 0:
                lines.append("  the tensor before it agrees: " + self.rows[index - 1].describe(self.names))
        if verbose or first is not None:
            lines.extend("    " + row.describe(self.names) for row in self.rows if verbose or not row.passed)
        if self.skipped:
            lines.append(f"  not compared: {', '.join(self.skipped)}")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        if not self.passed:
            raise AssertionError(self.report())

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "first_divergence": self.first_divergence.name if self.first_divergence else None,
            "rows": [row.__dict__ for row in self.rows],
        }


def compare(
    mine: Trace,
    theirs: Trace,
    oracle: str = "twin",
    dtype: str | np.dtype | None = None,
    names: tuple[str, str] = ("reference", "oracle"),
    check_dtype: bool = True,
    title: str = "",
) -> Comparison:
    """Every tensor of two traces, each against the policy for its quantity; layers matched by name."""
    if mine.names != theirs.names:
        raise ValueError(f"compare: layer names differ: {names[0]} {mine.names} vs {names[1]} {theirs.names}")
    if dtype is None:
        dtype = np.asarray(theirs.loss).dtype if theirs.loss is not None else np.float64
    theirs_tensors = dict(theirs.tensors())
    rows, skipped = [], []
    for name, a in mine.tensors():
        b = theirs_tensors.get(name)
        if a is None or b is None:
            skipped.append(name)
            continue
        tol = tolerance(oracle, dtype, quantity_of(name))
        rows.append(compare_arrays(name, a, b, tol, check_dtype, atol(oracle, dtype)))
    return Comparison(rows, names, title, skipped)


def compare_params(
    mine: dict[str, np.ndarray],
    theirs: dict[str, np.ndarray],
    oracle: str = "twin",
    dtype: str | np.dtype | None = None,
    names: tuple[str, str] = ("reference", "oracle"),
    title: str = "",
) -> Comparison:
    """Parameter dictionaries ({"dense_1.W": ...}), e.g. after optimiser steps."""
    if set(mine) != set(theirs):
        raise ValueError(f"compare_params: parameter names differ: {sorted(mine)} vs {sorted(theirs)}")
    if not mine:  # both sides have none (a model's state without batchnorm): they agree, nothing to compare
        return Comparison([], names, title)
    dtype = dtype or next(iter(theirs.values())).dtype
    tol = tolerance(oracle, dtype, "parameters")
    floor = atol(oracle, dtype)
    return Comparison([compare_arrays(k, mine[k], theirs[k], tol, atol=floor) for k in mine], names, title)
