"""A counterexample small enough to check by hand, for the first failing comparison.

    cx = counterexample(module_path, part, finding, limits)     # Counterexample | None
    cx.text()                                                   # what `bprop check` and the notebook show

The way hypothesis shrinks a failing example (or Polygraphy's `debug reduce` cuts a model), the
grader looks for the smallest case that still shows the bug: the same number of layers, every width
and the batch in 1..3 (batch 1 or 2), and small integer inputs, weights and probe values (nonzero,
in -2..2; biases +-1; labels in range), so that each entry of the reference's tensor can be
recomputed on paper. Every candidate is a fresh case from SHRINK_SEED (public, and independent of
the probe seed): no graded case, and so no hidden probe, is ever shown. The candidates run in the
sandbox under the part's limits, in one sandboxed call of the failing function over all of them,
like the grading itself; the reference side stays in the grader.

Chosen: the smallest candidate (widest dimension first, then the number of entries) on which the same
tensor of the same check diverges with numbers of the right shape; failing that, one on which it
fails with an array of the wrong shape; failing that, any tensor of the same check and function.
No candidate failing with an array: no counterexample (the bug needs a larger shape, or the call
raised: the exception says more than a small case would). The function format keeps
its notebook's 784 inputs and 10 outputs, too many numbers for paper: it gets none.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from grading import adapters
from grading.adapters import Key
from grading.assignment import Part
from grading.sandbox import Limits, run_calls

SHRINK_SEED = 15  # public on purpose: the candidates reveal nothing about the graded probes
WIDTHS = (1, 2, 3)
BATCHES = (1, 2)
FORMATS = ("layer", "class", "logistic")
MAX_ACROSS = 3  # the widest dimension of any tensor a counterexample shows


class SmallIntegers:
    """A stand-in for np.random.Generator whose draws are small integers (as floats), so every
    probe the adapters draw (inputs, dL/d(output), logits) can be multiplied out by hand."""

    VALUES = np.array([-2.0, -1.0, 1.0, 2.0])  # no zero: a ReLU input never sits on its kink

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self.rng.choice(self.VALUES, size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self.rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, size).astype(np.float64)

    def integers(self, low, high=None, size=None):
        return self.rng.integers(low, high, size)


@dataclass
class Counterexample:
    check: str
    tensor: str
    function: str
    case: str  # "batch 1, sizes 2-2-1"
    inputs: list[tuple[str, np.ndarray]]  # what the function was called with (the probe sent)
    reference: np.ndarray
    yours: object  # the student's array, or the reason there is none
    formula: str
    diagnosis: str | None = None
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        numbers = "small numbers, logits scaled to 1e3" if self.check == "stability" else "small integers"
        lines = [
            f"counterexample: {self.function} on {self.case}",
            f"  (the smallest case that still fails; fresh {numbers}, not a graded case)",
        ]
        for name, value in self.inputs:
            lines.append(f"  {name:<9}= {fmt(value)}")
        lines.append(f"  reference {self.tensor} = {self.formula}")
        lines.append(f"            = {fmt(self.reference)}")
        yours = fmt(self.yours) if isinstance(self.yours, np.ndarray) else str(self.yours)
        lines.append(f"  yours     {self.tensor} = {yours}")
        return "\n".join(lines)


def fmt(value) -> str:
    """An array on one line, integers without a decimal point: [[1, -2], [0.5, 3]]."""
    a = np.asarray(value, dtype=np.float64) if np.asarray(value).dtype.kind in "iufb" else np.asarray(value)
    if a.dtype.kind != "f":
        return str(value)

    finite = a[np.isfinite(a)]
    noise = 1e-12 * float(np.abs(finite).max(initial=0.0))  # float64 rounding of an exact 0 (2e-17)

    def one(v: float) -> str:
        v = 0.0 if abs(v) <= noise else v + 0.0  # no -0
        return f"{v:.0f}" if np.isfinite(v) and v == round(v) and abs(v) < 1e15 else f"{v:.6g}"

    def rec(x):
        if x.ndim == 0:
            return one(float(x))
        return "[" + ", ".join(rec(r) for r in x) + "]"

    return rec(a)


def _candidates(part: Part) -> list[tuple[tuple[int, ...], int]]:
    """(sizes, batch), smallest first: the widest dimension, then the number of entries."""
    depth = len(part.small_sizes or part.sizes)
    out = []
    for sizes in itertools.product(WIDTHS, repeat=depth):
        for batch in BATCHES:
            entries = batch * sizes[0] + sum(a * b + b for a, b in itertools.pairwise(sizes))
            out.append(((max(*sizes, batch), entries), sizes, batch))
    return [(sizes, batch) for _, sizes, batch in sorted(out)]


def _case(part: Part, kind: str, sizes, batch: int, k: int):
    """One candidate: integer weights and inputs, redrawn (at most 20 times) until no pre-activation is 0."""
    from grading.checks import make_case

    spec = part.spec(tuple(sizes), "float64")
    for attempt in range(20):
        rng = np.random.default_rng([SHRINK_SEED, k, attempt])
        ints = SmallIntegers(rng)
        x = ints.normal(size=(batch, sizes[0]))
        if part.format in ("class", "logistic"):  # pixel-like inputs
            x = np.abs(x)
        params = {}
        h = x
        for name, ls in zip(spec.layer_names(), spec.layers):
            if ls.kind == "dense":
                W, b = ints.normal(size=(h.shape[1], ls.units)), rng.choice([-1.0, 1.0], ls.units)
                params[f"{name}.W"], params[f"{name}.b"] = W, b
                h = h @ W + b
                if (h == 0).any():
                    break
            elif ls.kind == "relu":
                h = np.maximum(h, 0)
            elif ls.kind == "sigmoid":
                h = 1 / (1 + np.exp(-h))
            elif ls.kind == "tanh":
                h = np.tanh(h)
        else:
            y = rng.integers(0, sizes[-1], batch)
            case = make_case(part, kind, sizes, "float64", x, y, params, ints)
            case.id = f"batch {batch}, sizes {'-'.join(map(str, sizes))}"
            return case
    return None


def candidate_cases(part: Part, kind: str) -> list:
    """Every candidate of `part`, smallest first (built once per distinct part and kind: they do not
    depend on the submission)."""
    from grading.checks import _freeze

    key = (_freeze(part), kind)
    _PARTS[key] = part
    return list(_candidate_cases(key))


_PARTS: dict = {}


@lru_cache(maxsize=16)
def _candidate_cases(key) -> tuple:
    part, kind = _PARTS[key], key[1]
    return tuple(c for k, (sizes, batch) in enumerate(_candidates(part)) if (c := _case(part, kind, sizes, batch, k)))


def counterexample(module_path, part: Part, finding, limits: Limits | None = None) -> Counterexample | None:
    """The smallest candidate on which `finding`'s tensor still fails (see the module doc), or None."""
    from grading.checks import _per_case, compare_case, default_limits

    key: Key = finding.key
    if part.format not in FORMATS or key is None:
        return None
    kind = "stability" if finding.check == "stability" else "small"
    cases = candidate_cases(part, kind)
    reqs = [r for r in adapters.requests(part, cases) if r.name == key.function]
    if not reqs:
        return None
    req = reqs[0]
    outcome = run_calls(module_path, adapters.DRIVER, [(req.function, req.kwargs)], default_limits(part, limits))[0]
    per_case = _per_case(req, outcome, len(cases))
    ranked = []
    for i, case in enumerate(cases):  # smallest first: stop at the first with the same tensor, in numbers
        if per_case[i] is None:
            continue
        own = dataclasses.replace(case, expected=[e for e in case.expected if e.key.function == key.function])
        with np.errstate(all="ignore"):  # an inf that came back is a finding, not a warning
            found = compare_case(part, own, adapters.observe(part, own, {key.function: per_case[i]}))
        for f in found:
            if f.passed or f.check != finding.check:
                continue
            if not isinstance(f.yours, np.ndarray):  # an exception, not numbers: a small case shows nothing
                continue
            ranked.append(((f.key.tensor != key.tensor, f.yours.shape != f.expected.shape, i), case, f))
        if any(rank[:2] == (False, False) for rank, _, _ in ranked):
            break
    if not ranked:
        return None
    _, case, f = min(ranked, key=lambda t: t[0])
    numeric = isinstance(f.yours, np.ndarray) and f.yours.shape == f.expected.shape
    yours = f.yours if numeric else (f.row.note or "no answer")
    return Counterexample(
        check=f.check,
        tensor=f.key.tensor,
        function=f.key.function,
        case=case.id,
        inputs=_inputs(case, f.key),
        reference=f.expected,
        yours=yours,
        formula=formula(part, case, f.key),
        diagnosis=f.diagnosis.text if f.diagnosis else None,
    )


