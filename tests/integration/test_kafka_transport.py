"""The Kafka transport against a real broker: trains in one round trip, and a train cut short.

The forwarder hands the batches due in one call to ``send_many``
(bridge/forwarder.py, "Trains"); its cursors move for the acknowledged prefix
only. These tests check the prefix the transport reports against what a
plain consumer finds on the topic.
"""

from __future__ import annotations

import os
import uuid

import pytest
from confluent_kafka import Consumer

from bridge.errors import PartialSend
from bridge.transports import KafkaTransport
from core.batch import Entry, decode_batch, decode_header, encode_batch
from core.reading import Reading
from core.timewindow import window_of
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def window_batch(minute: int, readings: int = 3) -> bytes:
    ts = T0 + minute * 60_000
    entries = [Entry(minute * readings + i, Reading("node-1", "temp_c", ts + i * 1000, 20.0 + i / 4, ts + i * 1000 + 30))
               for i in range(readings)]
    return encode_batch("gw-1", "sensors", window_of(ts, 60_000), entries)


def topic_values(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        misses = 0
        while len(values) < expected and misses < 10:
            message = consumer.poll(1.0)
            if message is None:
                misses += 1
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
        # a little longer, to see anything beyond what was expected
        for _ in range(3):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def test_a_train_arrives_whole_in_order(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    batches = [window_batch(m) for m in range(60)]
    transport = KafkaTransport(kafka_broker.bootstrap, kafka_topic)
    try:
        transport.send_many([(b, decode_header(b)) for b in batches])
    finally:
        transport.close()
    values = topic_values(kafka_broker.bootstrap, kafka_topic, len(batches))
    assert values == batches
    assert [decode_batch(v).header.first_offset for v in values] == [3 * m for m in range(60)]


def test_a_train_cut_short_by_the_broker_reports_the_prefix_it_holds(
        kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic) -> None:
    topic = new_kafka_topic(config={"max.message.bytes": "20000"})
    batches = [window_batch(m) for m in range(10)]
    # Batch 6 is too big for the topic (incompressible, so lz4 cannot save it).
    oversize = batches[6][:-8] + os.urandom(60_000)
    train = [(b, decode_header(b)) for b in batches]
    train[6] = (oversize, train[6][1])
    transport = KafkaTransport(kafka_broker.bootstrap, topic)
    try:
        with pytest.raises(PartialSend) as refused:
            transport.send_many(train)
    finally:
        transport.close()
    held = refused.value.acknowledged
    assert held <= 6
    values = topic_values(kafka_broker.bootstrap, topic, held)
    # Everything the transport reported as held is on the topic, in order.
    assert values[:held] == batches[:held]
    assert oversize not in values
