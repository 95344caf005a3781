"""Uplink bytes per reading: tidegate against Mosquitto's bridge and JSON through Kafka with lz4.

Run: python -m bench.bench_uplink [--quick]

For each data set the same readings go upstream three ways, each through
real components, in the same run:

* tidegate: the readings appended to a real durable log (core.log over the
  gateway's file adapter), then drained by the real forwarder with its
  default (adaptive) batching through the real KafkaTransport, as after an
  outage: one time window per batch, the due batches sent as trains. Bytes
  are librdkafka's own count of bytes sent to the broker (``txbytes``), so
  Kafka's framing is included.
* Mosquitto bridge: each reading published as a JSON message with QoS 1 to a
  real local Mosquitto that bridges ``sensors/#`` to a second, upstream
  Mosquitto. Bytes are counted by a TCP proxy on the bridge connection.
* JSON + Kafka lz4: each reading produced as a JSON record to Kafka by a
  producer with lz4 compression and generous batching (linger 1 s), the
  common "just use a Kafka producer at the edge" set-up. Bytes: ``txbytes``.

The figure that matters is bytes per reading upstream; the ratio column is
each peer's bytes over tidegate's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import CountingProxy, fleet_readings, machine, nab_readings, table
from bridge.forwarder import Forwarder
from bridge.transports import KafkaTransport
from core.log import Log, LogConfig
from core.reading import Reading, encode_reading
from edge.logstore import OsFileSystem
from edge.mosquitto import Mosquitto
from tests.kafka.broker import KafkaBroker, ensure_kafka_jars


class TxBytes:
    """librdkafka's count of bytes sent to brokers, from its statistics callback."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        self.value = sum(b.get("txbytes", 0) for name, b in stats["brokers"].items() if not name.startswith("GroupCoordinator"))


def kafka_tx_bytes(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]] | None, int]], settings: dict[str, object]) -> int:
    counter = TxBytes()
    producer = Producer({"bootstrap.servers": bootstrap, "statistics.interval.ms": 100, "stats_cb": counter, "acks": "all", **settings})
    producer.poll(0)
    time.sleep(0.3)
    producer.poll(0.2)
    baseline = counter.value  # metadata requests before any message
    for key, value, headers, ts in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    time.sleep(0.3)
    producer.poll(0.3)
    return counter.value - baseline


def measure_tidegate(bootstrap: str, broker: KafkaBroker, readings: list[Reading], window_ms: int) -> tuple[int, int]:
    """Bytes on the uplink and batches sent for ``readings``, through the gateway's own path."""
    topic = f"bench-tg-{time.monotonic_ns()}"
    broker.create_topic(topic)
    counter = TxBytes()
    batches = 0
    with tempfile.TemporaryDirectory() as data:
        fs = OsFileSystem(data)
        log = Log(fs, LogConfig(window_ms=window_ms, sync_policy="never"))
        now_ms = max(r.received_ms for r in readings) + 86_400_000  # the uplink comes back a day later
        for start in range(0, len(readings), 1000):
            log.append_many("sensors", [(r.ts_ms, encode_reading(r)) for r in readings[start:start + 1000]], now_ms)
        log.sync()
        transport = KafkaTransport(bootstrap, topic, {"statistics.interval.ms": 100, "stats_cb": counter})  # type: ignore[dict-item]
        producer = transport._producer  # the statistics callback runs on this producer's polls
        producer.poll(0)
        time.sleep(0.3)
        producer.poll(0.2)
        baseline = counter.value  # metadata and the idempotent producer id, before any batch
        forwarder = Forwarder(log, transport, "gw-1", window_ms)
        while forwarder.cursor("sensors") < log.end_offset("sensors"):
            result = forwarder.forward_once(now_ms)
            if result.failed:
                raise RuntimeError("Kafka refused a batch during the benchmark")
            batches += result.batches
        time.sleep(0.3)
        producer.poll(0.3)
        used = counter.value - baseline
        transport.close()
        log.close()
        fs.close()
    return used, batches


