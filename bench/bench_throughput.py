"""Forwarding and expander throughput, each against a ceiling in the same run.

Run: python -m bench.bench_throughput [--quick] [--readings N] [--expand-readings N]

Forwarding (one bridge instance). A backlog of N readings of a fleet (50
sensors x 2 metrics at 1 Hz) is written to a real durable log
(edge.logstore.open_log) and synced; then bridge.forwarder.Forwarder, default
adaptive policy, drains it through the real KafkaTransport to a real Kafka
broker. The ceilings send the very batch bytes the forwarder sent, with their
keys, headers and timestamps, from a plain confluent-kafka producer with the
KafkaTransport's settings and no log reads, decoding, encoding or cursor
stores: once one batch at a time, each waited for (the transport's own
discipline: the cursor may move only after the acknowledgement), and once all
in flight together (the broker's and librdkafka's limit). A third row drains
the same backlog into the in-memory transport: the gateway-side cost alone.

Expander (one and two instances of ``python -m bridge.central`` in one
consumer group, separate processes). Batches of 100 readings from 40 gateways
go to a batch topic of 4 partitions, a gateway's batches to one partition,
the gateways spread evenly. The instances start first and the benchmark waits
until the group is stable (every partition assigned); then the batch topic is
filled in one burst (well under a second) and the clock runs until the
instances have committed every reading to the readings topic. The ceiling,
run the same way with as many processes: a plain consumer and producer in the
same group that copy each batch record to the readings records it stands for,
computed beforehand, so the same records go in and come out with no decoding,
JSON encoding, state or transactions (offsets auto-committed, a flush per
poll as the expander commits per poll).

CPU is user + system time from /proc: the bridge's process (librdkafka's
threads included) or the expander processes; the broker's beside it. The
machine runs the broker too, so compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer

from bench.bench_pipeline import proc_stats
from bench.common import ROOT, fleet_readings, machine, table
from bridge.central import CentralConfig, Expander, load_state, producer_config, produce, state_reader_config
from bridge.errors import PartialSend
from bridge.forwarder import CURSOR_NAME, Forwarder
from bridge.transports import KafkaTransport, MemoryTransport
from core.batch import BatchHeader, Entry, decode_header, encode_batch, kafka_headers, kafka_key
from core.batching import BatchPolicy
from core.log import LogConfig
from core.reading import encode_reading
from core.timewindow import window_of
from edge.logstore import open_log
from tests.kafka.broker import KafkaBroker, ensure_kafka_jars

WINDOW_MS = 3_600_000
STREAM = "sensors"
# Device times are in 2026-01: time-based retention would delete them (docs/exactly_once.md).
KEEP = {"retention.ms": "-1"}
BATCH_PARTITIONS = 4
GATEWAYS = 40
BATCH_READINGS = 100


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread included."""
    t = os.times()
    return t.user + t.system


# -- forwarding ---------------------------------------------------------------


class Recording:
    """A transport that keeps what the inner one accepted, for the ceiling to send again.

    It offers ``send_many`` exactly when the inner transport does, so the
    forwarder sends trains or single batches as it would to the inner one.
    """

    def __init__(self, inner: KafkaTransport | MemoryTransport) -> None:
        self.inner = inner
        self.sent: list[tuple[bytes, BatchHeader]] = []
        if hasattr(inner, "send_many"):
            self.send_many = self._send_many

    def send(self, batch: bytes, header: BatchHeader) -> None:
        self.inner.send(batch, header)
        self.sent.append((batch, header))

    def _send_many(self, items: list[tuple[bytes, BatchHeader]]) -> None:
        try:
            self.inner.send_many(items)  # type: ignore[union-attr]
        except PartialSend as exc:
            self.sent.extend(items[:exc.acknowledged])
            raise
        self.sent.extend(items)

    def close(self) -> None:
        self.inner.close()


def drain(log: object, transport: object, end: int, policy: BatchPolicy) -> dict[str, float]:
    """Run a fresh Forwarder from offset 0 until its cursor reaches ``end``; wall and CPU seconds."""
    log.store_cursor(CURSOR_NAME, STREAM, 0)  # type: ignore[attr-defined]
    forwarder = Forwarder(log, transport, "gw-bench", WINDOW_MS, policy)  # type: ignore[arg-type]
    batches = readings = size = 0
    wall, cpu = time.perf_counter(), cpu_seconds()
    while forwarder.cursor(STREAM) < end:
        result = forwarder.forward_once(int(time.time() * 1000))
        batches, readings, size = batches + result.batches, readings + result.readings, size + result.bytes
    return {"seconds": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "batches": batches,
            "readings": readings, "bytes": size}


