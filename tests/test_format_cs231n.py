"""The CS231n format (built-in cs231n-a2), graded in the real sandbox: the correct submission gets full
marks as one file, as a notebook and as the course's cs231n/ folder; each buggy one is flagged on the
right function and tensor with the right diagnosis; a hostile one costs only its own checks.

The expectations live in the submissions (tests/submissions/cs231n/*.py), as for the other formats:
    # expect: <check> <tensor> <bug>     a failing comparison of <tensor> in <check> is diagnosed <bug>
                                         (a label of grading/formats/cs231n.py or grading/diagnose.py),
                                         or "error" when the call failed (raised, wrong kind of value)
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from grading import formats
from grading.assignment import AssignmentError, load_assignment, parse_assignment
from grading.checks import build_cases, collect_submissions, grade_submission
from grading.formats import cs231n

ROOT = Path(__file__).parent / "submissions" / "cs231n"
FILES = sorted(p.name for p in ROOT.glob("*.py"))
BUGGY = [f for f in FILES if f not in ("correct.py", "hostile.py")]
FOLDER = ROOT / "folder" / "correct"


@cache
def assignment():
    return load_assignment("cs231n-a2")


@cache
def graded(name: str):
    path = ROOT / name
    result = grade_submission(path, assignment(), shrink=False)
    return result, re.findall(r"^# expect: (\S+) (.+) (\S+)$", path.read_text(), re.M)


def _assert_full_marks(result):
    failed = [f"{c.title}: {c.output}" for c in result.checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert result.score == result.max_score > 0
    assert result.first_divergence is None and result.error is None and result.status == "graded"


def test_registered_and_built_in():
    assert formats.get("cs231n") is cs231n
    a = assignment()
    assert [p.format for p in a.parts] == ["cs231n"]
    assert set(a.parts[0].check_names) == set(cs231n.CHECKS)
    assert {"affine_forward", "conv_backward_naive", "adam", "FullyConnectedNet"} <= set(a.needed_names())


def test_unknown_field_is_refused_with_its_name():
    raw = {"name": "x", "parts": [{"format": "cs231n", "batch": 3, "checks": [{"name": "affine", "points": 1}]}]}
    with pytest.raises(AssignmentError, match=r"unknown field.*batch"):
        parse_assignment(raw)


def test_correct_submission_passes_everything():
    result, _ = graded("correct.py")
    _assert_full_marks(result)
    cases = {f.case for c in result.checks for f in c.findings}
    # the sweep: shapes, strides, pads, modes, settings, state, reg, normalisations, dropout, stability
    assert {"small-float64", "small-float32", "square-float64", "batch1-float64", "stride2-float64"} <= cases
    assert {"pad0-float64", "settings-float64", "test-float64", "state-float64", "reg-float64"} <= cases
    assert {"batchnorm-float64", "layernorm-float64", "dropout-float64", "stability-float64"} <= cases
    compared = {f.row.name for c in result.checks for f in c.findings}
    for name in cs231n.FUNCTIONS:  # every function of the CS231n list is compared
        assert any(t.startswith(name) for t in compared), name
    assert sum(len(c.findings) for c in result.checks) > 250


def test_a_bias_feeding_a_batchnorm_passes_on_the_absolute_floor():
    """Its true gradient is 0 (batchnorm removes any shift): rounding noise passes on ATOL, not on a relative bar."""
    result, _ = graded("correct.py")
    b1 = [
        f
        for c in result.checks
        for f in c.findings
        if f.case == "batchnorm-float64" and f.row.name == "FullyConnectedNet.grads[b1]"
    ]
    assert len(b1) == 1 and b1[0].passed
    assert np.abs(b1[0].expected).max() < 1e-12 and b1[0].row.rel > b1[0].row.tol  # passed on the floor alone


def test_every_buggy_submission_states_what_it_expects():
    assert len(BUGGY) >= 10
    for name in BUGGY:
        assert re.search(r"^# expect: ", (ROOT / name).read_text(), re.M), f"{name} has no '# expect:' line"


@pytest.mark.parametrize("name", BUGGY)
def test_buggy_submission_is_flagged_with_its_diagnosis(name):
    result, expectations = graded(name)
    assert result.score < result.max_score
    assert result.first_divergence is not None
    first_tensor = expectations[0][1]
    assert result.first_divergence.startswith(first_tensor), (result.first_divergence, first_tensor)
    for check, tensor, bug in expectations:
        findings = [f for c in result.checks if c.name == check for f in c.findings if f.row.name == tensor]
        assert findings, f"{name}: no comparison of {tensor} in check {check}"
        failing = [f for f in findings if not f.passed]
        assert failing, f"{name}: {tensor} passed in every case of {check}"
        got = {
            ("error" if f.diagnosis is None and f.row.worst_index is None else f.diagnosis and f.diagnosis.bug)
            for f in failing
        }
        assert bug in got, f"{name}: {tensor} in {check}: expected {bug}, got {got}:\n" + "\n".join(
            f"  {f.case}: {f.row.describe(('yours', 'reference'))} | {f.diagnosis}" for f in failing
        )
        check_result = next(c for c in result.checks if c.name == check)
        assert check_result.score < check_result.points and tensor in check_result.output


# Bugs that show only on some shapes, modes or settings: the other cases of the same tensor pass.
ONLY_ON = {
    "conv_dw_no_stride.py": ("conv_backward_naive.dw", {"stride2-float64", "batch1-float64"}),  # stride 2
    "conv_dx_padded.py": ("conv_backward_naive.dx", {"small-float64", "small-float32", "stride2-float64"}),  # pad 1
    "dropout_mask_in_test.py": ("dropout_forward.out", {"test-float64"}),  # test mode
    "bn_momentum_hardcoded.py": ("batchnorm_forward.running_mean (call 1)", {"settings-float64"}),
    "fc_l2_no_half.py": (
        "FullyConnectedNet.loss",
        {
            "reg-float64",
            "square-float64",
            "batch1-float64",
            "batchnorm-float64",
            "layernorm-float64",
            "dropout-float64",
        },
    ),  # reg > 0
    "affine_out_squeezed.py": ("affine_forward.out", {"batch1-float64"}),  # batch 1
    "affine_dx_uses_w.py": ("affine_backward.dx", None),  # square: diagnosed; elsewhere it raises
    "affine_dx_not_reshaped.py": ("affine_backward.dx", {"small-float64", "small-float32"}),  # x (N, d1, d2)
    "pool_dx_overwritten.py": ("max_pool_backward_naive.dx", {"stride2-float64", "pad0-float64"}),  # overlapping
    "conv_width_from_height.py": (
        "conv_forward_naive.out",
        {"small-float64", "small-float32", "stride2-float64"},
    ),  # H != W (pad0: 4x5 with a 2x3 kernel sizes right by chance)
    "softmax_summed.py": ("softmax_loss.loss", {"small-float64", "small-float32", "square-float64"}),  # N > 1
}


@pytest.mark.parametrize("name", sorted(ONLY_ON))
def test_a_setting_dependent_bug_fails_exactly_where_it_shows(name):
    result, _ = graded(name)
    tensor, where = ONLY_ON[name]
    findings = [f for c in result.checks for f in c.findings if f.row.name == tensor and "stability" not in f.case]
    failing = {f.case for f in findings if not f.passed}
    if where is None:  # the square layer's is diagnosed as the transpose; the others' call raised
        square = next(f for f in findings if f.case == "square-float64")
        assert not square.passed and square.diagnosis.bug == "transpose"
        assert all(f.diagnosis is None and "raised" in f.row.note for f in findings if f.case != "square-float64")
        return
    assert failing == where, (failing, where)


def test_first_divergence_names_the_function_and_the_diagnosis_its_numbers():
    result, _ = graded("conv_dw_no_stride.py")
    assert result.first_divergence.startswith("conv_backward_naive.dw")
    assert "stride (2) is left out of dw" in result.diagnosis and "relative error of" in result.diagnosis
    conv = next(c for c in result.checks if c.name == "conv")
    assert "conv_backward_naive.dw" in conv.output and "diagnosis:" in conv.output


def test_hostile_submission_costs_only_its_own_checks():
    result, expectations = graded("hostile.py")
    by = {c.name: c for c in result.checks}
    for check in ("affine", "relu", "layernorm", "dropout", "fc_net_loss", "fc_net_grads"):
        assert by[check].passed, f"{check}: {by[check].output}"
    for check in ("conv", "pool", "losses", "update_rules", "batchnorm", "stability"):
        assert by[check].score == 0, check
    for check, tensor, _ in expectations:  # each hostile return is a clear failure, never a pass
        failing = [f for f in by[check].findings if f.row.name == tensor and not f.passed]
        assert failing and all(f.row.note for f in failing), (check, tensor)
    notes = " ".join(f.row.note for c in result.checks for f in c.findings if not f.passed)
    assert "SystemExit" in notes or "exit" in notes.lower()  # adam's exit: that call's verdict only
    assert "'running_mean'" in notes or "running_mean" in notes
    # what it printed is not a score: nothing of {"score": 100} reached the result
    assert result.score < result.max_score and json.dumps(result.score) != "100"
    # batchnorm's first two calls were honest: only the third's running statistics fail
    bn = by["batchnorm"].findings
    assert all(f.passed for f in bn if f.row.name == "batchnorm_forward.running_mean (call 2)")


def test_notebook_submission_is_graded_like_the_file(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    source = (ROOT / "correct.py").read_text()
    nb = nbformat.v4.new_notebook()
    cells = ["%matplotlib inline\nimport numpy as np", *source.split("\n\n\n")]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells] + [nbformat.v4.new_code_cell("model.loss(X_val)")]
    path = tmp_path / "assignment2.ipynb"
    path.write_text(nbformat.writes(nb))
    _assert_full_marks(grade_submission(path, assignment(), shrink=False))


# The course's folder layout --------------------------------------------------------------------


def test_folder_layout_gets_full_marks_as_one_submission():
    result = grade_submission(FOLDER, assignment(), shrink=False)
    _assert_full_marks(result)
    assert "cs231n/ (layers.py, optim.py, layer_utils.py, classifiers/fc_net.py)" in result.notes[0]
    assert "cs231n/layer_utils.py, line" in result.notes[0]  # skipped statements named by their file


def test_collect_submissions_keeps_a_cs231n_folder_whole(tmp_path):
    for student in ("ana", "ben"):
        shutil.copytree(FOLDER, tmp_path / "class" / student)
    shutil.copy(ROOT / "correct.py", tmp_path / "class" / "carl.py")
    found = collect_submissions([tmp_path / "class"])
    assert found == [tmp_path / "class" / "ana", tmp_path / "class" / "ben", tmp_path / "class" / "carl.py"]
    assert collect_submissions([tmp_path / "class" / "ana"]) == [tmp_path / "class" / "ana"]


def test_bprop_check_grades_a_class_of_folders(tmp_path):
    from grading import cli

    shutil.copytree(FOLDER, tmp_path / "class" / "ana")
    shutil.copy(ROOT / "svm_own_margin.py", tmp_path / "class" / "ben.py")
    out = tmp_path / "out"
    assert (
        cli.main([str(tmp_path / "class"), "--assignment", "cs231n-a2", "--out", str(out), "--no-counterexample"]) == 0
    )
    rows = {r["submission"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["ana"]["status"] == "graded" and float(rows["ana"]["score"]) == float(rows["ana"]["max_score"])
    assert float(rows["ben"]["score"]) < float(rows["ben"]["max_score"]) and "own margin" in rows["ben"]["diagnosis"]


def test_a_hard_link_in_the_folder_refuses_it(tmp_path):
    other = tmp_path / "other.py"
    other.write_text("X = 1\n")

    def link(pkg):
        os.link(other, pkg / "borrowed.py")

    result = grade_submission(_folder_with(tmp_path, "hard", link), assignment(), shrink=False)
    assert result.score == 0 and "borrowed.py: a hard link" in result.error


def _folder_with(tmp_path, name: str, edit) -> Path:
    target = tmp_path / name
    shutil.copytree(FOLDER, target)
    edit(target / "cs231n")
    return target


def test_a_buggy_file_of_the_folder_is_flagged(tmp_path):
    def bug(pkg):
        layers = pkg / "layers.py"
        layers.write_text(layers.read_text().replace("dx = dxp[:, :, pad : pad + H, pad : pad + W]", "dx = dxp"))

    result = grade_submission(_folder_with(tmp_path, "padded", bug), assignment(), shrink=False)
    assert result.first_divergence.startswith("conv_backward_naive.dx")
    assert "padding is not removed" in result.diagnosis
    assert [c.name for c in result.checks if not c.passed] == ["conv"]


def test_a_forbidden_import_in_any_file_of_the_folder_refuses_it(tmp_path):
    def bug(pkg):  # solver.py is not part of what is graded; it is scanned all the same
        solver = pkg / "solver.py"
        solver.write_text("import torch\n" + solver.read_text())

    result = grade_submission(_folder_with(tmp_path, "torchy", bug), assignment(), shrink=False)
    assert result.score == 0 and result.status == "forbidden import"
    assert "torch" in result.error


def test_the_folder_s_other_files_never_run(tmp_path):
    def edit(pkg):  # scanned, never imported: what they do at the top level does not happen
        (pkg / "solver.py").write_text("raise SystemExit('solver.py ran')\nopen('/etc/shadow').read()\n")
        (pkg / "vis_utils.py").write_text("from __future__ import print_function\nimport os\nos._exit(3)\n")
        (pkg / "scratch.py").write_text("def broken(:\n")  # a student's scratch file that does not parse
        (pkg / "nul.py").write_bytes(b"x = 1\0\n")

    result = grade_submission(_folder_with(tmp_path, "busy", edit), assignment(), shrink=False)
    _assert_full_marks(result)
    assert "cs231n/scratch.py: the whole file (not bundled, not scanned" in result.notes[0]
    assert "cs231n/nul.py: the whole file (not bundled, not scanned" in result.notes[0]


def test_a_graded_file_that_does_not_parse_refuses_the_folder(tmp_path):
    def edit(pkg):
        (pkg / "optim.py").write_bytes(b"def sgd(w, dw, config=None):\n    return w\0\n")

    result = grade_submission(_folder_with(tmp_path, "nul", edit), assignment(), shrink=False)
    assert (
        result.status == "refused"
        and "cs231n/optim.py: syntax error: source code string cannot contain null bytes" in result.error
    )


def test_a_folder_of_too_many_files_is_refused_unread(tmp_path):
    def edit(pkg):
        junk = pkg / "junk"
        junk.mkdir()
        for k in range(cs231n.MAX_ENTRIES + 1):
            (junk / f"{k}.txt").touch()

    result = grade_submission(_folder_with(tmp_path, "junky", edit), assignment(), shrink=False)
    assert result.status == "refused" and "more than 5,000 files" in result.error


def test_a_symlink_in_the_folder_refuses_it(tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text("KEY = 1\n")

    def link(pkg):
        os.symlink(secret, pkg / "secret.py")

    result = grade_submission(_folder_with(tmp_path, "linked", link), assignment(), shrink=False)
    assert result.score == 0 and result.status == "refused"
    assert "secret.py: a symbolic link" in result.error


def test_intra_package_imports_are_resolved(tmp_path):
    def edit(pkg):  # the other spellings of the course's imports, and an alias
        net = pkg / "classifiers" / "fc_net.py"
        text = net.read_text().replace("from ..layers import *", "from cs231n.layers import *")
        text = text.replace("from ..layer_utils import *", "from cs231n.layer_utils import affine_forward as af")
        net.write_text(text.replace("scores, last = affine_forward(", "scores, last = af("))

    result = grade_submission(_folder_with(tmp_path, "spelled", edit), assignment(), shrink=False)
    _assert_full_marks(result)


# The reference side -------------------------------------------------------------------------------


def test_no_expected_value_is_sent_to_the_child():
    """Every probe item holds inputs only: none of the case's expected arrays is among them."""
    part = assignment().parts[0]
    for case in build_cases(part):
        sent: list = []

        def walk(v, sent=sent):
            if isinstance(v, np.ndarray):
                sent.append(v)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x, sent)
            elif isinstance(v, list | tuple):
                for x in v:
                    walk(x, sent)

        for _, common, items in case.probes.values():
            walk(common)
            walk(items)
        for exp in case.expected:
            identity = case.kind == "test" and exp.key.function.startswith("dropout")  # test mode: out = x, dx = dout
            if exp.value.size > 1 and not identity:
                assert not any(a.shape == exp.value.shape and np.array_equal(a, exp.value) for a in sent), (
                    case.id,
                    exp.key.tensor,
                )


