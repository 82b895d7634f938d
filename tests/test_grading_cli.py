"""`bprop check` (grading.cli.run) and the batch: Gradescope results for every submission, whatever happens.

A batch with a hostile submission (it hangs in its forward pass), one that does not parse and one
that crashes at import still grades the others in full, and writes a result for every one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from grading import cli
from grading.assignment import AssignmentError, load_assignment, parse_assignment

SUBMISSIONS = Path(__file__).parent / "submissions"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A class folder: two good, one wrong, one hanging, one unparsable, one crashing at import."""
    folder = tmp_path_factory.mktemp("class")
    layer = SUBMISSIONS / "layer"
    shutil.copy(layer / "correct.py", folder / "alice.py")
    shutil.copy(layer / "wrong_sign.py", folder / "bob.py")
    shutil.copy(layer / "crash_at_import.py", folder / "carol.py")
    hang = (
        (layer / "correct.py")
        .read_text()
        .replace("        return input @ self.weights + self.biases", "        while True:\n            pass")
    )
    (folder / "dave.py").write_text(hang)
    (folder / "erin.py").write_text("def Dense(:\n")
    sub = folder / "late"
    sub.mkdir()
    shutil.copy(layer / "correct.py", sub / "alice.py")  # same stem in a subfolder: its own results folder
    out = tmp_path_factory.mktemp("out")
    args = _parse([str(folder), "--assignment", "layer-api", "--out", str(out), "--wall-s", "4"])
    return args, out


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["check", *argv])


@pytest.fixture(scope="module")
def ran(batch):
    args, out = batch
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli.run(args)
    return status, out, buf.getvalue()


def test_batch_exits_0_and_writes_a_result_for_every_submission(ran):
    status, out, _ = ran
    assert status == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["alice", "alice_py", "bob", "carol", "dave", "erin"]
    for name in folders:
        data = json.loads((out / name / "results.json").read_text())
        assert set(data) >= {"score", "max_score", "tests"}
        assert data["max_score"] == 13
        for t in data["tests"]:
            assert set(t) >= {"name", "score", "max_score", "status", "output"}
            assert t["status"] in ("passed", "failed")
            assert (t["status"] == "passed") == (t["score"] == t["max_score"])


def test_the_good_submissions_are_unharmed_by_the_hostile_ones(ran):
    _, out, _ = ran
    for name in ("alice", "alice_py"):
        assert json.loads((out / name / "results.json").read_text())["score"] == 13
    bob = json.loads((out / "bob" / "results.json").read_text())
    assert 0 < bob["score"] < 13
    assert "Diagnosis: the sign is flipped" in bob["output"]


def test_hang_syntax_error_and_import_crash_get_verdicts(ran):
    _, out, _ = ran
    dave = json.loads((out / "dave" / "results.json").read_text())
    forward = next(t for t in dave["tests"] if t["name"] == "layers: forward")
    # the busy loop meets whichever limit comes first: the wall clock or the CPU time (both 4 s here)
    assert forward["score"] == 0
    assert "timed out after 4 s" in forward["output"] or "CPU time limit of 4 s exceeded" in forward["output"]
    loss = next(t for t in dave["tests"] if t["name"] == "layers: loss")
    assert loss["output"]  # the hang in forward does not hide the other verdicts
    erin = json.loads((out / "erin" / "results.json").read_text())
    assert erin["score"] == 0 and "syntax error at line 1" in erin["output"]
    carol = json.loads((out / "carol" / "results.json").read_text())
    assert carol["score"] == 0 and "No module named 'course_utils'" in carol["output"]


def test_summary_csv_has_one_row_per_submission(ran):
    _, out, _ = ran
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["submission"] for r in rows] == ["alice", "bob", "carol", "dave", "erin", "alice_py"]
    bob = next(r for r in rows if r["submission"] == "bob")
    assert bob["first_divergence"] == "dense_3.dW (small-float64)" and "sign" in bob["diagnosis"]
    assert "syntax error" in next(r for r in rows if r["submission"] == "erin")["error"]


def test_terminal_summary_is_readable(ran):
    _, _, text = ran
    assert "bob (bob.py): " in text and "first diverging tensor: dense_3.dW (small-float64)" in text
    assert "diagnosis: the sign is flipped" in text
    assert "FAIL layers: weight_gradients" in text
    assert "nothing could be graded" in text  # erin, carol


def test_bad_usage_is_exit_2(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing.py"), "--assignment", "layer-api", "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main([str(tmp_path), "--assignment", "no-such-assignment", "--out", str(tmp_path)]) == 2
    assert "built-ins: class-api, function-api, layer-api" in capsys.readouterr().err


# Assignment files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["layer-api", "function-api", "class-api"])
def test_builtin_assignments_load_and_build_their_reference(name):
    a = load_assignment(name)
    assert a.max_score > 0
    for part in a.parts:
        spec = part.spec(part.sizes, "float64")
        assert spec.n_in == part.sizes[0] and spec.n_out == part.sizes[-1]


def test_instructor_assignment_file_in_json(tmp_path):
    path = tmp_path / "hw.json"
    path.write_text(
        json.dumps(
            {
                "name": "hw4",
                "parts": [
                    {
                        "format": "layer",
                        "sizes": [784, 64, 10],
                        "small_sizes": [5, 4, 3],
                        "activations": ["tanh"],
                        "reduction": "mean",
                        "learning_rate": 0.05,
                        "names": {"dense": "Linear"},
                        "checks": [{"name": "forward", "points": 1}, {"name": "backward", "points": 4}],
                    }
                ],
            }
        )
    )
    a = load_assignment(path)
    assert a.max_score == 5 and a.parts[0].names["dense"] == "Linear"
    assert "Linear" in a.needed_names() and "Tanh" in a.needed_names()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "keras"}, "parts[0].format: expected one of"),
        ({"activations": ["relu", "relu"]}, "parts[0].activations: expected 1 of"),
        ({"checks": [{"name": "vibes", "points": 1}]}, "'vibes' is not a layer-format check"),
        ({"checks": [{"name": "forward", "points": -1}]}, "points: expected >= 0"),
        ({"loss": "cross_entropy"}, "the layer format works on logits"),
        ({"names": {"Dense": "X"}}, "names: unknown keys ['Dense']"),
    ],
    ids=["format", "activations", "check", "points", "loss", "names"],
)
def test_bad_assignment_names_the_field(change, message):
    part = {"format": "layer", "sizes": [784, 32, 10], "activations": ["relu"], "learning_rate": 0.1, "checks": []}
    with pytest.raises(AssignmentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_assignment({"name": "x", "parts": [{**part, **change}]}, "hw.toml")
