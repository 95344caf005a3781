"""When to close a batch, and how big it may grow: the adaptive batching controller.

Theory of operation (docs/batching.md has the whole argument and the numbers)
----------------------------------------------------------------------------
The bridge reads a stream's unforwarded records in offset order and cuts them
into runs of one time window (a batch never spans two windows). A run becomes
a batch when it reaches ``max_readings`` or ``max_bytes``, when the next
record belongs to another window, or when its oldest reading has waited
``linger_ms``. :class:`BatchPolicy` is the configuration; in ``fixed`` mode
those three limits are simply its own. In ``adaptive`` mode (the default) a
:class:`BatchController` sets them per stream from what it measures:

* the **arrival rate** of each stream (readings per second, from the growth of
  the log's end offset);
* the **uplink**: round-trip time (the shortest recent send) and throughput
  (bytes per second beyond the round trip, from sends big enough to show it),
  measured by the bridge around each ``transport.send``; and how busy the
  uplink is (the share of time spent sending);
* the **backlog**: readings in the log not yet acknowledged upstream.

Two regimes:

* **Caught up** (latency): a reading's delay is about ``linger + wait +
  send``, where ``send = rtt + bytes / throughput`` and ``wait`` is the send in
  flight ahead of it. The controller spends what the latency target leaves
  after the link's share on lingering, so batches collect as many readings as
  the target allows: fewer requests, and each reading's bytes are shared
  overhead. It stops growing a batch once the per-batch overhead is a small
  share of it (``OVERHEAD_SHARE``): past that point waiting costs latency and
  saves almost nothing. On a link too slow to meet the target, the linger is
  zero and batches grow by themselves: everything that arrived during the
  previous send goes in the next.
* **Behind** (more readings waiting than arrive in one target latency, e.g.
  after an outage or on a link slower than the arrivals): no linger, and batches as big as one send of
  ``send_budget_ms`` carries, within the caps. Big batches amortise the round
  trip (throughput approaches the link's) and compress best. Until a send
  shows the link's throughput the size is the cap; after that it follows the
  measurement.

Caps always hold: ``max_readings``, ``max_batch_bytes`` (raw record bytes, which
bounds the encoded batch under the upstream's message size limit), and
``linger_ms`` (the longest any reading waits for company).

Everything is pure: times are passed in (``now_ms``), nothing is read from a
clock, and the controller holds only numbers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from core.errors import LocalError

__all__ = [
    "MODES",
    "BatchPolicy",
    "Limits",
    "BatchController",
    "PER_REQUEST_BYTES",
    "BATCH_HEADER_BYTES",
    "OVERHEAD_SHARE",
    "CLOCK_STEP_MS",
]

MODES = ("adaptive", "fixed")

#: Bytes a request costs on the wire besides the batch itself: the Kafka
#: produce request and response (record batch header, key, tg-* headers,
#: topic name), TCP/IP and TLS framing. An estimate, used to decide when a
#: batch is big enough; the benchmark's link model uses the same figure.
PER_REQUEST_BYTES = 400
#: A batch's own fixed bytes: header, names, lz4 frame (docs/batch_format.md).
BATCH_HEADER_BYTES = 80
#: Stop growing a caught-up batch once the per-batch bytes are this share of it.
OVERHEAD_SHARE = 0.05

_RATE_TAU_MS = 5_000.0  # arrival-rate averaging time constant
_BUSY_TAU_MS = 10_000.0  # uplink busy-share averaging time constant
_LINK_SAMPLES = 16  # sends remembered for the rtt (min) and throughput (max) estimates
_PRIOR_RTT_MS = 100.0  # before the first send
_PRIOR_READING_BYTES = 8.0  # compressed bytes per reading before the first send
_MIN_READING_BYTES = 0.5


#: A receive time further than this in the future means the clock was stepped back.
CLOCK_STEP_MS = 1_000


def _lingered(oldest_received_ms: int, now_ms: int, linger_ms: int) -> bool:
    """Whether a run whose first reading arrived at ``oldest_received_ms`` has waited long enough.

    A receive time well in the future (more than ``CLOCK_STEP_MS``) means the
    gateway's clock was stepped back since: the wait cannot be measured, and
    waiting for the clock to catch up could hold the run for days, so it has
    waited long enough. A receive time a little in the future is ordinary: a
    reading that arrived during the bridge's pass, stamped after the pass read
    the clock; it waits its linger like any other.
    """
    if oldest_received_ms - now_ms > CLOCK_STEP_MS:
        return True
    return now_ms - oldest_received_ms >= linger_ms


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the bridge batches: ``[batch]`` in the configuration file.

    Attributes:
        mode: ``"adaptive"`` (default) or ``"fixed"`` (close at exactly
            ``max_readings`` / ``linger_ms``).
        max_readings: cap on readings per batch, 1..1000000.
        linger_ms: cap on how long a reading waits for company, 0..3600000;
            in fixed mode, the linger itself.
        max_batch_bytes: cap on a batch's raw record bytes, 1 KiB..64 MiB; keep
            it under the upstream's message size limit (Kafka: 1 MiB).
        target_latency_ms: adaptive: the delay from log to upstream
            acknowledgement to aim for while caught up, 10..3600000.
        send_budget_ms: adaptive: how long one send of a backlog batch may
            take, 100..600000.
        fresh_share: share of the uplink kept for fresh data while a backlog
            drains, 0 (default: strictly oldest first) .. 0.9.
        max_bytes_per_s: bandwidth cap on batch bytes for metered links; 0
            for none.
    """

    mode: str = "adaptive"
    max_readings: int = 10_000
    linger_ms: int = 1_000
    max_batch_bytes: int = 900_000
    target_latency_ms: int = 800
    send_budget_ms: int = 2_000
    fresh_share: float = 0.0
    max_bytes_per_s: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LocalError(f"batch mode {self.mode!r} is not one of {', '.join(MODES)}")
        _check_int("max_readings", self.max_readings, 1, 1_000_000)
        _check_int("linger_ms", self.linger_ms, 0, 3_600_000)
        _check_int("max_batch_bytes", self.max_batch_bytes, 1024, 64 * 1024 * 1024)
        _check_int("target_latency_ms", self.target_latency_ms, 10, 3_600_000)
        _check_int("send_budget_ms", self.send_budget_ms, 100, 600_000)
        _check_int("max_bytes_per_s", self.max_bytes_per_s, 0, 10**12)
        share = self.fresh_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 0.9:
            raise LocalError(f"batch fresh_share {share!r} is outside 0..0.9")

    def should_close(self, count: int, oldest_received_ms: int, window_ended: bool, now_ms: int) -> bool:
        """Fixed-mode rule: whether a run of ``count`` readings should be sent now.

        Args:
            count: readings in the run.
            oldest_received_ms: gateway receive time of its first reading.
            window_ended: the log already holds a later record of another
                window, so no more readings can join this run.
            now_ms: the current gateway time.
        """
        return count >= self.max_readings or window_ended or _lingered(oldest_received_ms, now_ms, self.linger_ms)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LocalError(f"batch {name} {value!r} is outside {low}..{high}")


