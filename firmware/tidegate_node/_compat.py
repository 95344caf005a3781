"""What differs between MicroPython and CPython, in one place.

The firmware runs unchanged on both: on a board, in the MicroPython test VM,
and under CPython in the host tests. Everything else in the package imports
these names from here instead of testing ``sys.implementation`` itself.
"""

import sys
import time

try:  # MicroPython: const() folds the value into the bytecode
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


MICROPYTHON = sys.implementation.name == "micropython"

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    sleep_ms = time.sleep_ms
else:  # CPython: the same wrapping arithmetic as the ports (period 2**30 ms)
    _TICKS_PERIOD = 1 << 30
    _TICKS_HALF = 1 << 29

    def ticks_ms():
        return int(time.monotonic() * 1000) & (_TICKS_PERIOD - 1)

    def ticks_diff(new, old):
        return ((new - old + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF

    def sleep_ms(ms):
        time.sleep(ms / 1000)


def load_serial_frame():
    """core/serial_frame.py: /lib/serial_frame.py on a board, ``core.serial_frame`` in the repository."""
    try:
        import serial_frame
    except ImportError:
        from core import serial_frame
    return serial_frame


def random32():
    """32 random bits: the hardware RNG where the port has ``os.urandom``."""
    try:
        import os

        return int.from_bytes(os.urandom(4), "big")
    except (ImportError, AttributeError):
        # The WebAssembly test VM has no os.urandom; on ESP32 and RP2040
        # random is seeded from the hardware RNG at boot.
        import random

        return random.getrandbits(32)


def float_mant_dig():
    """53 where ``float`` is an IEEE double, 24 where it is single (ESP32, RP2040 builds)."""
    # 1 + 2**-52 is only distinguishable from 1.0 in double precision.
    return 53 if 1.0 + 2.0**-52 != 1.0 else 24


class SysTime:
    """The real time API (``time`` on a board, a CPython stand-in on the host).

    :class:`tidegate_node.clock.Clock` takes an object with these methods, so
    tests can hand it a fake (tests/firmware/shims/faketime.py) instead.
    """

    def ticks_ms(self):
        return ticks_ms()

    def ticks_diff(self, new, old):
        return ticks_diff(new, old)

    def sleep_ms(self, ms):
        sleep_ms(ms)

    def time_ns(self):
        if hasattr(time, "time_ns"):
            return time.time_ns()
        return int(time.time()) * 1000000000

    def epoch_year(self):
        # Embedded ports count seconds from 2000-01-01, unix ones from 1970.
        return time.gmtime(0)[0]
