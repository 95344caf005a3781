"""The central expander: batches in, one record per reading out, exactly once.

Theory of operation
-------------------
Gateways put batches (docs/batch_format.md) on the batch topic, keyed
``<gateway>/<stream>``. The expander consumes that topic as a member of a
consumer group and writes each reading as its own record to the readings topic
(docs/readings_topic.md), keyed ``<gateway>/<stream>/<device>/<metric>`` so
that a series stays in one partition and in order.

Exactly once rests on two things (docs/exactly_once.md has the argument):

1. **Kafka transactions** for the consume-transform-produce step: the readings
   of some batches, the expander's state records and the consumer offsets of
   those batches are committed in one transaction
   (``send_offsets_to_transaction``). Readers use ``isolation.level =
   read_committed``, so a crash mid-transaction leaves nothing visible, and a
   batch whose offsets were committed is never expanded again.
2. **Applied ranges per (gateway, stream)**: the bridge may send the same
   readings again in a *new* Kafka message after it crashed between Kafka's
   acknowledgement and storing its cursor. Kafka cannot know these are
   duplicates; the reading ids can. The expander keeps, per key, the set of
   offset ranges it has applied, drops every reading inside it, and writes the
   new set to a compacted state topic *in the same transaction* as the
   readings. State partition *p* holds the keys of batch partition *p*, so an
   instance loads only the state of the partitions it is assigned.

The pure part (:class:`AppliedRanges`, :class:`Expander`) knows nothing of
Kafka and is tested offline. :class:`KafkaExpander` is the shell: the poll
loop, the transaction, the recovery after any failure (a new producer with the
same ``transactional.id``, which fences the old one's requests, then a rewind
to the committed offsets and a reload of the state: the defence Jepsen's 2024
analysis of Kafka transactions recommends for clients without KIP-890).

:class:`bridge.mqtt_upstream.MqttBatchSource` feeds the same pure part from an
upstream MQTT broker (``--mqtt``).

Run it with ``python -m bridge.central --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import umsgpack

from core.batch import BatchHeader, decode_batch
from core.errors import BatchFormatError
from bridge.errors import BridgeError, UpstreamConfigError

if TYPE_CHECKING:
    from bridge.mqtt_upstream import MqttBatchSource

__all__ = [
    "FORMAT_JSON",
    "FORMAT_MSGPACK",
    "AppliedRanges",
    "OutRecord",
    "Expansion",
    "Expander",
    "StateError",
    "CentralConfig",
    "KafkaExpander",
    "ExpanderStats",
    "reading_key",
    "encode_reading_value",
    "decode_reading_value",
    "state_reader_config",
    "producer_config",
    "load_state",
    "produce",
    "create_topics",
    "main",
]

log = logging.getLogger("tidegate.central")

FORMAT_JSON = "json"
FORMAT_MSGPACK = "msgpack"
_FORMATS = (FORMAT_JSON, FORMAT_MSGPACK)
_STATE_VERSION = 1


class StateError(BridgeError):
    """A record of the state topic is not what this module writes."""


# ---------------------------------------------------------------------------
# The pure part
# ---------------------------------------------------------------------------


@dataclass
class AppliedRanges:
    """The offsets of one (gateway, stream) already written to the readings topic.

    A sorted list of disjoint half-open ranges ``[start, end)``. While the
    bridge forwards in offset order this is one range; with a fresh-data lane
    (docs/batching.md) it is two until the backlog catches up.
    """

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def contains(self, offset: int) -> bool:
        for start, end in self.ranges:
            if offset < start:
                return False
            if offset < end:
                return True
        return False

    def add(self, first: int, last: int) -> None:
        """Mark ``first..last`` (inclusive) as applied, merging touching ranges."""
        if last < first:
            raise ValueError(f"empty range {first}..{last}")
        start, end = first, last + 1
        merged: list[tuple[int, int]] = []
        for s, e in self.ranges:
            if e < start or s > end:
                merged.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        merged.append((start, end))
        merged.sort()
        self.ranges = merged

    def copy(self) -> AppliedRanges:
        return AppliedRanges(list(self.ranges))

    def to_bytes(self) -> bytes:
        return json.dumps({"v": _STATE_VERSION, "applied": [list(r) for r in self.ranges]}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AppliedRanges:
        """Parse a state value.

        Raises:
            StateError: the value is not a version-1 state record.
        """
        try:
            doc = json.loads(data)
            if doc["v"] != _STATE_VERSION:
                raise StateError(f"state record version {doc['v']!r} is not {_STATE_VERSION}")
            ranges = [(int(s), int(e)) for s, e in doc["applied"]]
        except StateError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"state record is not valid: {exc}") from exc
        if any(s >= e for s, e in ranges) or ranges != sorted(ranges):
            raise StateError(f"state record ranges are not sorted and non-empty: {ranges}")
        return cls(ranges)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record for the readings topic."""

    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Expansion:
    """What one batch turned into: the records to write and the readings dropped as already applied."""

    header: BatchHeader
    records: tuple[OutRecord, ...]
    duplicates: int


