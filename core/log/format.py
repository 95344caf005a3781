"""Every constant of the durable log's on-disk format, and its byte codecs.

The specification is docs/log_format.md; this module is its reference
implementation and must change only together with it (the golden vector in
tests/unit/log/test_format.py checks the worked example byte for byte).

Nothing here touches files: functions take and return bytes.
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from itertools import accumulate
from typing import Any, NamedTuple

import google_crc32c

__all__ = [
    "FRAME_MAGIC", "FRAME_HEADER", "FRAME_HEADER_SIZE", "MAX_FRAME_BODY",
    "TYPE_ZERO", "TYPE_BATCH",
    "BATCH_HEADER", "BATCH_HEADER_SIZE", "BATCH_RECORD_OVERHEAD", "BATCH_SPLIT_BYTES", "MAX_TS_SPAN",
    "MAX_PAYLOAD_BYTES", "MIN_TS", "MAX_TS",
    "INDEX_MAGIC", "INDEX_VERSION", "INDEX_HEADER", "INDEX_HEADER_SIZE", "INDEX_ENTRY", "INDEX_ENTRY_SIZE",
    "TIME_ENTRY", "TIME_ENTRY_SIZE", "INDEX_INTERVAL_BYTES", "MAX_RELATIVE",
    "CURSOR_MAGIC", "CURSOR_SIZE", "STATE_VERSION",
    "NAME_RE", "LOG_SUFFIX", "INDEX_SUFFIX", "TIMEINDEX_SUFFIX", "TMP_SUFFIX", "CURSOR_SUFFIX",
    "STREAMS_DIR", "CURSORS_DIR", "META_DIR", "STATE_FILE",
    "crc32c", "mask_crc", "unmask_crc",
    "encode_frame", "encode_batch", "BatchHeader", "decode_batch_header", "decode_batch",
    "IndexHeader", "encode_index", "decode_index_header",
    "encode_cursor", "decode_cursor", "encode_state", "decode_state",
    "valid_name", "window_dir_name", "parse_window_dir_name", "segment_name", "parse_segment_name",
]

# --- frames -------------------------------------------------------------------

FRAME_MAGIC = b"\xc1TGL"  # 0xC1 is never the first byte of a msgpack value
#: magic, masked crc32c of (length, type, body), body length, type
FRAME_HEADER = struct.Struct("<4sIIB")
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 13
MAX_FRAME_BODY = 64 * 1024 * 1024

TYPE_ZERO = 0  # reserved: preallocated or zero-filled space
TYPE_BATCH = 1

# --- batches ------------------------------------------------------------------

#: base_offset, count, base_ts, ts_span
BATCH_HEADER = struct.Struct("<QIqI")
BATCH_HEADER_SIZE = BATCH_HEADER.size  # 24
BATCH_RECORD_OVERHEAD = 8  # one u32 delta and one u32 length per record
BATCH_SPLIT_BYTES = 128 * 1024  # the writer starts a new batch past this much payload
MAX_TS_SPAN = 2**32 - 1
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MIN_TS = 0
MAX_TS = 2**63 - 1

# --- indexes (derived data) ------------------------------------------------------

INDEX_MAGIC = b"TGIX"
INDEX_VERSION = 1
#: magic, version, log_size, last_offset, record_count, min_ts, max_ts, damaged_bytes, offset_entries,
#: time_entries, crc (masked crc32c of the header's first 64 bytes, the entries and the .timeindex)
INDEX_HEADER = struct.Struct("<4sB3xQqQqqQIII4x")
INDEX_HEADER_SIZE = INDEX_HEADER.size  # 72
_INDEX_CRC_AT = 64
INDEX_ENTRY = struct.Struct("<II")  # rel_offset, position
INDEX_ENTRY_SIZE = INDEX_ENTRY.size
TIME_ENTRY = struct.Struct("<qI")  # max_ts_before, rel_offset
TIME_ENTRY_SIZE = TIME_ENTRY.size
INDEX_INTERVAL_BYTES = 4096
MAX_RELATIVE = 2**32 - 1  # relative offsets and positions are u32

# --- cursors and state -------------------------------------------------------------

CURSOR_MAGIC = b"TGC1"
_CURSOR = struct.Struct("<4sQI")
CURSOR_SIZE = _CURSOR.size  # 16
STATE_VERSION = 1

# --- names -------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
TMP_SUFFIX = ".tmp"
CURSOR_SUFFIX = ".cursor"
STREAMS_DIR = "streams"
CURSORS_DIR = "cursors"
META_DIR = "meta"
STATE_FILE = "meta/state"

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    return int(google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data))


def mask_crc(crc: int) -> int:
    """Mask a CRC for storage (LevelDB ``crc32c::Mask``): rotate right 15, add a constant."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    """Inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def encode_frame(frame_type: int, body: bytes) -> bytes:
    """Return one frame: header and body."""
    tail = struct.pack("<IB", len(body), frame_type)
    crc = google_crc32c.extend(google_crc32c.value(tail), body)
    return FRAME_HEADER.pack(FRAME_MAGIC, mask_crc(crc), len(body), frame_type) + body


