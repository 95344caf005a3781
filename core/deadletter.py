"""Dead letters: input the gateway could not accept, kept with the reason.

Nothing a sensor sends disappears silently (guarantee 7). A message that does
not decode, or decodes to invalid readings, becomes a record of the
dead-letter stream :data:`DEAD_LETTER_STREAM` of the log. Its record payload is
the msgpack array ``[source, topic, received_ms, reason, message, raw,
raw_len, raw_sha256]`` with, for a flood summary only, a ninth element
``counts``:

* ``source``: ``"mqtt"`` or ``"serial"``;
* ``topic``: the MQTT topic, or the serial port's stable path;
* ``received_ms``: the gateway's receive time;
* ``reason``: the short reason token that is also the metric label
  (``flood`` for a summary);
* ``message``: the human-readable error, naming the field;
* ``raw``: the first :data:`RAW_CAP_BYTES` bytes of the payload as received;
* ``raw_len``: the payload's whole length;
* ``raw_sha256``: the SHA-256 of the whole payload (32 bytes), so a letter can
  be matched against a copy of the payload kept elsewhere;
* ``counts``: ``{reason: messages}`` that the summary stands for.

Records written before the cap existed have six elements and the whole
payload; :func:`decode_dead_letter` reads both.

Theory of operation (flood fairness, docs/ingest.md "Dead letters"): a
broken or hostile publisher can send garbage far faster than sensors send
readings. Every rejected message is still counted by reason, but only a
budget of them is stored one by one: a token bucket per (source, topic) and
one for all topics together (:class:`DeadLetterBudget`). Letters beyond the
budget are folded into a *flood summary* per topic, a dead letter with reason
``flood`` whose ``counts`` say how many messages of which reasons it stands
for, written at least every ``summary_interval_ms``. So a flood costs the
writer a decode attempt and a counter per message, not a log record, and the
dead-letter stream grows at a bounded rate whatever the flood.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from core import msgpack_codec
from core.errors import InvalidReading, LocalError
from core.log import LogConfig
from core.ratelimit import TokenBucket

__all__ = [
    "DEAD_LETTER_STREAM", "DEAD_LETTER_PRIORITY", "RAW_CAP_BYTES", "FLOOD", "DeadLetter", "DeadLetterPolicy",
    "DeadLetterBudget", "RejectionLog", "encode_dead_letter", "decode_dead_letter", "with_dead_letter_quota",
]

DEAD_LETTER_STREAM = "_deadletter"

#: Bytes of a rejected payload kept in its dead letter; the rest is described by length and SHA-256.
RAW_CAP_BYTES = 512

#: The log priority of the dead-letter stream: the lowest there is, so its
#: windows are the first a quota drops to make room for readings.
DEAD_LETTER_PRIORITY = -(2**31)

#: The reason of a flood summary.
FLOOD = "flood"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected message (or, with reason ``flood``, a summary of many).

    Attributes:
        raw: the payload; whole when the intake makes the letter, its first
            :data:`RAW_CAP_BYTES` bytes when decoded from the log.
        raw_len: the whole payload's length when ``raw`` is a prefix, else None.
        raw_sha256: the whole payload's SHA-256 when decoded, else None (computed on encode).
        counts: for a flood summary, ``((reason, messages), ...)``; empty otherwise.
    """

    source: str
    topic: str
    received_ms: int
    reason: str
    message: str
    raw: bytes
    raw_len: int | None = None
    raw_sha256: bytes | None = field(default=None, compare=False)
    counts: tuple[tuple[str, int], ...] = ()

    @property
    def original_length(self) -> int:
        """The length of the payload as received (``raw`` may be only its start)."""
        return len(self.raw) if self.raw_len is None else self.raw_len

    @property
    def sha256(self) -> bytes:
        return self.raw_sha256 if self.raw_sha256 is not None else hashlib.sha256(self.raw).digest()

    def rejected(self) -> dict[str, int]:
        """The rejected messages this record stands for, by reason: itself, or a summary's counts."""
        return dict(self.counts) if self.reason == FLOOD else {self.reason: 1}


def encode_dead_letter(letter: DeadLetter, raw_cap: int = RAW_CAP_BYTES) -> bytes:
    """The record payload: the letter with its raw bytes cut to ``raw_cap``."""
    fields: list[object] = [
        letter.source, letter.topic, letter.received_ms, letter.reason, letter.message,
        letter.raw[:raw_cap], letter.original_length, letter.sha256,
    ]
    if letter.reason == FLOOD:
        fields.append(dict(letter.counts))
    return msgpack_codec.packb(fields)


