"""SenML (RFC 8428) in JSON and CBOR: base fields, relative time, names, and reasons for bad packs."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.codecs import SourceFields, decode_payload, parse_payload
from core.errors import InvalidReading, PayloadError
from core.reading import TIME_DEVICE, TIME_GATEWAY, TIME_MAPPED, Reading
from core.senml import CBOR_LABELS, looks_like_senml

NO_TOPIC = SourceFields()
NOW = 1_700_000_000_000
_INT = {name: label for label, name in CBOR_LABELS.items()}


def as_json(pack: list[dict[str, object]]) -> bytes:
    return json.dumps(pack).encode()


def as_cbor(pack: list[dict[str, object]]) -> bytes:
    """The CBOR representation: registered labels become their integers (RFC 8428 section 6)."""
    return cbor2.dumps([{_INT.get(k, k): v for k, v in record.items()} for record in pack])


# RFC 8428 section 5.1.2, "Multiple Datapoints": a base name, a base time, two measurements.
RFC_MULTIPLE = [
    {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e9, "bu": "%RH", "v": 20, "n": "humidity"},
    {"u": "lon", "v": 24.30621, "n": "lon"},
    {"u": "lat", "v": 60.07965, "n": "lat"},
    {"n": "temp", "u": "Cel", "t": 60, "v": 23.1},
    {"n": "humidity", "u": "%RH", "t": 60, "v": 20.3},
]
DEV = "urn:dev:ow:10e2073a01080063"
T0 = 1_320_067_464_000
RFC_EXPECTED = [
    Reading(DEV, "humidity", T0, 20, NOW, TIME_DEVICE),
    Reading(DEV, "lon", T0, 24.30621, NOW, TIME_DEVICE),
    Reading(DEV, "lat", T0, 60.07965, NOW, TIME_DEVICE),
    Reading(DEV, "temp", T0 + 60_000, 23.1, NOW, TIME_DEVICE),
    Reading(DEV, "humidity", T0 + 60_000, 20.3, NOW, TIME_DEVICE),
]


@pytest.mark.parametrize(("encode", "fmt"), [(as_json, "senml"), (as_cbor, "senml-cbor"), (as_json, "auto"), (as_cbor, "auto")])
def test_rfc_example_resolves_base_name_and_base_time_in_json_and_cbor(encode, fmt) -> None:  # type: ignore[no-untyped-def]
    assert decode_payload(encode(RFC_MULTIPLE), NO_TOPIC, NOW, fmt) == RFC_EXPECTED


def test_cbor_pack_uses_integer_labels_on_the_wire() -> None:
    payload = as_cbor([{"bn": "d1/", "n": "x", "v": 1}])
    assert cbor2.loads(payload) == [{-2: "d1/", 0: "x", 2: 1}]
    assert parse_payload(payload) == ("cbor", [{-2: "d1/", 0: "x", 2: 1}])


def test_base_name_with_slash_gives_device_and_metric() -> None:
    pack = [{"bn": "urn:dev:mac:0024befffe804ff1/", "bt": 1.7e9, "n": "temp", "v": 21.5}, {"n": "door", "vb": True}]
    assert decode_payload(as_json(pack), NO_TOPIC, NOW) == [
        Reading("urn:dev:mac:0024befffe804ff1", "temp", 1_700_000_000_000, 21.5, NOW, TIME_DEVICE),
        Reading("urn:dev:mac:0024befffe804ff1", "door", 1_700_000_000_000, True, NOW, TIME_DEVICE),
    ]


def test_relative_times_are_mapped_onto_receipt_and_missing_times_use_gateway_time() -> None:
    pack = [
        {"bn": "d1:", "n": "a", "v": 1, "t": -5},  # five seconds ago
        {"n": "b", "v": 2, "t": 0},  # "now", said explicitly
        {"bn": "d2:", "bt": 1.5, "n": "c", "v": 3},  # base time below 2**28 is relative too
    ]
    assert decode_payload(as_json(pack), NO_TOPIC, NOW) == [
        Reading("d1", "a", NOW - 5000, 1, NOW, TIME_MAPPED),
        Reading("d1", "b", NOW, 2, NOW, TIME_MAPPED),
        Reading("d2", "c", NOW + 1500, 3, NOW, TIME_MAPPED),
    ]
    (reading,) = decode_payload(as_json([{"n": "d1:x", "v": 1}]), NO_TOPIC, NOW)
    assert (reading.ts_ms, reading.time_source) == (NOW, TIME_GATEWAY)


def test_relative_limit_is_two_to_the_28_seconds() -> None:
    (below,) = decode_payload(as_json([{"n": "d:x", "v": 1, "t": 2**28 - 1}]), NO_TOPIC, NOW)
    (at,) = decode_payload(as_json([{"n": "d:x", "v": 1, "t": 2**28}]), NO_TOPIC, NOW)
    assert below.time_source == TIME_MAPPED and below.ts_ms == NOW + (2**28 - 1) * 1000
    assert at.time_source == TIME_DEVICE and at.ts_ms == 2**28 * 1000


def test_base_value_and_sum_are_added_and_sum_is_its_own_metric() -> None:
    pack = [{"bn": "m1/", "bv": 100, "bs": 1000, "n": "energy", "v": 5, "s": 7}, {"n": "only_sum", "s": 1}]
    assert [(r.metric, r.value) for r in decode_payload(as_json(pack), NO_TOPIC, NOW)] == [
        ("energy", 105),
        ("energy_sum", 1007),
        ("only_sum_sum", 1001),
    ]


def test_values_of_every_kind_are_kept() -> None:
    pack = [
        {"bn": "n1:", "n": "f", "v": 1.25},
        {"n": "i", "v": -3},
        {"n": "b", "vb": False},
        {"n": "s", "vs": "open"},
    ]
    assert [r.value for r in decode_payload(as_cbor(pack), NO_TOPIC, NOW, "senml-cbor")] == [1.25, -3, False, "open"]


def test_names_follow_the_documented_rule() -> None:
    topic = SourceFields(device="from-topic", metric="from-topic-metric")
    # No base name: split at the last ':' or '/'.
    (r,) = decode_payload(as_json([{"n": "urn:dev:ow:10e2073a01080063:voltage", "v": 1}]), NO_TOPIC, NOW)
    assert (r.device, r.metric) == ("urn:dev:ow:10e2073a01080063", "voltage")
    # No base name, but the topic names the device: n is the metric whole.
    (r,) = decode_payload(as_json([{"n": "a:b", "v": 1}]), topic, NOW)
    assert (r.device, r.metric) == ("from-topic", "a:b")
    # A base name without a trailing separator is the device as it is.
    (r,) = decode_payload(as_json([{"bn": "node7", "n": "temp", "v": 1}]), NO_TOPIC, NOW)
    assert (r.device, r.metric) == ("node7", "temp")
    # A record with only a base name takes the topic's metric.
    (r,) = decode_payload(as_json([{"bn": "node7", "v": 1}]), topic, NOW)
    assert (r.device, r.metric) == ("node7", "from-topic-metric")


def test_records_of_only_base_fields_are_allowed() -> None:
    pack = [{"bn": "urn:dev:DEVEUI:0123456789ABCDEF:", "bt": 1.58565075e9}, {"n": "temperature", "v": 20.0}]
    (r,) = decode_payload(as_json(pack), NO_TOPIC, NOW)
    assert (r.device, r.metric, r.ts_ms) == ("urn:dev:DEVEUI:0123456789ABCDEF", "temperature", 1_585_650_750_000)


def test_unknown_labels_are_ignored_unless_they_must_be_understood() -> None:
    (r,) = decode_payload(as_json([{"n": "d:x", "v": 1, "foo": "bar"}]), NO_TOPIC, NOW, "senml")
    assert r.value == 1
    with pytest.raises(InvalidReading) as info:
        decode_payload(as_json([{"n": "d:x", "v": 1, "crit_": 1}]), NO_TOPIC, NOW, "senml")
    assert (info.value.reason, info.value.field) == ("unknown_label", "crit_")


def test_cbor_decimal_fractions_are_numbers() -> None:
    from decimal import Decimal

    payload = cbor2.dumps([{-2: "d/", 0: "x", 2: Decimal("1.5")}])
    (r,) = decode_payload(payload, NO_TOPIC, NOW, "senml-cbor")
    assert r.value == 1.5


@pytest.mark.parametrize(
    ("pack", "reason", "field"),
    [
        ([{"n": "d:x", "vd": "aGVsbG8"}], "bad_value", "vd"),
        ([{"n": "d:x", "v": "12"}], "bad_value", "v"),
        ([{"n": "d:x", "v": True}], "bad_value", "v"),
        ([{"n": "d:x", "vb": 1}], "bad_value", "vb"),
        ([{"n": "d:x", "vs": 5}], "bad_value", "vs"),
        ([{"n": "d:x", "v": 1, "vs": "a"}], "bad_value", "vs"),
        ([{"n": "d:x", "v": 1, "t": "noon"}], "bad_time", "t"),
        ([{"n": "d:x", "bt": None, "v": 1}], "bad_time", "bt"),
        ([{"n": "d:x"}], "missing_value", "v"),
        ([{"n": "-bad", "v": 1}], "bad_name", "n"),
        ([{"n": "d:x y", "v": 1}], "bad_name", "n"),
        ([{"bn": 5, "n": "x", "v": 1}], "bad_name", "bn"),
        ([{"n": "nodevice", "v": 1}], "missing_device", "n"),
        ([{"bn": "dev/", "v": 1}], "missing_metric", "n"),
        ([{"bver": 11, "n": "d:x", "v": 1}], "unsupported_version", "bver"),
        ([{"bn": "d:"}], "missing_value", "v"),
        ([{"n": "d:x", "bt": 1e308, "t": 1e308, "v": 1}], "bad_time", "t"),
        ([{"n": "d:x", "bv": 2**70, "v": 1.5}], "bad_value", "bv"),
        ([{"n": "d:x", "bv": 1e308, "v": 1e308}], "bad_value", "v"),
    ],
)
def test_bad_senml_is_rejected_with_a_reason_naming_the_label(pack: list[dict[str, object]], reason: str, field: str) -> None:
    for encode, fmt in ((as_json, "senml"), (as_cbor, "senml-cbor")):
        with pytest.raises(InvalidReading) as info:
            decode_payload(encode(pack), NO_TOPIC, NOW, fmt)
        assert (info.value.reason, info.value.field) == (reason, field), encode
        assert "SenML record" in str(info.value) or reason == "missing_value"


def test_one_bad_record_rejects_the_whole_pack_and_names_its_index() -> None:
    with pytest.raises(InvalidReading, match="SenML record 1"):
        decode_payload(as_json([{"n": "d:a", "v": 1}, {"n": "d:b", "v": [1]}]), NO_TOPIC, NOW)


def test_fixed_senml_format_refuses_the_wrong_syntax_and_shape() -> None:
    with pytest.raises(PayloadError):
        decode_payload(as_cbor([{"n": "d:x", "v": 1}]), NO_TOPIC, NOW, "senml")
    with pytest.raises(InvalidReading):
        decode_payload(b'{"n": "d:x", "v": 1}', NO_TOPIC, NOW, "senml")  # a record, not a pack


def test_detection_tells_senml_from_our_own_shape() -> None:
    assert looks_like_senml([{"n": "a:b", "v": 1}])
    assert looks_like_senml([{0: "a:b", 2: 1}])
    assert not looks_like_senml([{"t": 1, "v": 1}])  # ours: no name
    assert not looks_like_senml([{"n": "a:b", "v": 1, "d": "x"}])  # a key SenML does not have
    assert not looks_like_senml({"n": "a:b", "v": 1})  # not a pack
    # Our own pack is still read as ours.
    (r,) = decode_payload(b'[{"t": 1.5, "v": 2}]', SourceFields("d", "m"), NOW)
    assert (r.device, r.ts_ms, r.time_source) == ("d", 1500, TIME_DEVICE)


_records = st.lists(
    st.dictionaries(
        st.sampled_from(sorted(CBOR_LABELS.values()) + ["x", "crit_"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=4)),
        max_size=6,
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_records)
def test_any_senml_shaped_values_are_accepted_or_rejected_with_documented_errors(pack: list[dict[str, object]]) -> None:
    for payload, fmt in ((as_cbor(pack), "senml-cbor"), (as_cbor(pack), "auto")):
        try:
            decode_payload(payload, NO_TOPIC, NOW, fmt)
        except (PayloadError, InvalidReading):
            pass
