"""Run the validation jobs: in this process (workers=1) or in a pool of worker processes, with tqdm bars.

    results = run_jobs(jobs, workers=2)    # one entry per job, in the order given:
                                           #   the job's result dict, or JobError (what failed and why)

Per-sample training is latency-bound and single-threaded, so on 2 cores two worker processes (one
thread each) finish the whole validation about twice as fast as one process. The jobs are handed
out longest first, so the two workers end at about the same time. Workers are spawned (not forked):
a forked TensorFlow or torch runtime is not safe to use.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from bprop import jobs as J

# Rough milliseconds per optimiser step on one busy core, measured here (only used to order the jobs).
_MS_PER_STEP = {
    ("reference", 1): 0.7,
    ("torch", 1): 2.0,
    ("keras", 1): 0.45,
    ("reference", 32): 4.0,
    ("torch", 32): 8.0,
    ("keras", 32): 4.5,
    ("reference", 128): 12.0,
    ("torch", 128): 25.0,
    ("keras", 128): 16.0,
}
_DATASET_ROWS = {"mnist": 60_000, "digits": 1_527}  # digits: the lab split's training rows


@dataclass
class JobError:
    job: object
    error: str  # "ExceptionType: message"
    traceback: str

    def __str__(self) -> str:
        return f"{self.job.label}: {self.error}"


def estimated_seconds(job) -> float:
    spec = J.preset(job.preset, dtype=job.dtype)
    if isinstance(job, J.DivergenceJob):
        kind = "reference" if job.framework == J.NUDGED else job.framework
        per_step = _MS_PER_STEP.get((kind, 1), 1.0) * 3 + 0.7  # step() is the slow path, plus the reference
        return job.steps * per_step / 1e3
    rows = min(job.limit or 10**9, _DATASET_ROWS.get(spec.dataset, 60_000))
    steps = job.epochs * -(-rows // spec.batch_size)
    bs = min(_MS_PER_STEP, key=lambda k: (k[0] != job.framework, abs(k[1] - spec.batch_size)))[1]
    return steps * _MS_PER_STEP.get((job.framework, bs), 1.0) / 1e3 + (5.0 if job.framework == "keras" else 1.0)


def _execute(job):
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
    order = sorted(range(len(jobs)), key=lambda i: -estimated_seconds(jobs[i]))
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