def test_the_course_mask_is_the_skeletons_draw():
    np.random.seed(7)  # noqa: NPY002  -- the course's own legacy calls, on purpose
    skeleton = np.random.rand(3, 4) < 0.6  # noqa: NPY002
    assert np.array_equal(cs231n.course_mask(7, (3, 4), 0.6), skeleton)


def test_a_part_with_some_checks_and_renamed_functions(tmp_path):
    """An assignment file may keep a subset of the checks (only those functions are called) and rename the API."""
    source = (
        (ROOT / "correct.py")
        .read_text()
        .replace("affine_forward", "fc_forward")
        .replace("affine_backward", "fc_backward")
    )
    (tmp_path / "renamed.py").write_text(source.replace("def conv_forward_naive", "def _conv_gone"))
    raw = {
        "name": "affine-only",
        "parts": [
            {
                "format": "cs231n",
                "names": {"affine_forward": "fc_forward", "affine_backward": "fc_backward"},
                "checks": [{"name": "affine", "points": 2}, {"name": "relu", "points": 1}],
            }
        ],
    }
    spec = parse_assignment(raw)
    assert spec.needed_names() == ("fc_forward", "fc_backward", "relu_forward", "relu_backward")
    result = grade_submission(tmp_path / "renamed.py", spec, shrink=False)
    _assert_full_marks(result)  # conv is gone, and not asked for
    assert {f.key.function for c in result.checks for f in c.findings} == set(spec.needed_names())


