"""Samples: what a payload says, before the gateway's clock and memory are applied.

A :class:`Sample` is one object of a payload: one device's values at one
time, with the keys that deduplication (``boot``, ``seq``) and device-time
mapping (uptime) need. Codecs (core/codecs.py, core/senml.py) produce samples;
the intake (core/intake.py) drops duplicate samples, maps their times onto
gateway time, and only then builds :class:`~core.reading.Reading` objects, so
each reading is built and validated once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.reading import TIME_DEVICE, TIME_GATEWAY, TIME_MAPPED, Reading, readings_of

__all__ = [
    "TIME_KIND_EPOCH",
    "TIME_KIND_UPTIME",
    "TIME_KIND_RELATIVE",
    "TIME_KIND_NONE",
    "Sample",
    "UptimeMapper",
    "naive_uptime",
    "readings_from_samples",
]

# What a sample's time_ms means.
TIME_KIND_EPOCH = 0  # ms since the Unix epoch, by the device's clock
TIME_KIND_UPTIME = 1  # ms since the device booted (no clock); mapped onto gateway time
TIME_KIND_RELATIVE = 2  # ms relative to the moment of receipt (SenML t < 2**28); negative is the past
TIME_KIND_NONE = 3  # the device sent no time


@dataclass(slots=True)
class Sample:
    """One device's values at one time.

    Attributes:
        device: the device name (already validated as a string).
        values: ``(metric, value)`` pairs; values are checked when readings are built.
        time_kind: one of the ``TIME_KIND_*`` constants.
        time_ms: the time, read as ``time_kind`` says (0 for ``TIME_KIND_NONE``).
        boot: the device's boot id (int or str), if it sent one.
        seq: the sample's sequence number within the boot, if it sent one.
        sent_up_ms: the device's uptime when it sent the message (``su``), if it
            sent one; makes uptime mapping exact for replayed samples.
    """

    device: str
    values: list[tuple[str, object]]
    time_kind: int = TIME_KIND_NONE
    time_ms: int = 0
    boot: int | str | None = None
    seq: int | None = None
    sent_up_ms: int | None = field(default=None)


UptimeMapper = Callable[[Sample, int], int]


def naive_uptime(sample: Sample, received_ms: int) -> int:
    """Map an uptime sample to gateway time without any memory of the device.

    With ``su`` the sample was taken ``su - up`` ms before it was sent; without
    it, the sample is assumed to have been sent as soon as it was taken.
    core/devicetime.py does better for devices seen before.
    """
    if sample.sent_up_ms is not None:
        return received_ms - (sample.sent_up_ms - sample.time_ms)
    return received_ms


def readings_from_samples(
    samples: list[Sample], received_ms: int, map_uptime: UptimeMapper = naive_uptime, now_ms: int | None = None
) -> list[Reading]:
    """Build readings from samples.

    Args:
        samples: decoded samples.
        received_ms: the gateway's receive time, stored in every reading.
        map_uptime: turns an uptime sample into gateway time in ms.
        now_ms: the gateway time that relative and missing times are based
            on; ``received_ms`` unless the caller has a better estimate.

    Raises:
        InvalidReading: a value or name is not allowed in a reading.
    """
    base = received_ms if now_ms is None else now_ms
    out: list[Reading] = []
    for sample in samples:
        kind = sample.time_kind
        if kind == TIME_KIND_EPOCH:
            ts, source = sample.time_ms, TIME_DEVICE
        elif kind == TIME_KIND_UPTIME:
            ts, source = map_uptime(sample, received_ms), TIME_MAPPED
        elif kind == TIME_KIND_RELATIVE:
            ts, source = base + sample.time_ms, TIME_MAPPED
        else:
            ts, source = base, TIME_GATEWAY
        out += readings_of(sample.device, sample.values, ts, received_ms, source)
    return out
