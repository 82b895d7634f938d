"""The coursera-dnn built-in (grading/formats/coursera.py): every test submission graded in the real sandbox.

The expectations live in the submissions (tests/submissions/coursera/*.py):
    # expect: <check> <tensor> <bug>    a failing comparison of <tensor> in <check> is diagnosed <bug>, or
                                        "error" (the call failed) or "none" (wrong numbers, no hypothesis fits)
    # clean: <check> <case>             every comparison of <check> in <case> agrees: the bug shows only on
                                        some shapes or settings, and this is one where it does not
"""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from grading.assignment import AssignmentError, load_assignment, parse_assignment
from grading.checks import build_cases, grade_submission
from grading.formats import coursera

ROOT = Path(__file__).parent / "submissions" / "coursera"
BUGGY = sorted(p.name for p in ROOT.glob("*.py") if p.name != "correct.py")
ASSIGNMENT = load_assignment("coursera-dnn")
CASES = {"small-float64", "small-float32", "square-float64", "m1-float64", "deep-float64", "stability-float64"}


@cache
def graded(rel: str, assignment=ASSIGNMENT):
    return grade_submission(ROOT / rel, assignment, shrink=False)


def expectations(rel: str):
    text = (ROOT / rel).read_text()
    return re.findall(r"^# expect: (\S+) (.+) (\S+)$", text, re.M), re.findall(r"^# clean: (\S+) (\S+)$", text, re.M)


def test_there_are_ten_or_more_buggy_submissions_each_stating_what_it_expects():
    assert len(BUGGY) >= 10
    for rel in BUGGY:
        assert expectations(rel)[0], f"{rel} has no '# expect:' line"


