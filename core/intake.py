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

__all__ = ["Accepted", "Rejected", "classify_message"]


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
