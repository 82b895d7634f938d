"""Run the validation jobs: in this process (workers=1) or in a pool of worker processes, with tqdm bars.

    results = run_jobs(jobs, workers=2)    # one entry per job, in the order given:
                                           #   the job's result dict, or JobError (what failed and why)

Per-sample training is latency-bound and single-threaded, so on 2 cores two worker processes (one
thread each) finish the whole validation about twice as fast as one process. The jobs are handed
out longest first by a cost model measured per framework and preset (_COSTS: CPU per step, per
evaluation, per divergence step), so the workers end at about the same time; schedule() reports
how they did (each job's worker, start and end, the idle time at the end). Workers are spawned (not
forked): a forked TensorFlow or torch runtime is not safe to use. Each worker gets one job at a time
on its own pipe (_Pool): a worker that dies (the kernel's out-of-memory killer, a segfault in a
framework) costs only the job it was running, which gets a JobError naming the job and the exit code
or signal; a new worker takes the jobs still waiting.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import threading
import traceback
import warnings
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

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
    ("torch", "mnist-sigmoid-per-sample"): Cost(step_ms=(0.213, 0.221), eval_s=(0.14, 0.05), div_ms=(0.637, 1.14)),
    ("keras", "mnist-sigmoid-per-sample"): Cost(step_ms=(0.049, 0.0564), eval_s=(0.26, 0.081), div_ms=(2.69, 2.7)),
    ("reference", "digits-sigmoid-per-sample"): Cost(
        step_ms=(0.0564, 0.0657), eval_s=(0.001, 0.001), div_ms=(0.168, 0.16)
    ),
    ("torch", "digits-sigmoid-per-sample"): Cost(step_ms=(0.15, 0.097), eval_s=(0.0011, 0.001), div_ms=(0.305, 0.351)),
    ("keras", "digits-sigmoid-per-sample"): Cost(step_ms=(0.0655, 0.107), eval_s=(0.042, 0.03), div_ms=(2.78, 3.04)),
    # batched MLPs (batch 128, 128, 32)
    ("reference", "mnist-relu-batched"): Cost(step_ms=(1.95, 0.91), eval_s=(0.11, 0.055)),
    ("torch", "mnist-relu-batched"): Cost(step_ms=(2.66, 1.23), eval_s=(0.17, 0.07)),
    ("keras", "mnist-relu-batched"): Cost(step_ms=(2.31, 0.774), eval_s=(0.16, 0.053)),
    ("reference", "mnist-relu-batched-raw"): Cost(step_ms=(1.91, 0.878), eval_s=(0.11, 0.064)),
    ("torch", "mnist-relu-batched-raw"): Cost(step_ms=(2.51, 1.95), eval_s=(0.18, 0.07)),
    ("keras", "mnist-relu-batched-raw"): Cost(step_ms=(1.82, 0.689), eval_s=(0.13, 0.053)),
    ("reference", "mnist-relu-deep"): Cost(step_ms=(0.706, 0.372), eval_s=(0.2, 0.067)),
    ("torch", "mnist-relu-deep"): Cost(step_ms=(0.933, 0.425), eval_s=(0.15, 0.08)),
    ("keras", "mnist-relu-deep"): Cost(step_ms=(0.76, 0.409), eval_s=(0.3, 0.15)),
    # the CNN (batch 64)
    ("reference", "mnist-cnn"): Cost(step_ms=(10.7, 6.73), eval_s=(1.6, 1.2)),
    ("torch", "mnist-cnn"): Cost(step_ms=(11.5, 6.45), eval_s=(1.76, 0.91)),
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
    # In the order the jobs ended by their unrounded times: two short jobs can end within the same
    # 10 ms, and a sort on the rounded end_s then kept them in the jobs' list order, not the order they ran.
    rows.sort(key=lambda row: (row[1]["ended"], row[1]["started"]))
    runs = [
        {
            "job": job.label,
            "pid": res["pid"],
            "start_s": round(res["started"] - t0, 2),
            "end_s": round(res["ended"] - t0, 2),
            "estimated_s": round(estimated_seconds(job), 2),
            "cpu_s": round(res.get("cpu_s", 0.0), 2),
        }
        for job, res in rows
    ]
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
    """A TrainJob or DivergenceJob; a job of another type runs its own run() (the tests' jobs that
    kill their worker)."""
    J.keep_freed_memory()
    with J.single_threaded():
        run = getattr(job, "run", None)
        if run is not None:
            return run()
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
        # tqdm's disable=None: off unless stderr is a terminal (progress=None); True/False: as asked
        self.disable = None if enabled is None else not enabled
        self.total = tqdm(total=n_jobs, desc="validate", unit="job", position=0, disable=self.disable)
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
                    total=total, desc=label, unit="step", position=position, leave=False, disable=self.disable
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


def _worker(conn) -> None:
    """A worker process: (index, job) in on its own pipe; ("started", index), ("progress", (event,
    payload)) and ("result", (index, result)) out; until None comes. One pipe per worker, no shared queue: a
    worker killed in the middle of a message breaks only its own pipe."""
    J.mark_worker_process()
    J.keep_freed_memory()
    J.report_progress = lambda event, payload: conn.send(("progress", (event, payload)))
    while (task := conn.recv()) is not None:
        i, job = task
        conn.send(("started", i))
        result = _execute_safely(job)
        try:
            conn.send(("result", (i, result)))
        except Exception as e:  # a result pickle cannot carry: the job's failure, named, never dropped
            error = f"its result could not be sent to the parent: {type(e).__name__}: {e}"
            conn.send(("result", (i, JobError(job, error, traceback.format_exc()))))


def death(exitcode: int | None) -> str:
    """How a worker process ended, from Process.exitcode (negative: the signal that killed it)."""
    if exitcode is None:
        return "stopped answering (no exit status)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        oom = " (the kernel's out-of-memory killer sends SIGKILL: see dmesg)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by signal {-exitcode} ({name}){oom}"
    return f"exited with code {exitcode}"


@dataclass
class _Worker:
    process: object  # multiprocessing Process
    conn: object  # the parent's end of its pipe
    job: int | None = None  # the index of the job handed to it
    started: bool = False  # the worker said it took that job
    gone_early: bool = False  # dead before it was told to exit (after its last result)


class _Pool:
    """Worker processes handed one job at a time, longest first. A worker that dies costs only the
    job it was running (a JobError naming the job and the exit code or signal); a new worker takes
    the jobs still waiting."""

    def __init__(self, jobs: list, order: list[int], workers: int, bars: Bars, results: list) -> None:
        self.jobs, self.waiting, self.bars, self.results = jobs, deque(order), bars, results
        self.ctx = mp.get_context("spawn")
        self.live: dict[int, _Worker] = {}  # pid -> worker
        self.retired: list[_Worker] = []  # sent None: exiting
        self.workers = workers

    def _start(self) -> None:
        mine, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        worker = _Worker(process, mine)
        self.live[process.pid] = worker
        self._hand_out(worker)

    def _hand_out(self, worker: _Worker) -> None:
        worker.started = False
        if self.waiting:
            worker.job = self.waiting.popleft()
            try:
                worker.conn.send((worker.job, self.jobs[worker.job]))
            except OSError:  # its end is closed: it died; the job never reached it and waits for the next
                self.waiting.appendleft(worker.job)
                worker.job = None
        else:
            worker.job = None
            try:
                worker.conn.send(None)  # nothing left: it exits
            except OSError:  # it is gone already, its results all in: run() warns how it ended
                worker.gone_early = True
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Told to exit: joined at the end, so a slow interpreter shutdown (torch, TensorFlow) holds up nothing."""
        del self.live[worker.process.pid]
        self.retired.append(worker)

    def _receive(self, worker: _Worker) -> bool:
        """Handle one message from the worker; False when its pipe is closed (it is dying)."""
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            return False
        if kind == "progress":
            self.bars.event(worker.process.pid, *payload)
        elif kind == "started":
            worker.started = True
        else:
            i, result = payload
            if i != worker.job:
                raise RuntimeError(
                    f"worker {worker.process.pid} sent the result of job {i}, it was running {worker.job}"
                )
            self.results[i] = result
            self.bars.job_done()
            self._hand_out(worker)
        return True

    def _died(self, worker: _Worker) -> None:
        pid = worker.process.pid
        worker.process.join(timeout=30)
        if worker.process.is_alive():  # its pipe closed but it runs on: ours to stop
            worker.process.kill()
            worker.process.join()
        del self.live[pid]
        worker.conn.close()
        self.bars.event(pid, "done", None)
        if worker.job is not None:
            job = self.jobs[worker.job]
            when = "while running" if worker.started else "before it began (at its start-up: see its stderr)"
            self.results[worker.job] = JobError(
                job,
                f"WorkerDied: worker process {pid} {death(worker.process.exitcode)} {when} {job.label}; "
                "expected the job's result (or the exception it raised), got neither. The other jobs went on.",
                "",
            )
            self.bars.job_done()
        if self.waiting:
            self._start()

    def run(self) -> None:
        try:
            for _ in range(min(self.workers, len(self.waiting))):
                self._start()
            while self.live:
                by_conn = {w.conn: w for w in self.live.values()}
                by_sentinel = {w.process.sentinel: w for w in self.live.values()}
                for ready in wait([*by_conn, *by_sentinel]):
                    worker = by_conn.get(ready) or by_sentinel[ready]
                    if worker.process.pid not in self.live or self.live[worker.process.pid] is not worker:
                        continue  # retired or replaced earlier in this round
                    if ready in by_conn:
                        if not self._receive(worker):
                            self._died(worker)
                    else:  # it exited: its last messages first (a result sent just before it died counts)
                        alive = True
                        while alive and worker.process.pid in self.live and worker.conn.poll():
                            alive = self._receive(worker)
                        if worker.process.pid in self.live:
                            self._died(worker)
        finally:
            for worker in self.retired:  # told to exit: how each ended, said when it was not cleanly
                pid = worker.process.pid
                worker.process.join(timeout=30)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
                    warnings.warn(
                        f"worker process {pid} did not exit within 30 s of being told to: killed", stacklevel=2
                    )
                elif worker.gone_early or worker.process.exitcode != 0:
                    how = death(worker.process.exitcode)
                    warnings.warn(f"worker process {pid} {how} after its last job (no job lost)", stacklevel=2)
                worker.conn.close()
            for worker in self.live.values():  # an error or Ctrl-C in the parent: no orphans
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
                worker.conn.close()
            self.live.clear()


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
        _Pool(jobs, order, workers, bars, results).run()
        return results
    finally:
        bars.close()
