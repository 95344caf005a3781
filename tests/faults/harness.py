"""The never-killed side of the fault tests: publishers, processes under test, and the count at the end.

Every fault scenario ends with one equation, counted here and never by the
processes being killed:

    readings the broker accepted (PUBACK) from the publishers
        == readings in the upstream (the central readings topic, read_committed,
           or a spool directory for the gateway-only test)
         + readings dropped by a quota (the log's durable ``dropped_by_quota`` count)
         + readings kept as dead letters (only the clock scenario has any), each
           named in its dead letter or, past the dead-letter budget, counted in
           a flood summary

with no reading upstream twice, under the same id or under two ids. The two
counted terms (quota drops, flood summaries) are checked as counts: the
readings missing upstream must be exactly as many (:class:`Tally`).

A reading is named by its content, ``(device, metric, device time)``, which the
publisher makes unique; so a reading the gateway wrote twice under two offsets
shows as a duplicate even though its ids differ.

A message the publisher sent but whose PUBACK it never saw (the broker went
away mid-flight) may or may not arrive upstream; it is not in ``accepted``,
and it may appear upstream once ("extra") but never twice.

Set ``TIDEGATE_FAULT_RESULTS=<file>`` to have each :class:`Tally` appended to
that file as a JSON line (docs/reliability.md is made from such a file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from bridge.central import AppliedRanges, decode_reading_value
from core.batch import decode_batch, decode_header
from core.deadletter import DEAD_LETTER_STREAM, decode_dead_letter
from tests.kafka.broker import KafkaBroker

__all__ = [
    "ROOT",
    "T0",
    "Key",
    "Publisher",
    "Central",
    "Tally",
    "Supervisor",
    "Supervise",
    "BatchWatcher",
    "QUICK",
    "LONG",
    "modes",
    "finish",
    "UplinkBroker",
    "start_gateway",
    "gateway_metrics",
    "MetricsSampler",
    "stop_process",
    "wait_for_session",
    "upstream_readings",
    "read_committed",
    "LogCounts",
    "log_counts",
    "tail",
]

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the publishers' first device time

Key = tuple[str, str, int]  # (device, metric, device time in ms)


class Publisher:
    """Publishes readings with QoS 1 and remembers those the broker acknowledged.

    Half the messages are plain JSON readings with device time and no sequence
    number; the other half are firmware-style samples with boot id and sequence
    number. Every reading is unique by (device, metric, ts): message ``i`` has
    device time ``t0 + i * step_ms``.

    paho's network thread reconnects by itself when the broker goes away; a
    message published while disconnected, or in flight when the connection
    broke, counts only if a PUBACK for it arrives later.

    Args:
        port: the broker's port on 127.0.0.1.
        rate_hz: messages per second.
        client_id: MQTT client id (several publishers need distinct ones).
        t0: device time of message 0, in ms.
        step_ms: device time between consecutive messages.
        topic: the MQTT topic (routes map it to a stream).
        tag: appended to every device name, so that two publishers' readings differ.
        value_bytes: if above 0, the plain readings carry a string value this
            long instead of a number (to fill a log quota in seconds, not minutes).
    """

    def __init__(self, port: int, rate_hz: float, client_id: str = "fault-publisher", t0: int = T0,
                 step_ms: int = 10, topic: str = "sensors/x", tag: str = "", value_bytes: int = 0) -> None:
        self.accepted: set[Key] = set()
        self.rate_hz = rate_hz
        self.t0, self.step_ms = t0, step_ms
        self.topic, self.tag, self.value_bytes = topic, tag, value_bytes
        self.sent = 0
        self._pending: dict[int, list[Key]] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(0.1, 1)
        client.on_publish = self._on_publish
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, client: object, userdata: object, mid: int, reason: object, properties: object) -> None:
        with self._lock:
            keys = self._pending.pop(mid, None)
            if keys is None:  # the PUBACK beat the publishing thread to registering the message
                self._early.add(mid)
            else:
                self.accepted.update(keys)

    @property
    def acked(self) -> int:
        with self._lock:
            return len(self.accepted)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(0.05)
                continue
            ts = self.t0 + i * self.step_ms
            if i % 2:
                device, metric = f"plain-{i % 7}{self.tag}", "temp_c"
                value: object = round(20 + (i % 50) / 10, 1)
                if self.value_bytes:
                    value = f"{i:08d}".ljust(self.value_bytes, "~")
                payload = json.dumps({"d": device, "m": metric, "ts": ts, "value": value})
                keys = [(device, metric, ts)]
            else:
                device = f"node-{i % 5}{self.tag}"
                payload = json.dumps({"d": device, "b": 77, "s": i // 2, "ts": ts, "values": {"t": i, "rh": i % 90}})
                keys = [(device, "t", ts), (device, "rh", ts)]
            # Not under self._lock: paho calls on_publish holding its own lock,
            # and publish() takes that lock; holding ours across it deadlocks
            # when a reconnect resends while we publish.
            info = self._client.publish(self.topic, payload.encode(), qos=1)
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.accepted.update(keys)
                else:
                    self._pending[info.mid] = keys
            self.sent += 1
            i += 1
            time.sleep(1 / self.rate_hz)

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        """Stop publishing for a while (the device time of the next message is unaffected)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self, settle_s: float = 20.0) -> None:
        """Stop publishing and wait up to ``settle_s`` for the outstanding PUBACKs."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + settle_s
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._client.disconnect()
        self._client.loop_stop()


def start_gateway(port: int, data_dir: Path, upstream: Path | str, gateway_id: str = "gw-fault",
                  extra: Sequence[str] = (), config: Path | None = None, http_port: int | None = None,
                  module: str = "tidegate", env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``tidegate run`` as a process of its own; stderr is appended to ``<data_dir>/../gateway.err``.

    Args:
        upstream: a spool directory, or an upstream address (``kafka://HOST:PORT/TOPIC``).
        config: a TOML file for ``--config`` (the flags given here override it).
        http_port: serve /metrics on 127.0.0.1 at this port (see :func:`gateway_metrics`); none by default.
        module: what ``python -m`` runs (tests/faults/faulty_gateway.py wraps ``tidegate`` in a faulty file layer).
        env: more environment variables for the process.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    address = f"spool:{upstream}" if isinstance(upstream, Path) else upstream
    http = ["--http", f"127.0.0.1:{http_port}"] if http_port is not None else ["--no-http"]
    options = ["--config", str(config)] if config is not None else []
    with open(data_dir.parent / "gateway.err", "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", module, "run", *options, "--mqtt", f"127.0.0.1:{port}", "--upstream", address,
             "--data-dir", str(data_dir), "--quiet", *http, "--gateway-id", gateway_id, *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )


def gateway_metrics(http_port: int, timeout: float = 1.0) -> dict[str, float] | None:
    """The gateway's /metrics; None if it does not answer.

    Each series is under its full name (``tidegate_dropped_by_quota_total{stream="bulk"}``)
    and each metric's sum over its labels under its bare name.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
            if series != name:
                out[series] = float(value)
    return out


