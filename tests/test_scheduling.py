"""tests/conftest.py's scheduler for pytest-xdist: one test at a time in collection order to the worker
with fewer than three pending, the modules of ONE_WORKER_MODULES as one unit each (README, "Longest
first"), and the modules of a group of ONE_WORKER_GROUPS as one unit. Driven here with two stand-in
workers, as xdist's DSession drives it."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import conftest
import pytest

pytest.importorskip("xdist")
TESTS = Path(__file__).parent


class Worker:
    """What the scheduler touches of xdist's WorkerController: the tests it is sent, its shutdown."""

    def __init__(self, name: str) -> None:
        self.name, self.sent, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices) -> None:
        self.sent += list(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def scheduler(collection: list[str]):
    option = SimpleNamespace(dist="load", tx=["2*popen"], loadscopereorder=True)
    config = SimpleNamespace(option=option, getoption=lambda name, default=None: getattr(option, name, default))
    config.getvalue = config.getoption
    sched = conftest.pytest_xdist_make_scheduler(config, log=None)
    workers = [Worker("gw0"), Worker("gw1")]
    for w in workers:
        sched.add_node(w)
        sched.add_node_collection(w, collection)
    sched.schedule()
    return sched, workers


def run_to_the_end(sched, workers, collection, slow: set[str]) -> None:
    """Each worker runs its oldest pending test; a slow test takes 10 steps, the others 1."""
    done = {w: 0 for w in workers}  # tests of w.sent completed
    busy = {w: 0 for w in workers}
    while any(done[w] < len(w.sent) for w in workers):
        for w in workers:
            if done[w] < len(w.sent):
                busy[w] += 1
                if busy[w] >= (10 if collection[w.sent[done[w]]] in slow else 1):
                    busy[w] = 0
                    done[w] += 1
                    sched.mark_test_complete(w, w.sent[done[w] - 1])


@pytest.mark.parametrize("slow", [(), ("tests/test_a.py::t0",)], ids=["even", "gw0-on-a-slow-test"])
def test_a_one_worker_module_goes_to_one_worker_and_the_rest_one_at_a_time(slow):
    collection = [f"tests/test_a.py::t{i}" for i in range(6)]
    collection += [f"tests/test_validate.py::t{i}" for i in range(4)]  # one unit: its fixture set up once
    collection += [f"tests/test_z.py::t{i}" for i in range(12)]
    sched, workers = scheduler(collection)
    assert [w.sent for w in workers] == [[0, 2], [1, 3]]  # one test each, then one more each: never a chunk
    run_to_the_end(sched, workers, collection, slow=set(slow))
    owners = {collection[i]: w.name for w in workers for i in w.sent}
    assert sorted(owners) == sorted(collection)  # every test sent once
    assert sum(len(w.sent) for w in workers) == len(collection)
    assert len({owners[n] for n in collection if "test_validate.py" in n}) == 1
    if slow:  # gw0 sits on the slow test: gw1 takes the one-worker module and most of the rest meanwhile
        assert owners["tests/test_validate.py::t0"] == "gw1"
        assert sum(o == "gw1" for o in owners.values()) > sum(o == "gw0" for o in owners.values())
    else:  # both keep pace: the single tests alternate
        assert {owners[f"tests/test_z.py::t{i}"] for i in range(12)} == {"gw0", "gw1"}
    assert all(w.shutting_down for w in workers)


def test_a_group_goes_to_one_worker_even_when_its_modules_are_apart():
    """The modules of a group share an in-process cache: however far apart they are collected, every test
    of the group lands on one worker (the unit goes out at its first test's place)."""
    first, second, third = conftest.ONE_WORKER_GROUPS["gradings of tests/submissions"]
    collection = [f"tests/{first}::t{i}" for i in range(5)]
    collection += [f"tests/test_a.py::t{i}" for i in range(8)]
    collection += [f"tests/{second}::t{i}" for i in range(3)]
    collection += [f"tests/test_z.py::t{i}" for i in range(8)]
    collection += [f"tests/{third}::t{i}" for i in range(4)]
    sched, workers = scheduler(collection)
    assert workers[0].sent[:1] == [0]  # the group is the first unit: it goes out first, whole
    run_to_the_end(sched, workers, collection, slow=set())
    owners = {collection[i]: w.name for w in workers for i in w.sent}
    assert sorted(owners) == sorted(collection)
    grouped = [n for n in collection if n.split("::")[0].split("/")[1] in (first, second, third)]
    assert len(grouped) == 12 and len({owners[n] for n in grouped}) == 1
    assert {owners[n] for n in collection if "test_z.py" in n} == {"gw0", "gw1"}  # the rest still spread


def test_another_dist_keeps_xdist_s_own_scheduler():
    option = SimpleNamespace(dist="loadfile")
    config = SimpleNamespace(option=option, getoption=lambda name, default=None: getattr(option, name, default))
    assert conftest.pytest_xdist_make_scheduler(config, log=None) is None


def module_scoped_fixtures(path: Path) -> list[str]:
    """Names of the functions decorated @pytest.fixture(scope="module" | "class" | "package")."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                scope = [k.value for k in getattr(dec, "keywords", []) if k.arg == "scope"]
                if scope and isinstance(scope[0], ast.Constant) and scope[0].value in ("module", "class", "package"):
                    names.append(node.name)
    return names


@pytest.mark.parametrize("module", sorted(conftest.ONE_WORKER_MODULES))
def test_every_one_worker_module_exists_and_has_a_module_fixture(module):
    assert (TESTS / module).is_file(), f"ONE_WORKER_MODULES names {module}, which is not in tests/"
    assert module_scoped_fixtures(TESTS / module), f"{module} has no module-scoped fixture to set up once"


@pytest.mark.parametrize("module", sorted(m for ms in conftest.ONE_WORKER_GROUPS.values() for m in ms))
def test_every_grouped_module_exists_and_reads_the_shared_gradings(module):
    """A group is there for its shared cache: each of its modules reads notebook_cells.graded."""
    assert (TESTS / module).is_file(), f"ONE_WORKER_GROUPS names {module}, which is not in tests/"
    assert "notebook_cells.graded" in (TESTS / module).read_text() or "graded" in {
        a.name
        for n in ast.walk(ast.parse((TESTS / module).read_text()))
        if isinstance(n, ast.ImportFrom) and n.module == "notebook_cells"
        for a in n.names
    }, f"{module} does not read notebook_cells.graded"
