"""Intake: one received message in, readings to append, a duplicate, or a dead letter out.

The pure step between a transport (MQTT, serial) and the log (docs/ingest.md):

1. a payload the transport already marked bad (:class:`DamagedPayload`)
   is a dead letter with the transport's reason;
2. the topic (or serial port path) is routed to a stream, else ``no_route``;
   a route with a device list (core/topics.py) takes the message only if
   every device in it matches, so for such a route the payload is decoded
   first and the next route whose topic matches is tried otherwise;
3. the payload is decoded into samples (core/codecs.py, core/senml.py);
4. each sample's time is put on the gateway's clock (core/devicetime.py) and
   its readings are built and validated; one bad value rejects the message;
5. samples already seen, by (device, boot, seq), are dropped (core/dedup.py).

Any failure becomes a :class:`~core.deadletter.DeadLetter` holding the raw
bytes, the topic, the receive time and the reason. The shell appends what
comes out and acknowledges the message once the log holds it durably. Nothing
here raises on bad input.

:class:`Intake` holds the state (dedup windows, uptime estimates, the
gateway clock's state); :func:`classify_message` is the stateless form, with
neither deduplication nor memory of devices.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress, repeat

from core import msgpack_codec
from core.codecs import SourceFields, decode_payload, decode_samples, decode_with, samples_from_value
from core.columns import Columns, pack_columns, plain_item
from core.deadletter import DeadLetter
from core.dedup import DUPLICATE, ContentDedup, Dedup
from core.devicetime import ClockChange, DeviceClock
from core.errors import InvalidReading, PayloadError
from core.reading import (
    _MAX_TS, _MIN_TS, TIME_DEVICE, TIME_GATEWAY, TIME_MAPPED, Provenance, Reading, decode_record, encode_records,
    Value, encode_series_payloads, readings_of,
)
from core.sample import TIME_KIND_EPOCH, TIME_KIND_RELATIVE, TIME_KIND_UPTIME, Sample
from core.topics import Route, topic_candidates

__all__ = ["Accepted", "Rejected", "Duplicate", "DamagedPayload", "Intake", "classify_message"]


_ROUTE_CACHE_TOPICS = 4096


# Below this many items a pack costs less through the general interpreter: the
# column checks are a fixed cost of a dozen builtin calls (bench/bench_intake_cpu.py).
_COLUMNS_FROM_ITEMS = 5


def _columns_or_samples(
    value: object, source: SourceFields
) -> Columns | tuple[str, str, int, Value] | list[Sample]:
    """A plainly good pack's columns, or a plainly good single object's fields (a tuple), else
    the general interpreter's samples (which raises for bad values)."""
    if value.__class__ is dict:
        item = plain_item(value, source)  # type: ignore[arg-type]
        if item is not None:
            return item
    elif value.__class__ is list and len(value) >= _COLUMNS_FROM_ITEMS:  # type: ignore[arg-type]
        columns = pack_columns(value, source)
        if columns is not None:
            return columns
    return samples_from_value(value, source)


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


@dataclass(slots=True)
class Accepted:
    """Readings to append to ``stream``.

    Not frozen, like :class:`Duplicate`: one is made per message, and a frozen
    dataclass takes about four times as long to make.

    Attributes:
        records: each reading as ``Log.append_many`` takes it, the
            ``(ts_ms, payload)`` of :func:`core.reading.encode_records`, with
            its sample's provenance in the payload when the sample was numbered.
        duplicates: samples of the message dropped as already seen.
        unsynced: readings whose time came from the gateway's clock while it
            was not synchronised (docs/ingest.md, "Device time").
    """

    stream: str
    records: tuple[tuple[int, bytes], ...]
    duplicates: int = 0
    unsynced: int = 0

    @property
    def readings(self) -> tuple[Reading, ...]:
        """The readings, decoded from the records (the writer appends the records and never needs these)."""
        return tuple(decode_record(payload)[0] for _, payload in self.records)


