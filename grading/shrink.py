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
Within each, a candidate whose sparse display (below) writes at most MAX_SHOWN numbers per array
comes before one that writes more.
No candidate failing with an array: no counterexample (the bug needs a larger shape, or the call
raised: the exception says more than a small case would).

Each format that shows counterexamples supplies them through its module (grading/formats/): its
candidates smallest first (shrink_candidates), one candidate case (shrink_case), what the failing
call was sent (shrink_inputs) and the reference's equation (formula); the dense network's are here
(mlp_candidates, mlp_case, probe_inputs), used by the layer, class and logistic formats.

The function format's notebook (grading/formats/function.py) fixes its 784 inputs (it reshapes every sample to 28 * 28) and its 10
outputs (integer_to_one_hot(y, 10)) and the number of layers (weights[0..2]); the hidden widths are
the shapes of the weights the grader sets, so they shrink to 1..3. Its candidates are sparse: batch 1
(the API takes one sample), a sample that is 0 except one or two pixels of 1 or 2, weights[0] 0 except
the rows of those pixels, the hidden layers' weights small integers, the output layer's weights 0
except one column, its biases 0 except (in a second variant) one entry, and the unit functions'
probes of 10 logits 0 except one. Such an array is shown by its entries that differ from the most
common value ("784x1: [3, :] = [2], [k, :] = [0] elsewhere"; `sparse`, `show`), the reference's and
the student's tensors too, so the whole counterexample is a few numbers; the comparison that says it
still fails is made on the full arrays.
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
MAX_ACROSS = 3  # the widest dimension of a tensor shown whole; a wider one is shown sparsely (`sparse`)
MAX_SHOWN = 8  # the most numbers a sparse display writes for one array (`shown_numbers`)


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


class SparseIntegers(SmallIntegers):
    """SmallIntegers whose normal draws of more than MAX_ACROSS entries (the function format's 10 logits)
    are 0 except one entry: a probe too wide for paper that is still a few numbers."""

    def normal(self, loc=0.0, scale=1.0, size=None):
        shape = () if size is None else tuple(np.atleast_1d(size))
        if int(np.prod(shape)) <= MAX_ACROSS:
            return super().normal(loc, scale, size)
        out = np.zeros(shape)
        out.flat[self.rng.integers(out.size)] = self.rng.choice(self.VALUES)
        return out


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
        width = max([9, *(len(name) + 1 for name, _ in self.inputs)])
        for name, value in self.inputs:
            lines.append(f"  {name:<{width}}= {show(value)}")
        head, *where = self.formula.split("; ")  # the function format's definitions, one line each
        lines.append(f"  reference {self.tensor} = {head}")
        lines.extend(f"            {'where' if i == 0 else '     '} {w}" for i, w in enumerate(where))
        lines.append(f"            = {show(self.reference)}")
        yours = show(self.yours) if isinstance(self.yours, np.ndarray) else str(self.yours)
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


def _keys(a: np.ndarray) -> np.ndarray:
    """Each entry as the display writes it (6 significant digits; float64 rounding of an exact 0 is
    0), so entries that look equal group together."""
    finite = a[np.isfinite(a)]
    noise = 1e-12 * float(np.abs(finite).max(initial=0.0))
    return np.array([f"{(0.0 if abs(v) <= noise else v + 0.0):.6g}" for v in a.reshape(-1)]).reshape(a.shape)


def _most_common(keys: list):
    """The most frequent key, or None when no key repeats."""
    counts: dict = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    best = max(counts, key=counts.get)
    return best if counts[best] > 1 else None


