"""The MyTorch format (grading/formats/mytorch.py), built-in assignment mytorch-mlp, in the real sandbox.

The test submissions (tests/submissions/mytorch/*.py) state what each must be flagged with, as the
notebook formats' do (tests/test_grading_submissions.py):
    # expect: <check> <tensor> <bug>      a failing comparison of <tensor> in <check> diagnosed <bug>,
                                          or "error" when no usable array came back
The layout and conventions are pinned to the public handout's own worked examples (its autograder's
published numbers for Linear, BatchNorm1d, the losses and SGD with momentum).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from grading import formats
from grading.assignment import AssignmentError, load_assignment, parse_assignment
from grading.checks import build_cases, grade_submission
from grading.formats import mytorch
from reference.losses import MSE, SoftmaxCrossEntropy

ROOT = Path(__file__).parent / "submissions" / "mytorch"
FILES = sorted(p.name for p in ROOT.glob("*.py"))
BUGGY = [f for f in FILES if f not in ("correct.py", "hostile.py")]


@cache
def assignment():
    return load_assignment("mytorch-mlp")


@cache
def graded(name: str):
    path = ROOT / name
    expectations = re.findall(r"^# expect: (\S+) (.+) (\S+)$", path.read_text(), re.M)
    return grade_submission(path, assignment()), expectations


def test_registered_and_built_in():
    assert formats.get("mytorch") is mytorch
    a = assignment()
    assert a.parts[0].format == "mytorch" and a.max_score == 100
    assert set(a.parts[0].check_names) == set(mytorch.CHECKS)
    assert {"Linear", "BatchNorm1d", "SGD", "MLP4", "CrossEntropyLoss"} <= set(a.needed_names())


def test_correct_submission_gets_full_marks():
    result, _ = graded("correct.py")
    failed = [f"{c.title}: {c.output}" for c in result.checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert result.score == result.max_score == 100
    assert result.first_divergence is None and result.error is None and result.status == "graded"
    cases = {f.case for f in result.findings}
    assert cases == {
        "small-float64",
        "small-float32",
        "batch1-float64",
        "square-float64",
        "distinct-float64",
        "width1-float64",
        "stability-float64",
    }
    assert len(result.findings) > 400
    for check in mytorch.CHECKS:  # every check compared something in every case it covers
        assert any(f.check == check for f in result.findings), check


def test_at_least_ten_buggy_submissions_each_stating_what_it_expects():
    assert len(BUGGY) >= 10
    for name in [*BUGGY, "hostile.py"]:
        assert re.search(r"^# expect: ", (ROOT / name).read_text(), re.M), f"{name} has no '# expect:' line"


@pytest.mark.parametrize("name", [*BUGGY, "hostile.py"])
def test_buggy_submission_is_flagged_on_its_tensor_with_its_diagnosis(name):
    result, expectations = graded(name)
    assert result.score < result.max_score
    assert result.first_divergence is not None
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
        owner = next(c for c in result.checks if c.name == check)
        assert owner.score < owner.points
        assert tensor in owner.output  # the feedback names the tensor
        assert {f.key.function for f in failing} == {_owner(check, tensor)}  # flagged on the right method


def _owner(check: str, tensor: str) -> str:
    """The student method a tensor comes from: "Sigmoid: dLdZ" -> Sigmoid.backward, "SGD: ..." -> SGD.step."""
    cls, what = tensor.split(": ", 1)
    if cls == "SGD":
        return "SGD.step"
    forward = what in ("Z", "A", "L", "output") or what.startswith(("BZ", "running_"))
    return f"{cls}.{'forward' if forward else 'backward'}"


def _failing_cases(name: str, tensor: str) -> set[str]:
    result, _ = graded(name)
    return {f.case for f in result.findings if f.row.name == tensor and not f.passed}


def test_bugs_that_show_only_on_some_shapes_modes_and_settings():
    # batch 1: a squeezed Z loses its batch axis there and nowhere else
    assert _failing_cases("forward_squeeze_batch1.py", "Linear: Z") == {"batch1-float64"}
    # the batch factor cannot show on one row: averaged == summed there
    assert "batch1-float64" not in _failing_cases("dLdW_averaged.py", "Linear: dLdW")
    assert _failing_cases("dLdW_averaged.py", "Linear: dLdW") >= {"small-float64", "square-float64", "distinct-float64"}
    # eval mode only: the training steps of the same layer pass
    result, _ = graded("bn_eval_ignored.py")
    bn = {f.row.name for f in result.findings if f.check == "batchnorm_forward" and not f.passed}
    assert bn == {"BatchNorm1d: BZ (eval)"}
    assert all(c.passed for c in result.checks if c.name != "batchnorm_forward")
    # alpha on the wrong side: training outputs right, running statistics and eval mode wrong
    result, _ = graded("bn_alpha_wrong_side.py")
    wrong = {f.row.name for f in result.findings if not f.passed}
    assert "BatchNorm1d: BZ (eval)" in wrong and not any("training step" in w for w in wrong)
    # classical momentum: right at momentum 0 and at a constant rate, wrong once the rate changes
    result, _ = graded("sgd_classical_momentum.py")
    wrong = {f.row.name for f in result.findings if f.check == "sgd" and not f.passed}
    assert wrong and all("lr changed between steps" in w for w in wrong)
    assert not any("step 1" in w for w in wrong)  # the first step has the first rate: the same numbers
    # the velocity never kept: momentum 0 passes, momentum > 0 fails from step 2
    result, _ = graded("sgd_velocity_not_kept.py")
    wrong = {f.row.name for f in result.findings if f.check == "sgd" and not f.passed}
    assert wrong and not any("momentum 0 " in w or "(momentum 0)" in w or "step 1" in w for w in wrong)
    # the naive softmax passes every O(1) case and fails the stability case only
    result, _ = graded("ce_naive_softmax.py")
    assert {f.case for f in result.findings if not f.passed} == {"stability-float64"}


def test_a_hostile_submission_costs_only_its_own_marks():
    result, _ = graded("hostile.py")
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"weight_gradients", "activations", "batchnorm_backward", "mlp_backward"}
    lost = sum(c.points for c in result.checks if c.name in failed)
    assert result.score == result.max_score - lost
    assert result.status == "graded" and not result.verdicts and result.error is None
    notes = {f.row.note for f in result.findings if not f.passed}
    assert any("dict" in n and "dLdW" in n for n in notes)
    assert any("no gradient for you" in n for n in notes)
    assert any("_Evil" in n and "you cannot look at me" in n for n in notes)
    # inside the failing checks, only the hostile tensors fail (the junk printed on every call changes nothing)
    for f in result.findings:
        if not f.passed:
            assert f.row.name.endswith(("dLdW", "dLdBW", "Identity: dLdZ")), f.row.name


# The layout and conventions, pinned to the handout autograder's published examples ---------------


def test_linear_layout_reproduces_the_handouts_example():
    A = np.array([[-4.0, -3.0], [-2.0, -1.0], [0.0, 1.0], [2.0, 3.0]])
    W = np.array([[-2.0, -1.0], [0.0, 1.0], [2.0, 3.0]])  # (out, in)
    b = np.array([[-1.0], [0.0], [1.0]])  # (out, 1)
    dLdZ = np.array([[-4.0, -3.0, -2.0], [-1.0, -0.0, 1.0], [2.0, 3.0, 4.0], [5.0, 6.0, 7.0]])
    ref = mytorch._dense(W, b)
    Z, _ = ref.forward(A)
    dLdA, grads = ref.backward(dLdZ, A)
    np.testing.assert_array_equal(Z, [[10, -3, -16], [4, -1, -6], [-2, 1, 4], [-8, 3, 14]])
    np.testing.assert_array_equal(dLdA, [[4, -5], [4, 4], [4, 13], [4, 22]])
    np.testing.assert_array_equal(mytorch.to_mytorch("W", grads["W"]), [[28, 30], [24, 30], [20, 30]])  # summed
    np.testing.assert_array_equal(mytorch.to_mytorch("b", grads["b"]), [[2], [6], [10]])
    np.testing.assert_array_equal(mytorch.to_canonical("W", mytorch.to_mytorch("W", grads["W"])), grads["W"])


def test_batchnorm_convention_reproduces_the_handouts_example():
    A = np.array([[1.0, 4.0], [7.0, 0.0], [1.0, 0.0], [7.0, 4.0]])
    BW, Bb = np.array([[2.0, 5.0]]), np.array([[-1.0, 2.0]])
    bn = mytorch._reference_bn(2, "float64", 0.9, 1e-8, BW, Bb)
    eval_out, _ = bn.forward(A, train=False)  # a fresh layer: running mean 0, running variance 1
    np.testing.assert_allclose(eval_out, [[1, 22], [13, 2], [1, 2], [13, 22]], atol=1e-6)
    out, cache = bn.forward(A, train=True)
    np.testing.assert_allclose(out, [[-3, 7], [1, -3], [-3, -3], [1, 7]], atol=1e-6)
    dLdZ, _ = bn.backward(np.array([[-6.0, 2.0], [-12.0, 16.0], [-12.0, 20.0], [-6.0, 2.0]]), cache)
    np.testing.assert_allclose(dLdZ, [[2, 0], [-2, -5], [-2, 5], [2, 0]], atol=1e-6)
    # running = alpha * running + (1 - alpha) * batch, the biased variance (mean 4, variance 9 and 4)
    np.testing.assert_allclose(bn.state["running_mean"], 0.1 * np.array([4.0, 2.0]))
    np.testing.assert_allclose(bn.state["running_var"], 0.9 + 0.1 * np.array([9.0, 4.0]))
    # the reference's own "mytorch" defaults are the format's (and the built-in assignment's)
    from reference.layers import BatchNorm

    part = assignment().parts[0]
    assert BatchNorm.resolve("mytorch", None, None) == (part.options["alpha"], part.options["eps"]) == (0.9, 1e-8)
    assert bn.convention == "mytorch"


def test_losses_reproduce_the_handouts_examples():
    A = np.array([[-4.0, -3.0], [-2.0, -1.0], [0.0, 1.0], [2.0, 3.0]])
    Y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    L, dLdA = MSE("mean").value_and_grad(A, Y)
    assert L == pytest.approx(6.5)
    np.testing.assert_allclose(dLdA, 2 * np.array([[-0.5, -0.5], [-0.375, -0.125], [-0.125, 0.125], [0.25, 0.25]]))
    L, dLdA = SoftmaxCrossEntropy("mean").value_and_grad(A, Y.argmax(axis=1))
    assert L == pytest.approx(0.8133, abs=1e-4)
    handout = np.array([[0.2689, -0.2689], [-0.7311, 0.7311], [-0.7311, 0.7311], [0.2689, -0.2689]]) / 4
    np.testing.assert_allclose(dLdA, handout, atol=1e-4 / 4)


def test_sgd_momentum_reproduces_the_handouts_example_and_why_the_rate_changes():
    start = {"l.W": np.ones((2, 3)), "l.b": np.ones(3)}
    grads = [{"l.W": np.full((2, 3), 0.1), "l.b": np.full(3, 0.1)}] * 3
    torch_form = mytorch._run_optimizer("momentum", 0.9, 0.9, "torch", start, grads, (0.9, 0.9))
    np.testing.assert_allclose(torch_form[0]["l.W"], 0.91)
    np.testing.assert_allclose(torch_form[1]["l.W"], 0.739)
    # at a constant rate the classical form v = mu v - lr g, W += v gives the same numbers ...
    classical = mytorch._run_optimizer("momentum", 0.9, 0.9, "keras", start, grads, (0.9, 0.9))
    np.testing.assert_allclose(classical[1]["l.W"], torch_form[1]["l.W"], rtol=1e-12)
    # ... and differs once the rate changes between steps: the third SGD setting exists for this
    rates = (0.9, 0.45, 0.18)
    a = mytorch._run_optimizer("momentum", 0.9, 0.9, "torch", start, grads, rates)
    b = mytorch._run_optimizer("momentum", 0.9, 0.9, "keras", start, grads, rates)
    assert not np.allclose(a[1]["l.W"], b[1]["l.W"], rtol=1e-3)


# Planning ---------------------------------------------------------------------------------------


def _arrays(v):
    """Every ndarray in a tree of dicts, lists and tuples."""
    if isinstance(v, np.ndarray):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _arrays(x)
    elif isinstance(v, list | tuple):
        for x in v:
            yield from _arrays(x)


def test_no_expected_value_is_sent_to_the_child():
    part = assignment().parts[0]
    for case in build_cases(part):
        sent = list(_arrays([(common, items) for _, common, items in case.probes.values()]))
        for exp in case.expected:
            if exp.key.function.startswith("Identity") or exp.value.size < 2:
                continue  # the identity's answer is its input
            assert not any(s.shape == exp.value.shape and np.array_equal(s, exp.value) for s in sent), (
                f"{case.id}: {exp.key.tensor} is among the probe inputs"
            )


def test_the_sweep_has_batch_1_a_square_layer_several_widths_and_eval_mode():
    part = assignment().parts[0]
    cases = {c.id: c for c in build_cases(part)}
    linear = {cid: c.probes["Linear.forward"][2][0] for cid, c in cases.items() if "Linear.forward" in c.probes}
    assert linear["batch1-float64"]["A"].shape[0] == 1
    assert linear["square-float64"]["W"].shape == (5, 5)
    assert len({item["W"].shape for item in linear.values()}) >= 4
    bn = cases["batch1-float64"].probes["BatchNorm1d.forward"][2][0]
    assert bn["eval"].shape[0] == 1 and all(z.shape[0] >= 2 for z in bn["train"])
    sgd = cases["small-float64"].probes["SGD.step"][2]
    assert [s["momentum"] for s in sgd] == [0.0, 0.9, 0.9]
    assert [st["lr"] for st in sgd[2]["steps"]] == pytest.approx([0.1, 0.05, 0.02])
    assert all(len(s["steps"]) == 3 for s in sgd)


def test_options_are_checked_with_the_field_named():
    base = {"name": "x", "parts": [{"format": "mytorch", "checks": [{"name": "sgd", "points": 1}]}]}
    parse_assignment(base)
    for field, value, said in (("momentum", 1.5, "momentum"), ("alpha", "0.9", "alpha"), ("lr", 0.1, "lr")):
        bad = {**base, "parts": [{**base["parts"][0], field: value}]}
        with pytest.raises(AssignmentError, match=said):
            parse_assignment(bad)
    with pytest.raises(AssignmentError, match="not a mytorch-format check"):
        parse_assignment({**base, "parts": [{**base["parts"][0], "checks": [{"name": "forward", "points": 1}]}]})


def test_a_part_with_some_checks_probes_only_their_classes():
    data = {"name": "x", "parts": [{"format": "mytorch", "checks": [{"name": "sgd", "points": 1}]}]}
    part = parse_assignment(data).parts[0]
    assert part.needed_names() == ("Linear", "SGD")
    labels = {label for case in build_cases(part) for label in case.probes}
    assert labels == {"SGD.step"}


# The handout's own layout: the mytorch/ package, as a folder or Autolab's handin archive -------------

HANDIN = ROOT / "handin"


def _tar(tmp_path: Path, folder: Path, name: str = "handin.tar") -> Path:
    import tarfile

    out = tmp_path / name
    with tarfile.open(out, "w:gz" if name.endswith("gz") else "w") as tar:
        tar.add(folder, arcname="mytorch")
    return out


def test_the_package_layout_as_a_folder_and_as_a_handin_archive_gets_full_marks(tmp_path):
    package = HANDIN / "HW1P1" / "mytorch"
    for path in (HANDIN, package, _tar(tmp_path, package), _tar(tmp_path, package, "handin.tgz")):
        result = grade_submission(path, assignment(), shrink=False)
        assert result.score == result.max_score == 100, (path, [c.output for c in result.checks if not c.passed])
        assert "mytorch package (6 files" in result.notes[0]


def test_the_package_layout_is_graded_like_one_file(tmp_path):
    import shutil

    package = tmp_path / "mytorch"
    shutil.copytree(HANDIN / "HW1P1" / "mytorch", package)
    linear = package / "nn" / "linear.py"
    linear.write_text(linear.read_text().replace("self.dLdW = dLdZ.T @ self.A\n", "self.dLdW = self.A.T @ dLdZ\n"))
    result = grade_submission(_tar(tmp_path, package), assignment(), shrink=False)
    failing = [f for f in result.findings if f.row.name == "Linear: dLdW" and not f.passed]
    bugs = {f.diagnosis.bug for f in failing}
    assert "transpose" in bugs and bugs <= {"transpose", "reshaped"}  # 1 -> 6: a (1, 6) for (6, 1) is both
    assert {c.name for c in result.checks if not c.passed} == {"weight_gradients", "mlp_backward"}


def test_the_package_layout_refuses_links_and_unreadable_archives(tmp_path):
    import shutil
    import tarfile

    package = tmp_path / "pkg" / "mytorch"
    shutil.copytree(HANDIN / "HW1P1" / "mytorch", package)
    secret = tmp_path / "secret.py"
    secret.write_text("SECRET = 42\n")
    (package / "nn" / "extra.py").symlink_to(secret)
    result = grade_submission(tmp_path / "pkg", assignment(), shrink=False)
    assert result.score == 0 and "not a regular file" in result.error and result.status == "refused"
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as tar:
        tar.add(HANDIN / "HW1P1" / "mytorch", arcname="mytorch")
        info = tarfile.TarInfo("mytorch/nn/extra.py")
        info.type, info.linkname = tarfile.SYMTYPE, str(secret)
        tar.addfile(info)
    result = grade_submission(linked, assignment(), shrink=False)
    assert result.score == 0 and "not a regular file in the archive" in result.error
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    result = grade_submission(junk, assignment(), shrink=False)
    assert result.score == 0 and "not a readable tar archive" in result.error
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    result = grade_submission(empty, assignment(), shrink=False)
    assert result.score == 0 and "no mytorch/ package" in result.error


def test_a_submission_computing_in_float32_as_the_handout_does_keeps_full_marks(tmp_path):
    """The handout's skeletons use dtype="f"; float32 rounding (~6e-8 relative) is far inside the bar."""
    text = (ROOT / "correct.py").read_text()
    for old, new in (
        ("return A @ self.W.T + self.Ones @ self.b.T\n", 'return (A @ self.W.T + self.Ones @ self.b.T).astype("f")\n'),
        ("self.dLdW = dLdZ.T @ self.A\n", 'self.dLdW = (dLdZ.T @ self.A).astype("f")\n'),
        ("self.BZ = self.BW * self.NZ + self.Bb\n", 'self.BZ = (self.BW * self.NZ + self.Bb).astype("f")\n'),
    ):
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / "float32.py"
    path.write_text(text)
    result = grade_submission(path, assignment(), shrink=False)
    assert result.score == result.max_score, [c.output for c in result.checks if not c.passed]


