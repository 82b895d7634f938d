"""A submission (.py or .ipynb) -> the module the sandbox loads: definitions kept, top-level work skipped.

    extracted = extract(path, needed=("Dense", "ReLU", ...))   # Extracted(source, skipped, ...)
    module_path, extracted = write_module(path, needed, out_dir)

Students leave minutes of training, data loading and plotting at the top level of their notebooks
(and .py files). The grader only needs the API, so the ast decides, statement by statement:

  kept      imports, def/class, assignments (and a `try` made only of those), IF something the
            graded API needs reaches them: the `needed` names, then every global those reference
            (symtable's exact scopes, so a local `x_train` does not pull in the data loading)
  skipped   everything else: top-level calls (training, plotting, print), loops, `if` blocks, and
            definitions or assignments the API never reaches (`x_train = load_data()`), each
            reported with where it was and why

From a notebook only code cells count; IPython line magics (`%matplotlib inline`) and shell
escapes (`!pip install`, `files = !ls`) are removed, and cells whose cell magic is not Python
(`%%bash`) are skipped. A `.py` keeps its line numbers, so tracebacks point at the student's lines.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
import symtable
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grading import pyast

# Cell magics whose body is still Python: the magic line goes, the body stays.
PYTHON_CELL_MAGICS = ("time", "timeit", "capture", "prun")
KEPT_KINDS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
)


# Limits on the grader's own work on a submission, before any sandbox starts: a submission that
# reaches one is refused with the reason (SubmissionError), and graded 0.
MAX_BYTES = 8 * 1024 * 1024  # the file as handed in (a notebook's outputs included)
MAX_STATEMENTS = 50_000  # top-level statements, all cells together
EXTRACT_CPU_S = 10.0  # CPU seconds (this thread) for reading, parsing and deciding


class SubmissionError(ValueError):
    """The submission cannot be turned into a module (unreadable notebook, syntax error in a .py,
    a symbolic link, or a file beyond the limits above)."""


class _Budget:
    """EXTRACT_CPU_S of this thread's CPU for one submission; check() raises SubmissionError after."""

    def __init__(self, path: Path):
        self.path, self.deadline = path, time.thread_time() + EXTRACT_CPU_S

    def check(self, step: str) -> None:
        if time.thread_time() > self.deadline:
            raise SubmissionError(
                f"{_display(self.path)}: {step} took more than {EXTRACT_CPU_S:g} s of the grader's CPU; not graded"
            )