def sparse(value) -> list[tuple[tuple, object, list[tuple[tuple, np.ndarray]]]]:
    """A wide array as groups (prefix, background, [(index, value)]): the entries that differ from
    the group's most common value, with their indices; the background (None: nothing repeats)
    stands for the rest.

    Tall (more than MAX_ACROSS rows of at most MAX_ACROSS columns: weights[0], 784x1): one group,
    background the most common row, the other rows whole. Wide (more than MAX_ACROSS columns: a 1x10
    row, a 2x10 gradient): one group per row, background the row's most common entry. A vector: one
    group. Anything else: one group over the flattened entries."""
    a = np.asarray(value, dtype=np.float64)
    keys = _keys(a)
    if a.ndim == 2 and a.shape[1] <= MAX_ACROSS:
        rows = ["|".join(r) for r in keys]
        best = _most_common(rows)
        bg = None if best is None else a[rows.index(best)]
        return [((), bg, [((i,), a[i]) for i, r in enumerate(rows) if r != best])]
    if a.ndim == 2:
        lines = [((i,), a[i], keys[i]) for i in range(a.shape[0])]
    else:
        lines = [((), a.reshape(-1), keys.reshape(-1))]
    groups = []
    for prefix, row, k in lines:
        best = _most_common(list(k))
        bg = None if best is None else row[list(k).index(best)]
        groups.append((prefix, bg, [((j,), np.asarray(row[j])) for j in range(row.size) if k[j] != best]))
    return groups


def expand(shape: tuple, groups) -> np.ndarray:
    """The array a sparse display stands for (its inverse, for the tests)."""
    out = np.full(shape if len(shape) in (1, 2) else (int(np.prod(shape)),), np.nan)
    for prefix, bg, exceptions in groups:
        view = out[prefix] if prefix else out
        if bg is not None:
            view[...] = bg
        for idx, v in exceptions:
            view[idx] = v
    return out.reshape(shape)


def shown_numbers(value) -> int:
    """How many numbers `show` writes for an array: every entry of a narrow one; for a sparse
    display each group's background (one number when it is constant) and every listed entry."""
    a = np.asarray(value)
    if a.dtype.kind not in "iufb":
        return 0
    if max(a.shape, default=1) <= MAX_ACROSS:
        return a.size
    n = 0
    for _, bg, exceptions in sparse(a):
        if bg is not None:
            n += 1 if np.ndim(bg) == 0 or len(set(np.ravel(bg).tolist())) == 1 else np.size(bg)
        n += sum(np.size(v) for _, v in exceptions)
    return n


def show(value) -> str:
    """`fmt` for an array at most MAX_ACROSS across; a wider one by its shape and the entries that
    differ from the most common value: "784x1: [3, :] = [2], [k, :] = [0] elsewhere"."""
    a = np.asarray(value)
    if a.dtype.kind not in "iufb" or max(a.shape, default=1) <= MAX_ACROSS:
        return fmt(value)
    a = a.astype(np.float64)
    tall = a.ndim == 2 and a.shape[1] <= MAX_ACROSS
    out = []
    for prefix, bg, exceptions in sparse(a):
        parts = []
        for idx, v in exceptions:
            full = (*prefix, *idx)
            index = f"[{full[0]}, :]" if tall else "[" + ", ".join(map(str, full)) + "]"
            parts.append(f"{index} = {fmt(v)}")
        if bg is not None:
            if tall:
                const = len(set(np.ravel(bg).tolist())) == 1
                parts.append(f"[k, :] = {fmt(np.ravel(bg)[0]) if const else fmt(bg)} elsewhere")
            else:
                rest = "[" + ", ".join([*map(str, prefix), "k"]) + "]" if a.ndim <= 2 else "[...]"
                parts.append(f"{rest} = {fmt(bg)} elsewhere")
        out.append(", ".join(parts))
    flat = " (flattened)" if a.ndim > 2 else ""
    return "x".join(map(str, a.shape)) + flat + ": " + "; ".join(out)


def mlp_candidates(part: Part) -> list[tuple[tuple[int, ...], int]]:
    """(sizes, batch) of a dense network, smallest first: the widest dimension, then the number of entries."""
    depth = len(part.small_sizes or part.sizes)
    out = []
    for sizes in itertools.product(WIDTHS, repeat=depth):
        for batch in BATCHES:
            entries = batch * sizes[0] + sum(a * b + b for a, b in itertools.pairwise(sizes))
            out.append(((max(*sizes, batch), entries), sizes, batch))
    return [(sizes, batch) for _, sizes, batch in sorted(out)]


