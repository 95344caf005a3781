"""The node's two clocks: uptime that never wraps, and wall-clock time once it is set.

Theory of operation
-------------------
``time.ticks_ms()`` wraps (at 2**30 ms, about 12.4 days, on ESP32 and
RP2040), and the gateway needs an uptime that does not (docs/serial_format.md,
``up``). :meth:`Clock.uptime_ms` adds ``ticks_diff(now, last)`` to a Python
int on every call; since ``ticks_diff`` is only correct for gaps below half
the period (6.2 days), the sample loop calls it at least once per sample
period (at most a day).

After deep sleep the board starts from reset with ``ticks_ms()`` near 0.
The sample loop then builds the clock with ``uptime_base_ms`` (the uptime
saved before sleeping plus the time slept), so uptime keeps rising within
one boot id, as the gateway's device-time mapping expects. Sleep time is
measured by the chip's slow RTC oscillator and may be off by a few percent;
samples sent after a sleep carry ``su`` (see tidegate_node.encode), so the
gateway can place each one relative to its sending time anyway.

Wall-clock time counts only once it is plausible: a board without a
battery-backed RTC boots at 2000-01-01 (or 1970 on the unix port), and a
timestamp from then would put readings in the wrong time window. Until the
clock reads at least :data:`MIN_VALID_EPOCH_MS` (2024-01-01), ``epoch_ms``
returns :data:`NOT_SET` and samples carry ``up`` instead of ``ts``.

The time API is injected (``time_api``): :class:`tidegate_node._compat.SysTime`
on a board, tests/firmware/shims/faketime.py in tests.
"""

from tidegate_node._compat import SysTime

__all__ = ["NOT_SET", "MIN_VALID_EPOCH_MS", "Clock"]

MIN_VALID_EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z
_EPOCH_2000_MS = 946684800000  # 2000-01-01 in Unix ms: embedded ports' epoch


class _NotSet:
    """Sentinel: the wall clock has not been set."""

    __slots__ = ()

    def __repr__(self):
        return "NOT_SET"

    def __bool__(self):
        return False


NOT_SET = _NotSet()


class Clock:
    """Uptime and wall-clock time.

    Args:
        time_api: an object with ``ticks_ms``, ``ticks_diff``, ``sleep_ms``,
            ``time_ns`` and ``epoch_year`` (default: the real one). The clock
            keeps it for its lifetime.
        uptime_base_ms: the uptime at this moment, for a boot continued from
            deep sleep; 0 on a cold boot.
    """

    def __init__(self, time_api=None, uptime_base_ms=0):
        self._t = time_api if time_api is not None else SysTime()
        self._last = self._t.ticks_ms()
        self._uptime = uptime_base_ms
        self._epoch_offset_ms = _EPOCH_2000_MS if self._t.epoch_year() == 2000 else 0

    def uptime_ms(self):
        """Milliseconds since this boot id began; never wraps, never decreases."""
        now = self._t.ticks_ms()
        delta = self._t.ticks_diff(now, self._last)
        if delta > 0:
            self._uptime += delta
        self._last = now
        return self._uptime

    def epoch_ms(self):
        """Unix time in ms by the board's clock, or :data:`NOT_SET` before it was set."""
        ms = self._t.time_ns() // 1000000 + self._epoch_offset_ms
        return ms if ms >= MIN_VALID_EPOCH_MS else NOT_SET

    def sleep_ms(self, ms):
        """Block for ``ms`` milliseconds (light sleep: RAM and Wi-Fi stay up)."""
        if ms > 0:
            self._t.sleep_ms(ms)