def test_bprop_check_in_a_notebook_kernel_grades_the_format(tmp_path):
    """bprop.check("mytorch-mlp") in an IPython kernel: the cell's classes graded, the diagnosis shown (a
    key naming no reference layer: the notebook's equation lookup once crashed on a registered format)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "kernel.py"
    script.write_text(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        f"sh.run_cell(open({str(ROOT / 'sgd_velocity_not_kept.py')!r}).read(), store_history=True)\n"
        "sh.run_cell(\"import bprop\\nprint(bprop.check('mytorch-mlp'))\", store_history=True)\n"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert "bprop check mytorch-mlp: 90 / 100" in out.stdout, out.stdout + out.stderr
    assert "the momentum ignored (no velocity kept between steps)" in out.stdout


SOFTMAX = """

class Softmax:
    def forward(self, Z):
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        self.A = e / e.sum(axis=1, keepdims=True)
        return self.A

    def backward(self, dLdA):
        return self.A * (dLdA - (dLdA * self.A).sum(axis=1, keepdims=True))
"""


def test_softmax_on_request_with_its_jacobian_checked(tmp_path):
    """S24's Softmax activation, asked for with `activations`: right, and with only the diagonal of its Jacobian."""
    data = {
        "name": "with-softmax",
        "parts": [
            {
                "format": "mytorch",
                "activations": ["relu", "softmax"],
                "checks": [{"name": "activations", "points": 1}, {"name": "mlp_backward", "points": 1}],
            }
        ],
    }
    a = parse_assignment(data)
    assert set(a.needed_names()) >= {"ReLU", "Softmax", "MLP4"} and "Sigmoid" not in a.needed_names()
    good = tmp_path / "good.py"
    good.write_text((ROOT / "correct.py").read_text() + SOFTMAX)
    result = grade_submission(good, a, shrink=False)
    assert result.score == result.max_score == 2, [c.output for c in result.checks if not c.passed]
    assert {f.row.name for f in result.findings} >= {"Softmax: A", "Softmax: dLdZ"}
    diagonal = tmp_path / "diagonal.py"
    diagonal.write_text(
        good.read_text().replace(
            "self.A * (dLdA - (dLdA * self.A).sum(axis=1, keepdims=True))", "dLdA * self.A * (1 - self.A)"
        )
    )
    result = grade_submission(diagonal, a, shrink=False)
    failing = [f for f in result.findings if not f.passed]
    assert failing and {f.row.name for f in failing} == {"Softmax: dLdZ"}
    assert {f.diagnosis.bug for f in failing} == {"diagonal_only"}
    with pytest.raises(AssignmentError, match="activations"):
        parse_assignment({**data, "parts": [{**data["parts"][0], "activations": ["gelu"]}]})


