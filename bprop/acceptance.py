"""What each preset must show, and the check of an entry against it (validation issue, "What the
numbers must show"). Every check says pass, fail or n/a, with the figures behind the verdict.

Two kinds of preset:
- "parity" (batched): the trajectories of correct implementations stay together. float64: the same
  test accuracy after every epoch and parameters within the float64 twin policy (oracles.compare,
  1e-12 relative to each tensor's largest magnitude) after every epoch. float32: test accuracies
  within 0.05 percentage points after every epoch (rounding differences of 1e-7 do move a few
  borderline test images).
- "chaotic" (per-sample on raw pixels): the trajectories agree to rounding level for a stretch of
  steps and then separate exponentially (bprop.divergence). Checked: the stretch is at least
  `min_agree_steps` long for every twin, and, over several seeds, each twin's mean final accuracy
  is within three standard errors of the reference's (the spread pooled over all frameworks).

Accuracy floors are set per number of epochs and apply to runs on all the data (a --limit run
reports them as n/a). Everything else applies to every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bprop.jobs import NUDGED
from bprop.summary import PresetResult
from oracles.compare import ACCURACY_SLACK, DIVERGENCE_BAR, FLOAT32_ACCURACY_GAP, atol, tolerance


@dataclass(frozen=True)
class Acceptance:
    mode: str  # "parity" | "chaotic"
    # parity, float32: largest |twin - reference| test accuracy after every epoch (None: not claimed)
    float32_accuracy_gap: float | None = FLOAT32_ACCURACY_GAP
    # Accuracy floors by number of epochs: after the last epoch, every framework and every seed;
    # full-data runs only (a --limit run reports n/a).
    min_accuracy: dict[int, float] = field(default_factory=dict)
    min_agree_steps: dict[str, int] = field(default_factory=dict)  # chaotic: by dtype
    claim: str = ""  # where the numbers come from, quoted in the report


ACCEPTANCE: dict[str, Acceptance] = {
    "mnist-relu-batched": Acceptance(
        mode="parity",
        claim="identical accuracies and parameters within 1e-12 in float64; accuracies within 0.05 "
        "percentage points in float32 (validation issue; prototype 91.93/93.43/94.18 % in float64)",
    ),
    "mnist-relu-batched-raw": Acceptance(
        mode="parity",
        min_accuracy={3: 0.85},
        claim="seed 001 as it runs (raw 0..255 pixels, lr 1e-5): 0.8575 test accuracy after 3 epochs; measured "
        "with the reference, 85.43 to 85.74 % over seeds 0-4 in float64 and in float32. Floor: 85 % after 3 "
        "epochs; identical accuracies and parameters within 1e-12 in float64, accuracies within 0.05 pp in float32",
    ),
    "mnist-relu-deep": Acceptance(
        mode="parity",
        float32_accuracy_gap=None,
        min_accuracy={3: 0.97, 25: 0.97},
        claim="at least 97 % after 3 epochs in all three frameworks (validation issue). The preset starts "
        "from He-normal weights: measured with the reference, 97.44 / 97.07 / 96.93 / 97.40 / 97.18 % for "
        "seeds 0-4; seed 004's randn * 0.01 start gives 96.33 to 96.99 % for seeds 0-5 and never 97 % in 3 "
        "epochs (its '>97%' is after 25 epochs). Not claimed, and not so: float32 accuracies within 0.05 pp "
        "(float32 rounding flips ReLU kinks and the run separates within the first epoch, the reference "
        "nudged by one ulp alike: see its row)",
    ),
    "mnist-cnn": Acceptance(
        mode="parity",
        float32_accuracy_gap=None,
        min_accuracy={3: 0.985},
        claim="at least 98.5 % after 3 epochs in all three frameworks; in float64 identical accuracies and "
        "parameters within 1e-12 after every epoch (issue 13). The reference alone, float64 seed 0: "
        "98.21 / 98.03 / 98.60 %. float32 is reported, not held to a gap (ReLU kinks and max-pool "
        "choices flip under float32 rounding, as in the deep net)",
    ),
    "mnist-sigmoid-per-sample": Acceptance(
        mode="chaotic",
        min_accuracy={3: 0.50},
        min_agree_steps={"float64": 50, "float32": 10},
        claim="the homework raises accuracy 'from ~10% to ~70%' in 3 epochs: every run at least 50 % "
        "(measured: 30 runs, 5 seeds x 3 frameworks x 2 dtypes, 54.0 to 73.8 %). The trajectories are "
        "chaotic, so the twins are held to agreement over the first stretch of steps (1e-9 in float64, "
        "1e-5 in float32; at least half as long as the reference nudged by one ulp) and, with --seeds, "
        "to the reference's mean accuracy within three standard errors",
    ),
    "digits-sigmoid-per-sample": Acceptance(
        mode="parity",
        min_accuracy={3: 0.90, 15: 0.97},
        claim="the digits lab's inputs (StandardScaler fitted on its train_test_split(test_size=0.15, "
        "random_state=37) training split) at seed 003's lr 0.01: measured over seeds 0-4 in all three "
        "frameworks, float64 and float32 (30 runs, every twin's accuracy identical to the reference's): "
        "90.37 to 94.44 % after 3 epochs (mean 92.67, sd 1.47; seed 0: 68.52 / 80.37 / 92.96 %), and "
        "97.41 % after 15 epochs in every run (seed 003's log, on its own inputs and code: 77.0 % after 3, "
        "91.5 % after 15). Floors: 90 % after 3 epochs, 97 % after 15 (`--epochs 15`)",
    ),
}


def acceptance_for(preset_name: str, batch_size: int) -> Acceptance:
    """The preset's acceptance; a custom preset gets parity if batched, chaotic rules otherwise."""
    if preset_name in ACCEPTANCE:
        return ACCEPTANCE[preset_name]
    return Acceptance(mode="parity" if batch_size > 1 else "chaotic", min_agree_steps={"float64": 50, "float32": 10})


