"""The central expander against a real Kafka: each reading exactly once in the readings topic.

Every check reads the readings topic with an independent read_committed
consumer and counts reading ids: zero missing, zero duplicates, and offsets
rising per series in partition order. Resends are modelled on what the bridge
does after a crash between Kafka's acknowledgement and its cursor store: the
next batch of a stream starts again at the previous batch's first offset, and
is often cut to a different length.
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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bridge.central import CentralConfig, KafkaExpander, decode_reading_value
from bridge.transports import KafkaTransport
from core.batch import Entry, decode_header, encode_batch
from core.reading import Reading
from core.timewindow import window_of
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
T0 = 1704067200000
WINDOW_MS = 60_000


def reading_at(offset: int, devices: int = 3) -> Reading:
    ts = T0 + offset * 250  # four readings a second: several windows of one minute
    return Reading(f"node-{offset % devices}", "temp_c", ts, round(20 + offset / 100, 2), ts + 40)


def batches_of(gateway: str, stream: str, first: int, last: int) -> list[bytes]:
    """Readings first..last of one stream, as batches that never span a window."""
    out: list[bytes] = []
    run: list[Entry] = []
    for offset in range(first, last + 1):
        entry = Entry(offset, reading_at(offset))
        if run and window_of(run[0].reading.ts_ms, WINDOW_MS) != window_of(entry.reading.ts_ms, WINDOW_MS):
            out.append(encode_batch(gateway, stream, window_of(run[0].reading.ts_ms, WINDOW_MS), run))
            run = []
        run.append(entry)
    out.append(encode_batch(gateway, stream, window_of(run[0].reading.ts_ms, WINDOW_MS), run))
    return out


def bridge_with_resends(gateway: str, stream: str, total: int, rng: random.Random) -> Iterator[bytes]:
    """What a crashing bridge sends for readings 0..total-1: every reading at least once, many twice."""
    cursor = 0
    while cursor < total:
        last = min(total - 1, cursor + rng.randint(20, 120))
        yield from batches_of(gateway, stream, cursor, last)
        if rng.random() < 0.3:  # "crashed" before storing the cursor: resend from it, cut anew
            last = min(total - 1, cursor + rng.randint(0, 160))
            yield from batches_of(gateway, stream, cursor, last)
        cursor = last + 1


@dataclass
class Topics:
    bootstrap: str
    batches: str
    readings: str
    state: str
    deadletter: str

    def config(self, **kwargs: object) -> CentralConfig:
        return CentralConfig(
            bootstrap=self.bootstrap, batch_topic=self.batches, readings_topic=self.readings,
            state_topic=self.state, deadletter_topic=self.deadletter, group_id=f"central-{uuid.uuid4().hex[:6]}",
            **kwargs,  # type: ignore[arg-type]
        )


# Record timestamps are device time (window start, reading time), here in
# 2024: with the default retention of 7 days Kafka would delete them at its
# next retention check. See docs/exactly_once.md, "Topic settings".
KEEP = {"retention.ms": "-1"}


@pytest.fixture
def topics(kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic) -> Topics:
    return Topics(
        kafka_broker.bootstrap,
        batches=new_kafka_topic(partitions=2, config=KEEP, prefix="batches"),
        readings=new_kafka_topic(partitions=3, config=KEEP, prefix="readings"),
        state=new_kafka_topic(partitions=2, config={"cleanup.policy": "compact"}, prefix="state"),
        deadletter=new_kafka_topic(config=KEEP, prefix="deadletter"),
    )


def send_all(topics: Topics, batches: list[bytes]) -> None:
    transport = KafkaTransport(topics.bootstrap, topics.batches)
    for data in batches:
        transport.send(data, decode_header(data))
    transport.close()


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[tuple[int, bytes, bytes]]:
    """Every record of ``topic`` up to its end, as (partition, key, value), in partition order."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}", "isolation.level": isolation,
        "enable.partition.eof": True, "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    while len(at_end) < partitions and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise KafkaException(message.error())
            at_end.discard(message.partition())
            out.append((message.partition(), message.key(), message.value()))
    consumer.close()
    assert len(at_end) == partitions, "readings topic not read to its end in time"
    return out


