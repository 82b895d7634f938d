"""Measure what `bprop validate`'s jobs cost, for the runner's cost model (bprop/runner.py, _COSTS).

    python scripts/job_costs.py                          every preset, both dtypes, every framework
    python scripts/job_costs.py --preset mnist-cnn --dtype float64 --framework torch

Per preset, dtype and framework, in one process set up as a validate worker (one BLAS thread, torch
and TensorFlow on one thread, glibc keeping freed memory: bprop.jobs.keep_freed_memory), CPU time (time.process_time: what other load inflates least):
  - step_ms: one optimiser step inside train_epoch (the fast loop a TrainJob runs), median of rounds;
  - eval_s: one evaluation as run_train does it (model.evaluate + predictions on the test split, in
    chunks of bprop.jobs.eval_rows);
  - div_ms: one step of a DivergenceJob (per-sample presets: the reference's step() and the twin's,
    then the parameter comparison), against the reference alone for "nudged";
  - setup_s: building the model (the first keras model in a process starts TensorFlow).
Prints a table and, with --json, writes the figures. The runner's table is these figures, rounded.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from bprop import jobs as J
from reference.network import init_params
from reference.spec import PRESETS, preset


def cpu() -> float:
    return time.process_time()


def train_steps(model, x, y, order, batch_size: int) -> float:
    """CPU seconds of train_epoch over `order` (whole batches)."""
    t = cpu()
    model.train_epoch(x[order], y[order], np.arange(len(order)), batch_size)
    return cpu() - t


def measure(name: str, dtype: str, framework: str, rounds: int, steps: int | None) -> dict:
    spec = preset(name, dtype=dtype)
    t = cpu()
    x, y, xt, yt = J.load_data(spec)
    data_s = cpu() - t
    params = init_params(spec, 0)
    t = cpu()
    model = J.make_model(framework, spec, params, 0)
    setup_s = cpu() - t
    bs = spec.batch_size
    if steps is None:  # about a second of work per round on this machine
        steps = 1500 if bs == 1 else (40 if spec.input_shape is None else 12)
    rng = np.random.default_rng(0)
    n = min(len(x), steps * bs)
    train_steps(model, x, y, rng.permutation(len(x))[:bs], bs)  # warm-up (keras traces its step here)
    per_step = [train_steps(model, x, y, rng.permutation(len(x))[:n], bs) / -(-n // bs) for _ in range(rounds)]
    t = cpu()
    model.evaluate(xt, yt, J.eval_rows(spec))
    J.predictions(model, xt, J.eval_rows(spec))
    eval_s = cpu() - t
    out = {
        "preset": name,
        "dtype": dtype,
        "framework": framework,
        "batch_size": bs,
        "kind": "cnn" if spec.input_shape is not None else "mlp",
        "step_ms": 1e3 * statistics.median(per_step),
        "eval_s": eval_s,
        "setup_s": setup_s,
        "data_s": data_s,
        "train_rows": len(x),
    }
    if bs == 1:
        ref = J.ReferenceModel(spec, params, 0)
        other = J.make_model(framework if framework != "reference" else J.NUDGED, spec, params, 0)
        idx = rng.permutation(len(x))[: min(len(x), steps // 2)]
        t = cpu()
        for i in idx:
            ref.step(x[i : i + 1], y[i : i + 1])
            other.step(x[i : i + 1], y[i : i + 1])
            mine, theirs = ref.net.params, other.get_params()
            for k in mine:
                float(np.abs(mine[k].astype(np.float64) - theirs[k].astype(np.float64)).max())
        out["div_ms"] = 1e3 * (cpu() - t) / len(idx)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", choices=sorted(PRESETS))
    p.add_argument("--dtype", action="append", choices=["float64", "float32"])
    p.add_argument("--framework", action="append", choices=["reference", "torch", "keras"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="steps per round (default: about a second's worth)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    J.mark_worker_process()  # TensorFlow on one thread, as in a validate worker
    J.keep_freed_memory()  # as bprop.runner's workers
    rows = []
    with J.single_threaded():
        for framework in a.framework or ["reference", "torch", "keras"]:
            for name in a.preset or list(PRESETS):
                for dtype in a.dtype or ["float64", "float32"]:
                    r = measure(name, dtype, framework, a.rounds, a.steps)
                    rows.append(r)
                    div = f" div {r['div_ms']:7.3f} ms" if "div_ms" in r else ""
                    print(
                        f"{framework:9s} {name:26s} {dtype}  step {r['step_ms']:8.3f} ms  eval {r['eval_s']:6.2f} s"
                        f"  setup {r['setup_s']:5.2f} s  data {r['data_s']:5.2f} s{div}",
                        flush=True,
                    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
