"""The forwarder: durable log in, acknowledged batches upstream, cursor advanced.

How this works: for each stream, the forwarder keeps a cursor, the offset of
the first record not yet acknowledged upstream, stored in the log's cursor
store under the name ``bridge``. It reads records from the cursor, cuts them
into runs of one time window, asks the :class:`~core.batching.BatchPolicy`
whether the first run should go now, encodes it (docs/batch_format.md) and
sends it. Only when the transport returns (the upstream holds the batch) does
the cursor move past it, and the cursor is stored atomically. A crash anywhere
in between means the same batch, with the same offsets, is sent again; the
central side drops what it has already seen by reading id.

Dead letters (stream ``_deadletter``) stay on the gateway; ``tidegate tail
--dead-letters`` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.batch import Entry, decode_header, encode_batch
from core.batching import BatchPolicy
from core.deadletter import DEAD_LETTER_STREAM
from core.errors import InvalidReading
from core.reading import decode_reading
from core.timewindow import window_of
from bridge.errors import TransportError
from bridge.transports import Transport

__all__ = ["LogSource", "Forwarder", "ForwardResult", "CURSOR_NAME"]

log = logging.getLogger("tidegate.bridge")

CURSOR_NAME = "bridge"


class LogRecordLike(Protocol):
    offset: int
    ts_ms: int
    payload: bytes


class LogSource(Protocol):
    """What the forwarder needs of the durable log (``core.log.Log`` provides it)."""

    def streams(self) -> list[str]: ...
    def read(self, stream: str, offset: int, max_records: int = ...) -> Sequence[LogRecordLike]: ...
    def end_offset(self, stream: str) -> int: ...
    def load_cursor(self, name: str, stream: str) -> int: ...
    def store_cursor(self, name: str, stream: str, offset: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ForwardResult:
    batches: int = 0
    readings: int = 0
    bytes: int = 0
    failed: bool = False


class Forwarder:
    """Moves a gateway's streams upstream, one acknowledged batch at a time.

    Args:
        source: the durable log; it must outlive the forwarder.
        transport: the upstream; owned by the caller.
        gateway_id: this gateway's id, part of every reading's id.
        window_ms: the log's time window length.
        policy: when to close a batch.
        on_sent: called after each acknowledged batch with (stream, readings, bytes).
    """

    def __init__(
        self,
        source: LogSource,
        transport: Transport,
        gateway_id: str,
        window_ms: int,
        policy: BatchPolicy = BatchPolicy(),
        on_sent: Callable[[str, int, int], None] = lambda stream, readings, size: None,
    ) -> None:
        self.source = source
        self.transport = transport
        self.gateway_id = gateway_id
        self.window_ms = window_ms
        self.policy = policy
        self.on_sent = on_sent
        self._cursors: dict[str, int] = {}

    def cursor(self, stream: str) -> int:
        if stream not in self._cursors:
            self._cursors[stream] = self.source.load_cursor(CURSOR_NAME, stream)
        return self._cursors[stream]

    def backlog(self, stream: str) -> int:
        """Readings of ``stream`` in the log not yet acknowledged upstream."""
        return max(0, self.source.end_offset(stream) - self.cursor(stream))

    def forward_once(self, now_ms: int) -> ForwardResult:
        """Send every batch that is due now, stream by stream.

        Returns:
            What was sent; ``failed`` if the upstream refused a batch (the
            cursor stays, and the next call sends it again).
        """
        batches = readings = size = 0
        for stream in self.source.streams():
            if stream == DEAD_LETTER_STREAM:
                continue
            while True:
                try:
                    sent = self._maybe_send_one(stream, now_ms)
                except TransportError as exc:
                    log.warning("upstream refused a batch of stream %s: %s", stream, exc)
                    return ForwardResult(batches, readings, size, failed=True)
                if sent is None:
                    break
                batches += 1
                readings += sent[0]
                size += sent[1]
        return ForwardResult(batches, readings, size)

    def _maybe_send_one(self, stream: str, now_ms: int) -> tuple[int, int] | None:
        cursor = self.cursor(stream)
        records = self.source.read(stream, cursor, self.policy.max_readings + 1)
        if not records:
            return None
        window = window_of(records[0].ts_ms, self.window_ms)
        entries: list[Entry] = []
        window_ended = False
        for record in records[: self.policy.max_readings]:
            if not window.contains(record.ts_ms):
                window_ended = True
                break
            try:
                entries.append(Entry(record.offset, decode_reading(record.payload)))
            except InvalidReading as exc:
                # The log's CRC passed, so this is a bug or a foreign writer;
                # stop rather than skip a reading silently.
                raise RuntimeError(f"record {stream}@{record.offset} is not a reading: {exc}") from exc
        else:
            window_ended = len(records) > self.policy.max_readings and not window.contains(
                records[self.policy.max_readings].ts_ms
            )
        if not self.policy.should_close(len(entries), entries[0].reading.received_ms, window_ended, now_ms):
            return None
        batch = encode_batch(self.gateway_id, stream, window, entries)
        self.transport.send(batch, decode_header(batch))
        next_cursor = entries[-1].offset + 1
        self.source.store_cursor(CURSOR_NAME, stream, next_cursor)
        self._cursors[stream] = next_cursor
        self.on_sent(stream, len(entries), len(batch))
        return len(entries), len(batch)
