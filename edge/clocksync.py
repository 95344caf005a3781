"""Is the gateway's wall clock synchronised? A tiny probe for core/devicetime.py.

How this works: the kernel knows whether an NTP daemon (systemd-timesyncd,
chrony, ntpd) has disciplined the clock: ``adjtimex(2)`` with no modes set
only reads, and the clock is synchronised when the ``STA_UNSYNC`` status bit
is clear and the maximum error is below 16 s. That is the test systemd's
``timedatectl show -p NTPSynchronized`` makes. We call ``adjtimex`` through
ctypes (a few microseconds, no privileges needed), and fall back to running
``timedatectl`` where the C library has no ``adjtimex``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import subprocess
import time
from collections.abc import Callable

__all__ = ["clock_synced", "ClockProbe"]

log = logging.getLogger("tidegate.clock")

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5
_MAX_ERROR_US = 16_000_000


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (glibc, 64-bit time); padded as the kernel pads it."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
        ("_spare", ctypes.c_byte * 64),  # room for layouts with wider fields
    ]


def _adjtimex_synced() -> bool | None:
    """The kernel's answer, or None if adjtimex cannot be called here."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    if ctypes.sizeof(ctypes.c_long) != 8:
        return None  # 32-bit time layouts differ; let timedatectl answer
    tx = _Timex()
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC and tx.maxerror < _MAX_ERROR_US


def _timedatectl_synced() -> bool:
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "yes"


def clock_synced() -> bool:
    """Whether the wall clock is synchronised (NTP); False when it cannot be told."""
    answer = _adjtimex_synced()
    if answer is None:
        return _timedatectl_synced()
    return answer


class ClockProbe:
    """Wall time, monotonic time and the sync state, for ``DeviceClock.observe``.

    The sync state is probed at most every ``every_s`` seconds (it changes
    rarely and the fallback runs a process). Each change is logged once: a
    clock found unsynchronised (also at the first probe) as a WARNING, since
    readings are then timed and windowed by a clock that cannot be trusted
    and the status page's last-errors table keeps warnings; a clock that
    becomes synchronised at INFO.

    Args:
        every_s: how long a sync answer is reused.
        synced: the probe (injected in tests).
        wall: wall clock in seconds.
        mono: monotonic clock in seconds.
    """

    def __init__(
        self,
        every_s: float = 10.0,
        synced: Callable[[], bool] = clock_synced,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s = every_s
        self._probe = synced
        self._wall = wall
        self._mono = mono
        self._synced = False
        self._probed = False  # the first answer is a change too: the state before it is unknown
        self._next_probe = float("-inf")

    def sample(self) -> tuple[int, int, bool]:
        """``(wall_ms, mono_ms, synced)`` now."""
        mono = self._mono()
        if mono >= self._next_probe:
            synced = self._probe()
            if not synced and (self._synced or not self._probed):
                log.warning("gateway clock not synchronised (NTP): readings without a device time are marked"
                            " unsynced, windows do not close by time and nothing is deleted by age; see tidegate doctor")
            elif synced and not self._synced:
                log.info("gateway clock synchronised")
            self._synced = synced
            self._probed = True
            self._next_probe = mono + self.every_s
        return int(self._wall() * 1000), int(mono * 1000), self._synced