def _display(path: Path) -> str:
    """A file name as text that any terminal, CSV or JSON writer can hold (undecodable bytes as \\xNN)."""
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def _read(path: Path) -> bytes:
    """The submission's bytes: never through a symbolic link (O_NOFOLLOW), at most MAX_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SubmissionError(f"{_display(path)}: a symbolic link; submissions must be regular files") from None
        raise SubmissionError(f"{_display(path)}: cannot be read ({os.strerror(e.errno)})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SubmissionError(f"{_display(path)}: not a regular file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise SubmissionError(f"{_display(path)}: larger than {MAX_BYTES // 2**20} MB; not graded")
    return data


@dataclass(frozen=True)
class Skipped:
    where: str  # "cell 3, line 2" or "line 14"
    why: str  # "top-level call", "loop", "IPython magic", "not used by the graded API", ...
    code: str  # the statement's first line

    def __str__(self) -> str:
        return f"{self.where}: {self.code} ({self.why})"


@dataclass
class Extracted:
    source: str
    origin: str  # "notebook" or "python"
    kept: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self, limit: int = 8) -> str:
        """One paragraph for the student: how much was kept, what was skipped and why."""
        if not self.skipped:
            return f"{self.kept} top-level statements kept from the {self.origin}; nothing skipped."
        shown = "\n".join(f"  - {s}" for s in self.skipped[:limit])
        more = f"\n  - ... and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return (
            f"{self.kept} top-level statements kept from the {self.origin}; {len(self.skipped)} skipped "
            f"(only imports, definitions and assignments the graded API uses are run):\n{shown}{more}"
        )


@dataclass
class _Stmt:
    node: ast.stmt
    text: str  # its source
    where: str
    first_line: int  # in the original file (.py) or cell, decorators included
    last_line: int
    exact: bool = True  # text is the original lines (False: unparsed, it shared a line with another)


def extract(path: Path, needed: Iterable[str] | None = None) -> Extracted:
    """Read `path` (.py or .ipynb) and keep what the `needed` names reach (everything kept-kind if None)."""
    path = Path(path)
    budget = _Budget(path)
    if path.suffix == ".ipynb":
        cells = _notebook_cells(path)
        origin = "notebook"
    elif path.suffix == ".py":
        cells = [(None, _read(path).decode("utf-8", errors="replace"))]
        origin = "python"
    else:
        raise SubmissionError(
            f"{_display(path)}: expected a .py file or a .ipynb notebook, got {path.suffix or 'no suffix'}"
        )

    skipped: list[Skipped] = []
    statements: list[_Stmt] = []
    for cell, source in cells:
        statements.extend(_cell_statements(path, cell, source, skipped))
        budget.check("parsing")
    if len(statements) > MAX_STATEMENTS:
        raise SubmissionError(
            f"{_display(path)}: {len(statements):,} top-level statements (at most {MAX_STATEMENTS:,}): "
            "the grader does not extract the graded API from a file this long"
        )

    candidates, future = [], []
    for st in statements:
        if isinstance(st.node, ast.ImportFrom) and st.node.module == "__future__":
            future.append(st)
        elif _is_kept_kind(st.node):
            candidates.append(st)
        elif (
            isinstance(st.node, ast.Expr)
            and isinstance(st.node.value, ast.Constant)
            and isinstance(st.node.value.value, str)
        ):
            continue  # a docstring or a bare string: nothing to run, nothing to report
        else:
            skipped.append(Skipped(st.where, _why_skipped(st.node), _first_line(st.text)))
    kept = _reachable(candidates, needed, budget)
    kept_ids = {id(st) for st in kept}  # by identity: `st in kept` compared dataclasses, quadratically
    for st in candidates:
        if id(st) not in kept_ids:
            skipped.append(Skipped(st.where, "not used by the graded API", _first_line(st.text)))
    ordered = future + [st for st in candidates if id(st) in kept_ids]
    skipped.sort(key=lambda s: _where_key(s.where))
    source = _render(ordered, origin, len(cells[0][1].splitlines()) if origin == "python" else 0)
    return Extracted(source=source, origin=origin, kept=len(ordered), skipped=skipped)


def write_module(path: Path, needed: Iterable[str] | None, out_dir: Path) -> tuple[Path, Extracted]:
    """Extract `path` and write it as `out_dir/<stem>.py` (the file the sandbox loads)."""
    extracted = extract(path, needed)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{Path(path).stem}.py"
    target.write_text(extracted.source, encoding="utf-8")
    return target, extracted


# Reading ---------------------------------------------------------------------------------------


def _notebook_cells(path: Path) -> list[tuple[int, str]]:
    import nbformat  # local: only notebooks need it

    data = _read(path)
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except (
        UnicodeDecodeError,
        json.JSONDecodeError,
        nbformat.reader.NotJSONError,
        nbformat.ValidationError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as e:
        raise SubmissionError(f"{_display(path)}: not a readable Jupyter notebook ({type(e).__name__}: {e})") from e
    return [(i, cell.source) for i, cell in enumerate(nb.cells, start=1) if cell.cell_type == "code"]


def _cell_statements(path: Path, cell: int | None, source: str, skipped: list[Skipped]) -> list[_Stmt]:
    """Parse one cell (or the whole .py) into statements, removing IPython syntax from notebook cells."""
    where = (lambda line: f"cell {cell}, line {line}") if cell is not None else (lambda line: f"line {line}")
    lines = source.splitlines()
    if cell is not None:
        lines, keep_cell = _strip_cell_magic(lines, where, skipped)
        if not keep_cell:
            return []
    text = "\n".join(lines)
    try:
        tree = _parse(path, text)
    except SyntaxError as first_error:
        if cell is None:
            raise SubmissionError(
                f"{_display(path)}: syntax error at line {first_error.lineno}: {first_error.msg}: "
                f"{(first_error.text or '').strip()}"
            ) from first_error
        lines = _strip_line_magics(lines, where, skipped)
        text = "\n".join(lines)
        try:
            tree = _parse(path, text)
        except SyntaxError as e:
            skipped.append(
                Skipped(where(e.lineno or 1), f"syntax error: {e.msg}; the whole cell skipped", _first_line(text))
            )
            return []
    out = []
    body = tree.body
    for k, node in enumerate(body):
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno or node.lineno
        exact = not _shares_lines(k, body)
        segment = "\n".join(lines[start - 1 : end]) if exact else ast.unparse(node)
        out.append(_Stmt(node, segment, where(start), start, end, exact))
    return out


def _parse(path: Path, text: str) -> ast.Module:
    """ast.parse; what the parser itself cannot take (nesting too deep, null bytes) is a verdict."""
    try:
        return pyast.parse(text)
    except (RecursionError, MemoryError, ValueError) as e:
        raise SubmissionError(f"{_display(path)}: the parser gave up ({type(e).__name__}: {e})") from None


def _strip_cell_magic(lines: list[str], where, skipped: list[Skipped]) -> tuple[list[str], bool]:
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or not lines[first].lstrip().startswith("%%"):
        return lines, True
    magic = lines[first].strip()[2:].split(maxsplit=1)[0] if lines[first].strip()[2:] else ""
    if magic in PYTHON_CELL_MAGICS:
        skipped.append(
            Skipped(where(first + 1), "IPython cell magic removed, its Python body kept", lines[first].strip())
        )
        return ["" if i == first else line for i, line in enumerate(lines)], True
    skipped.append(
        Skipped(where(first + 1), f"cell magic %%{magic}: not Python, the whole cell skipped", lines[first].strip())
    )
    return lines, False


def _strip_line_magics(lines: list[str], where, skipped: list[Skipped]) -> list[str]:
    """`%magic`, `!shell`, `x = !shell`, `x = %magic`, `obj?` lines become `pass` (indentation kept)."""
    out = []
    for number, line in enumerate(lines, start=1):
        body = line.lstrip()
        indent = line[: len(line) - len(body)]
        _, eq, rhs = body.partition("=")
        is_magic = body.startswith(("%", "!")) or (eq and rhs.lstrip().startswith(("!", "%")) and "==" not in body)
        is_help = body.rstrip().endswith("?") and not body.startswith("#")
        if is_magic or is_help:
            kind = "shell escape" if "!" in body[:1] + rhs.lstrip()[:1] else "IPython magic"
            skipped.append(Skipped(where(number), f"{kind if not is_help else 'IPython help'} removed", body.strip()))
            out.append(indent + "pass")
        else:
            out.append(line)
    return out


def _shares_lines(k: int, body: list[ast.stmt]) -> bool:
    """Statement k shares a line with another (`a = 1; b = 2`): body is in source order, so only its
    neighbours can (a scan of the whole body per statement was quadratic)."""
    node = body[k]
    before = k > 0 and (body[k - 1].end_lineno or body[k - 1].lineno) >= node.lineno
    after = k + 1 < len(body) and body[k + 1].lineno <= (node.end_lineno or node.lineno)
    return before or after


# Deciding ---------------------------------------------------------------------------------------


def _is_kept_kind(node: ast.stmt) -> bool:
    if isinstance(node, KEPT_KINDS):
        return True
    if isinstance(node, ast.Try):  # try: import x / except ImportError: x = None
        parts = node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        return all(isinstance(s, (*KEPT_KINDS, ast.Pass)) for s in parts)
    return False


def _why_skipped(node: ast.stmt) -> str:
    if isinstance(node, ast.Expr):
        if isinstance(node.value, ast.Constant):
            return "a bare value"
        return "top-level call" if isinstance(node.value, (ast.Call, ast.Await)) else "top-level expression"
    if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
        return "loop"
    if isinstance(node, ast.If):
        return "if block"
    if isinstance(node, (ast.With, ast.AsyncWith)):
        return "with block"
    if isinstance(node, ast.Try):
        return "try block that does more than import, define or assign"
    return f"top-level {type(node).__name__.lower()} statement"


def _binds(node: ast.stmt) -> set[str]:
    """Global names a kept-kind statement binds or changes (x = ..., x[i] = ..., x.a = ..., def x)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        if any(a.name == "*" for a in node.names):
            return {"*"}
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Try):
        parts = node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        return set().union(*(_binds(s) for s in parts if not isinstance(s, ast.Pass)))
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names: set[str] = set()
    for target in targets:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
    return names


