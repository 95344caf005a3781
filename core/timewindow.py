"""Time windows: the time half of the log's and the uplink's partitioning.

A window is the half-open interval ``[start, start + length)`` of device time
in milliseconds since the Unix epoch (UTC). Windows are aligned to the epoch,
so every gateway agrees on them without coordination and an hour window always
starts on the hour.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import LocalError

__all__ = ["MIN_WINDOW_MS", "MAX_WINDOW_MS", "DEFAULT_WINDOW_MS", "Window", "window_of"]

MIN_WINDOW_MS = 60_000
MAX_WINDOW_MS = 86_400_000
DEFAULT_WINDOW_MS = 3_600_000


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """One time window: ``[start_ms, start_ms + length_ms)``."""

    start_ms: int
    length_ms: int

    def __post_init__(self) -> None:
        if not MIN_WINDOW_MS <= self.length_ms <= MAX_WINDOW_MS:
            raise LocalError(
                f"window length {self.length_ms} ms is outside {MIN_WINDOW_MS}..{MAX_WINDOW_MS} ms"
            )
        if self.start_ms % self.length_ms:
            raise LocalError(f"window start {self.start_ms} is not aligned to {self.length_ms} ms")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.length_ms

    def contains(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms


def window_of(ts_ms: int, length_ms: int = DEFAULT_WINDOW_MS) -> Window:
    """Return the window holding ``ts_ms``.

    Python's floor division keeps this right for times before 1970, which a
    device with an unset clock may report.
    """
    return Window(ts_ms - ts_ms % length_ms, length_ms)
