"""Shared pytest set-up: the --mnist switch for the real-data validation tests, and the `mnist` fixture."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--mnist", action="store_true", help="also run the tests marked mnist (real MNIST, minutes)")


def pytest_collection_modifyitems(config, items):
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
