"""Packs of plain reading objects, read a column at a time.

How this works: most packs a site sends are arrays of objects of one shape,
``[{"ts": 1767225600000, "m": "temp_c", "v": 21.5}, ...]``. The general
interpreter (core/codecs.py) turns each object into a Sample and each Sample
into Readings, a few Python calls per object. Here a pack is first checked to
be of one plain shape: every item a map with the same keys, and those keys one
of the shapes below. Then each field is pulled out of all items at once
(``map(itemgetter(key), items)``, which runs in C), and each column is checked
in a few passes of builtins: its set of types, its shortest and longest
string, its smallest and largest number.

A pack that passes every check is one the general interpreter accepts with
exactly these fields, in this order; :func:`pack_columns` then returns its
:class:`Columns`. Anything else (another key, a ``t`` or uptime time, a
``values`` map, a value out of the plain range, a name too long to be sure of
without encoding it) returns None, and the pack takes the general path, which
decides it and, if it is bad, names the field. So this module never rejects
a pack; it only recognises the ones that are plainly good.

The shapes: ``ts`` (integer milliseconds since the epoch) and ``v`` or
``value``; ``m`` or ``metric`` unless the topic names the metric; ``d`` or
``device`` unless the topic names the device; optionally ``b`` or ``boot``,
and ``s`` or ``seq``. Every item has the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from operator import itemgetter
from typing import Any

# The limits under which a string needs no encoding to be within its byte
# limit, and the millisecond range, are the ones the general path tests with.
from core.codecs import _SAFE_BOOT_CHARS, MAX_PACK, SourceFields
from core.reading import _MAX_TS, _SAFE_NAME_CHARS, SERIES_LAYOUT_MIN_TS, Value, _plain_value

__all__ = ["Columns", "pack_columns", "plain_item"]

_INT_VALUE_MIN, _INT_VALUE_END = -(2**63), 2**64  # a value may be int64 or uint64
_SEQ_END = 2**64
_INT = {int}
_FLOAT = {float}
_STR = {str}
_DICT = {dict}


@dataclass(frozen=True, slots=True)
class _Shape:
    """Getters of each field from a plain item (None: the items do not carry it)."""

    value: itemgetter[Any]
    metric: itemgetter[Any] | None
    device: itemgetter[Any] | None
    boot: itemgetter[Any] | None
    seq: itemgetter[Any] | None


def _shapes() -> dict[frozenset[object], _Shape]:
    shapes: dict[frozenset[object], _Shape] = {}
    for value, metric, device, boot, seq in product(
        ("v", "value"), ("m", "metric", None), ("d", "device", None), ("b", "boot", None), ("s", "seq", None)
    ):
        keys = frozenset(k for k in ("ts", value, metric, device, boot, seq) if k is not None)
        shapes[keys] = _Shape(*(None if key is None else itemgetter(key) for key in (value, metric, device, boot, seq)))
    return shapes


_SHAPES = _shapes()
_get_ts = itemgetter("ts")


@dataclass(frozen=True, slots=True)
class Columns:
    """The fields of a plainly good pack, one list per field, all of one length.

    Every time is device-clock epoch milliseconds in 0..2**63-1; every device
    and metric a string of 1..63 characters; every value a finite float, an
    int64 or uint64, a bool or a string of at most 1,024 characters. ``boots``
    and ``seqs`` are None when the items carry none.
    """

    devices: list[str]
    metrics: list[str]
    times: list[int]
    values: list[Value]
    boots: list[int | str] | None
    seqs: list[int] | None
    #: The one (device, metric) of every item, if they all name the same.
    series: tuple[str, str] | None = None
    #: Every value a float and every time at least
    #: :data:`core.reading.SERIES_LAYOUT_MIN_TS`: with one ``series``, the
    #: records can be encoded by :func:`core.reading.encode_series_payloads`.
    nine_byte_fields: bool = False


def _plain_names(names: list[str]) -> set[str] | None:
    """The distinct names of a column if all are plain, else None."""
    # A column of names holds a few distinct ones (often one object repeated):
    # one pass to the set of them, then the checks on that set only.
    try:
        distinct = {*names}
    except TypeError:  # an unhashable name (a list, a map)
        return None
    if all(name.__class__ is str and 0 < len(name) <= _SAFE_NAME_CHARS for name in distinct):
        return distinct
    return None


def _values_plain(values: list[object], kinds: set[type]) -> bool:
    """Whether every value is plain; ``kinds`` is the set of their types."""
    if kinds == _FLOAT:
        total = sum(values)  # type: ignore[arg-type]
        # inf or nan anywhere makes the sum inf or nan; a sum of finite values
        # that overflows is a false alarm, and the general path accepts it.
        return total - total == 0.0  # type: ignore[no-any-return]
    if kinds == _INT:
        return _INT_VALUE_MIN <= min(values) and max(values) < _INT_VALUE_END  # type: ignore[type-var, operator]
    return all(map(_plain_value, values))


def _boots_plain(boots: list[object]) -> bool:
    kinds = {*map(type, boots)}
    if kinds == _INT:
        return 0 <= min(boots) and max(boots) < _SEQ_END  # type: ignore[type-var, operator]
    if kinds == _STR:
        return all(0 < len(boot) <= _SAFE_BOOT_CHARS for boot in {*boots})  # type: ignore[arg-type]
    return kinds == {int, str} and all(
        0 <= boot < _SEQ_END if boot.__class__ is int else 0 < len(boot) <= _SAFE_BOOT_CHARS  # type: ignore[operator, arg-type]
        for boot in boots
    )


def pack_columns(value: object, source: SourceFields) -> Columns | None:
    """The columns of a parsed pack (or single object) of plain reading objects; None if it needs the general path.

    ``value`` is what a parser returned for a payload; ``source`` what the
    topic named. Never raises on any value a parser returns.
    """
    items = value if value.__class__ is list else [value] if value.__class__ is dict else None
    if not items or len(items) > MAX_PACK or {*map(type, items)} != _DICT:  # type: ignore[arg-type]
        return None
    first = items[0]  # type: ignore[index]
    shape = _SHAPES.get(frozenset(first))
    if shape is None or {*map(len, items)} != {len(first)}:  # type: ignore[arg-type]
        return None
    count = len(items)  # type: ignore[arg-type]
    try:
        # Same length and every key of the shape present: every item has exactly the shape's keys.
        times = list(map(_get_ts, items))  # type: ignore[arg-type]
        values = list(map(shape.value, items))  # type: ignore[arg-type]
        metrics = list(map(shape.metric, items)) if shape.metric else None  # type: ignore[arg-type]
        devices = list(map(shape.device, items)) if shape.device else None  # type: ignore[arg-type]
        boots = list(map(shape.boot, items)) if shape.boot else None  # type: ignore[arg-type]
        seqs = list(map(shape.seq, items)) if shape.seq else None  # type: ignore[arg-type]
    except KeyError:
        return None
    # A name the topic gives is checked once, not once per item.
    if metrics is None:
        if source.metric is None:
            return None
        metric_names = _plain_names([source.metric])
        metrics = [source.metric] * count
    else:
        metric_names = _plain_names(metrics)
    if devices is None:
        if source.device is None:
            return None
        device_names = _plain_names([source.device])
        devices = [source.device] * count
    else:
        device_names = _plain_names(devices)
    if {*map(type, times)} != _INT:
        return None
    earliest = min(times)
    if not (
        0 <= earliest and max(times) <= _MAX_TS and metric_names and device_names
        and _values_plain(values, value_kinds := {*map(type, values)})
        and (boots is None or _boots_plain(boots))
        and (seqs is None or {*map(type, seqs)} == _INT and 0 <= min(seqs) and max(seqs) < _SEQ_END)
    ):
        return None
    series = (devices[0], metrics[0]) if len(device_names) == 1 and len(metric_names) == 1 else None
    nine_byte_fields = value_kinds == _FLOAT and earliest >= SERIES_LAYOUT_MIN_TS
    return Columns(devices, metrics, times, values, boots, seqs, series, nine_byte_fields)


def plain_item(item: dict[Any, Any], source: SourceFields) -> tuple[str, str, int, Value] | None:
    """``(device, metric, ts, value)`` of one plainly good reading object without boot or sequence; else None.

    The single-object counterpart of :func:`pack_columns`, with the same
    checks made on scalars: for one object, a dozen builtin calls over
    columns of one would cost more than the general interpreter.
    """
    shape = _SHAPES.get(frozenset(item))
    if shape is None or shape.boot is not None or shape.seq is not None:
        return None
    ts = item["ts"]
    value = shape.value(item)
    metric = shape.metric(item) if shape.metric else source.metric
    device = shape.device(item) if shape.device else source.device
    if (
        ts.__class__ is int and 0 <= ts <= _MAX_TS
        and metric.__class__ is str and 0 < len(metric) <= _SAFE_NAME_CHARS  # type: ignore[arg-type]
        and device.__class__ is str and 0 < len(device) <= _SAFE_NAME_CHARS  # type: ignore[arg-type]
        and _plain_value(value)
    ):
        return device, metric, ts, value  # type: ignore[return-value]
    return None
