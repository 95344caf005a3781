"""Intake: messages from Mosquitto into the durable log, against a count-only subscriber.

Run: python -m bench.bench_intake [--quick]

Both consumers get the same conditions: a persistent session on the same
Mosquitto, subscribed at QoS 1, and the same messages queued for them while
they were away. Then each connects and drains its queue:

* the ceiling, a count-only paho subscriber that acknowledges each message as
  it arrives and does nothing else;
* tidegate's intake (paho with manual acks, the gateway's writer, the durable
  log on this disk with sync policy ``interval``), which acknowledges a
  message only once the log holds it durably.

Reported: messages/s and readings/s of each, the ratio, and tidegate's CPU
time per reading (the process's CPU time; the broker runs in its own process).
Two workloads: one JSON reading per message, and msgpack packs of 100 readings.
The two consumers drain in turn, ``--repeat`` times each (every session made
before the one publish, so each finds the same queue), and the best drain of
each counts; the ratio of each pair is printed too.

The flood case (issue 4: a flood of garbage must not slow good readings by
more than its share of CPU): tidegate drains the same good readings twice in
one run, once alone and once interleaved in the broker's queue with
``--flood`` times as many malformed messages (bad JSON, stray bytes, cut-off
arrays, on two topics of their own, queued by two publishers at the same
time). Reported: good readings/s in each, from the connect to the last good
reading's acknowledgement, and their ratio beside the fair-share floor
``1 / (1 + flood)``, the ratio a garbage message costing as much as a reading
would give. A ratio above the floor means garbage costs less than its share.
Also tidegate's CPU time per reading (alone) and per garbage message (the
flooded drain's CPU time less the lone drain's, over the garbage count). The
two drains alternate twice; the best of each counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import machine, table
from core.deadletter import with_dead_letter_quota
from core.log import LogConfig
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.logstore import open_log
from edge.metrics import Metrics
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig, MqttIntake, Received

T0 = 1_767_225_600_000
ROUTES = (Route(TopicTemplate("sensors/{device}"), "sensors"),)


def payloads(kind: str, messages: int) -> list[bytes]:
    if kind == "single":
        return [json.dumps({"ts": T0 + i, "m": "temp_c", "v": round(20 + (i % 97) / 10, 1)}).encode() for i in range(messages)]
    return [
        msgpack.packb([{"ts": T0 + i * 100 + j, "m": "temp_c", "v": round(20 + ((i + j) % 97) / 10, 1)} for j in range(100)])
        for i in range(messages)
    ]


def make_session(port: int, client_id: str) -> None:
    """Connect once with a persistent session and subscribe, so the broker queues for us."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe("sensors/#", qos=1)
    time.sleep(0.3)
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, messages: list[bytes], topic: str = "sensors/dev-{i}", client_id: str = "bench-publisher") -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic.format(i=i % 50), m, qos=1) for i, m in enumerate(messages)]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def garbage(messages: int) -> list[bytes]:
    """Malformed payloads of about a reading's size: bad JSON, stray bytes, cut-off arrays."""
    kinds = (b'{"ts": %d, "m": "temp_c", "v": 2', b"\x00\x01\x02 not a reading %d", b'[1, 2, 3, %d, "temp_c"')
    return [kinds[i % 3] % i for i in range(messages)]


def publish_with_flood(port: int, good: list[bytes], flood: list[bytes]) -> None:
    """Queue the good readings and the garbage at the same time, from three publishers, so they interleave."""
    halves = (flood[0::2], flood[1::2])
    threads = [threading.Thread(target=publish_all, args=(port, good))] + [
        threading.Thread(target=publish_all, args=(port, half, f"sensors/broken-{k}", f"bench-flood-{k}"))
        for k, half in enumerate(halves)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drain_raw(port: int, client_id: str, expected: int) -> float:
    done = threading.Event()
    count = 0

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        nonlocal count
        client.ack(message.mid, message.qos)
        count += 1
        if count >= expected:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    start = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"raw subscriber got {count} of {expected}")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def drain_tidegate(port: int, client_id: str, expected: int, data_dir: Path) -> tuple[float, float, int]:
    """Drain the session's queue; returns (seconds until ``expected`` good messages are acknowledged, CPU s, readings).

    Messages on ``sensors/broken-*`` (the flood) are acknowledged as usual but
    not waited for: the last of them wait for their flood summary.
    """
    log = open_log(data_dir, with_dead_letter_quota(LogConfig(sync_policy="interval")))
    metrics = Metrics()
    gateway = Gateway(log, ROUTES, metrics)
    acked = 0
    done = threading.Event()
    lock = threading.Lock()

    def acknowledge(received: Received) -> None:
        nonlocal acked
        intake.ack(received)
        if received.topic.startswith("sensors/broken-"):
            return
        with lock:
            acked += 1
            if acked >= expected:
                done.set()

    def on_message(received: Received) -> None:
        gateway.submit(Message("mqtt", received.topic, received.payload, int(time.time() * 1000), lambda: acknowledge(received)))

    intake = MqttIntake(MqttConfig(port=port, client_id=client_id, subscriptions=("sensors/#",)), on_message)
    gateway.ack_batch = intake.batched_acks  # as tidegate/app.py wires them
    gateway.start()
    cpu = time.process_time()
    start = time.perf_counter()
    intake.start()
    if not done.wait(300):
        raise RuntimeError(f"tidegate acknowledged {acked} of {expected}")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    intake.stop()
    gateway.stop()
    readings = int(metrics.total("tidegate_readings_in_total"))
    log.close()
    return elapsed, cpu, readings