class MetricsSampler:
    """Scrapes a gateway's /metrics every ``interval_s`` in a thread, across its restarts.

    Each process is told apart by ``tidegate_start_time_seconds``, so a
    counter's rise over a period can be summed over every process that ran in
    it (:meth:`increase`). A process killed between two scrapes takes its last
    increments with it: this can miss a rise, never invent one.
    """

    def __init__(self, http_port: int, interval_s: float = 0.1) -> None:
        self.http_port = http_port
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            metrics = gateway_metrics(self.http_port, timeout=0.5)
            if metrics is not None and "tidegate_start_time_seconds" in metrics:
                self.samples.append((time.monotonic(), metrics))

    def increase(self, name: str, since: float, until: float) -> float:
        """How much counter ``name`` rose from ``since`` to ``until`` (monotonic times), summed over processes."""
        by_process: dict[float, list[tuple[float, float]]] = {}
        for at, metrics in list(self.samples):
            by_process.setdefault(metrics["tidegate_start_time_seconds"], []).append((at, metrics.get(name, 0.0)))
        total = 0.0
        for samples in by_process.values():
            inside = [value for at, value in samples if since <= at <= until]
            before = [value for at, value in samples if at < since]
            if inside:
                total += max(inside) - (before[-1] if before else 0.0)
        return total

    def processes(self, since: float, until: float) -> int:
        """How many gateway processes answered between ``since`` and ``until``."""
        return len({m["tidegate_start_time_seconds"] for at, m in list(self.samples) if since <= at <= until})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Supervisor:
    """Restarts a process that exited on its own, as systemd's ``Restart=on-failure`` would.

    The fault tests kill processes on purpose; a process that *exits* (the
    gateway after its log failed, the expander after an error it does not
    recover from) is restarted here and counted in ``restarts``.
    ``on_exit(returncode)`` is called for each such exit, before the restart.
    """

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], delay_s: float = 0.5,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self._start = start
        self.delay_s = delay_s
        self.on_exit = on_exit
        self.process = start()
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                returncode = self.process.poll()
                if returncode is not None:
                    if self.on_exit is not None:
                        self.on_exit(returncode)
                    time.sleep(self.delay_s)
                    self.process = self._start()
                    self.restarts += 1

    def kill(self) -> None:
        """SIGKILL the process and start it again."""
        with self._lock:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = self._start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_session(port: int, timeout: float = 20.0) -> None:
    """Wait until the gateway has subscribed once, so the broker queues for its session.

    Mosquitto only queues for a session once the gateway has connected and
    subscribed at least once; on a site that happens at install time. Here we
    wait for the gateway's client to show in $SYS before the publisher starts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["mosquitto_sub", "-p", str(port), "-t", "$SYS/broker/subscriptions/count", "-C", "1", "-W", "3"],
            capture_output=True, text=True,
        ).stdout.strip()
        if out.isdigit() and int(out) >= 2:  # the gateway's sensors/# and its $SYS drop counter
            return
        time.sleep(0.2)
    raise AssertionError("the gateway never subscribed")


def upstream_readings(spool: Path) -> Counter[Key]:
    """Readings in a spool directory, a batch resent under the same ids counted once (as the expander does)."""
    by_id: dict[tuple[str, str, int], Key] = {}
    for path in spool.glob("*.tgb"):
        batch = decode_batch(path.read_bytes())
        for entry in batch.entries:
            r = entry.reading
            by_id[(batch.header.gateway, batch.header.stream, entry.offset)] = (r.device, r.metric, r.ts_ms)
    return Counter(by_id.values())


def read_committed(bootstrap: str, topic: str, timeout: float = 60.0) -> list[dict[str, object]]:
    """Every committed record of ``topic`` up to its end, decoded (docs/readings_topic.md)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"fault-check-{uuid.uuid4().hex[:8]}",
        "isolation.level": "read_committed", "enable.partition.eof": True, "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[dict[str, object]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < partitions and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                        continue
                    raise KafkaException(error)
                at_end.discard(message.partition())
                out.append(decode_reading_value(message.value()))
    finally:
        consumer.close()
    if len(at_end) < partitions:
        raise AssertionError(f"{topic} not read to its end in {timeout:.0f} s")
    return out


