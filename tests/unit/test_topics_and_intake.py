"""Topic templates, routes, and the intake's accept-or-dead-letter decision."""

from __future__ import annotations

import json
import re

import cbor2
import pytest
import umsgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.deadletter import DeadLetter, decode_dead_letter, encode_dead_letter
from core.errors import LocalError
from core.intake import Accepted, DamagedPayload, Duplicate, Intake, Rejected, classify_message
from core.reading import Reading, encode_reading
from core.topics import Route, TopicTemplate

ROUTES = (
    Route(TopicTemplate("sites/{site}/sensors/{device}/{metric}"), "sensors"),
    Route(TopicTemplate("sensors/{device}"), "sensors", "json"),
    Route(TopicTemplate("meters/#"), "meters"),
)


def test_template_subscription_and_match() -> None:
    t = TopicTemplate("sites/{site}/sensors/{device}/{metric}")
    assert t.subscription == "sites/+/sensors/+/+"
    assert t.match("sites/s1/sensors/n1/temp") == {"site": "s1", "device": "n1", "metric": "temp"}
    assert t.match("sites/s1/sensors/n1") is None
    assert t.match("sites/s1/sensors/n1/temp/x") is None
    assert t.match("sites/s1/other/n1/temp") is None
    assert TopicTemplate("a/#").match("a/b/c") == {}


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/{x}{y}", "a/b+", "{d}/{d}"])
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(LocalError):
        TopicTemplate(bad)


def test_reserved_and_malformed_stream_names_are_refused() -> None:
    with pytest.raises(LocalError, match="reserved"):
        Route(TopicTemplate("a"), "_deadletter")
    with pytest.raises(LocalError):
        Route(TopicTemplate("a"), "has space")


def test_good_message_is_accepted_into_its_stream() -> None:
    result = classify_message(ROUTES, "mqtt", "sites/s/sensors/n1/temp", b'{"ts": 10, "value": 2.5}', 11)
    reading = Reading("n1", "temp", 10, 2.5, 11)
    assert result == Accepted("sensors", ((10, encode_reading(reading)),))
    assert result.readings == (reading,)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("elsewhere", b'{"value": 1}', "no_route"),
        ("sensors/n1", b"\x81\xa1v\x01", "bad_json"),  # msgpack on a topic fixed to JSON
        ("meters/x", b'{"value": 1}', "missing_device"),
    ],
)
def test_bad_message_becomes_a_dead_letter_with_raw_bytes(topic: str, payload: bytes, reason: str) -> None:
    result = classify_message(ROUTES, "mqtt", topic, payload, 11)
    assert isinstance(result, Rejected)
    assert (result.letter.reason, result.letter.raw, result.letter.topic) == (reason, payload, topic)


def test_payload_the_transport_marked_damaged_is_a_dead_letter_with_its_reason() -> None:
    raw = b"\x01\x21\x85\xa1"
    result = classify_message(ROUTES, "serial", "/dev/serial/by-id/x", DamagedPayload(raw, "bad_crc", "CRC mismatch"), 9)
    assert result == Rejected(DeadLetter("serial", "/dev/serial/by-id/x", 9, "bad_crc", "CRC mismatch", raw))
    assert type(result.letter.raw) is bytes  # type: ignore[union-attr]


# -- every reject path is a complete dead letter; nothing raises ---------------------

FUZZ_ROUTES = tuple(
    Route(TopicTemplate(f"{fmt}/{{device}}/{{metric}}"), "s", fmt)
    for fmt in ("auto", "json", "msgpack", "cbor", "senml", "senml-cbor")
)
_REASON = re.compile(r"^[a-z_]+$")


def _check(intake: Intake, topic: str, payload: bytes) -> None:
    result = intake.classify("mqtt", topic, payload, 123)
    assert isinstance(result, (Accepted, Rejected, Duplicate))
    if isinstance(result, Rejected):
        letter = result.letter
        assert (letter.source, letter.topic, letter.received_ms, letter.raw) == ("mqtt", topic, 123, bytes(payload))
        assert type(letter.raw) is bytes and _REASON.match(letter.reason) and letter.message
        assert decode_dead_letter(encode_dead_letter(letter, raw_cap=len(letter.raw))) == letter


_topics = st.sampled_from([f"{fmt}/d/m" for fmt in ("auto", "json", "msgpack", "cbor", "senml", "senml-cbor")] + ["nowhere"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_topics, st.binary(max_size=300))
def test_intake_accepts_or_dead_letters_any_bytes_without_raising(topic: str, payload: bytes) -> None:
    _check(Intake(FUZZ_ROUTES), topic, payload)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=10), st.binary(max_size=10),
)
_keys = st.one_of(
    st.sampled_from(["d", "device", "m", "metric", "v", "value", "values", "ts", "t", "up", "su", "b", "s", "seq",
                     "boot", "n", "bn", "bt", "bv", "vs", "vb", "bver"]),
    st.integers(min_value=-8, max_value=9), st.text(max_size=4),
)
_values = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=20
)


