"""The main job as tests: `bprop validate` of every preset and dtype on the real data (`--mnist`).

Each test is one `bprop validate --preset P --dtype D` (all the data, 3 epochs, seed 0, the three
frameworks, in the test's process), so pytest-xdist spreads them over the cores. The exit status is
the acceptance of bprop.acceptance; the asserts below restate the validation issue's figures on the
JSON, so a change of the acceptance code cannot quietly weaken them.

Left out here: the jobs whose results no check reads (`only_checked_jobs`). A parity preset's
acceptance (and every assert below) reads the reference and the twins only: its 1-ulp control's
3-epoch training and, for the per-sample parity preset (digits), the divergence runs are rows and a
plot in the report. They run the same code as the jobs kept (the reference from nudged parameters;
the stepping of run_divergence, kept for the chaotic preset), and tests/test_validate.py runs them
for every preset on a small run. The chaotic preset keeps every job: its checks read the divergence
runs and the control's stretch.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from bprop import jobs as J  # noqa: E402
from bprop import validate as V  # noqa: E402
from bprop.acceptance import acceptance_for  # noqa: E402
from bprop.cli import main  # noqa: E402
from oracles import TWIN_KINDS  # noqa: E402
from oracles.compare import ACCURACY_SLACK, FLOAT32_ACCURACY_GAP, tolerance  # noqa: E402
from reference.spec import PRESETS  # noqa: E402

pytestmark = pytest.mark.mnist
FRAMEWORKS = ("reference", "torch", "keras")
DIGITS_FLOOR = 0.90  # the digits lab after 3 epochs: lowest of seeds 0-4 is 90.37 % (README, "Presets")


def statuses(entry: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in entry["acceptance"]["checks"]}


def assert_float64_identical(e: dict) -> None:
    """Every twin's accuracies identical to the reference's, its parameters within the twin policy."""
    for twin in TWIN_KINDS:
        assert e[twin]["test_accuracy"] == e["reference"]["test_accuracy"], twin
        assert max(e[twin]["vs_reference"]["param_rel_error"]) <= tolerance("twin", "float64", "parameters"), twin


def assert_twins_follow(e: dict, dtype: str) -> None:
    """float64: identical (above); float32: every epoch's accuracy within FLOAT32_ACCURACY_GAP (0.05
    percentage points) of the reference's."""
    if dtype == "float64":
        return assert_float64_identical(e)
    ref = e["reference"]["test_accuracy"]
    for twin in TWIN_KINDS:
        assert (
            max(abs(a - b) for a, b in zip(e[twin]["test_accuracy"], ref)) <= FLOAT32_ACCURACY_GAP + ACCURACY_SLACK
        ), twin


def read_by_a_check(job) -> bool:
    """False for a parity preset's control training and divergence runs (see the module doc)."""
    if acceptance_for(job.preset, PRESETS[job.preset].batch_size).mode == "chaotic":
        return True
    return isinstance(job, J.TrainJob) and job.framework != J.NUDGED


@pytest.fixture(autouse=True)
def only_checked_jobs(monkeypatch):
    """bprop validate's jobs less those no check reads: the CNN's control alone is a fourth of its test."""
    build_jobs = V.build_jobs

    def checked(options):
        train, divergence = build_jobs(options)
        return [j for j in train if read_by_a_check(j)], [j for j in divergence if read_by_a_check(j)]

    monkeypatch.setattr(V, "build_jobs", checked)


def validate(preset_name: str, dtype: str, out, capsys) -> tuple[int, dict]:
    code = main(
        ["validate", "--preset", preset_name, "--dtype", dtype, "--out", str(out), "--workers", "1", "--no-progress"]
    )
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(printed)  # the table, in the test log
    return code, json.loads((out / "results.json").read_text())["presets"][preset_name][dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_batched(dtype, tmp_path, capsys):
    code, e = validate("mnist-relu-batched", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    ref = e["reference"]["test_accuracy"]
    assert len(ref) == 3 and e["n_train"] == 60_000 and e["n_test"] == 10_000
    assert_twins_follow(e, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_batched_raw(dtype, tmp_path, capsys):
    """Seed 001 as it runs (raw pixels, lr 1e-5): its 85.7 % after 3 epochs, in all three frameworks."""
    code, e = validate("mnist-relu-batched-raw", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    assert set(statuses(e).values()) == {"pass"}, statuses(e)
    for framework in FRAMEWORKS:
        assert e[framework]["test_accuracy"][-1] >= 0.85, (framework, e[framework]["test_accuracy"])
    assert_twins_follow(e, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_deep(dtype, tmp_path, capsys):
    """At least 97 % after 3 epochs in all three frameworks; float64 identical, with parameters within
    the twin policy (float32 runs part after a ReLU kink flips, as the 1-ulp control does)."""
    code, e = validate("mnist-relu-deep", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    assert set(statuses(e).values()) == {"pass"}, statuses(e)
    for framework in FRAMEWORKS:
        accuracy = e[framework]["test_accuracy"]
        assert len(accuracy) == 3 and accuracy[-1] >= 0.97, (framework, accuracy)
    if dtype == "float64":
        assert_float64_identical(e)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_per_sample_homework(dtype, tmp_path, capsys):
    code, e = validate("mnist-sigmoid-per-sample", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    for kind in FRAMEWORKS:
        assert e[kind]["initial_test_accuracy"] < 0.2  # "from ~10% ..."
        assert e[kind]["test_accuracy"][-1] >= 0.5  # "... to ~70%" (one seed of a chaotic run)
    div = e["divergence"]
    for twin in ("torch", "keras"):
        assert div[twin]["steps"] == 3000
        assert div[twin]["agree_steps"] >= max(div["nudged"]["agree_steps"] // 2, 10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_digits_lab(dtype, tmp_path, capsys):
    """The lab's inputs (standardised, its split): 68.52 / 80.37 / 92.96 % for seed 0, three ways."""
    code, e = validate("digits-sigmoid-per-sample", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    assert e["n_train"] == 1527 and e["n_test"] == 270
    ref = e["reference"]["test_accuracy"]
    for twin in ("torch", "keras"):
        assert e[twin]["test_accuracy"] == ref
    assert [round(100 * a, 2) for a in ref] == [68.52, 80.37, 92.96]  # 185, 217, 251 of 270
    assert ref[-1] >= DIGITS_FLOOR


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cnn(dtype, tmp_path, capsys):
    """The LeNet-like CNN: at least 98.5 % after 3 epochs in all three frameworks; float64 identical
    accuracies and parameters within 1e-12 after every epoch (float32 reported)."""
    code, e = validate("mnist-cnn", dtype, tmp_path, capsys)
    assert code == 0, e["acceptance"]
    assert set(statuses(e).values()) <= {"pass", "n/a"}, statuses(e)
    assert e["n_train"] == 60_000 and e["n_test"] == 10_000
    for framework in FRAMEWORKS:
        accuracy = e[framework]["test_accuracy"]
        assert len(accuracy) == 3 and accuracy[-1] >= 0.985, (framework, accuracy)
    if dtype == "float64":
        assert_float64_identical(e)  # the twin policy's float64 parameters bar: 1e-12


def test_every_preset_is_validated_here():
    assert set(PRESETS) == {
        "mnist-cnn",
        "mnist-relu-batched",
        "mnist-relu-batched-raw",
        "mnist-relu-deep",
        "mnist-sigmoid-per-sample",
        "digits-sigmoid-per-sample",
    }
