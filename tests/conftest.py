"""Shared test set-up: real servers as fixtures, and the --long flag."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.mosquitto",
    "tests.fixtures.kafka",
    "tests.fixtures.micropython",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False, help="also run long fault and soak runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip_long = pytest.mark.skip(reason="long run: pass --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip_long)