def _references(text: str) -> set[str]:
    """Module-level names a statement reads, found with symtable (function locals excluded)."""
    try:
        table = symtable.symtable(text, "<statement>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):  # it parsed: kept for safety
        return set()
    return _global_refs(table)


def _global_refs(table: symtable.SymbolTable) -> set[str]:
    names = set()
    top = table.get_type() == "module"
    for sym in table.get_symbols():
        if sym.is_referenced() and (top or sym.is_global()):
            names.add(sym.get_name())
    for child in table.get_children():
        names |= _global_refs(child)
    return names


def _reachable(candidates: list[_Stmt], needed: Iterable[str] | None, budget: _Budget) -> list[_Stmt]:
    """The statements that bind a needed name, closed under the globals they reference.

    A worklist over an index name -> statements: each statement is read once, so the cost is linear
    in the submission (a 12,000-link chain `a1 = a0; a2 = a1; ...` took 132 s with a pass per link)."""
    if needed is None:
        return list(candidates)
    by_name: dict[str, list[int]] = {}
    for k, st in enumerate(candidates):
        for name in _binds(st.node):
            by_name.setdefault(name, []).append(k)
    star = [k for k in by_name.get("*", []) if _module_exists(candidates[k].node)]
    kept: set[int] = set(star)
    todo = list(dict.fromkeys(needed))
    seen: set[str] = set()
    for k in star:
        todo.extend(_references(candidates[k].text))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for k in by_name.get(name, ()):
            if k not in kept:
                kept.add(k)
                budget.check("deciding which statements the graded API uses")
                todo.extend(_references(candidates[k].text))
    return [st for k, st in enumerate(candidates) if k in kept]


def _module_exists(node: ast.stmt) -> bool:
    """A star import is kept only when its module is installed (it binds names we cannot see)."""
    import importlib.util

    name = getattr(node, "module", None)
    if not name or getattr(node, "level", 0):
        return False
    try:
        return importlib.util.find_spec(name.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


# Writing ----------------------------------------------------------------------------------------


def _render(statements: list[_Stmt], origin: str, n_lines: int) -> str:
    if origin == "python" and all(st.exact for st in statements):
        out = [""] * n_lines
        for st in statements:
            for offset, line in enumerate(st.text.splitlines()):
                out[st.first_line - 1 + offset] = line
        return "\n".join(out) + "\n"
    blocks = [f"# {st.where}\n{st.text}" for st in statements]
    return "# Generated by grading.notebook from the submission's code cells.\n\n" + "\n\n".join(blocks) + "\n"


def _first_line(text: str, width: int = 100) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


def _where_key(where: str) -> tuple[int, ...]:
    return tuple(int(part.split()[-1]) for part in where.split(","))
