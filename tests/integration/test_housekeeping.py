"""The running service deletes forwarded windows past retention, and only those."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from core.log import LogConfig
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig
from tidegate.app import Service
from tidegate.config import RunConfig

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

HOUR = 3_600_000
NOW_MS = 1_767_225_600_000 + 10 * HOUR + 5_000  # ten hours and five seconds after a midnight


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def windows_on_disk(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "log" / "streams" / "sensors").iterdir() if p.is_dir())


def test_forwarded_windows_past_retention_are_deleted_by_the_service(mosquitto: Mosquitto, tmp_path: Path) -> None:
    started = time.monotonic()
    service = Service(
        RunConfig(
            data_dir=tmp_path / "gw",
            mqtt=MqttConfig(port=mosquitto.port, client_id="gw-housekeeping"),
            log=LogConfig(retention_ms=2 * HOUR),
        ),
        clock=lambda: (NOW_MS + (time.monotonic() - started) * 1000) / 1000,  # a trusted gateway clock
    )
    service.housekeeping_interval_s = 0.3
    service.start()
    try:
        time.sleep(0.5)
        # One reading in each of the last five hours: hours 5..9 of the day.
        # Windows 5-6, 6-7 and 7-8 ended more than two hours ago.
        lines = "".join(
            json.dumps({"d": "n1", "m": "t", "ts": NOW_MS - h * HOUR, "value": h}) + "\n" for h in range(1, 6)
        )
        subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", "sensors/n1", "-l"],
                       input=lines.encode(), check=True, timeout=30)
        wait_for(lambda: service.metrics.total("tidegate_readings_out_total") == 5)
        # The first housekeeping pass runs a second after start: windows that
        # ended more than two hours ago go, the two recent ones stay.
        wait_for(lambda: service.metrics.total("tidegate_log_deleted_windows_total") >= 3)
        time.sleep(0.2)
        assert len(windows_on_disk(tmp_path / "gw")) == 2
        assert service.metrics.get("tidegate_log_deleted_windows_total", {"by": "retention"}) == 3
    finally:
        service.stop()


def test_dead_letters_age_out_by_retention_though_they_are_never_forwarded(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    started = time.monotonic()
    ahead_s = [0.0]  # how far the gateway clock has been moved on
    service = Service(
        RunConfig(
            data_dir=tmp_path / "gw",
            mqtt=MqttConfig(port=mosquitto.port, client_id="gw-housekeeping-dl"),
            log=LogConfig(retention_ms=2 * HOUR),
        ),
        clock=lambda: (NOW_MS + (time.monotonic() - started) * 1000) / 1000 + ahead_s[0],
    )
    service.housekeeping_interval_s = 0.3
    service.start()
    letters = tmp_path / "gw" / "log" / "streams" / "_deadletter"
    try:
        time.sleep(0.5)
        subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", "sensors/n1", "-m", "{not json"],
                       check=True, timeout=30)
        wait_for(lambda: service.metrics.total("tidegate_rejected_total") == 1)
        time.sleep(1.0)  # housekeeping passes while the letter is young: it stays
        assert any(p.is_dir() for p in letters.iterdir())
        ahead_s[0] = 3 * HOUR / 1000  # three hours on: its window ended more than two hours ago
        wait_for(lambda: not any(p.is_dir() for p in letters.iterdir()))
        assert service.metrics.get("tidegate_log_deleted_windows_total", {"by": "retention"}) >= 1
    finally:
        service.stop()
