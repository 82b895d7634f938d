"""bprop.check in a real Jupyter kernel (nbclient + ipykernel): the executed outputs are what a
student sees, and the score is what `bprop check` gives the same code saved as a file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from notebook_cells import ROOT, assignment_of, cells_of, definitions_only

from grading.checks import grade_submission

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extras (pip install bprop[test])")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extras (pip install bprop[test])")

REPO = Path(__file__).parents[1]
pytestmark = pytest.mark.slow  # a kernel start and a few gradings per test
CHECK = 'import bprop\nresult = bprop.check("{assignment}")\nresult'


def run(cells: list[str], order: list[int] | None = None, timeout: int = 300, cwd: Path | None = None):
    """Execute `cells` in a fresh kernel (in `order`, default top to bottom; in `cwd`); the executed notebook."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    resources = {"metadata": {"path": str(cwd)}} if cwd else {}
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=False, resources=resources
    )
    with client.setup_kernel(env=env):
        for i in order if order is not None else range(len(cells)):
            client.execute_cell(nb.cells[i], i)
    return nb


def result_of(cell) -> tuple[str, str]:
    """(text/plain, text/html) of a cell's displayed result."""
    data = next(o["data"] for o in cell.outputs if o.get("output_type") == "execute_result")
    return data["text/plain"], data.get("text/html", "")


def score_in(plain: str) -> tuple[float, float]:
    m = re.search(r"^bprop check \S+: ([\d.]+) / ([\d.]+)", plain, re.M)
    return float(m.group(1)), float(m.group(2))


def file_score(source: str, tmp_path: Path, rel: str) -> float:
    path = tmp_path / "saved.py"
    path.write_text(source)
    return grade_submission(path, assignment_of(rel), shrink=False).score


def test_correct_submission_in_a_kernel(tmp_path):
    rel = "layer/correct.py"
    cells = cells_of((ROOT / rel).read_text())
    nb = run([*cells, CHECK.format(assignment="layer-api")])
    plain, page = result_of(nb.cells[-1])
    assert score_in(plain) == (13.0, 13.0) == (file_score((ROOT / rel).read_text(), tmp_path, rel), 13.0)
    assert "13 / 13" in page and "FAIL" not in page and "counterexample" not in page


def test_buggy_submission_shows_the_tensor_and_the_diagnosis(tmp_path):
    rel = "layer/wrong_sign.py"
    source = (ROOT / rel).read_text()
    nb = run([*cells_of(source), CHECK.format(assignment="layer-api")])
    plain, page = result_of(nb.cells[-1])
    assert score_in(plain)[0] == file_score(source, tmp_path, rel) == 7.0
    assert "<code>dense_3.dW</code> (5, 3)" in page
    assert "sign" in page and "Likely bug" in page  # the diagnosis in words
    assert 'src="data:image/png;base64,' in page  # yours / reference / difference
    assert "A counterexample small enough to check by hand" in page and "x.T @ grad_out" in page


def test_cells_run_out_of_order(tmp_path):
    """The notebook lists Layer after the classes that subclass it, but the student ran it first: the
    kernel's order is what counts (the file, in notebook order, cannot even be imported)."""
    rel = "layer/correct.py"
    cells = cells_of((ROOT / rel).read_text())
    layer = next(i for i, c in enumerate(cells) if c.startswith("class Layer"))
    moved = [c for i, c in enumerate(cells) if i != layer] + [cells[layer]]  # Layer's cell now last
    first = len(moved) - 1
    order = [0, first, *range(1, first), first + 1] if not moved[0].startswith("class Layer") else None
    nb = run([*moved, CHECK.format(assignment="layer-api")], order=order)
    plain, _ = result_of(nb.cells[-1])
    assert score_in(plain) == (13.0, 13.0)
    as_listed = "\n\n".join(moved)
    assert file_score(as_listed, tmp_path, rel) == 0.0  # top to bottom: NameError: Layer


def test_a_class_redefined_after_a_fix(tmp_path):
    """Buggy Dense, check (fails, in the cell just run), fixed Dense, check (passes): the latest wins."""
    buggy = cells_of((ROOT / "layer/wrong_sign.py").read_text())
    fixed = next(c for c in cells_of((ROOT / "layer/correct.py").read_text()) if c.startswith("class Dense"))
    nb = run([*buggy, CHECK.format(assignment="layer-api"), fixed, CHECK.format(assignment="layer-api")])
    before, before_page = result_of(nb.cells[len(buggy)])
    after, after_page = result_of(nb.cells[-1])
    assert score_in(before)[0] == 7.0 and score_in(after) == (13.0, 13.0)
    assert "dense_3.dW" in before_page and "FAIL" not in after_page
    redefined = "\n\n".join([*buggy, fixed])
    assert file_score(redefined, tmp_path, "layer/correct.py") == 13.0