def _encodings(value: object) -> list[bytes]:
    out = [cbor2.dumps(value)]
    try:
        out.append(umsgpack.packb(value))
    except (umsgpack.PackException, TypeError, OverflowError):
        pass
    try:
        out.append(json.dumps(value).encode())
    except (TypeError, ValueError):
        pass
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_topics, _values)
def test_intake_accepts_or_dead_letters_any_structured_value(topic: str, value: object) -> None:
    intake = Intake(FUZZ_ROUTES)
    for payload in _encodings(value):
        _check(intake, topic, payload)
        _check(intake, topic, payload)  # a second time: dedup state must not break anything


def test_damaged_payload_keeps_the_transport_reason_whatever_the_route() -> None:
    intake = Intake(FUZZ_ROUTES)
    for topic in ("json/d/m", "nowhere"):
        result = intake.classify("serial", topic, DamagedPayload(b"\x01\x02", "bad_crc", "CRC mismatch"), 5)
        assert isinstance(result, Rejected) and result.letter.reason == "bad_crc"


# --------------------------------------------------------------------------- streams by device

DEVICE_ROUTES = (
    Route(TopicTemplate("site/{device}/{metric}"), "pumps", devices=("pump-*",)),
    Route(TopicTemplate("site/#"), "valves", devices=("valve-?", "gate-[ab]")),
    Route(TopicTemplate("site/#"), "other"),
)


@pytest.mark.parametrize(("topic", "payload", "stream"), [
    ("site/pump-3/rpm", b'{"ts": 10, "value": 1400}', "pumps"),        # device from the topic
    ("site/x/y", b'{"d": "pump-1", "m": "rpm", "ts": 10, "v": 1}', "pumps"),  # the payload's device wins
    ("site/x/y", b'{"d": "valve-7", "m": "open", "ts": 10, "v": true}', "valves"),
    ("site/x", b'{"d": "gate-b", "m": "open", "ts": 10, "v": false}', "valves"),
    ("site/x/y", b'{"d": "gate-c", "m": "open", "ts": 10, "v": false}', "other"),
    ("site/x/y", b'[{"d": "pump-1", "m": "rpm", "ts": 10, "v": 1}, {"d": "valve-1", "m": "open", "ts": 10, "v": 1}]',
     "other"),  # a pack mixing groups matches neither device list
])
def test_a_route_with_a_device_list_takes_only_messages_all_of_whose_devices_match(
    topic: str, payload: bytes, stream: str,
) -> None:
    for result in (classify_message(DEVICE_ROUTES, "mqtt", topic, payload, 11),
                   Intake(DEVICE_ROUTES).classify("mqtt", topic, payload, 11)):
        assert isinstance(result, Accepted) and result.stream == stream


def test_a_device_no_route_takes_is_a_dead_letter_naming_the_devices() -> None:
    routes = DEVICE_ROUTES[:2]
    result = Intake(routes).classify("mqtt", "site/x/y", b'{"d": "fan-1", "m": "rpm", "ts": 1, "v": 2}', 11)
    assert isinstance(result, Rejected) and result.letter.reason == "no_route"
    assert "fan-1" in result.letter.message


def test_a_payload_that_does_not_decode_for_a_device_route_is_a_dead_letter_with_its_reason() -> None:
    result = Intake(DEVICE_ROUTES).classify("mqtt", "site/x/y", b"{not json", 11)
    assert isinstance(result, Rejected) and result.letter.reason == "bad_json"


@pytest.mark.parametrize("devices", [("",), ("a\0",), "pump-*"])
def test_bad_device_lists_are_refused(devices: object) -> None:
    with pytest.raises(LocalError):
        Route(TopicTemplate("a"), "s", devices=devices)  # type: ignore[arg-type]


def test_device_lists_come_from_the_config_file() -> None:
    from tidegate.config import parse_config

    config = parse_config('[[routes]]\ntemplate = "site/#"\nstream = "pumps"\ndevices = ["pump-*", "p?"]\n', env={})
    (route,) = config.routes
    assert route.devices == ("pump-*", "p?") and route.takes_devices(["pump-9", "p1"])


def test_a_topics_route_is_remembered_within_a_bound_and_only_without_device_lists() -> None:
    import core.intake

    intake = Intake(ROUTES)
    for i in range(core.intake._ROUTE_CACHE_TOPICS + 10):
        result = intake.classify("mqtt", f"sites/s/sensors/n{i}/temp", b'{"ts": 10, "value": 1}', 11)
        assert isinstance(result, Accepted) and result.readings[0].device == f"n{i}"
    assert 0 < len(intake._route_cache) <= core.intake._ROUTE_CACHE_TOPICS
    # A remembered topic still turns a damaged payload into its dead letter.
    damaged = intake.classify("mqtt", "sites/s/sensors/n1/temp", DamagedPayload(b"x", "bad_crc", "CRC mismatch"), 12)
    assert isinstance(damaged, Rejected) and damaged.letter.reason == "bad_crc"
    # With device lists the route depends on the payload: the same topic goes where its devices say.
    by_device = Intake(DEVICE_ROUTES)
    pump = by_device.classify("mqtt", "site/x/flow", b'{"d": "pump-1", "ts": 10, "v": 1}', 11)
    other = by_device.classify("mqtt", "site/x/flow", b'{"d": "meter-1", "m": "flow", "ts": 10, "v": 1}', 11)
    assert isinstance(pump, Accepted) and isinstance(other, Accepted)
    assert (pump.stream, other.stream) == ("pumps", "other")
    assert by_device._route_cache == {}