def measure_kafka_json(bootstrap: str, broker: KafkaBroker, readings: list[Reading]) -> int:
    topic = f"bench-json-{time.monotonic_ns()}"
    broker.create_topic(topic)
    messages = [
        (r.device.encode(), json.dumps({"device": r.device, "metric": r.metric, "ts": r.ts_ms, "value": r.value}).encode(), None, r.ts_ms)
        for r in readings
    ]
    settings = {"enable.idempotence": True, "compression.type": "lz4", "linger.ms": 1000, "batch.size": 1_000_000}
    return kafka_tx_bytes(bootstrap, topic, messages, settings)


def measure_mosquitto_bridge(readings: list[Reading], work: Path) -> int:
    with Mosquitto(work / "upstream") as upstream:
        proxy = CountingProxy(upstream.port)
        bridge_conf = (
            "connection upstream\n"
            f"address 127.0.0.1:{proxy.port}\n"
            "topic sensors/# out 1\n"
            "cleansession false\n"
            "try_private false\n"
            "notifications false\n"
            "bridge_protocol_version mqttv311\n"
        )
        received = 0
        done = threading.Event()
        lock = threading.Lock()

        def on_message(client: object, userdata: object, message: object) -> None:
            nonlocal received
            with lock:
                received += 1
                if received >= len(readings):
                    done.set()

        sink = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sink")
        sink.on_message = on_message
        sink.connect("127.0.0.1", upstream.port)
        sink.subscribe("sensors/#", qos=1)
        sink.loop_start()
        with Mosquitto(work / "local", extra_config=bridge_conf) as local:
            time.sleep(1.0)  # the bridge connects
            before = proxy.upstream_bytes
            source = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-source")
            source.max_inflight_messages_set(100)
            source.max_queued_messages_set(0)
            source.connect("127.0.0.1", local.port)
            source.loop_start()
            for r in readings:
                payload = json.dumps({"ts": r.ts_ms, "value": r.value}).encode()
                source.publish(f"sensors/{r.device}/{r.metric}", payload, qos=1)
            if not done.wait(300):
                raise RuntimeError(f"bridge delivered only {received} of {len(readings)}")
            time.sleep(0.5)
            source.disconnect()
            source.loop_stop()
            used = proxy.upstream_bytes - before
        sink.disconnect()
        sink.loop_stop()
        proxy.close()
        return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data sets (for a smoke run)")
    args = parser.parse_args(argv)
    ensure_kafka_jars()
    fleet = fleet_readings(seconds=60 if args.quick else 300)
    ambient = nab_readings("ambient_temperature_system_failure", "office-1")
    machine_temp = nab_readings("machine_temperature_system_failure", "machine-1")
    if args.quick:
        ambient, machine_temp = ambient[:2000], machine_temp[:5000]
    datasets = [
        ("synthetic fleet, 50 sensors x 2 metrics at 1 Hz", fleet, 3_600_000),
        ("NAB machine temperature (5 min), 1 h windows", machine_temp, 3_600_000),
        ("NAB machine temperature (5 min), 1 day windows", machine_temp, 86_400_000),
        ("NAB ambient temperature (hourly), 1 h windows", ambient, 3_600_000),
        ("NAB ambient temperature (hourly), 1 day windows", ambient, 86_400_000),
    ]
    rows = []
    bridge_cache: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker(Path(tmp) / "kafka") as broker:
        for name, readings, window_ms in datasets:
            n = len(readings)
            tg, batches = measure_tidegate(broker.bootstrap, broker, readings, window_ms)
            kj = measure_kafka_json(broker.bootstrap, broker, readings)
            if id(readings) not in bridge_cache:
                bridge_cache[id(readings)] = measure_mosquitto_bridge(readings, Path(tmp) / f"mq-{len(bridge_cache)}")
            mb = bridge_cache[id(readings)]
            rows.append([
                name, f"{n:,}", batches, f"{tg / n:.1f}", f"{mb / n:.1f}", f"{kj / n:.1f}",
                f"{mb / tg:.1f}x", f"{kj / tg:.1f}x",
            ])
            print(rows[-1], file=sys.stderr)
    print(f"machine: {machine()}\n")
    print(table(
        ["data set", "readings", "tidegate batches", "tidegate B/reading", "Mosquitto bridge B/reading",
         "JSON+Kafka lz4 B/reading", "bridge / tidegate", "Kafka JSON / tidegate"],
        rows,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
