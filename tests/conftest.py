"""Shared pytest set-up: the --mnist switch for the real-data validation tests, the `mnist` fixture,
the smoke tier (`pytest -m smoke`) and the longest-first order (tests/durations.json, --store-durations)."""

import json
import os
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")

# The smoke tier, `pytest -m smoke` (README, "Testing"): the reference's own tests, its fast forms
# and mutant killers, finite differences and torch parity at small batches, the spec, the runner's
# cost model. Chosen to kill the mutants the full mutation run kills (scripts/mutation.sh with
# MUTATION_TESTS=smoke measures it) in about a minute on 2 cores. A test also joins with
# @pytest.mark.smoke. Never in the tier: keras (TensorFlow's start alone is seconds), slow, mnist.
SMOKE_MODULES = {
    "test_layers.py",
    "test_losses.py",
    "test_optimizers.py",
    "test_errors.py",
    "test_mutants.py",
    "test_fast_forms.py",
    "test_spec.py",
    "test_parity.py",  # its torch half
    "test_torch_twin.py",
}
# In these modules, everything but the big cases (their code is the same at batch 1 and 7).
SMOKE_SMALL_CASES = {"test_numeric.py": ("batch32", "test_preset_matches")}
SMOKE_MARKED = {"test_runner.py"}  # modules with tests marked @pytest.mark.smoke one by one
SMOKE_NEVER = ("keras", "slow", "mnist")


def pytest_ignore_collect(collection_path, config):
    """`-m smoke` alone: the other test files are not even imported (TensorFlow's import is seconds)."""
    if config.getoption("markexpr", "") == "smoke" and collection_path.suffix == ".py":
        name = collection_path.name
        if name.startswith("test_") and name not in SMOKE_MODULES | set(SMOKE_SMALL_CASES) | SMOKE_MARKED:
            return True
    return None


def _in_smoke_tier(item) -> bool:
    if any(m in item.keywords for m in SMOKE_NEVER):
        return False
    module = item.path.name
    if module in SMOKE_MODULES:
        return True
    if module in SMOKE_SMALL_CASES:
        return not any(word in item.nodeid for word in SMOKE_SMALL_CASES[module])
    return False


def pytest_addoption(parser):
    parser.addoption("--mnist", action="store_true", help="also run the tests marked mnist (real MNIST, minutes)")
    parser.addoption(
        "--store-durations",
        action="store_true",
        help=f"write each test's seconds (setup + call + teardown) into {DURATIONS.name} (tests not run keep theirs)",
    )


# Longest first --------------------------------------------------------------------------------------
# pytest-xdist (--dist load) hands the tests out in collection order, so a long test collected last
# (the real-MNIST validations are in the last file) runs alone at the end while the other worker
# idles. Modules are therefore collected heaviest first by the seconds tests/durations.json holds
# for their tests, and inside a module without module- or class-scoped fixtures, its tests longest
# first (with such fixtures the module keeps its order: a fixture is set up once per run of the
# module's tests on a worker). Tests the file does not know count 0 s and keep their order.
# BPROP_TEST_ORDER=collection keeps pytest's own order.


def _durations() -> dict[str, float]:
    if os.environ.get("BPROP_TEST_ORDER") == "collection" or not DURATIONS.exists():
        return {}
    return {k: float(v) for k, v in json.loads(DURATIONS.read_text())["seconds"].items()}


def _shares_fixtures(items) -> bool:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for defs in info.name2fixturedefs.values() if info else ():
            if any(d.scope in ("module", "class", "package") for d in defs):
                return True
    return False


def longest_first(items, seconds: dict[str, float]) -> list:
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    weight = {m: sum(seconds.get(i.nodeid, 0.0) for i in its) for m, its in modules.items()}
    ordered = []
    for m in sorted(modules, key=lambda m: -weight[m]):  # stable: unknown modules keep their order
        its = modules[m]
        if not _shares_fixtures(its):
            its = sorted(its, key=lambda i: -seconds.get(i.nodeid, 0.0))
        ordered += its
    return ordered


