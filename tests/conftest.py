"""Shared pytest set-up: the --mnist switch for the real-data validation tests, the `mnist` fixture,
and the smoke tier (`pytest -m smoke`)."""


import pytest

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


def pytest_collection_modifyitems(config, items):
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
