"""The gateway's writer: received messages in, log appends, acknowledgements out.

How this works (group commit): transports (MQTT, serial) put what they receive
on a bounded queue and return at once. One writer thread takes messages off
the queue, asks :class:`core.intake.Intake` what they are, appends
the readings (or the dead letter) to the log, and keeps the message's
acknowledgement pending together with the highest offset it needs. After each
drain of the queue it lets the log sync under its policy and releases every
acknowledgement whose records are now durable. So many messages share one
fsync, and no message is acknowledged before the log holds it.

Failure: if the log fails (an fsync error leaves it in its ERROR state, as it
must: after a failed fsync the page cache cannot be trusted), the writer stops
and sets :attr:`Gateway.failed`. Nothing unsynced was acknowledged, so the
broker still holds those messages; the service exits and systemd restarts it,
and recovery plus redelivery carry on from the last durable record.

Backpressure: when the log refuses appends (disk quota with policy ``block``),
the writer holds the message, retries, and stops taking new ones; the queue
fills, the transport's thread blocks on ``put``, and the broker stops sending
(the MQTT in-flight window is full). It resumes by itself when space returns.
Dead letters never wait like that: one the log refuses is counted
(``tidegate_dead_letters_dropped_total``) and its message acknowledged, so
garbage can never hold up readings.

Floods (docs/ingest.md, "Dead letters"): every rejected message is counted
by reason, but only a budget of them is stored one by one
(:class:`core.deadletter.DeadLetterBudget`); the rest are folded into a flood
summary per topic. A message folded into a summary is acknowledged only once
that summary is durable, like any other. Log lines about rejected input are
limited to one per interval (:class:`core.deadletter.RejectionLog`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from core.deadletter import (
    DEAD_LETTER_STREAM, DeadLetter, DeadLetterBudget, DeadLetterPolicy, RejectionLog, encode_dead_letter,
)
from core.intake import Accepted, Duplicate, Intake
from core.log import UNSYNCED, LogFull, RecordRejected, Unsynced
from core.reading import Reading, decode_record
from core.topics import Route
from edge.clocksync import ClockProbe
from edge.metrics import Metrics

__all__ = ["Message", "Gateway", "LogSink"]

log = logging.getLogger("tidegate.gateway")


class LogRecordLike(Protocol):
    offset: int
    payload: bytes


class LogSink(Protocol):
    """What the writer needs of the durable log."""

    def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int | Unsynced) -> int: ...
    def append_many(self, stream: str, records: Sequence[tuple[int, bytes]], now_ms: int | Unsynced) -> range: ...
    def maybe_sync(self, now_ms: int) -> bool: ...
    def durable_offset(self, stream: str) -> int: ...
    def streams(self) -> list[str]: ...
    def start_offset(self, stream: str) -> int: ...
    def end_offset(self, stream: str) -> int: ...
    def read(self, stream: str, offset: int, max_records: int = ...) -> Sequence[LogRecordLike]: ...


@dataclass(slots=True)
class Message:
    """One message from a transport, with the callback that acknowledges it.

    Not frozen: one is made per message on the transport's thread, and a
    frozen dataclass takes four times as long to make (1.1 against 0.3 µs).
    """

    source: str
    topic: str
    payload: bytes
    received_ms: int
    ack: Callable[[], None] = field(compare=False)


def _describe(metrics: Metrics) -> None:
    metrics.describe("tidegate_messages_received_total", "counter", "Messages received from transports (counted as the writer takes them)")
    metrics.describe("tidegate_readings_in_total", "counter", "Readings appended to the log, per stream")
    metrics.describe("tidegate_rejected_total", "counter", "Messages rejected (dead letters), per reason")
    metrics.describe("tidegate_dead_letters_summarised_total", "counter",
                     "Rejected messages over the dead-letter budget, kept in a flood summary instead of one by one, per reason")
    metrics.describe("tidegate_dead_letters_dropped_total", "counter",
                     "Dead letters (messages they stand for) the log refused to store (quota), per reason")
    metrics.describe("tidegate_acks_total", "counter", "Messages acknowledged after their records became durable")
    metrics.describe("tidegate_intake_blocked", "gauge", "1 while the log refuses new readings (quota)")
    metrics.describe("tidegate_duplicates_total", "counter", "Samples dropped as already seen (device, boot, seq)")
    metrics.describe("tidegate_readings_unsynced_total", "counter", "Readings timed by the gateway clock before it was synchronised")
    metrics.describe("tidegate_clock_synced", "gauge", "1 while the gateway clock is synchronised")
    metrics.describe("tidegate_clock_jump_ms", "gauge", "Size of the last wall-clock step seen, in ms")


# A run of messages appended in one call stops growing at this many records:
# runs that size already share the log's per-call costs, and a bigger one
# that had to roll a segment would go record by record.
_RUN_RECORDS = 4096


class _Inbox:
    """The writer's queue: any thread puts, the writer takes everything waiting at once.

    ``queue.Queue`` takes a lock and notifies a condition for every put, which
    is 1.6 µs on paho's network thread per message; here a put is a deque
    append, and the writer is woken only when it sleeps. It says so in
    ``_idle`` before it looks at the deque a last time, so a put either sees
    the flag (and wakes it) or is seen by that look. A put into a full inbox
    waits for the writer to take (the backpressure).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[Message] = deque()
        self._idle = False
        self._wake = threading.Event()
        self._space = threading.Event()

    def put(self, message: Message, stop: threading.Event) -> bool:
        """Queue a message, waiting while the inbox is full; False if ``stop`` was set while waiting."""
        items = self._items
        while len(items) >= self.size:
            if stop.is_set():
                return False
            self._space.clear()
            if len(items) >= self.size:
                self._space.wait(0.5)
        items.append(message)
        if self._idle:
            self._wake.set()
        return True

    def take(self, timeout: float) -> list[Message]:
        """Everything queued, oldest first; waits up to ``timeout`` s for something if empty (then maybe [])."""
        items = self._items
        if not items:
            self._idle = True
            if not items:
                self._wake.wait(timeout)
            self._idle = False
            self._wake.clear()  # a late wake-up left set only makes one later take return early
        taken = [items.popleft() for _ in range(len(items))]
        if taken:
            self._space.set()
        return taken

    def __len__(self) -> int:
        return len(self._items)


