"""Payload codecs: the same shapes in JSON, msgpack and CBOR; clear reasons for bad input."""

from __future__ import annotations

import json

import cbor2
import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from core.codecs import SourceFields, decode_payload, parse_payload
from core.errors import InvalidReading, PayloadError
from core.reading import TIME_DEVICE, TIME_GATEWAY, Reading

ENCODERS = {"json": lambda v: json.dumps(v).encode(), "msgpack": umsgpack.packb, "cbor": cbor2.dumps}
TOPIC = SourceFields(device="node-1", metric="temp_c")


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_each_format_is_detected_and_decodes_the_same_readings(fmt: str) -> None:
    shapes = [
        {"ts": 1700000000000, "value": 21.5},
        {"device": "n2", "metric": "rh", "t": 1700000000.25, "v": 40},
        {"d": "n3", "ts": 5, "values": {"a": True, "b": "open"}},
        [{"ts": 1, "value": 1}, {"ts": 2, "value": 2}],
    ]
    expected = [
        [Reading("node-1", "temp_c", 1700000000000, 21.5, 7)],
        [Reading("n2", "rh", 1700000000250, 40, 7)],
        [Reading("n3", "a", 5, True, 7), Reading("n3", "b", 5, "open", 7)],
        [Reading("node-1", "temp_c", 1, 1, 7), Reading("node-1", "temp_c", 2, 2, 7)],
    ]
    for shape, readings in zip(shapes, expected):
        payload = ENCODERS[fmt](shape)
        assert parse_payload(payload)[0] == fmt
        assert decode_payload(payload, TOPIC, received_ms=7) == readings
        assert decode_payload(payload, TOPIC, received_ms=7, fmt=fmt) == readings


def test_missing_time_uses_gateway_time_and_says_so() -> None:
    (reading,) = decode_payload(b'{"value": 3}', TOPIC, received_ms=99)
    assert (reading.ts_ms, reading.time_source) == (99, TIME_GATEWAY)
    (reading,) = decode_payload(b'{"value": 3, "ts": 5}', TOPIC, received_ms=99)
    assert reading.time_source == TIME_DEVICE


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"", "empty", None),
        (b"{not json", "bad_json", None),
        (b'{"ts": 1}', "missing_value", "value"),
        (b'{"ts": "noon", "value": 1}', "bad_time", "ts"),
        (b'{"t": true, "value": 1}', "bad_time", "t"),
        (b'{"value": [1, 2]}', "bad_value", "value"),
        (b'{"value": {"x": 1}}', "bad_value", "value"),
        (b'{"device": 5, "value": 1}', "bad_device", "device"),
        (b'{"values": {}}', "bad_shape", "values"),
        (b"[]", "bad_shape", None),
        (b"42", "bad_shape", None),
        (b'[{"value": 1}, {"value": null}]', "bad_value", "value"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason_naming_the_field(payload: bytes, reason: str, field: str | None) -> None:
    with pytest.raises((PayloadError, InvalidReading)) as info:
        decode_payload(payload, TOPIC, received_ms=1)
    assert (info.value.reason, info.value.field) == (reason, field)


def test_device_and_metric_are_required_somewhere() -> None:
    with pytest.raises(InvalidReading) as info:
        decode_payload(b'{"value": 1}', SourceFields(), received_ms=1)
    assert info.value.reason == "missing_device"


def test_trailing_bytes_are_not_accepted() -> None:
    with pytest.raises(PayloadError):
        decode_payload(umsgpack.packb({"value": 1}) + b"\x00", TOPIC, 1, fmt="msgpack")
    with pytest.raises(PayloadError):
        decode_payload(cbor2.dumps({"value": 1}) + b"\x00", TOPIC, 1, fmt="cbor")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_the_documented_errors(payload: bytes) -> None:
    try:
        decode_payload(payload, TOPIC, received_ms=1)
    except (PayloadError, InvalidReading):
        pass


def test_boot_seq_and_uptime_keys_reach_the_sample_long_or_short() -> None:
    from core.codecs import decode_samples
    from core.sample import TIME_KIND_UPTIME

    short = {"d": "n1", "b": 7, "s": 42, "up": 5000, "su": 6000, "values": {"t": 1.5}}
    long = {"device": "n1", "boot": 7, "seq": 42, "uptime_ms": 5000, "sent_up_ms": 6000, "values": {"t": 1.5}}
    for shape in (short, long):
        for encode in ENCODERS.values():
            (sample,) = decode_samples(encode(shape), SourceFields())
            assert (sample.device, sample.boot, sample.seq, sample.time_kind, sample.time_ms, sample.sent_up_ms) == (
                "n1", 7, 42, TIME_KIND_UPTIME, 5000, 6000
            )


def test_uptime_without_device_memory_is_mapped_from_the_sent_uptime() -> None:
    from core.reading import TIME_MAPPED

    (r,) = decode_payload(b'{"up": 5000, "su": 65000, "value": 1}', TOPIC, received_ms=1_000_000)
    assert (r.ts_ms, r.time_source) == (1_000_000 - 60_000, TIME_MAPPED)
    (r,) = decode_payload(b'{"up": 5000, "value": 1}', TOPIC, received_ms=1_000_000)
    assert (r.ts_ms, r.time_source) == (1_000_000, TIME_MAPPED)


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b'{"s": -1, "value": 1}', "bad_seq", "s"),
        (b'{"seq": 1.5, "value": 1}', "bad_seq", "seq"),
        (b'{"b": [1], "value": 1}', "bad_boot", "b"),
        (b'{"boot": "", "value": 1}', "bad_boot", "boot"),
        (b'{"up": -5, "value": 1}', "bad_time", "up"),
        (b'{"up": 5, "su": 4, "value": 1}', "bad_time", "su"),
        (b'{"t": 1e300, "value": 1}', "bad_time", "t"),
    ],
)
def test_bad_dedup_and_uptime_keys_are_rejected_naming_the_key(payload: bytes, reason: str, field: str) -> None:
    with pytest.raises(InvalidReading) as info:
        decode_payload(payload, TOPIC, received_ms=1)
    assert (info.value.reason, info.value.field) == (reason, field)