@dataclass
class Check:
    name: str
    status: str  # "pass" | "fail" | "n/a"
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def _pct(a: float) -> str:
    return f"{100 * a:.2f} %"


def _frameworks(entry: PresetResult) -> list[str]:
    """The reference and the twins present (not the 1-ulp control)."""
    return entry.present(("reference", *entry.twins()))


def check_ran(entry: PresetResult) -> Check:
    errors = [f"{k}: {fw.error}" for k, fw in entry.frameworks.items() if fw.error]
    errors += [f"divergence {k}: {d['error']}" for k, d in (entry.divergence or {}).items() if "error" in d]
    if errors:
        return Check("every framework ran", "fail", "; ".join(errors))
    return Check("every framework ran", "pass", ", ".join(_frameworks(entry)))


def check_finite(entry: PresetResult) -> Check:
    bad = [
        f"{k} {key} epoch {i + 1} = {v}"
        for k in _frameworks(entry)
        for key in ("train_loss", "test_loss")
        for i, v in enumerate(getattr(entry.frameworks[k], key) or [])
        if not math.isfinite(v)
    ]
    return Check("losses finite", "fail" if bad else "pass", "; ".join(bad) or "every loss finite")


def check_identical_accuracies(entry: PresetResult) -> Check:
    """float64 parity: every twin's test accuracy equals the reference's after every epoch, every seed."""
    ref = entry.reference
    problems = []
    for kind in entry.twins():
        for run_ref, run in zip(ref.runs, entry.frameworks[kind].runs):
            for epoch, (a, b) in enumerate(zip(run_ref["test_accuracy"], run["test_accuracy"])):
                if a != b:
                    problems.append(f"{kind} seed {run['seed']} epoch {epoch + 1}: {_pct(b)} vs reference {_pct(a)}")
    detail = "; ".join(problems) or "the same accuracy after every epoch: " + ", ".join(
        _pct(a) for a in ref.test_accuracy
    )
    return Check("identical test accuracies (float64)", "fail" if problems else "pass", detail)


def check_params_within_policy(entry: PresetResult) -> Check:
    """float64 parity: parameters within the twin policy after every epoch."""
    tol = tolerance("twin", entry.dtype, "parameters")
    problems, worst = [], 0.0
    for kind in entry.twins():
        vs = entry.frameworks[kind].vs_reference
        if vs is None:
            continue
        for epoch, err in enumerate(vs["param_rel_error"]):
            worst = max(worst, err)
            if not err <= tol:
                problems.append(f"{kind} epoch {epoch + 1}: {err:.3g} > {tol:.0e}")
    name = f"parameters within the twin policy ({tol:.0e})"
    detail = "; ".join(problems) or f"worst relative difference {worst:.3g} <= {tol:.0e}"
    return Check(name, "fail" if problems else "pass", detail)


