"""Fixtures for the firmware tests: a staged board file system and per-module case runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware.harness import Cases, load_cases, run_on_micropython, stage_device
from tests.fixtures.micropython import MicroPython


@pytest.fixture(scope="session")
def device_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A board's file system as deploy lays it out, plus shims and case modules."""
    return stage_device(tmp_path_factory.mktemp("device"))


def cases_fixture(module_name: str):  # type: ignore[no-untyped-def]
    """A module-scoped fixture running the case module on both VMs (one MicroPython run)."""

    @pytest.fixture(scope="module")
    def fixture(micropython: MicroPython, device_root: Path) -> Cases:
        module = load_cases(module_name)
        return Cases(module, run_on_micropython(micropython, device_root, module))

    return fixture
