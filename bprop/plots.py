"""The PNG figures of the validation report (matplotlib, Agg backend: no display needed).

    curves(preset, entries, path)                   training loss, test loss and test accuracy of the
                                                    three frameworks overlaid, one row per dtype
    digit_grid(title, images, y, preds, path)       a few test digits with the three predictions
    divergence(preset, entries, path)               max |parameter difference| per step, log scale
    seed_spread(preset, entries, path)              final accuracy per seed and framework

Each function writes one file and returns its path. Overlaid lines that coincide exactly (float64
parity) are drawn with different widths and dash patterns so every framework stays visible.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bprop.jobs import FRAMEWORKS, NUDGED
from bprop.summary import PresetResult
from oracles import TWIN_KINDS
from oracles.compare import DIVERGENCE_BAR

STYLE = {
    "reference": {"color": "#222222", "lw": 4.0, "ls": "-", "alpha": 0.35, "marker": "o", "ms": 9},
    "torch": {"color": "#ee4c2c", "lw": 1.8, "ls": "--", "alpha": 1.0, "marker": "s", "ms": 5},
    "keras": {"color": "#1f77b4", "lw": 1.4, "ls": ":", "alpha": 1.0, "marker": "x", "ms": 7},
    NUDGED: {"color": "#2ca02c", "lw": 1.4, "ls": "-.", "alpha": 0.9, "marker": None, "ms": 0},
}
LABEL = {"reference": "reference (numpy)", **{k: f"{k} twin" for k in TWIN_KINDS}, NUDGED: "reference nudged 1 ulp"}
DPI = 110
FLOOR = 1e-18  # log plots: an exact zero is drawn here


def _line(ax, x, y, kind: str, label: str | None = None, markers: bool = True, **extra) -> None:
    s = STYLE[kind]
    ax.plot(
        x,
        y,
        color=s["color"],
        lw=s["lw"],
        ls=s["ls"],
        alpha=extra.pop("alpha", s["alpha"]),
        marker=s["marker"] if markers else None,
        ms=s["ms"],
        label=label,
        **extra,
    )


def _save(fig, path: Path, title: str, fontsize: float) -> Path:
    """Title the figure, lay it out, write it to `path` and close it."""
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def _frameworks(entry: PresetResult) -> list[str]:
    return [k for k in entry.present(FRAMEWORKS) if entry.frameworks[k].runs]


def curves(preset_name: str, entries: dict[str, PresetResult], path: Path) -> Path:
    """Rows: dtypes. Columns: training loss (mean over each tenth of an epoch), test loss, test
    accuracy, and each twin's largest parameter difference to the reference after every epoch."""
    from oracles.compare import tolerance

    dtypes = list(entries)
    fig, axes = plt.subplots(len(dtypes), 4, figsize=(18, 3.7 * len(dtypes)), squeeze=False)
    for row, dtype in enumerate(dtypes):
        entry = entries[dtype]
        epochs = entry.epochs or 0
        several = len(entry.seeds) > 1
        ax_train, ax_loss, ax_acc, ax_diff = axes[row]
        steps_per_epoch = np.mean(entry.steps_per_epoch or [1])
        e = np.arange(epochs + 1)
        mean = " (mean over seeds)" if several else ""
        for kind in _frameworks(entry):
            fw = entry.frameworks[kind]
            chunks = np.mean([np.asarray(run["train_loss_chunks"], np.float64) for run in fw.runs], axis=0)
            _line(ax_train, chunks[:, 0] / steps_per_epoch, chunks[:, 1], kind, LABEL[kind] + mean, markers=False)
            for run in fw.runs:
                if several:
                    acc = 100 * np.r_[run["initial_test_accuracy"], run["test_accuracy"]]
                    ax_acc.plot(e, acc, color=STYLE[kind]["color"], lw=0.6, alpha=0.35)
            test_loss = np.r_[np.mean([r["initial_test_loss"] for r in fw.runs]), fw.test_loss]
            _line(ax_loss, e, test_loss, kind, LABEL[kind] + mean)
            _line(ax_acc, e, 100 * np.r_[fw.initial_test_accuracy, fw.test_accuracy], kind, LABEL[kind] + mean)
        for kind in (*TWIN_KINDS, NUDGED):
            vs = entry.frameworks[kind].vs_reference if kind in entry.frameworks else None
            if vs:
                rel = np.maximum(np.asarray(vs["param_rel_error"], np.float64), FLOOR)
                _line(ax_diff, np.arange(1, epochs + 1), rel, kind, f"{LABEL[kind]} vs reference")
        tol = tolerance("twin", dtype, "parameters")
        ax_diff.axhline(tol, color="k", lw=0.8, ls="--")
        ax_diff.text(
            0.98, tol * 2, f"twin policy {tol:.0e}", transform=ax_diff.get_yaxis_transform(), ha="right", fontsize=8
        )
        ax_diff.set_yscale("log")
        ax_diff.set_ylim(FLOOR / 3, 10)
        ax_diff.set_xlim(0.7, epochs + 0.3)
        ax_diff.set_xticks(range(1, epochs + 1))
        ax_diff.set_xlabel("epoch")
        worst_seed = " (worst seed)" if several else ""
        ax_diff.set_title(f"{dtype}: parameter difference to the reference{worst_seed}", fontsize=10)
        if ax_diff.get_legend_handles_labels()[0]:
            ax_diff.legend(fontsize=8, loc="best")
        over = ", seed mean" if several else ""
        ax_train.set_title(f"{dtype}: training loss, per tenth of an epoch{over}", fontsize=10)
        ax_train.set_xlabel("epoch")
        ax_loss.set_title(f"{dtype}: test loss", fontsize=10)
        ax_acc.set_title(f"{dtype}: test accuracy (%)", fontsize=10)
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("epoch (0 = initial weights)")
            ax.set_xticks(range(epochs + 1))
        values = [100 * a for kind in _frameworks(entry) for a in entry.frameworks[kind].test_accuracy]
        low, high = ax_acc.get_ylim()
        if epochs >= 2 and max(values) - min(values) < 0.3 * (high - low):  # a zoom shows something new
            inset = ax_acc.inset_axes([0.42, 0.1, 0.53, 0.45])
            for kind in _frameworks(entry):
                _line(inset, np.arange(1, epochs + 1), 100 * np.asarray(entry.frameworks[kind].test_accuracy), kind)
            pad = max(0.2, 0.1 * (max(values) - min(values)))
            inset.set_ylim(min(values) - pad, max(values) + pad)
            inset.set_title(f"epochs 1..{epochs}, zoomed", fontsize=8)
            inset.tick_params(labelsize=7)
            inset.set_xticks(range(1, epochs + 1))
            inset.grid(alpha=0.3)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        ax_loss.legend(fontsize=8, loc="upper right")
    title = (
        f"{preset_name}: reference, torch twin and keras twin from identical weights and batches\n"
        f"(parameter difference: the worst tensor's max|a - b| / max|a|; an exact 0 is drawn at {FLOOR:.0e})"
    )
    return _save(fig, path, title, fontsize=11)


