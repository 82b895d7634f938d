"""Fair grading: a crash costs only what needs the crashing function; shape-dependent bugs show;
the case cache keys on everything; provided functions cost nothing; scoring is the assignment's.

Each test grades real submissions in the real sandbox (tests/submissions/fairness/ and the
format folders). Each reproduces a finding of issue 11 that held on main.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from grading.assignment import AssignmentError, load_assignment, parse_assignment
from grading.checks import build_cases, grade_submission
from grading.feedback import write_results
from grading.sandbox import Limits

SUBMISSIONS = Path(__file__).parent / "submissions"
FAIR = SUBMISSIONS / "fairness"
NOT_BACKWARD = ("forward", "loss", "loss_gradient", "network_forward")  # they never call Dense.backward


def scores(result) -> dict[str, float]:
    return {c.name: c.score for c in result.checks}


def test_a_segfault_in_one_function_costs_only_what_needs_it():
    result = grade_submission(FAIR / "dense_backward_segfault.py", load_assignment("layer-api"))
    got = {c.name: c for c in result.checks}
    for name in NOT_BACKWARD:  # main: 0 for all of them
        assert got[name].score == got[name].points, f"{name}: {got[name].output}"
    for name in ("backward", "weight_gradients", "bias_gradients", "training_step"):
        assert got[name].score == 0
    assert "Dense.backward: killed by signal SIGSEGV" in got["backward"].output  # which function, and how
    assert result.status == "crashed"
    assert any(v.startswith("Dense.backward: killed by signal SIGSEGV") for v in result.verdicts)


def test_a_hang_in_one_function_costs_only_what_needs_it():
    limits = Limits(wall_s=3, cpu_s=3)
    result = grade_submission(FAIR / "dense_backward_hangs.py", load_assignment("layer-api"), limits)
    got = {c.name: c for c in result.checks}
    for name in NOT_BACKWARD:
        assert got[name].score == got[name].points, f"{name}: {got[name].output}"
    assert got["weight_gradients"].score == 0
    assert "Dense.backward: timed out after 3 s" in got["weight_gradients"].output
    assert "train(network, X, y): timed out" in got["training_step"].output  # train calls backward too
    assert result.status == "timed out"


def test_a_bug_only_on_square_layers_is_found():
    """The class-api built-in's own small shapes have no square first layer; the sweep's has."""
    result = grade_submission(SUBMISSIONS / "class" / "square_only_transpose.py", load_assignment("class-api"))
    grads = next(c for c in result.checks if c.title == "mlp: weight_gradients")
    assert grads.score == 0  # main: 2 / 2, full marks
    failing = {f.case for f in grads.findings if not f.passed}
    assert failing == {"square-float64"}, failing
    assert "transpose" in grads.output


def test_every_part_runs_on_the_shape_sweep():
    for name in ("layer-api", "function-api", "class-api"):
        for part in load_assignment(name).parts:
            kinds = {c.kind for c in build_cases(part)}
            assert {"small", "square", "distinct", "width1", "odd", "stability"} <= kinds, (name, part.id, kinds)
            by_kind = {c.kind: c for c in build_cases(part)}
            square = by_kind["square"]
            assert (
                all(W.shape[0] == W.shape[1] for k, W in square.params.items() if k.endswith(".W"))
                or part.format == "function"
            )
            width1 = by_kind["width1"]
            assert width1.x.shape[0] == 1 and any(1 in W.shape for k, W in width1.params.items() if k.endswith(".W"))
            batches = {c.x.shape[0] for c in build_cases(part)}
            assert 1 in batches and (part.format == "function" or max(batches) > 1)


def _renamed(tmp_path: Path) -> tuple[Path, object]:
    text = (SUBMISSIONS / "function" / "seed_dot_out.py").read_text().replace("feed_forward_sample", "predict_one")
    path = tmp_path / "renamed.py"
    path.write_text(text)
    data = {
        "name": "function-renamed",
        "parts": [
            {
                "id": "mlp",
                "format": "function",
                "sizes": [784, 32, 32, 10],
                "activations": ["sigmoid", "sigmoid"],
                "learning_rate": 0.003,
                "reduction": "sum",
                "preprocess": "raw",
                "dtypes": ["float64", "float32"],
                "names": {"forward": "predict_one"},
                "provided": ["cross_entropy_loss"],
                "checks": [{"name": "forward", "points": 2}, {"name": "loss", "points": 1}],
            }
        ],
    }
    return path, parse_assignment(data, "renamed")


def test_two_assignments_graded_in_one_process_keep_their_own_cases(tmp_path):
    """main: after the built-in, the renamed copy made 8 forward comparisons instead of 20 and the
    ones that catch the np.dot(a, W, b) bug dropped out (the case cache left out `names`)."""
    builtin = grade_submission(SUBMISSIONS / "function" / "seed_dot_out.py", load_assignment("function-api"))
    path, renamed_assignment = _renamed(tmp_path)
    renamed = grade_submission(path, renamed_assignment)
    fwd = {r.assignment: next(c for c in r.checks if c.name == "forward") for r in (builtin, renamed)}
    assert len(fwd["function-renamed"].findings) == len(fwd["function-api"].findings) > 20
    names = {f.row.name for f in fwd["function-renamed"].findings if not f.passed}
    assert "unchanged by predict_one: dense_3.b" in names
    bugs = {f.diagnosis.bug for f in fwd["function-renamed"].findings if f.diagnosis}
    assert "overwritten" in bugs


def test_provided_functions_are_not_graded():
    """The seed's own cross_entropy_loss is NaN at +-1e3 logits; main took 0.1 of stability for it."""
    result = grade_submission(FAIR / "given_loss.py", load_assignment("function-api"))
    assert result.score == result.max_score, [(c.title, c.output) for c in result.checks if not c.passed]
    tensors = {f.row.name for c in result.checks for f in c.findings}
    assert not any(t.startswith("cross_entropy_loss(") for t in tensors)
    without = dataclasses.replace(load_assignment("function-api").parts[0], provided=())
    graded_anyway = {e.key.tensor for c in build_cases(without) for e in c.expected}
    assert "cross_entropy_loss(y, p)" in graded_anyway  # not provided: it is graded


