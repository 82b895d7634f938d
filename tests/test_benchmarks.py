"""`python -m benchmarks` runs and writes the JSON its README section promises (schema, not speed).

Timings are never asserted (COMMON: speed figures are measured in benchmarks, not tested).
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.floor import straight_epoch
from reference import Network, init_params, make_optimizer, preset
from reference.train import train_epoch

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("batched_epoch_s", "per_sample_step_us", "forward_backward_ms", "cnn_epoch_s")
PRESETS = (
    "mnist-sigmoid-per-sample",
    "mnist-relu-batched",
    "mnist-relu-batched-raw",
    "mnist-relu-deep",
    "mnist-cnn",
    "digits-sigmoid-per-sample",
)


def run_quick(tmp_path: Path, only: str) -> dict:
    pytest.importorskip("threadpoolctl")
    data_loaders = pytest.importorskip("data_loaders")
    try:
        data_loaders.load_mnist(), data_loaders.load_digits()
    except (ImportError, data_loaders.DataError) as e:
        pytest.skip(f"the benchmark runs on real MNIST and digits: {type(e).__name__}: {e}")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", only, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| dtype | measure | reference |" in proc.stdout, proc.stdout[-3000:]
    doc = json.loads(out.read_text())
    name = doc["machine"]["name"]
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith(("PASS ", "FAIL ", "n/a "))]
    assert len(verdicts) == 11 and all(line.endswith(f"[{name}]") for line in verdicts), proc.stdout[-3000:]
    ratio_lines = [line for line in proc.stdout.splitlines() if " reference/" in line and ": " in line]
    assert ratio_lines and all(line.endswith(f"[{name}]") for line in ratio_lines), ratio_lines
    return json.loads(out.read_text())


def positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def check_schema(doc: dict, contenders: tuple[str, ...]) -> None:
    for key in (
        "name",
        "cpu",
        "cpu_model",
        "cores",
        "numpy",
        "blas",
        "load_average_before",
        "load_average_after",
        "threads",
    ):
        assert key in doc["machine"], key
    assert doc["machine"]["name"].startswith(doc["machine"]["cpu"] + ", "), doc["machine"]["name"]
    assert doc["machine"]["cpu"].startswith(doc["machine"]["cpu_model"]), doc["machine"]
    targets = {(t["target"], t["dtype"]) for t in doc["targets"]}
    assert len(targets) == len(doc["targets"]) == 11, doc["targets"]
    for t in doc["targets"]:
        assert t["machine"] == doc["machine"]["name"]
        assert t["pass"] is None or t["pass"] == (t["ratio"] <= t["at_most"]), t
    assert doc["setup"]["quick"] is True
    for dtype in ("float32", "float64"):
        assert set(doc[dtype]) == set(TASKS), doc[dtype].keys()
        assert set(doc[dtype]["batched_epoch_s"]) == {*contenders, "gemm_limit"}
        assert set(doc[dtype]["cnn_epoch_s"]) == {*contenders, "gemm_limit"}
        assert all(positive(v) for v in doc[dtype]["cnn_epoch_s"].values())
        assert positive(doc["ratios"][dtype]["cnn_epoch_s reference/gemm_limit"])
        assert set(doc[dtype]["per_sample_step_us"]) == {*contenders, "numpy_floor"}
        assert set(doc[dtype]["forward_backward_ms"]) == set(contenders)
        for contender in contenders:
            assert positive(doc[dtype]["batched_epoch_s"][contender])
            assert positive(doc[dtype]["per_sample_step_us"][contender])
            per_preset = doc[dtype]["forward_backward_ms"][contender]
            assert set(per_preset) == set(PRESETS) and all(positive(v) for v in per_preset.values())
        assert positive(doc[dtype]["batched_epoch_s"]["gemm_limit"])
        assert positive(doc[dtype]["per_sample_step_us"]["numpy_floor"])
        assert positive(doc["ratios"][dtype]["batched_epoch_s reference/gemm_limit"])
        assert positive(doc["ratios"][dtype]["per_sample_step_us reference/numpy_floor"])


def test_quick_benchmark_writes_the_promised_json(tmp_path):
    """The reference alone (seconds): every dtype, task and the GEMM limit, in the promised layout."""
    check_schema(run_quick(tmp_path, "reference"), ("reference",))


@pytest.mark.slow
def test_quick_benchmark_with_both_twins(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    doc = run_quick(tmp_path, "reference,torch,keras")
    check_schema(doc, ("reference", "torch", "keras"))
    assert not doc["setup"]["skipped"]
    for dtype in ("float32", "float64"):
        assert positive(doc["ratios"][dtype]["batched_epoch_s reference/torch"])
        assert positive(doc["ratios"][dtype]["per_sample_step_us reference/keras"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_per_sample_floor_trains_the_reference_numbers_bit_for_bit(dtype):
    """benchmarks/floor.py is the same SGD step written straight: a bar, only if it is the same maths."""
    spec = preset("mnist-sigmoid-per-sample", dtype=dtype)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (40, 784)) * (rng.random((40, 784)) < 0.2) / 40).astype(dtype)  # unsaturated
    y, order = rng.integers(0, 10, 40), rng.permutation(40)
    start = init_params(spec, seed=0)
    net = Network(spec, params=start)
    train_epoch(net, make_optimizer(spec.optimizer), x, y, order, 1)
    floor = {k: v.copy() for k, v in start.items()}
    straight_epoch(floor, spec.optimizer.lr)(x, y, order)
    for k, v in net.params.items():
        assert not np.array_equal(v, start[k]), f"{k} did not move: the comparison would prove nothing"
        np.testing.assert_array_equal(floor[k], v, err_msg=k)


def test_a_task_in_pieces_runs_its_contenders_in_turns(monkeypatch):
    """The per-sample task's contenders take turns piece by piece, the order rotating; each is reset
    once a round, before its first piece, and its time is the sum of its pieces. A job of one piece
    runs whole, alone. The clock is a counter each piece advances by its contender's cost."""
    bench = importlib.import_module("benchmarks.run")  # the module (benchmarks.run is also a function's name)

    clock, log, resets = [0.0], [], []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.time, "process_time", lambda: clock[0] / 2)

    def job(contender, cost, task="per_sample_step_us", pieces=3):
        def run(i):
            log.append((contender, i))
            clock[0] += cost

        return bench.Job("float32", task, contender, run, lambda: resets.append(contender), 1.0, pieces)

    jobs = [job("a", 1.0), job("b", 10.0), job("c", 100.0), job("d", 1000.0, "batched_epoch_s", 1)]
    bench.run_rounds(jobs, 2, progress=lambda _: None)
    one_round = [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2), ("d", 0)]
    assert log == one_round * 3  # the warm-up round and two timed ones
    assert resets == ["a", "b", "c", "d"] * 3
    assert [j.times for j in jobs] == [[3.0, 3.0], [30.0, 30.0], [300.0, 300.0], [1000.0, 1000.0]]
    assert [j.cpu for j in jobs] == [[1.5, 1.5], [15.0, 15.0], [150.0, 150.0], [500.0, 500.0]]
    assert [len(g) for g in bench.turns(jobs)] == [3, 1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_per_sample_pieces_train_the_whole_epoch_bit_for_bit(dtype):
    """The pieces are the order's consecutive parts with their rows gathered: trained one after the
    other they are the steps of train_epoch(x, y, order), to the last bit of every parameter."""
    from benchmarks.run import pieces_of

    spec = preset("mnist-sigmoid-per-sample", dtype=dtype)
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 256, (50, 784)) * (rng.random((50, 784)) < 0.2) / 40).astype(dtype)
    y, order = rng.integers(0, 10, 50), rng.permutation(50)
    parts = pieces_of(x, y, order, 4)
    assert [len(o) for _, _, o in parts] == [13, 13, 12, 12]
    np.testing.assert_array_equal(np.concatenate([px[o] for px, _, o in parts]), x[order])
    np.testing.assert_array_equal(np.concatenate([py[o] for _, py, o in parts]), y[order])
    start = init_params(spec, seed=0)
    whole, pieced = Network(spec, params=start), Network(spec, params=start)
    train_epoch(whole, make_optimizer(spec.optimizer), x, y, order, 1)
    opt = make_optimizer(spec.optimizer)
    for px, py, o in parts:
        train_epoch(pieced, opt, px, py, o, 1)
    for k, v in whole.params.items():
        assert not np.array_equal(v, start[k]), f"{k} did not move: the comparison would prove nothing"
        np.testing.assert_array_equal(pieced.params[k], v, err_msg=k)
    assert pieces_of(x, y, order, 1) == [(x, y, order)]


