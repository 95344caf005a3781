"""Device time: uptime mapping per (device, boot), clock jumps and synchronisation, with a fake clock."""

from __future__ import annotations

import pytest

from core.devicetime import JUMP_QUARANTINE_MS, ClockChange, DeviceClock
from core.errors import LocalError

T0 = 1_700_000_000_000  # gateway wall time when the fake device booted


class FakeGatewayClock:
    """Wall and monotonic clocks that advance together unless stepped."""

    def __init__(self, wall_ms: int = T0, mono_ms: int = 50_000) -> None:
        self.wall_ms = wall_ms
        self.mono_ms = mono_ms

    def advance(self, ms: int) -> None:
        self.wall_ms += ms
        self.mono_ms += ms

    def step(self, ms: int) -> None:
        self.wall_ms += ms


def test_fastest_delivery_wins_and_times_follow_uptime_order() -> None:
    clock = DeviceClock()
    # Sample at uptime 1000 arrives 80 ms late, the next one (uptime 2000) 5 ms late.
    first = clock.map_uptime("n1", 1, 1000, None, T0 + 1000 + 80)
    second = clock.map_uptime("n1", 1, 2000, None, T0 + 2000 + 5)
    assert first == T0 + 1000 + 80
    assert second == T0 + 2000 + 5
    assert clock.boot_at("n1", 1) == T0 + 5
    # A later sample mapped now uses the better estimate.
    assert clock.map_uptime("n1", 1, 3000, None, T0 + 3000 + 60) == T0 + 3005


def test_replay_without_sent_uptime_is_placed_by_the_estimate_from_fresh_samples() -> None:
    clock = DeviceClock()
    clock.map_uptime("n1", 7, 600_000, None, T0 + 600_000 + 10)  # fresh
    # An hour later the ring buffer replays a sample from uptime 610000.
    # (The estimate may rise by drift_ppm of the 10 s of uptime between: 2 ms.)
    assert clock.map_uptime("n1", 7, 610_000, None, T0 + 4_210_000) == T0 + 610_010 + 2
    assert clock.boot_at("n1", 7) == T0 + 10 + 2


def test_sent_uptime_places_a_first_seen_replay_exactly() -> None:
    clock = DeviceClock()
    # Nothing known about this boot; the sample was taken 3,600,000 ms before it was sent.
    ts = clock.map_uptime("n1", 7, 10_000, 3_610_000, T0 + 3_610_000 + 20)
    assert ts == T0 + 10_000 + 20


def test_each_boot_has_its_own_estimate() -> None:
    clock = DeviceClock()
    clock.map_uptime("n1", 1, 5_000, None, T0 + 5_000)
    later_boot = T0 + 86_400_000
    assert clock.map_uptime("n1", 2, 1_000, None, later_boot + 1_000) == later_boot + 1_000
    assert clock.boot_at("n1", 1) == T0 and clock.boot_at("n1", 2) == later_boot


def test_without_boot_id_a_reboot_is_guessed_from_a_jump_in_the_bound() -> None:
    clock = DeviceClock(reboot_tolerance_ms=10_000)
    clock.map_uptime("n1", None, 50_000, None, T0 + 50_000)
    # The device rebooted an hour later; its uptime starts again.
    reboot = T0 + 3_600_000
    assert clock.map_uptime("n1", None, 2_000, None, reboot + 2_000) == reboot + 2_000
    assert clock.reboots_guessed == 1


def test_slow_device_clock_is_followed_within_the_drift_allowance() -> None:
    clock = DeviceClock(drift_ppm=200)
    # The device's uptime runs 50 ppm slow: after 10 days of uptime it is 43.2 s behind.
    day = 86_400_000
    for days in range(1, 11):
        up = days * day - days * day * 50 // 1_000_000
        ts = clock.map_uptime("n1", 1, up, None, T0 + days * day)
        assert abs(ts - (T0 + days * day)) <= 5, days


def test_memory_is_bounded_by_least_recent_use() -> None:
    clock = DeviceClock(max_boots=3)
    for i in range(5):
        clock.map_uptime(f"n{i}", 1, 1000, None, T0)
    assert len(clock) == 3
    assert clock.boot_at("n0", 1) is None and clock.boot_at("n4", 1) is not None


def test_no_jump_when_clocks_advance_together_and_sync_is_reported_once() -> None:
    gw = FakeGatewayClock()
    clock = DeviceClock()
    assert clock.observe(gw.wall_ms, gw.mono_ms, False) == ClockChange(0, False, False)
    gw.advance(10_000)
    assert clock.observe(gw.wall_ms, gw.mono_ms, True) == ClockChange(0, True, True)
    gw.advance(10_000)
    assert clock.observe(gw.wall_ms, gw.mono_ms, True) == ClockChange(0, True, False)
    assert clock.jumps == 0


def test_small_slew_is_not_a_jump() -> None:
    gw = FakeGatewayClock()
    clock = DeviceClock(jump_threshold_ms=1000)
    clock.observe(gw.wall_ms, gw.mono_ms, True)
    gw.advance(1000)
    gw.step(500)
    assert clock.observe(gw.wall_ms, gw.mono_ms, True).jump_ms == 0


@pytest.mark.parametrize("jump", [3 * 86_400_000, -7_200_000])
def test_clock_step_rebases_estimates_so_mapping_stays_right(jump: int) -> None:
    # The Pi booted with the time saved at shutdown; NTP steps it by `jump`.
    gw = FakeGatewayClock(wall_ms=T0)
    clock = DeviceClock()
    clock.observe(gw.wall_ms, gw.mono_ms, False)
    device_boot_wall = gw.wall_ms
    gw.advance(5_000)
    assert clock.map_uptime("n1", 1, 5_000, None, gw.wall_ms) == device_boot_wall + 5_000
    gw.advance(1_000)
    gw.step(jump)
    change = clock.observe(gw.wall_ms, gw.mono_ms, True)
    assert change == ClockChange(jump, True, True)
    assert clock.last_jump_ms == jump and clock.jumps == 1
    # After the step, a fresh sample maps onto the new scale with the old estimate moved.
    gw.advance(JUMP_QUARANTINE_MS + 1_000)
    clock.observe(gw.wall_ms, gw.mono_ms, True)
    up = 5_000 + 1_000 + JUMP_QUARANTINE_MS + 1_000
    assert abs(clock.map_uptime("n1", 1, up, None, gw.wall_ms + 3) - gw.wall_ms) <= 2  # 200 ppm of 7 s
    assert abs(clock.boot_at("n1", 1) - (device_boot_wall + jump)) <= 2  # type: ignore[operator]


@pytest.mark.parametrize("jump", [3 * 86_400_000, -7_200_000])
def test_message_stamped_before_a_step_does_not_corrupt_the_estimate(jump: int) -> None:
    gw = FakeGatewayClock()
    clock = DeviceClock()
    clock.observe(gw.wall_ms, gw.mono_ms, False)
    gw.advance(5_000)
    clock.map_uptime("n1", 1, 5_000, None, gw.wall_ms)
    gw.advance(1_000)
    stamped_old_scale = gw.wall_ms  # received just before the step, mapped just after it
    gw.step(jump)
    clock.observe(gw.wall_ms, gw.mono_ms, True)
    ts = clock.map_uptime("n1", 1, 6_000, None, stamped_old_scale)
    assert ts == gw.wall_ms  # placed on the new scale by the re-based estimate
    assert clock.boot_at("n1", 1) == T0 + jump  # and the estimate did not move


def test_bad_limits_are_refused() -> None:
    with pytest.raises(LocalError):
        DeviceClock(max_boots=0)