def reading_key(gateway: str, stream: str, device: str, metric: str) -> bytes:
    """The readings-topic key: one series, one partition."""
    return f"{gateway}/{stream}/{device}/{metric}".encode()


def encode_reading_value(header: BatchHeader, offset: int, device: str, metric: str, ts_ms: int, value: object,
                         received_ms: int, time_source: int, value_format: str = FORMAT_JSON) -> bytes:
    """Encode one reading as a readings-topic value (docs/readings_topic.md)."""
    doc = {
        "id": f"{header.gateway}/{header.stream}/{offset}",
        "gateway": header.gateway,
        "stream": header.stream,
        "offset": offset,
        "device": device,
        "metric": metric,
        "ts_ms": ts_ms,
        "value": value,
        "received_ms": received_ms,
        "time_source": time_source,
        "window_start_ms": header.window.start_ms,
        "window_length_ms": header.window.length_ms,
    }
    if value_format == FORMAT_MSGPACK:
        return umsgpack.packb(doc)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_reading_value(data: bytes) -> dict[str, object]:
    """Decode a readings-topic value of either format (msgpack maps start with 0x80..0x8f or 0xde)."""
    if data[:1] == b"{":
        return json.loads(data)  # type: ignore[no-any-return]
    return umsgpack.unpackb(data)  # type: ignore[no-any-return]


