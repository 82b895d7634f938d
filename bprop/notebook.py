"""Students check their work where they write it: one line in a notebook cell, the answer under it.

    import bprop
    bprop.check("layer-api")                          # or the course's assignment file
    bprop.check("class-api", only="NeuralNet.grad_loss")
    %load_ext bprop
    %bprop_check layer-api --only Dense.backward

What is graded: the classes and functions the running kernel defines under the names the assignment
uses. Their source comes from the kernel's cell history (IPython's raw input history, in the order
the cells RAN, so cells run out of order and a class redefined after a fix both mean what they
mean in the kernel: the latest definition wins), and from `inspect` where the history cannot reach
it (a name the history never binds: a function defined by %run FILE; or a name imported from the
student's own .py file, whose source then replaces the import; code made by exec has no source, and
the result's notes say so). Outside IPython the caller's script file is
graded. The cells are written as a notebook and graded by grading.checks.grade_submission, the
function behind `bprop check`: the same extraction, sandbox, checks and points, so the verdict here
is the instructor's verdict on the same code (and only the assignment file's checks: nothing hidden
is run or shown).

The result (NotebookResult) has .score, .max_score, .tests (Gradescope's test records),
.first_divergence (Divergence: the tensor's name, case, shape, yours, the reference's, the worst
element, the diagnosis, the cell that defines it), .counterexample (grading/shrink.py) and displays
itself: _repr_html_ in a notebook (a table of checks; for the first failure pictures of yours, the
reference's and the difference; the diagnosis; the counterexample), __str__ as text elsewhere.
Everything the submission controls is escaped (grading/escaping.py, then html.escape).
"""

from __future__ import annotations

import ast
import base64
import html
import inspect
import io
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grading import pyast
from grading.escaping import printable


@dataclass
class Divergence:
    """The first failing comparison, as the student sees it."""

    check: str  # "layers: weight_gradients"
    tensor: str  # "dense_2.dW"
    function: str  # "Dense.backward"
    case: str  # "small-float64"
    shape: tuple | None
    yours: np.ndarray | None
    reference: np.ndarray | None
    worst: str  # the worst element, in words
    diagnosis: str | None
    cell: str | None = None  # where the failing code was defined, and whether that is the cell just run
    formula: str | None = None  # the equation the reference used (grading/shrink.formula)
    worst_index: tuple | None = None


@dataclass
class NotebookResult:
    assignment: str
    score: float
    max_score: float
    tests: list[dict]
    first_divergence: Divergence | None
    counterexample: object  # grading.shrink.Counterexample | None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    only: str | None = None
    seconds: float = 0.0
    result: object = None  # the grading.checks.SubmissionResult behind it (what `bprop check` reports)

    def __str__(self) -> str:
        return text(self)

    def __repr__(self) -> str:
        return text(self)

    def _repr_html_(self) -> str:
        return render_html(self)


# Where the code comes from ----------------------------------------------------------------------


def _shell():
    ipython = sys.modules.get("IPython")  # never imported here: no IPython loaded means no kernel
    return ipython.get_ipython() if ipython is not None else None


def _history(shell) -> list[str]:
    """The raw source of every cell the kernel ran, in the order it ran them (the current one last)."""
    return [str(s) for s in list(shell.history_manager.input_hist_raw)[1:]]


def _binders(cells: list[str]) -> dict[str, int]:
    """name -> the index of the last cell whose top-level code binds it (def, class, import, =)."""
    out: dict[str, int] = {}
    pattern = re.compile(r"^(?:class|def|async\s+def)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)", re.M)
    for i, cell in enumerate(cells):
        try:
            tree = pyast.parse(cell)
        except SyntaxError:  # magics: fall back to the line patterns
            for m in pattern.finditer(cell):
                out[m.group(1) or m.group(2)] = i
            continue
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [(a.asname or a.name).split(".")[0] for a in node.names]
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for name in names:
                out[name] = i
    return out


