"""The reference stays pure numpy: no framework import anywhere below reference/."""

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"torch", "tensorflow", "keras", "jax", "scipy", "sklearn"}
REFERENCE = Path(__file__).resolve().parent.parent / "reference"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "__import__",
            "import_module",
        ):
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(REFERENCE.rglob("*.py")), ids=lambda p: p.name)
def test_reference_imports_no_framework(path):
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(REFERENCE.parent)} imports {sorted(bad)}; reference/ must stay pure numpy"


def test_checker_sees_a_forbidden_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy as np\nfrom torch import nn\nimportlib.import_module('jax.numpy')\n")
    assert imported_modules(probe) & FORBIDDEN == {"torch", "jax"}
