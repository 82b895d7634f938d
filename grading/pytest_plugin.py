"""pytest plugin: `pytest --submission PATH --assignment NAME` runs the checks as tests.

One test per check per submission, named `<file>::<part>-<check>` (e.g. `alice.ipynb::mlp-weight_gradients`),
so `-n auto` (pytest-xdist) parallelises and `--junitxml` reports; each test records its `score` and
`max_score` as junit properties, and a failed test's message is the check's explanation (the first
diverging tensor, its numbers and the diagnosis). PATH may be given several times, each a file
(.py or .ipynb) or a folder of them. With --submission, pytest collects the submissions only (the
project's own tests are not run); the submissions are never imported into pytest's process.

Grading runs once per submission and pytest process (its checks share it); with xdist,
`--dist loadfile` keeps a submission's checks on one worker so nothing is graded twice.

Without --submission the plugin is inert: two options are added and nothing is imported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_STATE: dict = {}  # per process: roots, assignment, graded parts, the temporary module folder


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bprop-grading", "checking student backprop submissions (bprop)")
    group.addoption(
        "--submission",
        action="append",
        default=[],
        metavar="PATH",
        help="a submission (.py or .ipynb) or a folder of them; repeatable. Collects the submissions' checks only.",
    )
    group.addoption(
        "--assignment",
        default=None,
        metavar="NAME",
        help="built-in assignment (layer-api, function-api, class-api) or the path of an assignment file",
    )
    group.addoption("--grading-wall-s", type=float, default=None, help="wall-clock limit per sandboxed call (s)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    paths = config.getoption("--submission")
    if not paths:
        return
    name = config.getoption("--assignment")
    if not name:
        raise pytest.UsageError("--submission needs --assignment NAME (layer-api, function-api, class-api, or a file)")
    from grading.assignment import AssignmentError, load_assignment

    try:
        assignment = load_assignment(name)
    except AssignmentError as e:
        raise pytest.UsageError(str(e)) from None
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise pytest.UsageError(f"--submission: no such file or folder: {', '.join(missing)}")
    roots = [Path(p).absolute() for p in paths] + [Path(p).resolve() for p in paths]
    _STATE.update(roots=roots, assignment=assignment, graded={})
    _STATE["wall_s"] = config.getoption("--grading-wall-s")
    config.args[:] = [str(Path(p)) for p in paths]  # collect the submissions, not the test paths


def pytest_unconfigure(config: pytest.Config) -> None:
    tmp = _STATE.pop("tmp", None)
    if tmp is not None:
        tmp.cleanup()
    _STATE.clear()


def _is_submission(path: Path) -> bool:
    if "roots" not in _STATE or path.suffix not in (".py", ".ipynb"):
        return False
    # by where it was found, not where it points: a symlink to a file outside is collected, and then
    # refused unread with its verdict (grading.notebook reads with O_NOFOLLOW), not silently skipped
    path = path.absolute()
    return any(path == r or r in path.parents for r in _STATE["roots"]) and not any(
        p.startswith((".", "__")) for p in path.parts[-1:]
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if _is_submission(file_path):
        return SubmissionFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    """A submission named like a test module must not be imported by pytest's python plugin."""
    if _is_submission(module_path):
        return _Nothing.from_parent(parent, path=module_path)
    return None


class _Nothing(pytest.File):
    def collect(self):
        return []


class SubmissionFile(pytest.File):
    def collect(self):
        assignment = _STATE["assignment"]
        for part in assignment.parts:
            for check in part.checks:
                yield CheckItem.from_parent(self, name=f"{part.id}-{check.name}", part_id=part.id, check=check.name)


class CheckFailed(Exception):
    """A check scored below its points; the message is its explanation."""


class CheckItem(pytest.Item):
    def __init__(self, *, part_id: str, check: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.part_id, self.check = part_id, check

    def runtest(self) -> None:
        result = _check_result(self.path, self.part_id, self.check)
        self.user_properties.append(("score", result.score))
        self.user_properties.append(("max_score", result.points))
        if not result.passed:
            raise CheckFailed(f"{result.score:g}/{result.points:g}: {result.output}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            notes = _STATE.get("notes", {}).get(self.path)
            return str(excinfo.value) + (f"\n\n{notes}" if notes else "")
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: {self.part_id}: {self.check}"


def _check_result(path: Path, part_id: str, check: str):
    """Grade the submission (every part) once per process, then look the check up."""
    import tempfile

    from grading.checks import CheckResult, grade_module
    from grading.notebook import SubmissionError, write_module
    from grading.sandbox import Limits

    assignment = _STATE["assignment"]
    if path not in _STATE["graded"]:
        if "tmp" not in _STATE:
            _STATE["tmp"] = tempfile.TemporaryDirectory(prefix="bprop-pytest-")
        folder = Path(_STATE["tmp"].name) / str(len(_STATE["graded"]))
        try:
            module_path, extracted = write_module(path, assignment.needed_names(), folder)
        except (SubmissionError, OSError, UnicodeDecodeError) as e:
            results = [
                CheckResult(p.id, c.name, c.points, 0.0, f"not run: {e}") for p in assignment.parts for c in p.checks
            ]
        else:
            _STATE.setdefault("notes", {})[path] = extracted.summary()
            wall = _STATE.get("wall_s")
            timing = {"wall_s": wall, "cpu_s": wall} if wall else {}
            limits = Limits(**timing, forbidden=assignment.forbidden)
            results = [r for checks, _ in grade_module(module_path, list(assignment.parts), limits) for r in checks]
        _STATE["graded"][path] = results
    return next(r for r in _STATE["graded"][path] if r.part == part_id and r.name == check)