def warm_up(send: object) -> None:
    """One small batch through ``send(batch, header)``: connection and idempotent producer id before the clock."""
    reading = fleet_readings(sensors=1, seconds=1)[0]
    batch = encode_batch("gw-warm-up", "warm-up", window_of(reading.ts_ms, WINDOW_MS), [Entry(0, reading)])
    send(batch, decode_header(batch))  # type: ignore[operator]


def send_raw(bootstrap: str, topic: str, sent: list[tuple[bytes, BatchHeader]], one_at_a_time: bool) -> dict[str, float]:
    """The ceiling: the same batch bytes from a plain producer with the KafkaTransport's settings."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "compression.type": "none", "linger.ms": 0, "message.max.bytes": 8 * 1024 * 1024})

    def send(batch: bytes, header: BatchHeader) -> None:
        produce(producer, topic, kafka_key(header), batch, headers=kafka_headers(header),
                timestamp=header.window.start_ms)

    warm_up(send)
    producer.flush(30)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for batch, header in sent:
        send(batch, header)
        if one_at_a_time:
            producer.flush(30)
    if producer.flush(60):
        raise RuntimeError("the ceiling's producer did not get every batch acknowledged")
    out = {"seconds": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "batches": len(sent),
           "readings": sum(h.count for _, h in sent), "bytes": sum(len(b) for b, _ in sent)}
    producer.close()
    return out


# The forwarder's default (adaptive: batches grow to 10,000 readings under a
# backlog), and fixed 100-reading batches (about what a caught-up gateway of
# 100 readings/s sends: the per-batch costs show).
POLICIES = [("default policy", BatchPolicy()), ("100-reading batches", BatchPolicy(mode="fixed", max_readings=100))]


def bench_forwarding(broker: KafkaBroker, work: Path, n: int) -> list[dict[str, object]]:
    readings = fleet_readings(sensors=50, seconds=n // 100)
    log = open_log(work / "gw-log", LogConfig(window_ms=WINDOW_MS))
    rows: list[dict[str, object]] = []

    def row(case: str, run: object) -> None:
        broker_cpu = proc_stats(broker.pid)[1]  # type: ignore[arg-type]
        result = run()  # type: ignore[operator]
        rows.append({"case": case, **result, "broker_cpu": proc_stats(broker.pid)[1] - broker_cpu})  # type: ignore[arg-type]
        print(json.dumps(rows[-1]), file=sys.stderr)

    try:
        for i in range(0, len(readings), 1000):
            chunk = readings[i:i + 1000]
            log.append_many(STREAM, [(r.ts_ms, encode_reading(r)) for r in chunk], now_ms=chunk[-1].received_ms)
        log.sync()
        end = log.end_offset(STREAM)
        del readings
        for name, policy in POLICIES:
            topic = f"bench-fwd-{uuid.uuid4().hex[:8]}"
            broker.create_topic(topic, config=KEEP)
            transport = Recording(KafkaTransport(broker.bootstrap, topic))
            warm_up(transport.inner.send)
            row(f"Forwarder -> KafkaTransport, {name}", lambda: drain(log, transport, end, policy))
            transport.close()
            for one_at_a_time, how in ((True, "one at a time"), (False, "all in flight")):
                topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
                broker.create_topic(topic, config=KEEP)
                row(f"ceiling: the same batches, {how}",
                    lambda: send_raw(broker.bootstrap, topic, transport.sent, one_at_a_time))
            row(f"Forwarder -> in-memory transport, {name}", lambda: drain(log, MemoryTransport(), end, policy))
    finally:
        log.close()
    return rows


# -- expander ------------------------------------------------------------------


def gateway_batches(n: int) -> list[tuple[int, bytes]]:
    """About ``n`` readings as (partition, batch) from GATEWAYS gateways, interleaved as live traffic arrives."""
    per_gateway = max(BATCH_READINGS, n // GATEWAYS)
    per_gateway_batches = []
    for g in range(GATEWAYS):
        # 10 sensors x 2 metrics at 1 Hz; one window (the fleet starts on a window boundary).
        readings = fleet_readings(sensors=10, seconds=per_gateway // 20, seed=g)
        window = window_of(readings[0].ts_ms, WINDOW_MS)
        entries = [Entry(offset, r) for offset, r in enumerate(readings)]
        per_gateway_batches.append([
            (g % BATCH_PARTITIONS, encode_batch(f"gw-{g:05d}", STREAM, window, entries[i:i + BATCH_READINGS]))
            for i in range(0, len(entries), BATCH_READINGS)
        ])
    return [b for group in zip(*per_gateway_batches) for b in group]


@dataclass
class Instance:
    """One process of the group: its status lines (readings so far) and its partition assignment, from its output."""

    process: subprocess.Popen[str]
    readings: int = 0
    last_at: float = 0.0
    assigned: set[int] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._readers = [threading.Thread(target=self._read_status, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for reader in self._readers:
            reader.start()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``), then read the output to its end and close the pipes."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def _read_status(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.readings = max(self.readings, int(json.loads(line)["readings"]))
                self.last_at = time.perf_counter()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "assigned batch partitions [" in line:
                self.assigned |= _partitions(line, "assigned batch partitions ")
            elif " revoked" in line and "batch partitions [" in line:
                self.assigned -= _partitions(line, "batch partitions ")


def _partitions(line: str, after: str) -> set[int]:
    inside = line.split(after, 1)[1].split("]", 1)[0].strip("[ ")
    return {int(p) for p in inside.split(",") if p.strip()}


@dataclass
class GroupTopics:
    bootstrap: str
    batches: str
    readings: str
    state: str
    deadletter: str
    group: str

    @classmethod
    def create(cls, broker: KafkaBroker, tag: str) -> GroupTopics:
        name = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
        topics = cls(broker.bootstrap, f"{name}-batches", f"{name}-readings", f"{name}-state",
                     f"{name}-deadletter", f"{name}-group")
        broker.create_topic(topics.batches, partitions=BATCH_PARTITIONS, config=KEEP)
        broker.create_topic(topics.readings, partitions=6, config=KEEP)
        broker.create_topic(topics.state, partitions=BATCH_PARTITIONS, config={"cleanup.policy": "compact"})
        broker.create_topic(topics.deadletter, config=KEEP)
        return topics


def expander_command(t: GroupTopics, instance: str) -> list[str]:
    return [sys.executable, "-m", "bridge.central", "--bootstrap", t.bootstrap, "--batch-topic", t.batches,
            "--readings-topic", t.readings, "--state-topic", t.state, "--deadletter-topic", t.deadletter,
            "--group", t.group, "--instance-id", instance, "--status"]


def copier_command(t: GroupTopics, instance: str, batches_file: Path) -> list[str]:
    return [sys.executable, "-m", "bench.bench_throughput", "copy-worker", "--bootstrap", t.bootstrap,
            "--source", t.batches, "--sink", t.readings, "--group", t.group, "--batches", str(batches_file)]


def run_group(broker: KafkaBroker, t: GroupTopics, commands: list[list[str]], batches: list[tuple[int, bytes]],
              readings: int) -> dict[str, object]:
    """Start the processes, wait for a stable group, fill the batch topic, time until every reading is out."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Made first: it has its connection and idempotent producer id by the time the group is stable.
    producer = Producer({"bootstrap.servers": t.bootstrap, "acks": "all", "enable.idempotence": True,
                         "compression.type": "none", "linger.ms": 5})
    instances = [Instance(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)) for cmd in commands]
    try:
        deadline = time.monotonic() + 60
        stable_since = None
        while True:
            if any(i.process.poll() is not None for i in instances):
                raise RuntimeError("an instance exited:\n" + "".join(l for i in instances for l in i.lines[-20:]))
            spread = all(i.assigned for i in instances) and set().union(*(i.assigned for i in instances)) == set(
                range(BATCH_PARTITIONS))
            stable_since = (stable_since or time.monotonic()) if spread else None
            if stable_since is not None and time.monotonic() - stable_since > 1.0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the group never settled:\n" + "".join(l for i in instances for l in i.lines[-20:]))
            time.sleep(0.05)
        cpu_before = [proc_stats(i.process.pid)[1] for i in instances]
        broker_before = proc_stats(broker.pid)[1]  # type: ignore[arg-type]
        started = time.perf_counter()
        for partition, data in batches:
            header = decode_header(data)
            produce(producer, t.batches, kafka_key(header), data, partition=partition,
                    headers=kafka_headers(header), timestamp=header.window.start_ms)
        producer.flush(60)
        filled = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while sum(i.readings for i in instances) < readings:
            if time.monotonic() > deadline or any(i.process.poll() is not None for i in instances):
                raise RuntimeError(f"{sum(i.readings for i in instances)} of {readings} readings out:\n"
                                   + "".join(l for i in instances for l in i.lines[-20:]))
            time.sleep(0.01)
        seconds = max(i.last_at for i in instances) - started
        cpu = sum(proc_stats(i.process.pid)[1] - before for i, before in zip(instances, cpu_before))
        broker_cpu = proc_stats(broker.pid)[1] - broker_before  # type: ignore[arg-type]
    finally:
        for i in instances:
            if i.process.poll() is None:
                i.process.send_signal(signal.SIGTERM)
        for i in instances:
            i.stop()
    return {"seconds": seconds, "fill_seconds": filled, "cpu": cpu, "broker_cpu": broker_cpu,
            "readings": readings, "batches": len(batches), "per_instance": [i.readings for i in instances]}


