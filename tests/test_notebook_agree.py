"""Feedback in the notebook and from `bprop check` agree on every fixture submission: the same code,
as notebook cells through bprop.notebook.check_cells and as the file through grade_submission."""

from __future__ import annotations

import html

import pytest
from notebook_cells import FIXTURES, ROOT, assignment_of, cells_of, graded

from bprop.notebook import check_cells, render_html, text
from grading.escaping import printable
from grading.feedback import gradescope


@pytest.mark.parametrize("rel", FIXTURES)
def test_notebook_and_bprop_check_agree(rel):
    assignment = assignment_of(rel)
    cli = graded(rel)  # grade_submission(ROOT / rel, assignment), shared with two other modules
    nb = check_cells(cells_of((ROOT / rel).read_text()), assignment)
    assert (nb.score, nb.max_score) == (cli.score, cli.max_score)
    assert [(t["name"], t["score"], t["status"], t["output"]) for t in nb.tests] == [
        (t["name"], t["score"], t["status"], t["output"]) for t in gradescope(cli)["tests"]
    ]
    page, plain = render_html(nb), text(nb)
    if cli.first_divergence is None:
        assert nb.first_divergence is None and nb.counterexample is None and cli.counterexample is None
        return
    d = nb.first_divergence
    assert f"{d.tensor} ({d.case})" == cli.first_divergence
    assert d.diagnosis == cli.diagnosis
    assert html.escape(printable(d.tensor)) in page and d.tensor in plain
    if d.diagnosis:
        assert html.escape(printable(d.diagnosis)) in page
    if cli.counterexample is None:
        assert nb.counterexample is None
    else:
        assert nb.counterexample.text() == cli.counterexample.text()
        assert html.escape(printable(cli.counterexample.text())) in page


def _python(code: str, tmp_path, name: str = "script.py"):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / name
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)


def test_import_bprop_stays_light(tmp_path):
    done = _python(
        "import sys, bprop\nheavy = [m for m in ('torch', 'keras', 'tensorflow', 'numpy', 'grading', 'IPython')"
        " if m in sys.modules]\nprint(heavy)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_ipython_a_script_gets_the_same_as_text(tmp_path):
    """Outside a kernel, bprop.check grades the calling script; the result prints as text."""
    source = (ROOT / "layer/wrong_sign.py").read_text()
    done = _python(source + '\nimport bprop\nprint(bprop.check("layer-api"))\n', tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bprop check layer-api: 7 / 13" in done.stdout
    assert "first failing: dense_3.dW (5, 3) in layers: weight_gradients (small-float64)" in done.stdout
    assert "counterexample" in done.stdout and "x.T @ grad_out" in done.stdout


def test_only_one_function_scores_its_own_comparisons():
    import dataclasses

    rel = "layer/wrong_sign.py"
    assignment = assignment_of(rel)
    cells = cells_of((ROOT / rel).read_text())
    relu = check_cells(cells, assignment, only="ReLU")  # wrong_sign's ReLU is right
    assert relu.score == relu.max_score > 0 and relu.first_divergence is None and relu.counterexample is None
    dense = check_cells(cells, assignment, only="Dense.backward")
    assert [t["name"] for t in dense.tests] == [
        "layers: backward",
        "layers: weight_gradients",
        "layers: bias_gradients",
        "layers: stability",
    ]
    assert dense.first_divergence.tensor == "dense_3.dW" and dense.counterexample.function == "Dense.backward"
    assert "only Dense.backward's comparisons" in dense.tests[1]["output"]
    part = assignment.parts[0]
    checks = tuple(
        dataclasses.replace(c, scoring="fraction") if c.name == "weight_gradients" else c for c in part.checks
    )
    fraction = dataclasses.replace(assignment, parts=(dataclasses.replace(part, checks=checks),))
    halved = cells_of((ROOT / "layer/dW_divided_twice.py").read_text())  # right at a batch of 1 (width1)
    tests = check_cells(halved, fraction, only="Dense").tests
    partial = next(t for t in tests if t["name"].endswith("weight_gradients"))
    assert 0 < partial["score"] < partial["max_score"]  # the assignment's fraction scoring, on Dense's own
    with pytest.raises(ValueError, match="only='affine_backward': no check of layer-api compares it"):
        check_cells(cells, assignment, only="affine_backward")


def test_only_calls_only_that_function():
    """Working through one function at a time: an unfinished train that never returns does not hold up
    only="Dense.backward" (train is not called at all), while the full check waits for its verdict."""
    import dataclasses
    import time

    from grading.sandbox import Limits

    source = (ROOT / "layer/correct.py").read_text()
    unfinished = source.replace(
        "def train(network, X, y):\n", "def train(network, X, y):\n    while True:\n        pass\n"
    )
    assert unfinished != source
    assignment = assignment_of("layer/correct.py")
    limits = dataclasses.replace(Limits(), wall_s=4.0, cpu_s=4.0)  # train waits for it twice (grading, shrink)
    start = time.perf_counter()
    dense = check_cells(cells_of(unfinished), assignment, only="Dense.backward", limits=limits)
    assert dense.score == dense.max_score == 6.0  # backward 2, weight_gradients 2, bias 1, stability 1
    assert dense.result.verdicts == []
    assert time.perf_counter() - start < limits.wall_s  # never waited for train's wall limit
    full = check_cells(cells_of(unfinished), assignment, limits=limits)
    assert any(v.startswith("train(network, X, y): ") for v in full.result.verdicts)
    assert full.score == full.max_score - 2  # training_step
