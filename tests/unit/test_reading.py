"""The reading model's checks, its fast builder and its record encoding agree with the documented rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidReading
from core import msgpack_codec
from core.reading import (
    MAX_NAME_BYTES, MAX_STRING_VALUE_BYTES, SERIES_LAYOUT_MIN_TS, TIME_DEVICE, TIME_GATEWAY, TIME_MAPPED, Provenance,
    Reading, decode_record, encode_reading, encode_records, encode_series_payloads, readings_of,
)

T = 1_767_225_600_000

# Around every limit: names and strings of 1..4-byte characters (and a lone
# surrogate, 3 bytes under "surrogatepass") just under and over their byte
# limits, integers at the 64-bit edges, bools, subclasses, non-finite floats.
_CHARS = ("a", "é", "€", "\U0001F600", "\ud800")


class _Str(str):
    pass


class _Int(int):
    pass


def _texts(limit: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda char, extra: char * (limit // len(char.encode("utf-8", "surrogatepass")) + extra),
        st.sampled_from(_CHARS), st.integers(-2, 1),
    )


names = st.one_of(_texts(MAX_NAME_BYTES), st.text(max_size=70), st.just(""), st.builds(_Str, st.text(max_size=5)),
                  st.none(), st.integers(), st.just(b"dev"))
times = st.one_of(st.integers(-(2**63) - 1, 2**63), st.sampled_from([T, 0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1]),
                  st.booleans(), st.floats(), st.builds(_Int, st.integers(0, 10)), st.none())
values = st.one_of(
    st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, -0.0]), st.booleans(), st.none(),
    st.integers(-(2**63) - 2, 2**64 + 1), st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    _texts(MAX_STRING_VALUE_BYTES), st.text(max_size=20), st.builds(_Int, st.integers()), st.just([1]), st.just(b"x"),
)
sources = st.one_of(st.sampled_from([0, 1, 2, 3, -1, True, 1.0, None]), st.integers())


def _outcome(build):  # type: ignore[no-untyped-def]
    try:
        return ("ok", [(repr(r), type(r.value)) for r in build()])
    except InvalidReading as exc:
        return ("error", exc.reason, exc.field, str(exc))


@settings(max_examples=600, deadline=None)
@given(names, st.lists(st.tuples(names, values), max_size=4), times, times, sources)
def test_readings_of_builds_what_the_constructor_builds_and_raises_what_it_raises(
    device: object, pairs: list[tuple[object, object]], ts_ms: object, received_ms: object, source: object
) -> None:
    expected = _outcome(lambda: [Reading(device, m, ts_ms, v, received_ms, source) for m, v in pairs])  # type: ignore[arg-type]
    assert _outcome(lambda: readings_of(device, pairs, ts_ms, received_ms, source)) == expected  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=8), st.lists(st.tuples(names, values), min_size=1, max_size=4),
       st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2]))
def test_readings_of_agrees_on_plausible_readings_too(
    device: str, pairs: list[tuple[object, object]], ts_ms: int, source: int
) -> None:
    expected = _outcome(lambda: [Reading(device, m, ts_ms, v, T, source) for m, v in pairs])  # type: ignore[arg-type]
    assert _outcome(lambda: readings_of(device, pairs, ts_ms, T, source)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("char", _CHARS)
def test_names_are_limited_in_bytes_not_characters(char: str) -> None:
    width = len(char.encode("utf-8", "surrogatepass"))
    fits = char * (MAX_NAME_BYTES // width)
    Reading(fits, fits, T, 1.0, T)
    for bad in (fits + char, ""):
        with pytest.raises(InvalidReading) as info:
            Reading("n1", bad, T, 1.0, T)
        assert (info.value.reason, info.value.field) == ("bad_metric", "metric")


@pytest.mark.parametrize("char", _CHARS)
def test_string_values_are_limited_in_bytes(char: str) -> None:
    width = len(char.encode("utf-8", "surrogatepass"))
    fits = char * (MAX_STRING_VALUE_BYTES // width)
    assert readings_of("n1", [("m", fits)], T, T)[0].value == fits
    with pytest.raises(InvalidReading) as info:
        readings_of("n1", [("m", fits + char)], T, T)
    assert (info.value.reason, info.value.field) == ("bad_value", "value")


def test_the_first_bad_field_is_the_one_named() -> None:
    with pytest.raises(InvalidReading) as info:
        Reading("", "m" * 300, True, math.nan, -1, 9)
    assert info.value.field == "device"
    with pytest.raises(InvalidReading) as info:
        readings_of("n1", [("ok", 1.0), ("m" * 300, math.nan)], T, T)
    assert info.value.field == "metric"


readings = st.builds(
    Reading, st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), st.integers(0, 2**63 - 1),
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**64 - 1), st.booleans(),
              st.text(max_size=40)),
    st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2]),
)
provenances = st.none() | st.builds(Provenance, st.none() | st.integers(0, 2**64 - 1) | st.text(min_size=1, max_size=8),
                                    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(readings, provenances), max_size=20))
def test_encode_records_writes_what_encode_reading_writes(pairs: list[tuple[Reading, Provenance | None]]) -> None:
    rs = [r for r, _ in pairs]
    ps = [p for _, p in pairs]
    assert encode_records(rs, ps) == [(r.ts_ms, encode_reading(r, p)) for r, p in pairs]
    assert encode_records(rs) == [(r.ts_ms, encode_reading(r)) for r in rs]
    assert [decode_record(payload) for _, payload in encode_records(rs, ps)] == pairs


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(names, names, st.lists(st.tuples(st.integers(SERIES_LAYOUT_MIN_TS, 2**63 - 1),
                                       st.floats(allow_nan=False, allow_infinity=False, width=64)), min_size=1, max_size=20),
       st.integers(0, 2**63 - 1), st.sampled_from([TIME_DEVICE, TIME_MAPPED, TIME_GATEWAY]))
def test_series_payloads_are_byte_for_byte_the_readings_records(
        device: str, metric: str, rows: list[tuple[int, float]], received_ms: int, source: int) -> None:
    times, values = [t for t, _ in rows], [v for _, v in rows]
    ours = encode_series_payloads(device, metric, times, values, received_ms, source, msgpack_codec.packer().pack)
    assert ours == [encode_reading(Reading(device, metric, t, v, received_ms, source)) for t, v in rows]


def test_series_payloads_at_the_edges_of_msgpack_widths() -> None:
    # 31/32 bytes of name: fixstr against str8; -0.0, the smallest subnormal; the first eight-byte time.
    for device in ("n" * 31, "n" * 32, "é" * 16):
        rows = [(SERIES_LAYOUT_MIN_TS, -0.0), (2**63 - 1, 5e-324), (1_767_225_600_000, 1e308)]
        ours = encode_series_payloads(device, "t", [t for t, _ in rows], [v for _, v in rows], 7, TIME_DEVICE,
                                      msgpack_codec.packer().pack)
        assert ours == [encode_reading(Reading(device, "t", t, v, 7, TIME_DEVICE)) for t, v in rows]
