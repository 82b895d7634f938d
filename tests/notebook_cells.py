"""Test submissions as notebook cells: each top-level class or function its own cell, as students write them."""

from __future__ import annotations

import re
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
