"""`bprop check` (grading.cli.run) and the batch: Gradescope results for every submission, whatever happens.

A batch with a hostile submission (it hangs in its forward pass), one that does not parse and one
that crashes at import still grades the others in full, and writes a result for every one.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from grading import cli
from grading.assignment import AssignmentError, builtin_names, load_assignment, parse_assignment

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
    # dave's hang waits for the limit four times (three calls and the shrinker's): 2 s, not 4
    args = _parse([str(folder), "--assignment", "layer-api", "--out", str(out), "--wall-s", "2"])
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
    # the busy loop meets whichever limit comes first: the wall clock or the CPU time (both 2 s here)
    assert forward["score"] == 0
    assert "timed out after 2 s" in forward["output"] or "CPU time limit of 2 s exceeded" in forward["output"]
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
    err = capsys.readouterr().err
    assert f"built-ins: {', '.join(builtin_names())}" in err  # every built-in, sorted
    assert {"class-api", "function-api", "layer-api", "coursera-dnn", "mytorch-mlp", "cs231n-a2"} <= set(
        builtin_names()
    )


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


# --------------------------------------------------------------------------------------------------
# A batch whose file names and messages attack the report: every result kept, every writer safe

HOSTILE = Path(__file__).parent / "hostile"
NASTY_NAMES = {
    "latin1": b"m\xfcller.py",  # Latin-1 bytes: not UTF-8, so os.fsdecode gives "m\udcfcller.py"
    "formula": b"=cmd|' -C calc'!A0.py",
    "newline": b"evil\nalice,13,13.py",
    "escape": b"\x1b[2J\x1b[31mred.py",
}


def _run_cli(argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli.run(_parse(argv))
    return status, buf.getvalue()


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    root = tmp_path_factory.mktemp("nasty")
    folder = root / "class"
    folder.mkdir()
    correct = (SUBMISSIONS / "layer" / "correct.py").read_text()
    shutil.copy(SUBMISSIONS / "layer" / "correct.py", folder / "alice.py")
    (folder / "mallory.py").write_text(correct + "\n\n" + (HOSTILE / "report_escapes.py").read_text())
    (folder / "sam.py").write_text(correct + "\n\n" + (HOSTILE / "report_surrogate.py").read_text())
    (folder / "tom.py").write_text(correct + "\n\n" + (HOSTILE / "torch_backward.py").read_text())
    for raw in NASTY_NAMES.values():
        with open(os.fsencode(folder) + b"/" + raw, "w") as f:
            f.write(correct)
    secret = root / "root-only.py"
    secret.write_text('TOP_SECRET = "the exam answers"\n')
    secret.chmod(0o600)
    (folder / "steal.py").symlink_to(secret)  # a symlink to a root-only file
    outside = root / "outside"
    outside.mkdir()
    (outside / "x.py").write_text('TOP_SECRET = "from outside"\n')
    (folder / "inner").symlink_to(outside)  # reached only when named explicitly
    dots = folder / "...py"  # stem "..": its results folder would be the parent of --out
    dots.write_text(correct)
    out = root / "out"
    status, text = _run_cli(
        [str(folder), str(folder / "inner" / "x.py"), str(dots), "--assignment", "layer-api", "--out", str(out)]
    )
    return root, out, status, text


def test_a_hostile_batch_writes_every_result_inside_out(nasty):
    root, out, status, _ = nasty
    assert status == 0
    assert sorted(p.name for p in root.iterdir()) == ["class", "out", "outside", "root-only.py"]
    assert not (root / "results.json").exists()
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 11, folders  # alice, mallory, sam, tom, 4 nasty names, steal, x, ...py
    for name in folders:
        assert "/" not in name and not name.startswith(".") and name.isprintable(), name
        data = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        assert data["max_score"] == 13 and data["output_format"] == "text"
    for p in out.rglob("*"):
        if p.is_file():
            assert "TOP_SECRET" not in p.read_text(encoding="utf-8"), p


def test_symlinks_and_files_outside_the_folder_are_refused(nasty):
    _, out, _, _ = nasty
    rows = {r["submission"]: r for r in csv.DictReader((out / "summary.csv").open(encoding="utf-8"))}
    assert rows["steal"]["score"] == "0.0" and rows["steal"]["error"].startswith("refused: a symbolic link")
    assert rows["x"]["error"] == "refused: the file resolves outside the submissions folder"
    assert json.loads((out / "steal" / "results.json").read_text())["score"] == 0


def test_correct_submissions_with_nasty_names_get_full_marks(nasty):
    _, out, _, _ = nasty
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert len(rows) == 11  # a newline in a name forges no row
    by_file = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    for file in (
        "alice.py",
        "m\\xfcller.py",
        "'=cmd|' -C calc'!A0.py",
        "evil\\nalice,13,13.py",
        "\\x1b[2J\\x1b[31mred.py",
    ):
        match = [r for f, r in by_file.items() if f == file or f == file.lstrip("'")]
        assert match and match[0]["score"] == "13.0", (file, sorted(by_file))
    assert by_file["...py"]["score"] == "13.0"


def test_csv_cells_are_never_formulas(nasty):
    _, out, _, _ = nasty
    for row in csv.reader((out / "summary.csv").open(encoding="utf-8")):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
            assert "\n" not in cell and "\x1b" not in cell


def test_escape_codes_and_surrogates_reach_no_writer(nasty):
    _, out, _, text = nasty
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", text), "raw control characters on the terminal"
    mallory = next(line for line in text.splitlines() if line.startswith("mallory (mallory.py): "))
    score = float(mallory.split(": ")[1].split(" / ")[0])
    assert 12 <= score < 13, mallory
    assert "\\x1b[1A" in text  # shown, not acted on
    assert not [line for line in text.splitlines() if re.match(r"mallory \(mallory\.py\): 13 / 13", line)]
    sam = json.loads((out / "sam" / "results.json").read_text(encoding="utf-8"))
    loss_grad = next(t for t in sam["tests"] if t["name"] == "layers: loss_gradient")
    assert "raised ValueError: gradient \\xff\\ud800 is undefined" in loss_grad["output"]
    assert 0 < sam["score"] < 13
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert len(md.splitlines()) == 13 and "\x1b" not in md


def test_torch_autograd_behind_a_built_name_gets_no_credit(nasty):
    """Before: full marks (13/13) for a Dense.backward done by torch.autograd."""
    _, out, _, text = nasty
    tom = json.loads((out / "tom" / "results.json").read_text())
    assert tom["score"] == 0
    assert re.search(
        r"forbidden import: torch at line \d+ \(torch = importlib.import_module\(\"to\" \+ \"rch\"\)\)", tom["output"]
    )
    assert "tom (tom.py): 0 / 13" in text
    assert json.loads((out / "alice" / "results.json").read_text())["score"] == 13


@pytest.mark.parametrize(
    ("assignment", "folder"), [("layer-api", "layer"), ("function-api", "function"), ("class-api", "class")]
)
def test_a_correct_submission_keeps_full_marks_beside_hostile_neighbours(tmp_path, assignment, folder):
    """Per built-in: a correct one next to one that imports torch, one with escape codes in its
    name, one that is a symlink and two names of one file (a hard link): the correct one gets every
    point, the others their verdicts."""
    subs = tmp_path / "class"
    subs.mkdir()
    correct = (SUBMISSIONS / folder / "correct.py").read_text()
    (subs / "good.py").write_text(correct)
    (subs / "cheat.py").write_text(
        "import torch\n" + correct.replace("import numpy as np", "import numpy as np\nnp.t = torch", 1)
    )
    (subs / "\x1b[1Aname.py").write_text(correct)
    (subs / "link.py").symlink_to(SUBMISSIONS / folder / "correct.py")
    (subs / "original.py").write_text(correct)
    os.link(subs / "original.py", subs / "twin.py")  # one file under two names: neither is graded
    status, text = _run_cli([str(subs), "--assignment", assignment, "--out", str(tmp_path / "out")])
    assert status == 0
    rows = {r["submission"]: r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open(encoding="utf-8"))}
    max_score = load_assignment(assignment).max_score
    assert float(rows["good"]["score"]) == max_score
    assert float(rows["_x1b[1Aname"]["score"]) == max_score
    assert float(rows["cheat"]["score"]) == 0 and rows["cheat"]["error"].startswith("forbidden import: torch at line 1")
    assert float(rows["link"]["score"]) == 0 and rows["link"]["error"].startswith("refused: a symbolic link")
    for name in ("original", "twin"):
        assert float(rows[name]["score"]) == 0
        assert rows[name]["error"].startswith("refused: a hard link (one file with 2 names"), rows[name]["error"]
    assert "\x1b" not in text


def test_one_failed_write_loses_no_other_result(tmp_path):
    from grading.checks import CheckResult, SubmissionResult
    from grading.feedback import ResultsWriteError, write_results

    results = [
        SubmissionResult(Path(f"{name}.py"), "layer-api", [CheckResult("p", "forward", 1.0, 1.0, "ok")], name=name)
        for name in ("alice", "bob", "carol")
    ]
    out = tmp_path / "out"
    out.mkdir()
    (out / "bob").write_text("in the way")  # bob's folder cannot be made
    with pytest.raises(ResultsWriteError, match=r"could not write bob/results.json: FileExistsError"):
        write_results(results, out)
    assert json.loads((out / "alice" / "results.json").read_text())["score"] == 1.0
    assert json.loads((out / "carol" / "results.json").read_text())["score"] == 1.0
    assert [r["submission"] for r in csv.DictReader((out / "summary.csv").open())] == ["alice", "bob", "carol"]


@pytest.mark.parametrize(
    ("function", "text", "expected"),
    [
        ("printable", "a\x1b[2Kb\rc\u202ed\udcfce\ud800", "a\\x1b[2Kb\\x0dc\\u202ed\\xfce\\ud800"),
        ("printable", "one\ntwo\tx", "one\ntwo    x"),
        ("csv_cell", "=HYPERLINK(1)", "'=HYPERLINK(1)"),
        ("csv_cell", " +1", "' +1"),
        ("csv_cell", "\uff1dcmd", "'\uff1dcmd"),
        ("csv_cell", "line\nbreak", "line\\nbreak"),
        ("markdown_cell", "a|b <i>x</i> [l](u) `c` **b**", "a\\|b \\<i\\>x\\</i\\> \\[l\\](u) \\`c\\` \\*\\*b\\*\\*"),
        ("folder_name", "..", "_"),
        ("folder_name", "../../etc", "_.._etc"),
        ("folder_name", ".hidden", "hidden"),
        ("folder_name", "a\nb\x00c", "a_nb_x00c"),
    ],
)
def test_each_writer_escapes_what_a_submission_controls(function, text, expected):
    from grading import escaping as feedback

    assert getattr(feedback, function)(text) == expected


def test_no_counterexample_skips_the_shrinker_and_nothing_else(tmp_path):
    """--no-counterexample: the same scores and first divergence, without the counterexample block."""
    bug = SUBMISSIONS / "layer" / "transpose_dW.py"
    outputs = {}
    for flag in ([], ["--no-counterexample"]):
        out = tmp_path / ("plain" if flag else "with")
        assert cli.main([str(bug), "--assignment", "layer-api", "--out", str(out), *flag]) == 0
        outputs[bool(flag)] = json.loads((out / "transpose_dW" / "results.json").read_text())
    with_cx, without = outputs[False], outputs[True]
    assert "counterexample:" in with_cx["output"]
    assert "counterexample:" not in without["output"]
    assert without["score"] == with_cx["score"] < without["max_score"]
    assert [t["score"] for t in without["tests"]] == [t["score"] for t in with_cx["tests"]]


def test_the_grader_parses_python_through_one_lock():
    """grade_many grades in threads, and CPython 3.11's ast.parse is not thread-safe (a full run here
    once gave a submission "internal grading error: SystemError: AST constructor recursion depth
    mismatch"): every parse in grading/ and bprop/ goes through grading.pyast.parse."""
    import threading

    from grading import pyast

    root = Path(__file__).parents[1]
    direct = [
        f"{p.relative_to(root)}:{i}"
        for folder in ("grading", "bprop")
        for p in sorted((root / folder).rglob("*.py"))
        if p.name != "pyast.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bast\.parse\(", line)
    ]
    assert direct == [], direct
    assert isinstance(pyast._LOCK, type(threading.Lock()))
    assert pyast.parse("x = 1").body[0].targets[0].id == "x"
