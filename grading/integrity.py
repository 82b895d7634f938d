"""Academic integrity: which modules a submission may not use, found in its source before it runs.

    findings = scan(source, forbidden)          # [Use(module, line, code, how)], in source order
    findings = scan_file(path, forbidden)       # the same for the module the sandbox loads
    verdict(findings) -> str                    # one line: "forbidden import: torch at line 3 (...)"

An assignment lists its forbidden modules (`forbidden = [...]`; DEFAULT_FORBIDDEN for the built-in
backprop assignments). A module is forbidden with its submodules (`torch.autograd`) and with the
packages that exist only to reach it (IMPLIED: `functorch` for torch, `jaxlib` for jax, ...). The
grader's own packages (GRADER_PACKAGES) are always forbidden.

What the scan finds, statically (ast, nothing is run):
  - `import torch`, `import torch.autograd as ag`, `from torch import autograd`, `from scipy.special import expit`;
  - `__import__(NAME)`, `importlib.import_module(NAME)`, `importlib.__import__(NAME)`, and the same
    through any alias (`import importlib as il`, `from importlib import import_module as im`,
    `imp = __import__`, `getattr(importlib, "import_module")`, `builtins.__import__`);
  - `exec(CODE)` / `eval(CODE)` / `compile(CODE, ...)`: CODE is scanned as source;
  - NAME and CODE are constant-folded where the source allows: literals, `+`, `*` by an int,
    f-strings of constants, `"".join([...])`, `%`-formatting, `.lower()` and friends, slices such as
    `[::-1]`, `chr(116)`, and names bound once (anywhere in the file) to such a value;
  - a dynamic import whose name cannot be folded (`import_module(name)`) is a finding of its own:
    the scan cannot tell what it imports, and the verdict says so.

The sandbox enforces the same list at run time, whatever the scan missed (grading/_child.py): the
modules cannot be imported, and their files are not in the child's file system.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from grading import pyast

DEFAULT_FORBIDDEN = ("torch", "tensorflow", "keras", "jax", "autograd", "scipy")
GRADER_PACKAGES = ("reference", "oracles", "grading", "bprop", "data_loaders", "benchmarks")
IMPLIED = {  # packages that are a way into a forbidden one
    "torch": ("functorch", "torchgen", "torchvision", "torchaudio"),
    "tensorflow": ("tf_keras", "tensorflow_core"),
    "keras": ("tf_keras",),
    "jax": ("jaxlib", "flax"),
}
MAX_FOLD = 10_000  # characters: a folded string longer than this is not a module name
DYNAMIC = "a dynamic import"  # Use.module of an import whose name the scan cannot know


def expand(forbidden) -> tuple[str, ...]:
    """The assignment's list, the packages it implies and the grader's own, sorted, no duplicates."""
    names = set(forbidden) | set(GRADER_PACKAGES)
    for name in list(names):
        names.update(IMPLIED.get(name, ()))
    return tuple(sorted(names))


@dataclass(frozen=True)
class Use:
    module: str  # the forbidden top-level module, or DYNAMIC
    line: int  # in the scanned source
    code: str  # the statement's first line
    how: str  # "import", "from-import", "__import__", "importlib.import_module", "exec", ...
    where: str = ""  # "line 3" or "cell 2, line 3" (set by scan_file)

    def __str__(self) -> str:
        where = self.where or f"line {self.line}"
        if self.module == DYNAMIC:
            return f"{DYNAMIC} at {where} whose module cannot be determined ({self.code})"
        return f"{self.module} at {where} ({self.code})"


def verdict(uses: list[Use]) -> str:
    """One line naming the module(s) and line(s); the rule: no credit for any check."""
    shown = "; ".join(map(str, uses[:3])) + (f"; and {len(uses) - 3} more" if len(uses) > 3 else "")
    return f"forbidden import: {shown}. This assignment forbids it; no check is credited"


def scan_file(path: Path, forbidden) -> list[Use]:
    """scan() of a file the notebook extraction wrote: lines named as in the student's file (a .py
    keeps its lines; a notebook's module has a `# cell N, line M` comment before each statement)."""
    source = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    uses = scan(source, forbidden)
    if not uses:
        return uses
    lines = source.splitlines()
    headers = [(k + 1, m) for k, line in enumerate(lines) if (m := re.fullmatch(r"# (cell \d+), line (\d+)", line))]
    out = []
    for u in uses:
        before = [(at, m) for at, m in headers if at < u.line]
        if before:
            at, m = before[-1]
            where = f"{m.group(1)}, line {int(m.group(2)) + u.line - at - 1}"
        else:
            where = f"line {u.line}"
        out.append(Use(u.module, u.line, u.code, u.how, where))
    return out


