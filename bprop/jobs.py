"""The units of work of `bprop validate`, each runnable in a worker process and returning plain data.

    TrainJob(preset, dtype, seed, framework, epochs, limit)  -> run_train(job) -> dict
        One framework ("reference", a twin kind, or "nudged": the reference started one ulp
        away, the control of how sensitive the run itself is) trained for `epochs` from init_params(spec,
        seed) over data_loaders.epoch_orders(n, epochs, seed): the same start and the same batches
        for every framework. After each epoch (and once before training): test loss and accuracy,
        the test predictions and a copy of the parameters, which the parent compares.
    DivergenceJob(preset, dtype, seed, framework, steps, limit)  -> run_divergence(job) -> dict
        The reference and one other trajectory stepped side by side for the first `steps` steps,
        the largest parameter difference recorded after every step. `framework` is a twin kind, or
        "nudged": the reference against itself started one ulp away (the rounding-level control).

The twins train with their own fast `train_epoch`; an epoch is fed in `chunks` calls so the progress
bar moves: train_epoch(x[chunk], y[chunk], arange(len(chunk))) for consecutive slices `chunk` of the
epoch's order, each a whole number of batches, gives exactly the batches of train_epoch(x, y, order)
(the optimiser state persists between calls).
Progress goes to `report_progress`, which the runner points at a queue (or a local callback).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from oracles import TWIN_KINDS
from oracles.compare import atol, tolerance
from reference.network import Network, init_params
from reference.optimizers import make_optimizer
from reference.spec import ModelSpec, preset
from reference.train import evaluate, evaluate_chunks, train_epoch, train_step

FRAMEWORKS = ("reference", *TWIN_KINDS)
TWINS = TWIN_KINDS
THREADS = 1  # per framework and job: two jobs share 2 cores (see single_threaded)
NUDGED = "nudged"  # the control: the reference started with every weight one ulp away

# (event, payload) -> None; events: ("start", (label, total)), ("advance", n), ("done", None).
ProgressFn = Callable[[str, object], None]


def _no_progress(event: str, payload: object) -> None:
    return None


report_progress: ProgressFn = _no_progress


@dataclass(frozen=True)
class TrainJob:
    preset: str
    dtype: str
    seed: int
    framework: str
    epochs: int
    limit: int | None = None
    chunks: int = 10  # calls of train_epoch per epoch (progress granularity)

    @property
    def label(self) -> str:
        return f"{self.preset} {self.dtype} seed {self.seed} {self.framework}"


@dataclass(frozen=True)
class DivergenceJob:
    preset: str
    dtype: str
    seed: int
    framework: str  # "torch" | "keras" | NUDGED
    steps: int
    limit: int | None = None

    @property
    def label(self) -> str:
        return f"{self.preset} {self.dtype} seed {self.seed} divergence {self.framework}"


def job_spec(preset_name: str, dtype: str, epochs: int) -> ModelSpec:
    return preset(preset_name, dtype=dtype, epochs=epochs)


# Data ------------------------------------------------------------------------------------------

_DATA_CACHE: dict[tuple, tuple] = {}


def load_data(spec: ModelSpec, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) for `spec` (dataset, preprocessing, dtype) from
    data_loaders.load_for_spec, the first `limit` rows of each split if given. Cached per process
    (a worker meets every preset; MNIST in float64 is 0.4 GB, all of them together about 1.2 GB)."""
    key = (spec.dataset, spec.preprocess, spec.dtype, limit, spec.input_shape)
    if key not in _DATA_CACHE:
        full = (spec.dataset, spec.preprocess, spec.dtype, None)
        if full not in _DATA_CACHE:
            from data_loaders import load_for_spec

            x, y, xt, yt = load_for_spec(spec)
            for name, a in (("x_train", x), ("x_test", xt)):
                if a.dtype != np.dtype(spec.dtype) or a.ndim != 2 or a.shape[1] != spec.n_in:
                    raise ValueError(
                        f"load_for_spec({spec.name}): {name} should be ({spec.dtype}, (n, {spec.n_in})), "
                        f"got ({a.dtype}, {a.shape})"
                    )
            _DATA_CACHE[full] = (x, y.astype(np.int64), xt, yt.astype(np.int64))
        x, y, xt, yt = _DATA_CACHE[full]
        if spec.input_shape is not None:  # images: (n, C, H, W) views of the flat (n, C H W) rows
            x, xt = x.reshape(-1, *spec.input_shape), xt.reshape(-1, *spec.input_shape)
        _DATA_CACHE[key] = (x[:limit], y[:limit], xt[:limit], yt[:limit])
    return _DATA_CACHE[key]