def test_verdicts_take_the_median_of_the_rounds_paired_ratios():
    """A drift between rounds moves both contenders of a round: the paired ratio cancels it, the
    ratio of the medians does not. Round 3 (machine 2x slower for the limit only) is the outlier."""
    from benchmarks.run import TARGETS, paired, verdict_line, verdicts

    ref, limit = [1.0, 2.0, 4.0, 1.1, 2.2], [1.0, 2.0, 1.0, 1.0, 2.0]  # ratios 1, 1, 4, 1.1, 1.1
    key = "cnn_epoch_s reference/gemm_limit"
    reps = {
        d: {"cnn_epoch_s/reference": {"wall": ref, "cpu": ref}, "cnn_epoch_s/gemm_limit": {"wall": limit, "cpu": limit}}
        for d in ("float32", "float64")
    }
    doc = {
        "repetitions": reps,
        "ratios": {d: {key: 2.0 / 1.0} for d in ("float32", "float64")},
        "cpu_time_ratios": {d: {key: 2.0} for d in ("float32", "float64")},
        "machine": {"name": "test machine"},
        **{d: {"forward_backward_ms": {}} for d in ("float32", "float64")},
    }
    assert paired(doc, "float32", key) == pytest.approx([1.0, 1.0, 4.0, 1.1, 1.1])
    cnn = [v for (label, _, k, _), v in zip(TARGETS, verdicts(doc)) if k == key]
    assert len(cnn) == 2
    for v in cnn:
        assert v["ratio"] == pytest.approx(1.1) and v["ratio_of_medians"] == 2.0 and v["rounds"] == [1.0, 4.0]
        assert v["pass"] is True  # 1.1 <= 2.0, where the ratio of the medians (2.0) sat on the bound
        assert verdict_line(v).startswith("PASS") and "(rounds 1.00-4.00, cpu 1.10)" in verdict_line(v)
    missing = [v for (_, _, k, _), v in zip(TARGETS, verdicts(doc)) if k != key]
    assert all(v["ratio"] is None and verdict_line(v).startswith("n/a") for v in missing)


