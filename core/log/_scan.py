"""Reading frames back, with LevelDB's rules for damage.

Theory of operation: a segment is read front to back. A frame is *good* when
its magic is right, its length is at most MAX_FRAME_BODY and fits before the
end, and its CRC matches. At a bad frame the scanner looks for the next good
frame, searching for the magic (``bytes.find``, so in C) and fully checking
every candidate. If it finds one, the bytes skipped are *mid-file damage*: they
are reported (position, bytes dropped, reason) and reading goes on. If it finds
none, the rest of the segment is its *tail*: a torn write or garbage after the
last good frame, which only a crash of the writer can leave and which recovery
truncates. Nothing here raises on bad bytes; the caller decides what a tail
means (truncate it when recovering, stop there when reading).

Why check every candidate's CRC instead of trusting the magic: payloads are
arbitrary bytes, and a magic inside one must not make us read half a record as
data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import google_crc32c

from core.log import format as fmt

__all__ = ["Damage", "Reporter", "FrameScanner", "CHUNK_BYTES"]

CHUNK_BYTES = 256 * 1024

_OK = "ok"
_TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class Damage:
    """A report of bytes the log could not use.

    Attributes:
        path: the file, relative to the data directory.
        position: byte position where the bad bytes start.
        dropped_bytes: how many bytes were skipped or truncated.
        reason: ``bad_magic``, ``bad_length``, ``bad_crc``, ``truncated`` (a frame cut short),
            ``bad_batch``, ``unknown_type``, ``offset_order``, ``bad_cursor``, ``bad_state``,
            ``stray_file``.
        tail: True when the bytes run to the end of the file (a torn tail or appended garbage).
        action: what was done: ``skipped``, ``truncated``, ``ignored``, ``rebuilt``, ``would_truncate``.
    """

    path: str
    position: int
    dropped_bytes: int
    reason: str
    tail: bool = False
    action: str = "skipped"


Reporter = Callable[[Damage], None]


class FrameScanner:
    """Iterate the good frames of one file between ``start`` and ``end``.

    Args:
        read: ``read(position, size) -> bytes``, e.g. a bound ``FileSystem.read``.
        path: used in reports only.
        start: position of the first frame (a frame boundary, e.g. from an index).
        end: stop here (the file size, or how much of it is durable).
        on_damage: called for each damaged stretch before the tail.

    After iteration, ``good_end`` is the end of the last good frame (or
    ``start``) and ``tail`` is a :class:`Damage` for the bytes after it, or None.
    """

    def __init__(self, read: Callable[[int, int], bytes], path: str, start: int, end: int,
                 on_damage: Reporter | None = None) -> None:
        self._read = read
        self.path = path
        self.start = start
        self.end = end
        self._on_damage = on_damage
        self._buf = b""
        self._at = 0
        self.good_end = start
        self.tail: Damage | None = None
        self.damaged_bytes = 0

    def _get(self, position: int, size: int) -> bytes:
        size = min(size, self.end - position)
        if size <= 0:
            return b""
        offset = position - self._at
        if 0 <= offset and offset + size <= len(self._buf):
            return self._buf[offset:offset + size]
        want = min(max(size, CHUNK_BYTES), self.end - position)
        self._buf = self._read(position, want)
        self._at = position
        return self._buf[:size]

    def _frame_at(self, position: int) -> tuple[str, int, bytes]:
        """Return (status, frame type, body); status is "ok" or a damage reason."""
        head = self._get(position, fmt.FRAME_HEADER_SIZE)
        if len(head) < fmt.FRAME_HEADER_SIZE:
            return (_TRUNCATED if fmt.FRAME_MAGIC.startswith(head[:4]) else "bad_magic"), 0, b""
        magic, masked, length, frame_type = fmt.FRAME_HEADER.unpack(head)
        if magic != fmt.FRAME_MAGIC:
            return "bad_magic", 0, b""
        if length > fmt.MAX_FRAME_BODY:
            return "bad_length", 0, b""
        body = self._get(position + fmt.FRAME_HEADER_SIZE, length)
        if len(body) < length:
            return _TRUNCATED, 0, b""
        crc = google_crc32c.extend(google_crc32c.value(head[8:]), body)
        if crc != fmt.unmask_crc(masked):
            return "bad_crc", 0, b""
        return _OK, frame_type, body

    def _resync(self, position: int) -> int | None:
        """Return the position of the next good frame at or after ``position``, or None."""
        magic = fmt.FRAME_MAGIC
        while position < self.end:
            chunk = self._get(position, CHUNK_BYTES)
            found = chunk.find(magic)
            if found < 0:
                if len(chunk) < len(magic):
                    return None
                position += len(chunk) - len(magic) + 1
                continue
            candidate = position + found
            if self._frame_at(candidate)[0] == _OK:
                return candidate
            position = candidate + 1
        return None

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(position, frame type, body)`` for every good frame."""
        position = self.start
        while position < self.end:
            status, frame_type, body = self._frame_at(position)
            if status == _OK:
                next_position = position + fmt.FRAME_HEADER_SIZE + len(body)
                self.good_end = next_position
                yield position, frame_type, body
                position = next_position
                continue
            good = self._resync(position + 1)
            if good is None:
                self.tail = Damage(self.path, position, self.end - position, status, tail=True)
                return
            self.report(Damage(self.path, position, good - position, status))
            position = good

    def report(self, damage: Damage) -> None:
        self.damaged_bytes += damage.dropped_bytes
        if self._on_damage is not None:
            self._on_damage(damage)