@dataclass(frozen=True, slots=True)
class Rejected:
    letter: DeadLetter


@dataclass(slots=True)
class Duplicate:
    """Every sample of the message was seen before; nothing to append.

    The shell still acknowledges the message, but only once everything
    appended before it is durable: the first copy may not be yet.
    """

    stream: str
    samples: int


def _routed(
    routes: tuple[Route, ...], source: str, topic: str, payload: bytes, received_ms: int
) -> Rejected | tuple[Route, SourceFields, list[Sample] | None]:
    """The route of a message, with the topic's fields and, if a device list made it decode them, the samples."""
    if isinstance(payload, DamagedPayload):
        return Rejected(DeadLetter(source, topic, received_ms, payload.reason, payload.detail, bytes(payload)))
    devices: list[str] = []
    for route, captured in topic_candidates(routes, topic):
        fields = SourceFields(device=captured.get("device"), metric=captured.get("metric"))
        if not route.devices:
            return route, fields, None
        try:
            samples = decode_samples(payload, fields, route.payload_format)
        except (PayloadError, InvalidReading) as exc:
            return Rejected(DeadLetter(source, topic, received_ms, exc.reason, str(exc), payload))
        if route.takes_devices(sample.device for sample in samples):
            return route, fields, samples
        devices = sorted({sample.device for sample in samples})
    detail = f"no route matches topic {topic!r}" + (f" with devices {devices}" if devices else "")
    return Rejected(DeadLetter(source, topic, received_ms, "no_route", detail, payload))


def classify_message(
    routes: tuple[Route, ...], source: str, topic: str, payload: bytes, received_ms: int
) -> Accepted | Rejected:
    """Decide what becomes of one received message, without any state. Never raises on bad input."""
    routed = _routed(routes, source, topic, payload, received_ms)
    if isinstance(routed, Rejected):
        return routed
    route, fields, _ = routed
    try:
        readings = decode_payload(payload, fields, received_ms, route.payload_format)
    except (PayloadError, InvalidReading) as exc:
        return Rejected(DeadLetter(source, topic, received_ms, exc.reason, str(exc), payload))
    return Accepted(route.stream, tuple(encode_records(readings)))


