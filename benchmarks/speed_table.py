"""The benchmark's results as a README-ready markdown table, with the machine it ran on."""

from __future__ import annotations

from benchmarks.run import DTYPES
from oracles import TWIN_KINDS

ROWS = (
    ("batched_epoch_s", "batched epoch (s)"),
    ("per_sample_step_us", "per-sample step (µs)"),
    ("cnn_epoch_s", "CNN epoch, mnist-cnn, batch 64 (s)"),
)


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def machine_line(doc: dict) -> str:
    m, setup = doc["machine"], doc["setup"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in m["blas"]) or "?"
    threads = m.get("threads", {})
    quick = " QUICK (smoke-test sizes, not comparable)" if setup["quick"] else ""
    return (
        f"{m['name']}; {m['cores_usable']} cores; load average {m['load_average_before'][0]:.2f} before, "
        f"{m['load_average_after'][0]:.2f} after; numpy {m['numpy']} with {blas}; torch {m['torch']}; "
        f"tensorflow {m['tensorflow']}, keras {m['keras']}; python {m['python']}; threads {threads}; "
        f"medians of {setup['repeats']} interleaved repetitions{quick}"
    )


def table(doc: dict, cpu: bool = False) -> str:
    """| dtype | measure | reference | torch | keras | limit | ref/torch | ref/keras | ref/limit |

    Wall-clock medians, or (cpu=True) medians of the process's CPU time.
    """
    head = "| dtype | measure | reference | torch | keras | limit | ref/torch | ref/keras | ref/limit |"
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for dtype in DTYPES:
        res = doc["cpu_time"][dtype] if cpu else doc[dtype]
        for task, label in ROWS:
            m = res[task]
            ref, limit = m.get("reference"), m.get("gemm_limit", m.get("numpy_floor"))
            lines.append(
                f"| {dtype} | {label} | {fmt(ref)} | {fmt(m.get('torch'))} | {fmt(m.get('keras'))} | "
                f"{fmt(limit)} | {ratio(ref, m.get('torch'))} | {ratio(ref, m.get('keras'))} | {ratio(ref, limit)} |"
            )
        fb = res["forward_backward_ms"]
        for name in fb.get("reference", {}):
            ref, t, k = (fb.get(c, {}).get(name) for c in ("reference", *TWIN_KINDS))
            lines.append(
                f"| {dtype} | fwd+bwd, batch 128, {name} (ms) | {fmt(ref)} | {fmt(t)} | {fmt(k)} | – | "
                f"{ratio(ref, t)} | {ratio(ref, k)} | – |"
            )
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}"


LIMITS = (
    "limit: batched and CNN, the GEMMs of the epoch alone, back to back (benchmarks/gemm.py: for the CNN the "
    "three im2col products per conv layer, without the im2col copies, pooling or activations); per-sample, "
    "the same SGD step written straight in numpy, no layers or checks (benchmarks/floor.py)"
)


def markdown(doc: dict) -> str:
    name = doc["machine"]["name"]
    return (
        f"Wall-clock time, medians ({name}):\n\n{table(doc)}\n\n"
        f"CPU time of the process (all its threads), medians ({name}):\n\n"
        f"{table(doc, cpu=True)}\n\n{LIMITS}.\n\nMachine: {machine_line(doc)}."
    )
