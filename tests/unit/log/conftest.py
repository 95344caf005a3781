from __future__ import annotations

import pytest

from core.log import Log, LogConfig
from tests.unit.log.memfs import MemFS

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, an hour boundary
HOUR = 3_600_000


@pytest.fixture
def fs() -> MemFS:
    return MemFS()


@pytest.fixture
def damage() -> list:
    return []


def open_log(fs: MemFS, config: LogConfig | None = None, damage: list | None = None, **kw) -> Log:
    return Log(fs, config or LogConfig(), reporter=(damage.append if damage is not None else None), **kw)


@pytest.fixture(params=["memfs", pytest.param("os", marks=pytest.mark.slow)])
def disk(request, tmp_path):
    """The same scenario on a MemFS and on real files through edge.logstore (tests/unit/log/realfs.py)."""
    from tests.unit.log.realfs import MemDisk, OsDisk

    place = MemDisk() if request.param == "memfs" else OsDisk(tmp_path / "data")
    yield place
    place.close()


@pytest.fixture
def long_run(request) -> bool:
    """True under --long: run every case instead of a sample."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(params=["memfs", pytest.param("os", marks=pytest.mark.slow)])
def faulty(request, tmp_path):
    """Fresh fault-injecting file systems: MemFS, or the real OsFileSystem behind FaultyFileSystem."""
    from tests.unit.log.realfs import FaultyDisks

    disks = FaultyDisks(request.param, tmp_path)
    yield disks
    disks.close()