class Intake:
    """The gateway's intake decision, with deduplication and device time.

    Args:
        routes: topic routes to streams.
        dedup: the dedup windows (a default :class:`~core.dedup.Dedup` if None).
        clock: the device-time mapper (a default :class:`~core.devicetime.DeviceClock` if None).
        content_dedup: drop a reading without a sequence number when the same
            series already has the same value at the same device time (see
            :class:`~core.dedup.ContentDedup`).
        columns: read plainly good packs a column at a time (core/columns.py).
            False sends every pack through the general interpreter: the same
            decisions, byte for byte, at about twice the CPU per reading.

    Owns ``dedup`` and ``clock``. Not thread-safe: the gateway's writer thread
    is its one caller, for :meth:`classify` and :meth:`observe_clock` alike.
    """

    def __init__(
        self,
        routes: tuple[Route, ...],
        dedup: Dedup | None = None,
        clock: DeviceClock | None = None,
        content_dedup: bool = True,
        columns: bool = True,
    ) -> None:
        self.routes = routes
        self.dedup = dedup if dedup is not None else Dedup()
        self.content = ContentDedup()
        self.content_dedup = content_dedup
        self.columns = columns
        self.clock = clock if clock is not None else DeviceClock()
        self._clock_observed = False
        self._pack = msgpack_codec.packer().pack
        # A topic's route and fields, once found: sensors publish on a few
        # topics again and again. Only without device lists, where the route
        # depends on the topic alone.
        self._route_cache: dict[str, tuple[Route, SourceFields]] = {}
        self._route_cache_on = not any(route.devices for route in routes)

    def observe_clock(self, wall_ms: int, mono_ms: int, synced: bool) -> ClockChange:
        """Pass the gateway's clocks in; see :meth:`core.devicetime.DeviceClock.observe`."""
        self._clock_observed = True
        return self.clock.observe(wall_ms, mono_ms, synced)

    def classify(self, source: str, topic: str, payload: bytes, received_ms: int) -> Accepted | Rejected | Duplicate:
        """Decide what becomes of one received message. Never raises on bad input.

        Updates the dedup windows (only for samples of an accepted message) and
        the uptime estimates.
        """
        cached = self._route_cache.get(topic)
        if cached is not None and payload.__class__ is not DamagedPayload:
            route, fields = cached
            decoded = None
        else:
            routed = _routed(self.routes, source, topic, payload, received_ms)
            if isinstance(routed, Rejected):
                return routed
            route, fields, decoded = routed
            if self._route_cache_on:
                if len(self._route_cache) >= _ROUTE_CACHE_TOPICS:
                    self._route_cache.clear()  # many distinct topics: start again rather than grow
                self._route_cache[topic] = (route, fields)
        try:
            if decoded is not None:
                samples = decoded
            else:
                # The column path needs a plainly valid receive time, as readings_of tests it.
                plain = self.columns and received_ms.__class__ is int and _MIN_TS <= received_ms <= _MAX_TS
                interpret = _columns_or_samples if plain else samples_from_value
                interpreted = decode_with(payload, fields, route.payload_format, interpret)
                if interpreted.__class__ is Columns:
                    return self._accept_columns(route.stream, interpreted, received_ms)  # type: ignore[arg-type]
                if interpreted.__class__ is tuple:
                    return self._accept_item(route.stream, *interpreted, received_ms)  # type: ignore[misc]
                samples = interpreted  # type: ignore[assignment]
        except (PayloadError, InvalidReading) as exc:
            return Rejected(DeadLetter(source, topic, received_ms, exc.reason, str(exc), payload))
        built: list[list[Reading]] = []
        for index, sample in enumerate(samples):
            try:
                built.append(self._build(sample, received_ms))
            except InvalidReading as exc:
                message = f"pack item {index}: {exc}" if len(samples) > 1 else str(exc)
                return Rejected(DeadLetter(source, topic, received_ms, exc.reason, message, payload))
        readings: list[Reading] = []
        provenance: list[Provenance | None] = []
        duplicates = 0
        dedup = self.dedup
        for sample, sample_readings in zip(samples, built):
            if sample.seq is not None:
                fingerprint = self._fingerprint(sample.time_kind, sample.time_ms, sample.values)
                if dedup.check(sample.device, sample.boot, sample.seq, fingerprint) == DUPLICATE:
                    duplicates += 1
                    continue
                readings.extend(sample_readings)
                provenance.extend([Provenance(sample.boot, sample.seq, fingerprint)] * len(sample_readings))
                continue
            fresh = self.content.fresh(sample_readings) if self.content_dedup else sample_readings
            if not fresh:
                duplicates += 1
                continue
            readings.extend(fresh)
            provenance.extend([None] * len(fresh))
        if not readings:
            return Duplicate(route.stream, duplicates)
        unsynced = 0
        if self._clock_observed and not self.clock.synced:
            unsynced = sum(1 for r in readings if r.time_source != TIME_DEVICE)
            self.clock.unsynced_readings += unsynced
        records = encode_records(readings, provenance if any(provenance) else (), self._pack)
        return Accepted(route.stream, tuple(records), duplicates, unsynced)

    def _fingerprint(self, time_kind: int, time_ms: int, values: list[tuple[str, object]]) -> int:
        """CRC-32 of a sample's msgpack ``[time_kind, time_ms, [[metric, value], ...]]``.

        Stable across processes (unlike ``hash``), because it is stored in the
        log and compared after a restart.
        """
        return zlib.crc32(self._pack((time_kind, time_ms, values)))

    def _accept_item(self, stream: str, device: str, metric: str, ts: int, value: Value,
                     received_ms: int) -> Accepted | Duplicate:
        """What :meth:`classify` decides for a plainly good single object without a sequence number."""
        if self.content_dedup and self.content.check(device, metric, ts, value) == DUPLICATE:
            return Duplicate(stream, 1)
        return Accepted(stream, ((ts, self._pack((device, metric, ts, value, received_ms, TIME_DEVICE))),), 0)

    def _accept_columns(self, stream: str, columns: Columns, received_ms: int) -> Accepted | Duplicate:
        """What :meth:`classify` decides for a plainly good pack, a column at a time (core/columns.py).

        The same decision as the general path: the times are the device's
        clock, so there is nothing to map; numbered samples go through the
        sequence windows one by one, the others through content deduplication
        as one set operation; records are encoded for what is kept, straight
        from the columns.
        """
        devices, metrics, times, values = columns.devices, columns.metrics, columns.times, columns.values
        count = len(times)
        seqs = columns.seqs
        boots = columns.boots if columns.boots is not None else [None] * count
        pack = self._pack
        keep: list[bool] | None = None
        fingerprints: list[int] = []
        if seqs is not None:
            # A sample of one reading is fingerprinted as [0, ts, [[metric, value]]], as _fingerprint does.
            fingerprints = list(map(zlib.crc32, map(pack, zip(repeat(TIME_KIND_EPOCH), times, zip(zip(metrics, values))))))
            keep = self.dedup.fresh_columns(devices, boots, seqs, fingerprints)
        elif self.content_dedup:
            keep = self.content.fresh_columns(devices, metrics, times, values, columns.series)
        kept = count if keep is None else sum(keep)
        if not kept:
            return Duplicate(stream, count)
        if keep is not None:
            devices, metrics, times, values = (list(compress(column, keep)) for column in (devices, metrics, times, values))
        if seqs is None and columns.series is not None and columns.nine_byte_fields:
            device, metric = columns.series
            payloads = encode_series_payloads(device, metric, times, values, received_ms, TIME_DEVICE, pack)
        elif seqs is None:
            payloads = map(pack, zip(devices, metrics, times, values, repeat(received_ms), repeat(TIME_DEVICE)))
        else:
            provenance: Iterable[tuple[object, ...]] = zip(boots, seqs, fingerprints)
            if keep is not None:
                provenance = compress(provenance, keep)
            payloads = map(pack, (
                (device, metric, ts, value, received_ms, TIME_DEVICE, boot, seq, fingerprint)
                for device, metric, ts, value, (boot, seq, fingerprint) in zip(devices, metrics, times, values, provenance)
            ))
        return Accepted(stream, tuple(zip(times, payloads)), count - kept)

    def remember(self, reading: Reading, provenance: Provenance | None) -> None:
        """Mark a reading already in the log as seen (rebuilding the windows after a restart).

        Call it for the tail of each stream, in offset order, before the first
        :meth:`classify`.
        """
        if provenance is not None:
            self.dedup.check(reading.device, provenance.boot, provenance.seq, provenance.fingerprint)
        elif reading.time_source == TIME_DEVICE:
            self.content.check(reading.device, reading.metric, reading.ts_ms, reading.value)

    def _build(self, sample: Sample, received_ms: int) -> list[Reading]:
        kind = sample.time_kind
        if kind == TIME_KIND_EPOCH:
            ts, source = sample.time_ms, TIME_DEVICE
        elif kind == TIME_KIND_UPTIME:
            ts = self.clock.map_uptime(sample.device, sample.boot, sample.time_ms, sample.sent_up_ms, received_ms)
            source = TIME_MAPPED
        elif kind == TIME_KIND_RELATIVE:
            ts, source = received_ms + sample.time_ms, TIME_MAPPED
        else:
            ts, source = received_ms, TIME_GATEWAY
        if ts < 0:
            # The log refuses times before 1970 (docs/log_format.md); refusing here
            # makes it a dead letter instead of an append error in the writer.
            raise InvalidReading(f"device time {ts} ms is before 1970", reason="bad_time", field="ts")
        return readings_of(sample.device, sample.values, ts, received_ms, source)

