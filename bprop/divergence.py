"""Where two trajectories of a chaotic per-sample run separate, and how fast.

    summary = analyse(max_abs, bar)     max_abs[s]: largest |parameter difference| after step s+1

Per-sample training on raw 0..255 pixels saturates the sigmoids, and the trajectory amplifies any
rounding difference exponentially until it is as large as the parameters' own motion. Two correct
implementations therefore agree to rounding level for a stretch of steps, then separate at a steady
exponential rate, then wander apart. We report the stretch (`agree_steps`: leading steps within
`bar`), the first step above each decade, and the growth rate fitted in the exponential phase.
"""

from __future__ import annotations

import numpy as np

from oracles.compare import DIVERGENCE_BAR  # the bar for "the trajectories agree", with its reasons

__all__ = ["DIVERGENCE_BAR", "agree_steps", "analyse", "first_step_above", "growth"]

# The exponential phase in which the growth rate is fitted: above the rounding floor, below saturation.
FIT_RANGE = {"float64": (1e-13, 1e-4), "float32": (1e-6, 1e-3)}

MARKS = (1, 10, 100, 1000, 2000, 3000, 5000)


def agree_steps(max_abs: np.ndarray, bar: float) -> int:
    """How many leading steps stay within `bar` (len(max_abs) if all do)."""
    above = np.flatnonzero(~(np.asarray(max_abs) <= bar))
    return int(above[0]) if above.size else len(max_abs)


def first_step_above(max_abs: np.ndarray, level: float) -> int | None:
    """The 1-based step after which the difference first exceeds `level`, None if never."""
    above = np.flatnonzero(np.asarray(max_abs) > level)
    return int(above[0]) + 1 if above.size else None


def growth(max_abs: np.ndarray, low: float, high: float) -> dict | None:
    """log10(difference) ~ a + rate * step fitted over the steps between the first exceedance of
    `low` and the first of `high`: decades per 100 steps and steps per factor 10 (None if too short)."""
    start, stop = first_step_above(max_abs, low), first_step_above(max_abs, high)
    if start is None:
        return None
    stop = stop or len(max_abs)
    steps = np.arange(start, stop + 1)
    values = np.asarray(max_abs)[start - 1 : stop]
    keep = values > 0
    if keep.sum() < 5 or steps[keep][-1] - steps[keep][0] < 5:
        return None
    rate = float(np.polyfit(steps[keep], np.log10(values[keep]), 1)[0])  # decades per step
    return {
        "from_step": int(start),
        "to_step": int(stop),
        "decades_per_100_steps": 100 * rate,
        "steps_per_decade": (1 / rate) if rate > 0 else None,
    }


def analyse(max_abs: np.ndarray, dtype: str, rel: np.ndarray | None = None) -> dict:
    """The figures the report quotes for one pair of trajectories."""
    max_abs = np.asarray(max_abs, np.float64)
    bar = DIVERGENCE_BAR[dtype]
    at = {str(m): float(max_abs[m - 1]) for m in MARKS if m <= len(max_abs)}
    out = {
        "steps": len(max_abs),
        "bar": bar,
        "agree_steps": agree_steps(max_abs, bar),
        "first_above": {f"{level:.0e}": first_step_above(max_abs, level) for level in (1e-12, 1e-9, 1e-6, 1e-3)},
        "at_step": at,
        "final": float(max_abs[-1]) if len(max_abs) else None,
        "growth": growth(max_abs, *FIT_RANGE[dtype]),
    }
    if rel is not None:
        out["rel_at_step"] = {str(m): float(rel[m - 1]) for m in MARKS if m <= len(rel)}
    return out
