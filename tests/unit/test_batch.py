"""The batch format: golden vectors from docs/batch_format.md, round trips, corruption."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import (
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    Entry,
    decode_batch,
    decode_header,
    encode_batch,
    kafka_headers,
    kafka_key,
)
from core.errors import BatchFormatError, LocalError
from core.reading import TIME_MAPPED, Reading
from core.timewindow import window_of

WINDOW = window_of(1704067200000)
EXAMPLE = [
    Entry(42, Reading("node-7", "temp_c", 1704067201000, 21.5, 1704067201030)),
    Entry(43, Reading("node-7", "temp_c", 1704067202000, 21.75, 1704067202025)),
]
# The worked example of docs/batch_format.md, byte for byte.
GOLDEN_PLAIN = bytes.fromhex(
    "5447425401010000dcf061160000018cc251f4000036ee80000000000000002a"
    "000000000000002b00000002000000250467772d310773656e736f7273919"
    "7a66e6f64652d37a674656d705f6392000192cd03e8cd03e8940102cd0866"
    "19921efb00"
)
GOLDEN_LZ4 = bytes.fromhex(
    "54474254010101000b4f68040000018cc251f4000036ee80000000000000002a"
    "000000000000002b000000020000003c0467772d310773656e736f727304224d"
    "18684025000000000000008e250000809197a66e6f64652d37a674656d705f63"
    "92000192cd03e8cd03e8940102cd086619921efb0000000000"
)


def test_worked_example_encodes_to_the_documented_bytes() -> None:
    assert encode_batch("gw-1", "sensors", WINDOW, EXAMPLE, COMPRESSION_NONE) == GOLDEN_PLAIN
    assert encode_batch("gw-1", "sensors", WINDOW, EXAMPLE, COMPRESSION_LZ4) == GOLDEN_LZ4


@pytest.mark.parametrize("golden", [GOLDEN_PLAIN, GOLDEN_LZ4])
def test_golden_vectors_decode_to_the_example(golden: bytes) -> None:
    batch = decode_batch(golden)
    assert batch.entries == tuple(EXAMPLE)
    h = batch.header
    assert (h.gateway, h.stream, h.window, h.first_offset, h.last_offset, h.count) == (
        "gw-1", "sensors", WINDOW, 42, 43, 2,
    )
    assert decode_header(golden) == h


def test_mixed_series_and_value_kinds_round_trip_in_offset_order() -> None:
    t0 = WINDOW.start_ms
    entries = [
        Entry(0, Reading("a", "temp", t0 + 5, 20.125, t0 + 9)),
        Entry(1, Reading("b", "door", t0 + 4, True, t0 + 9)),
        Entry(2, Reading("a", "count", t0 + 6, 2**40, t0 + 7, TIME_MAPPED)),
        Entry(5, Reading("a", "temp", t0 + 3, 1e-300, t0 + 10)),  # time going backwards, gap in offsets
        Entry(6, Reading("b", "state", t0 + 3, "open", t0 + 10)),
        Entry(7, Reading("a", "count", t0 + 6, -3, t0 + 7, TIME_MAPPED)),
        Entry(9, Reading("a", "temp", t0 + 8, float(2**60), t0 + 3600)),
    ]
    batch = decode_batch(encode_batch("gw", "s", WINDOW, entries))
    assert batch.entries == tuple(entries)
    assert [type(e.reading.value) for e in batch.entries] == [type(e.reading.value) for e in entries]


def test_steady_fleet_costs_a_few_bytes_per_reading() -> None:
    rng = random.Random(7)
    entries = [
        Entry(i, Reading(f"node-{i % 20}", "temp_c", WINDOW.start_ms + i * 50, round(20 + rng.random(), 2), WINDOW.start_ms + i * 50 + 12))
        for i in range(5000)
    ]
    size = len(encode_batch("gw-1", "sensors", WINDOW, entries))
    assert size / len(entries) < 3


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "at least one"),
        ([EXAMPLE[1], EXAMPLE[0]], "offsets must increase"),
        ([Entry(0, Reading("d", "m", WINDOW.end_ms, 1, WINDOW.end_ms))], "outside window"),
    ],
)
def test_encoder_refuses_misuse(entries: list[Entry], message: str) -> None:
    with pytest.raises(LocalError, match=message):
        encode_batch("gw", "s", WINDOW, entries)


def test_every_single_bit_flip_is_detected() -> None:
    for golden in (GOLDEN_PLAIN, GOLDEN_LZ4):
        for i in range(len(golden) * 8):
            damaged = bytearray(golden)
            damaged[i // 8] ^= 1 << (i % 8)
            with pytest.raises(BatchFormatError):
                decode_batch(bytes(damaged))


def test_truncation_and_trailing_garbage_are_rejected_with_reasons() -> None:
    for cut in range(len(GOLDEN_LZ4)):
        with pytest.raises(BatchFormatError) as info:
            decode_batch(GOLDEN_LZ4[:cut])
        assert info.value.reason in {"truncated", "bad_crc", "bad_length"}
    with pytest.raises(BatchFormatError) as info:
        decode_batch(GOLDEN_LZ4 + b"\0")
    assert info.value.reason == "bad_crc"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_raises_only_batch_format_error_on_garbage(data: bytes) -> None:
    for candidate in (data, GOLDEN_PLAIN[:12] + data):
        try:
            decode_batch(candidate)
        except BatchFormatError:
            pass


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.text(max_size=20),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False).map(float),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 5),  # offset gap
            st.sampled_from(["d1", "d2", "d3"]),
            st.sampled_from(["m1", "m2"]),
            st.integers(0, WINDOW.length_ms - 1),
            values,
            st.integers(-(10**6), 10**9),
        ),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([COMPRESSION_NONE, COMPRESSION_LZ4]),
)
def test_round_trip_is_exact_for_any_readings(rows, compression) -> None:  # type: ignore[no-untyped-def]
    offset = 1000
    entries = []
    for gap, device, metric, dt, value, lag in rows:
        offset += gap
        ts = WINDOW.start_ms + dt
        entries.append(Entry(offset, Reading(device, metric, ts, value, ts + lag)))
    batch = decode_batch(encode_batch("gw", "s", WINDOW, entries, compression))
    assert batch.entries == tuple(entries)
    # bit-exact floats, including -0.0
    assert [repr(e.reading.value) for e in batch.entries] == [repr(e.reading.value) for e in entries]


def test_kafka_key_and_headers_follow_the_documented_rule() -> None:
    header = decode_header(GOLDEN_LZ4)
    assert kafka_key(header) == b"gw-1/sensors"
    assert kafka_headers(header) == [("tg-window", b"1704067200000+3600000"), ("tg-offsets", b"42-43")]


def test_auto_compression_uses_lz4_only_when_it_shrinks_the_body() -> None:
    small = encode_batch("gw-1", "sensors", WINDOW, EXAMPLE)
    assert small == GOLDEN_PLAIN  # lz4 would add bytes to two readings
    t0 = WINDOW.start_ms
    many = [Entry(i, Reading("n", "t", t0 + i * 1000, 20.5, t0 + i * 1000 + 5)) for i in range(500)]
    assert decode_header(encode_batch("gw", "s", WINDOW, many)).compression == COMPRESSION_LZ4


def test_integer_values_at_both_ends_of_64_bits_round_trip() -> None:
    t0 = WINDOW.start_ms
    entries = [Entry(i, Reading("d", "m", t0 + i, v, t0 + i)) for i, v in enumerate([2**64 - 1, -(2**63), 0, 2**63])]
    assert decode_batch(encode_batch("gw", "s", WINDOW, entries)).entries == tuple(entries)


def _series_values(batch: bytes) -> object:
    """The values column of the first series of an uncompressed batch."""
    from core import msgpack_codec

    header = decode_header(batch)
    body = batch[len(batch) - header.body_length :]
    return msgpack_codec.unpackb(body)[0][4]  # type: ignore[index]


def test_a_few_odd_values_keep_the_column_decimal_with_exceptions() -> None:
    t0 = WINDOW.start_ms
    values = [21.5, 21.75, 22, 22.0]
    entries = [Entry(i, Reading("d", "m", t0 + i, v, t0 + i)) for i, v in enumerate(values)]
    batch = encode_batch("gw", "s", WINDOW, entries, COMPRESSION_NONE)
    # The example of docs/batch_format.md, "values column" kind 3, byte for byte.
    assert bytes.fromhex("970302810216cd0866190019") in batch
    decoded = [e.reading.value for e in decode_batch(batch).entries]
    assert [repr(v) for v in decoded] == [repr(v) for v in values]


def test_float_noise_in_a_real_series_costs_its_own_bytes_not_the_columns() -> None:
    t0 = WINDOW.start_ms
    clean = [70 + i / 100 for i in range(200)]
    noisy = list(clean)
    noisy[17] = 74.93588199999998  # as in the NAB machine-temperature series
    sizes = []
    for values in (clean, noisy):
        entries = [Entry(i, Reading("d", "m", t0 + i * 1000, v, t0 + i * 1000)) for i, v in enumerate(values)]
        batch = encode_batch("gw", "s", WINDOW, entries, COMPRESSION_NONE)
        assert [e.reading.value for e in decode_batch(batch).entries] == values
        sizes.append(len(batch))
    assert _series_values(batch)[:3] == [3, 2, {17: 74.93588199999998}]  # type: ignore[index]
    assert sizes[1] - sizes[0] <= 12  # one exception, not 200 plain floats


odd_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # -0.0, float noise
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(10**7), 10**7), min_size=1, max_size=50),
    st.integers(0, 6),
    st.dictionaries(st.integers(0, 49), odd_values, max_size=20),
)
def test_mostly_decimal_columns_with_odd_values_round_trip_bit_for_bit(ns, k, odd) -> None:  # type: ignore[no-untyped-def]
    values = [n / 10**k for n in ns]
    for i, v in odd.items():
        if i < len(values):
            values[i] = v
    t0 = WINDOW.start_ms
    entries = [Entry(i, Reading("d", "m", t0 + i, v, t0 + i)) for i, v in enumerate(values)]
    decoded = decode_batch(encode_batch("gw", "s", WINDOW, entries)).entries
    assert [(type(e.reading.value), repr(e.reading.value)) for e in decoded] == [(type(v), repr(v)) for v in values]


@pytest.mark.parametrize(
    "column",
    [
        [3, 2, {4: 1.0}, 1, 2, 3],  # exception index past the series
        [3, 2, {-1: 1.0}, 1, 2, 3],
        [3, 2, [1.0], 1, 2, 3],  # exceptions not a map
        [3, 10, {}, 1, 2, 3],  # scale out of range
        [3, 2, {0: [1]}, 1, 2, 3],  # exception value not a reading value
        [3, 2],
    ],
)
def test_a_bad_patched_decimal_column_is_a_batch_format_error(column: list[object]) -> None:
    from core import msgpack_codec

    import google_crc32c
    import struct

    body = msgpack_codec.packb([["d", "m", [0, 1, 1], [0, 1, 1], column, [0, 0, 0], 0]])
    head = struct.pack(">qIQQII", WINDOW.start_ms, WINDOW.length_ms, 0, 2, 3, len(body)) + b"\x02gw\x01s"
    tail = head + body
    batch = b"TGBT\x01\x01\x00\x00" + struct.pack(">I", google_crc32c.value(tail)) + tail
    with pytest.raises(BatchFormatError):
        decode_batch(batch)