def check_accuracy_gap(entry: PresetResult, gap: float = FLOAT32_ACCURACY_GAP) -> Check:
    """float32 parity: |twin accuracy - reference accuracy| <= gap after every epoch, every seed."""
    ref = entry.reference
    problems, worst = [], 0.0
    for kind in entry.twins():
        for run_ref, run in zip(ref.runs, entry.frameworks[kind].runs):
            for epoch, (a, b) in enumerate(zip(run_ref["test_accuracy"], run["test_accuracy"])):
                worst = max(worst, abs(a - b))
                if abs(a - b) > gap + ACCURACY_SLACK:
                    problems.append(
                        f"{kind} seed {run['seed']} epoch {epoch + 1}: {_pct(b)} vs reference {_pct(a)} "
                        f"(gap {100 * abs(a - b):.2f} pp > {100 * gap:.2f} pp)"
                    )
    n_test = entry.n_test or 0
    images = f" ({worst * n_test:.0f} of {n_test} test images)" if n_test else ""
    detail = "; ".join(problems) or f"largest gap {100 * worst:.2f} pp{images} <= {100 * gap:.2f} pp"
    return Check(f"accuracies within {100 * gap:.2f} pp (float32)", "fail" if problems else "pass", detail)


def check_min_accuracy(entry: PresetResult, floors: dict[int, float], full_data: bool) -> Check:
    """Every framework and seed at or above the preset's floor for this number of epochs."""
    epochs = entry.epochs if entry.epochs is not None else entry.spec["epochs"]
    floor = floors.get(epochs)
    if floor is None:
        known = ", ".join(f"{f:.0%} after {e}" for e, f in sorted(floors.items()))
        return Check(f"accuracy floor after {epochs} epochs", "n/a", f"floors exist for: {known}")
    name = f"accuracy >= {_pct(floor)} after {epochs} epochs"
    if not full_data:
        return Check(name, "n/a", "applies to runs on all the data only (not --limit)")
    problems, lowest = [], 1.0
    for kind in _frameworks(entry):
        for run in entry.frameworks[kind].runs:
            acc = run["test_accuracy"][-1]
            lowest = min(lowest, acc)
            if acc < floor:
                problems.append(f"{kind} seed {run['seed']}: {_pct(acc)} < {_pct(floor)}")
    return Check(name, "fail" if problems else "pass", "; ".join(problems) or f"lowest {_pct(lowest)}")


EARLY_STEPS = 10


def check_early_steps(entry: PresetResult, steps: int = EARLY_STEPS) -> Check:
    """Chaotic presets: over the first steps, before any amplification, the parameters agree within
    the twin policy of oracles.compare (relative to each tensor's largest magnitude, or under the
    absolute floor), as they would in a non-chaotic run."""
    tol = tolerance("twin", entry.dtype, "parameters")
    name = f"first {steps} steps within the twin policy ({tol:.0e})"
    div = entry.divergence or {}
    twins = [k for k in entry.twins() if k in div and "policy" in div[k]]
    if not twins:
        return Check(name, "n/a", "no divergence run (--divergence-steps 0)")
    problems, worst, worst_ratio = [], 0.0, 0.0
    for k in twins:
        ratio = np.asarray(div[k]["policy"][:steps], np.float64)  # <= 1: within the policy
        worst = max(worst, float(np.asarray(div[k]["rel"][:steps]).max(initial=0.0)))
        worst_ratio = max(worst_ratio, float(ratio.max(initial=0.0)))
        bad = np.flatnonzero(~(ratio <= 1.0))
        if bad.size:
            s = int(bad[0])
            problems.append(
                f"{k}: step {s + 1}: relative difference {div[k]['rel'][s]:.3g} > {tol:.0e} "
                f"and max |difference| {div[k]['max_abs'][s]:.3g} above the floor"
            )
    floor = atol("twin", entry.dtype)
    detail = "; ".join(problems) or (
        f"worst relative difference {worst:.3g}; worst tensor at {worst_ratio:.2f} of the policy "
        f"(relative <= {tol:.0e} or max |difference| <= {floor:.0e})"
    )
    return Check(name, "fail" if problems else "pass", detail)