def topic_bytes(broker: KafkaBroker, topic: str) -> int:
    """Bytes of the topic's segment files on the broker's disk (one replica)."""
    return sum(f.stat().st_size for f in broker.data_dir.glob(f"{topic}-*/*.log"))


def bench_state_reload(broker: KafkaBroker, records: int) -> dict[str, float]:
    """How fast an instance that is assigned a partition reads its state (bridge.central.load_state)."""
    t = GroupTopics.create(broker, "state")
    producer = Producer({"bootstrap.servers": t.bootstrap, "linger.ms": 20, "compression.type": "lz4"})
    for i in range(records):
        # Distinct keys, as with no compaction yet: the worst case, the active segment.
        produce(producer, t.state, f"gw-{i:07d}/sensors".encode(), b'{"v":1,"applied":[[0,%d]]}' % (i + 1),
                partition=0)
    producer.flush(60)
    config = CentralConfig(t.bootstrap, t.batches, t.readings, state_topic=t.state, deadletter_topic=t.deadletter,
                           group_id=t.group)
    reader = Consumer(state_reader_config(config))
    expander, keys = Expander(), {}
    started = time.perf_counter()
    load_state(reader, config, {0}, expander, keys)
    seconds = time.perf_counter() - started
    reader.close()
    if len(keys) != records:
        raise RuntimeError(f"state reload read {len(keys)} of {records} keys")
    return {"records": records, "seconds": seconds, "bytes": topic_bytes(broker, t.state)}


