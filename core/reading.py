"""The reading model, and its record encoding in the durable log.

A :class:`Reading` is one value of one metric from one device at one device
time. It keeps two clocks (guarantee 4 of the mission): ``ts_ms``, the device's
time, from which time windows are derived, and ``received_ms``, the gateway's
time of receipt. ``time_source`` says where ``ts_ms`` came from, so consumers
can tell a device clock from an uptime mapped onto gateway time.

In the log each reading is one record whose payload is the msgpack array
``[device, metric, ts_ms, value, received_ms, time_source]``, followed, for a
reading from a sample with a sequence number, by its :class:`Provenance`
``boot, seq, fingerprint`` (see docs/log_format.md, "Reading payload"). The
provenance is what lets the gateway rebuild its deduplication windows from
the log after a crash.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Union

from core import msgpack_codec

from core.errors import InvalidReading

__all__ = [
    "Value",
    "Reading",
    "Provenance",
    "TIME_DEVICE",
    "TIME_MAPPED",
    "TIME_GATEWAY",
    "MAX_NAME_BYTES",
    "MAX_STRING_VALUE_BYTES",
    "readings_of",
    "encode_reading",
    "encode_records",
    "encode_series_payloads",
    "SERIES_LAYOUT_MIN_TS",
    "decode_reading",
    "decode_record",
]

Value = Union[float, int, bool, str]

# Where ts_ms came from.
TIME_DEVICE = 0  # the device's own (synchronised) clock
TIME_MAPPED = 1  # device uptime or relative time, mapped onto gateway time at receipt
TIME_GATEWAY = 2  # the device sent no time; the gateway's receive time stands in
_TIME_SOURCES = (TIME_DEVICE, TIME_MAPPED, TIME_GATEWAY)

MAX_NAME_BYTES = 255
MAX_STRING_VALUE_BYTES = 4096
# Signed 64-bit milliseconds, what Kafka timestamps and msgpack ints carry.
_MIN_TS = -(2**63)
_MAX_TS = 2**63 - 1
# A UTF-8 character is at most 4 bytes (a lone surrogate, allowed by
# "surrogatepass", is 3), so a string of at most this many characters is
# within its byte limit without being encoded.
_SAFE_NAME_CHARS = MAX_NAME_BYTES // 4
_SAFE_STRING_CHARS = MAX_STRING_VALUE_BYTES // 4


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str):
        raise InvalidReading(f"{what} must be a string, got {type(name).__name__}", reason=f"bad_{what}", field=what)
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_NAME_BYTES:
        raise InvalidReading(
            f"{what} must be 1..{MAX_NAME_BYTES} bytes of UTF-8, got {size}", reason=f"bad_{what}", field=what
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one metric from one device.

    Raises:
        InvalidReading: a field is of the wrong type or out of range; the
            error's ``field`` names it.
    """

    device: str
    metric: str
    ts_ms: int
    value: Value
    received_ms: int
    time_source: int = TIME_DEVICE

    def __post_init__(self) -> None:
        # The common case in a few cheap tests; anything they do not pass
        # (a long or non-ASCII name, a big integer, a subclass...) goes to the
        # full checks, which raise the documented error or accept it.
        if not _plainly_valid(self.device, self.metric, self.ts_ms, self.value, self.received_ms, self.time_source):
            _check_fields(self)


def _plainly_valid(device: object, metric: object, ts_ms: object, value: object, received_ms: object,
                   time_source: object) -> bool:
    """True if these fields are certainly valid; False means "check them fully", not "invalid"."""
    if (
        device.__class__ is not str or not 0 < len(device) <= _SAFE_NAME_CHARS  # type: ignore[arg-type]
        or metric.__class__ is not str or not 0 < len(metric) <= _SAFE_NAME_CHARS  # type: ignore[arg-type]
        or ts_ms.__class__ is not int or not _MIN_TS <= ts_ms <= _MAX_TS  # type: ignore[operator]
        or received_ms.__class__ is not int or not _MIN_TS <= received_ms <= _MAX_TS  # type: ignore[operator]
        or time_source.__class__ is not int or not 0 <= time_source <= 2  # type: ignore[operator]
    ):
        return False
    return _plain_value(value)


def _plain_value(value: object) -> bool:
    """True if a value is certainly valid: a finite float, an int64 or uint64, a bool, a short string."""
    kind = value.__class__
    if kind is float:
        return value - value == 0.0  # type: ignore[operator, no-any-return]  # False for inf and nan
    if kind is int:
        return -(2**63) <= value < 2**64  # type: ignore[operator, no-any-return]
    if kind is str:
        return len(value) <= _SAFE_STRING_CHARS  # type: ignore[arg-type]
    return kind is bool