def flood_case(tmp: Path, count: int, flood: int, repeat: int = 2) -> list[str]:
    """Good readings/s alone and interleaved with ``flood`` times as much garbage, on one broker.

    The two drains alternate ``repeat`` times and the best of each is kept, so
    a burst of load from elsewhere on the machine does not decide the ratio.
    """
    good = payloads("single", count)
    alone: list[tuple[float, float]] = []
    flooded: list[tuple[float, float]] = []
    with Mosquitto(tmp / "mq-flood") as broker:
        for r in range(repeat):
            make_session(broker.port, f"bench-alone-{r}")
            publish_all(broker.port, good)
            elapsed, cpu, readings = drain_tidegate(broker.port, f"bench-alone-{r}", count, tmp / f"log-alone-{r}")
            assert readings == count, (readings, count)
            alone.append((elapsed, cpu))
            make_session(broker.port, f"bench-flooded-{r}")
            publish_with_flood(broker.port, good, garbage(count * flood))
            elapsed, cpu, readings = drain_tidegate(broker.port, f"bench-flooded-{r}", count, tmp / f"log-flooded-{r}")
            assert readings == count, (readings, count)
            flooded.append((elapsed, cpu))
    alone_s, alone_cpu = min(e for e, _ in alone), min(c for _, c in alone)
    flooded_s, flooded_cpu = min(e for e, _ in flooded), min(c for _, c in flooded)
    per_garbage = (flooded_cpu - alone_cpu) / (count * flood)
    return [f"{count:,} + {count * flood:,} garbage", f"{count / alone_s:,.0f}", f"{count / flooded_s:,.0f}",
            f"{alone_s / flooded_s:.2f}", f"{1 / (1 + flood):.2f}", f"{alone_cpu / count * 1e6:.0f}",
            f"{per_garbage * 1e6:.0f}"]


def drain_case(tmp: Path, name: str, count: int, per_message: int, repeat: int) -> list[str]:
    """One workload: the count-only subscriber and tidegate drain the same queue, alternating ``repeat`` times.

    Every session is made before the messages are published once, so each
    finds the same queue; the best drain of each consumer counts, so a burst
    of load from elsewhere on the machine does not decide the ratio.
    """
    raw: list[float] = []
    ours: list[tuple[float, float]] = []
    with Mosquitto(tmp / f"mq-{per_message}") as broker:
        for r in range(repeat):
            make_session(broker.port, f"bench-raw-{r}")
            make_session(broker.port, f"bench-tidegate-{r}")
        publish_all(broker.port, payloads("single" if per_message == 1 else "pack", count))
        for r in range(repeat):
            raw.append(drain_raw(broker.port, f"bench-raw-{r}", count))
            elapsed, cpu, readings = drain_tidegate(broker.port, f"bench-tidegate-{r}", count, tmp / f"log-{per_message}-{r}")
            assert readings == count * per_message, (readings, count * per_message)
            ours.append((elapsed, cpu))
    raw_s = min(raw)
    tg_s, cpu_s = min(e for e, _ in ours), min(c for _, c in ours)
    readings = count * per_message
    return [
        name, f"{count:,}", f"{count / raw_s:,.0f}", f"{count / tg_s:,.0f}", f"{raw_s / tg_s:.2f}",
        f"{readings / tg_s:,.0f}", f"{cpu_s / readings * 1e6:.1f}",
        " ".join(f"{r / t:.2f}" for r, (t, _) in zip(raw, ours)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument("--flood", type=int, default=4, help="garbage messages per good reading in the flood case")
    parser.add_argument("--only-flood", action="store_true", help="run only the flood case")
    parser.add_argument("--repeat", type=int, default=3, help="drains of each consumer per workload, alternating")
    args = parser.parse_args(argv)
    workloads = [("single", 5_000 if args.quick else 30_000, 1), ("pack of 100", 500 if args.quick else 2_000, 100)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flood_row = flood_case(Path(tmp), 2_000 if args.quick else 10_000, args.flood)
        print(flood_row, file=sys.stderr)
        for name, count, per_message in [] if args.only_flood else workloads:
            rows.append(drain_case(Path(tmp), name, count, per_message, args.repeat))
            print(rows[-1], file=sys.stderr)
    print(f"machine: {machine()}\n")
    print(table(
        ["good readings", "alone readings/s", "with the flood readings/s", "with / alone", "fair-share floor",
         "CPU µs/reading", "CPU µs/garbage message"],
        [flood_row],
    ))
    if args.only_flood:
        return 0
    print()
    print(table(
        ["messages", "count", "count-only subscriber msg/s (best)", "tidegate msg/s (best)", "tidegate / subscriber",
         "tidegate readings/s (best)", "tidegate CPU µs/reading (least)", "ratio of each pair of drains"],
        rows,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
