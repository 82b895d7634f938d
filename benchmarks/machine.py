"""The machine a benchmark ran on: CPU, cores, load, library versions, BLAS and thread settings."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def blas() -> list[dict]:
    """numpy's BLAS as threadpoolctl sees it: library, version, architecture, threads."""
    from threadpoolctl import threadpool_info

    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def numpy_blas(libs: list[dict]) -> str:
    """numpy's own BLAS, e.g. "OpenBLAS 0.3.31 Haswell": the library threadpoolctl finds loaded from
    numpy's directory (torch or scipy may load another), or numpy.show_config's build entry."""
    mine = [b for b in libs if "numpy" in (b.get("filepath") or "")]
    if mine:
        b = mine[0]
        api = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(b["internal_api"], b["internal_api"])
        version = ".".join(str(b.get("version") or "?").split(".")[:3])
        return " ".join(str(part) for part in (api, version, b.get("architecture")) if part)
    built = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"{built.get('name', 'BLAS')} {built.get('version', '?')}"


def machine_name(cpu: str, libs: list[dict]) -> str:
    """The short name printed beside every figure: the processor model and numpy's BLAS, e.g.
    "AMD EPYC, OpenBLAS 0.3.31 Haswell" (what the figures depend on most)."""
    return f"{cpu}, {numpy_blas(libs)}"


def machine_info() -> dict:
    cpu, libs = cpu_model(), blas()
    return {
        "name": machine_name(cpu, libs),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "tensorflow": version("tensorflow-cpu") or version("tensorflow"),
        "keras": version("keras"),
        "blas": libs,
    }
