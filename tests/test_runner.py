"""bprop.runner's schedule: a measured cost for every job the validation runs, longest first, the
schedule reported; bprop.jobs' evaluation chunks and glibc setting, which change no result; a worker
that dies (killed by a signal, or exiting) costs only the job it ran, and the report names it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from bprop import jobs as J
from bprop import runner as R
from bprop import validate as V
from bprop.validate import Options, build_jobs
from oracles.compare import tolerance
from reference.network import init_params
from reference.spec import PRESETS, preset
from reference.train import evaluate


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_and_framework_has_a_measured_cost(name):
    """No job of the default validation is ordered by a guess: each preset has its measured row (a new
    preset needs scripts/job_costs.py run and its row added to runner._COSTS), with positive figures,
    and a divergence cost where the validation runs divergence jobs (batch 1)."""
    for framework in J.FRAMEWORKS:
        assert (framework, name) in R._COSTS, f"runner._COSTS has no row for {framework} {name}"
        cost = R._COSTS[(framework, name)]
        assert min(cost.step_ms) > 0 and min(cost.eval_s) > 0
        if preset(name).batch_size == 1:
            assert min(cost.div_ms) > 0, (framework, name)


def test_an_unmeasured_preset_takes_the_nearest_row_of_its_kind(monkeypatch):
    deep = R._COSTS[("torch", "mnist-relu-deep")]
    monkeypatch.delitem(R._COSTS, ("torch", "mnist-relu-deep"))
    # batch 32: the batch-128 MLPs are nearer than the batch-1 ones (and the CNN is another kind)
    assert R.job_cost("torch", "mnist-relu-deep") == R._COSTS[("torch", "mnist-relu-batched")]
    assert R.job_cost("torch", "mnist-relu-deep") != deep
    monkeypatch.delitem(R._COSTS, ("torch", "mnist-cnn"))  # no other CNN: some row of the framework
    assert R.job_cost("torch", "mnist-cnn") in R._COSTS.values()
    with pytest.raises(ValueError, match="no cost measured for framework 'jax'"):
        R.job_cost("jax", "mnist-cnn")


@pytest.mark.smoke
def test_estimates_follow_the_measured_costs():
    """steps x ms per step + (epochs + 1) evaluations (+ a framework's start), scaled by --limit."""
    job = J.TrainJob("mnist-cnn", "float64", 0, "reference", 3)
    c = R._COSTS[("reference", "mnist-cnn")]
    assert R.estimated_seconds(job) == pytest.approx(3 * 938 * c.step_ms[0] / 1e3 + 4 * c.eval_s[0])
    small = J.TrainJob("mnist-cnn", "float32", 0, "torch", 1, limit=1000)
    c = R._COSTS[("torch", "mnist-cnn")]
    assert R.estimated_seconds(small) == pytest.approx(16 * c.step_ms[1] / 1e3 + 2 * c.eval_s[1] / 10 + 3.2)
    div = J.DivergenceJob("mnist-sigmoid-per-sample", "float64", 0, J.NUDGED, 3000)
    assert R.estimated_seconds(div) == pytest.approx(
        3000 * R._COSTS[("reference", "mnist-sigmoid-per-sample")].div_ms[0] / 1e3
    )
    assert R.estimated_seconds(J.TrainJob("mnist-cnn", "float64", 0, J.NUDGED, 3)) == R.estimated_seconds(job)


def lpt_makespan(costs: list[float], workers: int) -> float:
    loads = [0.0] * workers
    for c in costs:
        loads[loads.index(min(loads))] += c
    return max(loads)


@pytest.mark.smoke
def test_default_validation_is_handed_out_longest_first_and_packs_two_workers():
    """The default run's jobs in the runner's order: estimates never increase, and on 2 workers the
    predicted finish is within the shortest job of a perfect split (the workers end together)."""
    train, div = build_jobs(Options())
    jobs = [*train, *div]
    order = R.longest_first(jobs)
    est = [R.estimated_seconds(jobs[i]) for i in order]
    assert sorted(order) == list(range(len(jobs)))
    assert est == sorted(est, reverse=True)
    assert {jobs[i].preset for i in order[:8]} >= {"mnist-cnn", "mnist-sigmoid-per-sample"}
    assert lpt_makespan(est, 2) <= sum(est) / 2 + min(est) + 1e-9
    # the order the runner had before the cost model knew the CNN put its jobs last
    assert jobs[order[-1]].preset != "mnist-cnn"


def test_schedule_reports_each_workers_jobs_and_the_idle_time_at_the_end():
    jobs = [J.TrainJob("digits-sigmoid-per-sample", "float64", 0, fw, 1) for fw in ("reference", "torch", "keras")]
    results = [
        {"pid": 1, "started": 100.0, "ended": 110.0, "cpu_s": 9.0},
        {"pid": 2, "started": 100.5, "ended": 104.0, "cpu_s": 3.0},
        {"pid": 2, "started": 104.0, "ended": 107.0, "cpu_s": 3.0},
    ]
    s = R.schedule(jobs, results, workers=2)
    assert s["span_s"] == 10.0 and s["busy_s"] == 16.5
    assert s["idle_share"] == pytest.approx(1 - 16.5 / 20)
    assert s["idle_at_end_s"] == {"1": 0.0, "2": 3.0}
    assert [r["end_s"] for r in s["jobs"]] == [4.0, 7.0, 10.0]  # in the order they ended
    assert [r["job"] for r in s["jobs"]] == [jobs[1].label, jobs[2].label, jobs[0].label]
    assert R.schedule(jobs, [R.JobError(j, "E: x", "") for j in jobs], 2) == {}


def test_jobs_ending_within_the_same_10_ms_are_listed_in_the_order_they_ended():
    """The schedule rounds to 0.01 s; the order comes from the unrounded times (the cause of a flake of
    the test below: two short jobs ending 9 ms apart kept the jobs' list order)."""
    jobs = [J.TrainJob("digits-sigmoid-per-sample", "float64", 0, fw, 1) for fw in ("reference", "torch")]
    results = [
        {"pid": 1, "started": 99.999, "ended": 100.004, "cpu_s": 0.005},  # ran second
        {"pid": 1, "started": 99.990, "ended": 99.999, "cpu_s": 0.009},  # ran first
    ]
    s = R.schedule(jobs, results, workers=1)
    assert [r["end_s"] for r in s["jobs"]] == [0.01, 0.01]
    assert [r["job"] for r in s["jobs"]] == [jobs[1].label, jobs[0].label]


def test_a_run_records_when_each_job_ran_in_the_order_handed_out():
    jobs = [
        J.TrainJob("digits-sigmoid-per-sample", "float64", 0, "reference", 1, limit=40),
        J.TrainJob("mnist-relu-batched", "float64", 0, "reference", 1, limit=300),
        J.DivergenceJob("digits-sigmoid-per-sample", "float64", 0, J.NUDGED, 20, limit=40),
    ]
    results = R.run_jobs(jobs, workers=1, progress=False)
    assert all(isinstance(r, dict) and r["started"] <= r["ended"] for r in results), results
    s = R.schedule(jobs, results, workers=1)
    handed_out = [jobs[i].label for i in R.longest_first(jobs)]
    assert [r["job"] for r in s["jobs"]] == handed_out  # one worker: they end in the order handed out
    assert s["idle_at_end_s"] == {str(results[0]["pid"]): 0.0}


@pytest.mark.smoke
def test_evaluation_chunks_keep_the_widest_temporary_under_16_mb():
    cnn = preset("mnist-cnn")
    # conv 2's im2col: 8 channels x 3 x 3 per output position, 14 x 14 positions, 8 bytes
    assert J.eval_rows(cnn) == (16 << 20) // (8 * 9 * 14 * 14 * 8) == 148
    assert J.eval_rows(preset("mnist-cnn", dtype="float32")) == 297
    for name in PRESETS:
        if preset(name).input_shape is None:
            assert J.eval_rows(preset(name)) == 10_000, name  # an MLP's test split in one chunk, as before


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_evaluating_in_chunks_changes_nothing_but_the_sums_rounding(dtype):
    spec = preset("mnist-cnn", dtype=dtype)
    rng = np.random.default_rng(3)
    x = rng.random((400, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 400)
    model = J.ReferenceModel(spec, init_params(spec, 1), 1)
    loss_one, acc_one = evaluate(model.net, x, y, batch_size=10_000)
    loss_chunked, acc_chunked = model.evaluate(x, y, J.eval_rows(spec))
    assert acc_chunked == acc_one
    assert abs(loss_chunked - loss_one) <= tolerance("twin", dtype, "loss") * abs(loss_one)
    assert np.array_equal(J.predictions(model, x, J.eval_rows(spec)), J.predictions(model, x))


@pytest.mark.parametrize("kind", ["reference", "torch", "keras"])
@pytest.mark.parametrize("name", ["mnist-cnn", "mnist-relu-batched"])
def test_one_pass_gives_evaluate_s_figures_and_the_predictions_of_their_own_pass(kind, name):
    """run_train takes loss, accuracy and predictions from one pass (J.evaluated): the same numbers, bit
    for bit, as model.evaluate and J.predictions, each its own pass (several chunks, a short last one)."""
    if kind != "reference":
        pytest.importorskip(kind)
    spec = preset(name, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.random((150, *spec.sample_shape))
    y = rng.integers(0, 10, 150)
    with J.single_threaded():  # as a job runs (and torch's thread setting restored after)
        model = J.make_model(kind, spec, init_params(spec, 2), 2)
        loss, accuracy, classes = J.evaluated(model, x, y, 64)
        assert (loss, accuracy) == tuple(map(float, model.evaluate(x, y, 64)))
        assert classes.dtype == np.int16 and np.array_equal(classes, J.predictions(model, x, 64))
    assert len(set(classes.tolist())) > 1  # an untrained net that predicts one class would prove little


def test_keep_freed_memory_stops_the_cnns_page_faults():
    """glibc setting (bprop.jobs.keep_freed_memory): the reference CNN's steps stop faulting their
    temporaries in from the kernel (measured: 2,951 minor faults a step without, 0 with). The
    reference's own kept arrays (conv.Workspace) stop them too, so they are switched off here
    (KEEP_AT_MOST = 0: every temporary fresh, as an array over the cap always is, such as an
    evaluation chunk's): what is measured is the glibc setting alone."""
    script = textwrap.dedent(
        """
        import resource, sys
        import numpy as np
        from bprop import jobs as J
        from reference import conv
        from reference.network import init_params
        conv.Workspace.KEEP_AT_MOST = 0
        from reference.spec import preset
        if sys.argv[1] == "keep":
            assert J.keep_freed_memory()
        spec = preset("mnist-cnn")
        x = np.random.default_rng(0).random((64 * 6, 1, 28, 28))
        y = np.arange(64 * 6) % 10
        m = J.ReferenceModel(spec, init_params(spec, 0), 0)
        m.train_epoch(x[:128], y[:128], np.arange(128), 64)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        m.train_epoch(x[128:], y[128:], np.arange(256), 64)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
        """
    )
    env = {"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def faults(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, env={**env, "PYTHONPATH": "."}
        )
        assert out.returncode == 0, out.stderr
        return float(out.stdout.split()[-1])

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    assert faults("keep") < 50
    assert faults("default") > 500


def test_each_job_runs_with_the_glibc_setting(monkeypatch):
    calls = []
    monkeypatch.setattr(J, "keep_freed_memory", lambda: calls.append(1) or True)
    R.run_jobs([J.TrainJob("digits-sigmoid-per-sample", "float32", 0, "reference", 1, limit=20)], workers=1)
    assert calls == [1]


class FakeItem:
    def __init__(self, nodeid: str, scopes: tuple[str, ...] = ()):
        self.nodeid = nodeid
        defs = {f"f{i}": [SimpleNamespace(scope=s)] for i, s in enumerate(scopes)}
        self._fixtureinfo = SimpleNamespace(name2fixturedefs=defs)


@pytest.mark.smoke
def test_tests_are_collected_heaviest_module_first_and_longest_first_inside():
    """tests/conftest.py's order for pytest-xdist: modules by their known seconds; inside a module with
    no module- or class-scoped fixture, the longest test first; unknown tests keep their order."""
    from conftest import longest_first

    items = [
        FakeItem("a.py::t1"),
        FakeItem("a.py::t2"),
        FakeItem("b.py::t1", ("module",)),
        FakeItem("b.py::t2", ("function",)),
        FakeItem("c.py::t1"),
        FakeItem("c.py::t2"),
        FakeItem("c.py::t3"),
    ]
    seconds = {"a.py::t2": 5.0, "b.py::t2": 30.0, "c.py::t3": 100.0}
    order = [i.nodeid for i in longest_first(items, seconds)]
    assert order == ["c.py::t3", "c.py::t1", "c.py::t2", "b.py::t1", "b.py::t2", "a.py::t2", "a.py::t1"]
    assert [i.nodeid for i in longest_first(items, {})] == [i.nodeid for i in items]


@pytest.mark.parametrize(("progress", "shown"), [(None, False), (True, True), (False, False)])
def test_progress_bars_only_on_a_terminal_unless_asked(progress, shown):
    """progress=None (no --progress flag): no bars when stderr is not a terminal (pytest's capture is
    not); the default run wrote every bar's every update into a redirected stderr before."""
    bars = R.Bars(3, 2, progress)
    bars.event(1, "start", ("job", 10))
    try:
        assert (not bars.total.disable, not bars.slots[1].disable) == (shown, shown)
    finally:
        bars.close()


@dataclass(frozen=True)
class DyingJob(J.TrainJob):
    """A job that ends its own worker process for real: SIGKILL (what the kernel's out-of-memory
    killer sends) or os._exit(3). Imported by the spawned worker from this module."""

    how: str = "sigkill"

    @property
    def label(self) -> str:
        return f"{J.TrainJob.label.fget(self)} (dies by {self.how})"

    def run(self):
        if self.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)


@dataclass(frozen=True)
class DiesAfterItsResult(J.TrainJob):
    """Returns at once, but leaves a timer that SIGKILLs its worker 0.3 s later: while the worker idles
    or exits (Process._bootstrap joins the timer's thread at exit), after the result was sent."""

    def run(self):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return {"pid": os.getpid(), "job": self.__dict__}


def test_a_worker_dying_after_its_last_result_is_said_and_costs_nothing():
    with pytest.warns(UserWarning, match=r"worker process \d+ was killed by signal 9 \(SIGKILL\).* after its last job"):
        results = R.run_jobs([DiesAfterItsResult(*quick(7).__dict__.values())], workers=2, progress=False)
    assert results[0]["job"]["seed"] == 7


def quick(seed: int) -> J.TrainJob:
    return J.TrainJob("digits-sigmoid-per-sample", "float64", seed, "reference", 1, limit=40)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_dead_worker_costs_only_the_job_it_ran():
    """Two of six jobs kill their worker (a signal, an exit code) while four are still waiting: those
    four get their real results from the survivor and new workers; each dead job's error names the
    job, how its worker ended and what was expected."""
    jobs = [
        DyingJob(*quick(0).__dict__.values(), how="sigkill"),
        quick(1),
        DyingJob(*quick(2).__dict__.values(), how="exit"),
    ]
    jobs += [quick(3), quick(4), quick(5)]
    assert R.longest_first(jobs) == list(range(6))  # the same estimate: handed out in this order
    results = R.run_jobs(jobs, workers=2, progress=False)
    for i in (1, 3, 4, 5):
        assert isinstance(results[i], dict), f"{jobs[i].label}: {results[i]}"
        assert results[i]["job"]["seed"] == i and len(results[i]["test_accuracy"]) == 1
    killed, exited = results[0], results[2]
    assert isinstance(killed, R.JobError) and isinstance(exited, R.JobError)
    assert killed.job == jobs[0] and exited.job == jobs[2]
    assert "was killed by signal 9 (SIGKILL) (the kernel's out-of-memory killer" in killed.error
    assert "exited with code 3 while running" in exited.error
    for res, job in ((killed, jobs[0]), (exited, jobs[2])):
        assert res.error.startswith("WorkerDied: worker process ")
        assert job.label in res.error and "expected the job's result" in res.error


def test_a_new_worker_takes_the_jobs_after_a_death():
    """One worker (the pool's, not workers=1's in-process loop): every death needs a new worker, so
    the jobs after each death run in another process, and the dead job's error names its pid."""
    jobs = [
        DyingJob(*quick(0).__dict__.values()),
        quick(1),
        DyingJob(*quick(2).__dict__.values(), how="exit"),
        quick(3),
    ]
    results = [None] * 4
    R._Pool(jobs, [0, 1, 2, 3], 1, R.Bars(4, 1, False), results).run()
    assert [type(r).__name__ for r in results] == ["JobError", "dict", "JobError", "dict"], results
    assert results[1]["pid"] != results[3]["pid"]  # the worker of job 1 died in job 2
    assert f"worker process {results[1]['pid']} exited with code 3" in results[2].error


def test_the_report_names_the_job_whose_worker_died(monkeypatch, tmp_path):
    """`bprop validate` with the torch job's worker killed (SIGKILL): the other jobs' results are
    judged and written, the verdict fails on "every framework ran" naming the job and the signal,
    and results.json's meta.errors carries it."""
    built = V.build_jobs

    def with_a_dying_torch_job(options):
        train, div = built(options)
        return [DyingJob(*j.__dict__.values()) if j.framework == "torch" else j for j in train], div

    monkeypatch.setattr(V, "build_jobs", with_a_dying_torch_job)
    options = Options(
        presets=["digits-sigmoid-per-sample"],
        dtypes=["float64"],
        frameworks=("torch",),
        epochs=1,
        limit=60,
        divergence_steps=0,
        plots=False,
        progress=False,
        out=tmp_path,
    )
    out = []
    assert V.run(options, stdout=SimpleNamespace(write=out.append, flush=lambda: None)) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    label = "digits-sigmoid-per-sample float64 seed 0 torch (dies by sigkill)"
    assert [e["job"] for e in results["meta"]["errors"]] == [label]
    assert "was killed by signal 9 (SIGKILL)" in results["meta"]["errors"][0]["error"]
    failures = results["acceptance"]["failures"]
    assert any("every framework ran" in f and label in f and "signal 9" in f for f in failures), failures
    entry = results["presets"]["digits-sigmoid-per-sample"]["float64"]
    assert len(entry["reference"]["test_accuracy"]) == 1 and entry["reference"]["error"] is None, entry["reference"]
    assert len(entry["nudged"]["test_accuracy"]) == 1 and label in entry["torch"]["error"]
    assert label in (tmp_path / "report.md").read_text()
