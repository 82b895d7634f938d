"""Test submissions as notebook cells: each top-level class or function its own cell, as students write them."""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

from grading.assignment import load_assignment

ROOT = Path(__file__).parent / "submissions"
BUILTIN = {
    "layer": "layer-api",
    "function": "function-api",
    "class": "class-api",
    "coursera": "coursera-dnn",
    "mytorch": "mytorch-mlp",
    "cs231n": "cs231n-a2",
}
FIXTURES = sorted(p.relative_to(ROOT).as_posix() for fmt in BUILTIN for p in (ROOT / fmt).glob("*.py"))
# the formats with a hand-sized counterexample (grading/shrink.py: the notebook formats' shrink hooks)
SHRINKABLE = ("layer", "function", "class")
SHRINK_FIXTURES = [f for f in FIXTURES if f.split("/")[0] in SHRINKABLE]


def assignment_of(rel: str):
    """The fixture's assignment: its `# assignment:` line, else its format's built-in."""
    m = re.search(r"^# assignment: (\S+)$", (ROOT / rel).read_text(), re.M)
    return load_assignment(ROOT / m.group(1) if m else BUILTIN[rel.split("/")[0]])


def cells_of(source: str) -> list[str]:
    """One cell per top-level class or def (imports and comments stay with the cell before)."""
    return [c for c in re.split(r"\n(?=class |def )", source) if c.strip()]


def definitions_only(cells: list[str]) -> list[str]:
    """The cells without the top-level work the layer fixtures end with (`# top-level work ...`)."""
    return [c.split("\n# top-level work")[0] for c in cells]


@cache
def _graded_once(rel: str):
    from grading.checks import grade_submission

    return grade_submission(ROOT / rel, assignment_of(rel))


def graded(rel: str):
    """grade_submission(ROOT / rel, assignment_of(rel)) with the defaults (shrink on), graded once per
    process and handed out as a deep copy (no test can change what another reads). The three modules
    that grade these files so (test_notebook_agree, test_notebook_shrink, test_grading_submissions)
    share it, and tests/conftest.py sends them to one xdist worker together (ONE_WORKER_GROUPS)."""
    return copy.deepcopy(_graded_once(rel))