def _own_module(obj) -> object | None:
    """The student's own module an object was imported from (a file outside the installed packages)."""
    mod = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(mod, "__file__", None)
    if mod is None or path is None or mod.__name__ == "__main__":
        return None
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[1])}
    resolved = str(Path(path).resolve())
    return None if any(resolved.startswith(str(Path(p).resolve())) for p in prefixes) else mod


def gather_cells(needed, namespace: dict, history: list[str]) -> tuple[list[str], list[str]]:
    """The cells to grade, and notes on where the source came from: the history in the order it ran,
    then, for a needed name the history never binds, its source through inspect; a name imported
    from the student's own .py file gets that file's source in place of the import."""
    cells, notes = list(history), []
    bound = _binders(cells)
    modules: dict[str, object] = {}
    for name in needed:
        if name not in namespace:
            continue
        obj = namespace[name]
        mod = _own_module(obj) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        if mod is not None:
            modules[mod.__name__] = mod
            continue
        if name in bound:
            continue
        try:
            cells.append(inspect.getsource(obj))
            notes.append(f"{name}: source from inspect (not in the cell history)")
        except (OSError, TypeError) as e:
            notes.append(f"{name}: its source could not be found ({type(e).__name__}: {e}); not graded")
    for modname, mod in modules.items():
        stem = re.escape(modname)
        imports = re.compile(rf"^(\s*)(from\s+{stem}\s+import\b.*|import\s+{stem}\b.*)$", re.M)
        cells = [imports.sub(r"\1pass  # \2", c) for c in cells]
        cells.append(inspect.getsource(mod))
        notes.append(f"{modname}: source from its file {Path(mod.__file__).name} (imported by the notebook)")
    return cells, notes


