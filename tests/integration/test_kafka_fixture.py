"""The Kafka fixture runs a real broker that independent clients agree on.

These tests check the test harness itself (tests/kafka/broker.py and
tests/fixtures/kafka.py), with the producer settings the bridge uses:
acks=all, idempotence on, LZ4.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker

pytestmark = pytest.mark.kafka

COUNT = 100
LZ4_CODEC = 3  # low three bits of a record batch's attributes (Kafka protocol)


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce ``values`` in order with acks=all, idempotence and LZ4; fail on any error."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
        }
    )
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for index, value in enumerate(values):
        producer.produce(topic, value=value, key=b"sensor-%d" % (index % 7), on_delivery=on_delivery)
    assert producer.flush(30) == 0, "messages still in flight after 30 s"
    assert errors == []


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[bytes]:
    """Read ``count`` values from the start of ``topic`` in a fresh consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            values.append(message.value() or b"")
    finally:
        consumer.close()
    return values


def readings(start: int, count: int = COUNT) -> list[bytes]:
    return [b"reading-%04d" % index for index in range(start, start + count)]


def first_batch_codec(broker: KafkaBroker, topic: str) -> int:
    """Return the compression codec of the first record batch on disk.

    A v2 record batch starts: baseOffset int64, batchLength int32,
    partitionLeaderEpoch int32, magic int8, crc uint32, attributes int16.
    """
    segment = broker.data_dir / f"{topic}-0" / ("0" * 20 + ".log")
    header = segment.read_bytes()[:23]
    magic = header[16]
    attributes = int.from_bytes(header[21:23], "big")
    assert magic == 2
    return attributes & 0x07


def test_confluent_consumer_reads_back_what_was_produced(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    sent = readings(0)
    produce(kafka_broker.bootstrap, kafka_topic, sent)

    assert consume(kafka_broker.bootstrap, kafka_topic, COUNT) == sent
    assert first_batch_codec(kafka_broker, kafka_topic) == LZ4_CODEC


def test_kcat_reads_back_what_confluent_produced(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed"
    sent = readings(0)
    produce(kafka_broker.bootstrap, kafka_topic, sent)

    result = subprocess.run(
        [kcat, "-b", kafka_broker.bootstrap, "-C", "-t", kafka_topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.splitlines() == sent


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_messages_survive_a_broker_restart(
    private_kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic, how: str
) -> None:
    broker = private_kafka_broker
    topic = new_kafka_topic(broker=broker)
    before = readings(0)
    produce(broker.bootstrap, topic, before)
    port = broker.port

    if how == "stop":
        broker.restart()
    else:
        broker.kill()
        assert not broker.running
        broker.start()

    assert broker.port == port
    after = readings(COUNT)
    produce(broker.bootstrap, topic, after)
    assert consume(broker.bootstrap, topic, 2 * COUNT) == before + after
