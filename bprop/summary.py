"""From the jobs' raw records to the figures of the report: one PresetResult per preset and dtype.

    result = summarise(preset, dtype, train_records, divergence_records, frameworks)   -> PresetResult
    result.frameworks["reference" | "torch" | "keras" | "nudged"] -> FrameworkResult
    result.to_dict() / PresetResult.from_dict(d)        the results.json form (the fields below)

The records acceptance, validation_report and plots share. A FrameworkResult holds one framework's
figures over the seeds: per epoch `test_accuracy` (the mean over the seeds), `test_loss`,
`train_loss`; `initial_test_accuracy`; `wall_s` (total over seeds: setup, training, evaluation),
`train_s` per epoch, `eval_s`, `setup_s`, `ms_per_step`; `final_accuracy` {"mean", "std", "min",
"max", "values"} over the seeds; `runs` [{"seed", "test_accuracy", ..., "vs_reference"} per seed];
`vs_reference` (twins and the control): {"param_rel_error", "param_max_abs", "differing_predictions",
"param_rel_error_by_tensor", "differing_indices"} per epoch, the worst over the seeds; `error`: None
or what failed. "nudged" is the reference started one ulp away (parity presets): how far rounding
alone moves this run, the yardstick for the twins' differences. PresetResult.divergence[twin kind
or "nudged"] = bprop.divergence.analyse(...) plus the per-step arrays; .acceptance: the verdict.

Parameter differences: oracles.compare.rel_error (max|a - b| over the tensor's largest magnitude),
the worst tensor; and the plain max |a - b|. Differing predictions: test images whose predicted
class differs from the reference's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from bprop.divergence import analyse
from bprop.jobs import FRAMEWORKS, NUDGED, TWINS
from bprop.runner import JobError
from oracles.compare import rel_error


@dataclass
class FrameworkResult:
    """One framework's figures over its seeds (the module docstring lists them); None: not measured."""

    test_accuracy: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    runs: list[dict] = field(default_factory=list)
    error: str | None = None
    test_loss: list[float] | None = None
    train_loss: list[float] | None = None
    initial_test_accuracy: float | None = None
    train_s: list[float] | None = None
    eval_s: list[float] | None = None
    setup_s: float | None = None
    final_accuracy: dict | None = None
    ms_per_step: float | None = None
    vs_reference: dict | None = None

    def to_dict(self) -> dict:
        """The results.json form: every measured field (error always, None when the framework ran)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "error"}

    @classmethod
    def from_dict(cls, d: dict) -> FrameworkResult:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class PresetResult:
    """One preset and dtype: every framework's FrameworkResult, the divergence runs, the verdict."""

    preset: str
    dtype: str
    spec: dict  # the ModelSpec as ModelSpec.to_dict()
    seeds: list[int]
    frameworks: dict[str, FrameworkResult] = field(default_factory=dict)  # reference, twins, nudged
    n_train: int | None = None
    n_test: int | None = None
    epochs: int | None = None
    steps_per_epoch: list[int] | None = None
    divergence: dict[str, dict] | None = None  # twin kind or NUDGED -> analyse(...) + arrays, or {"error"}
    acceptance: dict | None = None  # {"passed", "mode", "claim", "checks"}, set by bprop.validate

    def present(self, kinds=(*FRAMEWORKS, NUDGED)) -> list[str]:
        """The kinds among `kinds` that this result holds, in that order."""
        return [k for k in kinds if k in self.frameworks]

    def twins(self) -> list[str]:
        return self.present(TWINS)

    @property
    def reference(self) -> FrameworkResult | None:
        return self.frameworks.get("reference")

    def to_dict(self) -> dict:
        """results.json's entry: the frameworks under their own keys, unmeasured fields left out."""
        out: dict = {"preset": self.preset, "dtype": self.dtype, "spec": self.spec, "seeds": self.seeds}
        out.update({kind: fw.to_dict() for kind, fw in self.frameworks.items()})
        for name in ("n_train", "n_test", "epochs", "steps_per_epoch", "divergence", "acceptance"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> PresetResult:
        known = {f.name for f in dataclasses.fields(cls)} - {"frameworks"}
        frameworks = {k: FrameworkResult.from_dict(d[k]) for k in (*FRAMEWORKS, NUDGED) if k in d}
        return cls(frameworks=frameworks, **{k: v for k, v in d.items() if k in known})


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


def summarise_framework(
    kind: str, runs: dict[int, dict | JobError], ref_runs: dict[int, dict | JobError]
) -> FrameworkResult:
    """The figures of one framework over its seeds (see the module docstring)."""
    errors = [str(r) for r in runs.values() if isinstance(r, JobError)]
    ok = {seed: r for seed, r in runs.items() if not isinstance(r, JobError)}
    if not ok:
        return FrameworkResult(error="; ".join(errors) or "not run")
    seeds = sorted(ok)
    steps = sum(ok[seeds[0]]["steps_per_epoch"])
    result = FrameworkResult(
        test_accuracy=np.mean([ok[s]["test_accuracy"] for s in seeds], axis=0).tolist(),
        test_loss=np.mean([ok[s]["test_loss"] for s in seeds], axis=0).tolist(),
        train_loss=np.mean([ok[s]["train_loss"] for s in seeds], axis=0).tolist(),
        initial_test_accuracy=float(np.mean([ok[s]["initial_test_accuracy"] for s in seeds])),
        wall_s=float(sum(ok[s]["wall_s"] for s in seeds)),
        train_s=np.sum([ok[s]["train_s"] for s in seeds], axis=0).tolist(),
        eval_s=np.sum([ok[s]["eval_s"] for s in seeds], axis=0).tolist(),
        setup_s=float(sum(ok[s]["setup_s"] + ok[s]["data_s"] for s in seeds)),
        final_accuracy=_stats([ok[s]["test_accuracy"][-1] for s in seeds]),
        error="; ".join(errors) or None,
        ms_per_step=1e3 * float(sum(sum(ok[s]["train_s"]) for s in seeds)) / (steps * len(seeds)),
    )
    for seed in seeds:
        run = {"seed": seed, **{k: ok[seed][k] for k in _RUN_KEYS}}
        ref = ref_runs.get(seed)
        if kind != "reference" and ref is not None and not isinstance(ref, JobError):
            run["vs_reference"] = compare_runs(ref, ok[seed])
            result.vs_reference = _worst(result.vs_reference, run["vs_reference"])
        result.runs.append(run)
    return result


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
) -> PresetResult:
    """The result for one preset and dtype. `train[(framework, seed)]`, `divergence[kind]`."""
    from reference.spec import preset

    spec = preset(preset_name, dtype=dtype)
    seeds = sorted({seed for _, seed in train})
    result = PresetResult(preset=preset_name, dtype=dtype, spec=spec.to_dict(), seeds=seeds)
    ref_runs = {seed: train[("reference", seed)] for seed in seeds if ("reference", seed) in train}
    for kind in (*FRAMEWORKS, NUDGED):
        if kind not in frameworks or not any(k == kind for k, _ in train):
            continue
        runs = {seed: train[(kind, seed)] for seed in seeds if (kind, seed) in train}
        result.frameworks[kind] = summarise_framework(kind, runs, ref_runs)
    first = next((r for r in train.values() if not isinstance(r, JobError)), None)
    if first is not None:
        result.n_train, result.n_test = first["n_train"], first["n_test"]
        result.epochs = len(first["test_accuracy"])
        result.steps_per_epoch = first["steps_per_epoch"]
    if divergence:
        result.divergence = {}
        for kind, rec in divergence.items():
            if isinstance(rec, JobError):
                result.divergence[kind] = {"error": str(rec)}
                continue
            result.divergence[kind] = {
                **analyse(rec["max_abs"], dtype, rec["rel"]),
                "ms_per_step": 1e3 * rec["step_s"],
                "wall_s": rec["wall_s"],
                "max_abs": [float(v) for v in rec["max_abs"]],
                "rel": [float(v) for v in rec["rel"]],
                "policy": [float(v) for v in rec["policy"]],
            }
    return result