class Expander:
    """Turns batches into reading records, dropping readings already applied.

    Changes are *pending* until :meth:`commit` (the transaction that carries
    them committed) or :meth:`rollback` (it did not). Batches expanded before
    a commit see each other's pending changes, as they share one transaction.

    Args:
        value_format: ``"json"`` (default) or ``"msgpack"``.
    """

    def __init__(self, value_format: str = FORMAT_JSON) -> None:
        if value_format not in _FORMATS:
            raise UpstreamConfigError(f"readings format {value_format!r} is not one of {_FORMATS}")
        self.value_format = value_format
        self._applied: dict[str, AppliedRanges] = {}
        self._pending: dict[str, AppliedRanges] = {}

    def load(self, key: str, value: bytes | None) -> None:
        """Take one state-topic record (a later record for a key replaces an earlier one; ``None`` deletes)."""
        if value is None:
            self._applied.pop(key, None)
        else:
            self._applied[key] = AppliedRanges.from_bytes(value)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the committed state of ``keys`` (their partitions went to another instance)."""
        for key in keys:
            self._applied.pop(key, None)

    def applied(self, key: str) -> AppliedRanges:
        return (self._pending.get(key) or self._applied.get(key) or AppliedRanges()).copy()

    def keys(self) -> list[str]:
        return sorted(self._applied)

    def expand(self, data: bytes) -> Expansion:
        """Decode a batch and return the records of the readings not yet applied.

        Effects:
            The batch's offset range joins the key's pending applied ranges.

        Raises:
            BatchFormatError: the bytes are not a valid batch (nothing changes).
        """
        batch = decode_batch(data)
        h = batch.header
        key = f"{h.gateway}/{h.stream}"
        applied = self._pending.get(key) or (self._applied.get(key) or AppliedRanges()).copy()
        records = []
        duplicates = 0
        for entry in batch.entries:
            if applied.contains(entry.offset):
                duplicates += 1
                continue
            r = entry.reading
            records.append(
                OutRecord(
                    reading_key(h.gateway, h.stream, r.device, r.metric),
                    encode_reading_value(h, entry.offset, r.device, r.metric, r.ts_ms, r.value, r.received_ms,
                                         r.time_source, self.value_format),
                    r.ts_ms,
                )
            )
        applied.add(h.first_offset, h.last_offset)
        self._pending[key] = applied
        return Expansion(h, tuple(records), duplicates)

    def pending(self) -> dict[str, bytes]:
        """The state records the current transaction must write, by key."""
        return {key: ranges.to_bytes() for key, ranges in self._pending.items()}

    def commit(self) -> None:
        self._applied.update(self._pending)
        self._pending = {}

    def rollback(self) -> None:
        self._pending = {}


# ---------------------------------------------------------------------------
# The Kafka shell
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CentralConfig:
    """Settings of one expander instance.

    Args:
        bootstrap: Kafka ``host:port[,...]``.
        batch_topic: where gateways put batches.
        readings_topic: where readings go.
        state_topic: the compacted applied-ranges topic; needs as many
            partitions as the batch topic (default ``<readings_topic>.state``).
        deadletter_topic: batches that do not decode (default
            ``<batch_topic>.deadletter``).
        group_id: the consumer group; run more instances with the same group
            to scale out.
        instance_id: names this instance, stable across its restarts: it
            becomes the ``transactional.id`` (a restarted instance fences its
            predecessor and aborts what it left open) and the static
            ``group.instance.id`` (a restart takes back the same partitions
            without a rebalance). Empty: a random id, no static membership.
        value_format: ``json`` or ``msgpack``.
        max_batches: batches per transaction at most.
        transaction_timeout_ms: the broker aborts a transaction left open longer.
        settings: extra librdkafka settings for every client (TLS, SASL).
    """

    bootstrap: str
    batch_topic: str = "tidegate.batches"
    readings_topic: str = "tidegate.readings"
    state_topic: str = ""
    deadletter_topic: str = ""
    group_id: str = "tidegate-central"
    instance_id: str = ""
    value_format: str = FORMAT_JSON
    max_batches: int = 200
    poll_timeout_s: float = 0.2
    transaction_timeout_ms: int = 30_000
    operation_timeout_s: float = 30.0
    settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise UpstreamConfigError("central needs a Kafka bootstrap address")
        if self.value_format not in _FORMATS:
            raise UpstreamConfigError(f"readings format {self.value_format!r} is not one of {_FORMATS}")
        if not 1 <= self.max_batches <= 100_000:
            raise UpstreamConfigError(f"max_batches {self.max_batches} is outside 1..100000")
        if not self.state_topic:
            object.__setattr__(self, "state_topic", f"{self.readings_topic}.state")
        if not self.deadletter_topic:
            object.__setattr__(self, "deadletter_topic", f"{self.batch_topic}.deadletter")

    @property
    def transactional_id(self) -> str:
        """``<group>-<instance_id>``, or empty when the instance has no stable name."""
        return f"{self.group_id}-{self.instance_id}" if self.instance_id else ""


@dataclass
class ExpanderStats:
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    transactions: int = 0
    recoveries: int = 0
    state_loads: int = 0


def state_reader_config(config: CentralConfig) -> dict[str, object]:
    """A consumer that reads the state topic to its end and never joins a group."""
    return {
        "bootstrap.servers": config.bootstrap,
        **config.settings,
        "group.id": f"{config.group_id}.state-reader",  # never joins or commits; librdkafka wants a name
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # At the end of a partition the broker would hold each fetch for
        # fetch.wait.max.ms (500) before the EOF; the reader wants it now.
        "fetch.wait.max.ms": 10,
    }


def producer_config(config: CentralConfig, transactional_id: str) -> dict[str, object]:
    """The expander's transactional producer."""
    return {
        "bootstrap.servers": config.bootstrap,
        **config.settings,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": config.transaction_timeout_ms,
        "message.timeout.ms": config.transaction_timeout_ms,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        # The Java client's partitioner, so that every client agrees where a series lives.
        "partitioner": "murmur2_random",
    }


