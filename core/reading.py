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
from dataclasses import dataclass
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
    "encode_reading",
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
        _check_name("device", self.device)
        _check_name("metric", self.metric)
        for name in ("ts_ms", "received_ms"):
            ts = getattr(self, name)
            if isinstance(ts, bool) or not isinstance(ts, int) or not _MIN_TS <= ts <= _MAX_TS:
                raise InvalidReading(f"{name} must be a 64-bit integer of milliseconds, got {ts!r}", reason="bad_time", field=name)
        value = self.value
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
        if self.time_source not in _TIME_SOURCES:
            raise InvalidReading(f"unknown time_source {self.time_source!r}", reason="bad_time", field="time_source")


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
