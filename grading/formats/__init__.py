"""Homework formats: each one module here, and one assignment file in grading/assignments/.

    fmt = formats.get("cs231n")        # the format's module, or None for a format not registered here
    formats.names()                    # every registered format, in registration order

Adding a format is writing grading/formats/<fmt>.py (and, if its driver is its own,
grading/formats/<fmt>_driver.py), one line in MODULES below, and its assignment file; nothing in
grading/assignment.py, checks.py, adapters.py or shrink.py names a format. A format module is the
one home of everything a format needs. It defines:

    NAME          the `format` value of an assignment part ("cs231n")
    TITLE         one line: what a student writes
    CHECKS        the check names a part of this format may score, in computation order
    NAMES         the default API names (an assignment's `names` table renames them)
    DRIVER        the Path of its child-side driver: numpy and the standard library only, no expected
                  answer ever reaches it (it calls the student's code on the inputs it is given and
                  returns what came back)
    parse_options(raw, where, source) -> dict
                  the part's own fields of this format, checked (AssignmentError naming the field):
                  Part.options; with NETWORK = True (a dense network's format: the notebook ones)
                  the keys named like Part's network fields (assignment.NETWORK_FIELDS: sizes,
                  small_sizes, activations, loss, reduction, learning_rate, batch, preprocess,
                  provided) fill those fields instead
    needed_names(part) -> tuple[str, ...]
                  the module-level names the driver calls (what notebook extraction keeps)
    build_cases(part, seed) -> list[FormatCase]
                  every case with its probes (inputs of the student's functions) and its expected
                  values (adapters.Expected, computed by the reference in the grader only)
    observe(part, case, results) -> {Key: ndarray | Problem}
                  what came back for each expected Key, read from the driver's records
and optionally
    assemble(path, needed, out_dir) -> (module_path, Extracted) | None
                  a submission shape of its own (CS231n's folder layout) turned into one module;
                  None: not this format's shape, the generic extraction applies
    validate(part, where, source)
                  checks across fields, on the parsed Part (the function format's `provided`
                  helpers against its names)
    notes(part, cases) -> [str]
                  what the feedback says about the cases (the notebook formats: no MNIST rows here)
    diagnose(part, case, expected, yours) -> Diagnosis | None
                  the diagnosis of an Expected without `alternatives` (the notebook formats': the
                  RefView hypotheses of grading/diagnose.py); without it, unstable and zero only
    shrink_candidates(part), shrink_case(part, kind, sizes, variant, k), shrink_inputs(part, case,
    key), formula(part, case, key)
                  a hand-sized counterexample for the first failing tensor (grading/shrink.py): the
                  candidates smallest first, one candidate case, what the failing call was sent, the
                  reference's equation; a format without shrink_case shows none

The layout of a format (which way its W is stored, whether examples are rows or columns) is mapped
to the reference's canonical one in its module, once. Compared tensors are named by
grading.adapters.Key; a format's known bugs are hypotheses in Expected.alternatives (computed in
the grader, shown only when the submission's tensor matches one; grading/diagnose.py).

The four formats of the course notebooks (layer.py, function.py, classes.py for "class",
logistic.py) are dense networks on known weights: their cases, the shape sweep, the stability
scaling and the RefView diagnoses are shared in _mlp.py (each module adds its `plan(part, case,
rng)`, its `extract(part, case, expected, record, items)`, its `sweep(part)` and STEP_ROWS, the
training step's batch), and they share one driver, grading/drivers/api.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

# format name -> its module; one line per format
MODULES: dict[str, str] = {
    "layer": "grading.formats.layer",
    "function": "grading.formats.function",
    "class": "grading.formats.classes",
    "logistic": "grading.formats.logistic",
    "coursera": "grading.formats.coursera",
    "mytorch": "grading.formats.mytorch",
    "cs231n": "grading.formats.cs231n",
}


@dataclass
class FormatCase:
    """One case of a registered format: its probes and the reference's expected values on them."""

    id: str  # "small-float64", "stride2-float64", "test-mode-float64"
    kind: str  # "small" | "stability" | a format's own shape or mode label
    dtype: str
    probes: dict = field(default_factory=dict)  # call label -> (driver function, common kwargs, [items])
    expected: list = field(default_factory=list)  # [adapters.Expected], in computation order
    notes: dict = field(default_factory=dict)  # the format's own planning data (grader side only)


def names() -> tuple[str, ...]:
    return tuple(MODULES)


def get(name: str) -> ModuleType | None:
    """The format's module, or None when `name` is not a registered format."""
    path = MODULES.get(name)
    return importlib.import_module(path) if path else None
