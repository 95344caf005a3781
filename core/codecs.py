"""Sensor payload codecs: JSON, msgpack, CBOR and SenML bytes in, samples and readings out.

How this works: a payload is first turned into plain values by one of three
parsers (chosen per topic, or detected from the first byte), then one shared
interpreter turns those values into :class:`~core.sample.Sample` objects, and
those into :class:`~core.reading.Reading` objects. So every format accepts the
same shapes and rejects bad input with the same reasons.

Accepted shapes (a key may be given long or short):

* one reading: ``{"device": "n1", "metric": "temp_c", "ts": 1700000000000, "value": 21.5}``
* several metrics of one device at one time:
  ``{"device": "n1", "ts": 1700000000000, "values": {"temp_c": 21.5, "rh": 40}}``
* a pack: an array of either of the above.
* a SenML pack (RFC 8428, core/senml.py): an array of SenML records, detected
  by its labels, or forced with the formats ``senml`` (JSON) and
  ``senml-cbor`` (CBOR with integer labels).

``device`` (``d``) and ``metric`` (``m``) may be left out when the topic
template supplies them. Time is one of:

* ``ts``: integer milliseconds since the Unix epoch, by the device's clock;
* ``t``: seconds since the Unix epoch (int or float);
* ``uptime_ms`` (``up``): milliseconds since the device booted, for devices
  without a clock; mapped onto gateway time on receipt (core/devicetime.py).
  ``sent_up_ms`` (``su``), the uptime when the message was sent, makes that
  mapping exact for samples sent late (a ring buffer replayed after an outage);
* none of these: the gateway's receive time stands in, marked
  :data:`~core.reading.TIME_GATEWAY`.

Deduplication keys (core/dedup.py): ``boot`` (``b``), the device's boot id (an
integer, or a string of at most 64 bytes), and ``seq`` (``s``), the reading's
sequence number within that boot (an integer in 0..2**64-1). Both are optional.
The serial frame payload (docs/serial_format.md) is this shape in msgpack with
the short keys.

Ambiguity of the first byte: 0x80-0x9f is a msgpack map or array and also a
CBOR array, 0xa0-0xbf a CBOR map and also a msgpack string. Detection tries
the likelier format first and the other second; a payload must be consumed
whole by one parser to count as that format, and its values must be readings.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import cbor2

from core import msgpack_codec
from core.errors import InvalidReading, PayloadError
from core.reading import Reading
from core.sample import TIME_KIND_EPOCH, TIME_KIND_NONE, TIME_KIND_UPTIME, Sample, readings_from_samples
from core.senml import looks_like_senml, samples_from_senml

__all__ = [
    "FORMATS",
    "SourceFields",
    "decode_payload",
    "decode_samples",
    "decode_with",
    "parse_payload",
    "readings_from_value",
    "samples_from_value",
    "detect_format",
]

FORMATS = ("auto", "json", "msgpack", "cbor", "senml", "senml-cbor")
MAX_PACK = 10_000
MAX_BOOT_BYTES = 64
_SAFE_BOOT_CHARS = MAX_BOOT_BYTES // 4  # at most 4 bytes a character in UTF-8
_new_object = object.__new__
_Interpreted = TypeVar("_Interpreted")


@dataclass(frozen=True, slots=True)
class SourceFields:
    """What the transport already knows about a message (e.g. from its MQTT topic)."""

    device: str | None = None
    metric: str | None = None


def _parse_json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}", reason="bad_json") from exc


def _parse_msgpack(payload: bytes) -> object:
    try:
        return msgpack_codec.unpackb(payload)
    except msgpack_codec.MsgpackError as exc:
        raise PayloadError(f"payload is not valid msgpack: {exc}", reason="bad_msgpack") from exc


def _parse_cbor(payload: bytes) -> object:
    stream = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError, OverflowError) as exc:
        raise PayloadError(f"payload is not valid CBOR: {exc}", reason="bad_cbor") from exc
    if stream.tell() != len(payload):
        raise PayloadError(f"CBOR payload has {len(payload) - stream.tell()} trailing bytes", reason="bad_cbor")
    return value


_PARSERS = {"json": _parse_json, "msgpack": _parse_msgpack, "cbor": _parse_cbor}
_SENML_FORMATS = {"senml": "json", "senml-cbor": "cbor"}


def detect_format(payload: bytes) -> tuple[str, ...]:
    """Formats to try for a payload, likeliest first."""
    if not payload:
        raise PayloadError("payload is empty", reason="empty")
    first = payload[0]
    if first in b"{[ \t\r\n":
        return ("json",)
    if 0x80 <= first <= 0x9F or first in (0xDC, 0xDD, 0xDE, 0xDF):
        return ("msgpack", "cbor")
    if 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB):
        return ("cbor", "msgpack")
    return ("msgpack", "cbor", "json")


def _candidates(payload: bytes, fmt: str) -> tuple[str, ...]:
    if fmt not in FORMATS:
        raise PayloadError(f"unknown payload format {fmt!r}; allowed: {', '.join(FORMATS)}", reason="bad_format")
    if fmt == "auto":
        return detect_format(payload)
    return (_SENML_FORMATS.get(fmt, fmt),)


def parse_payload(payload: bytes, fmt: str = "auto") -> tuple[str, object]:
    """Parse payload bytes into plain values, with the first format that parses all of it.

    Returns:
        The format that parsed it, and the value.

    Raises:
        PayloadError: no allowed format parses the whole payload.
    """
    errors: list[PayloadError] = []
    for name in _candidates(payload, fmt):
        try:
            return name, _PARSERS[name](payload)
        except PayloadError as exc:
            errors.append(exc)
    raise errors[0]


def _name(value: object, fallback: str | None, what: str) -> str:
    if value is None:
        if fallback is None:
            raise InvalidReading(f"reading has no {what} (neither in the payload nor the topic)", reason=f"missing_{what}", field=what)
        return fallback
    if not isinstance(value, str):
        raise InvalidReading(f"{what} must be a string, got {type(value).__name__}", reason=f"bad_{what}", field=what)
    return value


def _int_field(obj: Mapping[object, object], long: str, short: str, reason: str, limit: int) -> int | None:
    key = long if long in obj else short if short in obj else None
    if key is None:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidReading(f"{key} must be an integer in 0..{limit - 1}, got {value!r}", reason=reason, field=key)
    return value


def _boot(obj: Mapping[object, object]) -> int | str | None:
    key = "boot" if "boot" in obj else "b" if "b" in obj else None
    if key is None:
        return None
    boot = obj[key]
    if isinstance(boot, str):
        if 0 < len(boot.encode("utf-8", "surrogatepass")) <= MAX_BOOT_BYTES:
            return boot
    elif isinstance(boot, int) and not isinstance(boot, bool) and 0 <= boot < 2**64:
        return boot
    raise InvalidReading(
        f"{key} must be an integer in 0..2**64-1 or a string of 1..{MAX_BOOT_BYTES} bytes, got {boot!r}",
        reason="bad_boot",
        field=key,
    )


def _time(obj: Mapping[object, object]) -> tuple[int, int, int | None]:
    """(time_kind, time_ms, sent_up_ms) of one reading object."""
    if "ts" in obj:
        ts = obj["ts"]
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise InvalidReading(f"ts must be integer milliseconds, got {ts!r}", reason="bad_time", field="ts")
        return TIME_KIND_EPOCH, ts, None
    if "t" in obj:
        t = obj["t"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or abs(t) > 2**53:
            raise InvalidReading(f"t must be a number of seconds, got {t!r}", reason="bad_time", field="t")
        return TIME_KIND_EPOCH, round(t * 1000), None
    up = _int_field(obj, "uptime_ms", "up", "bad_time", 2**63)
    if up is not None:
        sent = _int_field(obj, "sent_up_ms", "su", "bad_time", 2**63)
        if sent is not None and sent < up:
            key = "sent_up_ms" if "sent_up_ms" in obj else "su"
            raise InvalidReading(f"{key} {sent} is before the uptime {up} of the sample", reason="bad_time", field=key)
        return TIME_KIND_UPTIME, up, sent
    return TIME_KIND_NONE, 0, None


def _sample_from_object(obj: object, source: SourceFields) -> Sample:
    # The intake's per-object path, so the common keys are looked up here
    # directly; each helper runs only when its keys are present or a value is
    # not of the plain type. The checks and their order are those of the helpers.
    if obj.__class__ is not dict and not isinstance(obj, dict):
        raise InvalidReading(f"a reading must be a map, got {type(obj).__name__}", reason="bad_shape")
    device = obj["device"] if "device" in obj else obj.get("d")
    if device is None and source.device is not None:
        device = source.device  # from the topic, as _name would take it
    elif device.__class__ is not str:
        device = _name(device, source.device, "device")
    if "ts" in obj:
        time_ms = obj["ts"]
        if time_ms.__class__ is not int and (isinstance(time_ms, bool) or not isinstance(time_ms, int)):
            raise InvalidReading(f"ts must be integer milliseconds, got {time_ms!r}", reason="bad_time", field="ts")
        kind, sent_up = TIME_KIND_EPOCH, None
    else:
        kind, time_ms, sent_up = _time(obj)
    # boot and seq, when present, are tested quickly; the helpers (which
    # raise the documented errors) see only what the quick tests do not pass.
    key = "boot" if "boot" in obj else "b" if "b" in obj else None
    boot = None
    if key is not None:
        boot = obj[key]
        if not (boot.__class__ is int and 0 <= boot < 2**64  # type: ignore[operator]
                or boot.__class__ is str and 0 < len(boot) <= _SAFE_BOOT_CHARS):  # type: ignore[arg-type]
            boot = _boot(obj)
    key = "seq" if "seq" in obj else "s" if "s" in obj else None
    seq = None
    if key is not None:
        seq = obj[key]
        if seq.__class__ is not int or not 0 <= seq < 2**64:  # type: ignore[operator]
            seq = _int_field(obj, "seq", "s", "bad_seq", 2**64)
    if "values" in obj:
        values = obj["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidReading("values must be a non-empty map of metric to value", reason="bad_shape", field="values")
        pairs = [
            (metric if metric.__class__ is str else _name(metric, None, "metric"), value) for metric, value in values.items()
        ]
    elif "value" in obj or "v" in obj:
        metric = obj["metric"] if "metric" in obj else obj.get("m")
        if metric is None and source.metric is not None:
            metric = source.metric
        elif metric.__class__ is not str:
            metric = _name(metric, source.metric, "metric")
        pairs = [(metric, obj["value"] if "value" in obj else obj.get("v"))]
    else:
        raise InvalidReading("reading has no value (expected 'value', 'v' or 'values')", reason="missing_value", field="value")
    # Filled in place rather than through the dataclass __init__ (a Python
    # call per object); every field is set, as a test checks.
    sample = _new_object(Sample)
    sample.device = device
    sample.values = pairs
    sample.time_kind = kind
    sample.time_ms = time_ms
    sample.boot = boot
    sample.seq = seq
    sample.sent_up_ms = sent_up
    return sample


def samples_from_value(value: object, source: SourceFields) -> list[Sample]:
    """Interpret parsed values as samples: one reading object, a pack of them, or a SenML pack.

    Raises:
        InvalidReading: the shape or a field is wrong; ``field`` names it.
    """
    if looks_like_senml(value):
        return samples_from_senml(value, source.device, source.metric)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidReading("pack is empty", reason="bad_shape")
    if len(items) > MAX_PACK:
        raise InvalidReading(f"pack of {len(items)} readings exceeds {MAX_PACK}", reason="too_large")
    out: list[Sample] = []
    for index, item in enumerate(items):
        try:
            out.append(_sample_from_object(item, source))
        except InvalidReading as exc:
            if len(items) > 1:
                raise InvalidReading(f"pack item {index}: {exc}", reason=exc.reason, field=exc.field) from exc
            raise
    return out


def readings_from_value(value: object, source: SourceFields, received_ms: int) -> list[Reading]:
    """Interpret parsed values as readings (one object, or an array of them).

    Uptimes are mapped without memory of the device (:func:`~core.sample.naive_uptime`).

    Raises:
        InvalidReading: the shape or a field is wrong; ``field`` names it.
    """
    return _readings(samples_from_value(value, source), received_ms)


def _readings(samples: list[Sample], received_ms: int) -> list[Reading]:
    try:
        return readings_from_samples(samples, received_ms)
    except InvalidReading as exc:
        if len(samples) > 1:
            raise InvalidReading(f"in a pack: {exc}", reason=exc.reason, field=exc.field) from exc
        raise


def decode_samples(payload: bytes, source: SourceFields, fmt: str = "auto") -> list[Sample]:
    """Decode a sensor payload into samples; all of them or none.

    Raises:
        PayloadError: the bytes are not the format.
        InvalidReading: the values are not readings.
    """
    return decode_with(payload, source, fmt, samples_from_value)


def decode_with(
    payload: bytes, source: SourceFields, fmt: str, interpret: Callable[[object, SourceFields], _Interpreted]
) -> list[Sample] | _Interpreted:
    """Decode a sensor payload with ``interpret`` turning parsed values into samples (or another form of them).

    ``interpret`` must raise :class:`InvalidReading` for exactly the values
    :func:`samples_from_value` rejects: format detection counts a format only
    if its values are readings. SenML formats are interpreted as SenML.

    Raises:
        PayloadError: the bytes are not the format.
        InvalidReading: the values are not readings.
    """
    # With detection, a format only counts if its values are readings: the
    # first bytes of msgpack and CBOR overlap, and the wrong parser can
    # sometimes consume a payload whole.
    if fmt in _SENML_FORMATS:
        value = _PARSERS[_SENML_FORMATS[fmt]](payload)
        return samples_from_senml(value, source.device, source.metric)
    errors: list[PayloadError | InvalidReading] = []
    for name in _candidates(payload, fmt):
        try:
            return interpret(_PARSERS[name](payload), source)
        except (PayloadError, InvalidReading) as exc:
            errors.append(exc)
    # A format that parsed but held no readings explains more than one that did not parse.
    raise next((e for e in errors if isinstance(e, InvalidReading)), errors[0])


def decode_payload(payload: bytes, source: SourceFields, received_ms: int, fmt: str = "auto") -> list[Reading]:
    """Decode a sensor payload into readings; all of them or none.

    Uptimes are mapped without memory of the device; the intake
    (core/intake.py) maps them with core/devicetime.py instead.

    Raises:
        PayloadError: the bytes are not the format.
        InvalidReading: the values are not readings.
    """
    return _readings(decode_samples(payload, source, fmt), received_ms)