def bench_expander(broker: KafkaBroker, work: Path, n: int) -> tuple[list[dict[str, object]], dict[str, float]]:
    batches = gateway_batches(n)
    expander = Expander()
    records = [r for _, data in batches for r in expander.expand(data).records]
    sizes = {
        "batch_bytes_per_reading": sum(len(d) for _, d in batches) / len(records),
        "record_bytes": sum(len(r.key) + len(r.value) for r in records) / len(records),
        "state_record_bytes": sum(len(k) + len(v) for k, v in expander.pending().items()) / len(expander.pending()),
    }
    total = len(records)
    del records, expander
    batches_file = work / "batches.json"
    batches_file.write_text(json.dumps([data.hex() for _, data in batches]))
    rows = []
    for count in (1, 2):
        for kind in ("expander", "ceiling"):
            t = GroupTopics.create(broker, f"{kind}{count}")
            commands = [expander_command(t, f"i{k}") if kind == "expander" else copier_command(t, f"i{k}", batches_file)
                        for k in range(count)]
            result = run_group(broker, t, commands, batches, total)
            result["readings_topic_bytes"] = topic_bytes(broker, t.readings)
            rows.append({"case": f"{kind}, {count} instance{'s' if count > 1 else ''}", "instances": count, **result})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows, sizes


