"""Intake: one received message in, readings to append or a dead letter out.

The pure step between a transport (MQTT, serial) and the log: route the topic
to a stream, decode the payload, and turn any failure into a
:class:`~core.deadletter.DeadLetter` with its reason. The shell appends what
comes out and acknowledges the message once the log holds it durably.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.codecs import SourceFields, decode_payload
from core.deadletter import DeadLetter
from core.errors import InvalidReading, PayloadError
from core.reading import Reading
from core.topics import Route, route_topic

__all__ = ["Accepted", "Rejected", "DamagedPayload", "classify_message"]


class DamagedPayload(bytes):
    """Payload bytes that the transport already knows are bad, with the reason.

    The serial intake hands over a frame whose CRC did not match as a
    ``DamagedPayload``: it travels through the gateway like any payload (it
    *is* the raw bytes), and the intake turns it into a dead letter with its
    reason instead of decoding it. So transport errors end in the same
    dead-letter stream, counted per reason, as payload errors.

    Args:
        raw: the bytes as received.
        reason: the short reason token (``bad_crc``, ``too_long``...).
        detail: a sentence for humans.
    """

    reason: str
    detail: str

    def __new__(cls, raw: bytes, reason: str, detail: str) -> DamagedPayload:
        obj = super().__new__(cls, raw)
        obj.reason = reason
        obj.detail = detail
        return obj


@dataclass(frozen=True, slots=True)
class Accepted:
    stream: str
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    letter: DeadLetter


def classify_message(
    routes: tuple[Route, ...], source: str, topic: str, payload: bytes, received_ms: int
) -> Accepted | Rejected:
    """Decide what becomes of one received message. Never raises on bad input."""
    if isinstance(payload, DamagedPayload):
        return Rejected(DeadLetter(source, topic, received_ms, payload.reason, payload.detail, bytes(payload)))
    routed = route_topic(routes, topic)
    if routed is None:
        return Rejected(DeadLetter(source, topic, received_ms, "no_route", f"no route matches topic {topic!r}", payload))
    route, captured = routed
    fields = SourceFields(device=captured.get("device"), metric=captured.get("metric"))
    try:
        readings = decode_payload(payload, fields, received_ms, route.payload_format)
    except (PayloadError, InvalidReading) as exc:
        return Rejected(DeadLetter(source, topic, received_ms, exc.reason, str(exc), payload))
    return Accepted(route.stream, tuple(readings))
