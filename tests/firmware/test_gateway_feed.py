"""Firmware output into the real gateway: serial frames through a pty, MQTT messages through Mosquitto.

The node runs on MicroPython (and CPython: the two must agree byte for byte).
Its UART bytes are written to a pseudo-terminal that edge/serial_intake.py
reads; its MQTT messages are published, as the node published them (QoS 1,
same topic, same payload, including the copy a lost PUBACK caused), to a
real Mosquitto that edge/mqtt_intake.py subscribes to. The gateway's
stateful intake (core/intake.py: dedup by device, boot and sequence) then
must produce every reading exactly once, with the node's own timestamp.

This is also the pattern to follow for an end-to-end test from a node to
Kafka: replace the intake at the end with the running gateway.
"""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.codecs import SourceFields, decode_samples
from core.intake import Accepted, Duplicate, Intake
from core.serial_decoder import NEED_DATA, FrameDecoder
from core.reading import TIME_DEVICE, Reading
from core.topics import Route, TopicTemplate
from edge.gateway import Message
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig, MqttIntake, Received
from edge.serial_intake import SerialConfig, SerialIntake
from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import Cases, run_node
from tests.fixtures.micropython import MicroPython

pytestmark = pytest.mark.micropython

cases = cases_fixture("feed_cases")
CLOCK_SET_AT = 1767225600000


class Pty:
    """A pseudo-terminal standing in for the node's USB serial adapter, at a stable symlink."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        link.symlink_to(os.ttyname(self.slave))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _expected(payloads: list[bytes]) -> set[tuple[str, str, int, object]]:
    """(device, metric, ts, value) of every reading in the node's output, copies merged."""
    return {(s.device, metric, s.time_ms, value) for p in payloads
            for s in decode_samples(p, SourceFields()) for metric, value in s.values}


def _run_intake(intake: Intake, messages: list[tuple[str, str, bytes]]) -> tuple[list[Reading], int]:
    readings: list[Reading] = []
    duplicates = 0
    for source, topic, payload in messages:
        result = intake.classify(source, topic, payload, received_ms=int(time.time() * 1000))
        if isinstance(result, Accepted):
            readings.extend(result.readings)
            duplicates += result.duplicates
        elif isinstance(result, Duplicate):
            duplicates += result.samples
        else:
            raise AssertionError(f"rejected: {result}")
    return readings, duplicates


@pytest.mark.serial
def test_uart_frames_through_a_pty_reach_the_gateway_once_with_device_time(cases: Cases, tmp_path: Path) -> None:
    out = cases.check("case_uart_node")
    stream: bytes = out["bytes"]
    frames = [f + b"\x00" for f in stream.split(b"\x00") if f]
    # The node's replay after a reboot would send some frames again: resend three.
    wire = stream + b"".join(frames[3:6])
    link = tmp_path / "ttyTIDEGATE-node"
    pty = Pty(link)
    received: list[Message] = []
    lock = threading.Lock()

    def collect(message: Message) -> None:
        with lock:
            received.append(message)

    serial = SerialIntake(SerialConfig(str(link), read_timeout_s=0.02), collect)
    serial.start()
    try:
        assert serial.connected.wait(5)
        for i in range(0, len(wire), 64):  # as a UART delivers: in pieces
            pty.write(wire[i : i + 64])
        wait_for(lambda: len(received) == len(frames) + 3)
    finally:
        serial.stop()
        pty.close()

    intake = Intake((Route(TopicTemplate(str(link)), "sensors"),))
    readings, duplicates = _run_intake(intake, [(m.source, m.topic, m.payload) for m in received])
    payloads = [m.payload for m in received]

    assert duplicates == 3
    assert len(readings) == len({(r.device, r.metric, r.ts_ms) for r in readings})  # each once
    assert {(r.device, r.metric, r.ts_ms, r.value) for r in readings} == _expected(payloads)
    assert {r.time_source for r in readings} == {TIME_DEVICE}
    ts = sorted({r.ts_ms for r in readings})
    assert len(ts) == out["seq"] == 12 and ts[0] - CLOCK_SET_AT < 1000
    assert [b - a for a, b in zip(ts, ts[1:])] == [10_000] * 11  # the node's schedule, to the millisecond


@pytest.mark.mosquitto
def test_mqtt_messages_through_mosquitto_reach_the_gateway_once_with_device_time(cases: Cases,
                                                                               mosquitto: Mosquitto) -> None:
    out = cases.check("case_mqtt_node_through_an_outage_and_a_lost_puback")
    sent: list[list[object]] = out["messages"]
    got: list[Received] = []
    lock = threading.Lock()

    def take(message: Received) -> None:
        with lock:
            got.append(message)
        gateway.ack(message)

    gateway = MqttIntake(MqttConfig(port=mosquitto.port, client_id="gw-firmware", subscriptions=("sensors/#",)), take)
    gateway.start()
    node = paho.Client(CallbackAPIVersion.VERSION2, client_id="tidegate-node-01")
    try:
        wait_for(lambda: gateway._client.is_connected())
        time.sleep(0.2)
        node.connect("127.0.0.1", mosquitto.port)
        node.loop_start()
        for topic, payload in sent:  # what the node published, in its order, copy included
            node.publish(str(topic), bytes(payload), qos=1).wait_for_publish(5)  # type: ignore[arg-type]
        wait_for(lambda: len(got) == len(sent))
    finally:
        node.loop_stop()
        node.disconnect()
        gateway.stop()

    intake = Intake((Route(TopicTemplate("sensors/{device}"), "sensors"),))
    readings, duplicates = _run_intake(intake, [("mqtt", m.topic, m.payload) for m in got])

    assert out["ring_left"] == 0
    assert duplicates == 1  # the sample whose PUBACK was lost, published twice
    assert len(readings) == 2 * out["seq"]  # temp_c and rh_pct of every sample, once
    assert {(r.device, r.metric, r.ts_ms, r.value) for r in readings} == _expected([bytes(p) for _, p in sent])  # type: ignore[arg-type]
    assert {r.time_source for r in readings} == {TIME_DEVICE}
    ts = sorted({r.ts_ms for r in readings})
    assert [b - a for a, b in zip(ts, ts[1:])] == [10_000] * (out["seq"] - 1)


def test_run_node_helper_gives_a_nodes_frames_and_messages(micropython: MicroPython, device_root: Path) -> None:
    # The helper for end-to-end tests: any config, its output as bytes.
    uart = run_node(micropython, device_root, {"device": "pump-3", "transport": "uart",
                                               "sensors": [{"type": "dht22", "period_s": 5}]}, cycles=4,
                    clock_set_at_ms=CLOCK_SET_AT)
    mqtt = run_node(micropython, device_root, {"device": "n9"}, cycles=2)

    decoder = FrameDecoder()
    decoder.receive_data(uart["uart"])
    frames = []
    while (event := decoder.next_event()) is not NEED_DATA:
        frames.append(event)
    samples = [s for f in frames for s in decode_samples(f.payload, SourceFields())]  # type: ignore[union-attr]
    assert [(s.device, s.seq, s.time_ms - CLOCK_SET_AT) for s in samples] == [
        ("pump-3", k, 5000 * k) for k in range(4)]
    assert uart["seq"] == 4 and isinstance(uart["boot"], int)
    assert [topic for topic, _ in mqtt["messages"]] == ["sensors/n9", "sensors/n9"]
    assert [s.seq for _, p in mqtt["messages"] for s in decode_samples(p, SourceFields())] == [0, 1]