def copy_worker(argv: Sequence[str]) -> int:
    """The expander's ceiling, as a process: batch records in, their precomputed reading records out."""
    parser = argparse.ArgumentParser(prog="bench_throughput copy-worker")
    for name in ("--bootstrap", "--source", "--sink", "--group", "--batches"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("bench.copy")
    expander = Expander()
    out = {}
    for text in json.loads(Path(args.batches).read_text()):
        data = bytes.fromhex(text)
        out[data] = expander.expand(data).records
        expander.rollback()
    config = CentralConfig(args.bootstrap, args.source, args.sink, group_id=args.group)
    settings = producer_config(config, "")
    for key in ("transactional.id", "transaction.timeout.ms"):
        settings.pop(key)
    producer = Producer(settings)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe(
        [args.source],
        on_assign=lambda c, ps: log.info("assigned batch partitions %s", sorted(p.partition for p in ps)),
        on_revoke=lambda c, ps: log.info("batch partitions %s revoked", sorted(p.partition for p in ps)),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    copied = 0
    while not stop.is_set():
        messages = [m for m in consumer.consume(200, 0.2) if m.error() is None]
        for message in messages:
            for record in out[message.value()]:
                produce(producer, args.sink, record.key, record.value, timestamp=record.timestamp_ms)
                copied += 1
        if messages:
            producer.flush(60)
            print(json.dumps({"readings": copied}), flush=True)
    consumer.close()
    producer.close()
    return 0


# -- report --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["copy-worker"]:
        return copy_worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small backlogs (a smoke run)")
    parser.add_argument("--readings", type=int, default=300_000, help="forwarding backlog (readings)")
    parser.add_argument("--expand-readings", type=int, default=200_000, help="readings through the expander")
    parser.add_argument("--state-records", type=int, default=200_000, help="state records to reload")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    n_forward, n_expand, n_state = (30_000, 20_000, 20_000) if args.quick else (
        args.readings, args.expand_readings, args.state_records)
    ensure_kafka_jars()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker(Path(tmp) / "kafka") as broker:
        forwarding = bench_forwarding(broker, Path(tmp), n_forward)
        expanding, sizes = bench_expander(broker, Path(tmp), n_expand)
        state = bench_state_reload(broker, n_state)
    load_after = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps({"forwarding": forwarding, "expander": expanding, "sizes": sizes, "state": state},
                                          indent=1))
    print(f"machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(1 min); {time.strftime('%Y-%m-%d')}\n")
    print(table(
        ["forwarding", "readings", "batches", "seconds", "readings/s", "batches/s", "MB/s", "CPU µs/reading",
         "broker CPU µs/reading", "Forwarder / this"],
        [[r["case"], f"{r['readings']:,}", r["batches"], f"{r['seconds']:.2f}",
          f"{r['readings'] / r['seconds']:,.0f}", f"{r['batches'] / r['seconds']:,.1f}",
          f"{r['bytes'] / r['seconds'] / 1e6:.2f}", f"{r['cpu'] / r['readings'] * 1e6:.1f}",
          f"{r['broker_cpu'] / r['readings'] * 1e6:.1f}", f"{r['seconds'] / forwarding[i // 4 * 4]['seconds']:.2f}"]
         for i, r in enumerate(forwarding)],
    ))
    print()
    ceilings = {r["instances"]: r for r in expanding if str(r["case"]).startswith("ceiling")}
    print(table(
        ["expander", "readings", "batches", "seconds", "readings/s", "per instance", "CPU µs/reading",
         "broker CPU µs/reading", "readings topic B/reading on disk", "this / ceiling"],
        [[r["case"], f"{r['readings']:,}", r["batches"], f"{r['seconds']:.2f}",
          f"{r['readings'] / r['seconds']:,.0f}", " + ".join(f"{x:,}" for x in r["per_instance"]),
          f"{r['cpu'] / r['readings'] * 1e6:.1f}", f"{r['broker_cpu'] / r['readings'] * 1e6:.1f}",
          f"{r['readings_topic_bytes'] / r['readings']:.0f}",
          f"{ceilings[r['instances']]['seconds'] / r['seconds']:.2f}"]
         for r in expanding],
    ))
    print(f"\nbatch bytes/reading {sizes['batch_bytes_per_reading']:.1f} ({BATCH_READINGS} readings a batch); "
          f"readings record {sizes['record_bytes']:.0f} B (key + JSON value); "
          f"state record {sizes['state_record_bytes']:.0f} B (key + value)")
    print(f"state reload (load_state, one partition, {state['records']:,} distinct keys, "
          f"{state['bytes'] / 1e6:.1f} MB on disk): {state['seconds']:.2f} s, "
          f"{state['records'] / state['seconds']:,.0f} records/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
