"""What a user sees of an unsynchronised gateway clock: /metrics and the status page's last errors.

A running Service with its HTTP endpoint on loopback and a real Mosquitto;
the clock probe is a fake that says "not synchronised" (the kernel's answer
cannot be changed from a test), put in place before the gateway starts.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from edge.clocksync import ClockProbe
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig
from tidegate.app import RunConfig, Service
from tidegate.config import HttpConfig

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def test_metrics_and_last_errors_show_an_unsynchronised_clock(mosquitto: Mosquitto, tmp_path: Path) -> None:
    service = Service(RunConfig(data_dir=tmp_path / "gw", mqtt=MqttConfig(port=mosquitto.port, client_id="tg-clock"),
                                http=HttpConfig(host="127.0.0.1", port=0)))
    probe = ClockProbe(every_s=0.05, synced=lambda: False)
    service.gateway.clock_probe = probe.sample
    service.start()
    try:
        port = service.http_port
        assert port is not None
        for i in range(20):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1",
                            "-t", "sensors/dev-1", "-m", json.dumps({"m": "temp_c", "v": 20 + i})],
                           check=True, timeout=30)
        deadline = time.monotonic() + 20
        while service.metrics.total("tidegate_readings_in_total") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = get(port, "/metrics")
        status = json.loads(get(port, "/api/status"))
    finally:
        service.stop()
    assert "\ntidegate_clock_synced 0\n" in metrics
    assert "\ntidegate_readings_unsynced_total 20\n" in metrics  # no device time in them: timed by the gateway
    clock_errors = [e for e in status["errors"] if e["logger"] == "tidegate.clock"]
    assert len(clock_errors) == 1, status["errors"]  # once for the change, not once per reading
    assert clock_errors[0]["level"] == "warning"
    assert clock_errors[0]["message"].startswith("gateway clock not synchronised (NTP)")