def test_correct_submission_gets_full_marks():
    result = graded("correct.py")
    failed = [f"{c.title}: {c.output}" for c in result.checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert result.score == result.max_score == 14
    assert result.first_divergence is None and result.error is None and result.status == "graded"
    assert {f.case for f in result.findings} == CASES
    planned = sum(len(c.expected) for c in build_cases(ASSIGNMENT.parts[0]))
    assert len(result.findings) == planned > 250, "the cases did not run"
    # every depth and the layer shapes the sweep promises were compared
    names = {f.row.name for f in result.findings}
    assert {"L_model_backward.dW4", "L_model_backward.dA0", "update_parameters.W4 (step 2)"} <= names


@pytest.mark.parametrize("rel", BUGGY)
def test_buggy_submission_is_flagged_on_the_right_function_tensor_and_diagnosis(rel):
    result = graded(rel)
    expects, cleans = expectations(rel)
    assert result.score < result.max_score and result.first_divergence is not None
    for check, tensor, bug in expects:
        findings = [f for c in result.checks if c.name == check for f in c.findings if f.row.name == tensor]
        assert findings, f"{rel}: no comparison of {tensor} in check {check}"
        failing = [f for f in findings if not f.passed]
        assert failing, f"{rel}: {tensor} passed in every case of {check}"
        got = {
            "error"
            if f.diagnosis is None and f.row.worst_index is None
            else (f.diagnosis.bug if f.diagnosis else "none")
            for f in failing
        }
        assert bug in got, f"{rel}: {tensor} in {check}: expected {bug}, got {got}:\n" + "\n".join(
            f"  {f.case}: {f.row.describe(('yours', 'reference'))} | {f.diagnosis}" for f in failing
        )
        check_result = next(c for c in result.checks if c.name == check)
        assert check_result.score < check_result.points
        assert tensor in check_result.output
    for check, case in cleans:
        own = [f for c in result.checks if c.name == check for f in c.findings if f.case == case]
        assert own, f"{rel}: no comparison of {check} in {case}"
        assert all(f.passed for f in own), f"{rel}: {check} fails in {case} too: " + "; ".join(
            f"{f.row.name}: {f.row.note}" for f in own if not f.passed
        )


def test_the_first_divergence_names_the_function_and_the_diagnosis_its_numbers():
    result = graded("m_from_rows.py")
    assert result.first_divergence == "linear_backward[1].dW (small-float64)"
    assert "A_prev.shape[0] = 5" in result.diagnosis and "m = A_prev.shape[1] = 6" in result.diagnosis
    assert "relative error of" in result.diagnosis and "differs from the reference by" in result.diagnosis
    square = graded("dW_transposed_square_only.py")
    assert square.first_divergence == "linear_backward[1].dW (square-float64)"
    assert "the reference's layout (W as (n_in, n_out)), not the course's (W as (n_l, n_{l-1}))" in square.diagnosis
    rows = graded("rows_layout_forward.py")
    assert "Z transposed: the reference's layout (examples in rows), not the course's (in columns)" in rows.diagnosis


def test_hostile_submission_costs_only_its_own_marks():
    result = graded("hostile/everything_at_once.py")
    by_name = {c.name: c for c in result.checks}
    kept = {"linear_forward", "L_model_forward", "linear_backward", "update_parameters"}
    assert {n for n, c in by_name.items() if c.passed} == kept
    assert result.score == sum(by_name[n].points for n in kept) == 6
    assert result.status == "crashed" and result.verdicts == ["sigmoid_backward: exited with status 3"]
    out = {n: c.output for n, c in by_name.items()}
    assert "A is str of dtype <U1, expected numbers" in out["linear_activation_forward"]
    assert "compute_cost raised RuntimeError: compute_cost refuses" in out["compute_cost"]
    assert "relu_backward's result is NoneType" in out["relu_backward"]
    assert "exited with status 3" in out["sigmoid_backward"]
    assert "L_model_backward raised ValueError" in out["L_model_backward"]  # the lying caches: its own error
    printed = json.dumps([c.output for c in result.checks])
    assert "noise" not in printed and "\x1b" not in printed  # what it printed is not the feedback


def _column_net(rng, dims, m):
    X = rng.normal(size=(dims[0], m))
    params = {}
    for j in range(1, len(dims)):
        params[f"W{j}"] = rng.normal(size=(dims[j], dims[j - 1])) / np.sqrt(dims[j - 1])
        params[f"b{j}"] = rng.uniform(-0.5, 0.5, (dims[j], 1))
    return X, params, rng.integers(0, 2, (1, m)).astype(float)


def test_the_layout_table_gives_the_notebooks_formulas():
    """The reference through Columns equals the notebook's own formulas written out in the course's layout."""
    rng = np.random.default_rng(0)
    A, W, b, dZ = rng.normal(size=(5, 7)), rng.normal(size=(3, 5)), rng.normal(size=(3, 1)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(coursera.ref_linear(A, W, b), W @ A + b, rtol=1e-14)
    dA_prev, dW, db = coursera.ref_linear_backward(dZ, A, W, b)
    np.testing.assert_allclose(dW, dZ @ A.T / 7, rtol=1e-14)
    np.testing.assert_allclose(db, dZ.sum(axis=1, keepdims=True) / 7, rtol=1e-14)
    np.testing.assert_allclose(dA_prev, W.T @ dZ, rtol=1e-14)
    assert db.shape == (3, 1) and dW.shape == W.shape
    Z = rng.normal(size=(3, 7))
    s = 1 / (1 + np.exp(-Z))
    np.testing.assert_allclose(coursera.ref_activation_backward("sigmoid", dZ, Z), dZ * s * (1 - s), rtol=1e-13)
    np.testing.assert_array_equal(coursera.ref_activation_backward("relu", dZ, Z), dZ * (Z > 0))
    AL, Y = rng.uniform(0.05, 0.95, (1, 7)), rng.integers(0, 2, (1, 7)).astype(float)
    cost = -np.mean(Y * np.log(AL) + (1 - Y) * np.log(1 - AL))
    assert coursera.ref_cost(AL, Y).shape == () and abs(coursera.ref_cost(AL, Y) - cost) < 1e-14
    np.testing.assert_allclose(coursera.ref_dAL(AL, Y), -(Y / AL - (1 - Y) / (1 - AL)), rtol=1e-13)


def test_the_reference_grads_are_the_mean_costs_derivatives_by_finite_differences():
    """dW{l}, db{l} from the reference chain are d(cost)/dW; dA0 is m times d(cost)/dX (the summed cost's)."""
    rng = np.random.default_rng(1)
    dims, m = (4, 3, 3, 1), 5
    X, params, Y = _column_net(rng, dims, m)
    L = len(dims) - 1

    def cost(X, params):
        return float(coursera.ref_cost(coursera.ref_forward(X, params, L)[1], Y))

    layers, AL = coursera.ref_forward(X, params, L)
    grads = coursera.ref_backward(layers, params, coursera.ref_dAL(AL, Y), coursera.model_acts(L))
    h = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            up, down = {**params, name: value.copy()}, {**params, name: value.copy()}
            up[name][idx] += h
            down[name][idx] -= h
            numeric[idx] = (cost(X, up) - cost(X, down)) / (2 * h)
        np.testing.assert_allclose(grads[f"d{name}"], numeric, rtol=1e-6, atol=1e-9)
    numeric = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        up, down = X.copy(), X.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (cost(up, params) - cost(down, params)) / (2 * h)
    np.testing.assert_allclose(grads["dA0"], m * numeric, rtol=1e-6, atol=1e-9)


def test_the_sweep_and_the_saturation_are_what_the_module_doc_says():
    cases = {c.id: c for c in build_cases(ASSIGNMENT.parts[0])}
    assert set(cases) == CASES
    assert cases["square-float64"].notes["dims"] == (4, 4, 4, 1) and cases["m1-float64"].notes["m"] == 1
    assert len(cases["deep-float64"].notes["dims"]) - 1 == 4 and len(set(cases["deep-float64"].notes["dims"][:-1])) == 4
    stab = cases["stability-float64"]
    _, _, items = stab.probes["sigmoid_backward"]
    assert max(float(np.abs(it["args"][1]).max()) for it in items) == pytest.approx(1e3)  # exp(1000) overflows
    _, _, (item,) = stab.probes["L_model_backward"]
    _, AL = coursera.ref_forward(item["X"], item["parameters"], 2)
    assert 0 < AL.min() < 1e-12 and 1 - AL.max() < 1e-12 and AL.max() < 1  # saturated, and dAL still finite
    assert np.all((item["Y"] == 1) == (AL < 0.5))  # every label on the far side
    assert "update_parameters" not in stab.probes  # no saturation to speak of in an update


def _arrays(value) -> list:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [a for v in value for a in _arrays(v)]
    return []


def test_no_expected_value_is_sent():
    """The driver's kwargs hold inputs only: no expected tensor of a case appears among its probes' arrays."""
    for case in build_cases(ASSIGNMENT.parts[0]):
        sent = _arrays([(common, items) for _, common, items in case.probes.values()])
        for exp in case.expected:
            if exp.value.size < 4 or exp.key.field == "len(caches)":
                continue  # a scalar or a 1x1 can equal an input by chance
            assert not any(a.shape == exp.value.shape and np.array_equal(a, exp.value) for a in sent), exp.key


def test_a_real_notebook_with_the_courses_imports_and_test_calls_gets_full_marks(tmp_path):
    """The course's notebook as handed in: dnn_utils / testCases / public_tests imports, a magic, its test
    calls at the top level. The extraction skips the calls and the missing star imports; dnn_utils is the
    driver's stand-in."""
    import nbformat

    code = (ROOT / "correct.py").read_text().split('"""', 2)[2]
    cells = [
        "import numpy as np\nimport h5py\nimport matplotlib.pyplot as plt\nfrom testCases import *\n"
        "from dnn_utils import sigmoid, sigmoid_backward, relu, relu_backward\nfrom public_tests import *\n"
        "%matplotlib inline\nnp.random.seed(1)",
        *code.split("\n\n\n"),
        "t_A_prev, t_W, t_b = linear_forward_test_case()\nt_Z, t_linear_cache = linear_forward(t_A_prev, t_W, t_b)\n"
        "linear_forward_test(linear_forward)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    path = tmp_path / "Building_your_Deep_Neural_Network_Step_by_Step.ipynb"
    nbformat.write(nb, path)
    result = grade_submission(path, ASSIGNMENT, shrink=False)
    assert result.score == result.max_score, [c.output for c in result.checks if not c.passed]


def test_given_helpers_are_left_out_with_their_checks(tmp_path):
    """An instructor who hands out dnn_utils' relu_backward / sigmoid_backward lists neither check: a
    submission that imports them (and defines neither) gets every point of the rest."""
    source = (ROOT / "correct.py").read_text()
    source = source.replace(
        "from dnn_utils import sigmoid, relu", "from dnn_utils import sigmoid, relu, relu_backward, sigmoid_backward"
    )
    for name in ("relu_backward", "sigmoid_backward"):
        start = source.index(f"def {name}(")
        source = source[:start] + source[source.index("\n\n\ndef ", start) + 3 :]
    path = tmp_path / "imports_the_helpers.py"
    path.write_text(source)
    text = coursera.__file__ and Path(ASSIGNMENT.source).read_text()
    text = re.sub(r"\n    \{ name = \"(relu|sigmoid)_backward\".*", "", text)
    given = parse_assignment(tomllib.loads(text), "given-helpers")
    part = given.parts[0]
    assert "relu_backward" not in part.check_names and "relu_backward" not in part.needed_names()
    result = grade_submission(path, given, shrink=False)
    assert result.score == result.max_score == 12, [c.output for c in result.checks if not c.passed]


def test_needed_names_follow_the_checks():
    part = parse_assignment(
        {"name": "x", "parts": [{"format": "coursera", "checks": [{"name": "L_model_backward", "points": 1}]}]}
    ).parts[0]
    assert part.needed_names() == ("L_model_forward", "L_model_backward")  # the cache comes from the forward


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_dims", [5, 4, 2], "expected a last size of 1"),
        ("layer_dims", [5], "expected positive ints"),
        ("examples", 0, "expected a positive int (m)"),
        ("learning_rate", -1, "expected a positive number"),
        ("batch", 4, "unknown fields ['batch']"),
    ],
)
def test_bad_options_are_named(field, value, message):
    data = {
        "name": "x",
        "parts": [{"format": "coursera", field: value, "checks": [{"name": "compute_cost", "points": 1}]}],
    }
    with pytest.raises(AssignmentError, match=re.escape(message)) as err:
        parse_assignment(data, "course.toml")
    assert "course.toml" in str(err.value) and "parts[0]" in str(err.value)


def test_bprop_check_grades_a_class_folder_with_the_built_in(tmp_path, capsys):
    """The command an instructor runs: results.json per submission (Gradescope's schema), the summary."""
    from grading import cli

    folder = tmp_path / "class"
    folder.mkdir()
    for name, fixture in (("ada", "correct.py"), ("ben", "update_two_layers.py")):
        (folder / f"{name}.py").write_text((ROOT / fixture).read_text())
    out = tmp_path / "results"
    assert cli.main([str(folder), "--assignment", "coursera-dnn", "--out", str(out)]) == 0
    ada, ben = (json.loads((out / n / "results.json").read_text()) for n in ("ada", "ben"))
    assert ada["score"] == ada["max_score"] == 14 and ben["score"] == 13
    failed = [t for t in ben["tests"] if t["status"] == "failed"]
    assert [t["name"] for t in failed] == ["dnn: update_parameters"]
    assert "update_parameters.W3 (step 1)" in failed[0]["output"] and "never updated" in failed[0]["output"]
    assert "ben" in capsys.readouterr().out