@dataclass(frozen=True)
class LogCounts:
    """What a stopped gateway's log says it kept back: quota drops and dead letters."""

    dropped_by_stream: dict[str, int] = field(default_factory=dict)  # the durable dropped_by_quota count
    letters: set[Key] = field(default_factory=set)  # readings refused one by one, named in their dead letter
    summarised: int = 0  # readings refused in a flood, counted in a summary dead letter without their names

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_stream.values())


def log_counts(data_dir: Path) -> LogCounts:
    """Open the (stopped) gateway's log and count what it dropped by quota and kept as dead letters.

    A dead letter of a refused reading names it in its message (``reading
    DEVICE/METRIC at TS: ...``); past the dead-letter budget, letters are
    folded into a flood summary that only counts them by reason (every letter
    in these scenarios is one refused reading). Whole messages refused name no
    reading and are not readings of ours.
    """
    from edge.logstore import open_log  # the gateway must be stopped: the log locks its directory

    log = open_log(data_dir / "log", background=False)
    try:
        streams = log.stats()["streams"]
        assert isinstance(streams, dict)
        dropped = {name: int(st["dropped_by_quota"]) for name, st in streams.items()}
        letters: set[Key] = set()
        summarised = 0
        if DEAD_LETTER_STREAM in log.streams():
            offset = log.start_offset(DEAD_LETTER_STREAM)
            while records := log.read(DEAD_LETTER_STREAM, offset, 1000):
                for record in records:
                    letter = decode_dead_letter(record.payload)
                    if letter.counts:
                        summarised += sum(letter.rejected().values())
                    elif letter.message.startswith("reading "):
                        series, _, rest = letter.message[len("reading "):].partition(" at ")
                        device, _, metric = series.rpartition("/")
                        letters.add((device, metric, int(rest.split(":", 1)[0])))
                offset = records[-1].offset + 1
    finally:
        log.close()
    return LogCounts(dropped, letters, summarised)


