"""End-to-end latency and footprint: publish -> Mosquitto -> tidegate -> Kafka -> central expander -> readings topic.

Run: python -m bench.bench_pipeline [--quick] [--rates 10,100,1000,10000] [--seconds 15] [--json FILE]

For each rate, a simulated fleet (``tidegate simulate``, its own process)
publishes readings stamped with their publish time; the gateway
(``tidegate run``, its own process, default settings: adaptive batching,
sync policy interval) forwards them to a real Kafka broker's batch topic; the
central expander (``python -m bridge.central``, its own process, default
settings) turns each batch into one record per reading on the readings topic,
in Kafka transactions. A ``read_committed`` consumer of the readings topic in
this process takes, for every reading, the time from its publish time stamp
(``ts_ms``) to its arrival: the latency a consumer of the readings topic
sees. Stages on the way, measured in the same run: publish to the gateway's
receive time (``received_ms``, the gateway's clock, the same machine's), and
publish to arrival at a consumer of the batch topic. The gateway's adaptive
batcher's chosen linger and batch size come from its /metrics at the end of
the run. The gateway's resident memory (VmRSS) and CPU time come from /proc.

The ceiling, in the same run: a bare forwarder (a paho subscriber that
produces every message to Kafka as it arrives, QoS 0, no log, no batching,
no durability, no expander) measured the same way on a fresh broker.
tidegate pays for durability, batching and exactly-once expansion with
latency; the ratio says how much.

Each rate runs at least 300 readings (10 readings/s: 30 s), so that a p99
is not one reading.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from collections.abc import Callable

import paho.mqtt.client as paho
from confluent_kafka import Consumer, Producer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import ROOT, gateway_metrics, machine, table, wait_for_metric
from bridge.central import decode_reading_value
from core.batch import decode_batch
from core.codecs import SourceFields, decode_payload
from edge.mosquitto import Mosquitto, free_port
from tests.kafka.broker import KafkaBroker, ensure_kafka_jars

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return rss, cpu


class LatencyReader:
    """Reads a topic from the start and takes each reading's latency from its publish stamp.

    ``kind`` says what the topic holds: ``batches`` (tidegate's batch topic),
    ``readings`` (the expander's readings topic, read_committed, JSON values)
    or ``payloads`` (the bare forwarder's raw MQTT payloads). Arrival is the
    moment this consumer sees a record: the batch topic's Kafka timestamp is
    the window start and the readings topic's the device time (CreateTime),
    neither of which says when the record got there.
    """

    def __init__(self, bootstrap: str, topic: str, kind: str, partitions: int = 1) -> None:
        self.latencies: list[int] = []
        self.intake: list[int] = []  # readings topic only: received_ms - ts_ms
        self.arrived_at: dict[int, int] = {}  # batches and readings: log offset -> arrival ms
        self.count = 0
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"lat-{topic}", "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # A fetch at a partition's end waits at most this long for data; the
            # default 500 ms would only matter if the broker held back a fetch
            # that data had satisfied, but keep the reader's part small anyway.
            "fetch.wait.max.ms": 50,
        })
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._decode: Callable[[bytes, int], None] = {
            "batches": self._batch, "readings": self._reading, "payloads": self._payload}[kind]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.1):
                if message.error():
                    continue
                self._decode(message.value(), int(time.time() * 1000))

    def _batch(self, value: bytes, arrived: int) -> None:
        entries = decode_batch(value).entries
        self.latencies.extend(arrived - e.reading.ts_ms for e in entries)
        self.arrived_at.update((e.offset, arrived) for e in entries)
        self.count += len(entries)

    def _reading(self, value: bytes, arrived: int) -> None:
        doc = decode_reading_value(value)
        ts = int(doc["ts_ms"])  # type: ignore[call-overload]
        self.latencies.append(arrived - ts)
        self.intake.append(int(doc["received_ms"]) - ts)  # type: ignore[call-overload]
        self.arrived_at[int(doc["offset"])] = arrived  # type: ignore[call-overload]
        self.count += 1

    def _payload(self, value: bytes, arrived: int) -> None:
        for r in decode_payload(value, SourceFields(), 0):
            self.latencies.append(arrived - r.ts_ms)
            self.count += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


# An expander with another consume timeout than its default (an experiment:
# the command line does not offer the setting).
_EXPANDER_WITH_POLL = """\
import signal, sys
from bridge.central import CentralConfig, KafkaExpander
b, batches, readings, poll = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
config = CentralConfig(bootstrap=b, batch_topic=batches, readings_topic=readings, state_topic=readings + ".state",
                       deadletter_topic=batches + ".deadletter", group_id="central-" + readings, instance_id="a",
                       poll_timeout_s=poll)
expander = KafkaExpander(config)
signal.signal(signal.SIGTERM, lambda *_: expander.stop())
expander.run()
"""


def start_expander(broker: KafkaBroker, batches: str, readings: str, work: Path,
                   poll_ms: int | None = None) -> subprocess.Popen[bytes]:
    """The central expander, ``python -m bridge.central`` with its defaults, as a process of its own.

    With ``poll_ms``, the same expander with its consume timeout set to that.
    """
    if poll_ms is None:
        command = ["-m", "bridge.central", "--bootstrap", broker.bootstrap, "--batch-topic", batches,
                   "--readings-topic", readings, "--state-topic", f"{readings}.state",
                   "--deadletter-topic", f"{batches}.deadletter", "--group", f"central-{readings}", "--instance-id", "a"]
    else:
        command = ["-c", _EXPANDER_WITH_POLL, broker.bootstrap, batches, readings, str(poll_ms / 1000)]
    with (work / f"central-{readings}.log").open("ab") as out:
        return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})


def bare_forwarder(mqtt_port: int, bootstrap: str, topic: str) -> tuple[paho.Client, Producer]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})

    def on_message(client: object, userdata: object, message: paho.MQTTMessage) -> None:
        while True:
            try:
                producer.produce(topic, value=message.payload)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{topic}")
    client.on_message = on_message
    client.connect("127.0.0.1", mqtt_port)
    client.subscribe("sensors/#", qos=0)
    client.loop_start()
    return client, producer


def simulate(port: int, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    sensors = max(1, min(100, int(rate // 2)))
    per_sensor = rate / 2 / sensors  # each sample carries two readings
    return subprocess.Popen(
        [sys.executable, "-m", "tidegate", "simulate", "--mqtt", f"127.0.0.1:{port}", "--sensors", str(sensors),
         "--rate", f"{per_sensor:.6f}", "--duration", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def published_readings(sim: subprocess.Popen[bytes]) -> int:
    """Readings the simulator got acknowledged by the broker (two per sample), from its last line."""
    _, err = sim.communicate()
    match = re.search(rb"published (\d+) of \d+ samples", err or b"")
    if match is None:
        raise RuntimeError(f"the simulator said: {err.decode(errors='replace').strip()[-500:]}")
    return 2 * int(match.group(1))


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


READINGS_PARTITIONS = 3
# Device times here are the publish time, so the default retention keeps them;
# -1 anyway, as the fault harness does (docs/exactly_once.md, "Topic settings").
KEEP = {"retention.ms": "-1"}


def run_rate(rate: float, seconds: float, mosquitto: Mosquitto, broker: KafkaBroker, work: Path,
             config: Path | None = None, expander_poll_ms: int | None = None) -> dict[str, object]:
    tag = f"{int(rate)}-{time.monotonic_ns()}"
    batches, readings = f"bench-batches-{tag}", f"bench-readings-{tag}"
    broker.create_topic(batches, config=KEEP)
    broker.create_topic(readings, partitions=READINGS_PARTITIONS, config=KEEP)
    broker.create_topic(f"{readings}.state", config={"cleanup.policy": "compact"})
    broker.create_topic(f"{batches}.deadletter", config=KEEP)
    http_port = free_port()
    gateway_log = (work / f"gateway-{tag}.log").open("wb")  # a pipe nobody reads could fill and stall it
    expander = start_expander(broker, batches, readings, work, expander_poll_ms)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "--mqtt", f"127.0.0.1:{mosquitto.port}", "--quiet",
         "--upstream", f"kafka://{broker.bootstrap}/{batches}", "--data-dir", str(work / f"gw-{tag}"),
         "--gateway-id", "bench", "--http", f"127.0.0.1:{http_port}", *(["--config", str(config)] if config else [])],
        stdout=subprocess.DEVNULL, stderr=gateway_log,
    )
    try:
        wait_for_metric(http_port, "tidegate_mqtt_connected", 1, 60, gateway)
        time.sleep(1.0)
        idle_rss, cpu_before = proc_stats(gateway.pid)
        batch_reader = LatencyReader(broker.bootstrap, batches, "batches")
        reader = LatencyReader(broker.bootstrap, readings, "readings", READINGS_PARTITIONS)
        sim = simulate(mosquitto.port, rate, seconds)
        peak_rss = idle_rss
        controller: dict[str, float] = {}
        last_scrape = time.monotonic()
        while sim.poll() is None:
            peak_rss = max(peak_rss, proc_stats(gateway.pid)[0])
            if time.monotonic() - last_scrape > 2.0:
                # The controller's settings in the steady state (the last scrape
                # before the publisher stops); every 2 s, to cost the gateway little.
                try:
                    controller = gateway_metrics(http_port)
                except OSError:  # a busy machine: keep the last one
                    pass
                last_scrape = time.monotonic()
            time.sleep(0.2)
        expected = published_readings(sim)
        deadline = time.monotonic() + 60
        while reader.count < expected * 0.999 and time.monotonic() < deadline:
            peak_rss = max(peak_rss, proc_stats(gateway.pid)[0])
            time.sleep(0.2)
        time.sleep(1.0)
        _, cpu_after = proc_stats(gateway.pid)
        final = wait_for_metric(http_port, "tidegate_readings_out_total", 0, 30, gateway)
        reader.close()
        batch_reader.close()
    finally:
        for process in (gateway, expander):
            process.terminate()
            process.wait(30)
        gateway_log.close()
    got = reader.count
    expansion = [t - batch_reader.arrived_at[o] for o, t in reader.arrived_at.items() if o in batch_reader.arrived_at]
    batches_out = final.get("tidegate_batches_out_total", 0.0)
    return {
        "rate": rate, "seconds": seconds, "published": expected, "arrived": got,
        "p50": percentile(reader.latencies, 0.50), "p99": percentile(reader.latencies, 0.99),
        "batch_topic": {"p50": percentile(batch_reader.latencies, 0.50), "p99": percentile(batch_reader.latencies, 0.99),
                        "arrived": batch_reader.count},
        "intake": {"p50": percentile(reader.intake, 0.50), "p99": percentile(reader.intake, 0.99)},
        "expander": {"p50": percentile(expansion, 0.50), "p99": percentile(expansion, 0.99)},
        "linger_ms": controller.get("tidegate_batch_linger_seconds", float("nan")) * 1000,
        "max_readings": controller.get("tidegate_batch_max_readings", float("nan")),
        "readings_per_batch": final.get("tidegate_readings_out_total", 0.0) / batches_out if batches_out else 0.0,
        "idle_rss_mb": idle_rss / 2**20, "peak_rss_mb": peak_rss / 2**20,
        "cpu_us_per_reading": (cpu_after - cpu_before) / max(got, 1) * 1e6,
    }


def run_bare(rate: float, seconds: float, mosquitto: Mosquitto, broker: KafkaBroker) -> dict[str, object]:
    topic = f"bench-bare-{int(rate)}-{time.monotonic_ns()}"
    broker.create_topic(topic)
    client, producer = bare_forwarder(mosquitto.port, broker.bootstrap, topic)
    reader = LatencyReader(broker.bootstrap, topic, "payloads")
    time.sleep(1.0)
    sim = simulate(mosquitto.port, rate, seconds)
    expected = published_readings(sim)
    deadline = time.monotonic() + 60
    while reader.count < expected * 0.99 and time.monotonic() < deadline:
        producer.poll(0.1)
    producer.flush(10)
    time.sleep(1.0)
    reader.close()
    client.disconnect()
    client.loop_stop()
    return {"p50": percentile(reader.latencies, 0.5), "p99": percentile(reader.latencies, 0.99), "arrived": reader.count,
            "published": expected}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10, 100 and 1000 readings/s for 8 s each")
    parser.add_argument("--rates", default="10,100,1000,10000")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per rate (at least 300 readings)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per rate; the tables show the run with the median p99 and every run's p99")
    parser.add_argument("--target-ms", type=int, default=None,
                        help="the gateway's [batch] target_latency_ms (default: the gateway's default)")
    parser.add_argument("--expander-poll-ms", type=int, default=None,
                        help="an experiment: the expander's consume timeout (default: its own, 200 ms)")
    args = parser.parse_args(argv)
    rates = [10.0, 100.0, 1000.0] if args.quick else [float(r) for r in args.rates.split(",")]
    ensure_kafka_jars()
    results = []
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker(Path(tmp) / "kafka") as broker:
        config = None
        if args.target_ms is not None:
            config = Path(tmp) / "tidegate.toml"
            config.write_text(f"[batch]\ntarget_latency_ms = {args.target_ms}\n")
        for rate in rates:
            seconds = 8.0 if args.quick else max(args.seconds, 300 / rate)
            runs = []
            for n in range(args.repeat):
                # A broker per run: the gateway's persistent session must not
                # collect what the bare forwarder's run publishes, or the reverse.
                with Mosquitto(Path(tmp) / f"mq-{rate:.0f}-{n}") as mq:
                    run = run_rate(rate, seconds, mq, broker, Path(tmp), config, args.expander_poll_ms)
                with Mosquitto(Path(tmp) / f"mq-bare-{rate:.0f}-{n}") as mq:
                    run["bare"] = run_bare(rate, seconds, mq, broker)
                run["load"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                runs.append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
            # The run with the median p99 stands for the rate; every run's p99 is kept beside it.
            result = sorted(runs, key=lambda r: r["p99"])[len(runs) // 2]  # type: ignore[arg-type, return-value]
            result["p99_runs"] = [r["p99"] for r in runs]
            result["bare_p99_runs"] = [r["bare"]["p99"] for r in runs]  # type: ignore[index]
            result["loads"] = [r["load"] for r in runs]
            results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    target = f"target_latency_ms {args.target_ms}" if args.target_ms is not None else "default batching (adaptive)"
    if args.expander_poll_ms is not None:
        target += f", expander consume timeout {args.expander_poll_ms} ms"
    print(f"machine: {machine()}; {target}; {'quick run, 8 s' if args.quick else f'{args.seconds:.0f} s (at least 300 readings)'}"
          f" per rate, {args.repeat} run(s) each; load average after each run: "
          + "; ".join(f"{r['rate']:,.0f}/s {', '.join(r['loads'])}" for r in results) + "\n")
    print("Publish to the readings topic (read_committed), against the bare forwarder's publish to Kafka:\n")
    print(table(
        ["readings/s", "arrived / published", "tidegate p50 ms", "tidegate p99 ms", "bare forwarder p50 ms",
         "bare forwarder p99 ms", "p99 tidegate / bare", "p99 of every run, tidegate; bare"],
        [[f"{r['rate']:,.0f}", f"{r['arrived']:,} / {r['published']:,}", r["p50"], r["p99"], r["bare"]["p50"],
          r["bare"]["p99"], f"{r['p99'] / max(r['bare']['p99'], 1):.0f}x",
          f"{', '.join(map(str, r['p99_runs']))}; {', '.join(map(str, r['bare_p99_runs']))}"] for r in results],
    ))
    print("\nWhere the time goes (p50 / p99 ms from the publish stamp), and what the adaptive batcher chose:\n")
    print(table(
        ["readings/s", "publish to the gateway's receive", "publish to the batch topic", "publish to the readings topic",
         "batch topic to readings topic (the expander)", "linger chosen ms", "max readings chosen",
         "readings per batch"],
        [[f"{r['rate']:,.0f}", f"{r['intake']['p50']} / {r['intake']['p99']}",
          f"{r['batch_topic']['p50']} / {r['batch_topic']['p99']}", f"{r['p50']} / {r['p99']}",
          f"{r['expander']['p50']} / {r['expander']['p99']}", f"{r['linger_ms']:.0f}", f"{r['max_readings']:,.0f}",
          f"{r['readings_per_batch']:,.0f}"] for r in results],
    ))
    print("\nThe gateway process:\n")
    print(table(
        ["readings/s", "gateway RSS idle MB", "gateway RSS peak MB", "gateway CPU µs/reading"],
        [[f"{r['rate']:,.0f}", f"{r['idle_rss_mb']:.1f}", f"{r['peak_rss_mb']:.1f}", f"{r['cpu_us_per_reading']:.0f}"]
         for r in results],
    ))
    at_100 = [r for r in results if r["rate"] == 100]
    if at_100:
        p99 = at_100[0]["p99"]
        print(f"\nheadline: p99 publish to readings topic at 100 readings/s {p99} ms, runs {at_100[0]['p99_runs']} "
              f"({'meets' if p99 < 1000 else 'misses'} the 1 s goal; bare forwarder {at_100[0]['bare']['p99']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
