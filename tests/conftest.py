"""Shared pytest set-up: the --mnist switch for the real-data validation tests."""

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
