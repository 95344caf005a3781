"""The shipped hardware/raspberry-pi/mosquitto.conf, as it is, on a real Mosquitto with tidegate's intake."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto, free_port
from edge.mqtt_intake import MqttConfig, MqttIntake, Received

pytestmark = pytest.mark.mosquitto

CONF = Path(__file__).resolve().parents[2] / "hardware" / "raspberry-pi" / "mosquitto.conf"

#: The only lines the test changes: where files live, and the port (on loopback).
ADJUSTED = {
    "listener 1883": "listener @PORT@ 127.0.0.1",
    "password_file /etc/mosquitto/passwd": "password_file @DIR@/passwd",
    "persistence_location /var/lib/mosquitto/": "persistence_location @DIR@/",
}


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def shipped_config() -> str:
    lines = CONF.read_text().splitlines()
    for original in ADJUSTED:
        assert original in lines, f"{CONF} no longer has the line {original!r}: update this test"
    return "\n".join(ADJUSTED.get(line, line) for line in lines) + "\n"


def settings(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_shipped_config_bounds_what_a_broker_crash_can_lose() -> None:
    conf = settings(CONF.read_text())
    assert conf["persistence"] == "true"
    assert int(conf["autosave_interval"]) <= 60 and conf.get("autosave_on_changes", "false") == "false"
    assert int(conf["max_queued_messages"]) >= 100_000 and int(conf["max_inflight_messages"]) >= 1000
    # tidegate's own session expiry (7 days) is what the comment promises, and shorter than the broker's cap.
    assert MqttConfig().session_expiry_s == 7 * 86400 and "7 days" in CONF.read_text()
    assert conf["persistent_client_expiration"] == "14d"


def test_the_shipped_config_loads_and_the_intake_connects_subscribes_and_keeps_its_session(tmp_path: Path) -> None:
    state = tmp_path / "broker"
    state.mkdir()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(state / "passwd"), "tidegate", "gw-secret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(state / "passwd"), "sensor", "s-secret"], check=True)
    broker = Mosquitto(state, port=free_port(), config_text=shipped_config())
    broker.start()
    try:
        config = MqttConfig(port=broker.port, username="tidegate", password="gw-secret", subscriptions=("sensors/#",))
        events: list[str] = []
        got: list[Received] = []
        intake = MqttIntake(config, got.append, on_event=events.append, state_dir=tmp_path / "data")
        intake.start()
        wait_for(lambda: "subscribed" in events)
        intake.stop()
        # Anonymous clients are refused; a sensor with its password publishes while tidegate is away.
        anonymous = subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "sensors/x", "-m", "1"],
                                   capture_output=True, timeout=30)
        assert anonymous.returncode != 0
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-u", "sensor", "-P", "s-secret", "-q", "1",
                        "-t", "sensors/n1/t", "-l"], input=b"".join(b'{"value": %d}\n' % i for i in range(10)),
                       check=True, timeout=30)
        broker.restart()  # a clean restart saves and reloads the persistence file
        assert (state / "mosquitto.db").exists()
        events.clear()
        intake = MqttIntake(config, lambda m: (got.append(m), intake.ack(m)), on_event=events.append,
                            state_dir=tmp_path / "data")
        intake.start()
        try:
            wait_for(lambda: len(got) == 10)
        finally:
            intake.stop()
    finally:
        broker.stop()
    assert [m.payload for m in got] == [b'{"value": %d}' % i for i in range(10)]
    assert "session_lost" not in events and "connected" in events
    # The config logs to syslog; what reaches the file is Mosquitto's own complaints about the config.
    log = (state / "mosquitto.log").read_text(errors="replace")
    assert "Error" not in log, log
