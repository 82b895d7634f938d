"""Hostile: undoes the run-time import blocker, then goes looking for the forbidden files.

It clears sys.meta_path of the blocker, puts every site-packages / dist-packages it can name back on
sys.path, and loads torch, scipy and the grader's own packages by file path. `sites` is the list of
those directories as the grader sees them (a non-editable install puts reference/ and grading/
there). Every attempt must fail: their files are not in the child's file system.
"""

import importlib
import importlib.util
import os
import sys


def undo(sites, names=("torch", "scipy", "keras", "tensorflow", "reference", "grading", "oracles", "bprop")):
    sys.meta_path[:] = [f for f in sys.meta_path if "Blocker" not in type(f).__name__]
    sys.path[:0] = list(sites)
    for name in list(sys.modules):
        if name.partition(".")[0] in names:
            del sys.modules[name]
    importlib.invalidate_caches()
    found = {}
    for name in names:
        try:
            module = importlib.import_module(name)
            found[f"import {name}"] = f"imported: {sorted(vars(module))[:8]}"
            if not hasattr(module, "__file__") or module.__file__ is None:
                found[f"import {name}"] = "an empty namespace package"
        except Exception as e:  # every outcome is the result
            found[f"import {name}"] = f"{type(e).__name__}: {e}"
        for site in sites:
            init = os.path.join(site, name, "__init__.py")
            try:
                spec = importlib.util.spec_from_file_location(name + "_by_path", init)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                found[f"{init}"] = "loaded"
            except Exception as e:  # every outcome is the result
                found[f"{init}"] = f"{type(e).__name__}"
    return found