def load_state(reader: object, config: CentralConfig, partitions: set[int], expander: Expander,
               key_partition: dict[str, int]) -> None:
    """Read state partitions to their end (read_committed) into ``expander``.

    Args:
        reader: a Consumer made with :func:`state_reader_config`; left unassigned.
        partitions: the state partitions to read.
        key_partition: filled with the partition of each key read.

    Raises:
        BridgeError: the topic cannot be read, or reading stalls (no record
            for the operation timeout) before its end.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    waiting = set()
    for p in partitions:
        low, high = reader.get_watermark_offsets(  # type: ignore[attr-defined]
            TopicPartition(config.state_topic, p), timeout=config.operation_timeout_s, cached=False)
        if high > low:
            waiting.add(p)
    if not waiting:
        return
    reader.assign([TopicPartition(config.state_topic, p, OFFSET_BEGINNING) for p in waiting])  # type: ignore[attr-defined]
    deadline = time.monotonic() + config.operation_timeout_s
    try:
        while waiting:
            if time.monotonic() > deadline:
                raise BridgeError(f"state partitions {sorted(waiting)}: no progress towards their end "
                                  f"for {config.operation_timeout_s:.0f} s")
            messages = reader.consume(1000, 0.2)  # type: ignore[attr-defined]
            if messages:
                # Only a stall is an error: the uncompacted tail of a busy state
                # partition can take longer than the timeout to read (docs/scaling.md).
                deadline = time.monotonic() + config.operation_timeout_s
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(message.partition())
                        continue
                    raise BridgeError(f"cannot read the state topic: {error}")
                key = message.key().decode()
                expander.load(key, message.value())
                key_partition[key] = message.partition()
    finally:
        reader.unassign()  # type: ignore[attr-defined]


def produce(producer: object, topic: str, key: bytes | None, value: bytes, *, wait_s: float = 60.0,
            **kwargs: object) -> None:
    """``producer.produce``, waiting while librdkafka's local queue is full.

    Raises:
        KafkaException: the queue stayed full for ``wait_s`` (nothing is being
            delivered); the transaction fails and is recovered.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)  # type: ignore[attr-defined]
            return
        except BufferError:
            if time.monotonic() > deadline:
                from confluent_kafka import KafkaError, KafkaException

                raise KafkaException(KafkaError(KafkaError._QUEUE_FULL,  # type: ignore[attr-defined]
                                                f"local queue full for {wait_s:.0f} s producing to {topic}")) from None
            producer.poll(0.05)  # type: ignore[attr-defined]


#: The exit status of ``python -m bridge.central`` when a transaction is stuck (see :class:`StallWatch`).
EXIT_STALLED = 3
#: Seconds a transaction may run past two operation timeouts before it counts as stuck.
STALL_MARGIN_S = 5.0


