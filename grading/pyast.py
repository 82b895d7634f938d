"""`ast.parse` behind one lock, for everything the grader parses.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state, so two threads
parsing at once can fail with `SystemError: AST constructor recursion depth mismatch` (CPython
gh-106905). `grade_many` grades submissions in worker threads, and one such failure turned a
submission's verdict into "internal grading error" in a full test run here. Parsing is a small
part of grading, so one lock costs nothing measurable.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source, filename: str = "<unknown>", mode: str = "exec", **kwargs) -> ast.AST:
    """ast.parse(source, filename, mode, ...), one thread at a time."""
    with _LOCK:
        return ast.parse(source, filename, mode, **kwargs)
