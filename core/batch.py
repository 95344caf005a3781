"""The batch wire format (docs/batch_format.md), encoder and decoder.

How this works: the encoder groups a window's readings into series by
(device, metric), turns offsets, device times and receive lags into delta
columns, picks the smallest exact encoding for each value column, packs the
whole as one msgpack array and compresses it with an lz4 frame. The header in
front carries everything a router needs (gateway, stream, window, offset
range, count) so consumers can select batches without decompressing them, and
a CRC-32C over everything after the CRC field.

The decoder checks the CRC before it trusts a single covered byte, then
rebuilds the readings in offset order. Every problem with the bytes raises
:class:`~core.errors.BatchFormatError` with a reason; nothing else escapes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import google_crc32c
import lz4.frame

from core import msgpack_codec
from core.errors import BatchFormatError, InvalidReading, LocalError
from core.reading import Reading, Value
from core.timewindow import MAX_WINDOW_MS, MIN_WINDOW_MS, Window

__all__ = [
    "MAGIC",
    "VERSION",
    "ENCODING_COLUMNAR_MSGPACK",
    "COMPRESSION_NONE",
    "COMPRESSION_LZ4",
    "COMPRESSION_AUTO",
    "Entry",
    "BatchHeader",
    "Batch",
    "encode_batch",
    "decode_batch",
    "decode_header",
    "kafka_key",
    "kafka_headers",
]

MAGIC = b"TGBT"
VERSION = 1
ENCODING_COLUMNAR_MSGPACK = 1
COMPRESSION_NONE = 0
COMPRESSION_LZ4 = 1
_COMPRESSIONS = (COMPRESSION_NONE, COMPRESSION_LZ4)
# Encoder choice, never on the wire: lz4 when it makes the body smaller, else none.
COMPRESSION_AUTO = -1

# magic, version, encoding, compression, flags, crc32c, window_start,
# window_length, first_offset, last_offset, count, body_length
_FIXED = struct.Struct(">4sBBBBIqIQQII")
_CRC_START = 12  # the CRC covers every byte from here to the end
_MAX_NAME = 255

_VALUES_PLAIN = 0
_VALUES_DECIMAL = 1
_VALUES_INT = 2
_VALUES_DECIMAL_PATCHED = 3
_MAX_DECIMALS = 9
# A patched decimal column pays about 10 bytes per exception (its index and a
# float 64) against 4 or 5 saved per value, so past a third it is not worth it.
_MAX_EXCEPTION_SHARE = 3
# n / 10**k is exact IEEE division only while n fits a double's mantissa.
_MAX_EXACT_INT = 2**53


@dataclass(frozen=True, slots=True)
class Entry:
    """A reading with its log offset: its id is (gateway, stream, offset)."""

    offset: int
    reading: Reading


@dataclass(frozen=True, slots=True)
class BatchHeader:
    gateway: str
    stream: str
    window: Window
    first_offset: int
    last_offset: int
    count: int
    compression: int
    body_length: int


@dataclass(frozen=True, slots=True)
class Batch:
    header: BatchHeader
    entries: tuple[Entry, ...]


# -- encoding ---------------------------------------------------------------


def _deltas(numbers: Sequence[int], base: int) -> list[int]:
    out = []
    previous = base
    for n in numbers:
        out.append(n - previous)
        previous = n
    return out


def _undeltas(deltas: Sequence[int], base: int) -> list[int]:
    out = []
    current = base
    for d in deltas:
        current += d
        out.append(current)
    return out


def _scaled(v: Value, scale: int) -> int | None:
    """The n with v == n / scale exactly, or None."""
    # Beyond 2**53 no float carries decimals, and scaling could overflow.
    # -0.0 equals 0 / 1 but would come back as +0.0, so it is never scaled.
    if type(v) is not float or not abs(v) < _MAX_EXACT_INT or math.copysign(1.0, v) < 0:
        return None
    n = round(v * scale)
    if abs(n) > _MAX_EXACT_INT or n / scale != v:
        return None
    return n


def _decimal_column(values: Sequence[Value]) -> list[object] | None:
    """A kind 1 or kind 3 column, or None when most values fit no decimal scale.

    Kind 1 when every value is ``n / 10**k`` at the smallest such ``k``.
    Real series hold a few values a decimal scale cannot give back: a sensor's
    float noise (74.93588199999998 among values of eight decimals), an int
    among floats, a -0.0. Kind 1 would fall back to plain 9-byte floats for the
    whole column for one such value; kind 3 keeps the deltas at the smallest
    ``k`` with the fewest exceptions and lists the odd values by index.
    """
    if sum(type(v) is not float for v in values) * _MAX_EXCEPTION_SHARE > len(values):
        return None  # strings, bools or ints: nothing to scale
    allowed = len(values) // _MAX_EXCEPTION_SHARE  # more exceptions than this: not worth kind 3
    misses, k, ns = len(values) + 1, 0, []
    for scale_k in range(_MAX_DECIMALS + 1):
        scale = 10**scale_k
        bound = min(misses - 1, allowed)  # a scale with more exceptions than this cannot win
        scaled = []
        count = 0
        for v in values:
            n = _scaled(v, scale)
            if n is None:
                count += 1
                if count > bound:
                    break
            scaled.append(n)
        else:
            misses, k, ns = count, scale_k, scaled
            if not misses:
                return [_VALUES_DECIMAL, k, *_deltas(ns, 0)]  # type: ignore[arg-type]
    if misses > allowed:
        return None
    exceptions: dict[int, Value] = {}
    deltas = []
    previous = 0
    for i, (n, v) in enumerate(zip(ns, values)):
        if n is None:
            # The exception's slot repeats the previous n, a one-byte zero delta.
            exceptions[i] = v
            n = previous
        deltas.append(n - previous)
        previous = n
    return [_VALUES_DECIMAL_PATCHED, k, exceptions, *deltas]


def _fits_int64(numbers: Sequence[int]) -> bool:
    return all(-(2**63) <= n < 2**63 for n in numbers)


def _encode_values(values: Sequence[Value]) -> list[object]:
    if all(type(v) is int for v in values):
        deltas = _deltas(values, 0)  # type: ignore[arg-type]
        # Values span -2**63 .. 2**64-1, so a delta can outgrow what msgpack carries.
        if _fits_int64(deltas):
            return [_VALUES_INT, *deltas]
        return [_VALUES_PLAIN, *values]
    decimal = _decimal_column(values)
    return decimal if decimal is not None else [_VALUES_PLAIN, *values]


def _check_name(what: str, name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= _MAX_NAME:
        raise LocalError(f"{what} must be 1..{_MAX_NAME} bytes of UTF-8, got {len(raw)}")
    return raw


def encode_batch(
    gateway: str,
    stream: str,
    window: Window,
    entries: Sequence[Entry],
    compression: int = COMPRESSION_AUTO,
) -> bytes:
    """Encode readings of one stream and one window as a batch.

    Args:
        gateway: the gateway id.
        stream: the stream the offsets belong to.
        window: the time window every reading's ``ts_ms`` falls in.
        entries: the readings with their offsets, in strictly increasing
            offset order.
        compression: ``COMPRESSION_AUTO`` (default: lz4 only when it makes
            the body smaller, which it does not for a handful of readings),
            ``COMPRESSION_LZ4`` or ``COMPRESSION_NONE``.

    Returns:
        The batch bytes.

    Raises:
        LocalError: the entries are empty, out of order, or outside the window.
    """
    if not entries:
        raise LocalError("a batch needs at least one reading")
    if compression not in _COMPRESSIONS and compression != COMPRESSION_AUTO:
        raise LocalError(f"unknown compression {compression}")
    gateway_raw = _check_name("gateway id", gateway)
    stream_raw = _check_name("stream", stream)
    series: dict[tuple[str, str], list[Entry]] = {}
    previous_offset = -1
    for entry in entries:
        if entry.offset <= previous_offset:
            raise LocalError(f"offsets must increase: {entry.offset} after {previous_offset}")
        if not window.contains(entry.reading.ts_ms):
            raise LocalError(f"reading at {entry.reading.ts_ms} is outside window {window}")
        previous_offset = entry.offset
        series.setdefault((entry.reading.device, entry.reading.metric), []).append(entry)
    first = entries[0].offset
    body_series = []
    for (device, metric), members in series.items():  # dicts keep first-seen order
        readings = [m.reading for m in members]
        sources = {r.time_source for r in readings}
        lags = [r.received_ms - r.ts_ms for r in readings]
        body_series.append(
            [
                device,
                metric,
                _deltas([m.offset for m in members], first),
                _deltas([r.ts_ms for r in readings], window.start_ms),
                _encode_values([r.value for r in readings]),
                _deltas(lags, 0),
                sources.pop() if len(sources) == 1 else [r.time_source for r in readings],
            ]
        )
    body = msgpack_codec.packb(body_series)
    if compression in (COMPRESSION_LZ4, COMPRESSION_AUTO):
        packed = lz4.frame.compress(body, store_size=True, content_checksum=False)
        if compression == COMPRESSION_LZ4 or len(packed) < len(body):
            body, compression = packed, COMPRESSION_LZ4
        else:
            compression = COMPRESSION_NONE
    tail = (
        _FIXED.pack(
            MAGIC, VERSION, ENCODING_COLUMNAR_MSGPACK, compression, 0, 0,
            window.start_ms, window.length_ms, first, entries[-1].offset, len(entries), len(body),
        )[_CRC_START:]
        + bytes([len(gateway_raw)]) + gateway_raw
        + bytes([len(stream_raw)]) + stream_raw
        + body
    )
    crc = google_crc32c.value(tail)
    return MAGIC + bytes([VERSION, ENCODING_COLUMNAR_MSGPACK, compression, 0]) + struct.pack(">I", crc) + tail


# -- decoding ---------------------------------------------------------------


def _bad(message: str, reason: str, field: str | None = None) -> BatchFormatError:
    return BatchFormatError(message, reason=reason, field=field)


def _read_name(data: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos >= len(data):
        raise _bad(f"batch ends before the {what} length", "truncated", what)
    length = data[pos]
    end = pos + 1 + length
    if length == 0 or end > len(data):
        raise _bad(f"batch {what} length {length} is zero or runs past the end", "truncated", what)
    try:
        return data[pos + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise _bad(f"batch {what} is not UTF-8", "bad_name", what) from exc


def _parse_header(data: bytes) -> tuple[BatchHeader, int]:
    if len(data) < _FIXED.size:
        raise _bad(f"batch is {len(data)} bytes, shorter than the {_FIXED.size}-byte fixed header", "truncated")
    (magic, version, encoding, compression, flags, crc, window_start, window_length,
     first, last, count, body_length) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise _bad(f"bad magic {magic!r}, expected {MAGIC!r}", "bad_magic", "magic")
    if version != VERSION:
        raise _bad(f"unsupported batch version {version}", "bad_version", "version")
    if google_crc32c.value(data[_CRC_START:]) != crc:
        raise _bad("batch CRC-32C does not match its contents", "bad_crc", "crc32c")
    if encoding != ENCODING_COLUMNAR_MSGPACK:
        raise _bad(f"unsupported encoding {encoding}", "bad_encoding", "encoding")
    if compression not in _COMPRESSIONS:
        raise _bad(f"unsupported compression {compression}", "bad_compression", "compression")
    if flags:
        raise _bad(f"unknown flags {flags:#x}", "bad_flags", "flags")
    if not MIN_WINDOW_MS <= window_length <= MAX_WINDOW_MS or window_start % window_length:
        raise _bad(f"window {window_start}+{window_length} is not a valid aligned window", "bad_window", "window")
    if last < first or not 1 <= count <= last - first + 1:
        raise _bad(f"offsets {first}..{last} cannot hold {count} readings", "bad_count", "count")
    gateway, pos = _read_name(data, _FIXED.size, "gateway")
    stream, pos = _read_name(data, pos, "stream")
    if len(data) - pos != body_length:
        raise _bad(f"body is {len(data) - pos} bytes, header says {body_length}", "bad_length", "body_length")
    header = BatchHeader(gateway, stream, Window(window_start, window_length), first, last, count, compression, body_length)
    return header, pos


def decode_header(data: bytes) -> BatchHeader:
    """Parse and verify a batch's header (the CRC is checked over the whole batch).

    Raises:
        BatchFormatError: the bytes are not a valid version-1 batch header.
    """
    return _parse_header(data)[0]


def _int_list(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise _bad(f"series {what} must be an array of integers", "bad_body", what)
    return value


def _decode_values(column: object, n: int) -> list[Value]:
    if not isinstance(column, list) or not column:
        raise _bad("values column must be a non-empty array", "bad_body", "values")
    kind, rest = column[0], column[1:]
    if kind == _VALUES_PLAIN:
        values = rest
    elif kind == _VALUES_INT:
        values = _undeltas(_int_list(rest, "values"), 0)
    elif kind == _VALUES_DECIMAL:
        if not rest or type(rest[0]) is not int or not 0 <= rest[0] <= _MAX_DECIMALS:
            raise _bad("decimal values column needs a scale 0..9", "bad_body", "values")
        scale = 10 ** rest[0]
        values = [n / scale for n in _undeltas(_int_list(rest[1:], "values"), 0)]
    elif kind == _VALUES_DECIMAL_PATCHED:
        if len(rest) < 2 or type(rest[0]) is not int or not 0 <= rest[0] <= _MAX_DECIMALS:
            raise _bad("patched decimal values column needs a scale 0..9", "bad_body", "values")
        exceptions = rest[1]
        if not isinstance(exceptions, dict) or not all(type(i) is int and 0 <= i < n for i in exceptions):
            raise _bad("patched decimal exceptions must map reading indexes to values", "bad_body", "values")
        scale = 10 ** rest[0]
        ns = _undeltas(_int_list(rest[2:], "values"), 0)
        values = [exceptions[i] if i in exceptions else m / scale for i, m in enumerate(ns)]
    else:
        raise _bad(f"unknown values column kind {kind!r}", "bad_body", "values")
    if len(values) != n:
        raise _bad(f"values column has {len(values)} values for {n} readings", "bad_body", "values")
    return values


def _decode_series(item: object, header: BatchHeader) -> Iterable[Entry]:
    if not isinstance(item, list) or len(item) != 7:
        raise _bad("a series must be a 7-element array", "bad_body", "series")
    device, metric, offsets_col, times_col, values_col, lags_col, sources = item
    offsets = _undeltas(_int_list(offsets_col, "offsets"), header.first_offset)
    n = len(offsets)
    times = _undeltas(_int_list(times_col, "times"), header.window.start_ms)
    lags = _undeltas(_int_list(lags_col, "lags"), 0)
    values = _decode_values(values_col, n)
    if type(sources) is int:
        sources = [sources] * n
    sources = _int_list(sources, "sources")
    if not (n == len(times) == len(lags) == len(sources)) or n == 0:
        raise _bad("series columns differ in length", "bad_body", "series")
    previous = header.first_offset - 1
    for offset, ts, value, lag, source in zip(offsets, times, values, lags, sources):
        if offset <= previous or offset > header.last_offset:
            raise _bad(f"offset {offset} out of order or outside {header.first_offset}..{header.last_offset}", "bad_body", "offsets")
        if not header.window.contains(ts):
            raise _bad(f"reading time {ts} outside the batch window", "bad_body", "times")
        previous = offset
        try:
            reading = Reading(device, metric, ts, value, ts + lag, source)
        except InvalidReading as exc:
            raise _bad(f"invalid reading in batch: {exc}", "bad_body", exc.field) from exc
        yield Entry(offset, reading)


def decode_batch(data: bytes) -> Batch:
    """Decode and verify a whole batch.

    Returns:
        The header and the readings, in offset order.

    Raises:
        BatchFormatError: anything about the bytes is wrong; ``reason`` says what.
    """
    data = bytes(data)
    header, pos = _parse_header(data)
    body = data[pos:]
    if header.compression == COMPRESSION_LZ4:
        try:
            body = lz4.frame.decompress(body)
        except RuntimeError as exc:
            raise _bad(f"lz4 frame does not decompress: {exc}", "bad_compression", "body") from exc
    try:
        series = msgpack_codec.unpackb(body)
    except msgpack_codec.MsgpackError as exc:
        raise _bad(f"body is not msgpack: {exc}", "bad_body", "body") from exc
    if not isinstance(series, list) or not series:
        raise _bad("body must be a non-empty array of series", "bad_body", "body")
    entries = sorted((e for s in series for e in _decode_series(s, header)), key=lambda e: e.offset)
    if len(entries) != header.count:
        raise _bad(f"body holds {len(entries)} readings, header says {header.count}", "bad_count", "count")
    for before, after in zip(entries, entries[1:]):
        if before.offset == after.offset:
            raise _bad(f"offset {after.offset} appears twice", "bad_body", "offsets")
    if entries[0].offset != header.first_offset or entries[-1].offset != header.last_offset:
        raise _bad("first or last reading does not match the header's offsets", "bad_body", "offsets")
    return Batch(header, tuple(entries))


# -- Kafka mapping (docs/batch_format.md, "Kafka mapping") ------------------


def kafka_key(header: BatchHeader) -> bytes:
    """The Kafka key of a batch: one gateway's stream stays in one partition."""
    return f"{header.gateway}/{header.stream}".encode()


def kafka_headers(header: BatchHeader) -> list[tuple[str, bytes]]:
    """Kafka record headers that let a consumer route a batch without decoding it.

    Two short headers: on a sparse series a batch holds a reading or two, and
    every header byte is paid once per batch on the uplink.
    """
    return [
        ("tg-window", f"{header.window.start_ms}+{header.window.length_ms}".encode()),
        ("tg-offsets", f"{header.first_offset}-{header.last_offset}".encode()),
    ]