class StallWatch:
    """Calls ``on_stall`` once when a watched stretch of code runs longer than ``limit_s``.

    librdkafka's transactional calls take a timeout, but some states of its
    transaction manager wait without one (librdkafka issues 3013 and 4420:
    ``send_offsets_to_transaction`` and ``begin_transaction`` waiting for
    ever). An expander caught in one is alive and silent: its batches wait,
    and the broker aborts its transaction after ``transaction.timeout.ms``.
    Only a new process gets out of it, and exactly-once is kept across that,
    because the new producer's ``init_transactions`` fences the old one and
    the new instance resumes from the committed offsets and state. So
    ``python -m bridge.central`` exits with :data:`EXIT_STALLED` for its
    supervisor (systemd, the fault harness) to start it again.

    Args:
        limit_s: how long one watched stretch may run.
        on_stall: called from the watch's thread, at most once.
        clock: monotonic seconds (injected for tests).
        tick_s: how often the watch looks.
    """

    def __init__(self, limit_s: float, on_stall: Callable[[float], None], clock: Callable[[], float] = time.monotonic,
                 tick_s: float = 1.0) -> None:
        self.limit_s = limit_s
        self._on_stall = on_stall
        self._clock = clock
        self._tick_s = tick_s
        self._since: float | None = None
        self._fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tidegate-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def watching(self) -> Iterator[None]:
        self._since = self._clock()
        try:
            yield
        finally:
            self._since = None

    def check(self) -> bool:
        """Fire if the stretch being watched has run past the limit; True if it fired now."""
        since = self._since
        if since is None or self._fired:
            return False
        stalled = self._clock() - since
        if stalled <= self.limit_s:
            return False
        self._fired = True
        self._on_stall(stalled)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.check()