def test_a_loss_returned_as_the_handouts_1x1_array_is_the_number_it_is(tmp_path):
    """Ones_N^T se Ones_C / (N C) is (1, 1): accepted as the scalar (a (2,) loss is not)."""
    text = (ROOT / "correct.py").read_text()
    for old, new in (
        ("return (sse / (self.N * self.C)).item()\n", "return sse / (self.N * self.C)\n"),
        ("return (np.ones((N, 1)).T @ crossentropy / N).item()\n", "return np.ones((N, 1)).T @ crossentropy / N\n"),
    ):
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / "one_by_one.py"
    path.write_text(text)
    result = grade_submission(path, assignment(), shrink=False)
    assert result.score == result.max_score, [c.output for c in result.checks if not c.passed]
    two = tmp_path / "two.py"
    two.write_text(text.replace("return sse / (self.N * self.C)\n", "return np.repeat(sse / (self.N * self.C), 2)\n"))
    result = grade_submission(two, assignment(), shrink=False)
    notes = {f.row.note for f in result.findings if not f.passed}
    assert {c.name for c in result.checks if not c.passed} == {"loss"} and any("shape" in n for n in notes)


def test_batchnorm_rows_summed_without_keepdims_are_the_rows_they_broadcast_as(tmp_path):
    """dLdBW / dLdBb / running statistics as (C,) count as the (1, C) rows; a flat Linear dLdb does not."""
    text = (ROOT / "correct.py").read_text()
    for old, new in (
        ("np.sum(dLdBZ * self.NZ, axis=0, keepdims=True)", "np.sum(dLdBZ * self.NZ, axis=0)"),
        ("self.dLdBb = np.sum(dLdBZ, axis=0, keepdims=True)", "self.dLdBb = np.sum(dLdBZ, axis=0)"),
        ("self.running_M = np.zeros((1, num_features))", "self.running_M = np.zeros(num_features)"),
        ("self.M = Z.mean(axis=0, keepdims=True)", "self.M = Z.mean(axis=0)"),
    ):
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / "flat_rows.py"
    path.write_text(text)
    result = grade_submission(path, assignment(), shrink=False)
    assert result.score == result.max_score, [c.output for c in result.checks if not c.passed]
    result, _ = graded("dLdb_flat.py")
    assert not next(c for c in result.checks if c.name == "bias_gradients").passed