def pick_digits(preds: dict[str, np.ndarray], y: np.ndarray, n: int = 10) -> list[int]:
    """Test images worth showing: where the frameworks disagree, then where all are wrong, then right."""
    stack = np.stack(list(preds.values()))  # (frameworks, n_test)
    disagree = np.flatnonzero((stack != stack[0]).any(axis=0))
    wrong = np.flatnonzero((stack != y).all(axis=0))
    right = np.flatnonzero((stack == y).all(axis=0))
    picked: list[int] = []
    for group, quota in ((disagree, 4), (wrong, 3), (right, n)):
        for i in group[:quota]:
            if len(picked) < n and int(i) not in picked:
                picked.append(int(i))
    return picked


SHORT = {"reference": "numpy", **{k: k for k in TWIN_KINDS}}


def digit_grid(
    title: str, images: np.ndarray, y: np.ndarray, preds: dict[str, np.ndarray], path: Path, n: int = 10
) -> Path:
    """A grid of test digits, each captioned with its label and the three frameworks' predictions."""
    idx = pick_digits(preds, y, n)
    images = images.reshape(len(images), -1)  # flat rows or (n, 1, H, W) images alike
    side = round(float(np.sqrt(images.shape[1])))
    cols = min(5, len(idx)) or 1
    rows = -(-len(idx) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        ax.imshow(images[i].reshape(side, side), cmap="gray_r", interpolation="nearest")
        ok = all(p[i] == y[i] for p in preds.values())
        same = len({int(p[i]) for p in preds.values()}) == 1
        color = "#1a7f37" if ok else ("#c62828" if same else "#b35900")
        ax.set_title(f"test #{i}, label {y[i]}", fontsize=9, color=color, pad=3)
        caption = "\n".join(f"{SHORT.get(k, k):>5}: {p[i]}{'' if p[i] == y[i] else ' ✗'}" for k, p in preds.items())
        ax.text(
            0.5,
            -0.04,
            caption,
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=8.5,
            family="monospace",
            color=color,
        )
    fig.suptitle(title, fontsize=10.5)
    fig.text(
        0.5,
        0.005,
        "green: all three right · red: all three agree, wrong · orange: the frameworks disagree",
        ha="center",
        fontsize=8.5,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=4.5)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def divergence(preset_name: str, entries: dict[str, PresetResult], path: Path) -> Path:
    """max |parameter difference| after each step, per pair, log scale; one panel per dtype, zoomed
    on the separation (the rest of the run is a flat plateau, said in the panel)."""
    dtypes = [d for d in entries if entries[d].divergence]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(7.2 * len(dtypes), 4.8), squeeze=False)
    separated = False
    for ax, dtype in zip(axes[0], dtypes):
        div = entries[dtype].divergence
        bar = DIVERGENCE_BAR[dtype]
        shown = {k: div[k] for k in (*TWIN_KINDS, NUDGED) if k in div and "max_abs" in div[k]}
        if not shown:
            continue
        n_steps = max(len(d["max_abs"]) for d in shown.values())
        # Up to twice the step where the last pair passed 1e-3: after that the curves are flat.
        apart = [d["first_above"].get("1e-03") for d in shown.values() if d["first_above"].get("1e-03")]
        x_max = min(n_steps, max(200, 2 * max(apart))) if apart else n_steps
        for kind, d in shown.items():
            v = np.maximum(np.asarray(d["max_abs"][:x_max]), FLOOR)
            label = f"{LABEL[kind]} vs reference: within {bar:.0e} for {d['agree_steps']} steps"
            _line(ax, np.arange(1, len(v) + 1), v, kind, label, markers=False)
            if d["agree_steps"] < x_max:
                ax.axvline(d["agree_steps"] + 1, color=STYLE[kind]["color"], lw=0.8, alpha=0.5)
            separated = separated or d["agree_steps"] < len(d["max_abs"])
        ax.axhline(bar, color="k", lw=0.8, ls="--")
        ax.text(x_max * 0.99, bar * 2, f"bar {bar:.0e}", ha="right", fontsize=8)
        if x_max < n_steps:
            final = " / ".join(f"{d['final']:.0e}" for d in shown.values())
            note = f"steps {x_max + 1}..{n_steps} not drawn: flat, {final} at step {n_steps}"
            ax.text(0.02, 0.97, note, transform=ax.transAxes, fontsize=8, va="top")
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 3, 3)
        ax.set_xlim(0, x_max)
        ax.set_xlabel("optimiser step (one sample each)")
        ax.set_ylabel("max |parameter difference|")
        ax.set_title(f"{dtype}", fontsize=10)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8, loc="best")
    what = (
        "agree, then separate exponentially"
        if separated
        else "stay together: no pair leaves its bar (this run is not chaotic)"
    )
    title = (
        f"{preset_name}: trajectories from identical weights and samples {what}"
        f"\n(an exact 0 is drawn at {FLOOR:.0e}; vertical lines: first step above the bar)"
    )
    return _save(fig, path, title, fontsize=10)


