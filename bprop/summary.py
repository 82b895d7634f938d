"""From the jobs' raw records to the figures of the report: one entry per preset and dtype.

    entry = summarise(preset, dtype, train_records, divergence_records, epochs, seeds)
    entry["reference" | "torch" | "keras"] = {
        "test_accuracy": [per epoch],   mean over the seeds when there are several
        "test_loss", "train_loss": [per epoch], "initial_test_accuracy",
        "wall_s": total over seeds (setup, training, evaluation), "train_s": [per epoch], "eval_s",
        "final_accuracy": {"mean", "std", "min", "max", "values"} over the seeds,
        "runs": [{"seed", "test_accuracy", ...} per seed],
        "vs_reference" (twins): {"param_rel_error", "param_max_abs", "differing_predictions",
                                 "param_rel_error_by_tensor"} per epoch, the worst over the seeds,
        "error": null or "what failed",
    }
    entry["nudged"]: the same for the reference started one ulp away (parity presets): how far rounding
        alone moves this run, the yardstick for the twins' differences
    entry["divergence"] = {twin kind or "nudged": analyse(...) + per-step arrays}

Parameter differences: oracles.compare.rel_error (max|a - b| over the tensor's largest magnitude),
the worst tensor; and the plain max |a - b|. Differing predictions: test images whose predicted
class differs from the reference's.
"""

from __future__ import annotations

import numpy as np

from bprop.divergence import analyse
from bprop.jobs import FRAMEWORKS, NUDGED
from bprop.runner import JobError
from oracles.compare import rel_error


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "values": [float(v) for v in a],
    }


def param_differences(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict:
    """Worst relative error (oracles.compare.rel_error) and max |a - b| over every parameter tensor."""
    by_tensor = {k: rel_error(mine[k], theirs[k]) for k in sorted(mine)}
    max_abs = max(float(np.abs(mine[k].astype(np.float64) - theirs[k]).max()) for k in mine)
    return {"rel_error": max(by_tensor.values()), "max_abs": max_abs, "by_tensor": by_tensor}


def compare_runs(ref: dict, twin: dict) -> dict:
    """Per epoch: parameter differences and the number (and first indices) of differing predictions."""
    out: dict = {
        "param_rel_error": [],
        "param_max_abs": [],
        "param_rel_error_by_tensor": [],
        "differing_predictions": [],
    }
    out["differing_indices"] = []
    for p_ref, p_twin, y_ref, y_twin in zip(ref["params"], twin["params"], ref["predictions"], twin["predictions"]):
        d = param_differences(p_ref, p_twin)
        out["param_rel_error"].append(d["rel_error"])
        out["param_max_abs"].append(d["max_abs"])
        out["param_rel_error_by_tensor"].append(d["by_tensor"])
        differ = np.flatnonzero(y_ref != y_twin)
        out["differing_predictions"].append(int(differ.size))
        out["differing_indices"].append([int(i) for i in differ[:50]])
    return out


_RUN_KEYS = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "initial_test_accuracy",
    "initial_test_loss",
    "train_s",
    "eval_s",
    "setup_s",
    "data_s",
    "wall_s",
    "train_loss_chunks",
    "steps_per_epoch",
)


