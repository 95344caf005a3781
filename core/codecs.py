"""Sensor payload codecs: JSON, msgpack and CBOR bytes in, readings out.

How this works: a payload is first turned into plain values by one of three
parsers (chosen per topic, or detected from the first byte), then one shared
interpreter turns those values into :class:`~core.reading.Reading` objects. So
every format accepts the same shapes and rejects bad input with the same
reasons.

Accepted shapes (a key may be given long or short):

* one reading: ``{"device": "n1", "metric": "temp_c", "ts": 1700000000000, "value": 21.5}``
* several metrics of one device at one time:
  ``{"device": "n1", "ts": 1700000000000, "values": {"temp_c": 21.5, "rh": 40}}``
* a pack: an array of either of the above.

``device`` (``d``) and ``metric`` (``m``) may be left out when the topic
template supplies them. Time is ``ts`` in integer milliseconds since the Unix
epoch, or ``t`` in seconds (int or float). With neither, the gateway's receive
time stands in and the reading is marked :data:`~core.reading.TIME_GATEWAY`.

Ambiguity of the first byte: 0x80-0x9f is a msgpack map or array and also a
CBOR array, 0xa0-0xbf a CBOR map and also a msgpack string. Detection tries
the likelier format first and the other second; a payload must be consumed
whole by one parser to count as that format.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2
import umsgpack

from core.errors import InvalidReading, PayloadError
from core.reading import TIME_DEVICE, TIME_GATEWAY, Reading

__all__ = ["FORMATS", "SourceFields", "decode_payload", "parse_payload", "readings_from_value", "detect_format"]

FORMATS = ("auto", "json", "msgpack", "cbor")
MAX_PACK = 10_000


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
    stream = io.BytesIO(payload)
    try:
        value = umsgpack.unpack(stream)
    except (umsgpack.UnpackException, ValueError, TypeError, IndexError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid msgpack: {exc}", reason="bad_msgpack") from exc
    if stream.tell() != len(payload):
        raise PayloadError(f"msgpack payload has {len(payload) - stream.tell()} trailing bytes", reason="bad_msgpack")
    return value


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
    return detect_format(payload) if fmt == "auto" else (fmt,)


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


def _pick(obj: Mapping[object, object], long: str, short: str) -> object:
    return obj[long] if long in obj else obj.get(short)


def _name(value: object, fallback: str | None, what: str) -> str:
    if value is None:
        if fallback is None:
            raise InvalidReading(f"reading has no {what} (neither in the payload nor the topic)", reason=f"missing_{what}", field=what)
        return fallback
    if not isinstance(value, str):
        raise InvalidReading(f"{what} must be a string, got {type(value).__name__}", reason=f"bad_{what}", field=what)
    return value


def _time(obj: Mapping[object, object], received_ms: int) -> tuple[int, int]:
    if "ts" in obj:
        ts = obj["ts"]
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise InvalidReading(f"ts must be integer milliseconds, got {ts!r}", reason="bad_time", field="ts")
        return ts, TIME_DEVICE
    if "t" in obj:
        t = obj["t"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise InvalidReading(f"t must be a number of seconds, got {t!r}", reason="bad_time", field="t")
        return round(t * 1000), TIME_DEVICE
    return received_ms, TIME_GATEWAY


def _readings_from_object(obj: object, source: SourceFields, received_ms: int) -> list[Reading]:
    if not isinstance(obj, dict):
        raise InvalidReading(f"a reading must be a map, got {type(obj).__name__}", reason="bad_shape")
    device = _name(_pick(obj, "device", "d"), source.device, "device")
    ts_ms, time_source = _time(obj, received_ms)
    if "values" in obj:
        values = obj["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidReading("values must be a non-empty map of metric to value", reason="bad_shape", field="values")
        return [
            Reading(device, _name(metric, None, "metric"), ts_ms, value, received_ms, time_source)
            for metric, value in values.items()
        ]
    if "value" in obj or "v" in obj:
        metric = _name(_pick(obj, "metric", "m"), source.metric, "metric")
        return [Reading(device, metric, ts_ms, _pick(obj, "value", "v"), received_ms, time_source)]  # type: ignore[arg-type]
    raise InvalidReading("reading has no value (expected 'value', 'v' or 'values')", reason="missing_value", field="value")


def readings_from_value(value: object, source: SourceFields, received_ms: int) -> list[Reading]:
    """Interpret parsed values as readings (one object, or an array of them).

    Raises:
        InvalidReading: the shape or a field is wrong; ``field`` names it.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidReading("pack is empty", reason="bad_shape")
    if len(items) > MAX_PACK:
        raise InvalidReading(f"pack of {len(items)} readings exceeds {MAX_PACK}", reason="too_large")
    out: list[Reading] = []
    for index, item in enumerate(items):
        try:
            out.extend(_readings_from_object(item, source, received_ms))
        except InvalidReading as exc:
            if len(items) > 1:
                raise InvalidReading(f"pack item {index}: {exc}", reason=exc.reason, field=exc.field) from exc
            raise
    return out


def decode_payload(payload: bytes, source: SourceFields, received_ms: int, fmt: str = "auto") -> list[Reading]:
    """Decode a sensor payload into readings; all of them or none.

    Raises:
        PayloadError: the bytes are not the format.
        InvalidReading: the values are not readings.
    """
    # With detection, a format only counts if its values are readings: the
    # first bytes of msgpack and CBOR overlap, and the wrong parser can
    # sometimes consume a payload whole.
    errors: list[PayloadError | InvalidReading] = []
    for name in _candidates(payload, fmt):
        try:
            return readings_from_value(_PARSERS[name](payload), source, received_ms)
        except (PayloadError, InvalidReading) as exc:
            errors.append(exc)
    # A format that parsed but held no readings explains more than one that did not parse.
    raise next((e for e in errors if isinstance(e, InvalidReading)), errors[0])