def encode_batch(base_offset: int, ts: list[int], payloads: list[bytes]) -> bytes:
    """Return the body of a BATCH frame.

    Args:
        base_offset: offset of the first record; the others follow one by one.
        ts: device times, one per record, spanning at most ``MAX_TS_SPAN``.
        payloads: payloads, one per record.
    """
    base_ts = min(ts)
    span = max(ts) - base_ts
    deltas = array("I", [t - base_ts for t in ts])
    lengths = array("I", map(len, payloads))
    return b"".join((
        BATCH_HEADER.pack(base_offset, len(ts), base_ts, span),
        deltas.tobytes() if _LITTLE else _swapped(deltas),
        lengths.tobytes() if _LITTLE else _swapped(lengths),
        *payloads,
    ))


_LITTLE = array("I", [1]).tobytes() == b"\x01\x00\x00\x00"


def _swapped(values: array[int]) -> bytes:
    copy = array(values.typecode, values)
    copy.byteswap()
    return copy.tobytes()


def _u32_array(data: bytes | memoryview) -> array[int]:
    values = array("I")
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values


class BatchHeader(NamedTuple):
    base_offset: int
    records: int
    base_ts: int
    ts_span: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.records - 1

    @property
    def max_ts(self) -> int:
        return self.base_ts + self.ts_span


def decode_batch_header(body: bytes | memoryview) -> BatchHeader | None:
    """Return the header of a BATCH body, or None if the body breaks the batch rules.

    Checks everything that can be checked without reading every record:
    count >= 1 and that the columns and payloads fit the body exactly.
    """
    if len(body) < BATCH_HEADER_SIZE:
        return None
    header = BatchHeader(*BATCH_HEADER.unpack_from(body, 0))
    count = header.records
    if count < 1 or len(body) < BATCH_HEADER_SIZE + 8 * count:
        return None
    return header


#: A decoded batch: (header, deltas, payload end positions, payload bytes).
DecodedBatch = tuple[BatchHeader, "array[int]", list[int], memoryview]


def decode_batch(body: bytes | memoryview) -> DecodedBatch | None:
    """Decode a BATCH body into (header, deltas, payload end positions, payload bytes).

    Record ``i`` has offset ``header.base_offset + i``, time
    ``header.base_ts + deltas[i]`` and payload ``blob[ends[i-1]:ends[i]]``
    (``ends[-1]`` read as 0). Returns None when the body breaks the rules in
    docs/log_format.md ("BATCH body").
    """
    header = decode_batch_header(body)
    if header is None:
        return None
    count = header.records
    view = memoryview(body)
    start = BATCH_HEADER_SIZE
    deltas = _u32_array(view[start:start + 4 * count])
    lengths = _u32_array(view[start + 4 * count:start + 8 * count])
    blob = view[start + 8 * count:]
    ends = list(accumulate(lengths))
    if ends[-1] != len(blob) or max(deltas) > header.ts_span:
        return None
    return header, deltas, ends, blob


# --- indexes ---------------------------------------------------------------------


class IndexHeader(NamedTuple):
    log_size: int
    last_offset: int
    record_count: int
    min_ts: int
    max_ts: int
    damaged_bytes: int
    offset_entries: int
    time_entries: int


def encode_index(header: IndexHeader, offset_entries: list[tuple[int, int]], timeindex: bytes) -> bytes:
    """Return a ``.index`` file: seal header then (rel_offset, position) entries.

    The header's CRC covers its first 64 bytes, the entries and ``timeindex``
    (the ``.timeindex`` file's bytes), so a flipped bit in either index file
    makes the pair be rebuilt instead of trusted.
    """
    head = INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, *header, 0)[:_INDEX_CRC_AT]
    entries = b"".join(INDEX_ENTRY.pack(rel, pos) for rel, pos in offset_entries)
    crc = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(head), entries), timeindex)
    return head + struct.pack("<I4x", mask_crc(crc)) + entries


