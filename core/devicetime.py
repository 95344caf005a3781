"""Device time: uptimes mapped onto gateway time, and the gateway's own clock watched.

Strategy
--------
A device without a clock stamps a sample with its uptime ``up`` (ms since it
booted). To place the sample on the gateway's clock we need the gateway time
at which the device booted, ``boot_at``; then the sample's time is
``boot_at + up``. Every message gives an upper bound on ``boot_at``::

    boot_at <= received_ms - up_at_send

because the message left the device at uptime ``up_at_send`` and spent some
non-negative time on the way. ``up_at_send`` is ``su`` when the device sends
it, else ``up`` (which is at most the uptime at send, so the bound is weaker:
a sample replayed late without ``su`` says little). The estimate of
``boot_at`` for a (device, boot) is the *lowest* bound seen, so it converges
on the fastest delivery and never gets worse. Using one ``boot_at`` per boot
keeps the mapped times in the order of the uptimes, so a series stays ordered.

Crystals drift (tens of ppm). A device whose uptime runs slow would make every
new bound a little higher than the kept one; to follow it, the kept estimate
may rise by ``drift_ppm`` of the uptime that passed since the last sample
before it is compared with the new bound.

Without a boot id the gateway cannot tell boots apart, so for samples without
``boot`` a bound more than ``reboot_tolerance_ms`` above the estimate is taken
as a reboot and restarts the estimate. (With a boot id a new boot is a new
key.) Send a boot id.

The gateway's clock
-------------------
The shell calls :meth:`DeviceClock.observe` with the wall clock, the monotonic
clock and whether the wall clock is synchronised (NTP). Between two
observations both clocks advance alike unless the wall clock was *stepped*;
a difference of ``jump_threshold_ms`` or more is a jump. Estimates are kept in
wall-clock milliseconds, so on a jump every estimate is moved by the jump
("re-based"), and mapping stays right across it. Messages that were received
before the jump but are mapped after it carry a ``received_ms`` on the old
scale; for a short while after a jump (``JUMP_QUARANTINE_MS`` of monotonic
time) such messages are mapped with the re-based estimates but do not update
them, so an old-scale bound can never stick.

The rule for readings received before the clock is synchronised (also in
docs/ingest.md, "Device time"): a Pi without a real-time clock starts with the
time saved at shutdown (fake-hwclock) and steps forward when NTP syncs, which
may be days later on a site whose only uplink is down. Holding readings until
then would block acknowledgements for days, and keeping them in memory would
lose them on a power cut. So readings are written at once with the gateway's
best time, which for times from the gateway (uptime-mapped, relative, or
missing) is the unsynchronised clock; :attr:`DeviceClock.unsynced_readings`
counts them, and when the clock steps at synchronisation the step is reported
(:class:`ClockChange`), so an operator knows by how much those readings are
off. Readings with the device's own clock (``ts``) are never touched.

Everything here is pure: times are passed in; no clock is read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from core.errors import LocalError

__all__ = ["ClockChange", "DeviceClock", "JUMP_QUARANTINE_MS"]

JUMP_QUARANTINE_MS = 5_000


@dataclass(frozen=True, slots=True)
class ClockChange:
    """What one observation of the gateway's clock found.

    Attributes:
        jump_ms: how far the wall clock was stepped (positive: forward); 0 if not.
        synced: whether the wall clock is synchronised now.
        became_synced: it was not synchronised at the previous observation.
    """

    jump_ms: int
    synced: bool
    became_synced: bool


class _Boot:
    __slots__ = ("boot_at_ms", "last_up_ms")

    def __init__(self, boot_at_ms: int, last_up_ms: int) -> None:
        self.boot_at_ms = boot_at_ms
        self.last_up_ms = last_up_ms


class DeviceClock:
    """Maps uptimes to gateway time per (device, boot), and tracks the gateway clock.

    Args:
        max_boots: how many (device, boot) estimates to keep; the least
            recently used goes first. Each costs about 200 bytes.
        drift_ppm: how fast an estimate may rise to follow a slow device clock.
        jump_threshold_ms: the smallest wall-clock step counted as a jump.
        reboot_tolerance_ms: for samples without a boot id, how far above the
            estimate a bound may be before it counts as a reboot.

    Not thread-safe: one owner (the gateway's writer) calls it.
    """

    def __init__(
        self,
        max_boots: int = 4096,
        drift_ppm: int = 200,
        jump_threshold_ms: int = 1_000,
        reboot_tolerance_ms: int = 10_000,
    ) -> None:
        if max_boots < 1 or drift_ppm < 0 or jump_threshold_ms < 1 or reboot_tolerance_ms < 0:
            raise LocalError("DeviceClock limits must be positive")
        self.max_boots = max_boots
        self.drift_ppm = drift_ppm
        self.jump_threshold_ms = jump_threshold_ms
        self.reboot_tolerance_ms = reboot_tolerance_ms
        self._boots: OrderedDict[tuple[str, int | str | None], _Boot] = OrderedDict()
        self._last: tuple[int, int] | None = None  # (wall_ms, mono_ms) of the last observation
        self._quarantine: tuple[int, int] | None = None  # (until mono_ms, received_ms at or below which is old)
        self.synced = False
        self.jumps = 0
        self.last_jump_ms = 0
        self.unsynced_readings = 0
        self.reboots_guessed = 0

    # -- the gateway's clock -------------------------------------------------

    def observe(self, wall_ms: int, mono_ms: int, synced: bool) -> ClockChange:
        """Record the gateway's clocks; re-base the estimates if the wall clock jumped.

        Args:
            wall_ms: the wall clock (``time.time()`` in ms).
            mono_ms: the monotonic clock (``time.monotonic()`` in ms).
            synced: whether the wall clock is synchronised (edge/clocksync.py).

        Returns:
            The jump found (0 if none) and the synchronisation state.
        """
        jump = 0
        if self._last is not None:
            last_wall, last_mono = self._last
            drift = (wall_ms - last_wall) - (mono_ms - last_mono)
            if abs(drift) >= self.jump_threshold_ms:
                jump = drift
                self.jumps += 1
                self.last_jump_ms = jump
                for boot in self._boots.values():
                    boot.boot_at_ms += jump
                # Messages stamped before the step on the old scale are below
                # this line: up to now for a forward step, up to now + |jump|
                # for a backward one (the old scale was ahead).
                self._quarantine = (mono_ms + JUMP_QUARANTINE_MS, wall_ms + max(0, -jump))
        self._last = (wall_ms, mono_ms)
        became = synced and not self.synced
        self.synced = synced
        return ClockChange(jump, synced, became)

    # -- uptimes ---------------------------------------------------------------

    def map_uptime(self, device: str, boot: int | str | None, up_ms: int, sent_up_ms: int | None, received_ms: int) -> int:
        """The gateway time of a sample taken at uptime ``up_ms``.

        Args:
            device: the device name.
            boot: the device's boot id, or None if it sent none.
            up_ms: the sample's uptime.
            sent_up_ms: the uptime when the message was sent, if the device said.
            received_ms: the gateway's wall-clock time of receipt.

        Returns:
            Milliseconds on the gateway's wall clock; updates the estimate for
            (device, boot) unless the message predates a recent clock jump.
        """
        up_at_send = sent_up_ms if sent_up_ms is not None else up_ms
        bound = received_ms - up_at_send
        key = (device, boot)
        state = self._boots.get(key)
        if self._is_stale(received_ms):
            if state is None:
                return bound + up_ms
            return state.boot_at_ms + up_ms
        if state is None:
            state = _Boot(bound, up_at_send)
            self._boots[key] = state
            if len(self._boots) > self.max_boots:
                self._boots.popitem(last=False)
        else:
            self._boots.move_to_end(key)
            elapsed = up_at_send - state.last_up_ms
            allowed = state.boot_at_ms + (elapsed * self.drift_ppm) // 1_000_000 if elapsed > 0 else state.boot_at_ms
            if boot is None and bound > allowed + self.reboot_tolerance_ms:
                self.reboots_guessed += 1
                state.boot_at_ms = bound
            else:
                state.boot_at_ms = min(bound, allowed)
            if up_at_send > state.last_up_ms:
                state.last_up_ms = up_at_send
        return state.boot_at_ms + up_ms

    def _is_stale(self, received_ms: int) -> bool:
        if self._quarantine is None or self._last is None:
            return False
        until_mono, old_below = self._quarantine
        if self._last[1] >= until_mono:
            self._quarantine = None
            return False
        return received_ms <= old_below

    def boot_at(self, device: str, boot: int | str | None) -> int | None:
        """The current estimate of when (device, boot) booted, in wall-clock ms, if any."""
        state = self._boots.get((device, boot))
        return None if state is None else state.boot_at_ms

    def __len__(self) -> int:
        return len(self._boots)
