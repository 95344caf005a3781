"""Twenty gateways, one Kafka, two expander instances in one group, one of them killed: each reading once.

Each simulated gateway is what ``tidegate run`` forwards with: a real durable
log in its own directory (edge.logstore.open_log), a Forwarder and a
KafkaTransport to the batch topic, in a thread of this process, with readings
appended as they arrive. The two expanders are processes of their own, members
of one consumer group (static instance ids ``a`` and ``b``) on a batch topic of
four partitions. Once both have expanded readings, ``b`` is killed with
SIGKILL while the gateways keep sending; after its session times out the
group rebalances, ``a`` takes all four partitions and loads their state. The
readings topic, read with read_committed, must then hold every reading once
by id, each series in one partition in offset order.

The expanders run with a session timeout of 6 s (the broker's minimum) and a
transaction timeout of 5 s, so the rebalance and the abort of ``b``'s open
transaction (which holds back the readings partitions it wrote to for
read_committed readers) take seconds, not the defaults' 45 s and 30 s
(docs/scaling.md, "Consumer-group rebalances").
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.bench_throughput import Instance
from bridge.central import CentralConfig, Expander, load_state
from bridge.errors import BridgeError
from bridge.forwarder import Forwarder
from bridge.transports import KafkaTransport
from core.batching import BatchPolicy
from core.log import LogConfig
from core.reading import Reading, encode_reading
from edge.logstore import open_log
from tests.fixtures.kafka import NewKafkaTopic
from tests.integration.test_central import KEEP, ROOT, Topics, check_exactly_once, read_all
from tests.kafka.broker import KafkaBroker


GATEWAYS = 20
PARTITIONS = 4
WINDOW_MS = 60_000
STREAM = "sensors"
DEVICES = 5  # x 2 metrics, a sample each 100 ms: 100 readings/s a gateway

# KafkaExpander as `python -m bridge.central --status` runs it, with the
# shorter timeouts above (the command line has no transaction-timeout flag).
EXPANDER = """
import json, logging, signal, sys
from bridge.central import CentralConfig, KafkaExpander
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
expander = KafkaExpander(CentralConfig(**json.loads(sys.argv[1])),
                         on_transaction=lambda stats: print(json.dumps(stats.__dict__), flush=True))
signal.signal(signal.SIGTERM, lambda *_: expander.stop())
expander.run()
"""


class SimulatedGateway:
    """A gateway's log, forwarder and Kafka transport, fed and forwarded by one thread."""

    def __init__(self, name: str, data_dir: Path, bootstrap: str, batch_topic: str, seed: int) -> None:
        self.name = name
        self.log = open_log(data_dir, LogConfig(window_ms=WINDOW_MS))
        self.transport = KafkaTransport(bootstrap, batch_topic)
        # Small batches, so that there are many, from every gateway, on every partition.
        policy = BatchPolicy(mode="fixed", max_readings=50, linger_ms=200)
        self.forwarder = Forwarder(self.log, self.transport, name, WINDOW_MS, policy)
        self.feeding = threading.Event()
        self.feeding.set()
        self.error: BaseException | None = None
        self._rng = random.Random(seed)
        self._values = [20 + self._rng.random() * 5 for _ in range(DEVICES)]
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _append_sample(self, now_ms: int) -> None:
        records = []
        for d in range(DEVICES):
            self._values[d] += self._rng.gauss(0, 0.05)
            for metric, value in (("temp_c", round(self._values[d], 2)), ("rh_pct", self._rng.randint(30, 70))):
                records.append((now_ms, encode_reading(Reading(f"node-{d}", metric, now_ms, value, now_ms))))
        self.log.append_many(STREAM, records, now_ms=now_ms)

    def _run(self) -> None:
        try:
            next_sample = time.monotonic()
            while True:
                if self.feeding.is_set() and time.monotonic() >= next_sample:
                    self._append_sample(int(time.time() * 1000))
                    next_sample += 0.1
                self.forwarder.forward_once(int(time.time() * 1000))
                if not self.feeding.is_set() and self.forwarder.cursor(STREAM) >= self.log.end_offset(STREAM):
                    return
                time.sleep(0.02)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert self.error is None, f"{self.name}: {self.error!r}"
        assert not self._thread.is_alive(), f"{self.name} did not drain its log in {timeout} s"

    def close(self) -> int:
        """Close the transport and the log; returns how many readings the log held."""
        end = self.log.end_offset(STREAM)
        self.transport.close()
        self.log.close()
        return end


