"""The serial stream decoder: bytes from a UART in, frames and lines out.

Theory of operation (h11-style, no I/O): the shell feeds whatever the port
returned to :meth:`FrameDecoder.receive_data` and then calls
:meth:`FrameDecoder.next_event` until it returns :data:`NEED_DATA`. Events are
:class:`Frame` (a COBS frame whose CRC matched, docs/serial_format.md),
:class:`Line` (a newline-terminated JSON text), or :class:`FrameError` (bytes
that were neither; kept whole, up to a bound, for the dead-letter stream).
Garbage never raises: the decoder reports it and resynchronises.

The stream is split into *chunks* by its first byte:

* a chunk starting with 0x01 is a frame (the frame content starts with the
  0x00 marker, which COBS writes as 0x01) and ends only at the next 0x00;
* any other chunk is text and ends at ``\\n`` (or at a 0x00, which makes it
  a ``not_a_frame`` error: a frame whose first byte was lost, or noise);
* 0x00 bytes and blank lines between chunks are skipped, so a sender may
  send 0x00 before a frame to end whatever noise the line picked up.

A text chunk whose first non-blank byte is ``{`` or ``[`` is a :class:`Line`
(JSON is checked later, by the codecs); any other text (a MicroPython banner,
a debug print) is a ``text_line`` error, so it is counted and kept, not lost
silently. A chunk longer than its bound is reported once as ``too_long`` with
its first bytes, and the rest of it is skipped up to its terminator: a lost
delimiter costs one frame, never the stream.

Why the CRC is checked here and not by the codecs: a UART flips bits, and a
flipped bit in a msgpack float still decodes. Only the CRC tells a damaged
reading from a good one.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.serial_frame import MAX_ENCODED, MAX_PAYLOAD, cobs_decode, crc16

__all__ = [
    "NEED_DATA",
    "Frame",
    "Line",
    "FrameError",
    "FrameDecoder",
    "MAX_LINE",
]

MAX_LINE = 16_384  # longest JSON line, in bytes, newline excluded
_FRAME_START = 0x01
_TEXT_JSON_START = (ord("{"), ord("["))
_BLANK = b" \t\r"


class _NeedData:
    """Sentinel: the decoder needs more bytes before it can return another event."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class Frame:
    """A COBS frame whose CRC matched; ``payload`` is the msgpack reading bytes."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Line:
    """A newline-terminated text line that starts like JSON (newline and ``\\r`` removed)."""

    text: bytes


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that are not a good frame or line.

    Attributes:
        reason: ``bad_cobs``, ``bad_crc``, ``too_short``, ``too_long``,
            ``not_a_frame``, ``text_line`` or ``truncated``.
        message: a sentence for humans.
        raw: the bytes as received, delimiter excluded (for ``too_long`` only
            the first bytes, up to the bound).
    """

    reason: str
    message: str
    raw: bytes


Event = Frame | Line | FrameError