def _check_fields(reading: Reading) -> None:
    """Every rule on a reading's fields, in the documented order; raises InvalidReading naming the field."""
    _check_name("device", reading.device)
    _check_name("metric", reading.metric)
    for name in ("ts_ms", "received_ms"):
        ts = getattr(reading, name)
        if isinstance(ts, bool) or not isinstance(ts, int) or not _MIN_TS <= ts <= _MAX_TS:
            raise InvalidReading(f"{name} must be a 64-bit integer of milliseconds, got {ts!r}", reason="bad_time", field=name)
    value = reading.value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidReading(f"value must be finite, got {value!r}", reason="bad_value", field="value")
    elif isinstance(value, int):  # bool is an int too, and allowed
        if not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise InvalidReading(f"integer value {value} does not fit 64 bits", reason="bad_value", field="value")
    elif isinstance(value, str):
        if len(value.encode("utf-8", "surrogatepass")) > MAX_STRING_VALUE_BYTES:
            raise InvalidReading(
                f"string value longer than {MAX_STRING_VALUE_BYTES} bytes", reason="bad_value", field="value"
            )
    else:
        raise InvalidReading(
            f"value must be a number, bool or string, got {type(value).__name__}", reason="bad_value", field="value"
        )
    if reading.time_source not in _TIME_SOURCES:
        raise InvalidReading(f"unknown time_source {reading.time_source!r}", reason="bad_time", field="time_source")


class _Unfrozen:
    """Reading's slots, in Reading's order, without its frozen ``__setattr__``.

    readings_of fills one with plain attribute stores and then makes it a
    Reading by assigning ``__class__`` (Python allows that between classes
    with the same slots), which costs less than the six
    ``object.__setattr__`` calls of the frozen dataclass's ``__init__``. The
    slots are Reading's own, so a field added to Reading is a slot here too.
    """

    __slots__ = Reading.__slots__


_new_object = object.__new__


