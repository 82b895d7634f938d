"""Notebook (and .py) submissions -> the module the sandbox loads: what is kept, what is skipped, why.

The notebooks are built here with nbformat, the way students' notebooks look: magics, shell
escapes, data loading that needs the internet, plotting and minutes of training at the top level.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from grading.assignment import load_assignment
from grading.checks import grade_submission
from grading.notebook import SubmissionError, extract, write_module

FUNCTION_PY = Path(__file__).parent / "submissions" / "function" / "correct.py"


def notebook(path: Path, *cells: str, markdown: str = "# Homework 3") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown)] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def student_notebook(tmp_path: Path) -> Path:
    """The function-API homework as a student hands it in (the correct solution, split into cells)."""
    code = FUNCTION_PY.read_text()
    defs = code[code.index("import math") : code.index("# the notebook's training")]
    return notebook(
        tmp_path / "alice.ipynb",
        "!pip install tensorflow\n%matplotlib inline\nimport tensorflow as tf\nimport matplotlib.pyplot as plt",
        "(x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data(path='mnist.npz')\n"
        "plt.imshow(x_train[0], cmap='gray');",
        defs,
        "%%bash\nls -la /",
        "%%time\nfor epoch in range(3):\n    for i in range(x_train.shape[0]):\n        train_one_sample(x_train[i], y_train[i])",
        "files = !ls\nprint(files)",
        "def feed_forward_dataset(x, y):\n    return [feed_forward_sample(x[i], y[i]) for i in range(len(x))]\n"
        "feed_forward_dataset(x_test, y_test)",
        "train_one_sample?",
    )


def test_notebook_keeps_the_api_and_skips_the_work(tmp_path):
    needed = load_assignment("function-api").needed_names()
    extracted = extract(student_notebook(tmp_path), needed)
    src = extracted.source
    for name in ("def feed_forward_sample", "def train_one_sample", "def sigmoid", "weights = [", "biases = ["):
        assert name in src
    for work in (
        "load_data",
        "plt.imshow",
        "import tensorflow",
        "import matplotlib",
        "train_one_sample(x_train",
        "ls -la",
        "pip",
    ):
        assert work not in src, f"{work!r} should have been skipped"
    why = {s.why for s in extracted.skipped}
    assert "loop" in why and "top-level call" in why and "not used by the graded API" in why
    assert any("shell escape" in w for w in why) and any("IPython magic" in w for w in why)
    assert any("%%bash" in w for w in why) and any("cell magic" in w and "body kept" in w for w in why)
    data = next(s for s in extracted.skipped if "load_data" in s.code)
    assert data.where == "cell 3, line 1" and data.why == "not used by the graded API"
    assert "feed_forward_dataset" not in src  # a definition the API never reaches
    compile(src, "alice.py", "exec")


def test_notebook_submission_is_graded_like_its_py(tmp_path):
    result = grade_submission(student_notebook(tmp_path), load_assignment("function-api"))
    assert result.score == result.max_score, "\n".join(c.output for c in result.checks if not c.passed)
    assert "skipped" in result.notes[0] and "cell 3, line 1: (x_train, y_train)" in result.notes[0]


def test_a_cell_with_a_syntax_error_is_skipped_and_reported(tmp_path):
    path = notebook(
        tmp_path / "b.ipynb", "import numpy as np\ndef f(x):\n    return np.tanh(x)", "def broken(:\n    pass"
    )
    extracted = extract(path, ["f"])
    assert "def f" in extracted.source
    bad = [s for s in extracted.skipped if "syntax error" in s.why]
    assert len(bad) == 1 and bad[0].where.startswith("cell 3")


def test_py_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("import numpy as np\n\ndef f(x)\n    return x\n")
    with pytest.raises(SubmissionError, match=r"c.py: syntax error at line 3"):
        extract(path, ["f"])


def test_unreadable_notebook_is_a_clear_error(tmp_path):
    path = tmp_path / "d.ipynb"
    path.write_text("{not json")
    with pytest.raises(SubmissionError, match="not a readable Jupyter notebook"):
        extract(path, ["f"])


def test_py_keeps_its_line_numbers(tmp_path):
    path = tmp_path / "e.py"
    path.write_text("import numpy as np\nprint('hi')\n\n\ndef f(x):\n    return 1 / 0\n")
    module, _ = write_module(path, ["f"], tmp_path / "out")
    lines = module.read_text().splitlines()
    assert lines[4] == "def f(x):" and lines[5] == "    return 1 / 0" and lines[1] == ""


def test_a_local_name_does_not_pull_in_a_global_of_the_same_name(tmp_path):
    """symtable scopes: `x_train` local to a function must not keep the data-loading assignment."""
    path = tmp_path / "f.py"
    path.write_text(
        "import numpy as np\nx_train = np.load('train.npy')\n"
        "def api(x_train):\n    return [np.sum(v) for v in x_train]\n"
        "SCALE = 2.0\nclass Net:\n    k = SCALE\n    def go(self):\n        return helper()\n"
        "def helper():\n    return 1\n"
    )
    src = extract(path, ["api", "Net"]).source
    assert "np.load" not in src
    assert "SCALE = 2.0" in src and "def helper" in src  # reached through the class body and a method


def test_try_import_and_future_import_are_kept(tmp_path):
    path = tmp_path / "g.py"
    path.write_text(
        "from __future__ import annotations\ntry:\n    from tqdm import tqdm\nexcept ImportError:\n    tqdm = None\n"
        "def f():\n    return tqdm\n"
    )
    src = extract(path, ["f"]).source
    assert src.lstrip().startswith("from __future__ import annotations")
    assert "from tqdm import tqdm" in src


def test_everything_kept_when_no_api_is_named(tmp_path):
    path = tmp_path / "h.py"
    path.write_text("import numpy as np\nA = 1\ndef f():\n    return A\nf()\n")
    extracted = extract(path, None)
    assert "A = 1" in extracted.source and "def f" in extracted.source
    assert [s.why for s in extracted.skipped] == ["top-level call"]


# Bounds on the grader's own work, before any sandbox starts ------------------------------------

HOSTILE = Path(__file__).parent / "hostile"


def test_a_12000_link_chain_of_assignments_is_extracted_in_linear_time():
    """Before: a pass over every statement per link, and `st in kept` on dataclasses (132 s)."""
    import time

    t = time.thread_time()
    extracted = extract(HOSTILE / "assignment_chain.py", needed=["Dense"])
    assert extracted.kept == 12_001 and not extracted.skipped
    assert time.thread_time() - t < 5.0


def test_the_extraction_cpu_budget_gives_a_verdict(monkeypatch):
    from grading import notebook as nb

    monkeypatch.setattr(nb, "EXTRACT_CPU_S", 0.0)
    with pytest.raises(SubmissionError, match=r"assignment_chain\.py: .* took more than 0 s of the grader's CPU"):
        extract(HOSTILE / "assignment_chain.py", needed=["Dense"])


def test_a_file_beyond_the_limits_is_refused(tmp_path, monkeypatch):
    from grading import notebook as nb

    monkeypatch.setattr(nb, "MAX_STATEMENTS", 1000)
    with pytest.raises(SubmissionError, match=r"12,002 top-level statements \(at most 1,000\)"):
        extract(HOSTILE / "assignment_chain.py", needed=["Dense"])
    big = tmp_path / "big.py"
    big.write_bytes(b"#" * (nb.MAX_BYTES + 1))
    with pytest.raises(SubmissionError, match=r"big\.py: larger than 8 MB"):
        extract(big)


def test_the_parser_giving_up_is_a_verdict(tmp_path):
    deep = tmp_path / "deep.py"
    deep.write_text("x = " + "(" * 300 + ")" * 300 + "\n")
    with pytest.raises(SubmissionError, match=r"deep\.py: (the parser gave up|syntax error)"):
        extract(deep)


@pytest.mark.parametrize("suffix", [".py", ".ipynb"])
def test_a_symbolic_link_is_refused_and_its_target_never_read(tmp_path, suffix):
    secret = tmp_path / "root-only.txt"
    secret.write_text("SECRET-CONTENT = 1\n")
    secret.chmod(0o600)
    link = tmp_path / f"evil{suffix}"
    link.symlink_to(secret)
    with pytest.raises(SubmissionError, match=rf"evil\{suffix}: a symbolic link") as info:
        extract(link)
    assert "SECRET" not in str(info.value)


def test_a_forbidden_import_in_a_notebook_is_named_by_cell_and_line(tmp_path):
    """The verdict points at the student's cell, and an import only the skipped data loading uses
    is not a finding (it never runs)."""
    from grading.integrity import DEFAULT_FORBIDDEN, scan_file

    nb = notebook(
        tmp_path / "hw.ipynb",
        "import numpy as np\nfrom tensorflow import keras\n(x_train, y_train), _ = keras.datasets.mnist.load_data()",
        "import importlib\n\n\ndef sigmoid(z):\n    torch = importlib.import_module('to' + 'rch')\n    return torch.sigmoid(z)",
    )
    module, _ = write_module(nb, ["sigmoid"], tmp_path / "out")
    uses = scan_file(module, DEFAULT_FORBIDDEN)
    assert [(u.module, u.where) for u in uses] == [("torch", "cell 3, line 5")]  # cell 1 is the markdown