def seed_spread(preset_name: str, entries: dict[str, PresetResult], path: Path) -> Path:
    """Final test accuracy of every seed, per framework (one panel per dtype), with the mean."""
    dtypes = list(entries)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4.2), squeeze=False, sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        entry = entries[dtype]
        for x, kind in enumerate(_frameworks(entry)):
            st = entry.frameworks[kind].final_accuracy
            vals = 100 * np.asarray(st["values"])
            jitter = np.linspace(-0.12, 0.12, len(vals))
            ax.scatter(x + jitter, vals, color=STYLE[kind]["color"], s=36, zorder=3)
            for j, seed in enumerate(entry.seeds):
                ax.annotate(str(seed), (x + jitter[j], vals[j]), fontsize=6, xytext=(3, 2), textcoords="offset points")
            ax.hlines(100 * st["mean"], x - 0.25, x + 0.25, color=STYLE[kind]["color"], lw=2)
            ax.text(
                x + 0.28, 100 * st["mean"], f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}", va="center", fontsize=8
            )
        ax.set_xticks(range(len(_frameworks(entry))), [LABEL[k] for k in _frameworks(entry)], fontsize=8)
        ax.set_xlim(-0.5, len(_frameworks(entry)) - 0.2)
        ax.set_title(f"{dtype}: test accuracy after {entry.epochs} epochs, {len(entry.seeds)} seeds", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test accuracy (%)  (numbers: seed)")
    return _save(fig, path, f"{preset_name}: one point per seed; bar = mean (± standard deviation)", fontsize=11)