class FrameDecoder:
    """Splits a serial byte stream into frames, JSON lines and errors.

    Args:
        max_frame: longest frame on the wire, delimiter excluded.
        max_line: longest text line, newline excluded.

    The decoder owns its buffer; it holds at most one chunk plus whatever the
    last :meth:`receive_data` added.
    """

    def __init__(self, max_frame: int = MAX_ENCODED, max_line: int = MAX_LINE) -> None:
        self.max_frame = max_frame
        self.max_line = max_line
        self._buffer = bytearray()
        self._eof = False
        # While skipping the rest of an oversized chunk: its mode ("frame" or
        # "text"), its first bytes, and how many bytes it had so far.
        self._skip_mode: str | None = None
        self._skip_head = b""
        self._skip_size = 0

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the port.

        An empty ``data`` means the port went away (unplug, close): a partial
        chunk is then reported as ``truncated`` by :meth:`next_event`, and the
        decoder starts afresh with the next bytes, as after a replug.
        """
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next frame, line or error; :data:`NEED_DATA` when the buffer holds no complete chunk.

        Never raises on bad input.
        """
        buffer = self._buffer
        while True:
            if self._skip_mode is not None:
                event = self._continue_skip()
                if event is not None:
                    return event
                if self._skip_mode is not None:
                    return self._need_data()
            if not buffer:
                return self._need_data()
            first = buffer[0]
            if first == 0:
                del buffer[0]
                continue
            if first == _FRAME_START:
                end = buffer.find(0)
                if end < 0:
                    if len(buffer) > self.max_frame:
                        self._start_skip("frame")
                        continue
                    return self._need_data()
                raw = bytes(buffer[:end])
                del buffer[: end + 1]
                if end > self.max_frame:
                    return FrameError("too_long", f"frame of {end} bytes exceeds {self.max_frame}", raw[: self.max_frame])
                return _decode_frame(raw)
            end = _find_text_end(buffer)
            if end < 0:
                if len(buffer) > self.max_line:
                    self._start_skip("text")
                    continue
                return self._need_data()
            terminator = buffer[end]
            raw = bytes(buffer[:end])
            del buffer[: end + 1]
            if terminator == 0:
                return FrameError("not_a_frame", f"{len(raw)} bytes before a 0x00 do not start a frame (0x01)", raw)
            text = raw.strip(_BLANK)
            if not text:
                continue
            if len(raw) > self.max_line:
                return FrameError("too_long", f"line of {len(raw)} bytes exceeds {self.max_line}", raw[: self.max_line])
            if text[0] in _TEXT_JSON_START:
                return Line(text)
            return FrameError("text_line", "a text line that is not JSON", raw)

    def _need_data(self) -> Event | _NeedData:
        if not self._eof:
            return NEED_DATA
        self._eof = False
        if self._skip_mode is not None:
            return self._finish_skip(", cut short by the end of the stream")
        raw = bytes(self._buffer).strip(_BLANK + b"\n")
        self._buffer.clear()
        if raw:
            return FrameError("truncated", f"the stream ended inside a chunk of {len(raw)} bytes", raw)
        return NEED_DATA

    def _start_skip(self, mode: str) -> None:
        limit = self.max_frame if mode == "frame" else self.max_line
        self._skip_mode = mode
        self._skip_head = bytes(self._buffer[:limit])
        self._skip_size = len(self._buffer)
        self._buffer.clear()

    def _continue_skip(self) -> FrameError | None:
        buffer = self._buffer
        end = buffer.find(0) if self._skip_mode == "frame" else _find_text_end(buffer)
        if end < 0:
            self._skip_size += len(buffer)
            buffer.clear()
            return None
        self._skip_size += end
        del buffer[: end + 1]
        return self._finish_skip("")

    def _finish_skip(self, note: str) -> FrameError:
        mode, size = self._skip_mode, self._skip_size
        limit = self.max_frame if mode == "frame" else self.max_line
        self._skip_mode = None
        head, self._skip_head = self._skip_head, b""
        return FrameError("too_long", f"{mode} of {size} bytes exceeds {limit}{note}; its first bytes are kept", head)


def _find_text_end(buffer: bytearray) -> int:
    newline = buffer.find(b"\n")
    zero = buffer.find(0)
    if newline < 0:
        return zero
    if zero < 0:
        return newline
    return min(newline, zero)


def _decode_frame(raw: bytes) -> Frame | FrameError:
    try:
        content = cobs_decode(raw)
    except ValueError as exc:
        return FrameError("bad_cobs", f"frame is not valid COBS: {exc}", raw)
    if len(content) < 4:  # marker, at least one payload byte, two CRC bytes
        return FrameError("too_short", f"frame content of {len(content)} bytes is shorter than 4", raw)
    body, received = content[:-2], (content[-2] << 8) | content[-1]
    computed = crc16(body)
    if computed != received:
        return FrameError("bad_crc", f"frame CRC {received:04x} does not match the content's {computed:04x}", raw)
    if len(body) - 1 > MAX_PAYLOAD:
        return FrameError("too_long", f"frame payload of {len(body) - 1} bytes exceeds {MAX_PAYLOAD}", raw)
    return Frame(body[1:])