def check_exactly_once(records: list[tuple[int, bytes, bytes]], expected: dict[tuple[str, str], int]) -> None:
    """Each expected id once, nothing else, offsets rising per series within its partition."""
    seen: dict[str, int] = defaultdict(int)
    last_offset: dict[bytes, int] = {}
    series_partition: dict[bytes, int] = {}
    for partition, key, value in records:
        doc = decode_reading_value(value)
        seen[str(doc["id"])] += 1
        assert key == f"{doc['gateway']}/{doc['stream']}/{doc['device']}/{doc['metric']}".encode()
        assert series_partition.setdefault(key, partition) == partition, f"series {key!r} in two partitions"
        offset = int(doc["offset"])  # type: ignore[call-overload]
        assert offset > last_offset.get(key, -1), f"series {key!r}: offset {offset} after {last_offset[key]}"
        last_offset[key] = offset
    wanted = {f"{g}/{s}/{o}" for (g, s), n in expected.items() for o in range(n)}
    duplicates = {i: n for i, n in seen.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} readings more than once, e.g. {sorted(duplicates)[:5]}"
    missing = wanted - seen.keys()
    assert not missing, f"{len(missing)} readings missing, e.g. {sorted(missing)[:5]}"
    assert seen.keys() == wanted


class ExpanderThread:
    def __init__(self, config: CentralConfig) -> None:
        self.expander = KafkaExpander(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.expander.run()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def wait_for(self, readings: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.expander.stats.readings < readings and time.monotonic() < deadline:
            assert self.error is None, self.error
            time.sleep(0.05)
        assert self.expander.stats.readings == readings, self.expander.stats

    def stop(self) -> None:
        self.expander.stop()
        self.thread.join(30)
        if self.error is not None:
            raise self.error


def test_resent_batches_give_each_reading_once(topics: Topics) -> None:
    rng = random.Random(5)
    expected = {("gw-1", "sensors"): 900, ("gw-2", "sensors"): 700, ("gw-1", "alarms"): 300}
    streams = {key: list(bridge_with_resends(*key, n, rng)) for key, n in expected.items()}
    interleaved = [b for group in zip(*streams.values()) for b in group]
    interleaved += [b for s in streams.values() for b in s[min(map(len, streams.values())):]]
    send_all(topics, interleaved)

    worker = ExpanderThread(topics.config(max_batches=7))  # many small transactions
    worker.wait_for(sum(expected.values()))
    # A whole stream resent after the expander caught up: nothing new appears.
    send_all(topics, batches_of("gw-2", "sensors", 0, 699))
    deadline = time.monotonic() + 30
    while worker.expander.stats.duplicates < 700 + 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    assert worker.expander.stats.readings == sum(expected.values())
    check_exactly_once(read_all(topics.bootstrap, topics.readings), expected)


def test_a_new_instance_resumes_from_committed_offsets_and_state(topics: Topics) -> None:
    config = topics.config(instance_id="a")
    send_all(topics, batches_of("gw-1", "sensors", 0, 499))
    first = ExpanderThread(config)
    first.wait_for(500)
    first.stop()
    # Resends of what the first instance applied, and new readings.
    send_all(topics, batches_of("gw-1", "sensors", 250, 799))
    second = ExpanderThread(config)
    second.wait_for(300)
    second.stop()
    assert second.expander.stats.duplicates == 250
    check_exactly_once(read_all(topics.bootstrap, topics.readings), {("gw-1", "sensors"): 800})


def test_an_undecodable_batch_goes_to_the_dead_letter_topic(topics: Topics) -> None:
    good = batches_of("gw-1", "sensors", 0, 9)
    bad = bytearray(good[0])
    bad[-3] ^= 0x55
    producer = Producer({"bootstrap.servers": topics.bootstrap})
    producer.produce(topics.batches, value=bytes(bad), key=b"gw-1/sensors")
    producer.produce(topics.batches, value=b"not a batch", key=b"gw-1/sensors")
    producer.flush(10)
    send_all(topics, good)
    worker = ExpanderThread(topics.config())
    worker.wait_for(10)
    worker.stop()
    assert worker.expander.stats.dead_letters == 2
    dead = read_all(topics.bootstrap, topics.deadletter)
    assert sorted(v for _, _, v in dead) == sorted([bytes(bad), b"not a batch"])
    check_exactly_once(read_all(topics.bootstrap, topics.readings), {("gw-1", "sensors"): 10})


def test_the_state_topic_must_match_the_batch_topic(topics: Topics, new_kafka_topic: NewKafkaTopic) -> None:
    from bridge.errors import UpstreamConfigError

    config = CentralConfig(topics.bootstrap, topics.batches, topics.readings, state_topic=new_kafka_topic(partitions=1),
                           deadletter_topic=topics.deadletter)
    with pytest.raises(UpstreamConfigError, match="partitions"):
        KafkaExpander(config).run()


# -- what exactly-once relies on in Kafka (docs/exactly_once.md) -------------


def test_read_committed_never_returns_records_of_an_aborted_transaction(kafka_broker: KafkaBroker,
                                                                        kafka_topic: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    for n in range(20):
        producer.begin_transaction()
        producer.produce(kafka_topic, value=b"%d" % n)
        producer.flush(10)  # on the broker before the abort, not just queued
        if n % 3 == 0:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    values = [v for _, _, v in read_all(kafka_broker.bootstrap, kafka_topic)]
    assert values == [b"%d" % n for n in range(20) if n % 3]
    uncommitted = [v for _, _, v in read_all(kafka_broker.bootstrap, kafka_topic, "read_uncommitted")]
    assert len(uncommitted) == 20


def test_a_new_producer_with_the_same_transactional_id_fences_the_old_one(kafka_broker: KafkaBroker,
                                                                           kafka_topic: str) -> None:
    # What the expander's recovery relies on: after a failure whose outcome
    # is unknown it starts a new producer with the same transactional.id;
    # the old one's open transaction is aborted and it can commit nothing.
    txn_id = uuid.uuid4().hex
    old = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": txn_id})
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(kafka_topic, value=b"zombie")
    old.flush(10)
    new = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": txn_id})
    new.init_transactions(30)
    new.begin_transaction()
    new.produce(kafka_topic, value=b"live")
    new.commit_transaction(30)
    with pytest.raises(KafkaException):
        old.commit_transaction(10)
    assert [v for _, _, v in read_all(kafka_broker.bootstrap, kafka_topic)] == [b"live"]


# -- kill -9 of the expander mid-stream ---------------------------------------


def start_expander(topics: Topics, group: str, instance: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.central", "--bootstrap", topics.bootstrap, "--batch-topic", topics.batches,
             "--readings-topic", topics.readings, "--state-topic", topics.state, "--deadletter-topic",
             topics.deadletter, "--group", group, "--instance-id", instance, "--max-batches", "5"]
            + (["--set", "debug=" + os.environ["TG_DEBUG"]] if os.environ.get("TG_DEBUG") else []),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


@pytest.mark.parametrize("kills", [3, pytest.param(40, marks=pytest.mark.long)])
def test_kill_9_of_the_expander_mid_stream_still_gives_each_reading_once(topics: Topics, tmp_path: Path,
                                                                        kills: int) -> None:
    rng = random.Random(kills)
    expected = {("gw-1", "sensors"): 1000 * kills, ("gw-2", "sensors"): 1000 * kills}
    streams = [list(bridge_with_resends(*key, n, rng)) for key, n in expected.items()]
    feed = [b for pair in zip(*streams) for b in pair] + [b for s in streams for b in s[min(map(len, streams)):]]
    log = tmp_path / "central.log"
    group = f"central-{uuid.uuid4().hex[:6]}"

    sent: list[int] = []

    def send_slowly() -> None:  # spread over the time the kills take, so every kill lands mid-stream
        pause = 1.5 * kills / (len(feed) / 5)
        for i in range(0, len(feed), 5):
            send_all(topics, feed[i:i + 5])
            sent.append(len(feed[i:i + 5]))
            time.sleep(pause)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    process = start_expander(topics, group, "a", log)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            process = start_expander(topics, group, "a", log)
        sender.join(60 + 5 * kills)
        assert sum(sent) == len(feed), "the batch feed did not finish"
        total = sum(expected.values())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            records = read_all(topics.bootstrap, topics.readings)
            if len({decode_reading_value(v)["id"] for _, _, v in records}) >= total:
                break
            time.sleep(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    check_exactly_once(read_all(topics.bootstrap, topics.readings), expected)
