"""The gateway clock probe: the kernel's answer is read, cached, and handed out with both clocks."""

from __future__ import annotations

from edge.clocksync import ClockProbe, clock_synced


def test_probe_answers_a_bool_on_this_machine() -> None:
    assert isinstance(clock_synced(), bool)


def test_sync_state_is_probed_at_most_every_interval() -> None:
    now = [100.0]
    answers = iter([False, True])
    calls = []

    def probe() -> bool:
        calls.append(now[0])
        return next(answers)

    clock = ClockProbe(every_s=10, synced=probe, wall=lambda: 1_700_000_000.5, mono=lambda: now[0])
    assert clock.sample() == (1_700_000_000_500, 100_000, False)
    now[0] = 105.0
    assert clock.sample()[2] is False
    now[0] = 110.0
    assert clock.sample() == (1_700_000_000_500, 110_000, True)
    assert calls == [100.0, 110.0]
