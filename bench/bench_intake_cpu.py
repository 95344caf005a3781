"""Intake CPU per reading, in-process: packs of 100 readings through the gateway's writer into the log.

Run: python -m bench.bench_intake_cpu [--quick] [--messages N] [--repeat R] [--only msgpack,json]

No broker, no disk, no thread handoff while measuring: the messages are queued
on a real :class:`edge.gateway.Gateway` before its writer starts, then the
writer drains them (routing, decoding, validation, deduplication, device time,
record encoding, ``append_many`` into a real :class:`core.log.Log` on the
tests' in-memory file system, group commit, acknowledgements) and stops. The figure is
the process's CPU time (``time.process_time``, all threads) over that drain,
per reading: it does not depend on how busy the machine is, unlike a
wall-clock rate (rerun it beside another's test runs and it moves by a few
per cent, not by half).

The ceiling, measured in the same run on the same messages: parse each one
with the fastest parser of its format (C msgpack, the standard ``json``,
cbor2) and append its raw bytes to a bytearray. That is the least any intake
must do; the ratio ceiling / tidegate says how much of the intake's CPU is
spent beyond it.

Workloads (100 readings a message, 50 devices named by the topic, device
clock ``ts`` in ms, float values):

* ``msgpack``, ``json``, ``cbor``: ``{"ts", "m", "v"}`` objects, the shape of
  bench/bench_intake.py's packs (so content deduplication judges every reading);
* ``msgpack+seq``: the same with ``b`` (boot) and ``s`` (sequence number), so
  the sequence windows judge them and the records carry provenance.

Each workload runs ``--repeat`` times on a fresh log and intake; the lowest
CPU time is reported (the least disturbed run). For instruction counts, which
do not move at all between runs, run it under
``valgrind --tool=callgrind --toggle-collect=<none>`` or compare
``--messages`` at two sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import cbor2
import msgpack

from bench.common import machine, table
from core.log import Log, LogConfig
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.metrics import Metrics
from tests.unit.log.memfs import MemFS

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PACK = 100
DEVICES = 50
ROUTES = (Route(TopicTemplate("sensors/{device}"), "sensors"),)
FORMATS = ("msgpack", "json", "cbor", "msgpack+seq")


def pack_objects(index: int, numbered: bool) -> list[dict[str, object]]:
    """The readings of message ``index``: one device, 100 consecutive ms, values with one decimal."""
    base = T0 + index * PACK
    objects: list[dict[str, object]] = []
    for j in range(PACK):
        obj: dict[str, object] = {"ts": base + j, "m": "temp_c", "v": round(20 + ((index + j) % 97) / 10, 1)}
        if numbered:
            obj["b"] = 7
            obj["s"] = (index // DEVICES) * PACK + j
        objects.append(obj)
    return objects


def payloads(fmt: str, messages: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of each message."""
    encode: Callable[[object], bytes] = {
        "msgpack": msgpack.packb, "msgpack+seq": msgpack.packb, "cbor": cbor2.dumps,
        "json": lambda value: json.dumps(value).encode(),
    }[fmt]
    return [(f"sensors/dev-{i % DEVICES}", encode(pack_objects(i, fmt == "msgpack+seq"))) for i in range(messages)]


def run_tidegate(messages: list[tuple[str, bytes]]) -> tuple[float, int]:
    """CPU seconds for the writer to take every message into the log; and the readings appended."""
    log = Log(MemFS(), LogConfig(sync_policy="interval"))
    metrics = Metrics()
    now_s = (T0 + len(messages) * PACK) / 1000
    gateway = Gateway(log, ROUTES, metrics, clock=lambda: now_s, queue_size=len(messages) + 1)
    acked = [0]

    def ack() -> None:
        acked[0] += 1

    received_ms = int(now_s * 1000)
    for topic, payload in messages:
        gateway.submit(Message("mqtt", topic, payload, received_ms, ack))
    started = time.process_time()
    gateway.start()
    gateway.stop()  # the writer drains the queue, syncs, acknowledges everything, then stops
    cpu = time.process_time() - started
    if gateway.failed.is_set():
        raise RuntimeError(f"writer failed: {gateway.failure!r}")
    if acked[0] != len(messages):
        raise RuntimeError(f"{acked[0]} of {len(messages)} messages acknowledged")
    readings = int(metrics.total("tidegate_readings_in_total"))
    log.close()
    return cpu, readings


def run_ceiling(fmt: str, messages: list[tuple[str, bytes]]) -> float:
    """CPU seconds to parse every message with its format's fastest parser and append its bytes."""
    parse: Callable[[bytes], object] = {
        "msgpack": msgpack.unpackb, "msgpack+seq": msgpack.unpackb, "cbor": cbor2.loads, "json": json.loads,
    }[fmt]
    sink = bytearray()
    started = time.process_time()
    for _, payload in messages:
        parse(payload)
        sink += payload
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 messages, 2 repeats")
    parser.add_argument("--messages", type=int, default=2_000, help="messages per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload; the lowest CPU time counts")
    parser.add_argument("--only", default=",".join(FORMATS), help=f"workloads, comma-separated ({', '.join(FORMATS)})")
    args = parser.parse_args(argv)
    count, repeat = (200, 2) if args.quick else (args.messages, args.repeat)
    formats = [f for f in args.only.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown workload {', '.join(sorted(unknown))}")
    rows = []
    headline = []
    for fmt in formats:
        messages = payloads(fmt, count)
        expected = count * PACK
        runs = []
        for _ in range(repeat):
            cpu, readings = run_tidegate(messages)
            if readings != expected:
                raise RuntimeError(f"{fmt}: {readings} readings appended, expected {expected}")
            runs.append(cpu)
        cpu = min(runs)
        ceiling = min(run_ceiling(fmt, messages) for _ in range(repeat))
        us = cpu / expected * 1e6
        rows.append([
            fmt, f"{count:,}", f"{expected:,}", f"{us:.2f}", f"{expected / cpu:,.0f}",
            f"{ceiling / expected * 1e6:.2f}", f"{expected / ceiling:,.0f}", f"{ceiling / cpu:.3f}",
        ])
        headline.append(f"{fmt} {us:.2f} µs/reading ({ceiling / cpu:.3f} of ceiling)")
        print(rows[-1], f"runs: {', '.join(f'{r:.3f}' for r in runs)} s", file=sys.stderr)
    print(f"machine: {machine()}\n")
    print(table(
        ["workload", "messages", "readings", "tidegate CPU µs/reading", "tidegate readings per CPU-s",
         "ceiling CPU µs/reading", "ceiling readings per CPU-s", "ceiling / tidegate"],
        rows,
    ))
    print(f"\nheadline: {'; '.join(headline)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
