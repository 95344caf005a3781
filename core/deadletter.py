"""Dead letters: input the gateway could not accept, kept with the reason.

Nothing a sensor sends disappears silently (guarantee 7). A message that does
not decode, or decodes to invalid readings, is appended whole to the
dead-letter stream :data:`DEAD_LETTER_STREAM` of the log. Its record payload is
the msgpack array ``[source, topic, received_ms, reason, message, raw]``:

* ``source``: ``"mqtt"`` or ``"serial"``;
* ``topic``: the MQTT topic, or the serial port's stable path;
* ``received_ms``: the gateway's receive time;
* ``reason``: the short reason token that is also the metric label;
* ``message``: the human-readable error, naming the field;
* ``raw``: the payload bytes exactly as received.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import msgpack_codec

from core.errors import InvalidReading

__all__ = ["DEAD_LETTER_STREAM", "DeadLetter", "encode_dead_letter", "decode_dead_letter"]

DEAD_LETTER_STREAM = "_deadletter"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    topic: str
    received_ms: int
    reason: str
    message: str
    raw: bytes


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return msgpack_codec.packb(
        [letter.source, letter.topic, letter.received_ms, letter.reason, letter.message, letter.raw]
    )


def decode_dead_letter(payload: bytes) -> DeadLetter:
    """Decode a dead-letter record.

    Raises:
        InvalidReading: the record is not a dead letter.
    """
    try:
        fields = msgpack_codec.unpackb(payload)
    except msgpack_codec.MsgpackError as exc:
        raise InvalidReading(f"dead-letter record is not msgpack: {exc}", reason="bad_record") from exc
    if (
        not isinstance(fields, list)
        or len(fields) != 6
        or not all(isinstance(f, str) for f in (fields[0], fields[1], fields[3], fields[4]))
        or type(fields[2]) is not int
        or not isinstance(fields[5], bytes)
    ):
        raise InvalidReading("dead-letter record must be [str, str, int, str, str, bytes]", reason="bad_record")
    return DeadLetter(*fields)
