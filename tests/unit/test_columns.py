"""The column path for packs (core/columns.py) decides exactly as the general interpreter does.

The property: a run of messages through an Intake reading packs a column at a
time and through one sending every pack through the general interpreter gives
the same result for each message (readings, records byte for byte, duplicates,
dead-letter reasons and texts) and leaves the same dedup state. The generated
packs are mostly plain, so the column path is taken, with a few items bent in
each of the ways that must send a pack to the general path.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.codecs import SourceFields
from core.columns import pack_columns
from core.dedup import ContentDedup, DUPLICATE, NEW
from core.errors import LocalError
from core.intake import Accepted, Duplicate, Intake, Rejected
from core.topics import Route, TopicTemplate

ROUTES = (
    Route(TopicTemplate("sensors/{device}/{metric}"), "by-metric"),
    Route(TopicTemplate("sensors/{device}"), "by-device"),
    Route(TopicTemplate("fleet"), "fleet"),
)
T0 = 1_767_225_600_000

plain_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=8),
)
odd_values = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(1e308), st.integers(2**64, 2**70),
    st.integers(-(2**70), -(2**63) - 1), st.text(min_size=1025, max_size=1100), st.none(), st.lists(st.integers(), max_size=2),
)
odd_times = st.one_of(
    st.integers(-(2**40), -1), st.just(2**63), st.just(True), st.floats(0, 2e12), st.none(), st.just("1767225600000"),
)
odd_names = st.one_of(st.just(""), st.text(min_size=64, max_size=70), st.integers(0, 9), st.none(), st.just("é" * 70))


@st.composite
def items(draw: st.DrawFn, keys: dict[str, str], numbered: bool, index: int, series: tuple[int, bool]) -> dict[Any, Any]:
    """One reading object of the pack's shape; now and then bent out of it.

    ``series``: the pack's first time, and whether it is of one series (one
    metric, one device, float values), the records core/reading.py encodes
    with one struct layout when every time is at least 2**32.
    """
    base, one_series = series
    values = st.floats(allow_nan=False, allow_infinity=False, width=64) if one_series else plain_values
    item: dict[Any, Any] = {"ts": base + draw(st.integers(0, 40)), keys["value"]: draw(values)}
    if keys["metric"]:
        item[keys["metric"]] = "temp_c" if one_series else draw(st.sampled_from(["temp_c", "rh", "p"]))
    if keys["device"]:
        item[keys["device"]] = "n1" if one_series else draw(st.sampled_from(["n1", "n2"]))
    if numbered:
        item[keys["boot"]] = draw(st.one_of(st.sampled_from([1, 2]), st.just("boot-a")))
        item[keys["seq"]] = index + draw(st.integers(0, 3))
    if draw(st.integers(0, 15)) == 0:
        bend = draw(st.sampled_from(["value", "time", "name", "extra", "drop", "boot", "seq"]))
        if bend == "value":
            item[keys["value"]] = draw(odd_values)
        elif bend == "time":
            item["ts"] = draw(odd_times)
        elif bend == "name" and (keys["metric"] or keys["device"]):
            item[keys["metric"] or keys["device"]] = draw(odd_names)
        elif bend == "extra":
            item[draw(st.sampled_from(["t", "values", "up", "x", "value", "v", "device"]))] = 1
        elif bend == "drop":
            del item["ts"]
        elif bend == "boot" and numbered:
            item[keys["boot"]] = draw(st.one_of(st.just(-1), st.just(True), st.just(""), st.text(min_size=17, max_size=20)))
        elif bend == "seq" and numbered:
            item[keys["seq"]] = draw(st.one_of(st.just(-1), st.just(2**64), st.just(1.5)))
    return item


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(["sensors/n1/temp_c", "sensors/n2", "fleet"]))
    keys = {
        "value": draw(st.sampled_from(["v", "value"])),
        "metric": None if topic.count("/") == 2 and draw(st.booleans()) else draw(st.sampled_from(["m", "metric"])),
        "device": None if topic != "fleet" and draw(st.booleans()) else draw(st.sampled_from(["d", "device"])),
        "boot": draw(st.sampled_from(["b", "boot"])),
        "seq": draw(st.sampled_from(["s", "seq"])),
    }
    numbered = draw(st.booleans())
    size = draw(st.integers(1, 16))
    series = (draw(st.sampled_from([T0, 2**32 - 20, 2**32])), draw(st.booleans()))
    pack = [draw(items(keys, numbered, i, series)) for i in range(size)]
    value: object = pack[0] if size == 1 and draw(st.booleans()) else pack
    fmt = draw(st.sampled_from(["msgpack", "json", "cbor"]))
    if fmt == "json":
        try:
            return topic, json.dumps(value).encode()
        except (TypeError, ValueError):
            fmt = "msgpack"
    if fmt == "msgpack":
        try:
            return topic, msgpack.packb(value)
        except OverflowError:  # an integer beyond 64 bits: CBOR carries it
            pass
    return topic, cbor2.dumps(value)


def outcome(result: Accepted | Rejected | Duplicate) -> object:
    if isinstance(result, Rejected):
        return ("rejected", result.letter.reason, result.letter.message)
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=12), st.booleans(), st.booleans())
def test_the_column_path_decides_as_the_general_path(
    batch: list[tuple[str, bytes]], content_dedup: bool, repeat: bool
) -> None:
    if repeat:
        batch = batch + batch[: len(batch) // 2 + 1]  # redeliveries, to be dropped by both
    columns = Intake(ROUTES, content_dedup=content_dedup)
    general = Intake(ROUTES, content_dedup=content_dedup, columns=False)
    for index, (topic, payload) in enumerate(batch):
        received = T0 + 1_000 + index
        ours = columns.classify("mqtt", topic, payload, received)
        theirs = general.classify("mqtt", topic, payload, received)
        assert outcome(ours) == outcome(theirs), (topic, payload)
    assert (columns.dedup.duplicates, columns.dedup.stale, columns.content.duplicates) == (
        general.dedup.duplicates, general.dedup.stale, general.content.duplicates)
    assert len(columns.dedup) == len(general.dedup)
    assert len(columns.content) == len(general.content)


def test_plain_packs_take_the_column_path() -> None:
    pack = [{"ts": T0 + i, "m": "temp_c", "v": 20.5 + i} for i in range(100)]
    columns = pack_columns(pack, SourceFields(device="n1"))
    assert columns is not None
    assert columns.devices == ["n1"] * 100 and columns.metrics == ["temp_c"] * 100
    assert columns.times == [T0 + i for i in range(100)] and columns.boots is None and columns.seqs is None
    numbered = pack_columns([{"ts": T0, "d": "n2", "v": 1, "b": 7, "s": 3}], SourceFields(metric="rh"))
    assert numbered is not None and (numbered.boots, numbered.seqs, numbered.metrics) == ([7], [3], ["rh"])


@pytest.mark.parametrize("value", [
    [{"ts": T0, "m": "a", "v": 1}, {"ts": T0, "m": "a", "value": 1}],  # two shapes
    [{"ts": T0, "m": "a", "v": 1, "x": 2}],  # a key of no shape
    [{"t": 1.5, "m": "a", "v": 1}],  # seconds: the general path converts them
    [{"ts": T0, "v": 1}],  # no metric, and the topic names none
    [{"ts": -1, "m": "a", "v": 1}],  # before 1970
    [{"ts": T0, "m": "a", "v": float("inf")}],
    [{"ts": T0, "m": "a" * 64, "v": 1}],  # may be valid, but only the general path can tell
    [{"ts": T0, "m": "a", "v": 1}, 5],
    [], {"ts": T0}, 5, "text", None,
])
def test_anything_not_plainly_good_takes_the_general_path(value: object) -> None:
    assert pack_columns(value, SourceFields(device="n1")) is None


def test_content_dedup_judges_a_pack_as_it_judges_key_by_key() -> None:
    bulk, single = ContentDedup(max_keys=8), ContentDedup(max_keys=8)
    packs = [[("n1", "t", ts, float(ts)) for ts in range(start, start + 3)] for start in (0, 2, 2, 5, 9, 0)]
    packs.append([("n1", "t", 50, 1), ("n1", "t", 50, 1)])  # a repeat inside one pack
    packs.append([("n1", "t", 60, 1), ("n1", "t", 60, 2)])  # two readings at one time
    packs.append([("n1", "t", 60, 2), ("n1", "t", 60, 2.0), ("n1", "t", 60, True)])  # equal values of other types
    packs.append([("n1", "t", 70, 1), ("n2", "t", 70, 1)])  # two series
    for pack in packs:
        devices, metrics, times, values = (list(column) for column in zip(*pack))
        verdicts = bulk.fresh_columns(devices, metrics, times, values)
        expected = [single.check(*reading) == NEW for reading in pack]
        assert (verdicts if verdicts is not None else [True] * len(pack)) == expected
    assert (bulk.duplicates, len(bulk)) == (single.duplicates, len(single))


readings_of_few_series = st.tuples(
    st.sampled_from(["n1", "n2"]), st.sampled_from(["t", "rh"]), st.integers(0, 12),
    st.one_of(st.integers(0, 2), st.sampled_from([0.0, 1.0, 2.5]), st.booleans(), st.sampled_from(["a", "b"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(readings_of_few_series, min_size=1, max_size=8)), max_size=30))
def test_content_dedup_drops_exactly_the_readings_seen_before(steps: list[tuple[bool, list[tuple[Any, ...]]]]) -> None:
    """Against a model that remembers every key: with room for all of them, the same verdicts."""
    dedup = ContentDedup(max_keys=1_000)
    seen: set[tuple[object, ...]] = set()
    for as_pack, readings in steps:
        if as_pack:
            devices, metrics, times, values = (list(column) for column in zip(*readings))
            verdicts = dedup.fresh_columns(devices, metrics, times, values)
            got = verdicts if verdicts is not None else [True] * len(readings)
        else:
            got = [dedup.check(*reading) == NEW for reading in readings]
        expected = []
        for device, metric, ts, value in readings:
            key = (device, metric, ts, type(value), value)
            expected.append(key not in seen)
            seen.add(key)
        assert got == expected
    assert len(dedup) == len(seen)


def test_content_dedup_remembers_at_least_half_its_keys_and_at_most_all() -> None:
    dedup = ContentDedup(max_keys=10)
    for ts in range(100):
        assert dedup.check("n1", "t", ts, 1.0) == NEW
        assert len(dedup) <= 10
    for ts in range(95, 100):  # the last five are remembered
        assert dedup.check("n1", "t", ts, 1.0) == DUPLICATE
    assert dedup.check("n1", "t", 80, 1.0) == NEW  # long forgotten
    with pytest.raises(LocalError):
        ContentDedup(max_keys=1)
