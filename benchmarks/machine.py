"""The machine a benchmark ran on: CPU, cores, load, library versions, BLAS and thread settings."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "cpu family", "flags", ...), or {}."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model(info: dict[str, str] | None = None) -> str:
    info = cpuinfo() if info is None else info
    return info.get("model name") or platform.processor() or platform.machine()


# (vendor, family, first model, last model) -> core: the processors these machines have been seen on
# and their neighbours. "AMD EPYC" alone names Zen 2 to Zen 5, whose GEMMs and ratios differ (AVX-512
# or not, L2 512 KiB or 1 MiB): the same tree's float32 CNN ratio was 2.12-2.15 on a Zen 4 and
# 2.37-2.84 on a Zen 3 (README, "Speed against the twins").
CORES = (
    ("AuthenticAMD", 23, 0x30, 0x3F, "Zen 2"),
    ("AuthenticAMD", 25, 0x00, 0x0F, "Zen 3"),
    ("AuthenticAMD", 25, 0x20, 0x2F, "Zen 3"),
    ("AuthenticAMD", 25, 0x40, 0x5F, "Zen 3"),
    ("AuthenticAMD", 25, 0x10, 0x1F, "Zen 4"),
    ("AuthenticAMD", 25, 0x60, 0x7F, "Zen 4"),
    ("AuthenticAMD", 25, 0xA0, 0xAF, "Zen 4"),
    ("AuthenticAMD", 26, 0x00, 0xFF, "Zen 5"),
    ("GenuineIntel", 6, 0x55, 0x55, "Skylake-SP/Cascade Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6A, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Emerald Rapids"),
)


def cpu_description(info: dict[str, str] | None = None, l2: str | None = None) -> str:
    """The processor as the figures depend on it, e.g. "AMD EPYC (Zen 3, family 25 model 1; AVX2, no
    AVX-512; L2 512K)": the model name alone does not tell two generations apart."""
    info = cpuinfo() if info is None else info
    name = cpu_model(info)
    if "cpu family" not in info or "model" not in info:
        return name
    family, model = int(info["cpu family"]), int(info["model"])
    core = next(
        (c for vendor, f, lo, hi, c in CORES if info.get("vendor_id") == vendor and f == family and lo <= model <= hi),
        None,
    )
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    where = f"family {family} model {model}"
    details = [f"{core}, {where}" if core else where, isa]
    l2 = l2_cache() if l2 is None else l2
    if l2:
        details.append(f"L2 {l2}")
    return f"{name} ({'; '.join(details)})"


def l2_cache() -> str:
    """The first core's L2 size as sysfs gives it ("512K"), or ""."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                return (index / "size").read_text().strip()
        except OSError:
            continue
    return ""


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
    """The short name printed beside every figure: the processor and numpy's BLAS, e.g. "AMD EPYC (Zen 3,
    family 25 model 1; AVX2, no AVX-512; L2 512K), OpenBLAS 0.3.31 Haswell" (what the figures depend on most)."""
    return f"{cpu}, {numpy_blas(libs)}"


def machine_info() -> dict:
    info, libs = cpuinfo(), blas()
    cpu = cpu_description(info)
    return {
        "name": machine_name(cpu, libs),
        "cpu": cpu,
        "cpu_model": cpu_model(info),
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
