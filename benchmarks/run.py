"""Build the workloads and contenders, run them interleaved, and collect medians (see __init__)."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.floor import straight_epoch
from benchmarks.gemm import conv_gemm_epoch, gemm_epoch
from benchmarks.machine import machine_info
from oracles import TWIN_KINDS
from reference import Network, init_params, make_optimizer, preset
from reference.spec import PRESETS, ModelSpec
from reference.train import train_epoch

DTYPES = ("float32", "float64")
CONTENDERS = ("reference", *TWIN_KINDS)
TASKS = ("batched_epoch_s", "per_sample_step_us", "forward_backward_ms", "cnn_epoch_s")
BATCHED, PER_SAMPLE, CNN = "mnist-relu-batched", "mnist-sigmoid-per-sample", "mnist-cnn"


@dataclass(frozen=True)
class Sizes:
    batched_rows: int = 60_000  # one MNIST epoch
    per_sample_steps: int = 10_000
    fb_batch: int = 128
    fb_calls: int = 20  # forward+backward calls per repetition (one call is too short to time alone)
    repeats: int = 5
    cnn_rows: int = 12_800  # 200 steps of batch 64 (a whole epoch is 4.7x longer and changes no ratio)
    per_sample_pieces: int = 10  # the per-sample steps in pieces of 1,000, the contenders taking turns (run_rounds)


QUICK = Sizes(batched_rows=1_024, per_sample_steps=200, fb_calls=2, repeats=1, cnn_rows=256, per_sample_pieces=2)


@dataclass
class Job:
    """One timed thing: `run()` once per round, after `reset()` (untimed); `per` turns s into the unit."""

    dtype: str
    task: str  # "batched_epoch_s" | "per_sample_step_us" | "forward_backward_ms"
    contender: str  # "reference" | "torch" | "keras" | "gemm_limit"
    run: Callable[[int], object]  # run(i): piece i of the workload (0 when the job is one piece)
    reset: Callable[[], None] = lambda: None
    per: float = 1.0  # value = seconds * per
    pieces: int = 1  # > 1: the task's contenders take turns piece by piece (run_rounds)
    preset: str | None = None  # forward_backward_ms: which preset
    times: list[float] = field(default_factory=list)  # wall-clock seconds per repetition
    cpu: list[float] = field(default_factory=list)  # this process's CPU seconds (all its threads)


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical uint8 training sets: {"mnist": (x, y), "digits": (x, y)}; labels int64."""
    from data_loaders import load_digits, load_mnist

    (xm, ym), _ = load_mnist()
    (xd, yd), _ = load_digits()
    return {"mnist": (xm, ym.astype(np.int64)), "digits": (xd, yd.astype(np.int64))}