def test_every_hypothesis_is_shown_when_it_matches_and_only_then():
    """Each alternative of every case, handed back as the student's tensor, is diagnosed as that bug (or
    one equal to it there); a tensor no hypothesis explains gets no diagnosis."""
    from grading.diagnose import diagnose_alternatives
    from oracles.compare import atol, rel_error, tolerance

    part = assignment().parts[0]
    shown = set()
    with np.errstate(all="ignore"):
        for case in build_cases(part):
            for exp in case.expected:
                for bug, _, value in exp.alternatives:
                    tol = tolerance("submission", case.dtype, exp.quantity)
                    if value.shape == exp.value.shape and (
                        rel_error(value, exp.value) <= tol
                        or np.abs(value - exp.value).max(initial=0) <= atol("submission", case.dtype)
                    ):
                        continue  # within the reference's tolerance here: says nothing, never shown
                    if not np.isfinite(value).all():
                        continue  # a non-finite tensor is "unstable" first
                    got = diagnose_alternatives(
                        exp.key.tensor, value, exp.value, exp.alternatives, case.dtype, exp.quantity
                    )
                    assert got is not None, (case.id, exp.key.tensor, bug)
                    twins = {b for b, _, v in exp.alternatives if v.shape == value.shape and rel_error(v, value) < 1e-6}
                    assert got.bug in twins | {"zero", "reshaped"}, (case.id, exp.key.tensor, bug, got.bug)
                    shown.add(bug)
                wrong = np.asarray(exp.value, np.float64) * 1.37 + 0.013
                got = diagnose_alternatives(
                    exp.key.tensor, wrong, exp.value, exp.alternatives, case.dtype, exp.quantity
                )
                assert got is None, (case.id, exp.key.tensor, got)
    # every bug the issues name is reachable
    assert {
        "wrong_axis",
        "own_margin",
        "no_mean_var_terms",
        "unbiased_variance",
        "momentum_side",
        "batch_axis",
        "not_inverted",
        "stride_missing",
        "whole_window",
        "t_after_use",
        "l2_no_half",
        "padding_not_removed",
        "flipped_kernel",
        "sign",
        "transpose",
        "batch_size",
    } <= shown


def test_bprop_check_from_a_notebook_names_the_bug():
    """A student's `bprop.check("cs231n-a2", only=...)` in the notebook: the cells as they ran."""
    from bprop.notebook import check_cells

    cells = (ROOT / "pool_whole_window.py").read_text().split("\n\n\n")
    report = str(check_cells(cells, assignment(), only="max_pool_backward_naive"))
    assert "0 / 1" in report and "max_pool_backward_naive.dx" in report
    assert "routed to the whole window" in report
