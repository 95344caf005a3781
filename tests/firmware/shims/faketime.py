"""A fake of the time API that tidegate_node.clock.Clock takes: deterministic, wrapping ticks.

``ticks_ms`` wraps at 2**30 like the ESP32 and RP2040 ports, and starts
close to the wrap (``start_ticks``) when a test wants to cross it. Time only
moves when the code under test sleeps or the test calls :meth:`advance`.
The wall clock is unset (it reads 2000-01-01 on an embedded port) until
:meth:`set_epoch_ms` is called, as on a board before NTP.
"""

TICKS_PERIOD = 1 << 30


class FakeTime:
    def __init__(self, start_ticks=0, epoch_year=2000, world_unix_ms=1767225600000):
        self.ticks = start_ticks % TICKS_PERIOD
        self.monotonic_ms = 0  # total time elapsed, for assertions
        self.world_start_ms = world_unix_ms  # the true Unix time at monotonic 0 (what NTP would say)
        self.sleeps = []  # every sleep_ms argument, in order
        self._events = []  # (monotonic ms, function), fired by advance()
        self._epoch_year = epoch_year
        self._rtc_ms = 0  # ms since the port's epoch

    # The time API of tidegate_node._compat.SysTime.
    def ticks_ms(self):
        return self.ticks

    def ticks_diff(self, new, old):
        half = TICKS_PERIOD // 2
        return ((new - old + half) % TICKS_PERIOD) - half

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        self.advance(ms)

    def time_ns(self):
        return self._rtc_ms * 1000000

    def epoch_year(self):
        return self._epoch_year

    # Test controls.
    def advance(self, ms):
        self.ticks = (self.ticks + ms) % TICKS_PERIOD
        self.monotonic_ms += ms
        self._rtc_ms += ms
        while self._events and self._events[0][0] <= self.monotonic_ms:
            self._events.pop(0)[1]()

    def at(self, monotonic_ms, function):
        """Call ``function`` once time reaches ``monotonic_ms`` (to script outages)."""
        self._events.append((monotonic_ms, function))
        self._events.sort(key=lambda e: e[0])

    def reboot(self, after_ms):
        """A board reset after ``after_ms`` (deep sleep): time passes, ticks restart at 0, the RTC keeps counting."""
        self.advance(after_ms)
        self.ticks = 0

    def world_ms(self):
        """The true Unix time now: what an NTP server answers."""
        return self.world_start_ms + self.monotonic_ms

    def set_epoch_ms(self, unix_ms):
        """Set the wall clock, as ntptime.settime() would."""
        offset = 946684800000 if self._epoch_year == 2000 else 0
        self._rtc_ms = unix_ms - offset