def test_an_mlp_backward_left_returning_notimplemented_is_read_from_its_debug_dLdA0(tmp_path):
    """An older skeleton ends backward with `return NotImplemented` (its autograder reads mlp.dLdA0 /
    mlp.dLdA[0]): read as that autograder does; returning nothing and keeping nothing is an error."""
    text = (ROOT / "correct.py").read_text()
    old = "        dLdA0 = self.layers[0].backward(dLdZ0)\n        return dLdA0\n"
    new = "        self.dLdA0 = self.layers[0].backward(dLdZ0)\n        return NotImplemented\n"
    assert text.count(old) == 1 and text.endswith(
        "        for layer in reversed(self.layers):\n            dLdA = layer.backward(dLdA)\n        return dLdA\n"
    )
    text = text.replace(old, new)
    text = text[: text.rindex("        return dLdA\n")] + "        self.dLdA = [dLdA]\n"
    path = tmp_path / "old_skeleton.py"
    path.write_text(text)
    result = grade_submission(path, assignment(), shrink=False)
    assert result.score == result.max_score, [c.output for c in result.checks if not c.passed]
    nothing = tmp_path / "nothing.py"
    nothing.write_text(text.replace("        self.dLdA = [dLdA]\n", ""))
    result = grade_submission(nothing, assignment(), shrink=False)
    failing = {f.row.name for f in result.findings if not f.passed}
    assert failing == {"MLP4: dLdA0"}
    assert any("keeps no debug dLdA0" in f.row.note for f in result.findings if not f.passed)


def test_a_linear_backward_that_keeps_dLdA_instead_of_returning_it_is_read_as_the_handout_reads_it(tmp_path):
    """The handout's Linear test reads linear.dLdA; a backward that returns nothing but keeps it passes
    Linear's own checks (its MLPs, which chain the return values, fail on their own)."""
    text = (ROOT / "correct.py").read_text()
    old = "        if self.debug:\n            self.dLdA = dLdA\n        return dLdA\n"
    assert text.count(old) == 1
    path = tmp_path / "keeps_dLdA.py"
    path.write_text(text.replace(old, "        self.dLdA = dLdA\n"))
    result = grade_submission(path, assignment(), shrink=False)
    assert next(c for c in result.checks if c.name == "linear_backward").passed
    assert not next(c for c in result.checks if c.name == "mlp_backward").passed