def test_provided_must_name_a_helper_of_the_format():
    base = {
        "name": "x",
        "parts": [
            {
                "format": "function",
                "sizes": [784, 32, 32, 10],
                "activations": ["sigmoid", "sigmoid"],
                "learning_rate": 0.1,
                "checks": [{"name": "forward", "points": 1}],
            }
        ],
    }
    for bad in (["train_one_sample"], "cross_entropy_loss", ["nope"]):
        base["parts"][0]["provided"] = bad
        with pytest.raises(AssignmentError, match="provided: expected a list of the function format's helper"):
            parse_assignment(base, "t.toml")


def test_scoring_all_or_nothing_and_fraction():
    assignment = load_assignment("layer-api")
    assert {c.scoring for p in assignment.parts for c in p.checks} == {"all_or_nothing"}  # the built-ins
    path = SUBMISSIONS / "layer" / "relu_missing_derivative.py"
    strict = {c.name: c for c in grade_submission(path, assignment).checks}
    part = assignment.parts[0]
    fraction = dataclasses.replace(
        assignment,
        parts=(
            dataclasses.replace(part, checks=tuple(dataclasses.replace(c, scoring="fraction") for c in part.checks)),
        ),
    )
    lenient = {c.name: c for c in grade_submission(path, fraction).checks}
    backward = lenient["backward"]
    passed = sum(f.passed for f in backward.findings)
    assert 0 < passed < len(backward.findings)
    assert backward.score == round(backward.points * passed / len(backward.findings), 2)
    assert strict["backward"].score == 0 and "scored all or nothing" in strict["backward"].output
    assert strict["forward"].score == strict["forward"].points  # a backward bug costs no forward points


def test_scoring_is_checked():
    data = {
        "name": "x",
        "parts": [
            {
                "format": "layer",
                "sizes": [4, 3],
                "learning_rate": 0.1,
                "checks": [{"name": "forward", "points": 1, "scoring": "half"}],
            }
        ],
    }
    with pytest.raises(AssignmentError, match=r"checks\[0\].scoring: expected one of"):
        parse_assignment(data, "t.toml")


def test_summary_has_a_status_column(tmp_path):
    assignment = load_assignment("layer-api")
    results = [
        grade_submission(SUBMISSIONS / "layer" / "correct.py", assignment),
        grade_submission(FAIR / "dense_backward_segfault.py", assignment),
        grade_submission(tmp_path / "missing.py", assignment),
    ]
    write_results(results, tmp_path / "out")
    with (tmp_path / "out" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["graded", "crashed", "refused"]


def test_the_case_cache_keys_on_checks_and_provided_too():
    part = load_assignment("layer-api").parts[0]
    without_network = dataclasses.replace(part, checks=tuple(c for c in part.checks if c.name != "network_forward"))
    build_cases(part)  # cached first
    labels = {label for c in build_cases(without_network) for label in c.probes}
    assert "forward(network, X)" not in labels and "train(network, X, y)" in labels
    fn = load_assignment("function-api").parts[0]
    graded = dataclasses.replace(fn, provided=())
    assert any(e.key.function == "cross_entropy_loss" for c in build_cases(graded) for e in c.expected)
    assert not any(e.key.function == "cross_entropy_loss" for c in build_cases(fn) for e in c.expected)
