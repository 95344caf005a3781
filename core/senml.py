"""SenML (RFC 8428) packs in, samples out: the JSON and CBOR representations.

Theory of operation: a SenML pack is an array of records. A record may carry
*base fields* (``bn``, ``bt``, ``bu``, ``bv``, ``bs``, ``bver``) that apply to
it and to every later record until another record changes them. Resolving a
record adds the base name to its name, the base time to its time, the base
value to its value and the base sum to its sum (RFC 8428 section 4.6). The
CBOR representation uses the integer labels of RFC 8428 table 4 (section 6)
for the same fields, and string labels for anything else, so one interpreter
serves both after :data:`CBOR_LABELS` turns integers into names.

Each resolved record becomes one :class:`~core.sample.Sample` with one value:

* **device and metric** come from the name, by this rule (docs/ingest.md,
  "SenML names"):

  1. with a non-empty base name in effect, the device is the base name without
     one trailing separator (``/``, ``:`` or ``.``) and the metric is the
     record's own name ``n``; ``bn "urn:dev:mac:0024befffe804ff1/"`` with
     ``n "temp"`` is device ``urn:dev:mac:0024befffe804ff1``, metric ``temp``.
     A record without ``n`` takes the topic's ``{metric}``.
  2. without a base name, the topic's ``{device}``, when the route has one, is
     the device and ``n`` the metric;
  3. otherwise ``n`` is split at its last ``/`` or ``:``:
     ``"urn:dev:ow:10e2073a01080063:voltage"`` is device
     ``urn:dev:ow:10e2073a01080063``, metric ``voltage``.

* **time**: ``bt + t`` in seconds. At or above 2**28 it is absolute (seconds
  since the Unix epoch) and stays the device's time. Below 2**28 it is relative
  to "now" (a negative value is in the past), so it is mapped onto the
  gateway's time of receipt. With neither ``bt`` nor ``t`` the gateway's time
  stands in.
* **value**: exactly one of ``v`` (number, plus ``bv``), ``vs`` (string) or
  ``vb`` (boolean). ``vd`` (binary data) is rejected: a reading holds a
  number, a boolean or a string. A sum ``s`` (plus ``bs``) becomes a second
  reading whose metric ends in ``_sum``; a record may hold only a sum.
* Units (``u``, ``bu``) and update times (``ut``) are read but not kept: the
  reading model has no place for them.
* A record that carries only base fields (no name, no value) sets the base
  fields and yields nothing, a common producer habit the RFC does not forbid
  outright.
* ``bver`` above 10 and any unknown label ending in ``_`` (a must-understand
  extension, RFC 8428 section 4.4) reject the whole pack.

All of a pack is accepted or none of it; every rejection names the field.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from core.errors import InvalidReading
from core.sample import TIME_KIND_EPOCH, TIME_KIND_NONE, TIME_KIND_RELATIVE, Sample

__all__ = [
    "CBOR_LABELS",
    "SENML_VERSION",
    "RELATIVE_TIME_LIMIT_S",
    "looks_like_senml",
    "samples_from_senml",
]

# RFC 8428 table 4: the conclusive set of integer labels of the CBOR representation.
CBOR_LABELS = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}
_LABELS = frozenset(CBOR_LABELS.values())
SENML_VERSION = 10  # the version RFC 8428 defines; a pack with a higher bver is refused
RELATIVE_TIME_LIMIT_S = 2**28  # RFC 8428 section 4.5.3: below this, times are relative to now
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:./_-]*\Z")
_BASE_SEPARATORS = "/:."
_SPLIT = re.compile(r"^(.+)[/:]([^/:]+)\Z")
MAX_RECORDS = 10_000
MAX_TIME_S = 9.2e15  # what fits in signed 64-bit milliseconds


def _label(key: object) -> str | None:
    """The string label of a map key, or None for an unknown integer label (ignored)."""
    if type(key) is int:
        return CBOR_LABELS.get(key)
    if isinstance(key, str):
        return key
    return None


def looks_like_senml(value: object) -> bool:
    """Whether parsed values have the shape of a SenML pack (for format detection).

    A pack is an array of maps whose keys are all SenML labels (string or
    CBOR integer), with a name (``n`` or ``bn``) somewhere. Our own reading
    shape shares ``t`` and ``v`` with SenML but never uses ``n`` or ``bn``, and
    uses keys SenML does not have (``d``, ``ts``, ``values``...).
    """
    if not isinstance(value, list) or not value:
        return False
    named = False
    for record in value:
        if not isinstance(record, dict) or not record:
            return False
        for key in record:
            label = _label(key)
            if label is None:
                if type(key) is int:
                    continue
                return False
            if label not in _LABELS and not label.endswith("_"):
                return False
            if label in ("n", "bn"):
                named = True
    return named


def _number(record: dict[str, object], label: str) -> int | float | None:
    if label not in record:
        return None
    value = record[label]
    if isinstance(value, Decimal):  # CBOR tag 4, a decimal fraction
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidReading(f"{label} must be a number, got {type(value).__name__}", reason=_reason(label), field=label)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidReading(f"{label} must be finite, got {value!r}", reason=_reason(label), field=label)
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise InvalidReading(f"{label} {value} does not fit 64 bits", reason=_reason(label), field=label)
    return value


def _reason(label: str) -> str:
    return "bad_time" if label in ("t", "bt", "ut") else "bad_value"


def _string(record: dict[str, object], label: str, reason: str) -> str | None:
    if label not in record:
        return None
    value = record[label]
    if not isinstance(value, str):
        raise InvalidReading(f"{label} must be a string, got {type(value).__name__}", reason=reason, field=label)
    return value


def _normalise(record: object) -> dict[str, object]:
    if not isinstance(record, dict):
        raise InvalidReading(f"a SenML record must be a map, got {type(record).__name__}", reason="bad_shape")
    out: dict[str, object] = {}
    for key, value in record.items():
        label = _label(key)
        if label is None:
            if type(key) is int:
                continue  # an integer label RFC 8428 does not define: ignored like any unknown label
            raise InvalidReading(f"SenML labels must be strings or integers, got {type(key).__name__}", reason="bad_shape")
        if label in out:
            raise InvalidReading(f"label {label} appears twice", reason="bad_shape", field=label)
        out[label] = value
    return out


class _Base:
    """The base fields in effect while walking a pack."""

    __slots__ = ("name", "time", "has_time", "value", "sum", "version")

    def __init__(self) -> None:
        self.name = ""
        self.time: int | float = 0
        self.has_time = False
        self.value: int | float = 0
        self.sum: int | float = 0
        self.version = SENML_VERSION

    def update(self, record: dict[str, object]) -> None:
        if "bver" in record:
            bver = record["bver"]
            if isinstance(bver, bool) or not isinstance(bver, int) or bver < 1:
                raise InvalidReading(f"bver must be a positive integer, got {bver!r}", reason="bad_version", field="bver")
            if bver > SENML_VERSION:
                raise InvalidReading(
                    f"SenML version {bver} is newer than the supported {SENML_VERSION}",
                    reason="unsupported_version",
                    field="bver",
                )
            self.version = bver
        bn = _string(record, "bn", "bad_name")
        if bn is not None:
            self.name = bn
        bt = _number(record, "bt")
        if bt is not None:
            self.time = bt
            self.has_time = True
        bv = _number(record, "bv")
        if bv is not None:
            self.value = bv
        bs = _number(record, "bs")
        if bs is not None:
            self.sum = bs
        _string(record, "bu", "bad_unit")


def _device_and_metric(base_name: str, name: str, topic_device: str | None, topic_metric: str | None) -> tuple[str, str]:
    full = base_name + name
    if not _NAME.match(full):
        field = "n" if name else "bn"
        raise InvalidReading(
            f"SenML name {full!r} must start with a letter or digit and hold only A-Z a-z 0-9 - : . / _",
            reason="bad_name",
            field=field,
        )
    if base_name:
        device = base_name[:-1] if base_name[-1] in _BASE_SEPARATORS and len(base_name) > 1 else base_name
        metric = name or topic_metric
        if not metric:
            raise InvalidReading(
                f"record under base name {base_name!r} has no name n, and the topic gives no metric",
                reason="missing_metric",
                field="n",
            )
        return device, metric
    if topic_device is not None:
        return topic_device, name
    split = _SPLIT.match(name)
    if split is None:
        raise InvalidReading(
            f"SenML name {name!r} names no device: use a base name, a name like 'dev:metric', or a {{device}} topic",
            reason="missing_device",
            field="n",
        )
    return split.group(1), split.group(2)


def _add(base: int | float, value: int | float, label: str) -> int | float:
    if not base:
        return value
    total = base + value
    if isinstance(total, float) and not math.isfinite(total):
        raise InvalidReading(f"{label} plus its base value overflows", reason="bad_value", field=label)
    return total


def _value(record: dict[str, object], base: _Base) -> tuple[str, object] | None:
    present = [label for label in ("v", "vs", "vb", "vd") if label in record]
    if len(present) > 1:
        raise InvalidReading(f"record has more than one value field: {', '.join(present)}", reason="bad_value", field=present[1])
    if not present:
        return None
    label = present[0]
    if label == "v":
        v = _number(record, "v")
        if v is None:
            return None
        return "v", _add(base.value, v, "v")
    if label == "vs":
        return "vs", _string(record, "vs", "bad_value")
    if label == "vb":
        vb = record["vb"]
        if not isinstance(vb, bool):
            raise InvalidReading(f"vb must be a boolean, got {type(vb).__name__}", reason="bad_value", field="vb")
        return "vb", vb
    raise InvalidReading(
        "data values (vd) are not supported: a reading holds a number, a boolean or a string",
        reason="bad_value",
        field="vd",
    )


def samples_from_senml(value: object, topic_device: str | None, topic_metric: str | None) -> list[Sample]:
    """Resolve a parsed SenML pack into samples, one per value.

    Args:
        value: the parsed pack (from JSON, or from CBOR with integer labels).
        topic_device: the topic's ``{device}``, if the route has one.
        topic_metric: the topic's ``{metric}``, if the route has one.

    Returns:
        A list of :class:`~core.sample.Sample`, in record order.

    Raises:
        InvalidReading: the pack is not valid SenML or holds a value a reading
            cannot; ``field`` names the SenML label and the message the record.
    """
    if not isinstance(value, list) or not value:
        raise InvalidReading("a SenML pack must be a non-empty array of records", reason="bad_shape")
    if len(value) > MAX_RECORDS:
        raise InvalidReading(f"SenML pack of {len(value)} records exceeds {MAX_RECORDS}", reason="too_large")
    base = _Base()
    samples: list[Sample] = []
    for index, raw in enumerate(value):
        try:
            record = _normalise(raw)
            for label in record:
                if label.endswith("_"):
                    raise InvalidReading(
                        f"unknown must-understand label {label}", reason="unknown_label", field=label
                    )
            base.update(record)
            name = _string(record, "n", "bad_name")
            found = _value(record, base)
            total = _number(record, "s")
            _number(record, "ut")
            if found is None and total is None:
                if name is None:
                    continue  # base fields only
                raise InvalidReading("record has no value (v, vs, vb) or sum (s)", reason="missing_value", field="v")
            device, metric = _device_and_metric(base.name, name or "", topic_device, topic_metric)
            t = _number(record, "t")
            if t is None and not base.has_time:
                kind, time_ms = TIME_KIND_NONE, 0
            else:
                seconds = base.time + (t or 0)
                if not abs(seconds) < MAX_TIME_S:  # also catches a sum that overflowed to inf
                    raise InvalidReading(f"time {seconds!r} s is out of range", reason="bad_time", field="t")
                time_ms = round(seconds * 1000)
                kind = TIME_KIND_EPOCH if seconds >= RELATIVE_TIME_LIMIT_S else TIME_KIND_RELATIVE
            values: list[tuple[str, object]] = []
            if found is not None:
                values.append((metric, found[1]))
            if total is not None:
                values.append((metric + "_sum", _add(base.sum, total, "s")))
            samples.append(Sample(device, values, kind, time_ms))
        except InvalidReading as exc:
            raise InvalidReading(f"SenML record {index}: {exc}", reason=exc.reason, field=exc.field) from exc
    if not samples:
        raise InvalidReading("SenML pack holds no values", reason="missing_value", field="v")
    return samples