class KafkaExpander:
    """One expander instance: a consumer-group member with a transactional producer.

    Create it, then call :meth:`run` (blocking) from one thread; :meth:`stop`
    from any thread ends it after the current transaction.

    Raises (from run):
        UpstreamConfigError: the topics are missing or the state topic's
            partition count differs from the batch topic's.
    """

    def __init__(self, config: CentralConfig, on_transaction: Callable[[ExpanderStats], None] | None = None,
                 on_stall: Callable[[float], None] | None = None) -> None:
        from confluent_kafka import Consumer  # imported here: only the shell needs librdkafka

        self.config = config
        # A transaction's calls each give up after the operation timeout (send
        # the offsets, commit), so one that runs past two of them and a margin
        # is stuck; recovery after a failure is not watched (it has its own deadline).
        self._watch = (StallWatch(2 * config.operation_timeout_s + STALL_MARGIN_S, on_stall)
                       if on_stall is not None else None)
        self.stats = ExpanderStats()
        self.expander = Expander(config.value_format)
        self._on_transaction = on_transaction
        self._stop = threading.Event()
        self.transactional_id = config.transactional_id or f"{config.group_id}-{uuid.uuid4().hex[:12]}"
        self._key_partition: dict[str, int] = {}
        self._assigned: set[int] = set()
        self._consumer = Consumer({
            "bootstrap.servers": config.bootstrap,
            **config.settings,
            "group.id": config.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            **({"group.instance.id": self.transactional_id} if config.instance_id else {}),
        })
        self._state_reader = Consumer(state_reader_config(config))
        self._producer_config = producer_config(config, self.transactional_id)
        self._producer = None

    # -- life cycle ---------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration_s: float | None = None) -> ExpanderStats:
        """Expand batches until :meth:`stop` (or ``duration_s``); returns the counts."""
        self._check_topics()
        self._new_producer()
        self._consumer.subscribe(
            [self.config.batch_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        deadline = None if duration_s is None else time.monotonic() + duration_s
        if self._watch is not None:
            self._watch.start()
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                messages = self._consumer.consume(self.config.max_batches, self.config.poll_timeout_s)
                batch_messages = []
                for message in messages:
                    error = message.error()
                    if error is None:
                        batch_messages.append(message)
                    elif error.fatal():
                        raise BridgeError(f"batch consumer failed: {error}")
                    else:
                        log.warning("batch consumer: %s", error)
                if batch_messages:
                    self._transact(batch_messages)
        finally:
            if self._watch is not None:
                self._watch.stop()
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self._consumer.close()
        except RuntimeError:
            pass  # already closed
        try:
            self._state_reader.close()
        except RuntimeError:
            pass
        self._producer = None

    def _check_topics(self) -> None:
        metadata = self._consumer.list_topics(timeout=self.config.operation_timeout_s)
        counts = {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}
        for name in (self.config.batch_topic, self.config.readings_topic, self.config.state_topic,
                     self.config.deadletter_topic):
            if name not in counts:
                raise UpstreamConfigError(f"topic {name!r} does not exist (create it, or run with --create-topics)")
        if counts[self.config.state_topic] != counts[self.config.batch_topic]:
            raise UpstreamConfigError(
                f"state topic {self.config.state_topic!r} has {counts[self.config.state_topic]} partitions, "
                f"the batch topic {counts[self.config.batch_topic]}: they must be equal"
            )
        self._warn_about_retention()

    def _warn_about_retention(self) -> None:
        # A batch's Kafka timestamp is its window start (device time), so
        # time-based retention on the batch topic deletes a backlog older
        # than retention.ms on arrival, before it is expanded.
        from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

        admin = AdminClient({"bootstrap.servers": self.config.bootstrap, **self.config.settings})
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.config.batch_topic)
        try:
            entries = admin.describe_configs([resource])[resource].result(self.config.operation_timeout_s)
        except Exception as exc:  # KafkaException: no DescribeConfigs ACL, say; only a warning is at stake
            log.info("cannot read the batch topic's configuration: %s", exc)
            return
        retention = entries.get("retention.ms")
        stamp = entries.get("message.timestamp.type")
        if retention is not None and retention.value != "-1" and (stamp is None or stamp.value == "CreateTime"):
            log.warning(
                "batch topic %s has retention.ms=%s with CreateTime timestamps (window starts): batches of windows "
                "older than that are deleted on arrival, before expansion; see docs/exactly_once.md",
                self.config.batch_topic, retention.value,
            )

    def _new_producer(self) -> None:
        from confluent_kafka import Producer

        old, self._producer = self._producer, None
        if old is not None:
            # Drop whatever the old instance still holds; the new one's
            # init_transactions bumps the epoch and fences its requests.
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
        producer = Producer(self._producer_config)
        producer.init_transactions(self.config.operation_timeout_s)
        self._producer = producer

    # -- rebalancing ----------------------------------------------------------

    def _on_assign(self, consumer: object, partitions: list) -> None:  # type: ignore[type-arg]
        numbers = {tp.partition for tp in partitions}
        # Ask for the committed offsets first: with read_committed librdkafka
        # asks for *stable* offsets, so this waits until a transaction that
        # the partitions' previous owner left pending has ended, and the
        # state we load next includes it (KIP-447).
        committed = self._consumer.committed(partitions, timeout=self.config.operation_timeout_s)
        self._assigned |= numbers
        self._load_state(numbers)
        log.info("assigned batch partitions %s at offsets %s; %d keys of state",
                 sorted(numbers), [tp.offset for tp in committed], len(self._key_partition))

    def _on_revoke(self, consumer: object, partitions: list) -> None:  # type: ignore[type-arg]
        numbers = {tp.partition for tp in partitions}
        log.info("batch partitions %s revoked", sorted(numbers))
        self._assigned -= numbers
        gone = [key for key, p in self._key_partition.items() if p in numbers]
        self.expander.forget(gone)
        for key in gone:
            del self._key_partition[key]

    def _load_state(self, numbers: set[int]) -> None:
        if not numbers:
            return
        self.stats.state_loads += 1
        gone = [key for key, p in self._key_partition.items() if p in numbers]
        self.expander.forget(gone)
        load_state(self._state_reader, self.config, numbers, self.expander, self._key_partition)

    # -- the transaction ----------------------------------------------------

    def _transact(self, messages: Sequence) -> None:  # type: ignore[type-arg]
        from confluent_kafka import KafkaException, TopicPartition

        producer = self._producer
        if producer is None:
            raise BridgeError("the expander is not running")
        counts = ExpanderStats()
        next_offsets: dict[int, int] = {}
        try:
            with self._watch.watching() if self._watch is not None else nullcontext():
                producer.begin_transaction()
                for message in messages:
                    next_offsets[message.partition()] = message.offset() + 1
                    self._expand_one(producer, message, counts)
                for key, value in self.expander.pending().items():
                    self._produce(producer, self.config.state_topic, key.encode(), value,
                                  partition=self._key_partition[key])
                offsets = [TopicPartition(self.config.batch_topic, p, o) for p, o in sorted(next_offsets.items())]
                producer.send_offsets_to_transaction(
                    offsets, self._consumer.consumer_group_metadata(), self.config.operation_timeout_s
                )
                producer.commit_transaction(self.config.operation_timeout_s)
        except KafkaException as exc:
            self.expander.rollback()
            log.warning("transaction failed, recovering: %s", exc)
            self._recover()
            return
        self.expander.commit()
        self.stats.batches += counts.batches
        self.stats.readings += counts.readings
        self.stats.duplicates += counts.duplicates
        self.stats.dead_letters += counts.dead_letters
        self.stats.transactions += 1
        if self._on_transaction is not None:
            self._on_transaction(self.stats)

    def _expand_one(self, producer: object, message: object, counts: ExpanderStats) -> None:
        value = message.value() or b""  # type: ignore[attr-defined]
        try:
            expansion = self.expander.expand(value)
        except BatchFormatError as exc:
            # Never lost, never fatal: the bytes go to the dead-letter topic
            # with the reason, in the same transaction as the offsets.
            log.warning("batch at %s/%d@%d is not valid (%s): dead-lettered", message.topic(),  # type: ignore[attr-defined]
                        message.partition(), message.offset(), exc.reason)  # type: ignore[attr-defined]
            self._produce(producer, self.config.deadletter_topic, message.key(), value, headers=[  # type: ignore[attr-defined]
                ("tg-reason", exc.reason.encode()),
                ("tg-error", str(exc).encode()),
                ("tg-source", f"{message.topic()}/{message.partition()}/{message.offset()}".encode()),  # type: ignore[attr-defined]
            ])
            counts.dead_letters += 1
            return
        h = expansion.header
        self._key_partition[f"{h.gateway}/{h.stream}"] = message.partition()  # type: ignore[attr-defined]
        for record in expansion.records:
            self._produce(producer, self.config.readings_topic, record.key, record.value, timestamp=record.timestamp_ms)
        counts.batches += 1
        counts.readings += len(expansion.records)
        counts.duplicates += expansion.duplicates

    _produce = staticmethod(produce)

    def _recover(self) -> None:
        """After any failed transaction: new producer, rewind to committed offsets, reload state.

        Whether the failed transaction committed is unknown (a timed-out
        commit may still land), so everything is re-derived from what Kafka
        holds: the committed offsets say where to resume, the state topic
        which readings are applied.
        """
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.stats.recoveries += 1
        deadline = time.monotonic() + 10 * self.config.operation_timeout_s
        while True:
            try:
                self._new_producer()
                assignment = self._consumer.assignment()
                committed = self._consumer.committed(assignment, timeout=self.config.operation_timeout_s)
                for tp in committed:
                    offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
                self._load_state({tp.partition for tp in assignment})
                return
            except Exception as exc:  # KafkaException, BridgeError: the cluster is not back yet
                if time.monotonic() > deadline:
                    raise BridgeError(f"cannot recover after a failed transaction: {exc}") from exc
                log.warning("recovery failed, retrying: %s", exc)
                self._stop.wait(1.0)


def create_topics(config: CentralConfig, readings_partitions: int = 6, replication: int = 1) -> None:
    """Create the readings, state and dead-letter topics if missing (the batch topic must exist)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": config.bootstrap, **config.settings})
    metadata = admin.list_topics(timeout=config.operation_timeout_s)
    if config.batch_topic not in metadata.topics:
        raise UpstreamConfigError(f"batch topic {config.batch_topic!r} does not exist")
    batch_partitions = len(metadata.topics[config.batch_topic].partitions)
    wanted = [
        NewTopic(config.readings_topic, readings_partitions, replication),
        NewTopic(config.state_topic, batch_partitions, replication, config={"cleanup.policy": "compact"}),
        NewTopic(config.deadletter_topic, 1, replication),
    ]
    missing = [t for t in wanted if t.topic not in metadata.topics]
    if not missing:
        return
    for name, future in admin.create_topics(missing).items():
        try:
            future.result(config.operation_timeout_s)
        except Exception as exc:  # KafkaException: TOPIC_ALREADY_EXISTS from a racing instance is fine
            if "already exists" not in str(exc).lower():
                raise UpstreamConfigError(f"cannot create topic {name!r}: {exc}") from exc


# ---------------------------------------------------------------------------
# python -m bridge.central
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.central",
        description="Expand tidegate batches into one Kafka record per reading, exactly once.",
    )
    parser.add_argument("--bootstrap", required=True, help="Kafka host:port[,host:port]")
    parser.add_argument("--batch-topic", default="tidegate.batches")
    parser.add_argument("--readings-topic", default="tidegate.readings")
    parser.add_argument("--state-topic", default="", help="default: <readings-topic>.state")
    parser.add_argument("--deadletter-topic", default="", help="default: <batch-topic>.deadletter")
    parser.add_argument("--group", default="tidegate-central", help="consumer group (scale out: same group)")
    parser.add_argument("--instance-id", default="", help="stable per instance; used in the transactional.id")
    parser.add_argument("--format", choices=_FORMATS, default=FORMAT_JSON, help="readings value format")
    parser.add_argument("--max-batches", type=int, default=200, help="batches per transaction at most")
    parser.add_argument("--create-topics", action="store_true", help="create missing readings/state/dead-letter topics")
    parser.add_argument("--readings-partitions", type=int, default=6, help="partitions of a created readings topic")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra librdkafka setting")
    parser.add_argument("--mqtt", default="", metavar="HOST:PORT",
                        help="read batches from an upstream MQTT broker (tidegate/batches/#) instead of the batch topic")
    parser.add_argument("--status", action="store_true", help="print a JSON line of counts after each transaction")
    return parser


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UpstreamConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _exit_stalled(seconds: float) -> None:
    """Leave at once: a transaction stuck inside librdkafka cannot be ended from Python (see StallWatch)."""
    log.critical("a transaction has been stuck for %.0f s inside librdkafka; exiting with status %d so that a new "
                 "instance takes over (its transactional.id fences this one; nothing is lost or duplicated)",
                 seconds, EXIT_STALLED)
    logging.shutdown()
    os._exit(EXIT_STALLED)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = CentralConfig(
        bootstrap=args.bootstrap,
        batch_topic=args.batch_topic,
        readings_topic=args.readings_topic,
        state_topic=args.state_topic,
        deadletter_topic=args.deadletter_topic,
        group_id=args.group,
        instance_id=args.instance_id,
        value_format=args.format,
        max_batches=args.max_batches,
        settings=_settings(args.set),
    )
    if args.create_topics:
        create_topics(config, readings_partitions=args.readings_partitions)

    def status(stats: ExpanderStats) -> None:
        print(json.dumps(stats.__dict__), flush=True)

    runner: KafkaExpander | MqttBatchSource
    if args.mqtt:
        from bridge.mqtt_upstream import MqttBatchSource

        runner = MqttBatchSource.from_address(args.mqtt, config, on_transaction=status if args.status else None)
    else:
        runner = KafkaExpander(config, on_transaction=status if args.status else None, on_stall=_exit_stalled)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    try:
        stats = runner.run(duration_s=args.duration)
    except KeyboardInterrupt:
        return 0
    except BridgeError as exc:
        print(f"bridge.central: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats.__dict__), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
