"""The first path end to end: mosquitto_pub -> Mosquitto -> gateway -> log -> bridge -> Kafka.

An independent client (mosquitto_pub) publishes 10,000 readings as JSON,
msgpack and CBOR across a time-window boundary; a plain Kafka consumer reads
the batch topic back and tidegate's batch decoder turns it into readings,
which must be exactly the ones published, every field, once each.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cbor2
import pytest
import umsgpack
from confluent_kafka import Consumer, TopicPartition

from core.batch import decode_batch
from core.log import LogConfig
from core.timewindow import window_of
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig
from tests.kafka.broker import KafkaBroker
from tidegate.app import RunConfig, Service

pytestmark = [pytest.mark.mosquitto, pytest.mark.kafka, pytest.mark.slow]

TOTAL = 10_000
# Start 50 s before an hour boundary, 10 ms apart: the run spans two windows.
BASE_MS = window_of(1_767_225_600_000).end_ms - 50_000


def _value(i: int) -> object:
    return [round(20 + (i % 97) / 10, 1), i, i % 3 == 0, f"state-{i % 5}"][i % 4]


def expected_readings() -> list[dict[str, object]]:
    return [
        {"d": f"dev-{i % 50:02d}", "m": ("temp_c", "rh_pct", "count", "state")[i % 4], "ts": BASE_MS + i * 10, "v": _value(i)}
        for i in range(TOTAL)
    ]


def publish(port: int, readings: list[dict[str, object]], work: Path) -> None:
    third = len(readings) // 3
    as_json, as_msgpack, as_cbor = readings[:third], readings[third : 2 * third], readings[2 * third :]
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
    # JSON: one reading per message, one message per line on stdin.
    lines = "".join(json.dumps(r) + "\n" for r in as_json)
    subprocess.run([*base, "-t", "sensors/json", "-l"], input=lines.encode(), check=True, timeout=120)
    # msgpack and CBOR: packs of 100 readings, one file per message.
    for fmt, pack, encode in (("msgpack", as_msgpack, umsgpack.packb), ("cbor", as_cbor, cbor2.dumps)):
        for start in range(0, len(pack), 100):
            path = work / f"{fmt}-{start}.bin"
            path.write_bytes(encode(pack[start : start + 100]))
            subprocess.run([*base, "-t", f"sensors/{fmt}", "-f", str(path)], check=True, timeout=30)


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        values: list[bytes] = []
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 3:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
            idle_since = time.monotonic()
        return values
    finally:
        consumer.close()


def test_ten_thousand_readings_reach_kafka_once_with_every_field(
    mosquitto: Mosquitto, kafka_broker: KafkaBroker, kafka_topic: str, tmp_path: Path
) -> None:
    service = Service(
        RunConfig(
            data_dir=tmp_path / "gateway",
            upstream=f"kafka://{kafka_broker.bootstrap}/{kafka_topic}",
            gateway_id="gw-e2e",
            mqtt=MqttConfig(port=mosquitto.port, client_id="tidegate-e2e"),
            log=LogConfig(sync_policy="interval"),
        )
    )
    service.start()
    try:
        readings = expected_readings()
        publish(mosquitto.port, readings, tmp_path)
        deadline = time.monotonic() + 120
        while service.metrics.total("tidegate_readings_out_total") < TOTAL and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.metrics.total("tidegate_rejected_total") == 0
        assert service.metrics.total("tidegate_readings_in_total") == TOTAL
    finally:
        service.stop()

    got: dict[tuple[str, str, int], dict[str, object]] = {}
    windows = set()
    for value in read_topic(kafka_broker.bootstrap, kafka_topic):
        batch = decode_batch(value)
        windows.add(batch.header.window.start_ms)
        for entry in batch.entries:
            key = (batch.header.gateway, batch.header.stream, entry.offset)
            assert key not in got, f"duplicate reading {key}"
            r = entry.reading
            got[key] = {"d": r.device, "m": r.metric, "ts": r.ts_ms, "v": r.value}
    assert len(got) == TOTAL
    assert len(windows) == 2
    as_set = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
    assert as_set(got.values()) == as_set(readings)
    # JSON carries bools and ints apart from floats; check the types came through too.
    by_identity = {(r["d"], r["m"], r["ts"]): r["v"] for r in got.values()}
    for r in readings:
        assert type(by_identity[(r["d"], r["m"], r["ts"])]) is type(r["v"])