def readings_of(
    device: str, pairs: Iterable[tuple[str, object]], ts_ms: int, received_ms: int, time_source: int = TIME_DEVICE
) -> list[Reading]:
    """The readings of one device at one time, one per ``(metric, value)`` pair.

    The same as ``[Reading(device, metric, ts_ms, value, received_ms,
    time_source) for metric, value in pairs]``, and it raises the same error
    for the first bad pair, but the fields the readings share are checked once
    and a plainly valid pair skips the dataclass machinery: this is the
    intake's per-reading path.

    Raises:
        InvalidReading: a field is of the wrong type or out of range; ``field`` names it.
    """
    # The tests of _plainly_valid for the shared fields, written out: this runs once a sample.
    if (
        device.__class__ is not str or not 0 < len(device) <= _SAFE_NAME_CHARS
        or ts_ms.__class__ is not int or not _MIN_TS <= ts_ms <= _MAX_TS
        or received_ms.__class__ is not int or not _MIN_TS <= received_ms <= _MAX_TS
        or time_source.__class__ is not int or not 0 <= time_source <= 2
    ):
        return [Reading(device, metric, ts_ms, value, received_ms, time_source) for metric, value in pairs]  # type: ignore[arg-type]
    out: list[Reading] = []
    append = out.append
    for metric, value in pairs:
        kind = value.__class__
        if metric.__class__ is str and 0 < len(metric) <= _SAFE_NAME_CHARS and (
            value - value == 0.0 if kind is float  # type: ignore[operator]  # False for inf and nan
            else -(2**63) <= value < 2**64 if kind is int  # type: ignore[operator]
            else kind is bool or (kind is str and len(value) <= _SAFE_STRING_CHARS)  # type: ignore[arg-type]
        ):
            reading = _new_object(_Unfrozen)
            reading.device = device
            reading.metric = metric
            reading.ts_ms = ts_ms
            reading.value = value
            reading.received_ms = received_ms
            reading.time_source = time_source
            reading.__class__ = Reading  # type: ignore[assignment]
            append(reading)  # type: ignore[arg-type]
        else:
            # Not plainly valid: the full checks accept it or raise the documented error.
            append(Reading(device, metric, ts_ms, value, received_ms, time_source))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a reading's sample came from, as the sender numbered it.

    Attributes:
        boot: the device's boot id, or None if it sent none.
        seq: the sample's sequence number within the boot.
        fingerprint: CRC-32 of the sample's time and values; it tells a resent
            sample from a new one with a reused number when there is no boot id.
    """

    boot: int | str | None
    seq: int
    fingerprint: int


def encode_reading(reading: Reading, provenance: Provenance | None = None) -> bytes:
    """Encode a reading (and the provenance of its sample, if any) as a log record payload."""
    fields: list[object] = [
        reading.device, reading.metric, reading.ts_ms, reading.value, reading.received_ms, reading.time_source
    ]
    if provenance is not None:
        fields += [provenance.boot, provenance.seq, provenance.fingerprint]
    return msgpack_codec.packb(fields)


def encode_records(
    readings: Sequence[Reading], provenance: Sequence[Provenance | None] = (),
    pack: Callable[[object], bytes] | None = None,
) -> list[tuple[int, bytes]]:
    """``(ts_ms, payload)`` of each reading, as ``Log.append_many`` takes them.

    Each payload is byte for byte what :func:`encode_reading` writes; one
    packer serves the whole list instead of one per reading.

    Args:
        readings: the readings, in order.
        provenance: parallel to ``readings``, each one's provenance or None;
            empty if no reading has any.
        pack: the ``pack`` of a :func:`core.msgpack_codec.packer` the caller
            owns (a new packer if None).
    """
    if pack is None:
        pack = msgpack_codec.packer().pack
    if not provenance:
        return [(r.ts_ms, pack((r.device, r.metric, r.ts_ms, r.value, r.received_ms, r.time_source))) for r in readings]
    return [
        (r.ts_ms, pack((r.device, r.metric, r.ts_ms, r.value, r.received_ms, r.time_source) if p is None else
                       (r.device, r.metric, r.ts_ms, r.value, r.received_ms, r.time_source, p.boot, p.seq, p.fingerprint)))
        for r, p in zip(readings, provenance, strict=True)
    ]


#: From here up msgpack writes an int as ``0xcf`` and eight bytes (2**32 ms
#: is February 1970, so every epoch time since then).
SERIES_LAYOUT_MIN_TS = 1 << 32

# struct layouts of a series record, by (head length, tail length).
_SERIES_LAYOUTS: dict[tuple[int, int], Callable[..., bytes]] = {}


def encode_series_payloads(
    device: str, metric: str, times: Iterable[int], values: Iterable[float], received_ms: int, time_source: int,
    pack: Callable[[object], bytes],
) -> list[bytes]:
    """Payloads of readings of one series, byte for byte what :func:`encode_reading` writes, without provenance.

    For times all at least :data:`SERIES_LAYOUT_MIN_TS` and values all floats
    only: msgpack writes each of those as a type byte and eight big-endian
    bytes (``0xcf`` uint64, ``0xcb`` float64), so every record is the same
    bytes around them, and one ``struct`` layout writes a record in one call
    (a third less than packing a tuple per reading).

    Args:
        pack: the ``pack`` of a :func:`core.msgpack_codec.packer`.
    """
    head = b"\x96" + pack(device) + pack(metric)  # a six-element array, then the names
    tail = pack(received_ms) + pack(time_source)
    key = (len(head), len(tail))
    layout = _SERIES_LAYOUTS.get(key)
    if layout is None:
        layout = _SERIES_LAYOUTS[key] = struct.Struct(f">{key[0]}sBQBd{key[1]}s").pack
    return list(map(layout, repeat(head), repeat(0xCF), times, repeat(0xCB), values, repeat(tail)))


def decode_record(payload: bytes) -> tuple[Reading, Provenance | None]:
    """Decode a log record payload written by :func:`encode_reading`.

    Raises:
        InvalidReading: the payload is not a reading record.
    """
    try:
        fields = msgpack_codec.unpackb(payload)
    except msgpack_codec.MsgpackError as exc:
        raise InvalidReading(f"reading record is not msgpack: {exc}", reason="bad_record") from exc
    if not isinstance(fields, list) or len(fields) not in (6, 9):
        raise InvalidReading("reading record must be a msgpack array of 6 or 9 elements", reason="bad_record")
    provenance = None
    if len(fields) == 9:
        boot, seq, fingerprint = fields[6:]
        if type(seq) is not int or type(fingerprint) is not int or not (boot is None or type(boot) in (int, str)):
            raise InvalidReading("reading record provenance must be [boot, int seq, int fingerprint]", reason="bad_record")
        provenance = Provenance(boot, seq, fingerprint)
    return Reading(*fields[:6]), provenance


def decode_reading(payload: bytes) -> Reading:
    """Decode the reading of a log record payload (its provenance is ignored).

    Raises:
        InvalidReading: the payload is not a reading record.
    """
    return decode_record(payload)[0]