def test_the_cell_just_edited_is_named():
    cells = cells_of((ROOT / "layer/wrong_sign.py").read_text())
    dense = next(i for i, c in enumerate(cells) if c.startswith("class Dense"))
    order = [*range(len(cells)), dense, len(cells)]  # the student re-runs Dense's cell, then checks
    nb = run([*cells, CHECK.format(assignment="layer-api")], order=order)
    plain, page = result_of(nb.cells[-1])
    assert "the cell you ran last" in plain and "the failure is in the code you just edited" in page


def test_a_class_from_the_students_own_file(tmp_path):
    """Where the history cannot reach the source: Dense imported from the student's own .py is graded
    from that file (its `from mylayers import Dense` line is left out of the module)."""
    cells = cells_of((ROOT / "layer/wrong_sign.py").read_text())
    dense = next(c for c in cells if c.startswith("class Dense"))
    (tmp_path / "mylayers.py").write_text("import numpy as np\n\n\nclass Layer:\n    pass\n\n\n" + dense + "\n")
    rest = definitions_only([c for c in cells if not c.startswith("class Dense")])
    nb = run([*rest, "from mylayers import Dense", CHECK.format(assignment="layer-api")], cwd=tmp_path)
    plain, page = result_of(nb.cells[-1])
    assert score_in(plain)[0] == 7.0  # wrong_sign's Dense, from the file
    assert "mylayers: source from its file mylayers.py" in page and "dense_3.dW" in page


def test_functions_defined_by_run_come_from_inspect(tmp_path):
    """`%run losses.py` binds the loss functions outside the history: their source comes from inspect."""
    cells = cells_of((ROOT / "layer/correct.py").read_text())
    losses = [c for c in cells if c.startswith(("def softmax_crossentropy", "def grad_softmax_crossentropy"))]
    assert len(losses) == 2
    (tmp_path / "losses.py").write_text("import numpy as np\n\n\n" + "\n\n".join(losses) + "\n")
    rest = definitions_only([c for c in cells if c not in losses])
    nb = run([*rest, "%run losses.py", CHECK.format(assignment="layer-api")], cwd=tmp_path)
    plain, page = result_of(nb.cells[-1])
    assert score_in(plain) == (13.0, 13.0)
    assert "softmax_crossentropy_with_logits: source from inspect" in page


HOSTILE = """
import os, signal
class Dense(Layer):
    def __init__(self, input_units, output_units, learning_rate=0.1):
        self.weights = np.zeros((input_units, output_units)); self.biases = np.zeros(output_units)
    def forward(self, input):
        print("<script>alert(1)</script>\\x1b[2J")
        raise ValueError("<img src=x onerror=alert(2)>")
    def backward(self, input, grad_output):
        os.kill(os.getppid(), signal.SIGKILL)  # the parent: the kernel, were it not sandboxed
        os.kill(1, signal.SIGKILL)
        while True:
            pass
"""


def test_hostile_code_leaves_the_kernel_alive_and_the_verdict_comes_back():
    cells = [HOSTILE if c.startswith("class Dense") else c for c in cells_of((ROOT / "layer/correct.py").read_text())]
    cells = definitions_only(cells)  # no top-level training with this Dense
    nb = run([*cells, CHECK.format(assignment="layer-api"), "print('kernel alive', 6 * 7)"])
    plain, page = result_of(nb.cells[-2])
    score, top = score_in(plain)
    assert (score, top) == (2.0, 13.0)  # the loss and its gradient: the checks that never touch Dense
    assert re.search(r"^  ok   layers: loss_gradient ", plain, re.M) and re.search(
        r"^  FAIL layers: backward ", plain, re.M
    )
    assert "dense_3.backward raised PermissionError" in page  # the sandbox refused the kill; the reason shown
    assert "<script>" not in page and "<img src=x" not in page and "&lt;img src=x" in page
    assert "\x1b" not in page
    assert "kernel alive 42" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)


def test_the_magic_one_function_at_a_time():
    cells = cells_of((ROOT / "layer/wrong_sign.py").read_text())
    nb = run([*cells, "%load_ext bprop", "%bprop_check layer-api --only Dense.backward"])
    plain, page = result_of(nb.cells[-1])
    assert "(only Dense.backward)" in plain
    names = re.findall(r"^  (?:ok  |FAIL) (\S+ \S+)", plain, re.M)
    assert names == ["layers: backward", "layers: weight_gradients", "layers: bias_gradients", "layers: stability"]
    assert "dense_3.dW" in page