class UplinkBroker(KafkaBroker):
    """A Kafka broker with a second listener, ``UPLINK``, advertised at a proxy's port.

    With a :class:`tests.faults.proxy.FaultProxy` from ``proxy_port`` to
    ``uplink_port``, every connection a client makes through the proxy's port
    stays on the proxy (the broker tells it to come back there), while the
    expander and the checks use the ordinary listener and never see the fault.
    """

    def __init__(self, workdir: Path, uplink_port: int, proxy_port: int) -> None:
        super().__init__(workdir)
        self.uplink_port = uplink_port
        self.proxy_port = proxy_port

    def _server_properties(self) -> dict[str, str]:
        properties = super()._server_properties()
        properties["listeners"] += f",UPLINK://127.0.0.1:{self.uplink_port}"
        properties["advertised.listeners"] += f",UPLINK://127.0.0.1:{self.proxy_port}"
        properties["listener.security.protocol.map"] += ",UPLINK:PLAINTEXT"
        return properties


@dataclass
class Central:
    """The central side on one Kafka broker: the batch, readings, state and dead-letter topics, and expanders."""

    bootstrap: str
    batches: str
    readings: str
    state: str
    deadletter: str
    workdir: Path
    group: str = field(default_factory=lambda: f"central-{uuid.uuid4().hex[:6]}")

    # Device times here are in 2026 (and 1970 in the clock scenario): with the
    # default retention Kafka would delete them (docs/exactly_once.md, "Topic settings").
    KEEP = {"retention.ms": "-1"}

    @classmethod
    def create(cls, broker: object, new_topic: object, workdir: Path) -> Central:
        make = new_topic  # tests.fixtures.kafka.NewKafkaTopic
        return cls(
            broker.bootstrap,  # type: ignore[attr-defined]
            batches=make(partitions=2, config=cls.KEEP, broker=broker, prefix="batches"),  # type: ignore[operator]
            readings=make(partitions=3, config=cls.KEEP, broker=broker, prefix="readings"),  # type: ignore[operator]
            state=make(partitions=2, config={"cleanup.policy": "compact"}, broker=broker, prefix="state"),  # type: ignore[operator]
            deadletter=make(config=cls.KEEP, broker=broker, prefix="deadletter"),  # type: ignore[operator]
            workdir=workdir,
        )

    @property
    def upstream(self) -> str:
        """The gateway's ``--upstream`` for the batch topic."""
        return f"kafka://{self.bootstrap}/{self.batches}"

    def start_expander(self, instance: str = "a") -> subprocess.Popen[bytes]:
        """``python -m bridge.central`` as a process of its own; output appended to ``<workdir>/central.log``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "central.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "bridge.central", "--bootstrap", self.bootstrap, "--batch-topic", self.batches,
                 "--readings-topic", self.readings, "--state-topic", self.state, "--deadletter-topic", self.deadletter,
                 "--group", self.group, "--instance-id", instance, "--max-batches", "20"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    def readings_by_key(self) -> tuple[Counter[Key], Counter[str]]:
        """The readings topic as counts per reading (content) and per reading id."""
        docs = read_committed(self.bootstrap, self.readings)
        by_key: Counter[Key] = Counter()
        by_id: Counter[str] = Counter()
        for doc in docs:
            by_key[(str(doc["device"]), str(doc["metric"]), int(doc["ts_ms"]))] += 1  # type: ignore[call-overload]
            by_id[str(doc["id"])] += 1
        return by_key, by_id

    def wait_for(self, accepted: set[Key], timeout: float = 90.0, quiet_s: float = 10.0) -> tuple[Counter[Key], Counter[str]]:
        """Read the readings topic until it holds every accepted reading, then once more.

        Gives up after ``timeout``, or once the topic has not grown for
        ``quiet_s`` (readings that became dead letters never arrive).
        """
        deadline = time.monotonic() + timeout
        last_size, last_change = -1, time.monotonic()
        while True:
            by_key, by_id = self.readings_by_key()
            now = time.monotonic()
            if len(by_key) != last_size:
                last_size, last_change = len(by_key), now
            if set(by_key) >= accepted or now > deadline or now - last_change > quiet_s:
                break
            time.sleep(1.0)
        time.sleep(2.0)  # anything still in flight lands, so a late duplicate would show
        return self.readings_by_key()


@dataclass
class BatchWatcher:
    """Reads the batch topic directly (not through the proxy) and notes when offsets arrive."""

    bootstrap: str
    topic: str
    ranges: dict[str, AppliedRanges] = field(default_factory=dict)
    history: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, contiguous offsets on Kafka)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "watcher", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 20})
        partitions = len(consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
        consumer.assign([TopicPartition(self.topic, p, 0) for p in range(partitions)])
        while not self._stop.is_set():
            for message in consumer.consume(100, 0.1):
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(message.error())
                    continue
                header = decode_header(message.value())
                with self._lock:
                    self.ranges.setdefault(header.stream, AppliedRanges()).add(header.first_offset, header.last_offset)
                self.history.append((time.monotonic(), self.contiguous()))
        consumer.close()

    def contiguous(self, stream: str = "sensors") -> int:
        """Offsets 0..n-1 of ``stream`` are all on the batch topic: returns n."""
        with self._lock:
            ranges = self.ranges.get(stream)
            if ranges is None or not ranges.ranges or ranges.ranges[0][0] != 0:
                return 0
            return ranges.ranges[0][1]

    def reached(self, offsets: int) -> float | None:
        """When offsets 0..offsets-1 were first all on the batch topic (monotonic time), or None."""
        return next((t for t, n in self.history if n >= offsets), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Tally:
    """The equation at the end of a scenario."""

    scenario: str
    mode: str
    cycles: int
    accepted: set[Key]
    upstream: Counter[Key]
    upstream_ids: Counter[str] = field(default_factory=Counter)
    log: LogCounts = field(default_factory=LogCounts)
    seconds: float = 0.0
    notes: str = ""

    @property
    def dropped_by_quota(self) -> int:
        return self.log.dropped

    @property
    def dead_lettered(self) -> set[Key]:
        return self.log.letters

    @property
    def missing(self) -> set[Key]:
        """Accepted readings neither upstream nor named in a dead letter: the quota and flood summaries must count them."""
        return self.accepted - set(self.upstream) - self.dead_lettered

    @property
    def counted(self) -> int:
        """Readings the log counted without naming them: dropped by quota, or refused in a flood summary."""
        return self.log.dropped + self.log.summarised

    @property
    def lost(self) -> int:
        """Accepted readings that nothing accounts for."""
        return max(0, len(self.missing) - self.counted)

    @property
    def overcounted(self) -> int:
        """Readings counted as dropped or refused beyond those missing (they arrived after all)."""
        return max(0, self.counted - len(self.missing))

    @property
    def duplicated(self) -> dict[Key, int]:
        dup = {k: n for k, n in self.upstream.items() if n > 1}
        dup.update({k: 2 for k in self.dead_lettered & set(self.upstream)})  # a reading both upstream and refused
        return dup

    @property
    def duplicated_ids(self) -> dict[str, int]:
        return {k: n for k, n in self.upstream_ids.items() if n > 1}

    @property
    def extra(self) -> set[Key]:
        return set(self.upstream) - self.accepted

    def row(self) -> dict[str, object]:
        return {
            "scenario": self.scenario, "mode": self.mode, "cycles": self.cycles, "accepted": len(self.accepted),
            "upstream": len(set(self.upstream) & self.accepted),
            "dead_lettered": len(self.dead_lettered & self.accepted) + self.log.summarised,
            "dropped_by_quota": self.dropped_by_quota, "lost": self.lost, "overcounted": self.overcounted,
            "duplicated": len(self.duplicated), "extra": len(self.extra), "seconds": round(self.seconds, 1),
            "notes": self.notes,
        }

    def line(self) -> str:
        row = self.row()
        return (f"{self.scenario} [{self.mode}] "
                + " ".join(f"{k}={v}" for k, v in row.items() if k not in ("scenario", "mode", "notes")))

    def record(self) -> None:
        print("\n" + self.line())
        path = os.environ.get("TIDEGATE_FAULT_RESULTS")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(self.row()) + "\n")

    def check(self, context: str = "", quota_overcount: bool = False) -> None:
        """Record the tally, then assert the equation.

        Args:
            quota_overcount: accept a quota count above the readings missing
                upstream (never below it: that would be loss). A window the
                quota drops may hold readings already forwarded or in flight,
                and they are counted too (docs/reliability.md, "Known problems").
        """
        self.record()
        missing, dup = self.missing, self.duplicated
        balanced = not self.lost and (quota_overcount or not self.overcounted)
        assert balanced, (
            f"{len(missing)} acknowledged readings are neither upstream nor named dead letters, and the log counted "
            f"{self.log.dropped} dropped by quota and {self.log.summarised} refused in flood summaries; "
            f"e.g. {sorted(missing)[:3]}. {context[-2000:]}"
        )
        assert not dup, f"{len(dup)} readings upstream more than once, e.g. {list(dup.items())[:3]}"
        assert not self.duplicated_ids, f"{len(self.duplicated_ids)} reading ids twice, e.g. {list(self.duplicated_ids.items())[:3]}"
        assert all(k[0].startswith(("plain-", "node-")) for k in self.extra), f"invented readings: {sorted(self.extra)[:3]}"


def tail(paths: Iterable[Path], chars: int = 1500) -> str:
    """The ends of some log files, for assertion messages."""
    out = []
    for path in paths:
        if path.exists():
            out.append(f"--- {path.name}: {path.read_text(errors='replace')[-chars:]}")
    return "\n".join(out)


# -- what the scenarios share ---------------------------------------------------------------------

Supervise = Callable[..., Supervisor]  # the ``supervise`` fixture (tests/faults/conftest.py)

QUICK, LONG = "quick", "long"


def modes(quick: int, long: int, long_timeout_s: float = 300) -> pytest.MarkDecorator:
    """Parametrize ``mode, cycles``: quick mode always, long mode only with ``--long``.

    ``long_timeout_s`` replaces pytest-timeout's 300 s (pyproject.toml) for the
    long parameter, whose hundreds of cycles take longer than that.
    """
    long_marks = [pytest.mark.long, pytest.mark.timeout(long_timeout_s)]
    return pytest.mark.parametrize(
        "mode,cycles", [pytest.param(QUICK, quick, id=QUICK), pytest.param(LONG, long, id=LONG, marks=long_marks)]
    )


def finish(scenario: str, mode: str, cycles: int, publisher: Publisher | Sequence[Publisher], central: Central,
           gateway: Supervisor, expander: Supervisor, data_dir: Path, tmp_path: Path, started: float,
           notes: str = "", drained: Callable[[], object] | None = None, quota_overcount: bool = False,
           quiet_s: float | None = None) -> Tally:
    """Stop publishing, wait for the readings topic to catch up, stop everything, count.

    Args:
        drained: called after publishing stopped, before the readings topic is
            read: waits until the gateway has forwarded everything (readings
            dropped by quota never arrive, so waiting for every accepted one
            would only time out).
        quota_overcount: passed to :meth:`Tally.check`.
        quiet_s: how long the readings topic may stand still before the
            count is taken (default 5 s after ``drained``, else 10 s).
    """
    publishers = [publisher] if isinstance(publisher, Publisher) else list(publisher)
    for one in publishers:
        one.stop()
    accepted = set().union(*(one.accepted for one in publishers))
    try:
        if drained is not None:
            drained()
        if quiet_s is None:
            quiet_s = 5.0 if drained is not None else 10.0
        by_key, by_id = central.wait_for(accepted, timeout=max(90.0, 2 * quiet_s), quiet_s=quiet_s)
    finally:
        gateway.stop()
        expander.stop()
    restarts = f"gateway restarted {gateway.restarts}x, expander {expander.restarts}x after exiting"
    tally = Tally(scenario, mode, cycles, accepted, by_key, by_id, log_counts(data_dir),
                  time.monotonic() - started, "; ".join(filter(None, [notes, restarts])))
    tally.check(tail([tmp_path / "gateway.err", central.workdir / "central.log"]), quota_overcount)
    return tally