def summarise_framework(kind: str, runs: dict[int, dict | JobError], ref_runs: dict[int, dict | JobError]) -> dict:
    """The entry of one framework over its seeds (see the module docstring)."""
    errors = [str(r) for r in runs.values() if isinstance(r, JobError)]
    ok = {seed: r for seed, r in runs.items() if not isinstance(r, JobError)}
    if not ok:
        return {"test_accuracy": [], "wall_s": 0.0, "error": "; ".join(errors) or "not run", "runs": []}
    seeds = sorted(ok)
    entry: dict = {
        "test_accuracy": np.mean([ok[s]["test_accuracy"] for s in seeds], axis=0).tolist(),
        "test_loss": np.mean([ok[s]["test_loss"] for s in seeds], axis=0).tolist(),
        "train_loss": np.mean([ok[s]["train_loss"] for s in seeds], axis=0).tolist(),
        "initial_test_accuracy": float(np.mean([ok[s]["initial_test_accuracy"] for s in seeds])),
        "wall_s": float(sum(ok[s]["wall_s"] for s in seeds)),
        "train_s": np.sum([ok[s]["train_s"] for s in seeds], axis=0).tolist(),
        "eval_s": np.sum([ok[s]["eval_s"] for s in seeds], axis=0).tolist(),
        "setup_s": float(sum(ok[s]["setup_s"] + ok[s]["data_s"] for s in seeds)),
        "final_accuracy": _stats([ok[s]["test_accuracy"][-1] for s in seeds]),
        "error": "; ".join(errors) or None,
        "runs": [],
    }
    steps = sum(ok[seeds[0]]["steps_per_epoch"])
    entry["ms_per_step"] = 1e3 * float(sum(sum(ok[s]["train_s"]) for s in seeds)) / (steps * len(seeds))
    worst: dict | None = None
    for seed in seeds:
        run = {"seed": seed, **{k: ok[seed][k] for k in _RUN_KEYS}}
        ref = ref_runs.get(seed)
        if kind != "reference" and ref is not None and not isinstance(ref, JobError):
            run["vs_reference"] = compare_runs(ref, ok[seed])
            worst = _worst(worst, run["vs_reference"])
        entry["runs"].append(run)
    if worst is not None:
        entry["vs_reference"] = worst
    return entry


def _worst(a: dict | None, b: dict) -> dict:
    """Per epoch, the larger of two vs_reference records (over seeds)."""
    if a is None:
        return {k: list(v) for k, v in b.items()}
    out = dict(a)
    for key in ("param_rel_error", "param_max_abs", "differing_predictions"):
        out[key] = [max(x, y) for x, y in zip(a[key], b[key])]
    return out


def summarise(
    preset_name: str,
    dtype: str,
    train: dict[tuple[str, int], dict | JobError],
    divergence: dict[str, dict | JobError],
    frameworks: tuple[str, ...],
) -> dict:
    """The entry for one preset and dtype. `train[(framework, seed)]`, `divergence[kind]`."""
    from reference.spec import preset

    spec = preset(preset_name, dtype=dtype)
    seeds = sorted({seed for _, seed in train})
    entry: dict = {"preset": preset_name, "dtype": dtype, "spec": spec.to_dict(), "seeds": seeds}
    ref_runs = {seed: train[("reference", seed)] for seed in seeds if ("reference", seed) in train}
    for kind in (*FRAMEWORKS, NUDGED):
        if kind not in frameworks or not any(k == kind for k, _ in train):
            continue
        runs = {seed: train[(kind, seed)] for seed in seeds if (kind, seed) in train}
        entry[kind] = summarise_framework(kind, runs, ref_runs)
    first = next((r for r in train.values() if not isinstance(r, JobError)), None)
    if first is not None:
        entry["n_train"], entry["n_test"] = first["n_train"], first["n_test"]
        entry["epochs"] = len(first["test_accuracy"])
        entry["steps_per_epoch"] = first["steps_per_epoch"]
    if divergence:
        entry["divergence"] = {}
        for kind, rec in divergence.items():
            if isinstance(rec, JobError):
                entry["divergence"][kind] = {"error": str(rec)}
                continue
            entry["divergence"][kind] = {
                **analyse(rec["max_abs"], dtype, rec["rel"]),
                "ms_per_step": 1e3 * rec["step_s"],
                "wall_s": rec["wall_s"],
                "max_abs": [float(v) for v in rec["max_abs"]],
                "rel": [float(v) for v in rec["rel"]],
                "policy": [float(v) for v in rec["policy"]],
            }
    return entry