def _inputs(case, key: Key) -> list[tuple[str, np.ndarray]]:
    """What the failing function was sent in this case: every array and number of its probe."""
    items = case.probes[key.function][2]
    item = items[adapters._index(case, key)] if items else {}
    out: list[tuple[str, np.ndarray]] = []

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in ("name", "kind", "names", "n_in", "n_out", "sizes", "rates"):
                    add(f"{prefix}{k}" if not prefix else f"{prefix}.{k}", v)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], dict):
            for spec in value:
                if spec.get("kind") == "dense":
                    add(spec["name"], {"W": spec["W"], "b": spec["b"]})
        elif isinstance(value, np.ndarray | int | float | np.integer | np.floating):
            out.append((prefix, np.asarray(value)))

    add("", item)
    return out


def formula(part: Part, case, key: Key) -> str:
    """The equation the reference used for this tensor, in the probe's own names."""
    mean = part.reduction == "mean"
    kind = None
    if key.layer is not None and key.layer in case.spec.layer_names():
        kind = case.spec.layers[case.spec.layer_names().index(key.layer)].kind
    f = key.field
    if part.format == "layer" and not key.tensor.startswith(("network:", "step:")):
        table = {
            ("dense", "out"): "x @ W + b",
            ("relu", "out"): "max(x, 0)",
            ("sigmoid", "out"): "1 / (1 + exp(-x))",
            ("tanh", "out"): "tanh(x)",
            ("dense", "dW"): "x.T @ grad_out",
            ("dense", "db"): "grad_out.sum(axis=0)",
            ("dense", "grad_in"): "grad_out @ W.T",
            ("relu", "grad_in"): "grad_out * (x > 0)",
            ("sigmoid", "grad_in"): "grad_out * s * (1 - s), s = 1 / (1 + exp(-x))",
            ("tanh", "grad_in"): "grad_out * (1 - tanh(x)**2)",
        }
        if f == "loss":
            return "log(sum(exp(logits), axis=1)) - logits[i, labels[i]]  (per sample)"
        if f == "grad_out":
            return "(softmax(logits) - onehot(labels))" + (" / batch" if mean else "")
        if (kind, f) in table:
            return table[(kind, f)]
    if key.tensor.startswith("network:"):
        return "each layer's forward applied in turn to X"
    if key.tensor.startswith("step:"):
        return f"{key.field} - lr * dL/d{key.field}, lr = {part.learning_rate:g}"
    if part.format in ("class", "logistic"):
        loss = "sum" if not mean else "mean"
        if f == "out":
            return "softmax(h @ W + b), h the hidden activations (X for logistic regression)"
        if f == "loss":
            return f"-{loss} over samples of log p[i, y[i]]"
        if f == "dW":
            return (
                "h.T @ delta, delta = dL/d(logits) = p - onehot(y) at the output, back through W.T and the derivative"
            )
        if f == "db":
            return "delta.sum(axis=0)"
    return "the reference's value (reference/)"
