"""End-to-end latency and footprint: publish -> Mosquitto -> tidegate -> Kafka.

Run: python -m bench.bench_pipeline [--quick] [--rates 10,100,1000,10000] [--seconds 15]

For each rate, a simulated fleet (``tidegate simulate``, its own process)
publishes readings stamped with their publish time; the gateway
(``tidegate run``, its own process, default settings, sync policy interval)
forwards them to a real Kafka broker; a consumer in this process decodes the
batches and takes, for every reading, the time from publish to arrival in
Kafka (the batch's log-append time). The gateway's resident memory (VmRSS)
and CPU time come from /proc.

The ceiling, in the same run: a bare forwarder (a paho subscriber that
produces every message to Kafka as it arrives, QoS 0, no log, no batching,
no durability) measured the same way. tidegate pays for durability and
batching with latency; the ratio says how much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from confluent_kafka import Consumer, Producer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import machine, table
from core.batch import decode_batch
from core.codecs import SourceFields, decode_payload
from edge.mosquitto import Mosquitto
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
    """Reads a topic from the start; batches (tidegate) or JSON readings (bare forwarder)."""

    def __init__(self, bootstrap: str, topic: str, batches: bool) -> None:
        self.latencies: list[int] = []
        self.count = 0
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{topic}", "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(topic, 0, 0)])
        self._batches = batches
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error():
                continue
            _, appended_ms = message.timestamp()
            if self._batches:
                # The batch's Kafka timestamp is its window start (CreateTime), so
                # arrival is taken as the moment the consumer sees it.
                arrived = int(time.time() * 1000)
                entries = decode_batch(message.value()).entries
                self.latencies.extend(arrived - e.reading.ts_ms for e in entries)
                self.count += len(entries)
            else:
                arrived = int(time.time() * 1000)
                for r in decode_payload(message.value(), SourceFields(), 0):
                    self.latencies.append(arrived - r.ts_ms)
                    self.count += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


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


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rate(rate: float, seconds: float, mosquitto: Mosquitto, broker: KafkaBroker, work: Path) -> dict[str, object]:
    topic = f"bench-pipe-{int(rate)}-{time.monotonic_ns()}"
    broker.create_topic(topic)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "--mqtt", f"127.0.0.1:{mosquitto.port}", "--quiet",
         "--upstream", f"kafka://{broker.bootstrap}/{topic}", "--data-dir", str(work / f"gw-{int(rate)}"),
         "--gateway-id", "bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3.0)
        idle_rss, cpu_before = proc_stats(gateway.pid)
        reader = LatencyReader(broker.bootstrap, topic, batches=True)
        sim = simulate(mosquitto.port, rate, seconds)
        peak_rss = idle_rss
        while sim.poll() is None:
            peak_rss = max(peak_rss, proc_stats(gateway.pid)[0])
            time.sleep(0.2)
        expected = int(rate * seconds)
        deadline = time.monotonic() + 60
        while reader.count < expected * 0.999 and time.monotonic() < deadline:
            peak_rss = max(peak_rss, proc_stats(gateway.pid)[0])
            time.sleep(0.2)
        time.sleep(1.0)
        _, cpu_after = proc_stats(gateway.pid)
        reader.close()
    finally:
        gateway.terminate()
        gateway.wait(30)
    got = reader.count
    return {
        "rate": rate, "published": expected, "arrived": got,
        "p50": percentile(reader.latencies, 0.50), "p99": percentile(reader.latencies, 0.99),
        "idle_rss_mb": idle_rss / 2**20, "peak_rss_mb": peak_rss / 2**20,
        "cpu_us_per_reading": (cpu_after - cpu_before) / max(got, 1) * 1e6,
    }


def run_bare(rate: float, seconds: float, mosquitto: Mosquitto, broker: KafkaBroker) -> dict[str, object]:
    topic = f"bench-bare-{int(rate)}-{time.monotonic_ns()}"
    broker.create_topic(topic)
    client, producer = bare_forwarder(mosquitto.port, broker.bootstrap, topic)
    reader = LatencyReader(broker.bootstrap, topic, batches=False)
    time.sleep(1.0)
    sim = simulate(mosquitto.port, rate, seconds)
    sim.wait()
    expected = int(rate * seconds)
    deadline = time.monotonic() + 60
    while reader.count < expected * 0.99 and time.monotonic() < deadline:
        producer.poll(0.1)
    producer.flush(10)
    time.sleep(1.0)
    reader.close()
    client.disconnect()
    client.loop_stop()
    return {"p50": percentile(reader.latencies, 0.5), "p99": percentile(reader.latencies, 0.99), "arrived": reader.count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10, 100 and 1000 readings/s for 8 s each")
    parser.add_argument("--rates", default="10,100,1000,10000")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rates = [10.0, 100.0, 1000.0] if args.quick else [float(r) for r in args.rates.split(",")]
    seconds = 8.0 if args.quick else args.seconds
    ensure_kafka_jars()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker(Path(tmp) / "kafka") as broker:
        for rate in rates:
            # A broker per run: the gateway's persistent session must not
            # collect what the bare forwarder's run publishes, or the reverse.
            with Mosquitto(Path(tmp) / f"mq-{rate:.0f}") as mq:
                result = run_rate(rate, seconds, mq, broker, Path(tmp))
            with Mosquitto(Path(tmp) / f"mq-bare-{rate:.0f}") as mq:
                bare = run_bare(rate, seconds, mq, broker)
            result["bare"] = bare
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
            rows.append([
                f"{rate:,.0f}", f"{result['arrived']:,} / {result['published']:,}", result["p50"], result["p99"],
                bare["p50"], bare["p99"], f"{result['idle_rss_mb']:.1f}", f"{result['peak_rss_mb']:.1f}",
                f"{result['cpu_us_per_reading']:.0f}",
            ])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"machine: {machine()}; {seconds:.0f} s per rate\n")
    print(table(
        ["readings/s", "arrived / published", "tidegate p50 ms", "tidegate p99 ms", "bare forwarder p50 ms",
         "bare forwarder p99 ms", "gateway RSS idle MB", "gateway RSS peak MB", "gateway CPU µs/reading"],
        rows,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