def scan(source: str, forbidden) -> list[Use]:
    """Every use of a forbidden module in `source` (see the module docstring); [] if none."""
    names = set(expand(forbidden))
    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # what does not parse does not run either: the sandbox reports the error
    try:
        return _Scanner(names, source).run(tree)
    except RecursionError:  # expressions nested hundreds of levels deep: it cannot be checked
        return [Use(DYNAMIC, 1, "the source is nested too deeply to be checked", "scan")]


_IMPORTERS = {"__import__": "__import__", "import_module": "importlib.import_module"}
_EXECS = ("exec", "eval", "compile")
_STR_METHODS = ("lower", "upper", "strip", "lstrip", "rstrip", "casefold", "title", "capitalize", "swapcase")


class _Scanner:
    def __init__(self, names: set[str], source: str):
        self.names, self.lines = names, source.splitlines()
        self.uses: list[Use] = []
        self.consts: dict[str, object] = {}  # names bound once to a foldable value
        self.aliases: dict[str, str] = {}  # local name -> "importlib", "import_module", "__import__", "builtins", ...

    def run(self, tree: ast.AST) -> list[Use]:
        self._collect_bindings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self._check(a.name, node, "import")
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                self._check(node.module, node, "from-import")
            elif isinstance(node, ast.Call):
                self._call(node)
        self.uses.sort(key=lambda u: u.line)
        return list({(u.module, u.line, u.how): u for u in self.uses}.values())

    # -- bindings: aliases of the import machinery, names bound to constants ------------------------

    def _collect_bindings(self, tree: ast.AST) -> None:
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in ("importlib", "builtins", "importlib.util"):
                        self.aliases[(a.asname or a.name).split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module in ("importlib", "builtins"):
                for a in node.names:
                    if a.name in ("import_module", "__import__"):
                        self.aliases[a.asname or a.name] = a.name
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and node.value is not None:
                        assigned.setdefault(t.id, []).append(node.value)
        for _ in range(3):  # aliases of aliases (imp = il.import_module; f = imp)
            for name, values in assigned.items():
                if len(values) == 1 and (kind := self._machinery(values[0])) is not None:
                    self.aliases[name] = kind
        for name, values in assigned.items():
            if len(values) == 1 and name not in self.aliases:
                value = self._fold(values[0], depth=0)
                if value is not None:
                    self.consts[name] = value

    def _machinery(self, node: ast.AST) -> str | None:
        """What part of the import machinery `node` evaluates to, if any."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            return node.id if node.id in ("__import__", "exec", "eval", "compile", "__builtins__") else None
        attr = None
        if isinstance(node, ast.Attribute):
            base, attr = self._machinery(node.value), node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
        ):
            base, attr = self._machinery(node.args[0]), self._fold(node.args[1], 0)
        elif isinstance(node, ast.Subscript):  # __builtins__["__import__"], vars(builtins)["exec"]
            base, attr = self._machinery(node.value), self._fold(node.slice, 0)
        else:
            return None
        if base in ("importlib", "builtins", "__builtins__") and attr in (*_IMPORTERS, *_EXECS):
            return attr
        if base == "importlib" and attr == "util":
            return "importlib"
        return None

    # -- calls -------------------------------------------------------------------------------------

    def _call(self, node: ast.Call) -> None:
        kind = self._machinery(node.func)
        if kind is None:
            return
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg in ("name", "source")), None)
        if arg is None:
            return
        value = self._fold(arg, 0)
        if kind in _IMPORTERS:
            if isinstance(value, str):
                self._check(value, node, _IMPORTERS[kind])
            else:
                self.uses.append(Use(DYNAMIC, node.lineno, self._code(node), _IMPORTERS[kind]))
        elif kind in _EXECS and isinstance(value, str):
            for inner in self._scan_inner(value):
                self.uses.append(Use(inner.module, node.lineno, self._code(node), f"{kind}: {inner.how}"))

    def _scan_inner(self, code: str) -> list[Use]:
        try:
            tree = pyast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return []
        inner = _Scanner(self.names, code)
        inner.aliases, inner.consts = dict(self.aliases), dict(self.consts)
        return inner.run(tree)

    def _check(self, module: str, node: ast.AST, how: str) -> None:
        top = module.strip().partition(".")[0]
        if top in self.names:
            self.uses.append(Use(top, node.lineno, self._code(node), how))

    def _code(self, node: ast.AST) -> str:
        line = self.lines[node.lineno - 1].strip() if 0 < node.lineno <= len(self.lines) else ""
        return line if len(line) <= 100 else line[:97] + "..."

    # -- constant folding --------------------------------------------------------------------------

    def _fold(self, node: ast.AST, depth: int):
        """The str or int `node` always evaluates to, or None when the source does not say."""
        if depth > 50:
            return None
        value = self._fold_node(node, depth + 1)
        if isinstance(value, str) and len(value) > MAX_FOLD:
            return None
        return value

    def _fold_node(self, node: ast.AST, depth: int):
        f = lambda n: self._fold(n, depth)  # noqa: E731
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            return self.consts.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = f(node.operand)
            return -v if isinstance(v, int) else None
        if isinstance(node, ast.BinOp):
            left, right = f(node.left), f(node.right)
            if isinstance(node.op, ast.Add) and type(left) is type(right) and left is not None:
                return left + right
            if isinstance(node.op, ast.Mult) and {type(left), type(right)} == {str, int}:
                n = left if isinstance(left, int) else right
                return (left * right) if 0 <= n <= 100 else None
            if isinstance(node.op, ast.Mod) and isinstance(left, str):
                parts = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
                values = [f(p) for p in parts]
                if all(v is not None for v in values):
                    try:
                        return left % tuple(values)
                    except (TypeError, ValueError):
                        return None
            return None
        if isinstance(node, ast.JoinedStr):
            out = []
            for part in node.values:
                v = f(part.value) if isinstance(part, ast.FormattedValue) else f(part)
                if v is None:
                    return None
                out.append(str(v))
            return "".join(out)
        if isinstance(node, ast.Subscript):
            base = f(node.value)
            if not isinstance(base, str):
                return None
            s = node.slice
            if isinstance(s, ast.Slice):
                bounds = [None if b is None else f(b) for b in (s.lower, s.upper, s.step)]
                given = [b for b in (s.lower, s.upper, s.step) if b is not None]
                if any(not isinstance(v, int) for v in bounds if v is not None) or len(
                    [v for v in bounds if v is not None]
                ) != len(given):
                    return None
                try:
                    return base[slice(*bounds)]
                except ValueError:
                    return None
            index = f(s)
            return base[index] if isinstance(index, int) and -len(base) <= index < len(base) else None
        if isinstance(node, ast.Call):
            return self._fold_call(node, f)
        return None

    def _fold_call(self, node: ast.Call, f):
        if node.keywords:
            return None
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            n = f(node.args[0])
            return chr(n) if isinstance(n, int) and 0 <= n < 0x110000 else None
        if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1:
            v = f(node.args[0])
            return None if v is None else str(v)
        if not isinstance(func, ast.Attribute):
            return None
        base = f(func.value)
        if not isinstance(base, str):
            return None
        if func.attr == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
            parts = [f(e) for e in node.args[0].elts]
            return base.join(parts) if all(isinstance(p, str) for p in parts) else None
        if func.attr in _STR_METHODS and not node.args:
            return getattr(base, func.attr)()
        if func.attr == "replace" and len(node.args) == 2:
            old, new = f(node.args[0]), f(node.args[1])
            if isinstance(old, str) and isinstance(new, str) and old:
                return base.replace(old, new)
        return None
