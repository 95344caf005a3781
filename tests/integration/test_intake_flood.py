"""A flood of garbage through a real Mosquitto does not crowd out good readings, and every garbage message is counted."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from core.deadletter import DEAD_LETTER_STREAM, FLOOD, decode_dead_letter, with_dead_letter_quota
from core.log import LogConfig
from core.reading import decode_reading
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.logstore import open_log
from edge.metrics import Metrics
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig, MqttIntake, Received

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

ROUTES = (Route(TopicTemplate("sensors/{device}/{metric}"), "sensors"),)
T0 = 1_767_225_600_000


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached"
        time.sleep(0.02)


def publish_good(port: int, count: int) -> int:
    """Publish ``count`` readings with QoS 1; returns how many the broker acknowledged."""
    acked = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="good-sensor")
    client.on_publish = lambda *args: acked.release()
    client.max_inflight_messages_set(20)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for i in range(count):
            payload = json.dumps({"ts": T0 + i, "value": i, "s": i, "b": 1})
            client.publish("sensors/good/temp_c", payload, qos=1)
            time.sleep(0.002)
        got = sum(acked.acquire(timeout=30) for _ in range(count))
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_a_garbage_flood_leaves_every_good_reading_in_the_log_and_every_garbage_message_counted(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    good, garbage = 400, 10_000
    log = open_log(tmp_path / "log", with_dead_letter_quota(LogConfig(sync_policy="interval")))
    metrics = Metrics()
    gateway = Gateway(log, ROUTES, metrics)
    acked = {"good": 0, "garbage": 0}
    lock = threading.Lock()

    def acknowledge(received: Received) -> None:
        intake.ack(received)
        with lock:
            acked["good" if "/good/" in received.topic else "garbage"] += 1

    def on_message(received: Received) -> None:
        gateway.submit(Message("mqtt", received.topic, received.payload, int(time.time() * 1000),
                               lambda: acknowledge(received)))

    intake = MqttIntake(MqttConfig(port=mosquitto.port, client_id="gw-flood", subscriptions=("sensors/#",)), on_message)
    gateway.start()
    intake.start()
    try:
        wait_for(lambda: intake._client.is_connected(), what="connection")
        time.sleep(0.3)  # subscription in place
        # The flood: mosquitto_pub, QoS 1, malformed payloads of three kinds on two topics.
        lines = "".join(("{not json %d\n", "\\x00\\x01 %d\n", "[1, 2, %d\n")[i % 3] % i for i in range(garbage // 2))
        floods = [
            subprocess.Popen(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", topic, "-l"],
                             stdin=subprocess.PIPE)
            for topic in ("sensors/broken/a", "sensors/broken/b")
        ]
        for flood in floods:
            assert flood.stdin is not None
            flood.stdin.write(lines.encode())
            flood.stdin.close()
        published_good = publish_good(mosquitto.port, good)
        for flood in floods:
            assert flood.wait(120) == 0
        assert published_good == good
        # The last garbage messages wait for their flood summary (at most its interval, 10 s).
        wait_for(lambda: acked["good"] == good and acked["garbage"] == garbage, timeout=120,
                 what="all acknowledgements")
    finally:
        intake.stop()
        gateway.stop()
    try:
        values = sorted(decode_reading(r.payload).value for r in log.read("sensors", 0, 10_000))
        letters = []
        offset = 0
        while records := log.read(DEAD_LETTER_STREAM, offset, 10_000):
            letters += [decode_dead_letter(r.payload) for r in records]
            offset = records[-1].offset + 1
    finally:
        log.close()
    assert values == list(range(good))
    assert sum(sum(letter.rejected().values()) for letter in letters) == garbage
    assert metrics.total("tidegate_rejected_total") == garbage
    one_by_one = [letter for letter in letters if letter.reason != FLOOD]
    assert len(one_by_one) < garbage / 20  # the rest is in flood summaries
    assert metrics.total("tidegate_dead_letters_summarised_total") == garbage - len(one_by_one)
