"""Hostile: tries to use the grader's reference instead of its own backprop."""

import importlib
import sys


def steal(project):
    results = {}
    for name in (
        "reference",
        "reference.network",
        "oracles.compare",
        "grading",
        "grading.sandbox",
        "data_loaders",
        "bprop",
    ):
        try:
            importlib.import_module(name)
            results[f"import {name}"] = "imported"
        except ImportError as e:
            results[f"import {name}"] = f"{type(e).__name__}: {e}"
    sys.path.insert(0, project)
    sys.meta_path[:] = [f for f in sys.meta_path if "Blocker" not in type(f).__name__]
    try:
        importlib.import_module("reference.network")
        results["import after removing the blocker"] = "imported"
    except ImportError as e:
        results["import after removing the blocker"] = f"{type(e).__name__}: {e}"
    try:
        with open(f"{project}/reference/network.py") as f:
            results["read reference/network.py"] = f.read()[:100]
    except OSError as e:
        results["read reference/network.py"] = f"{type(e).__name__}: {e}"
    import numpy

    results["numpy"] = numpy.__version__
    return results