@dataclass(frozen=True, slots=True)
class Limits:
    """When the current run of one stream closes.

    Attributes:
        max_readings: close at this many readings.
        max_bytes: close at this many raw record bytes.
        linger_ms: close once the oldest reading has waited this long.
        behind: the stream is draining a backlog (throughput regime).
    """

    max_readings: int
    max_bytes: int
    linger_ms: int
    behind: bool = False

    def should_close(self, count: int, size: int, oldest_received_ms: int, window_ended: bool, now_ms: int) -> bool:
        """Whether a run of ``count`` readings and ``size`` raw bytes goes now."""
        return (
            count >= self.max_readings
            or size >= self.max_bytes
            or window_ended
            or _lingered(oldest_received_ms, now_ms, self.linger_ms)
        )


class _Arrivals:
    __slots__ = ("end", "at", "rate")

    def __init__(self, end: int, at: int) -> None:
        self.end = end
        self.at = at
        self.rate = -1.0  # readings per ms; negative until the first interval is seen


class BatchController:
    """Sets each stream's :class:`Limits` from the measured arrivals, uplink and backlog.

    One controller serves one uplink (all streams of a forwarder). It keeps
    only numbers; feed it with the ``observe_*`` methods and ask
    :meth:`limits` before cutting a batch.

    Args:
        policy: the configuration; in fixed mode :meth:`limits` returns its
            caps unchanged.
    """

    def __init__(self, policy: BatchPolicy = BatchPolicy()) -> None:
        self.policy = policy
        self._arrivals: dict[str, _Arrivals] = {}
        self._sends: deque[tuple[int, float]] = deque(maxlen=_LINK_SAMPLES)  # (bytes, duration ms)
        self._reading_bytes = _PRIOR_READING_BYTES
        self._busy_ms = 0.0
        self._busy_at: int | None = None
        self._last = Limits(policy.max_readings, policy.max_batch_bytes, policy.linger_ms)

    # -- observations -------------------------------------------------------

    def observe_end(self, stream: str, end_offset: int, now_ms: int) -> None:
        """The log's end offset of ``stream`` at ``now_ms`` (how fast readings arrive)."""
        a = self._arrivals.get(stream)
        if a is None:
            self._arrivals[stream] = _Arrivals(end_offset, now_ms)
            return
        dt = now_ms - a.at
        if dt <= 0:
            return
        if end_offset < a.end:  # the log was replaced; start over
            self._arrivals[stream] = _Arrivals(end_offset, now_ms)
            return
        sample = (end_offset - a.end) / dt
        if a.rate < 0:  # the first interval: take it as it is
            a.rate = sample
        else:
            a.rate += (1.0 - math.exp(-dt / _RATE_TAU_MS)) * (sample - a.rate)
        a.end = end_offset
        a.at = now_ms

    def observe_send(self, size: int, readings: int, duration_ms: float, now_ms: int) -> None:
        """One acknowledged send: ``size`` batch bytes holding ``readings``, taking ``duration_ms``."""
        duration = max(1.0, float(duration_ms))
        self._sends.append((size, duration))
        per_reading = max(_MIN_READING_BYTES, (size - BATCH_HEADER_BYTES) / max(1, readings))
        # Bytes per reading fall as batches grow; follow them closely.
        self._reading_bytes += 0.5 * (per_reading - self._reading_bytes)
        self._decay_busy(now_ms)
        self._busy_ms += duration

    def _decay_busy(self, now_ms: int) -> None:
        if self._busy_at is not None and now_ms > self._busy_at:
            self._busy_ms *= math.exp(-(now_ms - self._busy_at) / _BUSY_TAU_MS)
        if self._busy_at is None or now_ms > self._busy_at:
            self._busy_at = now_ms

    # -- estimates ----------------------------------------------------------

    def arrival_rate(self, stream: str) -> float:
        """Readings per second arriving in ``stream`` (0 until measured)."""
        a = self._arrivals.get(stream)
        return max(0.0, a.rate) * 1000.0 if a is not None else 0.0

    @property
    def rtt_ms(self) -> float:
        """The shortest recent send: the round trip plus the smallest transfer."""
        return min(d for _, d in self._sends) if self._sends else _PRIOR_RTT_MS

    @property
    def throughput(self) -> float:
        """Bytes per ms the link carries beyond the round trip, capped by ``max_bytes_per_s``.

        From sends whose transfer stands out from the round trip (at least
        half of it again): the best of ``bytes / (duration - rtt)``. Until
        there is such a send it is unknown, and taken as infinite: the
        transfer is then too small to matter, and the first big batch tells.
        """
        rtt = self.rtt_ms
        best = max((b / (d - rtt) for b, d in self._sends if d >= 1.5 * rtt), default=math.inf)
        if self.policy.max_bytes_per_s:
            best = min(best, self.policy.max_bytes_per_s / 1000.0)
        return best

    @property
    def reading_bytes(self) -> float:
        """Batch bytes per reading, as recently sent."""
        return self._reading_bytes

    def busy(self, now_ms: int) -> float:
        """Share of recent time spent sending, 0..1."""
        self._decay_busy(now_ms)
        return min(1.0, self._busy_ms / _BUSY_TAU_MS)

    # -- decisions ----------------------------------------------------------

    def limits(self, stream: str, backlog: int, now_ms: int) -> Limits:
        """The limits for the next batch of ``stream``, with ``backlog`` readings waiting."""
        p = self.policy
        if p.mode == "fixed":
            limits = Limits(p.max_readings, p.max_batch_bytes, p.linger_ms)
            self._last = limits
            return limits
        rate = self._arrivals[stream].rate if stream in self._arrivals else 0.0  # per ms
        target = float(p.target_latency_ms)
        bw = self.throughput
        c = self._reading_bytes
        # Readings at which the fixed costs of a request are OVERHEAD_SHARE of it.
        enough = (PER_REQUEST_BYTES + BATCH_HEADER_BYTES) / (OVERHEAD_SHARE * c)
        # More waiting than arrives in one target latency: whatever arrives now
        # cannot make the target before that is sent, so send for throughput.
        behind = backlog > max(64.0, rate * target)
        if behind:
            # One send of send_budget_ms; inf bandwidth (not measured yet) means the cap.
            transfer = max(0.5 * p.send_budget_ms, p.send_budget_ms - self.rtt_ms)
            size = p.max_readings if math.isinf(bw) else bw * transfer / c
            limits = Limits(_clamp_int(size, 1, p.max_readings), p.max_batch_bytes, 0, behind=True)
        else:
            k = 1.0 + self.busy(now_ms)  # the send ahead of ours, as often as the link is busy
            fixed_send = self.rtt_ms + (0.0 if math.isinf(bw) else BATCH_HEADER_BYTES / bw)
            margin = 20.0 + 0.1 * target  # the bridge's poll, the log's group commit
            spare = target - margin - k * fixed_send
            growth = 1.0 + (0.0 if math.isinf(bw) else k * c * rate / bw)
            linger = max(0.0, spare / growth)
            # On a slow round trip a reading usually waits for the send ahead
            # of it anyway; half a round trip of linger hides in that wait and
            # lets the next reading share the request.
            linger = max(linger, 0.5 * self.rtt_ms)
            # What is already waiting goes in one batch: splitting it would
            # only add round trips.
            size = max(enough, float(backlog))
            limits = Limits(_clamp_int(size, 1, p.max_readings), p.max_batch_bytes,
                            _clamp_int(linger, 0, p.linger_ms))
        self._last = limits
        return limits

    # For the status page and metrics: the limits last handed out.
    @property
    def current_max_readings(self) -> int:
        return self._last.max_readings

    @property
    def current_linger_ms(self) -> int:
        return self._last.linger_ms

    @property
    def max_readings(self) -> int:
        return self.policy.max_readings

    @property
    def linger_ms(self) -> int:
        return self.policy.linger_ms


def _clamp_int(value: float, low: int, high: int) -> int:
    if math.isnan(value):
        return high
    return int(max(low, min(high, value)))
