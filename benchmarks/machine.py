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

    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "tensorflow": version("tensorflow-cpu") or version("tensorflow"),
        "keras": version("keras"),
        "blas": blas(),
    }