def rows(data, spec: ModelSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n rows of the spec's dataset, preprocessed as the spec says, in its dtype."""
    from data_loaders import fit_preprocessing, preprocess

    x, y = data[spec.dataset]
    fitted = fit_preprocessing(x, spec.preprocess, spec.dtype)  # standardise: the training split's statistics
    x = preprocess(x[:n], spec.preprocess, spec.dtype, fitted)
    return (x if spec.input_shape is None else x.reshape(-1, *spec.input_shape)), y[:n]


def make_contender(kind: str, spec: ModelSpec, params: dict[str, np.ndarray], threads: int = 1):
    """(model, trainer, reset) for "reference" or a twin: trainer(x, y, order, batch_size), reset() to
    params; `threads`: the torch twin's training threads (the others' are set process-wide)."""
    if kind == "reference":
        net, opt = Network(spec, params=params), make_optimizer(spec.optimizer)
        return net, (lambda x, y, order, bs: train_epoch(net, opt, x, y, order, bs)), (lambda: net.set_params(params))
    from oracles import make_twin

    twin = make_twin(kind, spec, params, threads=threads)
    if not hasattr(twin, "hold"):
        return twin, twin.train_epoch, (lambda: twin.set_params(params))
    held: dict[int, tuple] = {}  # id(x) -> (x, y, held): the arrays kept, so that their ids stay theirs

    def train(x, y, order, bs):
        """keras: the data converted to tensors once per array (KerasTwin.hold, in the untimed warm-up
        round), as torch shares x's memory: a timed epoch is the compiled loop, not a copy of x."""
        kept = held.get(id(x))
        if kept is None or kept[0] is not x or kept[1] is not y:
            kept = held[id(x)] = (x, y, twin.hold(x, y))
        return twin.train_epoch(kept[2], None, order, bs)

    return twin, train, (lambda: twin.set_params(params))


def contender_or_skip(kind: str, spec: ModelSpec, params, threads: int, skipped: dict[str, str], where: str):
    """make_contender's triple, or None with the reason in skipped[where] (framework absent or unable)."""
    try:
        return make_contender(kind, spec, params, threads)
    except (ImportError, NotImplementedError) as e:
        skipped[where] = f"{type(e).__name__}: {e}"
        return None


def copy_into(live: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
    """Reset arrays someone holds on to (the floor's) to `params`, in place."""
    for k, v in params.items():
        live[k][...] = v


def pieces_of(x: np.ndarray, y: np.ndarray, order: np.ndarray, pieces: int) -> list[tuple]:
    """(x, y, order) per piece: [(x, y, order)] for one; else the order's consecutive parts, each
    as (x[part], y[part], arange(len(part))): together the steps of one epoch over x[order]."""
    if pieces == 1:
        return [(x, y, order)]
    return [(x[p], y[p], np.arange(len(p))) for p in np.array_split(order, pieces)]


def build_jobs(data, sizes: Sizes, contenders: tuple[str, ...], skipped: dict[str, str], threads: int = 1) -> list[Job]:
    jobs: list[Job] = []
    order_rng = np.random.default_rng(0)
    batched_order = order_rng.permutation(sizes.batched_rows)
    per_sample_order = order_rng.permutation(sizes.per_sample_steps)
    cnn_order = order_rng.permutation(sizes.cnn_rows)
    for dtype in DTYPES:
        for name, task, n_rows, order, bs, per in (
            (BATCHED, "batched_epoch_s", sizes.batched_rows, batched_order, 128, 1.0),
            (CNN, "cnn_epoch_s", sizes.cnn_rows, cnn_order, 64, 1.0),
            (
                PER_SAMPLE,
                "per_sample_step_us",
                sizes.per_sample_steps,
                per_sample_order,
                1,
                1e6 / len(per_sample_order),
            ),
        ):
            spec = preset(name, dtype=dtype)
            x, y = rows(data, spec, n_rows)
            params = init_params(spec, seed=0)
            pieces = sizes.per_sample_pieces if task == "per_sample_step_us" else 1
            # The per-sample steps' pieces have their rows gathered beforehand (as bprop validate feeds
            # a twin its epoch's chunks): every contender's per-call checks then scan 1,000 rows, not
            # all 10,000 ten times.
            parts = pieces_of(x, y, order, pieces)
            for kind in contenders:
                built = contender_or_skip(kind, spec, params, threads, skipped, f"{dtype}/{task}/{kind}")
                if built is None:
                    continue
                _, train, reset = built
                jobs.append(Job(dtype, task, kind, lambda i, t=train, p=parts, b=bs: t(*p[i], b), reset, per, pieces))
            if task in ("batched_epoch_s", "cnn_epoch_s"):
                limit = (gemm_epoch if task == "batched_epoch_s" else conv_gemm_epoch)(spec, order, bs)
                jobs.append(Job(dtype, task, "gemm_limit", lambda _, f=limit: f()))
            else:
                live = {k: v.copy() for k, v in params.items()}
                straight = straight_epoch(live, spec.optimizer.lr)
                reset = functools.partial(copy_into, live, params)
                jobs.append(
                    Job(dtype, task, "numpy_floor", lambda i, f=straight, p=parts: f(*p[i]), reset, per, pieces)
                )
        for name in PRESETS:
            spec = preset(name, dtype=dtype)
            x, y = rows(data, spec, sizes.fb_batch)
            params = init_params(spec, seed=0)
            for kind in contenders:
                where = f"{dtype}/forward_backward_ms/{name}/{kind}"
                built = contender_or_skip(kind, spec, params, threads, skipped, where)
                if built is None:
                    continue
                model, _, reset = built

                def many(_, m=model, x=x, y=y, n=sizes.fb_calls):
                    for _ in range(n):
                        m.trace(x, y)

                jobs.append(Job(dtype, "forward_backward_ms", kind, many, reset, 1e3 / sizes.fb_calls, preset=name))
    return jobs


def turns(jobs: list[Job]) -> list[list[Job]]:
    """The jobs in the order they run: consecutive jobs of one task in pieces (same dtype, task and
    number of pieces) form one group; every other job is a group of its own."""
    groups: list[list[Job]] = []
    for job in jobs:
        last = groups[-1][0] if groups else None
        if (
            job.pieces > 1
            and last is not None
            and (last.dtype, last.task, last.pieces) == (job.dtype, job.task, job.pieces)
        ):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def run_rounds(jobs: list[Job], repeats: int, progress: Callable[[str], None] = print) -> None:
    """Round 0 warms up and is dropped; rounds 1..repeats each time every job once, in turn.

    A task in pieces runs its contenders in turns: piece 0 of each, then piece 1 of each (the order
    rotated by one every piece, so none always follows the same other), and so on; a contender's
    time is the sum of its pieces. Contenders 50-100 ms apart see the same machine: on this VM the
    speed drifts by tens of per cent within seconds, and whole per-sample jobs 3 s apart gave one
    target paired ratios of 0.52-1.38 in one run (README, "The benchmark's spread").
    """
    groups = turns(jobs)
    for r in range(repeats + 1):
        start = time.perf_counter()
        for group in groups:
            for job in group:
                job.reset()
            elapsed, cpu = [0.0] * len(group), [0.0] * len(group)
            for i in range(group[0].pieces):
                for k in (*range(i % len(group), len(group)), *range(i % len(group))):
                    c0, t0 = time.process_time(), time.perf_counter()
                    group[k].run(i)
                    elapsed[k] += time.perf_counter() - t0
                    cpu[k] += time.process_time() - c0
            if r > 0:
                for job, e, c in zip(group, elapsed, cpu):
                    job.times.append(e)
                    job.cpu.append(c)
        what = "warm-up" if r == 0 else f"round {r}/{repeats}"
        progress(f"  {what}: {time.perf_counter() - start:.1f} s, load {os.getloadavg()[0]:.2f}")


def collect(jobs: list[Job]) -> dict:
    """{dtype: {task: {contender: median (or {preset: median})}}}, the same of CPU time, every repetition.

    CPU time is this process's (every thread's) CPU seconds in the unit of the task: on a loaded
    machine it is closer than wall time to what an idle machine would show, for one thread.
    """
    results: dict = {dtype: {task: {} for task in TASKS} for dtype in DTYPES}
    cpu: dict = {dtype: {task: {} for task in TASKS} for dtype in DTYPES}
    runs: dict = {dtype: {} for dtype in DTYPES}
    for job in jobs:
        values = [t * job.per for t in job.times]
        key = f"{job.task}/{job.contender}" + (f"/{job.preset}" if job.preset else "")
        runs[job.dtype][key] = {"wall": values, "cpu": [t * job.per for t in job.cpu]}
        for target, median in (
            (results, statistics.median(values)),
            (cpu, statistics.median(runs[job.dtype][key]["cpu"])),
        ):
            if job.preset:
                target[job.dtype][job.task].setdefault(job.contender, {})[job.preset] = median
            else:
                target[job.dtype][job.task][job.contender] = median
    return {**results, "cpu_time": cpu, "repetitions": runs}


def ratios(results: dict) -> dict:
    """reference/torch, reference/keras and reference/gemm_limit, per dtype and task."""
    out = {}
    for dtype in DTYPES:
        r = {}
        for task in ("batched_epoch_s", "per_sample_step_us", "cnn_epoch_s"):
            medians = results[dtype][task]
            for other in (*TWIN_KINDS, "gemm_limit", "numpy_floor"):
                if "reference" in medians and other in medians:
                    r[f"{task} reference/{other}"] = medians["reference"] / medians[other]
        fb = results[dtype]["forward_backward_ms"]
        for other in TWIN_KINDS:
            for name, value in fb.get("reference", {}).items():
                if name in fb.get(other, {}):
                    r[f"forward_backward_ms {name} reference/{other}"] = value / fb[other][name]
        out[dtype] = r
    return out


# The targets (issue 16, and issue 13's CNN): (label, dtype, ratio key, at most). The fwd+bwd float32 /
# float64 row compares one contender with itself across dtypes (the float32 sigmoid on raw pixels).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("batched epoch, reference / torch", "float32", "batched_epoch_s reference/torch", 0.7),
    ("batched epoch, reference / torch", "float64", "batched_epoch_s reference/torch", 0.85),
    *(("batched epoch, reference / GEMM limit", d, "batched_epoch_s reference/gemm_limit", 1.25) for d in DTYPES),
    *(
        ("per-sample step, reference / keras (compiled epoch)", d, "per_sample_step_us reference/keras", 1.0)
        for d in DTYPES
    ),
    *(("per-sample step, reference / numpy floor", d, "per_sample_step_us reference/numpy_floor", 1.1) for d in DTYPES),
    ("fwd+bwd batch 128, mnist-sigmoid-per-sample, reference float32 / float64", "float32", "fb32/fb64", 1.0),
    *(("CNN epoch, reference / GEMM limit", d, "cnn_epoch_s reference/gemm_limit", 2.0) for d in DTYPES),
)


def dtype_ratio(results: dict, preset_name: str = PER_SAMPLE) -> float | None:
    """The reference's float32 / float64 forward+backward time on one preset (None if either is missing)."""
    a, b = (results[d]["forward_backward_ms"].get("reference", {}).get(preset_name) for d in DTYPES)
    return None if a is None or b is None else a / b


def paired(doc: dict, dtype: str, key: str, clock: str = "wall") -> list[float]:
    """The target's ratio round by round: each timed round's reference over the same round's other.

    The two ran minutes apart at most, in one round; their ratio cancels what moves between rounds
    (this VM's speed drifts by +-25 % within minutes: README, "The benchmark's spread").
    """
    reps = doc["repetitions"]
    if key == "fb32/fb64":
        mine = reps["float32"].get(f"forward_backward_ms/reference/{PER_SAMPLE}")
        other = reps["float64"].get(f"forward_backward_ms/reference/{PER_SAMPLE}")
    else:
        task, pair = key.split(" ")
        mine, other = (reps[dtype].get(f"{task}/{c}") for c in pair.split("/"))
    if mine is None or other is None:
        return []
    return [a / b for a, b in zip(mine[clock], other[clock])]


def verdicts(doc: dict) -> list[dict]:
    """Every target: its ratio (the median of its round-by-round ratios, wall clock), the same in CPU
    time, the ratio of the medians, the rounds' range, the bound, pass/fail, the machine."""
    out = []
    for label, dtype, key, bound in TARGETS:
        if key == "fb32/fb64":
            of_medians = dtype_ratio(doc)
        else:
            of_medians = doc["ratios"][dtype].get(key)
        rounds, cpu_rounds = paired(doc, dtype, key), paired(doc, dtype, key, "cpu")
        wall = statistics.median(rounds) if rounds else None
        out.append(
            {
                "target": label,
                "dtype": dtype,
                "ratio": wall,
                "cpu_time_ratio": statistics.median(cpu_rounds) if cpu_rounds else None,
                "ratio_of_medians": of_medians,
                "rounds": [min(rounds), max(rounds)] if rounds else None,
                "at_most": bound,
                "pass": None if wall is None else wall <= bound,
                "machine": doc["machine"]["name"],
            }
        )
    return out


def verdict_line(v: dict) -> str:
    """'PASS  float32  batched epoch, reference / torch: 0.62 (rounds 0.58-0.66, cpu 0.60) <= 0.7  [AMD EPYC, ...]'"""
    if v["ratio"] is None:
        return f"n/a   {v['dtype']}  {v['target']}: not measured (contender skipped)  [{v['machine']}]"
    word = "PASS" if v["pass"] else "FAIL"
    lo, hi = v["rounds"]
    cpu = f", cpu {v['cpu_time_ratio']:.2f}" if v["cpu_time_ratio"] is not None else ""
    return f"{word}  {v['dtype']}  {v['target']}: {v['ratio']:.2f} (rounds {lo:.2f}-{hi:.2f}{cpu}) <= {v['at_most']}  [{v['machine']}]"


def run(
    quick: bool = False,
    repeats: int | None = None,
    threads: int = 1,
    contenders: tuple[str, ...] = CONTENDERS,
    progress: Callable[[str], None] = print,
) -> dict:
    """The whole benchmark; returns the JSON document (see benchmarks/__init__.py)."""
    from threadpoolctl import threadpool_limits

    sizes = QUICK if quick else Sizes()
    repeats = repeats or sizes.repeats
    skipped: dict[str, str] = {}
    with threadpool_limits(threads, user_api="blas"):
        info = machine_info()
        info["threads"] = set_framework_threads(threads, contenders)
        progress(f"loading data and building contenders ({', '.join(contenders)}) ...")
        jobs = build_jobs(load_data(), sizes, contenders, skipped, threads)
        progress(f"{len(jobs)} timed jobs, {repeats} rounds after a warm-up round")
        run_rounds(jobs, repeats, progress)
    info["load_average_after"] = list(os.getloadavg())
    results = collect(jobs)
    doc = {
        "machine": info,
        "setup": {
            "quick": quick,
            "repeats": repeats,
            "batched": {"preset": BATCHED, "rows": sizes.batched_rows, "batch_size": 128},
            "per_sample": {
                "preset": PER_SAMPLE,
                "steps": sizes.per_sample_steps,
                "batch_size": 1,
                "pieces": sizes.per_sample_pieces,
            },
            "cnn": {"preset": CNN, "rows": sizes.cnn_rows, "batch_size": 64},
            "forward_backward": {
                "batch": sizes.fb_batch,
                "calls_per_repetition": sizes.fb_calls,
                "call": "trace(x, y)",
            },
            "skipped": skipped,
        },
        **results,
        "ratios": ratios(results),
        "cpu_time_ratios": ratios(results["cpu_time"]),
    }
    doc["targets"] = verdicts(doc)
    return doc


def set_framework_threads(threads: int, contenders: tuple[str, ...]) -> dict[str, object]:
    """One thread budget for everyone: numpy's BLAS (set by the caller), torch (the torch twin is also
    built with threads=threads, which its train_epoch uses) and TensorFlow."""
    done: dict[str, object] = {"numpy_blas": threads}
    if "torch" in contenders:
        try:
            import torch
        except ImportError as e:
            done["torch"] = f"not imported: {e}"
        else:
            torch.set_num_threads(threads)
            done["torch"] = torch.get_num_threads()
    if "keras" in contenders:
        try:
            import tensorflow as tf
        except ImportError as e:
            done["tensorflow"] = f"not imported: {e}"
        else:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
                done["tensorflow"] = {"intra_op": threads, "inter_op": threads}
            except RuntimeError as e:  # TensorFlow already initialised its thread pools
                done["tensorflow"] = f"not set: {e}"
    return done