def mlp_case(part: Part, kind: str, sizes, batch: int, k: int, pixels: bool = False):
    """One candidate of a dense network: integer weights and inputs (`pixels`: nonnegative, like an
    image's), redrawn (at most 20 times) until no pre-activation is 0."""
    from grading.formats._mlp import make_case

    spec = part.spec(tuple(sizes), "float64")
    for attempt in range(20):
        rng = np.random.default_rng([SHRINK_SEED, k, attempt])
        ints = SmallIntegers(rng)
        x = ints.normal(size=(batch, sizes[0]))
        if pixels:
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
    make = _hook(part, "shrink_case")
    return tuple(
        c
        for k, (sizes, batch) in enumerate(_hook(part, "shrink_candidates")(part))
        if (c := make(part, kind, sizes, batch, k))
    )


def _hook(part: Part, name: str):
    """The format's own counterexample hook (shrink_candidates, shrink_case, shrink_inputs, formula)."""
    from grading import formats

    return getattr(formats.get(part.format), name, None)


class ShrinkFailed(RuntimeError):
    """The shrinker's own sandboxed call failed (crashed, hung, was killed): no counterexample, and why."""


def counterexample(module_path, part: Part, finding, limits: Limits | None = None) -> Counterexample | None:
    """The smallest candidate on which `finding`'s tensor still fails (see the module doc), or None.
    Raises ShrinkFailed when the call on the candidates does not come back (the caller says so)."""
    from grading.checks import _per_case, compare_case, default_limits, driver_of, observe

    key: Key = finding.key
    if _hook(part, "shrink_case") is None or key is None:  # the format shows no counterexample
        return None
    kind = "stability" if finding.check == "stability" else "small"
    cases = candidate_cases(part, kind)
    reqs = [r for r in adapters.requests(part, cases) if r.name == key.function]
    if not reqs:
        return None
    req = reqs[0]
    outcome = run_calls(module_path, driver_of(part), [(req.function, req.kwargs)], default_limits(part, limits))[0]
    if not outcome.ok:  # said, not swallowed: the feedback names why no counterexample came
        raise ShrinkFailed(f"{key.function} on the small cases: {outcome.verdict or 'the sandboxed call failed'}")
    per_case = _per_case(req, outcome, len(cases))
    ranked = []
    for i, case in enumerate(cases):  # smallest first: stop at the first with the same tensor, in numbers
        if per_case[i] is None:
            continue
        own = dataclasses.replace(case, expected=[e for e in case.expected if e.key.function == key.function])
        with np.errstate(all="ignore"):  # an inf that came back is a finding, not a warning
            found = compare_case(part, own, observe(part, own, {key.function: per_case[i]}))
        for f in found:
            if f.passed or f.check != finding.check:
                continue
            if not isinstance(f.yours, np.ndarray):  # an exception, not numbers: a small case shows nothing
                continue
            shown = [f.expected, f.yours, *(v for _, v in inputs(part, case, f.key))]
            wide = any(max(np.shape(v), default=1) > MAX_ACROSS and shown_numbers(v) > MAX_SHOWN for v in shown)
            ranked.append(((f.key.tensor != key.tensor, f.yours.shape != f.expected.shape, wide, i), case, f))
        if any(rank[:3] == (False, False, False) for rank, _, _ in ranked):
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
        inputs=inputs(part, case, f.key),
        reference=f.expected,
        yours=yours,
        formula=formula(part, case, f.key),
        diagnosis=f.diagnosis.text if f.diagnosis else None,
    )


def inputs(part: Part, case, key: Key) -> list[tuple[str, np.ndarray]]:
    """What the failing function was sent in this case, by the format (its shrink_inputs)."""
    return _hook(part, "shrink_inputs")(part, case, key)


def probe_inputs(part: Part, case, key: Key) -> list[tuple[str, np.ndarray]]:
    """Every array and number of the failing function's probe in this case."""
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
    """The equation the reference used for this tensor, in the probe's own names: a format of its
    own (not NETWORK) answers alone (None when it has no `formula`: its cases carry no ModelSpec);
    for the notebook formats the network's and the step's are here, the rest from the format."""
    from grading import formats

    own = _hook(part, "formula")
    if not getattr(formats.get(part.format), "NETWORK", False):
        return own(part, case, key) if own is not None else None
    if key.tensor.startswith("network:"):
        return "each layer's forward applied in turn to X"
    if key.tensor.startswith("step:"):
        return f"{key.field} - lr * dL/d{key.field}, lr = {part.learning_rate:g}"
    own = _hook(part, "formula")
    return (own(part, case, key) if own is not None else None) or "the reference's value (reference/)"