def orders_for(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The batch order every framework follows: one seeded permutation per epoch (data_loaders)."""
    from data_loaders import epoch_orders

    return [np.asarray(order) for order in epoch_orders(n, epochs, seed)]


# The frameworks behind one interface --------------------------------------------------------------


class ReferenceModel:
    """The numpy reference with the twins' training interface (train_epoch, evaluate, forward)."""

    kind = "reference"

    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray], seed: int = 0) -> None:
        self.net = Network(spec, params, seed=seed)
        self.opt = make_optimizer(spec.optimizer)

    def get_params(self) -> dict[str, np.ndarray]:
        return self.net.get_params()

    def train_epoch(self, x, y, order, batch_size) -> float:
        return train_epoch(self.net, self.opt, x, y, order, batch_size)

    def step(self, x, y) -> float:
        return float(train_step(self.net, self.opt, x, y))

    def evaluate(self, x, y, batch_size: int = 10_000, predictions: list | None = None) -> tuple[float, float]:
        """reference.train.evaluate; with a list `predictions`, each chunk's predicted classes are appended
        to it, from the same forward pass (its predict, the same two calls: tests/test_runner.py pins it)."""
        if predictions is None:
            return evaluate(self.net, x, y, batch_size)
        net = self.net

        def predict(xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, float]:
            out = net.forward(xb, train=False)
            predictions.append(out.argmax(axis=1))
            return out, net.loss.value(out, yb)

        return evaluate_chunks(predict, x, y, net.loss.reduction, net.loss.classification, batch_size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.net.forward(x, train=False)


_IN_WORKER = False  # set in worker processes, which keep their settings for their whole life
_RESTORE: list[Callable[[], None]] = []  # undo the framework settings made by _prepare_framework


def mark_worker_process() -> None:
    global _IN_WORKER
    _IN_WORKER = True


@contextmanager
def single_threaded() -> Iterator[None]:
    """numpy's BLAS and torch on one thread inside the block, restored after.

    Two jobs run at once on 2 cores (or a job beside pytest-xdist's other worker): one thread each
    is fastest, and more is harmful: two OpenMP threads per process on 2 busy cores spin at every
    barrier (measured: 450 ms a step instead of ~10). The torch twin is built with threads=THREADS
    for its training loop; torch's process setting covers its step() and evaluate() too.
    TensorFlow's thread pools can only be set before its runtime starts: worker processes only.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        try:
            yield
        finally:
            while _RESTORE:
                _RESTORE.pop()()


# glibc's mallopt parameters (malloc.h): a process that frees and re-allocates the same large
# temporaries every step (the CNN's im2col buffers, a few MB each) otherwise hands them back to the
# kernel and faults them in again, page by page, every step.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold on 64-bit: blocks below come from the heap
KEEP_FREED_TRIM_BYTES = 256 << 20  # free memory kept at the heap's top before it goes back to the kernel


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks below 32 MB for reuse (a process-wide setting, made once
    in each validate worker and by workers=1 runs). No result changes: only where the memory comes
    from. Measured on the CNN preset (AMD EPYC, 2 cores, OpenBLAS Haswell, one thread, under load):
    a float64 reference step 37-50 ms of CPU (22-34 ms of it the kernel's, 2,951 page faults a step)
    becomes 10-12 ms (0 page faults). False where the C library has no mallopt (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):  # musl and others: nothing to set
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_MMAP_BYTES) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_TRIM_BYTES) == 1
    return ok_mmap and ok_trim


EVAL_CHUNK_BYTES = 16 << 20  # the largest temporary of one evaluation chunk
MAX_EVAL_ROWS = 10_000


def eval_rows(spec: ModelSpec) -> int:
    """Rows per chunk when a job evaluates or predicts: as many as keep the widest temporary (a layer's
    output, or a conv layer's im2col matrix of C KH KW values per output position) under 16 MB, at
    most 10,000. The MLP presets evaluate the test split in one chunk; the CNN (an im2col row of
    113 KB per image in float64) in chunks of 148. Measured (AMD EPYC, 2 cores, under load): the
    reference CNN's evaluation of the 10,000 test images takes 13-16 s of CPU in one chunk (11-14 s
    of it page faults) and 0.9 s in chunks of 250; torch's 3.0 s and 0.9 s; the same loss and accuracy."""
    widest, shape = 1, spec.sample_shape
    for ls, out in zip(spec.layers, spec.layer_shapes()):
        widest = max(widest, math.prod(out))
        if ls.kind == "conv2d":
            (kh, kw), _, _ = ls.pairs()
            widest = max(widest, shape[0] * kh * kw * out[1] * out[2])
        shape = out
    return max(1, min(MAX_EVAL_ROWS, EVAL_CHUNK_BYTES // (widest * np.dtype(spec.dtype).itemsize)))


def _prepare_framework(kind: str) -> None:
    if kind == "torch":
        import torch

        saved = torch.get_num_threads()
        _RESTORE.append(lambda: torch.set_num_threads(saved))
        torch.set_num_threads(THREADS)
    elif kind == "keras" and _IN_WORKER:
        from oracles.keras_twin import limit_tensorflow_threads

        limit_tensorflow_threads(THREADS)  # False if the runtime already started here: its threads stay


def make_model(kind: str, spec: ModelSpec, params: dict[str, np.ndarray], seed: int):
    """A framework's model holding `params` ("nudged": the reference, every weight one ulp away)."""
    if kind == "reference":
        return ReferenceModel(spec, params, seed)
    if kind == NUDGED:
        return ReferenceModel(spec, nudged(params), seed)
    if kind not in TWINS:
        raise ValueError(f"unknown framework {kind!r}; frameworks are {FRAMEWORKS}")
    _prepare_framework(kind)
    from oracles import make_twin

    return make_twin(kind, spec, params, seed=seed, threads=THREADS)


def predictions(model, x: np.ndarray, chunk: int = MAX_EVAL_ROWS) -> np.ndarray:
    """Predicted class per row (argmax of the model's output), int16 to keep results small."""
    return np.concatenate([model.forward(x[i : i + chunk]).argmax(axis=1) for i in range(0, len(x), chunk)]).astype(
        np.int16
    )


def evaluated(model, x: np.ndarray, y: np.ndarray, chunk: int) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy) of model.evaluate and the predictions of `predictions`, from one forward pass
    over x (the predictions were a second pass: about half of the CNN's evaluation time)."""
    classes: list[np.ndarray] = []
    loss, accuracy = model.evaluate(x, y, chunk, predictions=classes)
    return float(loss), float(accuracy), np.concatenate(classes).astype(np.int16)


def epoch_chunks(order: np.ndarray, batch_size: int, chunks: int) -> list[np.ndarray]:
    """`order` cut into about `chunks` pieces of whole batches (the last batch may be short)."""
    n_batches = -(-len(order) // batch_size)
    per_chunk = max(1, -(-n_batches // max(1, chunks))) * batch_size
    return [order[i : i + per_chunk] for i in range(0, len(order), per_chunk)]


# Jobs ---------------------------------------------------------------------------------------------


def run_train(job: TrainJob) -> dict:
    """Train one framework; the per-epoch record the parent compares and reports (see the module doc)."""
    started, t_job, cpu_job = time.time(), time.perf_counter(), time.process_time()
    spec = job_spec(job.preset, job.dtype, job.epochs)
    eval_n = eval_rows(spec)  # rows per evaluation chunk
    x, y, xt, yt = load_data(spec, job.limit)
    t_data = time.perf_counter() - t_job
    orders = orders_for(len(x), job.epochs, job.seed)
    n_steps = sum(-(-len(o) // spec.batch_size) for o in orders)
    report_progress("start", (job.label, n_steps))

    t0 = time.perf_counter()
    model = make_model(job.framework, spec, init_params(spec, job.seed), job.seed)
    setup_s = time.perf_counter() - t0

    rec: dict = {
        "job": job.__dict__,
        "pid": os.getpid(),
        "started": started,  # time.time() at the job's start and end: the runner's schedule
        "n_train": len(x),
        "n_test": len(xt),
        "steps_per_epoch": [-(-len(o) // spec.batch_size) for o in orders],
        "data_s": t_data,
        "setup_s": setup_s,
        "train_loss": [],  # mean of the per-step losses of each epoch
        "train_loss_chunks": [],  # [(step at the chunk's end, mean loss over the chunk)]
        "test_loss": [],
        "test_accuracy": [],
        "train_s": [],
        "eval_s": [],
        "params": [],  # after each epoch
        "predictions": [],  # test predictions after each epoch
    }
    t0 = time.perf_counter()
    rec["initial_test_loss"], rec["initial_test_accuracy"], rec["initial_predictions"] = evaluated(
        model, xt, yt, eval_n
    )
    rec["initial_eval_s"] = time.perf_counter() - t0

    step = 0
    for order in orders:
        t0 = time.perf_counter()
        total = 0.0
        for chunk in epoch_chunks(order, spec.batch_size, job.chunks):
            n = -(-len(chunk) // spec.batch_size)
            # The chunk's rows, in order: the same batches as train_epoch(x, y, chunk), without
            # handing all of x to a framework that copies it per call (keras: 0.4 GB in float64).
            rows = np.arange(len(chunk))
            loss = float(model.train_epoch(x[chunk], y[chunk], rows, spec.batch_size))
            total += loss * n
            step += n
            rec["train_loss_chunks"].append((step, loss))
            report_progress("advance", n)
        rec["train_s"].append(time.perf_counter() - t0)
        rec["train_loss"].append(total / -(-len(order) // spec.batch_size))
        t0 = time.perf_counter()
        test_loss, test_acc, test_predictions = evaluated(model, xt, yt, eval_n)
        rec["test_loss"].append(test_loss)
        rec["test_accuracy"].append(test_acc)
        rec["predictions"].append(test_predictions)
        rec["eval_s"].append(time.perf_counter() - t0)
        rec["params"].append(model.get_params())
    rec["wall_s"] = time.perf_counter() - t_job
    rec["cpu_s"] = time.process_time() - cpu_job  # this process's CPU time: what other load does not inflate
    rec["ended"] = time.time()
    report_progress("done", None)
    return rec


def nudged(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every non-zero parameter moved one ulp away from zero: a rounding-level perturbation."""
    return {k: np.where(p != 0, np.nextafter(p, np.copysign(np.inf, p)), p).astype(p.dtype) for k, p in params.items()}


def run_divergence(job: DivergenceJob) -> dict:
    """Reference and `job.framework` stepped together; max |param difference| after every step."""
    started, t_job, cpu_job = time.time(), time.perf_counter(), time.process_time()
    spec = preset(job.preset, dtype=job.dtype)
    x, y, _, _ = load_data(spec, job.limit)
    epochs_needed = -(-job.steps * spec.batch_size // len(x))
    order = np.concatenate(orders_for(len(x), epochs_needed, job.seed))[: job.steps * spec.batch_size]
    steps = -(-len(order) // spec.batch_size)
    report_progress("start", (job.label, steps))

    params0 = init_params(spec, job.seed)
    ref = ReferenceModel(spec, params0, job.seed)
    other = make_model(job.framework, spec, params0, job.seed)
    names = sorted(params0)
    tol, floor = tolerance("twin", spec.dtype, "parameters"), atol("twin", spec.dtype)
    max_abs = np.empty(steps)  # max |a - b| over every parameter
    rel = np.empty(steps)  # the worst tensor's max |a - b| / max(|a|, |b|)  (oracles.compare.rel_error)
    policy = np.empty(steps)  # the worst tensor's min(rel / tolerance, max |a - b| / floor): <= 1 passes
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[s * spec.batch_size : (s + 1) * spec.batch_size]
        ref.step(x[idx], y[idx])
        other.step(x[idx], y[idx])
        mine, theirs = ref.net.params, other.get_params()
        diffs, rels = [], []
        for k in names:
            a, b = mine[k].astype(np.float64, copy=False), theirs[k].astype(np.float64, copy=False)
            d = float(np.abs(a - b).max())
            scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
            diffs.append(d)
            rels.append(d / scale if scale > 0 else (0.0 if d == 0 else np.inf))
        max_abs[s], rel[s] = max(diffs), max(rels)
        policy[s] = max(min(r / tol, d / floor) for d, r in zip(diffs, rels))
        if (s + 1) % 100 == 0 or s + 1 == steps:
            report_progress("advance", 100 if (s + 1) % 100 == 0 else (s + 1) % 100)
    report_progress("done", None)
    return {
        "job": job.__dict__,
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
        "steps": steps,
        "max_abs": max_abs,
        "rel": rel,
        "policy": policy,
        "step_s": (time.perf_counter() - t0) / steps,
        "wall_s": time.perf_counter() - t_job,
        "cpu_s": time.process_time() - cpu_job,
    }
