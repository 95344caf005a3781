"""Adaptive batching against fixed settings: a simulated sweep over arrival rates and links.

Run: python -m bench.bench_batching [--quick] [--target-ms 800]

Theory of operation: a discrete-event simulation on a virtual clock. Readings
arrive as a Poisson process (a fleet of devices, two metrics each, values with
two decimals) and are appended to an in-memory log. The real
:class:`bridge.forwarder.Forwarder` with the real batch encoder polls that log
every 20 ms of virtual time and sends over a simulated link: a send takes
``rtt + (batch bytes + PER_REQUEST_BYTES) / bandwidth`` (rtt with +-10 %
jitter), one batch in flight at a time, as the forwarder does. Arrivals keep
coming while a send is in flight. A reading's latency runs from its arrival
in the log to the acknowledgement of its batch; bytes per reading count the
batch bytes plus PER_REQUEST_BYTES per request (the Kafka request and TCP/TLS
framing, as core/batching.py estimates them).

Each case runs the adaptive controller (defaults, with ``--target-ms`` as its
latency target) and several fixed (linger, max readings) settings on the same
arrival sequence. The *best fixed* setting of a case is the one with the
fewest bytes per reading among those whose p99 meets the target; if none
meets it, the one with the lowest p99. "Adaptive as good" says whether
adaptive did at least as well: p99 within the target (or within 10 % of the
best fixed p99 when nothing meets it) and bytes within 5 % of the best fixed.
"Fixed better on both" lists any fixed setting with both a lower p99 and fewer
bytes than adaptive (by more than 2 %).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.common import machine, table
from bridge.forwarder import Forwarder
from core.batch import BatchHeader
from core.batching import PER_REQUEST_BYTES, BatchPolicy
from core.reading import Reading, encode_reading

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
POLL_MS = 20.0
WINDOW_MS = 3_600_000


@dataclass(frozen=True)
class Link:
    name: str
    bytes_per_s: float
    rtt_ms: float


LINKS = (
    Link("2G 20 kB/s 500 ms", 20_000, 500),
    Link("LTE 1 MB/s 60 ms", 1_000_000, 60),
    Link("LAN 100 MB/s 1 ms", 100_000_000, 1),
)
RATES = (1, 10, 100, 1000, 10000)
FIXED = ((0, 10_000), (50, 10_000), (200, 5_000), (1000, 10_000), (5000, 10_000))


@dataclass
class Record:
    offset: int
    ts_ms: int
    payload: bytes


class SimLog:
    """The LogSource the forwarder needs, in memory: one stream, every record durable at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.cursors: dict[tuple[str, str], int] = {}

    def streams(self) -> list[str]:
        return ["sensors"] if self.records else []

    def read(self, stream: str, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[Record]:
        out = []
        size = 0
        for record in self.records[offset:offset + max_records]:
            out.append(record)
            size += len(record.payload)
            if size >= max_bytes:
                break
        return out

    def end_offset(self, stream: str) -> int:
        return len(self.records)

    durable_offset = end_offset

    def load_cursor(self, name: str, stream: str) -> int:
        return self.cursors.get((name, stream), 0)

    def store_cursor(self, name: str, stream: str, offset: int) -> None:
        self.cursors[(name, stream)] = offset


@dataclass
class Sim:
    """One run: arrivals, the log, the link, and what was acknowledged when."""

    arrivals: Sequence[tuple[float, Reading]]
    link: Link
    seed: int
    now: float = 0.0
    log: SimLog = field(default_factory=SimLog)
    acked_at: dict[int, float] = field(default_factory=dict)
    wire_bytes: int = 0
    batches: int = 0
    _next: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def clock(self) -> float:
        return self.now / 1000.0

    def ingest(self) -> None:
        while self._next < len(self.arrivals) and self.arrivals[self._next][0] <= self.now:
            _, reading = self.arrivals[self._next]
            self.log.records.append(Record(len(self.log.records), reading.ts_ms, encode_reading(reading)))
            self._next += 1

    # The transport.
    def send(self, batch: bytes, header: BatchHeader) -> None:
        rtt = self.link.rtt_ms * (0.9 + 0.2 * self._rng.random())
        self.now += rtt + (len(batch) + PER_REQUEST_BYTES) * 1000.0 / self.link.bytes_per_s
        self.ingest()
        for offset in range(header.first_offset, header.last_offset + 1):
            self.acked_at[offset] = self.now
        self.wire_bytes += len(batch) + PER_REQUEST_BYTES
        self.batches += 1

    def close(self) -> None:
        pass


def fleet_arrivals(rate: float, seconds: float, seed: int) -> list[tuple[float, Reading]]:
    """Poisson arrivals at ``rate``/s from a fleet of devices, two metrics each."""
    rng = random.Random(seed)
    devices = max(1, min(50, int(rate)))
    values = [[20 + rng.random() * 5, 50 + rng.random() * 10] for _ in range(devices)]
    out = []
    t = 0.0
    i = 0
    while True:
        t += rng.expovariate(rate) * 1000.0
        if t >= seconds * 1000.0:
            return out
        device, metric = divmod(i % (2 * devices), 2)
        values[device][metric] += rng.gauss(0, 0.05)
        ts = T0 + int(t)
        out.append((t, Reading(f"node-{device:02d}", ("temp_c", "rh_pct")[metric], ts,
                               round(values[device][metric], 2), ts)))
        i += 1


@dataclass(frozen=True)
class Outcome:
    p50: float
    p99: float
    bytes_per_reading: float
    readings_per_batch: float
    delivered: float  # share of readings acknowledged by the end of the run


def run(arrivals: list[tuple[float, Reading]], link: Link, policy: BatchPolicy, seconds: float, seed: int) -> Outcome:
    sim = Sim(arrivals, link, seed)
    forwarder = Forwarder(sim.log, sim, "gw-1", WINDOW_MS, policy, clock=sim.clock)  # type: ignore[arg-type]
    # After the arrivals stop, let the backlog drain for as long again (at most).
    end = seconds * 1000.0 * 2
    while sim.now < end:
        sim.ingest()
        result = forwarder.forward_once(T0 + int(sim.now))
        if result.batches == 0:
            if sim._next >= len(arrivals) and len(sim.acked_at) == len(arrivals):
                break
            sim.now += max(POLL_MS, result.wait_ms)
    latencies = sorted(sim.acked_at[i] - arrivals[i][0] for i in sim.acked_at)
    # Readings not acknowledged by the end count at the end time: a lower bound on their latency.
    latencies += [sim.now - arrivals[i][0] for i in range(len(arrivals)) if i not in sim.acked_at]
    latencies.sort()
    n = len(latencies)
    delivered = len(sim.acked_at)
    return Outcome(
        p50=latencies[n // 2],
        p99=latencies[min(n - 1, math.ceil(0.99 * n) - 1)],
        bytes_per_reading=sim.wire_bytes / max(1, delivered),
        readings_per_batch=delivered / max(1, sim.batches),
        delivered=delivered / max(1, len(arrivals)),
    )


def seconds_for(rate: float, quick: bool) -> float:
    base = {1: 600, 10: 180, 100: 60, 1000: 20, 10000: 8}[int(rate)]
    return base / 4 if quick else base


def dominating(adaptive: Outcome, fixed: dict[str, Outcome]) -> str:
    """Fixed settings better than adaptive on both p99 and bytes (by more than 2 %), or "none"."""
    better = [k for k, o in fixed.items()
              if o.p99 < adaptive.p99 * 0.98 and o.bytes_per_reading < adaptive.bytes_per_reading * 0.98
              and o.delivered >= adaptive.delivered]
    return ", ".join(better) or "none"


def judge(adaptive: Outcome, fixed: dict[str, Outcome], target: float) -> tuple[str, str]:
    meeting = {k: o for k, o in fixed.items() if o.p99 <= target and o.delivered == 1.0}
    if meeting:
        best_name = min(meeting, key=lambda k: (meeting[k].bytes_per_reading, meeting[k].p99))
        best = meeting[best_name]
        ok = adaptive.p99 <= target and adaptive.bytes_per_reading <= best.bytes_per_reading * 1.05
    else:
        best_name = min(fixed, key=lambda k: (fixed[k].p99, fixed[k].bytes_per_reading))
        best = fixed[best_name]
        ok = adaptive.p99 <= best.p99 * 1.1 and adaptive.bytes_per_reading <= best.bytes_per_reading * 1.05
    return best_name, "yes" if ok else "NO"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the simulated time")
    parser.add_argument("--target-ms", type=int, default=BatchPolicy().target_latency_ms)
    parser.add_argument("--rates", type=float, nargs="*", default=RATES)
    args = parser.parse_args(argv)
    adaptive_policy = BatchPolicy(target_latency_ms=args.target_ms)
    fixed_policies = {f"fixed {linger} ms / {size}": BatchPolicy(mode="fixed", linger_ms=linger, max_readings=size)
                      for linger, size in FIXED}
    rows = []
    summary = []
    for link in LINKS:
        for rate in args.rates:
            seconds = seconds_for(rate, args.quick)
            arrivals = fleet_arrivals(rate, seconds, seed=int(rate) + 1)
            adaptive = run(arrivals, link, adaptive_policy, seconds, seed=7)
            fixed = {name: run(arrivals, link, p, seconds, seed=7) for name, p in fixed_policies.items()}
            best_name, verdict = judge(adaptive, fixed, args.target_ms)
            best = fixed[best_name]
            for name, o in [("adaptive", adaptive), *fixed.items()]:
                rows.append([link.name, int(rate), name, f"{o.p50:.0f}", f"{o.p99:.0f}", f"{o.bytes_per_reading:.1f}",
                             f"{o.readings_per_batch:.0f}", f"{o.delivered:.0%}"])
            summary.append([link.name, int(rate), f"{adaptive.p50:.0f}", f"{adaptive.p99:.0f}",
                            f"{adaptive.bytes_per_reading:.1f}", best_name, f"{best.p50:.0f}", f"{best.p99:.0f}",
                            f"{best.bytes_per_reading:.1f}", verdict, dominating(adaptive, fixed)])
            print(f"{link.name:20s} {int(rate):6d}/s  adaptive p99 {adaptive.p99:7.0f} ms {adaptive.bytes_per_reading:7.1f} B"
                  f" | best fixed ({best_name}) p99 {best.p99:7.0f} ms {best.bytes_per_reading:7.1f} B | {verdict}",
                  file=sys.stderr, flush=True)
    print(f"Machine: {machine()}; target p99 {args.target_ms} ms; {'quick' if args.quick else 'full'} run\n")
    print("Summary (adaptive against the best fixed setting of each case):\n")
    print(table(["link", "readings/s", "adaptive p50 ms", "adaptive p99 ms", "adaptive B/reading", "best fixed",
                 "fixed p50 ms", "fixed p99 ms", "fixed B/reading", "adaptive as good",
                 "fixed better on both"], summary))
    print("\nEvery run:\n")
    print(table(["link", "readings/s", "policy", "p50 ms", "p99 ms", "B/reading", "readings/batch", "delivered"], rows))
    good = sum(1 for row in summary if row[9] == "yes")
    beaten = sum(1 for row in summary if row[10] != "none")
    print(f"\nheadline: adaptive as good as the best fixed setting in {good} of {len(summary)} cases; "
          f"a fixed setting better on both p99 and bytes in {beaten}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