def decode_dead_letter(payload: bytes) -> DeadLetter:
    """Decode a dead-letter record (the six-element form of older logs too).

    Raises:
        InvalidReading: the record is not a dead letter.
    """
    try:
        fields = msgpack_codec.unpackb(payload)
    except msgpack_codec.MsgpackError as exc:
        raise InvalidReading(f"dead-letter record is not msgpack: {exc}", reason="bad_record") from exc
    if (
        not isinstance(fields, list)
        or len(fields) not in (6, 8, 9)
        or not all(isinstance(f, str) for f in (fields[0], fields[1], fields[3], fields[4]))
        or type(fields[2]) is not int
        or not isinstance(fields[5], bytes)
    ):
        raise InvalidReading("dead-letter record must be [str, str, int, str, str, bytes, ...]", reason="bad_record")
    if len(fields) == 6:
        return DeadLetter(*fields)
    raw_len, digest = fields[6], fields[7]
    if type(raw_len) is not int or raw_len < len(fields[5]) or not isinstance(digest, bytes) or len(digest) != 32:
        raise InvalidReading("dead-letter record has a bad raw_len or raw_sha256", reason="bad_record")
    counts: tuple[tuple[str, int], ...] = ()
    if len(fields) == 9:
        table = fields[8]
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and type(v) is int and v > 0 for k, v in table.items()
        ):
            raise InvalidReading("dead-letter summary counts must map reasons to positive integers", reason="bad_record")
        counts = tuple(sorted(table.items()))
    whole = raw_len == len(fields[5])
    return DeadLetter(*fields[:6], raw_len=None if whole else raw_len, raw_sha256=digest, counts=counts)


def with_dead_letter_quota(config: LogConfig) -> LogConfig:
    """``config`` with the dead-letter stream at policy ``drop_oldest`` and the lowest priority.

    So when the quota is reached, dead letters are dropped (oldest window
    first) before any reading waits, and a flood of garbage cannot fill the
    log and then block good readings. A setting the configuration already
    names for ``_deadletter`` is kept.
    """
    policies = dict(config.quota_policies)
    priorities = dict(config.priorities)
    policies.setdefault(DEAD_LETTER_STREAM, "drop_oldest")
    priorities.setdefault(DEAD_LETTER_STREAM, DEAD_LETTER_PRIORITY)
    if policies == dict(config.quota_policies) and priorities == dict(config.priorities):
        return config
    return dataclasses.replace(config, quota_policies=policies, priorities=priorities)


