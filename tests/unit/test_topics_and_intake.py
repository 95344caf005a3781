"""Topic templates, routes, and the intake's accept-or-dead-letter decision."""

from __future__ import annotations

import pytest

from core.deadletter import DeadLetter, decode_dead_letter, encode_dead_letter
from core.errors import LocalError
from core.intake import Accepted, Rejected, classify_message
from core.reading import Reading
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
    assert result == Accepted("sensors", (Reading("n1", "temp", 10, 2.5, 11),))


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


def test_dead_letter_record_round_trips() -> None:
    letter = DeadLetter("serial", "/dev/serial/by-id/x", 5, "bad_crc", "frame CRC mismatch", b"\x00\xff")
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_payload_the_transport_marked_damaged_is_a_dead_letter_with_its_reason() -> None:
    from core.intake import DamagedPayload

    raw = b"\x01\x21\x85\xa1"
    result = classify_message(ROUTES, "serial", "/dev/serial/by-id/x", DamagedPayload(raw, "bad_crc", "CRC mismatch"), 9)
    assert result == Rejected(DeadLetter("serial", "/dev/serial/by-id/x", 9, "bad_crc", "CRC mismatch", raw))
    assert type(result.letter.raw) is bytes  # type: ignore[union-attr]
