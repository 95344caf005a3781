"""MQTT as the upstream: the bridge publishes batches with QoS 1, the central source expands them into Kafka.

Real brokers on loopback: a gateway-side Mosquitto (the intake's), an upstream
Mosquitto (the central MQTT broker) and Kafka for the readings topic.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.central import CentralConfig
from bridge.errors import TransportError, UpstreamConfigError
from bridge.mqtt_upstream import MqttBatchSource, MqttTransport, MqttUpstreamConfig
from bridge.transports import open_upstream
from core.batch import decode_header
from edge.mosquitto import Mosquitto
from tests.faults.harness import (
    ROOT,
    Central,
    Publisher,
    Tally,
    log_counts,
    start_gateway,
    stop_process,
    tail,
    wait_for_session,
)
from tests.fixtures.kafka import NewKafkaTopic
from tests.integration.test_central import batches_of, bridge_with_resends, check_exactly_once, read_all
from tests.kafka.broker import KafkaBroker


@pytest.fixture
def upstream_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A second Mosquitto: the central MQTT broker the bridge publishes to."""
    broker = Mosquitto(tmp_path / "upstream-mosquitto")
    broker.start()
    yield broker
    broker.stop()


class Subscriber:
    def __init__(self, port: int, topic: str = "tidegate/batches/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:6]}")
        client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, m, r, p: self._subscribed.set()
        client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert self._subscribed.wait(10)
        self.client = client

    def wait(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the transport -------------------------------------------------------------------


def test_open_upstream_makes_mqtt_transports_and_refuses_bad_addresses() -> None:
    transport = open_upstream("mqtt://user:secret@127.0.0.1:1999/site-7/batches?client_id=gw-7&timeout_s=2")
    assert isinstance(transport, MqttTransport)
    c = transport.config
    assert (c.host, c.port, c.prefix, c.client_id, c.username, c.password, c.timeout_s, c.tls) == (
        "127.0.0.1", 1999, "site-7/batches", "gw-7", "user", "secret", 2.0, False)
    assert "secret" not in repr(c)
    assert open_upstream("mqtts://broker.example.net").config.port == 8883  # type: ignore[attr-defined]
    for bad in ("mqtt:///nohost", "mqtt://h/a/+/b", "mqtt://h?colour=blue", "mqtt://h?timeout_s=soon"):
        with pytest.raises(UpstreamConfigError):
            open_upstream(bad)


@pytest.mark.mosquitto
def test_send_returns_at_the_puback_and_the_batch_arrives_byte_for_byte(upstream_broker: Mosquitto) -> None:
    subscriber = Subscriber(upstream_broker.port)
    transport = MqttTransport(MqttUpstreamConfig("127.0.0.1", upstream_broker.port, timeout_s=5))
    try:
        batches = batches_of("gw-1", "sensors", 0, 99) + batches_of("gw-1", "alarms", 0, 4)
        for data in batches:
            transport.send(data, decode_header(data))
        subscriber.wait(len(batches))
    finally:
        transport.close()
        subscriber.close()
    assert subscriber.messages == [
        (f"tidegate/batches/gw-1/{decode_header(d).stream}", d) for d in batches
    ]


@pytest.mark.mosquitto
def test_without_the_broker_send_fails_and_after_its_restart_it_works_again(upstream_broker: Mosquitto) -> None:
    transport = MqttTransport(MqttUpstreamConfig("127.0.0.1", upstream_broker.port, timeout_s=2))
    data = batches_of("gw-1", "sensors", 0, 9)[0]
    try:
        transport.send(data, decode_header(data))
        upstream_broker.stop()
        started = time.monotonic()
        with pytest.raises(TransportError):
            transport.send(data, decode_header(data))
        assert time.monotonic() - started < 10
        upstream_broker.start()
        subscriber = Subscriber(upstream_broker.port)
        transport.send(data, decode_header(data))
        subscriber.wait(1)
        subscriber.close()
        assert subscriber.messages == [("tidegate/batches/gw-1/sensors", data)]
    finally:
        transport.close()


# -- the central source ---------------------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.kafka
@pytest.mark.slow
def test_the_mqtt_source_expands_resent_batches_once(upstream_broker: Mosquitto, kafka_broker: KafkaBroker,
                                                     new_kafka_topic: NewKafkaTopic, tmp_path: Path) -> None:
    central = Central.create(kafka_broker, new_kafka_topic, tmp_path / "central")
    config = CentralConfig(kafka_broker.bootstrap, central.batches, central.readings, central.state,
                           central.deadletter, group_id=central.group, instance_id="m")
    rng = random.Random(4)
    expected = {("gw-1", "sensors"): 800, ("gw-2", "sensors"): 500}
    feed = [b for key, n in expected.items() for b in bridge_with_resends(*key, n, rng)]
    transport = MqttTransport(MqttUpstreamConfig("127.0.0.1", upstream_broker.port))
    source = MqttBatchSource(MqttUpstreamConfig("127.0.0.1", upstream_broker.port, client_id="central-m"), config)
    worker = threading.Thread(target=source.run, daemon=True)
    worker.start()
    try:
        assert source.subscribed.wait(30)
        for data in feed:
            transport.send(data, decode_header(data))
        deadline = time.monotonic() + 60
        while source.stats.readings < sum(expected.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        source.stop()
        worker.join(30)
        transport.close()
    assert source.stats.readings == sum(expected.values())
    check_exactly_once(read_all(kafka_broker.bootstrap, central.readings), expected)


def start_mqtt_source(central: Central, mqtt_port: int, wait: bool = False) -> subprocess.Popen[bytes]:
    central.workdir.mkdir(parents=True, exist_ok=True)
    log = central.workdir / "central.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge.central", "--bootstrap", central.bootstrap, "--mqtt", f"127.0.0.1:{mqtt_port}",
             "--readings-topic", central.readings, "--state-topic", central.state, "--deadletter-topic",
             central.deadletter, "--group", central.group, "--instance-id", "m", "--max-batches", "10"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    # The first time only: the broker keeps a session (and queues for it) once it has subscribed.
    deadline = time.monotonic() + 30
    while wait and b"subscribed to" not in log.read_bytes():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    return process


@pytest.mark.mosquitto
@pytest.mark.kafka
@pytest.mark.slow
def test_gateway_to_mqtt_upstream_to_kafka_exactly_once_through_kill_9_of_the_source(
        mosquitto: Mosquitto, upstream_broker: Mosquitto, kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic,
        tmp_path: Path) -> None:
    central = Central.create(kafka_broker, new_kafka_topic, tmp_path / "central")
    data_dir = tmp_path / "gateway"
    gateway = start_gateway(mosquitto.port, data_dir, f"mqtt://127.0.0.1:{upstream_broker.port}")
    source = start_mqtt_source(central, upstream_broker.port, wait=True)
    publisher: Publisher | None = None
    started = time.monotonic()
    try:
        wait_for_session(mosquitto.port)
        publisher = Publisher(mosquitto.port, 200)
        publisher.start()
        for _ in range(2):
            time.sleep(3)
            source.send_signal(signal.SIGKILL)
            source.wait(10)
            source = start_mqtt_source(central, upstream_broker.port)
        time.sleep(3)
        publisher.stop()
        by_key, by_id = central.wait_for(publisher.accepted)
    finally:
        if publisher is not None:
            publisher.stop(settle_s=1)
        stop_process(gateway)
        stop_process(source)
    tally = Tally("mqtt upstream, kill -9 of the source", "quick", 2, publisher.accepted, by_key, by_id,
                  log_counts(data_dir), time.monotonic() - started)
    tally.check(tail([tmp_path / "gateway.err", central.workdir / "central.log"]))
