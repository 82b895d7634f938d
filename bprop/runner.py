"""Run the validation jobs: in this process (workers=1) or in a pool of worker processes, with tqdm bars.

    results = run_jobs(jobs, workers=2)    # one entry per job, in the order given:
                                           #   the job's result dict, or JobError (what failed and why)

Per-sample training is latency-bound and single-threaded, so on 2 cores two worker processes (one
thread each) finish the whole validation about twice as fast as one process. The jobs are handed
out longest first by a cost model measured per framework and preset (_COSTS: CPU per step, per
evaluation, per divergence step), so the workers end at about the same time; schedule() reports
how they did (each job's worker, start and end, the idle time at the end). Workers are spawned (not
forked): a forked TensorFlow or torch runtime is not safe to use.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from bprop import jobs as J
from reference.spec import PRESETS, preset


@dataclass(frozen=True)
class Cost:
    """CPU a job of one framework and preset costs, (float64, float32) each: ms per optimiser step
    inside train_epoch, s per evaluation (test loss, accuracy and predictions on the whole test split),
    ms per step of a divergence run (the reference's step() and the other one's, then the comparison)."""

    step_ms: tuple[float, float]
    eval_s: tuple[float, float]
    div_ms: tuple[float, float] = (0.0, 0.0)


# The cost model that orders the jobs (longest first), measured with scripts/job_costs.py on 2026-12-02
# on AMD EPYC, 2 cores, OpenBLAS Haswell kernels, one thread per job, glibc keeping freed memory
# (bprop.jobs.keep_freed_memory), the evaluations in chunks of bprop.jobs.eval_rows; CPU time
# (time.process_time) with the machine shared (load average 8-14): only the ratios matter here.
# "nudged" costs what the reference does; a DivergenceJob against "nudged" is the reference's div_ms.
# tests/test_runner.py checks that every preset and framework has its row.
_COSTS: dict[tuple[str, str], Cost] = {
    # per-sample MLPs (batch 1)
    ("reference", "mnist-sigmoid-per-sample"): Cost(
        step_ms=(0.108, 0.0936), eval_s=(0.054, 0.052), div_ms=(0.273, 0.253)
    ),
    ("torch", "mnist-sigmoid-per-sample"): Cost(step_ms=(0.274, 0.252), eval_s=(0.1, 0.032), div_ms=(0.94, 0.917)),
    ("keras", "mnist-sigmoid-per-sample"): Cost(step_ms=(0.049, 0.0564), eval_s=(0.26, 0.081), div_ms=(2.69, 2.7)),
    ("reference", "digits-sigmoid-per-sample"): Cost(
        step_ms=(0.0564, 0.0657), eval_s=(0.001, 0.001), div_ms=(0.168, 0.16)
    ),
    ("torch", "digits-sigmoid-per-sample"): Cost(step_ms=(0.22, 0.216), eval_s=(0.0011, 0.001), div_ms=(0.708, 0.78)),
    ("keras", "digits-sigmoid-per-sample"): Cost(step_ms=(0.0655, 0.107), eval_s=(0.042, 0.03), div_ms=(2.78, 3.04)),
    # batched MLPs (batch 128, 128, 32)
    ("reference", "mnist-relu-batched"): Cost(step_ms=(1.95, 0.91), eval_s=(0.11, 0.055)),
    ("torch", "mnist-relu-batched"): Cost(step_ms=(2.64, 1.94), eval_s=(0.16, 0.074)),
    ("keras", "mnist-relu-batched"): Cost(step_ms=(2.31, 0.774), eval_s=(0.16, 0.053)),
    ("reference", "mnist-relu-batched-raw"): Cost(step_ms=(1.91, 0.878), eval_s=(0.11, 0.064)),
    ("torch", "mnist-relu-batched-raw"): Cost(step_ms=(2.95, 1.59), eval_s=(0.15, 0.068)),
    ("keras", "mnist-relu-batched-raw"): Cost(step_ms=(1.82, 0.689), eval_s=(0.13, 0.053)),
    ("reference", "mnist-relu-deep"): Cost(step_ms=(0.706, 0.372), eval_s=(0.2, 0.067)),
    ("torch", "mnist-relu-deep"): Cost(step_ms=(1.45, 1.05), eval_s=(0.17, 0.075)),
    ("keras", "mnist-relu-deep"): Cost(step_ms=(0.76, 0.409), eval_s=(0.3, 0.15)),
    # the CNN (batch 64)
    ("reference", "mnist-cnn"): Cost(step_ms=(10.7, 6.73), eval_s=(1.6, 1.2)),
    ("torch", "mnist-cnn"): Cost(step_ms=(14.2, 6.56), eval_s=(1.8, 0.94)),
    ("keras", "mnist-cnn"): Cost(step_ms=(16.1, 4.16), eval_s=(3.4, 1.6)),
}
_SETUP_S = {"reference": 0.0, "torch": 3.2, "keras": 4.2}  # a process's first model: torch's import, TensorFlow's start
_DATASET_ROWS = {"mnist": (60_000, 10_000), "digits": (1_527, 270)}  # (train, test); digits: the lab's split


@dataclass
class JobError:
    job: object
    error: str  # "ExceptionType: message"
    traceback: str

    def __str__(self) -> str:
        return f"{self.job.label}: {self.error}"


def _kind(spec) -> str:
    return "cnn" if spec.input_shape is not None else "mlp"


def job_cost(framework: str, preset_name: str) -> Cost:
    """The measured row, else (a preset added since) the row of the same framework and network kind
    (CNN or MLP) whose batch size is nearest."""
    framework = "reference" if framework == J.NUDGED else framework
    if (framework, preset_name) in _COSTS:
        return _COSTS[(framework, preset_name)]
    spec = preset(preset_name)
    candidates = [
        (abs(math.log(preset(p).batch_size / spec.batch_size)), p)
        for f, p in _COSTS
        if f == framework and p in PRESETS and _kind(preset(p)) == _kind(spec)
    ] or [(0.0, p) for f, p in _COSTS if f == framework]
    if not candidates:
        raise ValueError(
            f"no cost measured for framework {framework!r}; frameworks are {sorted({f for f, _ in _COSTS})}"
        )
    return _COSTS[(framework, min(candidates)[1])]


def estimated_seconds(job) -> float:
    """The job's CPU seconds by the cost model (only used to order the jobs)."""
    spec = preset(job.preset, dtype=job.dtype)
    i = 0 if job.dtype == "float64" else 1
    train_rows, test_rows = _DATASET_ROWS.get(spec.dataset, _DATASET_ROWS["mnist"])
    if job.limit:
        train_rows, test_rows = min(train_rows, job.limit), min(test_rows, job.limit)
    if isinstance(job, J.DivergenceJob):
        cost = job_cost(job.framework, job.preset)
        return job.steps * cost.div_ms[i] / 1e3 + _SETUP_S.get(job.framework, 0.0)
    cost = job_cost(job.framework, job.preset)
    steps = job.epochs * -(-train_rows // spec.batch_size)
    evals = (job.epochs + 1) * cost.eval_s[i] * test_rows / _DATASET_ROWS.get(spec.dataset, (0, 10_000))[1]
    return steps * cost.step_ms[i] / 1e3 + evals + _SETUP_S.get(job.framework, 0.0)


def longest_first(jobs: list) -> list[int]:
    """Indices of `jobs`, the longest (estimated) first: handed out in this order, each to the first
    free worker, the workers end within about the shortest job of each other (LPT list scheduling)."""
    return sorted(range(len(jobs)), key=lambda i: -estimated_seconds(jobs[i]))


def schedule(jobs: list, results: list, workers: int) -> dict:
    """How the jobs were spread: each job's worker, start and end (s after the first start), and the
    idle time at the end: how long each worker waited, its last job done, for the others to finish."""
    rows = [
        (job, res) for job, res in zip(jobs, results) if isinstance(res, dict) and "started" in res and "ended" in res
    ]
    if not rows:
        return {}
    t0 = min(res["started"] for _, res in rows)
    end = max(res["ended"] for _, res in rows)
    runs = sorted(
        (
            {
                "job": job.label,
                "pid": res["pid"],
                "start_s": round(res["started"] - t0, 2),
                "end_s": round(res["ended"] - t0, 2),
                "estimated_s": round(estimated_seconds(job), 2),
                "cpu_s": round(res.get("cpu_s", 0.0), 2),
            }
            for job, res in rows
        ),
        key=lambda r: r["end_s"],
    )
    last = {}
    for r in runs:
        last[r["pid"]] = max(last.get(r["pid"], 0.0), r["end_s"])
    span = end - t0
    busy = sum(r["end_s"] - r["start_s"] for r in runs)
    return {
        "span_s": round(span, 2),
        "busy_s": round(busy, 2),
        "idle_share": round(1 - busy / (max(workers, len(last)) * span), 4) if span > 0 else 0.0,
        "idle_at_end_s": {str(pid): round(span - t, 2) for pid, t in sorted(last.items())},
        "jobs": runs,
    }


def _execute(job):
    J.keep_freed_memory()
    with J.single_threaded():
        return J.run_divergence(job) if isinstance(job, J.DivergenceJob) else J.run_train(job)


def _execute_safely(job):
    try:
        return _execute(job)
    except Exception as e:  # a failing framework is a result of the validation, reported with its reason
        J.report_progress("done", None)
        return JobError(job, f"{type(e).__name__}: {e}", traceback.format_exc())


# Progress -------------------------------------------------------------------------------------


class Bars:
    """One bar for the whole run (jobs done) and one per worker (steps of its current job)."""

    def __init__(self, n_jobs: int, workers: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.total = tqdm(total=n_jobs, desc="validate", unit="job", position=0, disable=enabled is False)
        self.slots: dict[int, object] = {}
        self.positions: dict[int, int] = {}  # pid -> the bar's line (1, 2, ...)
        self.n_slots = workers
        self.lock = threading.Lock()

    def event(self, pid: int, event: str, payload) -> None:
        with self.lock:
            if event == "start":
                label, total = payload
                self.close_slot(pid)
                taken = set(self.positions.values())
                position = next(p for p in range(1, len(taken) + 2) if p not in taken)
                self.positions[pid] = position
                self.slots[pid] = self._tqdm(
                    total=total, desc=label, unit="step", position=position, leave=False, disable=self.enabled is False
                )
            elif event == "advance" and pid in self.slots:
                self.slots[pid].update(payload)
            elif event == "done":
                self.close_slot(pid)

    def close_slot(self, pid: int) -> None:
        self.positions.pop(pid, None)
        bar = self.slots.pop(pid, None)
        if bar is not None:
            bar.close()

    def job_done(self) -> None:
        with self.lock:
            self.total.update(1)

    def close(self) -> None:
        for pid in list(self.slots):
            self.close_slot(pid)
        self.total.close()


def _init_worker(queue) -> None:
    J.mark_worker_process()
    J.keep_freed_memory()
    pid = os.getpid()
    J.report_progress = lambda event, payload: queue.put((pid, event, payload))


def _drain(queue, bars: Bars) -> None:
    while True:
        item = queue.get()
        if item is None:
            return
        bars.event(*item)


# Running ----------------------------------------------------------------------------------------


def run_jobs(jobs: list, workers: int = 2, progress: bool | None = None) -> list:
    """Every job's result (or JobError), in the order of `jobs`; `progress=None`: bars on a terminal."""
    bars = Bars(len(jobs), workers, progress)
    results: list = [None] * len(jobs)
    order = longest_first(jobs)
    try:
        if workers <= 1:
            previous = J.report_progress
            J.report_progress = lambda event, payload: bars.event(0, event, payload)
            try:
                for i in order:
                    results[i] = _execute_safely(jobs[i])
                    bars.job_done()
            finally:
                J.report_progress = previous
            return results
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        drain = threading.Thread(target=_drain, args=(queue, bars), daemon=True)
        drain.start()
        try:
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)
            ) as pool:
                futures = {pool.submit(_execute_safely, jobs[i]): i for i in order}
                for future in as_completed(futures):
                    job = jobs[futures[future]]
                    try:
                        results[futures[future]] = future.result()
                    except BrokenProcessPool as e:  # a worker died (killed, out of memory, crashed)
                        results[futures[future]] = JobError(job, f"worker process died: {e}", "")
                    bars.job_done()
        finally:
            queue.put(None)
            drain.join(timeout=5)
        return results
    finally:
        bars.close()