def start_expander(topics: Topics, group: str, instance: str) -> Instance:
    config = CentralConfig(
        bootstrap=topics.bootstrap, batch_topic=topics.batches, readings_topic=topics.readings,
        state_topic=topics.state, deadletter_topic=topics.deadletter, group_id=group, instance_id=instance,
        max_batches=20, transaction_timeout_ms=5000,
        settings={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
    )
    fields = {k: getattr(config, k) for k in ("bootstrap", "batch_topic", "readings_topic", "state_topic",
                                               "deadletter_topic", "group_id", "instance_id", "max_batches",
                                               "transaction_timeout_ms")}
    process = subprocess.Popen(
        [sys.executable, "-c", EXPANDER, json.dumps({**fields, "settings": dict(config.settings)})],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return Instance(process)


def wait_until(condition: object, timeout: float, what: str, instances: list[Instance]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}:\n" + "".join(i.lines[-15:]) for n, i in zip("ab", instances))
            raise AssertionError(f"{what}: not within {timeout} s\n{logs}")
        time.sleep(0.05)


def state_keys_loaded(instance: Instance) -> list[int]:
    """The "N keys of state" of each assignment the instance logged."""
    return [int(line.rsplit("; ", 1)[1].split()[0]) for line in instance.lines if "keys of state" in line]


@pytest.mark.kafka
@pytest.mark.slow
def test_twenty_gateways_and_two_expanders_one_killed_give_each_reading_once(
        kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic, tmp_path: Path) -> None:
    topics = Topics(
        kafka_broker.bootstrap,
        batches=new_kafka_topic(partitions=PARTITIONS, config=KEEP, prefix="batches"),
        readings=new_kafka_topic(partitions=6, config=KEEP, prefix="readings"),
        state=new_kafka_topic(partitions=PARTITIONS, config={"cleanup.policy": "compact"}, prefix="state"),
        deadletter=new_kafka_topic(config=KEEP, prefix="deadletter"),
    )
    group = f"scaling-{tmp_path.name[-12:]}"
    a, b = start_expander(topics, group, "a"), start_expander(topics, group, "b")
    gateways: list[SimulatedGateway] = []
    try:
        # Both members in the group, the four partitions shared between them.
        wait_until(lambda: a.assigned and b.assigned and a.assigned | b.assigned == set(range(PARTITIONS))
                   and not a.assigned & b.assigned, 60, "a stable group of two", [a, b])
        gateways = [SimulatedGateway(f"gw-{g:02d}", tmp_path / f"gw-{g:02d}", topics.bootstrap, topics.batches, g)
                    for g in range(GATEWAYS)]
        for gateway in gateways:
            gateway.start()
        wait_until(lambda: a.readings >= 1000 and b.readings >= 1000, 45, "both instances expanding", [a, b])
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(10)
        killed_at, b_readings = time.monotonic(), b.readings
        keys_before = state_keys_loaded(a)[-1]
        # b's session times out, the group rebalances, a gets everything and loads b's state.
        wait_until(lambda: a.assigned == set(range(PARTITIONS)), 45, "a took over every partition", [a, b])
        taken_over_at, take_over_s = a.readings, time.monotonic() - killed_at
        wait_until(lambda: a.readings > taken_over_at + 1000, 30, "a expanding after the take-over", [a, b])
        for gateway in gateways:
            gateway.feeding.clear()
        for gateway in gateways:
            gateway.join(60)
        expected = {(gateway.name, STREAM): gateway.close() for gateway in gateways}
        gateways = []
        total = sum(expected.values())
        deadline = time.monotonic() + 60
        while True:
            records = read_all(topics.bootstrap, topics.readings)
            if len(records) >= total or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        print(f"\n{total} readings from {GATEWAYS} gateways; expanded by a {a.readings}, by b {b_readings} before "
              f"its kill -9; a took over all partitions {take_over_s:.1f} s after it; "
              f"readings topic complete {time.monotonic() - killed_at:.1f} s after it")
        check_exactly_once(records, expected)
        assert total >= GATEWAYS * 500, f"only {total} readings: the gateways hardly ran"
        assert state_keys_loaded(a)[-1] > keys_before, "a did not load the state of the partitions it took over"
    finally:
        for gateway in gateways:  # only when the test failed before they drained
            gateway.feeding.clear()
        for gateway in gateways:
            with contextlib.suppress(AssertionError):
                gateway.join(30)
            gateway.close()
        for instance in (a, b):
            instance.stop()


# -- the state reload of a take-over, at scale --------------------------------
#
# An instance that is assigned a partition reads its state partition to the
# end. At scale the uncompacted tail of a busy state partition holds millions
# of records and takes longer than the operation timeout to read: only a stall
# may fail the take-over, not a long read (docs/scaling.md, "State topic").


class _StateMessage:
    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self._key, self._value = key, value

    def error(self) -> object:
        return None if self._key is not None else _EndOfPartition()

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0


class _EndOfPartition:
    def code(self) -> int:
        from confluent_kafka import KafkaError

        return KafkaError._PARTITION_EOF  # type: ignore[no-any-return]


class SlowStateReader:
    """The state reader's calls on one partition whose records arrive one per poll, ``pause_s`` apart."""

    def __init__(self, keys: int, pause_s: float, stall: bool = False) -> None:
        self.records = [(f"gw-{i}/sensors".encode(), b'{"v":1,"applied":[[0,%d]]}' % (i + 1)) for i in range(keys)]
        self.pause_s = pause_s
        self.stall = stall

    def get_watermark_offsets(self, tp: object, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, len(self.records)

    def assign(self, partitions: object) -> None:
        pass

    def unassign(self) -> None:
        pass

    def consume(self, count: int, timeout: float) -> list[_StateMessage]:
        time.sleep(self.pause_s)
        if self.stall:
            return []
        if self.records:
            return [_StateMessage(*self.records.pop(0))]
        return [_StateMessage(None, None)]


def test_a_state_reload_longer_than_the_timeout_completes_while_it_makes_progress() -> None:
    config = CentralConfig("127.0.0.1:9", operation_timeout_s=0.2)
    expander, key_partition = Expander(), {}  # type: ignore[var-annotated]
    started = time.monotonic()
    load_state(SlowStateReader(keys=12, pause_s=0.05), config, {0}, expander, key_partition)
    assert time.monotonic() - started > 2 * config.operation_timeout_s
    assert len(expander.keys()) == 12 and set(key_partition.values()) == {0}


def test_a_state_reload_that_stalls_fails_after_the_timeout() -> None:
    config = CentralConfig("127.0.0.1:9", operation_timeout_s=0.2)
    with pytest.raises(BridgeError, match="no progress"):
        load_state(SlowStateReader(keys=3, pause_s=0.02, stall=True), config, {0}, Expander(), {})