def encode_timeindex(time_entries: list[tuple[int, int]]) -> bytes:
    """Return a ``.timeindex`` file: (max_ts_before, rel_offset) entries."""
    return b"".join(TIME_ENTRY.pack(ts, rel) for ts, rel in time_entries)


def decode_index_header(data: bytes) -> IndexHeader | None:
    """Return the seal header of a ``.index`` file, or None if it is not one (magic, version, size)."""
    if len(data) < INDEX_HEADER_SIZE:
        return None
    magic, version, *fields, _crc = INDEX_HEADER.unpack_from(data, 0)
    if magic != INDEX_MAGIC or version != INDEX_VERSION:
        return None
    header = IndexHeader(*fields)
    if len(data) != INDEX_HEADER_SIZE + header.offset_entries * INDEX_ENTRY_SIZE:
        return None
    return header


def index_crc_ok(index: bytes, timeindex: bytes) -> bool:
    """True if the ``.index`` header's CRC matches the index entries and the ``.timeindex`` bytes."""
    (masked,) = struct.unpack_from("<I", index, _INDEX_CRC_AT)
    crc = google_crc32c.extend(
        google_crc32c.extend(google_crc32c.value(index[:_INDEX_CRC_AT]), index[INDEX_HEADER_SIZE:]), timeindex
    )
    return bool(unmask_crc(masked) == crc)


def decode_index_entries(data: bytes, count: int) -> list[tuple[int, int]]:
    return list(INDEX_ENTRY.iter_unpack(data[INDEX_HEADER_SIZE:INDEX_HEADER_SIZE + count * INDEX_ENTRY_SIZE]))


def decode_time_entries(data: bytes, count: int) -> list[tuple[int, int]]:
    return list(TIME_ENTRY.iter_unpack(data[:count * TIME_ENTRY_SIZE]))


__all__ += ["encode_timeindex", "decode_index_entries", "decode_time_entries", "index_crc_ok"]

# --- cursors and state -----------------------------------------------------------------


def encode_cursor(offset: int) -> bytes:
    head = struct.pack("<4sQ", CURSOR_MAGIC, offset)
    return head + struct.pack("<I", mask_crc(crc32c(head)))


def decode_cursor(data: bytes) -> int | None:
    """Return the offset in a cursor file, or None if the bytes are not a valid cursor."""
    if len(data) != CURSOR_SIZE:
        return None
    magic, offset, masked = _CURSOR.unpack(data)
    if magic != CURSOR_MAGIC or unmask_crc(masked) != crc32c(data[:12]):
        return None
    return int(offset)


def encode_state(state: dict[str, object]) -> bytes:
    line = json.dumps(state, sort_keys=True, separators=(", ", ": ")).encode("utf-8")
    return line + b"\ncrc32c %08x\n" % mask_crc(crc32c(line))


def decode_state(data: bytes) -> dict[str, Any] | None:
    """Return the state dict of a ``meta/state`` file, or None if it is damaged."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"" or not lines[1].startswith(b"crc32c "):
        return None
    try:
        masked = int(lines[1][7:], 16)
        if unmask_crc(masked) != crc32c(lines[0]):
            return None
        state = json.loads(lines[0].decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return None
    return state


# --- names -----------------------------------------------------------------------------


def valid_name(name: object) -> bool:
    """True if ``name`` may name a stream or a cursor (and so a file)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and name not in (".", "..")


def window_dir_name(start_ms: int, length_ms: int) -> str:
    return f"{start_ms:020d}-{length_ms:08d}"


_WINDOW_RE = re.compile(r"(\d{20})-(\d{8})")
_SEGMENT_RE = re.compile(r"(\d{20})\.(log|index|timeindex)")


def parse_window_dir_name(name: str) -> tuple[int, int] | None:
    """Return (start_ms, length_ms) for a window directory name, or None."""
    match = _WINDOW_RE.fullmatch(name)
    if match is None:
        return None
    start, length = int(match[1]), int(match[2])
    if length <= 0 or start % length:
        return None
    return start, length


def segment_name(base_offset: int) -> str:
    """The file name of a segment's ``.log`` without directory."""
    return f"{base_offset:020d}{LOG_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, str] | None:
    """Return (base_offset, suffix without dot) for a segment file name, or None."""
    match = _SEGMENT_RE.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), match[2]
