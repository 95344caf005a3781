"""The forwarder: durable log in, acknowledged batches upstream, cursor advanced.

How this works
--------------
For each stream the forwarder keeps a cursor, the offset of the first record
not yet acknowledged upstream, stored in the log's cursor store under the name
``bridge``. It reads durable records from the cursor, cuts them into runs of
one time window, asks the batching controller (core/batching.py) whether the
first run should go now and how big it may be, encodes it
(docs/batch_format.md) and sends it. Only when the transport returns (the
upstream holds the batch) does the cursor move past it, and the cursor is
stored atomically, at most once a second. A crash anywhere in between means the same readings, with
the same offsets, are sent again; the central side drops what it has already
seen by reading id (docs/exactly_once.md).

Store and forward (docs/batching.md, "Store and forward"):

* **Order.** Each step picks one batch: the due batch of the stream with the
  highest priority, streams of equal priority in turn. A backlog drains oldest
  first.
* **Trains.** The batches picked in one call go upstream together, as a
  train (up to ``max_batches``, about ``TRAIN_BYTES``): a transport with
  ``send_many`` (Kafka) takes the whole train in one round trip, so a backlog
  of many small windows drains at the link's throughput instead of one batch
  per round trip, and the producer's compression folds what the batches
  repeat (names, keys, headers). Cursors move for the batches the upstream
  acknowledged, in train order; the rest go again. The main cursors are
  stored at most once a second (``cursor_interval_s``): a crash in between
  resends a second of acknowledged batches, which the central side drops.
* **Fresh share.** With ``fresh_share`` > 0, a stream that is far behind gets
  a second, *fresh* lane starting at the log's end when it fell behind. Fresh
  batches (the lane's, and those of streams that are caught up) go first
  while they have used less than ``fresh_share`` of the recent uplink bytes;
  the backlog gets the rest. The lane is stored as two more cursors,
  ``bridge.fresh-start`` and ``bridge.fresh``: offsets in ``[fresh-start,
  fresh)`` are acknowledged too. When the backlog reaches the lane the two
  merge. The central side keeps applied offset *ranges*, so the lane's
  readings are applied once.
* **Bandwidth cap.** A token bucket (core/ratelimit.py) in bytes per second.

The forwarder times each send and feeds the controller; the clock is
injected (monotonic seconds) so tests and the benchmark drive it.

Dead letters (stream ``_deadletter``) stay on the gateway; ``tidegate tail
--dead-letters`` shows them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.batch import Entry, decode_header, encode_batch
from core.batching import CLOCK_STEP_MS, BatchController, BatchPolicy, Limits
from core.deadletter import DEAD_LETTER_STREAM
from core.errors import InvalidReading
from core.ratelimit import TokenBucket, Unlimited
from core.reading import Reading, decode_reading
from core.timewindow import Window, window_of
from bridge.errors import PartialSend, TransportError
from bridge.transports import Transport

__all__ = ["LogSource", "Forwarder", "ForwardResult", "CURSOR_NAME", "FRESH_CURSOR", "FRESH_START_CURSOR"]

log = logging.getLogger("tidegate.bridge")

CURSOR_NAME = "bridge"
FRESH_START_CURSOR = "bridge.fresh-start"
FRESH_CURSOR = "bridge.fresh"

_SHARE_TAU_S = 10.0  # the fresh share is measured over about this long
# A train is cut at about this many bytes: below librdkafka's default
# batch.size (1,000,000), so one train fits one produce request per partition.
TRAIN_BYTES = 512 * 1024


class LogRecordLike(Protocol):
    offset: int
    ts_ms: int
    payload: bytes


class LogSource(Protocol):
    """What the forwarder needs of the durable log (``core.log.Log`` provides it)."""

    def streams(self) -> list[str]: ...
    def read(self, stream: str, offset: int, max_records: int = ..., max_bytes: int = ...) -> Sequence[LogRecordLike]: ...
    def end_offset(self, stream: str) -> int: ...
    def durable_offset(self, stream: str) -> int: ...
    def load_cursor(self, name: str, stream: str) -> int: ...
    def store_cursor(self, name: str, stream: str, offset: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What one :meth:`Forwarder.forward_once` did.

    Attributes:
        failed: the upstream refused a batch (its cursor stays; it goes again).
        wait_ms: the bandwidth cap held a due batch back for about this long.
    """

    batches: int = 0
    readings: int = 0
    bytes: int = 0
    failed: bool = False
    wait_ms: float = 0.0

    def plus(self, other: ForwardResult) -> ForwardResult:
        return ForwardResult(self.batches + other.batches, self.readings + other.readings,
                             self.bytes + other.bytes, self.failed or other.failed, max(self.wait_ms, other.wait_ms))


