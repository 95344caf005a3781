"""When to close a batch: the batching policy.

The bridge reads a stream's unforwarded records in offset order and cuts them
into runs of one time window (a batch never spans two windows). A run becomes
a batch when it is full (``max_readings``), when the next record belongs to
another window (nothing more can join it), or when its oldest reading has
waited ``linger_ms``. This module holds that decision; the bridge holds the
I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import LocalError

__all__ = ["BatchPolicy"]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_readings: int = 5000
    linger_ms: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.max_readings <= 1_000_000:
            raise LocalError(f"batch max_readings {self.max_readings} is outside 1..1000000")
        if not 0 <= self.linger_ms <= 3_600_000:
            raise LocalError(f"batch linger_ms {self.linger_ms} is outside 0..3600000")

    def should_close(self, count: int, oldest_received_ms: int, window_ended: bool, now_ms: int) -> bool:
        """Whether a run of ``count`` readings should be sent now.

        Args:
            count: readings in the run.
            oldest_received_ms: gateway receive time of its first reading.
            window_ended: the log already holds a later record of another
                window, so no more readings can join this run.
            now_ms: the current gateway time.
        """
        return count >= self.max_readings or window_ended or now_ms - oldest_received_ms >= self.linger_ms
