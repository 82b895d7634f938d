"""Hostile: writes outside its folder (and, as a control, inside it)."""

import os


def write(paths):
    results = {}
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("written by a submission")
            results[path] = "written"
        except OSError as e:
            results[path] = f"{type(e).__name__}: {e}"
    with open("own_file.txt", "w") as f:
        f.write("mine")
    results["own_file.txt"] = open("own_file.txt").read()
    results["cwd"] = os.getcwd()
    return results
