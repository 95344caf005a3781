"""MQTT intake against a real Mosquitto: persistent session, manual acks, drops seen."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig, MqttIntake, Received

pytestmark = pytest.mark.mosquitto


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def publish(port: int, topic: str, payloads: list[str]) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l"],
        input="".join(p + "\n" for p in payloads).encode(), check=True, timeout=30,
    )


def test_unacknowledged_messages_come_back_after_a_restart_of_the_gateway(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-redelivery", subscriptions=("sensors/#",))
    first: list[Received] = []
    intake = MqttIntake(config, first.append)
    intake.start()
    try:
        wait_for(lambda: intake._client.is_connected())
        time.sleep(0.2)  # subscription in place
        publish(mosquitto.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(10)])
        wait_for(lambda: len(first) == 10)
        for message in first[:4]:  # the log holds only these four durably
            intake.ack(message)
        time.sleep(0.2)
    finally:
        intake.stop()  # "crash": six messages never acknowledged

    second: list[Received] = []
    intake = MqttIntake(config, second.append)
    intake.start()
    try:
        wait_for(lambda: len(second) >= 6)
        time.sleep(0.3)
        assert sorted(m.payload for m in second) == sorted(m.payload for m in first[4:])
        for message in second:
            intake.ack(message)
    finally:
        intake.stop()


def test_messages_queued_while_the_gateway_is_away_are_delivered(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-offline", subscriptions=("sensors/#",))
    intake = MqttIntake(config, lambda m: None)
    intake.start()
    wait_for(lambda: intake._client.is_connected())
    time.sleep(0.2)
    intake.stop()
    publish(mosquitto.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(300)])  # past Mosquitto's default 20 in flight
    got: list[Received] = []
    events: list[str] = []
    lock = threading.Lock()

    def take(message: Received) -> None:
        with lock:
            got.append(message)
        intake2.ack(message)

    intake2 = MqttIntake(config, take, on_event=events.append)
    intake2.start()
    try:
        wait_for(lambda: len(got) == 300)
    finally:
        intake2.stop()
    assert [m.payload for m in got] == [f'{{"value": {i}}}'.encode() for i in range(300)]
    assert "session_lost" not in events


def test_a_broker_queue_overflow_is_seen_and_reported(tmp_path: Path) -> None:
    # A broker with Mosquitto's small default-like queue, to make it drop.
    with Mosquitto(tmp_path / "small", extra_config="max_queued_messages 5\nsys_interval 1\n") as broker:
        config = MqttConfig(port=broker.port, client_id="gw-drops", subscriptions=("sensors/#",))
        intake = MqttIntake(config, lambda m: None)
        intake.start()
        wait_for(lambda: intake._client.is_connected())
        time.sleep(0.2)
        intake.stop()
        publish(broker.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(20)])
        dropped: list[int] = []
        got: list[Received] = []
        intake = MqttIntake(config, lambda m: (got.append(m), intake.ack(m)), on_broker_dropped=dropped.append)
        intake.start()
        try:
            wait_for(lambda: dropped and dropped[-1] >= 15, timeout=5)
        finally:
            intake.stop()
        assert len(got) == 5
        assert dropped[-1] == 15
