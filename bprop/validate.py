"""`bprop validate`: the reference, the torch twin and the keras twin trained side by side, compared.

    code = run(Options(presets=[...], dtypes=[...], seeds=[0], ...))    0: accepted, 1: not

For every preset, dtype and seed, each framework trains from init_params(spec, seed) over
epoch_orders(n, epochs, seed) (bprop.jobs); parity presets also train the control (the reference
nudged by one ulp), and per-sample presets get a step-by-step divergence run of each twin and of
the control against the reference (the first seed). The jobs run in worker processes, longest
first (bprop.runner). The results are
summarised (bprop.summary), judged (bprop.acceptance) and written out (bprop.validation_report, bprop.plots):
a table on stdout, OUT/report.md, OUT/results.json and the PNGs.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bprop import jobs as J
from bprop.acceptance import acceptance_for, assess
from bprop.runner import JobError, run_jobs, schedule
from bprop.summary import summarise
from bprop.validation_report import terminal_table, write_json, write_markdown
from reference.spec import DTYPES, PRESETS, preset

DEFAULT_OUT = Path("bprop-report")
DEFAULT_DIVERGENCE_STEPS = 3000


@dataclass
class Options:
    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    dtypes: list[str] = field(default_factory=lambda: ["float64", "float32"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None  # None: each preset's own
    frameworks: tuple[str, ...] = J.FRAMEWORKS
    limit: int | None = None
    out: Path = DEFAULT_OUT
    workers: int = 2
    divergence_steps: int = DEFAULT_DIVERGENCE_STEPS
    progress: bool | None = None  # None: bars when stderr is a terminal
    plots: bool = True
    command: str = "bprop validate"

    def check(self) -> None:
        """Raise ValueError naming the option when a value cannot be run."""
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown:
            raise ValueError(f"--preset: unknown {unknown}; presets are {sorted(PRESETS)}")
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"--dtype: unknown {bad}; dtypes are {list(DTYPES)}")
        bad = [f for f in self.frameworks if f not in J.FRAMEWORKS]
        if bad:
            raise ValueError(f"--frameworks: unknown {bad}; frameworks are {list(J.FRAMEWORKS)}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs: expected at least 1, got {self.epochs}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit: expected at least 1 row, got {self.limit}")
        if not self.seeds or min(self.seeds) < 0:
            raise ValueError(f"--seed: expected seeds >= 0, got {self.seeds}")
        if self.workers < 1:
            raise ValueError(f"--workers: expected at least 1, got {self.workers}")
        if self.divergence_steps < 0:
            raise ValueError(f"--divergence-steps: expected >= 0, got {self.divergence_steps}")


def frameworks_to_run(options: Options) -> tuple[str, ...]:
    """The reference always runs (every comparison is against it), then the twins asked for."""
    return ("reference", *[f for f in J.TWINS if f in options.frameworks])


def build_jobs(options: Options) -> tuple[list, list]:
    """(train jobs, divergence jobs). Divergence runs: per-sample presets, the first seed."""
    frameworks = frameworks_to_run(options)
    train, divergence = [], []
    for name in options.presets:
        spec = preset(name)
        epochs = options.epochs or spec.epochs
        for dtype in options.dtypes:
            controls = (J.NUDGED,) if acceptance_for(name, spec.batch_size).mode == "parity" else ()
            for seed in options.seeds:
                for kind in (*frameworks, *controls):
                    train.append(J.TrainJob(name, dtype, seed, kind, epochs, options.limit))
            if spec.batch_size == 1 and options.divergence_steps:
                rows = options.limit or 10**9
                steps = min(options.divergence_steps, rows * epochs)
                for kind in (*frameworks[1:], J.NUDGED):
                    divergence.append(J.DivergenceJob(name, dtype, options.seeds[0], kind, steps, options.limit))
    return train, divergence


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("numpy", "torch", "tensorflow-cpu", "keras", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _timing(train_jobs, train_results, div_jobs, div_results) -> dict:
    """Seconds of work per group: preset, dtype and framework (and the divergence runs)."""
    groups: dict[str, dict] = {}
    matrix: dict[str, dict[str, float]] = {}  # preset -> framework (or "divergence runs") -> seconds
    total = cpu = 0.0
    for job, res in [*zip(train_jobs, train_results), *zip(div_jobs, div_results)]:
        if isinstance(res, JobError):
            continue
        kind = "train" if isinstance(job, J.TrainJob) else "divergence"
        key = f"{job.preset} {job.dtype} {job.framework}" + (" (divergence)" if kind == "divergence" else "")
        g = groups.setdefault(key, {"wall_s": 0.0, "cpu_s": 0.0, "jobs": 0})
        g["wall_s"] += res["wall_s"]
        g["cpu_s"] += res.get("cpu_s", 0.0)
        g["jobs"] += 1
        total += res["wall_s"]
        cpu += res.get("cpu_s", 0.0)
        column = job.framework if kind == "train" else "divergence runs"
        cell = matrix.setdefault(job.preset, {})
        cell[column] = cell.get(column, 0.0) + res["wall_s"]
    return {"job_s": total, "cpu_s": cpu, "by_group": groups, "by_preset_and_framework": matrix}


def collect(options: Options, train_jobs, train_results, div_jobs, div_results) -> dict:
    """results["presets"][preset][dtype] = bprop.summary.PresetResult, each with its acceptance checks."""
    frameworks = frameworks_to_run(options)
    presets: dict[str, dict] = {}
    failures: list[str] = []
    counts = {"pass": 0, "fail": 0, "n/a": 0}
    for name in options.presets:
        presets[name] = {}
        for dtype in options.dtypes:
            train = {
                (job.framework, job.seed): res
                for job, res in zip(train_jobs, train_results)
                if job.preset == name and job.dtype == dtype
            }
            div = {
                job.framework: res
                for job, res in zip(div_jobs, div_results)
                if job.preset == name and job.dtype == dtype
            }
            entry = summarise(name, dtype, train, div, (*frameworks, J.NUDGED))
            checks = assess(entry, full_data=options.limit is None)
            rules = acceptance_for(name, entry.spec["batch_size"])
            entry.acceptance = {
                "passed": not any(c.failed for c in checks),
                "mode": rules.mode,
                "claim": rules.claim,
                "checks": [c.to_dict() for c in checks],
            }
            for c in checks:
                counts[c.status] += 1
                if c.failed:
                    failures.append(f"{name} {dtype}: {c.name}: {c.detail}")
            presets[name][dtype] = entry
    return {
        "presets": presets,
        "acceptance": {
            "passed": not failures,
            "failures": failures,
            "n_pass": counts["pass"],
            "n_fail": counts["fail"],
            "n_na": counts["n/a"],
        },
    }


def make_plots(results: dict, options: Options, train_jobs, train_results) -> dict[str, list[tuple[str, str]]]:
    """Every PNG, by preset: [(title, file name)].

    With more than one worker the presets are plotted in that many spawned processes, the slowest
    first: matplotlib's layout and PNG writing are ~1-2 s a figure, ~28 s for the default run's 20
    figures in one process, while the job workers are done and their cores idle. The files are the
    same either way (each preset's figures are made by the same function, from the same inputs).
    """
    tasks = []
    for name, by_dtype in results["presets"].items():
        preds = {}  # dtype -> {framework: the first seed's predictions after the last epoch}
        for dtype in by_dtype:
            found = {
                job.framework: res["predictions"][-1]
                for job, res in zip(train_jobs, train_results)
                if job.preset == name and job.dtype == dtype and job.seed == options.seeds[0]
                if not isinstance(res, JobError)
            }
            if "reference" in found:
                preds[dtype] = {k: found[k] for k in frameworks_to_run(options) if k in found}
        tasks.append((name, by_dtype, preds))
    # The slowest first: a divergence plot, then the most figures (curves, one digit grid per dtype).
    tasks.sort(key=lambda t: -(2 * any(e.divergence for e in t[1].values()) + len(t[2])))
    workers = min(options.workers, len(tasks))
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            files = list(pool.map(preset_plots, tasks, [options] * len(tasks)))
    else:
        files = [preset_plots(task, options) for task in tasks]
    done = {name: f for (name, _, _), f in zip(tasks, files)}
    return {name: done[name] for name in results["presets"]}  # the presets' own order


def preset_plots(task: tuple, options: Options) -> list[tuple[str, str]]:
    """One preset's PNGs: (name, its results by dtype, {dtype: {framework: predictions}})."""
    from bprop import plots

    name, by_dtype, preds_by_dtype = task
    files = []
    if any(e.reference is not None and e.reference.runs for e in by_dtype.values()):
        files.append(
            ("loss and accuracy curves", plots.curves(name, by_dtype, options.out / f"curves-{name}.png").name)
        )
    if any(e.divergence for e in by_dtype.values()):
        files.append(("divergence", plots.divergence(name, by_dtype, options.out / f"divergence-{name}.png").name))
    if len(options.seeds) > 1:
        files.append(("accuracy over seeds", plots.seed_spread(name, by_dtype, options.out / f"seeds-{name}.png").name))
    for dtype, preds in preds_by_dtype.items():
        spec = preset(name, dtype=dtype)
        _, _, x_test, y_test = J.load_data(spec, options.limit)
        title = f"{name} {dtype}: test digits after {by_dtype[dtype].epochs} epochs (seed {options.seeds[0]})"
        path = plots.digit_grid(title, x_test, y_test, preds, options.out / f"digits-{name}-{dtype}.png")
        files.append((f"test digits, {dtype}", path.name))
    return files


def run(options: Options, stdout=None) -> int:
    """The whole validation; prints the table and the verdict. 0: every check passes, 1: some fail."""
    stdout = stdout or sys.stdout
    options.check()
    options.out = Path(options.out)
    options.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    train_jobs, div_jobs = build_jobs(options)
    all_results = run_jobs([*train_jobs, *div_jobs], workers=options.workers, progress=options.progress)
    train_results, div_results = all_results[: len(train_jobs)], all_results[len(train_jobs) :]
    results = collect(options, train_jobs, train_results, div_jobs, div_results)
    results["meta"] = {
        "command": options.command,
        "started": started,
        "wall_s": time.perf_counter() - t0,
        "cpus": os.cpu_count(),
        "workers": options.workers,
        "options": {
            "presets": options.presets,
            "dtypes": options.dtypes,
            "seeds": options.seeds,
            "epochs": options.epochs,
            "frameworks": list(frameworks_to_run(options)),
            "limit": options.limit,
            "divergence_steps": options.divergence_steps,
        },
        "versions": versions(),
        "timing": {
            **_timing(train_jobs, train_results, div_jobs, div_results),
            "schedule": schedule([*train_jobs, *div_jobs], all_results, options.workers),
        },
        "out_dir": str(options.out),
        "errors": [
            {"job": r.job.label, "error": r.error, "traceback": r.traceback}
            for r in all_results
            if isinstance(r, JobError)
        ],
    }
    plots = make_plots(results, options, train_jobs, train_results) if options.plots else {}
    results["meta"]["wall_s"] = time.perf_counter() - t0
    results["plots"] = plots
    write_json(results, options.out)
    write_markdown(results, plots, options.out)
    print(terminal_table(results), file=stdout, flush=True)
    return 0 if results["acceptance"]["passed"] else 1


__all__ = ["DEFAULT_OUT", "Options", "run"]