# Handing the tests out (pytest-xdist) ---------------------------------------------------------------
# xdist's default `--dist load` first sends each worker a chunk of consecutive tests, a quarter of its
# share (about 467 tests each of 3,740): with the heaviest modules collected first, every real-MNIST
# validation, the small validation run and the benchmarks sat in gw0's first chunk, and gw1 finished
# its share minutes earlier (simulated from a run's durations, README "Longest first"). Instead the
# tests go out one at a time, in collection order (heaviest first), to whichever worker holds fewer
# than three: longest-processing-time-first list scheduling. The modules below, whose module-scoped
# fixture is a whole run (a validation, a graded class, a built autograder), go out as one unit, so
# that fixture is set up once, on one worker, instead of once on each (the small validation run of
# tests/test_validate.py ran on both). Any other `--dist` (loadscope, loadfile, ...) keeps xdist's own.
ONE_WORKER_MODULES = {
    "test_validate.py",  # small_run: every preset, both dtypes, three frameworks
    "test_shards.py",  # runs: a 30-submission class graded whole and as three shards
    "test_grading_cli.py",  # ran, nasty: class folders graded through the CLI
    "test_grading_plugin.py",  # junit: a class graded through the pytest plugin
    "test_reports.py",  # graded: a class graded with every report
    "test_notebook_screenshot.py",  # page: a notebook executed and rendered
    "test_deploy.py",  # autograder: the Gradescope zip unpacked and set up
    "test_data_standardise.py",  # worker_digests: a fresh process importing torch and TensorFlow
}
# Modules that read one in-process cache go out together, as one unit: tests/notebook_cells.py's
# `graded` grades each layer/function/class fixture submission once per process, and these three
# modules grade the same 38 files with the same arguments (split over two workers, about half would
# be graded twice).
ONE_WORKER_GROUPS = {
    "gradings of tests/submissions": (
        "test_notebook_agree.py",
        "test_notebook_shrink.py",
        "test_grading_submissions.py",
    ),
}
_GROUP_OF = {module: group for group, modules in ONE_WORKER_GROUPS.items() for module in modules}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist", "load") != "load":
        return None  # xdist's own scheduler for the --dist asked for
    from xdist.scheduler import LoadScopeScheduling

    class OneAtATime(LoadScopeScheduling):
        """A unit per test, per module of ONE_WORKER_MODULES or per group of ONE_WORKER_GROUPS, in
        collection order (a group's place is its first test's)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            name = Path(module).name
            if name in _GROUP_OF:
                return _GROUP_OF[name]
            return module if name in ONE_WORKER_MODULES else nodeid

        def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
            nodeid = self.registered_collections[node][item_index]
            work = self.assigned_work[node]
            unit = work[self._split_scope(nodeid)]
            unit[nodeid] = True
            if all(unit.values()):  # done: forget it (xdist would sum over every unit ever sent, per test)
                del work[self._split_scope(nodeid)]
            self._reschedule(node)

    config.option.loadscopereorder = False  # units in collection order, not by their number of tests
    return OneAtATime(config, log)


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("--store-durations") or hasattr(config, "workerinput"):
        return  # an xdist worker: the controller gets every report and writes the file
    old = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {"seconds": {}}
    # A test this run measured gets its new figure, or leaves the file under 0.5 s (it had become
    # fast: its old figure would misplace it); the tests it did not run keep theirs.
    kept = {k: v for k, v in old["seconds"].items() if k not in _measured}
    seconds = {**kept, **{k: round(v, 2) for k, v in _measured.items() if v >= 0.5}}
    DURATIONS.write_text(
        json.dumps({"about": old.get("about", ""), "seconds": dict(sorted(seconds.items()))}, indent=1) + "\n"
    )


def pytest_collection_modifyitems(config, items):
    seconds = _durations()
    if seconds:
        items[:] = longest_first(items, seconds)
    for item in items:
        if _in_smoke_tier(item):
            item.add_marker(pytest.mark.smoke)
    if config.getoption("--mnist"):
        return
    skip = pytest.mark.skip(reason="real-MNIST validation: run with --mnist")
    for item in items:
        if "mnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST ((x_train, y_train), (x_test, y_test)) from data_loaders, or a skip saying why not."""
    data_loaders = pytest.importorskip("data_loaders")
    try:
        return data_loaders.load_mnist()
    except data_loaders.DataError as e:
        pytest.skip(f"real MNIST not available offline: {e}")