@pytest.mark.parametrize("shape", [
    {"ts": 1_700_000_000_000, "v": 1.5},
    {"d": "n1", "b": "boot-a", "s": 3, "up": 5000, "su": 6000, "m": "rh", "value": 40},
    {"device": "n1", "t": 1_700_000_000.5, "values": {"a": 1, "b": "x"}},
    {"v": True},
])
def test_decoded_samples_have_every_field_the_constructor_sets(shape: dict[str, object]) -> None:
    # The decoder fills samples in place instead of calling Sample(...): a
    # field added to Sample must be set there too, or this comparison fails.
    import dataclasses

    from core.codecs import decode_samples
    from core.sample import Sample

    (sample,) = decode_samples(json.dumps(shape).encode(), TOPIC)
    rebuilt = Sample(*(getattr(sample, f.name) for f in dataclasses.fields(Sample)))
    assert sample == rebuilt


@pytest.mark.parametrize(
    ("shape", "reason", "field"),
    [
        ({"s": None, "v": 1}, "bad_seq", "s"),
        ({"seq": 2**64, "s": 1, "v": 1}, "bad_seq", "seq"),
        ({"s": True, "v": 1}, "bad_seq", "s"),
        ({"b": None, "v": 1}, "bad_boot", "b"),
        ({"boot": -1, "b": 1, "v": 1}, "bad_boot", "boot"),
        ({"b": False, "v": 1}, "bad_boot", "b"),
        ({"b": "\U0001F600" * 16 + "a", "v": 1}, "bad_boot", "b"),
        ({"d": None, "v": 1}, None, None),  # the topic's device stands in for a nil one
        ({"device": 5, "v": 1}, "bad_device", "device"),
        ({"m": None, "v": 1}, None, None),
    ],
)
def test_dedup_keys_and_names_are_judged_at_their_edges(shape: dict[str, object], reason: str | None,
                                                        field: str | None) -> None:
    for encode in (ENCODERS["json"], ENCODERS["cbor"]):
        if reason is None:
            (reading,) = decode_payload(encode(shape), TOPIC, received_ms=1)
            assert (reading.device, reading.metric) == (TOPIC.device, TOPIC.metric)
            continue
        with pytest.raises(InvalidReading) as info:
            decode_payload(encode(shape), TOPIC, received_ms=1)
        assert (info.value.reason, info.value.field) == (reason, field)


def test_a_boot_id_of_64_bytes_is_accepted_whatever_its_characters() -> None:
    from core.codecs import decode_samples

    for boot in ("\U0001F600" * 16, "é" * 32, "a" * 64, 0, 2**64 - 1):
        (sample,) = decode_samples(ENCODERS["msgpack"]({"b": boot, "s": 0, "v": 1}), TOPIC)
        assert (sample.boot, sample.seq) == (boot, 0)