# /proc/cpuinfo's fields of the processors the benchmark has run on (the first processor's block).
ZEN3 = {
    "vendor_id": "AuthenticAMD",
    "cpu family": "25",
    "model": "1",
    "model name": "AMD EPYC",
    "flags": "fpu avx fma avx2",
}
ZEN4 = {**ZEN3, "model": "17", "flags": "fpu avx fma avx2 avx512f avx512bw"}
SKYLAKE_SP = {
    "vendor_id": "GenuineIntel",
    "cpu family": "6",
    "model": "85",
    "model name": "Intel(R) Xeon(R) Processor",
    "flags": "avx2 avx512f",
}


@pytest.mark.parametrize(
    "info, l2, expected",
    [
        (ZEN3, "512K", "AMD EPYC (Zen 3, family 25 model 1; AVX2, no AVX-512; L2 512K)"),
        (ZEN4, "1024K", "AMD EPYC (Zen 4, family 25 model 17; AVX-512; L2 1024K)"),
        (SKYLAKE_SP, "", "Intel(R) Xeon(R) Processor (Skylake-SP/Cascade Lake, family 6 model 85; AVX-512)"),
        ({**ZEN3, "cpu family": "99"}, "", "AMD EPYC (family 99 model 1; AVX2, no AVX-512)"),  # a core not in the table
        ({"model name": "Some CPU"}, "2M", "Some CPU"),  # no family or model (another OS's cpuinfo): the name alone
    ],
)
def test_the_machine_name_tells_processor_generations_apart(info, l2, expected):
    """Two "AMD EPYC" machines of different generations (a Zen 4, a Zen 3) gave the same tree's ratios up
    to a third apart (float32 CNN 2.15 against 2.84): the name
    printed beside every figure says the core, the family and model, AVX-512 or not and the L2 size."""
    from benchmarks.machine import cpu_description

    assert cpu_description(info, l2=l2) == expected
