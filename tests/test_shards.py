"""`bprop check FOLDER --shard I/N` and `bprop merge OUT SHARD_OUT...`: sharded equals unsharded.

A 30-submission folder (the layer-api fixtures of tests/submissions/layer, two copies each under new
names) is graded once whole and once as 3 shards (the third in a process of its own); merged, the shards' summary.csv, summary.md,
junit.xml (timings aside) and every results.json equal the whole run's, byte for byte.
Two copies, not four (60 submissions graded twice were 46 s of the suite): the claim is about the
split and the merge, which 30 exercise as 60 did (10 per shard, interleaved by name, every fixture
graded in some shard), and the copies' equal scores still show that a name changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bprop import cli as bprop_cli
from grading import cli
from grading.shards import MergeError, ShardError, merge, parse_shard, select

LAYER = Path(__file__).parent / "submissions" / "layer"
ROOT = Path(__file__).parent.parent
REPORTS = "gradescope,csv,junit"
COPIES = 2


def check(folder: Path, out: Path, *extra: str) -> int:
    return cli.main([str(folder), "--assignment", "layer-api", "--out", str(out), "--report", REPORTS, *extra])


@pytest.fixture(scope="module")
def thirty(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("thirty")
    fixtures = sorted(LAYER.glob("*.py"))
    assert len(fixtures) == 15
    for copy in range(COPIES):
        for f in fixtures:
            shutil.copy(f, folder / f"s{copy}_{f.stem}.py")
    return folder


@pytest.fixture(scope="module")
def runs(thirty, tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole")
    assert check(thirty, whole) == 0
    shards = []
    for i in (1, 2):
        out = tmp_path_factory.mktemp(f"shard{i}")
        assert check(thirty, out, "--shard", f"{i}/3") == 0
        shards.append(out)
    out = tmp_path_factory.mktemp("shard3")  # on "another machine": a process of its own
    cmd = [sys.executable, "-m", "bprop", "check", str(thirty), "--assignment", "layer-api", "--out", str(out)]
    proc = subprocess.run([*cmd, "--report", REPORTS, "--shard", "3/3"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards.append(out)
    return whole, shards


def untimed(xml: bytes) -> str:
    return re.sub(r' time="[0-9.]+"', "", xml.decode())


def test_three_shards_merged_equal_the_unsharded_run(runs, tmp_path):
    whole, shards = runs
    sizes = [len(json.loads((s / "shard.json").read_text())["graded"]) for s in shards]
    assert sizes == [5 * COPIES] * 3
    merged = tmp_path / "merged"
    assert bprop_cli.main(["merge", str(merged), *map(str, reversed(shards))]) == 0  # any order
    for name in ("summary.csv", "summary.md"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    assert untimed((merged / "junit.xml").read_bytes()) == untimed((whole / "junit.xml").read_bytes())
    folders = sorted(p.name for p in whole.iterdir() if p.is_dir())
    assert len(folders) == 15 * COPIES and sorted(p.name for p in merged.iterdir() if p.is_dir()) == folders
    for name in folders:
        assert (merged / name / "results.json").read_bytes() == (whole / name / "results.json").read_bytes(), name
    scores = {r.split(",")[0]: r.split(",")[3] for r in (whole / "summary.csv").read_text().splitlines()[1:]}
    assert [scores[f"s{k}_correct"] for k in range(COPIES)] == ["13.0"] * COPIES
    assert [scores[f"s{k}_transpose_dW"] for k in range(COPIES)] == ["5.0"] * COPIES


def test_merge_refuses_a_duplicate_and_names_a_missing_shard(runs, tmp_path, capsys):
    _, shards = runs
    with pytest.raises(MergeError, match=r"shard 2/3 given twice"):
        merge(tmp_path / "a", [shards[0], shards[1], shards[1]])
    with pytest.raises(MergeError, match=r"missing shard 3/3 \(have 1/3, 2/3\)"):
        merge(tmp_path / "b", shards[:2])
    assert bprop_cli.main(["merge", str(tmp_path / "c"), str(shards[0])]) == 1
    assert "missing shards 2/3, 3/3" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_merge_refuses_a_submission_graded_twice(runs, tmp_path):
    _, shards = runs
    forged = tmp_path / "forged"
    shutil.copytree(shards[2], forged)
    manifest = json.loads((forged / "shard.json").read_text())
    first = json.loads((shards[0] / "shard.json").read_text())["graded"][0]
    manifest["graded"][0] = first
    (forged / "shard.json").write_text(json.dumps(manifest))
    with pytest.raises(MergeError, match=rf"submission '{first}' graded by two shards"):
        merge(tmp_path / "m", [shards[0], shards[1], forged])


def test_merge_names_a_results_folder_a_shard_lost(runs, tmp_path):
    _, shards = runs
    damaged = tmp_path / "damaged"
    shutil.copytree(shards[1], damaged)
    lost = json.loads((damaged / "shard.json").read_text())["graded"][3]
    shutil.rmtree(damaged / lost)
    with pytest.raises(MergeError, match=rf"results folders missing from their shard: .*{lost}"):
        merge(tmp_path / "m", [shards[0], damaged, shards[2]])
    assert not (tmp_path / "m").exists()


def test_merge_never_overwrites(runs, tmp_path):
    _, shards = runs
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(MergeError, match="not empty"):
        merge(tmp_path / "m", shards)


def test_merge_refuses_a_folder_that_is_no_shard(runs, tmp_path):
    whole, shards = runs
    with pytest.raises(MergeError, match=r"no shard\.json"):
        merge(tmp_path / "m", [whole, *shards])


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1/0", "a/b", "3", "1/3/4", "-1/3", "1.0/3", "", "2 /x"])
def test_a_bad_shard_is_refused_with_the_reason(bad, capsys):
    with pytest.raises(ShardError, match=r"expected I/N with whole numbers 1 <= I <= N"):
        parse_shard(bad)
    assert cli.main([str(LAYER), "--assignment", "layer-api", f"--shard={bad}"]) == 2
    assert "--shard: expected I/N" in capsys.readouterr().err


def test_slices_are_a_stable_partition_by_name():
    paths = [Path(f"sub/{c}.py") for c in "qwertyuiopasdfghjklzxcvbnm"]
    slices = [select(paths, (i, 4)) for i in range(1, 5)]
    chosen = sorted(k for s in slices for k in s)
    assert chosen == list(range(len(paths)))  # every submission once
    shuffled = list(reversed(paths))
    for i in range(1, 5):  # the same names whatever order the files were listed in
        assert [paths[k] for k in select(paths, (i, 4))] == [shuffled[k] for k in select(shuffled, (i, 4))]
    assert [paths[k].stem for k in slices[0]] == ["a", "e", "i", "m", "q", "u", "y"]
