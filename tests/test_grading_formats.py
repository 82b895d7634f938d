"""The format registry (grading/formats/): every registered format is one module with the whole
interface, and the grader's shared modules name no format."""

import re
from pathlib import Path

import pytest

from grading import assignment, formats

GRADING = Path(__file__).parent.parent / "grading"
REQUIRED = ("NAME", "TITLE", "CHECKS", "NAMES", "DRIVER", "parse_options", "needed_names", "build_cases", "observe")


@pytest.mark.parametrize("name", formats.names())
def test_every_registered_format_defines_the_interface(name):
    module = formats.get(name)
    assert [a for a in REQUIRED if not hasattr(module, a)] == []
    assert module.NAME == name and isinstance(module.TITLE, str) and module.TITLE
    assert Path(module.DRIVER).is_file(), module.DRIVER
    assert len(set(module.CHECKS)) == len(module.CHECKS)


def test_the_notebook_formats_are_registered_first_in_their_order():
    assert formats.names()[:4] == ("layer", "function", "class", "logistic")
    assert assignment.FORMATS == formats.names()


def test_the_per_format_tables_of_before_read_the_registry():
    assert assignment.CHECKS["logistic"] == ("forward", "loss", "weight_gradients", "bias_gradients", "stability")
    assert assignment.DEFAULT_NAMES["function"]["derivative"] == "dsigmoid"
    with pytest.raises(AttributeError, match="no attribute 'PROVIDABLE'"):
        assignment.PROVIDABLE  # noqa: B018


@pytest.mark.parametrize("shared", ["assignment.py", "checks.py", "adapters.py", "shrink.py", "diagnose.py"])
def test_no_shared_module_branches_on_a_format(shared):
    text = (GRADING / shared).read_text(encoding="utf-8")
    branches = re.findall(r"\bformat\s*(?:==|!=|in|not in)\s*[(\"'\[]", text)
    named = [n for n in formats.names() if re.search(rf"\"{n}\"\s*:", text)]  # a dict keyed by format
    assert branches == [] and named == [], (branches, named)