@dataclass(frozen=True, slots=True)
class _Car:
    """A run on a train: its readings and the batch they were encoded into."""

    run: _Run
    entries: list[Entry]
    batch: bytes


@dataclass
class _Lane:
    start: int  # first offset of the fresh lane
    next: int  # next offset of the lane to send; [start, next) is acknowledged


@dataclass
class _Run:
    """A cut run of one window, due to be sent: records from ``start`` on."""

    stream: str
    lane: bool
    records: Sequence[LogRecordLike]
    window: Window
    fresh: bool
    priority: int
    first_reading: Reading = field(repr=False)


class Forwarder:
    """Moves a gateway's streams upstream in acknowledged batches, picked one at a time.

    Args:
        source: the durable log; it must outlive the forwarder. Only this
            forwarder may store its cursors.
        transport: the upstream; owned by the caller.
        gateway_id: this gateway's id, part of every reading's id.
        window_ms: the log's time window length.
        policy: batching, fresh share and bandwidth cap (``[batch]``).
        on_sent: called after each acknowledged batch with (stream, readings, bytes).
        priorities: per-stream priority (higher first; default 0), as the
            log's ``priorities``.
        clock: monotonic seconds, for timing sends and the bandwidth cap.
        max_batches: at most this many batches per :meth:`forward_once`, so
            the caller gets control back during a long drain.
        cursor_interval_s: the main cursors are stored (write, fsync, rename,
            fsync the directory) at most this often. Between stores a crash
            only makes the forwarder send acknowledged batches again, which
            the central side drops by reading id; on a small site storing after
            every batch would cost the SD card as many fsyncs as the log
            itself (docs/benchmarks.md, "Footprint").
    """

    def __init__(
        self,
        source: LogSource,
        transport: Transport,
        gateway_id: str,
        window_ms: int,
        policy: BatchPolicy = BatchPolicy(),
        on_sent: Callable[[str, int, int], None] = lambda stream, readings, size: None,
        priorities: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_batches: int = 256,
        cursor_interval_s: float = 1.0,
    ) -> None:
        self.source = source
        self.transport = transport
        self.gateway_id = gateway_id
        self.window_ms = window_ms
        self.policy = policy
        self.controller = BatchController(policy)
        self.on_sent = on_sent
        self.priorities = dict(priorities or {})
        self.clock = clock
        self.max_batches = max_batches
        rate = policy.max_bytes_per_s
        self.bucket: TokenBucket | Unlimited = (
            TokenBucket(rate, burst=max(rate, 64 * 1024), now_ms=self._mono_ms()) if rate else Unlimited()
        )
        self._cursors: dict[str, int] = {}
        self.cursor_interval_s = cursor_interval_s
        self._unstored: dict[str, int] = {}  # main cursors acknowledged but not stored yet
        self._stored_at = -math.inf
        self._lanes: dict[str, _Lane | None] = {}
        self._served: dict[str, int] = {}  # stream -> step it last sent at (round robin)
        self._lingering: dict[tuple[str, bool], tuple[int, int]] = {}  # (stream, lane) -> (start, due at ms)
        self._step = 0
        self._fresh_bytes = 0.0
        self._all_bytes = 0.0
        self._share_at = self._mono_ms()

    def _mono_ms(self) -> float:
        return self.clock() * 1000.0

    # -- cursors --------------------------------------------------------------

    def cursor(self, stream: str) -> int:
        """The first offset of ``stream`` not acknowledged upstream (the fresh lane aside)."""
        if stream not in self._cursors:
            self._cursors[stream] = self.source.load_cursor(CURSOR_NAME, stream)
        return self._cursors[stream]

    def lane(self, stream: str) -> tuple[int, int] | None:
        """The fresh lane of ``stream`` as (start, next), or None."""
        if stream not in self._lanes:
            start = self.source.load_cursor(FRESH_START_CURSOR, stream)
            nxt = self.source.load_cursor(FRESH_CURSOR, stream)
            # A lane at or below the main cursor was merged (a crash may have
            # left its cursors behind): it is no lane.
            self._lanes[stream] = _Lane(start, max(start, nxt)) if start > self.cursor(stream) else None
        lane = self._lanes[stream]
        return (lane.start, lane.next) if lane is not None else None

    def backlog(self, stream: str) -> int:
        """Readings of ``stream`` in the log not yet acknowledged upstream."""
        waiting = max(0, self.source.end_offset(stream) - self.cursor(stream))
        lane = self.lane(stream)
        if lane is not None:
            waiting -= lane[1] - lane[0]
        return max(0, waiting)

    def _store(self, stream: str, offset: int) -> None:
        self._cursors[stream] = offset
        self._unstored[stream] = offset

    def store_cursors(self, force: bool = True) -> None:
        """Store the main cursors acknowledged since the last store.

        Args:
            force: store now; else only once ``cursor_interval_s`` has passed
                since the last store. Call with force before closing the log.

        Raises:
            whatever the log's ``store_cursor`` raises; the cursors not stored
            stay pending and are tried again at the next call.
        """
        if not self._unstored or (not force and self.clock() - self._stored_at < self.cursor_interval_s):
            return
        for stream, offset in list(self._unstored.items()):
            self.source.store_cursor(CURSOR_NAME, stream, offset)
            del self._unstored[stream]
        self._stored_at = self.clock()

    def _open_lane(self, stream: str, start: int) -> None:
        # "next" first: a crash between the two leaves start <= cursor, no lane.
        self.source.store_cursor(FRESH_CURSOR, stream, start)
        self.source.store_cursor(FRESH_START_CURSOR, stream, start)
        self._lanes[stream] = _Lane(start, start)
        log.info("stream %s is %d readings behind: fresh lane from offset %d", stream, start - self.cursor(stream), start)

    def _merge_lane(self, stream: str, lane: _Lane) -> None:
        # The main cursor jumps over the lane's acknowledged run; then the
        # lane's cursors are cleared (if that is lost, start <= cursor: no lane).
        self._store(stream, lane.next)
        self.store_cursors()
        self.source.store_cursor(FRESH_START_CURSOR, stream, 0)
        self.source.store_cursor(FRESH_CURSOR, stream, 0)
        self._lanes[stream] = None
        log.info("stream %s caught up with its fresh lane at offset %d", stream, lane.next)

    # -- cutting runs ---------------------------------------------------------

    def _cut(self, stream: str, start: int, stop: int | None, limits: Limits, now_ms: int,
             lane: bool, fresh: bool) -> _Run | None:
        """The run of one window from ``start`` (below ``stop``), if it is due now."""
        # The bridge polls often; a run found lingering is not read and
        # decoded again until its linger is over or enough has arrived to
        # fill it. (A record of the next window then waits out the linger.)
        wait = self._lingering.get((stream, lane))
        if wait is not None and wait[0] == start and now_ms < wait[1] <= now_ms + limits.linger_ms + CLOCK_STEP_MS \
                and self.source.durable_offset(stream) - start < limits.max_readings:
            return None  # (a due time further off means the clock was stepped back: look again)
        records = self.source.read(stream, start, limits.max_readings + 1, max_bytes=limits.max_bytes + 65_536)
        if stop is not None:
            records = [r for r in records if r.offset < stop]
        if not records:
            return None
        window = window_of(records[0].ts_ms, self.window_ms)
        count = size = 0
        window_ended = False
        for record in records:
            if not window.contains(record.ts_ms):
                window_ended = True
                break
            if count >= limits.max_readings or (count and size + len(record.payload) > limits.max_bytes):
                break
            count += 1
            size += len(record.payload)
        full = count < len(records) and not window_ended  # stopped by a cap, more are waiting
        first = _decode(stream, records[0])
        if not full and not limits.should_close(count, size, first.received_ms, window_ended, now_ms):
            self._lingering[(stream, lane)] = (start, first.received_ms + limits.linger_ms)
            return None
        return _Run(stream, lane, records[:count], window, fresh, self.priorities.get(stream, 0), first)

    def _candidates(self, stream: str, now_ms: int) -> list[_Run]:
        """The due runs of ``stream``: its fresh lane's and its main cursor's, if any."""
        main_limits = self.controller.limits(stream, self.backlog(stream), now_ms)
        if self.lane(stream) is None and self.policy.fresh_share > 0 \
                and self.backlog(stream) > 2 * main_limits.max_readings:  # more than two full batches behind
            # Durable offsets only: they survive a crash, so the lane never
            # starts beyond what the log holds after recovery.
            self._open_lane(stream, self.source.durable_offset(stream))
        lane = self._lanes.get(stream)
        cursor = self.cursor(stream)
        if lane is None:
            return self._main_run(stream, cursor, main_limits, now_ms)
        runs = []
        # The lane is caught-up data: it batches for latency.
        fresh = self._cut(stream, lane.next, None, self.controller.limits(stream, 0, now_ms), now_ms,
                          lane=True, fresh=True)
        if fresh is not None:
            runs.append(fresh)
        main = self._cut(stream, cursor, lane.start, main_limits, now_ms, lane=False, fresh=False)
        if main is not None:
            runs.append(main)
        else:
            head = self.source.read(stream, cursor, 1)
            if head and head[0].offset >= lane.start:  # nothing held below the lane: the backlog is done
                self._merge_lane(stream, lane)
        return runs

    # -- sending --------------------------------------------------------------

    def _fresh_under_share(self) -> bool:
        now = self._mono_ms()
        decay = math.exp(-max(0.0, now - self._share_at) / (_SHARE_TAU_S * 1000.0))
        self._fresh_bytes *= decay
        self._all_bytes *= decay
        self._share_at = now
        return self._fresh_bytes <= self.policy.fresh_share * self._all_bytes

    def _pick(self, runs: list[_Run]) -> _Run:
        pool = runs
        if self.policy.fresh_share > 0 and any(r.fresh for r in runs) and self._fresh_under_share():
            pool = [r for r in runs if r.fresh]
        # Highest priority; among equals the stream served longest ago; within a
        # stream its backlog (older data) before its lane, unless fresh-only.
        return max(pool, key=lambda r: (r.priority, -self._served.get(r.stream, -1), not r.lane))

    def _main_run(self, stream: str, start: int, limits: Limits, now_ms: int) -> list[_Run]:
        """The due run of a stream without a fresh lane, from ``start``, if any."""
        run = self._cut(stream, start, None, limits, now_ms, lane=False, fresh=not limits.behind)
        return [run] if run is not None else []

    def _continuation(self, stream: str, start: int, now_ms: int) -> list[_Run]:
        """The due run of ``stream`` right after its runs already on the train, if any."""
        limits = self.controller.limits(stream, max(0, self.source.end_offset(stream) - start), now_ms)
        return self._main_run(stream, start, limits, now_ms)

    def forward_once(self, now_ms: int) -> ForwardResult:
        """Send the batches that are due now, in priority order, as one train.

        The due batches (at most ``max_batches``, about ``TRAIN_BYTES``) are
        picked one by one as if each had been acknowledged, then handed to the
        upstream together: a transport with ``send_many`` (Kafka) sends them
        in one round trip; any other gets them one at a time. Cursors move
        only for the batches acknowledged, in train order.

        Args:
            now_ms: the gateway's wall-clock time now, in ms (the time base
                of the readings' receive times).

        Returns:
            What was sent; ``failed`` if the upstream refused a batch (the
            cursor stays, and the next call sends it again); ``wait_ms`` if the
            bandwidth cap held a batch back.
        """
        start_ms = now_ms
        streams = [s for s in self.source.streams() if s != DEAD_LETTER_STREAM]
        sent = ForwardResult()
        pending: dict[str, list[_Run]] = {}
        # stream -> the offset after its runs already on the train, while a
        # further run of its main lane may follow them on the same train;
        # ``parked``: streams on the train that may not add another run to it.
        ahead: dict[str, int] = {}
        parked: set[str] = set()
        train: list[_Car] = []
        train_bytes = 0
        wait_ms = 0.0
        called = self.clock()
        while sent.batches + len(train) < self.max_batches:
            # Sends take time: the gateway clock moves on with them.
            now_ms = start_ms + int((self.clock() - called) * 1000.0)
            for stream in streams:
                self.controller.observe_end(stream, self.source.end_offset(stream), now_ms)
            for stream in streams:
                if stream in pending:
                    continue
                if stream in parked:
                    pending[stream] = []
                elif stream in ahead:
                    pending[stream] = self._continuation(stream, ahead[stream], now_ms)
                else:
                    pending[stream] = self._candidates(stream, now_ms)
            runs = [r for rs in pending.values() for r in rs]
            if not runs:
                break
            run = self._pick(runs)
            entries = [Entry(r.offset, _decode(run.stream, r)) for r in run.records]
            batch = encode_batch(self.gateway_id, run.stream, run.window, entries)
            if not self.bucket.try_take(len(batch), self._mono_ms()):
                wait_ms = self.bucket.wait_ms(len(batch), self._mono_ms())
                break
            train.append(_Car(run, entries, batch))
            train_bytes += len(batch)
            self._fresh_under_share()  # decay the counters to now, then count this batch
            self._all_bytes += len(batch)
            if run.fresh:
                self._fresh_bytes += len(batch)
            self._step += 1
            self._served[run.stream] = self._step
            del pending[run.stream]
            # Only a main lane without a fresh lane beside it continues on the
            # same train; lanes open, close and merge between trains.
            if not run.lane and self._lanes.get(run.stream) is None:
                ahead[run.stream] = entries[-1].offset + 1
            else:
                parked.add(run.stream)
            if train_bytes >= TRAIN_BYTES:
                sent = sent.plus(self._send_train(train, now_ms))
                if sent.failed:
                    self.store_cursors(force=False)
                    return sent
                train, train_bytes = [], 0
                pending = {s: rs for s, rs in pending.items() if s not in ahead and s not in parked}
                ahead, parked = {}, set()
        if train:
            sent = sent.plus(self._send_train(train, now_ms))
        self.store_cursors(force=False)
        if wait_ms and not sent.failed:
            sent = sent.plus(ForwardResult(wait_ms=wait_ms))
        return sent

    def _send_train(self, train: list[_Car], now_ms: int) -> ForwardResult:
        """Hand a train upstream and acknowledge what the upstream took, in order."""
        send_many = getattr(self.transport, "send_many", None)
        if send_many is None:
            done = ForwardResult()
            for car in train:
                started = self.clock()
                try:
                    self.transport.send(car.batch, decode_header(car.batch))
                except TransportError as exc:
                    log.warning("upstream refused a batch of stream %s: %s", car.run.stream, exc)
                    return done.plus(ForwardResult(failed=True))
                duration_ms = (self.clock() - started) * 1000.0
                self.controller.observe_send(len(car.batch), len(car.entries), duration_ms, now_ms + int(duration_ms))
                done = done.plus(self._arrived(car))
            return done
        started = self.clock()
        try:
            send_many([(car.batch, decode_header(car.batch)) for car in train])
            taken = len(train)
        except PartialSend as exc:
            log.warning("upstream took %d of a train of %d batches: %s", exc.acknowledged, len(train), exc)
            taken = exc.acknowledged
        except TransportError as exc:
            log.warning("upstream refused a train of %d batches: %s", len(train), exc)
            taken = 0
        duration_ms = (self.clock() - started) * 1000.0
        done = ForwardResult()
        if taken:
            # One round trip for the whole train: that is what the link did.
            self.controller.observe_send(sum(len(c.batch) for c in train[:taken]),
                                         sum(len(c.entries) for c in train[:taken]),
                                         duration_ms, now_ms + int(duration_ms))
        for car in train[:taken]:
            done = done.plus(self._arrived(car))
        if taken < len(train):
            done = done.plus(ForwardResult(failed=True))
        return done

    def _arrived(self, car: _Car) -> ForwardResult:
        self._acknowledged(car.run, car.entries[-1].offset + 1)
        self.on_sent(car.run.stream, len(car.entries), len(car.batch))
        return ForwardResult(1, len(car.entries), len(car.batch))

    def _acknowledged(self, run: _Run, next_offset: int) -> None:
        lane = self._lanes.get(run.stream)
        if run.lane and lane is not None:
            self.source.store_cursor(FRESH_CURSOR, run.stream, next_offset)
            lane.next = next_offset
            return
        self._store(run.stream, next_offset)
        if lane is not None and next_offset >= lane.start:
            self._merge_lane(run.stream, lane)


def _decode(stream: str, record: LogRecordLike) -> Reading:
    try:
        return decode_reading(record.payload)
    except InvalidReading as exc:
        # The log's CRC passed, so this is a bug or a foreign writer; stop
        # rather than skip a reading silently.
        raise RuntimeError(f"record {stream}@{record.offset} is not a reading: {exc}") from exc