class Gateway:
    """Owns the writer thread between the transports and the log.

    Args:
        log: the durable log; must outlive the gateway.
        routes: topic routes to streams.
        metrics: where counts go.
        clock: wall-clock time in seconds (injected for tests).
        queue_size: bound of the intake queue; at least the MQTT receive maximum.
        intake: the intake decision with its dedup and device-time state
            (``Intake(routes)`` if None); owned by the writer thread.
        clock_probe: returns (wall ms, monotonic ms, synchronised) for device
            time; edge/clocksync.py's probe by default when ``clock`` is the
            real clock, none otherwise.
        dead_letters: the dead-letter budget, raw-bytes cap and log-line interval.
        monotonic: monotonic time in seconds, for the dead-letter budget and
            the log-line interval (injected for tests).
        gather_s: how long the writer waits after taking what was queued
            before it looks again, so that messages arriving one by one are
            taken in groups (see ``_loop``); 0 takes each as it comes.

    Attributes:
        ack_batch: a context manager the writer acknowledges each batch of
            durable messages inside (``MqttIntake.batched_acks``, which sends
            them as one packet); by default none.
    """

    def __init__(
        self,
        log_sink: LogSink,
        routes: tuple[Route, ...],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        queue_size: int = 4096,
        retry_s: float = 0.5,
        intake: Intake | None = None,
        clock_probe: Callable[[], tuple[int, int, bool]] | None = None,
        remember_records: int = 20_000,
        dead_letters: DeadLetterPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        gather_s: float = 0.002,
    ) -> None:
        self.log = log_sink
        self.gather_s = gather_s
        self.ack_batch: Callable[[], AbstractContextManager[object]] = nullcontext
        self.remember_records = remember_records
        self.remembered = 0
        self.routes = routes
        self.metrics = metrics
        self.clock = clock
        self.retry_s = retry_s
        self.intake = intake if intake is not None else Intake(routes)
        if clock_probe is None and clock is time.time:
            clock_probe = ClockProbe().sample
        self.clock_probe = clock_probe
        self._inbox = _Inbox(queue_size)
        self._pending: list[tuple[Message, dict[str, int]]] = []
        self.monotonic = monotonic
        self.dead_letter_policy = dead_letters if dead_letters is not None else DeadLetterPolicy()
        self.budget = DeadLetterBudget(self.dead_letter_policy, self._mono_ms())
        self._rejections = RejectionLog(self.dead_letter_policy.log_interval_ms)
        # Messages folded into a pending flood summary: acknowledged once it is durable.
        self._held: list[tuple[Message, dict[str, int]]] = []
        # Rejections counted in a plain dict and added to the metrics once per
        # drain of the queue: a labelled metrics update per garbage message
        # would cost a flood more than its decode attempt.
        self._rejections_uncounted: dict[tuple[str, str], int] = {}
        # Readings appended per stream, added to the metrics the same way.
        self._readings_uncounted: dict[str, int] = {}
        self._blocked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = threading.Event()
        self.failure: BaseException | None = None
        _describe(metrics)
        metrics.set("tidegate_intake_blocked", 0)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _mono_ms(self) -> float:
        return self.monotonic() * 1000.0

    def log_now(self) -> int | Unsynced:
        """The time the log judges late and early records by.

        Until the gateway's clock is synchronised it is no judge: a Pi without
        a real-time clock boots in 1970 or at its last shutdown, and would call
        every reading "early". The log then gets ``UNSYNCED`` and applies no
        time rule (docs/log_format.md).
        """
        if self.clock_probe is not None and not self.intake.clock.synced:
            return UNSYNCED
        return self.now_ms()

    def submit(self, message: Message) -> None:
        """Queue a message; blocks while the queue is full (that is the backpressure).

        The writer counts it as received when it takes it, a group at a time:
        a locked metrics update here would be one more per message on the
        transport's thread.
        """
        self._inbox.put(message, self._stop)

    def start(self) -> None:
        """Rebuild the dedup windows from the log's tail, then start the writer."""
        self.remembered = self._remember_tail()
        self._thread = threading.Thread(target=self._run, name="tidegate-writer", daemon=True)
        self._thread.start()

    def _remember_tail(self) -> int:
        """Feed the last ``remember_records`` readings of each stream to the intake's dedup windows.

        A message the log held before a crash but had not acknowledged comes
        back from the broker after the restart; with its sample's provenance
        (or its content) already remembered, it is dropped as a duplicate
        instead of being appended a second time under a new offset.
        """
        count = 0
        for stream in self.log.streams():
            if stream.startswith("_"):
                continue
            offset = max(self.log.start_offset(stream), self.log.end_offset(stream) - self.remember_records)
            while records := self.log.read(stream, offset, 1000):
                for record in records:
                    reading, provenance = decode_record(record.payload)
                    self.intake.remember(reading, provenance)
                count += len(records)
                offset = records[-1].offset + 1
        if count:
            log.info("dedup windows rebuilt from the last %d readings in the log", count)
        return count

    def stop(self) -> None:
        """Write and acknowledge what is queued, then stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.failure = exc
            self.failed.set()
            log.critical("log writer stopped: %s; unacknowledged messages stay with the broker", exc, exc_info=True)

    def _loop(self) -> None:
        while True:
            group = self._inbox.take(0.01 if self._pending else 0.1)
            if not group:
                if self._stop.is_set():
                    self._maybe_summarise(force=True)
                    self._count_rejections()
                    self._drain_pending(final=True)
                    return
                self._maybe_summarise()
                self._release_durable()
                continue
            self._observe_clock()
            self._count_received(group)
            self._write_group(group)
            self._maybe_summarise()
            self._release_durable()
            # Waking this thread and handing it the interpreter lock costs about
            # as much CPU as writing a one-reading message (bench/bench_intake.py):
            # a short nap after each group lets the next messages gather in the
            # queue, so under load the writer wakes once per group, not once per
            # message. An idle gateway pays one nap per burst; acknowledgements
            # wait for the group commit's sync (20 ms under ``interval``) anyway.
            if self.gather_s:
                time.sleep(self.gather_s)

    def _observe_clock(self) -> None:
        if self.clock_probe is None:
            return
        change = self.intake.observe_clock(*self.clock_probe())
        self.metrics.set("tidegate_clock_synced", int(change.synced))
        if change.jump_ms:
            self.metrics.set("tidegate_clock_jump_ms", change.jump_ms)
            log.warning("gateway clock stepped by %d ms; uptime mappings re-based (%d readings so far were timed "
                        "by an unsynchronised clock)", change.jump_ms, self.intake.clock.unsynced_readings)

    def _write_group(self, messages: list[Message]) -> None:
        """Classify a group of messages, then append them in order.

        Consecutive accepted messages of one stream are appended in one call
        (one lock, one pass of the log's checks); if the log refuses that run,
        nothing of it was written and each message goes on its own, so only
        the refused readings become dead letters and a full quota is filled
        message by message.
        """
        classify = self.intake.classify
        results = [classify(m.source, m.topic, m.payload, m.received_ms) for m in messages]
        index, count = 0, len(messages)
        while index < count:
            result = results[index]
            end = index + 1
            if result.__class__ is Accepted:
                stream = result.stream  # type: ignore[union-attr]
                records = len(result.records)  # type: ignore[union-attr]
                while (end < count and records < _RUN_RECORDS and results[end].__class__ is Accepted
                       and results[end].stream == stream):  # type: ignore[union-attr]
                    records += len(results[end].records)  # type: ignore[union-attr]
                    end += 1
            if end - index == 1 or not self._write_run(messages[index:end], results[index:end]):  # type: ignore[arg-type]
                # Alone, or in a run the log refused: each message of it on its own (not in runs again).
                for position in range(index, end):
                    self._write(messages[position], results[position])
            index = end

    def _write_run(self, messages: list[Message], results: list[Accepted]) -> bool:
        """Append accepted messages of one stream in one call; False if the log refused it (nothing written).

        A run the quota has no room for is refused whole, without waiting:
        message by message, the ones that fit are still written (and
        acknowledged) before intake waits for space.
        """
        stream = results[0].stream
        records = [record for result in results for record in result.records]
        try:
            last = self.log.append_many(stream, records, self.log_now())[-1]
        except (RecordRejected, LogFull):
            return False
        offset = last - len(records)
        for message, result in zip(messages, results):
            offset += len(result.records)
            self._settle(message, result, {stream: offset}, len(result.records))
        return True

    def _settle(self, message: Message, result: Accepted, needs: dict[str, int], appended: int,
                held: bool = False) -> None:
        """Count an appended message and queue its acknowledgement until ``needs`` is durable.

        ``held``: a refused reading of it waits in a flood summary, and so does the acknowledgement.
        """
        uncounted = self._readings_uncounted
        uncounted[result.stream] = uncounted.get(result.stream, 0) + appended
        if result.unsynced:
            self.metrics.inc("tidegate_readings_unsynced_total", result.unsynced)
        if result.duplicates:
            self.metrics.inc("tidegate_duplicates_total", result.duplicates, {"source": message.source})
            needs = self._covering_pending(needs)
        if held:
            self._hold(message, needs)
        else:
            self._pending.append((message, needs))

    def _write(self, message: Message, result: Accepted | Rejected | Duplicate) -> None:
        needs: dict[str, int] = {}
        if isinstance(result, Duplicate):
            # The first copy may still wait for its sync: acknowledge after it.
            self.metrics.inc("tidegate_duplicates_total", result.samples, {"source": message.source})
            self._pending.append((message, self._covering_pending(needs)))
            return
        if isinstance(result, Accepted):
            records = result.records
            held = False
            try:
                needs[result.stream] = self._append_many(result.stream, records)
                appended = len(records)
            except RecordRejected:
                # Some reading breaks the log's time rule and nothing was written:
                # go reading by reading, so only the refused ones become dead letters.
                appended, held = self._append_one_by_one(message, result.stream, result.readings, records, needs)
            self._settle(message, result, needs, appended, held)
            return
        elif not self._reject(result.letter, needs):
            self._hold(message, needs)
            return
        self._pending.append((message, needs))

    def _hold(self, message: Message, needs: dict[str, int]) -> None:
        """Keep a message until the flood summary it is in is written (at once if that is due now)."""
        self._held.append((message, needs))
        if self.budget.summary_due(self._mono_ms()):
            self._maybe_summarise()

    def _reject(self, letter: DeadLetter, needs: dict[str, int]) -> bool:
        """Count a rejected message and store its dead letter, or fold it into a flood summary.

        Returns:
            True if the letter was dealt with (stored, or refused by the log and
            counted); False if it waits in a flood summary, and so must its
            message's acknowledgement.
        """
        uncounted = self._rejections_uncounted
        key = ("tidegate_rejected_total", letter.reason)
        uncounted[key] = uncounted.get(key, 0) + 1
        now = self._mono_ms()
        line = self._rejections.note(letter, now)
        if line is not None:
            log.info("%s", line)
        if not self.budget.admit(letter, now):
            key = ("tidegate_dead_letters_summarised_total", letter.reason)
            uncounted[key] = uncounted.get(key, 0) + 1
            return False
        offset = self._append_dead_letter(letter)
        if offset is not None:
            needs[DEAD_LETTER_STREAM] = offset
        return True

    def _count_received(self, group: list[Message]) -> None:
        per_source: dict[str, int] = {}
        for message in group:
            per_source[message.source] = per_source.get(message.source, 0) + 1
        for source, n in per_source.items():
            self.metrics.inc("tidegate_messages_received_total", n, {"source": source})

    def _count_rejections(self) -> None:
        """Add the readings and rejections counted since the last call to the metrics (before their messages are acknowledged)."""
        if self._readings_uncounted:
            readings, self._readings_uncounted = self._readings_uncounted, {}
            for stream, n in readings.items():
                self.metrics.inc("tidegate_readings_in_total", n, {"stream": stream})
        if self._rejections_uncounted:
            uncounted, self._rejections_uncounted = self._rejections_uncounted, {}
            for (name, reason), n in uncounted.items():
                self.metrics.inc(name, n, {"reason": reason})

    def _append_dead_letter(self, letter: DeadLetter) -> int | None:
        """Append a dead letter; None if the log refuses it (counted, never waited for)."""
        try:
            return self.log.append(DEAD_LETTER_STREAM, letter.received_ms,
                                   encode_dead_letter(letter, self.dead_letter_policy.raw_cap_bytes), self.log_now())
        except (LogFull, RecordRejected):
            for reason, n in letter.rejected().items():
                self.metrics.inc("tidegate_dead_letters_dropped_total", n, {"reason": reason})
            return None

    def _maybe_summarise(self, force: bool = False) -> None:
        """Write the flood summaries that are due; move the messages they cover to the pending acknowledgements."""
        now = self._mono_ms()
        line = self._rejections.maybe_summary(now)
        if line is not None:
            log.info("%s", line)
        summaries = self.budget.maybe_summaries(now, force=force)
        if not summaries:
            return
        offsets = [offset for summary in summaries if (offset := self._append_dead_letter(summary)) is not None]
        held, self._held = self._held, []
        for message, needs in held:
            if offsets:
                needs[DEAD_LETTER_STREAM] = max(needs.get(DEAD_LETTER_STREAM, -1), *offsets)
            self._pending.append((message, needs))

    def _append_one_by_one(
        self, message: Message, stream: str, readings: tuple[Reading, ...], records: Sequence[tuple[int, bytes]],
        needs: dict[str, int],
    ) -> tuple[int, bool]:
        """Append each reading alone; a refused one becomes a dead letter.

        Returns:
            How many readings were appended, and whether a refused one went
            into a flood summary (then the message's acknowledgement waits for it).
        """
        appended = 0
        held = False
        for reading, (ts_ms, payload) in zip(readings, records):
            try:
                needs[stream] = self._append(stream, ts_ms, payload)
                appended += 1
            except RecordRejected as exc:
                # The log's late/early rule refused this reading; it is kept
                # as a dead letter (the whole raw message, naming the reading)
                # and the rest of the pack goes on. Raising here would stop
                # the writer, and the broker would redeliver the message
                # into the same stop after every restart.
                letter = DeadLetter(
                    message.source, message.topic, message.received_ms, exc.reason,
                    f"reading {reading.device}/{reading.metric} at {reading.ts_ms}: {exc}", message.payload,
                )
                held = not self._reject(letter, needs) or held
        return appended, held

    def _covering_pending(self, needs: dict[str, int]) -> dict[str, int]:
        """``needs`` raised to cover every pending message's records."""
        for _, other in self._pending:
            for stream, offset in other.items():
                if needs.get(stream, -1) < offset:
                    needs[stream] = offset
        return needs

    def _append(self, stream: str, ts_ms: int, payload: bytes) -> int:
        return self._retrying_while_full(lambda: self.log.append(stream, ts_ms, payload, self.log_now()))

    def _append_many(self, stream: str, records: Sequence[tuple[int, bytes]]) -> int:
        """Append a message's readings in one call (one lock, one pass); return the last offset."""
        return self._retrying_while_full(lambda: self.log.append_many(stream, records, self.log_now())[-1])

    def _retrying_while_full(self, append: Callable[[], int]) -> int:
        while True:
            try:
                offset = append()
            except LogFull as exc:
                self._blocked = True
                self.metrics.set("tidegate_intake_blocked", 1)
                log.warning("log refuses new readings, intake paused: %s", exc)
                self._release_durable()  # what is already written may still be acknowledged
                if self._stop.wait(self.retry_s):
                    raise
                continue
            if self._blocked:
                self._blocked = False
                self.metrics.set("tidegate_intake_blocked", 0)
            return offset

    def _release_durable(self) -> None:
        self._count_rejections()  # the metrics count a rejected message before it is acknowledged
        if not self._pending:
            return
        self.log.maybe_sync(int(time.monotonic() * 1000))  # group commit runs on the monotonic clock: wall-clock steps must not stall it
        durable: dict[str, int] = {}
        still_pending = []
        releasable = []
        for message, needs in self._pending:
            for stream, offset in needs.items():
                if stream not in durable:
                    durable[stream] = self.log.durable_offset(stream)
                if offset >= durable[stream]:
                    still_pending.append((message, needs))
                    break
            else:
                releasable.append(message)
        self._pending = still_pending
        if releasable:
            with self.ack_batch():
                for message in releasable:
                    message.ack()
            self.metrics.inc("tidegate_acks_total", len(releasable))

    def _drain_pending(self, final: bool) -> None:
        sync = getattr(self.log, "sync", None)
        if sync is not None:
            sync()
        self._release_durable()