def check_agreement_stretch(entry: PresetResult, min_steps: int, control_share: float = 0.5) -> Check:
    """Chaotic presets: every twin's trajectory within the bar for at least `min_steps` steps and at
    least `control_share` of the control's stretch (the reference against itself nudged by one ulp:
    how long this very trajectory tolerates a rounding-level difference)."""
    bar = DIVERGENCE_BAR[entry.dtype]
    div = entry.divergence or {}
    control = div.get(NUDGED, {}).get("agree_steps")
    needed = max(min_steps, int(control_share * control)) if control is not None else min_steps
    name = f"trajectories agree to {bar:.0e} for >= {min_steps} steps and >= {control_share:g} x the 1-ulp control's"
    twins = [k for k in entry.twins() if k in div and "agree_steps" in div[k]]
    if not twins:
        return Check(name, "n/a", "no divergence run (--divergence-steps 0)")
    available = min(div[k]["steps"] for k in twins)
    if available < needed:
        return Check(name, "n/a", f"only {available} steps measured (--divergence-steps or --limit)")
    control_text = (
        f"the control (reference nudged by 1 ulp) {control} steps" if control is not None else "no control run"
    )
    problems = []
    for k in twins:
        n = div[k]["agree_steps"]
        if n < needed:
            after = div[k]["max_abs"][n] if n < len(div[k]["max_abs"]) else float("nan")
            problems.append(
                f"{k}: only {n} steps (max |param difference| {after:.3g} after step {n + 1}; needed {needed})"
            )
    detail = "; ".join(problems) or ", ".join(f"{k} {div[k]['agree_steps']} steps" for k in twins)
    return Check(name, "fail" if problems else "pass", f"{detail}; {control_text}")


def check_seed_distribution(entry: PresetResult) -> Check:
    """Chaotic presets over >= 2 seeds: |mean_twin - mean_ref| <= 3 * s * sqrt(2 / n), s the pooled
    standard deviation of the final accuracies (each framework about its own mean)."""
    name = "final accuracies agree as distributions over seeds"
    n = len(entry.seeds)
    if n < 2:
        return Check(name, "n/a", "needs --seeds 2 or more (chaotic: one seed is one draw)")
    finals = {k: np.asarray(entry.frameworks[k].final_accuracy["values"]) for k in _frameworks(entry)}
    dof = sum(len(v) - 1 for v in finals.values())
    pooled = math.sqrt(sum(((v - v.mean()) ** 2).sum() for v in finals.values()) / dof) if dof else 0.0
    bound = 3 * pooled * math.sqrt(2 / n)
    ref_mean = finals["reference"].mean()
    problems = [
        f"{k}: mean {_pct(v.mean())} vs reference {_pct(ref_mean)}, |difference| {100 * abs(v.mean() - ref_mean):.2f} "
        f"pp > {100 * bound:.2f} pp"
        for k, v in finals.items()
        if k != "reference" and abs(v.mean() - ref_mean) > bound
    ]
    spread = ", ".join(f"{k} {_pct(v.mean())} ± {100 * v.std(ddof=1):.2f} pp" for k, v in finals.items())
    detail = "; ".join(problems) or f"{spread}; every twin within {100 * bound:.2f} pp (3 standard errors)"
    return Check(name, "fail" if problems else "pass", detail)


def assess(entry: PresetResult, full_data: bool) -> list[Check]:
    """Every check that applies to this preset and dtype (`full_data`: not a --limit run)."""
    rules = acceptance_for(entry.preset, entry.spec["batch_size"])
    checks = [check_ran(entry)]
    if entry.reference is None or not entry.reference.runs:
        return checks
    checks.append(check_finite(entry))
    if rules.mode == "parity":
        if entry.dtype == "float64":
            checks += [check_identical_accuracies(entry), check_params_within_policy(entry)]
        elif rules.float32_accuracy_gap is not None:
            checks.append(check_accuracy_gap(entry, rules.float32_accuracy_gap))
    else:
        checks.append(check_early_steps(entry))
        checks.append(check_agreement_stretch(entry, rules.min_agree_steps.get(entry.dtype, 0)))
        checks.append(check_seed_distribution(entry))
    if rules.min_accuracy:
        checks.append(check_min_accuracy(entry, rules.min_accuracy, full_data))
    return checks