def _write_notebook(cells: list[str], folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path = folder / "notebook.ipynb"
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


# Checking ---------------------------------------------------------------------------------------


def check(
    assignment: str | Path = "layer-api",
    only: str | None = None,
    *,
    namespace: dict | None = None,
    limits=None,
    _caller: dict | None = None,
):
    """Grade what this kernel (or the calling script) defines against `assignment` (a built-in
    name or a .toml / .json path), as `bprop check` would; `only` restricts to one function's
    comparisons ("Dense.backward", "Dense", "softmax_crossentropy_with_logits")."""
    start = time.perf_counter()
    from grading.assignment import load_assignment, visible_only

    spec = visible_only(load_assignment(assignment))  # a check the instructor hides is neither run nor shown
    shell = _shell()
    history: list[str] = []
    if shell is not None:
        history = _history(shell)
        ns = shell.user_ns if namespace is None else namespace
    else:
        ns = (_caller or sys._getframe(1).f_globals) if namespace is None else namespace
        script = ns.get("__file__") if namespace is None else None
        if script and str(script).endswith(".py") and Path(script).is_file():
            history = [Path(script).read_text(encoding="utf-8", errors="replace")]
    cells, notes = gather_cells(spec.needed_names(), ns, history)
    in_kernel = shell is not None and namespace is None
    out = check_cells(cells, spec, only, limits, n_history=len(history) if in_kernel else None)
    out.notes[:0] = notes
    out.seconds = time.perf_counter() - start
    return out


def check_cells(cells: list[str], spec, only: str | None = None, limits=None, n_history: int | None = None):
    """Grade `cells` (the sources, in the order they ran) as a notebook handed to `bprop check`;
    n_history: how many of them are the kernel's history (the last one the cell calling check)."""
    from grading.checks import grade_submission
    from grading.notebook import write_module

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bprop-notebook-") as tmp:
        folder = Path(tmp)
        path = _write_notebook(cells, folder)
        functions = None if only is None else (lambda name: _matches(name, only))
        result = grade_submission(path, spec, limits, shrink=only is None, functions=functions)
        owner = {id(f): c for c in result.checks for f in c.findings}
        findings = [(owner[id(f)], f) for f in result.findings if id(f) in owner]  # computation order
        chosen = _select(result, findings, only)
        first = _first(chosen)
        cx = result.counterexample if only is None else None
        if only is not None and first is not None:
            from grading.shrink import counterexample

            check_result = next(c for c, f in chosen if f is first)
            part = next(p for p in spec.parts if p.id == check_result.part)
            module_path, _ = write_module(path, spec.needed_names(), folder / "module")
            cx = counterexample(module_path, part, first, limits)
    tests = _tests(result, chosen, only, spec)
    out = NotebookResult(
        assignment=spec.name,
        score=round(sum(t["score"] for t in tests), 2),
        max_score=sum(t["max_score"] for t in tests),
        tests=tests,
        first_divergence=_divergence(result, chosen, first, n_history, _binders(cells), spec),
        counterexample=cx,
        notes=list(result.notes),
        error=result.error,
        only=only,
        result=result,
    )
    out.seconds = time.perf_counter() - start
    return out


def _matches(function: str | None, only: str) -> bool:
    return function is not None and (function == only or function.startswith((only + ".", only + "(")))


def _select(result, findings, only):
    if only is None:
        return findings
    chosen = [(c, f) for c, f in findings if f.key is not None and _matches(f.key.function, only)]
    if not chosen:
        known = sorted({f.key.function for _, f in findings if f.key is not None})
        raise ValueError(f"only={only!r}: no check of {result.assignment} compares it; its functions are {known}")
    return chosen


def _first(chosen):
    """The first failing comparison, in the grader's order (the stability case last)."""
    ordered = [f for _, f in chosen if "stability" not in f.case] + [f for _, f in chosen if "stability" in f.case]
    return next((f for f in ordered if not f.passed), None)


def _tests(result, chosen, only, spec) -> list[dict]:
    """One record per check (Gradescope's fields); with `only`, each check's score on its comparisons
    of that function alone, scored the way the assignment scores the check."""
    from grading.feedback import explain_check, gradescope

    if only is None:
        return gradescope(result)["tests"]
    scoring = {(p.id, ch.name): ch.scoring for p in spec.parts for ch in p.checks}
    tests = []
    for c in result.checks:
        mine = [f for cc, f in chosen if cc is c]
        if not mine:
            continue
        passed = sum(f.passed for f in mine)
        if scoring.get((c.part, c.name)) == "fraction":
            score = round(c.points * passed / len(mine), 2)
        else:  # all or nothing
            score = c.points if passed == len(mine) else 0.0
        status = "passed" if score >= c.points else "failed"
        output = f"only {only}'s comparisons: " + explain_check(mine, passed)
        tests.append({"name": c.title, "score": score, "max_score": c.points, "status": status, "output": output})
    return tests


def _divergence(result, chosen, first, n_history: int | None, bound, spec) -> Divergence | None:
    if first is None:
        return None
    check = next(c for c, f in chosen if f is first)
    yours = first.yours if isinstance(first.yours, np.ndarray) and first.yours.dtype.kind in "iuf" else None
    owner = re.split(r"[.(]", first.key.function)[0] if first.key else None
    cell = None
    if owner and owner in bound and n_history is not None and bound[owner] < n_history:
        i = bound[owner]
        last_run = n_history - 2  # the cell before the one calling check (which is the last)
        if i >= last_run:
            cell = f"{owner} is defined in the cell you ran last (In[{i + 1}]): the failure is in the code you just edited."
        else:
            cell = f"{owner} was last defined in In[{i + 1}]."
    return Divergence(
        check=check.title,
        tensor=first.row.name,
        function=first.key.function if first.key else "",
        case=first.case,
        shape=tuple(first.expected.shape) if first.expected is not None else None,
        yours=yours,
        reference=first.expected,
        worst=first.row.describe(("yours", "reference")),
        diagnosis=first.diagnosis.text if first.diagnosis else None,
        cell=cell,
        formula=_formula(spec, check, first),
        worst_index=first.row.worst_index,
    )


def _formula(spec, check, finding) -> str | None:
    """The reference's equation for the failing tensor, from the graded case's own model."""
    from grading.checks import build_cases
    from grading.shrink import formula

    part = next((p for p in spec.parts if p.id == check.part), None)
    case = next((c for c in build_cases(part) if c.id == finding.case), None) if part else None
    return formula(part, case, finding.key) if case is not None and finding.key is not None else None


# Showing ----------------------------------------------------------------------------------------


def text(r: NotebookResult) -> str:
    """The plain-text form: what a terminal, a script or a notebook without HTML shows."""
    head = f"bprop check {printable(r.assignment, False)}: {r.score:g} / {r.max_score:g}"
    if r.only:
        head += f"  (only {printable(r.only, False)})"
    lines = [head]
    if r.error:
        lines.append(f"  nothing could be graded: {printable(r.error, False)}")
    for t in r.tests:
        mark = "ok  " if t["status"] == "passed" else "FAIL"
        lines.append(f"  {mark} {printable(t['name'], False):<34} {t['score']:g}/{t['max_score']:g}")
    d = r.first_divergence
    if d is not None:
        shape = f" {d.shape}" if d.shape is not None else ""
        lines.append(f"first failing: {printable(d.tensor, False)}{shape} in {printable(d.check, False)} ({d.case})")
        lines.append("  " + printable(d.worst, False))
        if d.diagnosis:
            lines.append("  diagnosis: " + printable(d.diagnosis, False))
        if d.formula:
            lines.append(f"  the reference computes {printable(d.tensor, False)} = {printable(d.formula, False)}")
        if d.cell:
            lines.append("  " + printable(d.cell, False))
    if r.counterexample is not None:
        lines.extend("  " + printable(line, False) for line in r.counterexample.text().splitlines())
    return "\n".join(lines)


def _e(value) -> str:
    return html.escape(printable(value))


def _picture(d: Divergence) -> str | None:
    """Yours, the reference's and the difference side by side, as an embedded PNG (None: no array)."""
    if d.yours is None or d.reference is None or d.yours.shape != d.reference.shape or d.yours.size <= 1:
        return None  # no array, the wrong shape, or one number (the worst element says it all)
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ref = np.asarray(d.reference, dtype=np.float64)
    raw = np.asarray(d.yours, dtype=np.float64)
    bad = ~np.isfinite(raw)  # shown as labels ("inf", "nan"), left out of the colour scale
    yours = np.where(bad, np.nan, raw)
    diff = yours - ref
    matrix = ref.ndim >= 2 and min(ref.shape[-2:]) > 1
    fig = Figure(figsize=(9.0, 2.6 if matrix else 2.2), dpi=80)
    axes = fig.subplots(1, 3)
    lim = float(np.nanmax(np.abs(np.concatenate([ref.ravel(), yours.ravel()])))) or 1.0
    dlim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    dlim = dlim or 1.0
    for ax, values, title, scale in (
        (axes[0], yours, "yours", lim),
        (axes[1], ref, "reference", lim),
        (axes[2], diff, "yours - reference", dlim),
    ):
        if matrix:
            grid = values.reshape(-1, values.shape[-1])
            im = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_xticks(range(0, grid.shape[1], max(1, grid.shape[1] // 8)))
            ax.set_yticks(range(0, grid.shape[0], max(1, grid.shape[0] // 8)))
            if title != "reference":
                for r, c in zip(*np.nonzero(bad.reshape(grid.shape))):
                    ax.text(c, r, f"{raw.reshape(grid.shape)[r, c]:g}", ha="center", va="center", color="#b71c1c")
            if d.worst_index is not None and len(d.worst_index) == 2:
                r, c = d.worst_index
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#f0a030", linewidth=2))
        else:
            flat = values.ravel()
            ax.bar(np.arange(flat.size), np.nan_to_num(flat), color=np.where(flat >= 0, "#c0392b", "#2e6da4"))
            ax.set_ylim(-scale * 1.1, scale * 1.1)
            ax.axhline(0, color="black", linewidth=0.6)
            if title != "reference":
                for k in np.nonzero(bad.ravel())[0]:
                    ax.text(k, 0, f"{raw.ravel()[k]:g}", ha="center", va="bottom", color="#b71c1c", fontsize=8)
            ax.set_xticks(range(0, flat.size, max(1, flat.size // 8)))
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
    worst = " (the worst element boxed)" if matrix and d.worst_index is not None else ""
    fig.suptitle(f"{printable(d.tensor, False)}  {tuple(d.shape)}{worst}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


STYLE = (
    "<style>.bprop{font-family:system-ui,sans-serif;font-size:13px;max-width:60em}"
    ".bprop table{border-collapse:collapse;margin:4px 0}.bprop td,.bprop th{padding:2px 10px;text-align:left!important;"
    "border-bottom:1px solid #ddd}.bprop .ok{color:#1e7d32;font-weight:600}.bprop .fail{color:#b71c1c;"
    "font-weight:600}.bprop pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px;"
    "font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace!important}"
    ".bprop .diag{background:#fff4e5;border-left:4px solid #f0a030;padding:6px}</style>"
)


def render_html(r: NotebookResult) -> str:
    """The rich display; every string the submission controls goes through printable then html.escape."""
    title = f"bprop check {_e(r.assignment)}" + (f" (only {_e(r.only)})" if r.only else "")
    parts = [STYLE, '<div class="bprop">', f"<h3>{title}: {r.score:g} / {r.max_score:g}</h3>"]
    if r.error:
        parts.append(f'<p class="fail">Nothing could be graded: {_e(r.error)}</p>')
    rows = "".join(
        f'<tr><td>{_e(t["name"])}</td><td class="{"ok" if t["status"] == "passed" else "fail"}">'
        f"{'pass' if t['status'] == 'passed' else 'FAIL'}</td><td>{t['score']:g} / {t['max_score']:g}</td></tr>"
        for t in r.tests
    )
    parts.append(f"<table><tr><th>check</th><th></th><th>points</th></tr>{rows}</table>")
    d = r.first_divergence
    if d is not None:
        shape = f" {_e(d.shape)}" if d.shape is not None else ""
        parts.append(
            f"<h4>First failing tensor: <code>{_e(d.tensor)}</code>{shape} &mdash; {_e(d.check)}, "
            f"case {_e(d.case)}, from <code>{_e(d.function)}</code></h4>"
        )
        if d.cell:
            parts.append(f"<p><b>{_e(d.cell)}</b></p>")
        png = _picture(d)
        if png:
            parts.append(f'<img alt="yours, the reference and the difference" src="data:image/png;base64,{png}"/>')
        parts.append(f"<p>Worst element: {_e(d.worst)}</p>")
        if d.formula:
            parts.append(f"<p>The reference computes <code>{_e(d.tensor)} = {_e(d.formula)}</code></p>")
        if d.diagnosis:
            parts.append(f'<p class="diag"><b>Likely bug:</b> {_e(d.diagnosis)}</p>')
    if r.counterexample is not None:
        parts.append("<h4>A counterexample small enough to check by hand</h4>")
        parts.append(f'<pre class="cx">{_e(r.counterexample.text())}</pre>')
    for t in r.tests:
        if t["status"] != "passed" and t.get("output"):
            parts.append(f"<details><summary>{_e(t['name'])}: details</summary><pre>{_e(t['output'])}</pre></details>")
    if r.notes:
        notes = "\n".join(map(str, r.notes))
        parts.append(f"<details><summary>what was graded</summary><pre>{_e(notes)}</pre></details>")
    parts.append(
        f"<p style='color:#777'>{r.seconds:.1f} s; the same sandbox and checks as <code>bprop check</code>.</p>"
    )
    parts.append("</div>")
    return "".join(parts)


# The IPython magic ------------------------------------------------------------------------------


def bprop_check_magic(line: str):
    """%bprop_check ASSIGNMENT [--only NAME]"""
    import shlex

    words = shlex.split(line)
    only = None
    if "--only" in words:
        k = words.index("--only")
        if k + 1 >= len(words):
            raise ValueError("%bprop_check: --only needs a function name, e.g. --only Dense.backward")
        only = words[k + 1]
        del words[k : k + 2]
    if len(words) != 1:
        raise ValueError(f"%bprop_check: expected one assignment (a name or a file), got {words}")
    return check(words[0], only=only)


def load_ipython_extension(ipython) -> None:
    ipython.register_magic_function(bprop_check_magic, magic_kind="line", magic_name="bprop_check")