@dataclass(frozen=True, slots=True)
class DeadLetterPolicy:
    """How many dead letters are stored one by one, and how the rest are summarised.

    Attributes:
        raw_cap_bytes: payload bytes kept per letter.
        per_topic_rate, per_topic_burst: letters per second (and the burst)
            stored one by one for one (source, topic).
        total_rate, total_burst: the same for all topics together (a flood
            spread over many topics).
        summary_interval_ms: a flood summary covers at most this long.
        summary_max_letters, summary_max_bytes: a summary is written early
            once it stands for this many letters or payload bytes; the
            messages it covers are acknowledged only when it is durable, so
            this bounds how many of them wait (keep it well below the MQTT
            receive maximum).
        max_topics: token buckets kept, least recently used dropped.
        max_summary_topics: summary records per flush; further topics are
            summed into one record with topic ``*``.
        log_interval_ms: at most one log line about rejected input per interval.
    """

    raw_cap_bytes: int = RAW_CAP_BYTES
    per_topic_rate: float = 2.0
    per_topic_burst: int = 20
    total_rate: float = 10.0
    total_burst: int = 100
    summary_interval_ms: int = 10_000
    summary_max_letters: int = 200
    summary_max_bytes: int = 1024 * 1024
    max_topics: int = 1024
    max_summary_topics: int = 16
    log_interval_ms: int = 60_000

    def __post_init__(self) -> None:
        for name in ("raw_cap_bytes", "per_topic_burst", "total_burst", "summary_interval_ms", "summary_max_letters",
                     "summary_max_bytes", "max_topics", "max_summary_topics", "log_interval_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalError(f"DeadLetterPolicy.{name} = {value!r}: must be an integer >= 1")
        for name in ("per_topic_rate", "total_rate"):
            if not getattr(self, name) > 0:
                raise LocalError(f"DeadLetterPolicy.{name} = {getattr(self, name)!r}: must be > 0 letters/s")


@dataclass(slots=True)
class _Tally:
    """What one flood summary will stand for."""

    source: str
    topic: str
    counts: dict[str, int] = field(default_factory=dict)
    first_ms: int = 0
    last_ms: int = 0
    last_raw: bytes = b""
    topics: int = 1

    def add(self, reason: str, n: int, received_ms: int, raw: bytes) -> None:
        if not self.counts:
            self.first_ms = received_ms
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.first_ms = min(self.first_ms, received_ms)
        self.last_ms = max(self.last_ms, received_ms)
        self.last_raw = raw

    def letter(self, raw_cap: int) -> DeadLetter:
        total = sum(self.counts.values())
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        where = f" on {self.topics} topics" if self.topics > 1 else ""
        message = (f"{total} rejected messages{where} over the dead-letter budget, counted but not stored one by one"
                   f" ({by_reason}), received {self.first_ms}..{self.last_ms}; raw is the last one's")
        return DeadLetter(self.source, self.topic, self.last_ms, FLOOD, message, self.last_raw[:raw_cap],
                          raw_len=len(self.last_raw), raw_sha256=hashlib.sha256(self.last_raw).digest(),
                          counts=tuple(sorted(self.counts.items())))


class DeadLetterBudget:
    """Decides which dead letters are stored one by one, and summarises the rest.

    Pure: the caller passes its monotonic clock in (``now_ms``); nothing here
    reads one. Not thread-safe: the gateway's writer thread is the one caller.

    Args:
        policy: rates, bursts and summary bounds.
        now_ms: the caller's clock at creation; every bucket starts full.
    """

    def __init__(self, policy: DeadLetterPolicy | None = None, now_ms: float = 0.0) -> None:
        self.policy = policy if policy is not None else DeadLetterPolicy()
        self._total = TokenBucket(self.policy.total_rate, self.policy.total_burst, now_ms)
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._opened_ms: float | None = None
        self.pending_letters = 0
        self.pending_bytes = 0

    def admit(self, letter: DeadLetter, now_ms: float) -> bool:
        """Whether to store ``letter`` itself.

        Returns:
            True: store it (its tokens are taken). False: it is counted into
            the pending flood summary of its topic instead, to be written by
            :meth:`maybe_summaries`.
        """
        key = (letter.source, letter.topic)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.policy.per_topic_rate, self.policy.per_topic_burst, now_ms)
            if len(self._buckets) > self.policy.max_topics:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        # Both must allow it; ask the topic's bucket first, so a flooding topic
        # does not spend the tokens that other topics' letters need.
        if bucket.level(now_ms) >= 1 and self._total.try_take(1, now_ms):
            bucket.try_take(1, now_ms)
            return True
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(letter.source, letter.topic)
        tally.add(letter.reason, 1, letter.received_ms, letter.raw)
        if self._opened_ms is None:
            self._opened_ms = now_ms
        self.pending_letters += 1
        self.pending_bytes += len(letter.raw)
        return False

    def summary_due(self, now_ms: float) -> bool:
        """A summary is pending and its interval is over, or it stands for enough letters or bytes."""
        if self._opened_ms is None:
            return False
        p = self.policy
        return (now_ms - self._opened_ms >= p.summary_interval_ms or self.pending_letters >= p.summary_max_letters
                or self.pending_bytes >= p.summary_max_bytes)

    def maybe_summaries(self, now_ms: float, force: bool = False) -> list[DeadLetter]:
        """The flood summaries to write now (empty if none is due), one per topic.

        Args:
            force: take what is pending even if it is not due (at shutdown).

        The busiest ``max_summary_topics`` topics get a record each; the rest
        are summed into one record with topic ``*``.
        """
        if self._opened_ms is None or not (force or self.summary_due(now_ms)):
            return []
        tallies = sorted(self._tallies.values(), key=lambda t: -sum(t.counts.values()))
        keep, rest = tallies[: self.policy.max_summary_topics], tallies[self.policy.max_summary_topics:]
        if rest:
            other = _Tally(rest[0].source if len({t.source for t in rest}) == 1 else "*", "*", topics=len(rest))
            for tally in sorted(rest, key=lambda t: t.last_ms):
                for reason, n in tally.counts.items():
                    other.add(reason, n, tally.first_ms, tally.last_raw)
                other.last_ms = max(other.last_ms, tally.last_ms)
            keep.append(other)
        self._tallies.clear()
        self._opened_ms = None
        self.pending_letters = self.pending_bytes = 0
        return [tally.letter(self.policy.raw_cap_bytes) for tally in keep]


class RejectionLog:
    """At most one log line about rejected input per interval.

    The first rejection after a quiet interval is told in full (topic and
    error); later ones are counted by reason and told as one summary line once
    the interval has passed. Pure: the caller passes its monotonic clock in and
    logs the lines it gets back.

    Args:
        interval_ms: the shortest time between two lines.
    """

    def __init__(self, interval_ms: int = 60_000) -> None:
        self.interval_ms = interval_ms
        self._last_line_ms: float | None = None
        self._counts: dict[str, int] = {}

    def _quiet(self, now_ms: float) -> bool:
        return self._last_line_ms is None or now_ms - self._last_line_ms >= self.interval_ms

    def note(self, letter: DeadLetter, now_ms: float) -> str | None:
        """Count a rejection; return the line to log now, if any."""
        if self._quiet(now_ms) and not self._counts:
            self._last_line_ms = now_ms
            return f"rejected {letter.source} message on {letter.topic} ({letter.reason}): {letter.message}"
        self._counts[letter.reason] = self._counts.get(letter.reason, 0) + 1
        return self.maybe_summary(now_ms)

    def maybe_summary(self, now_ms: float) -> str | None:
        """The summary line of what was counted, once the interval has passed; else None."""
        if not self._counts or not self._quiet(now_ms):
            return None
        since = self._last_line_ms
        total = sum(self._counts.values())
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self._counts.items(), key=lambda kv: -kv[1]))
        self._counts.clear()
        self._last_line_ms = now_ms
        span = f" in the last {(now_ms - since) / 1000:.0f} s" if since is not None else ""
        return f"rejected {total} more messages{span} ({by_reason}); see tidegate tail --dead-letters"
