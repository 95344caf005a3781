"""The gateway clock probe: the kernel's answer is read, cached, and handed out with both clocks."""

from __future__ import annotations

import logging

import pytest

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


def test_an_unsynchronised_clock_is_a_warning_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    answers = iter([False, False, False, True, True, False])
    clock = ClockProbe(every_s=1, synced=lambda: next(answers), wall=lambda: 1_700_000_000.0, mono=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="tidegate.clock")
    seen = []
    for step in range(6):
        now[0] = float(step)
        for _ in range(50):  # one sample per reading; many readings per probe
            clock.sample()
        seen.append(clock.sample()[2])
    assert seen == [False, False, False, True, True, False]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records] == [
        (logging.WARNING, "gateway clock not synchronised (NTP)"),
        (logging.INFO, "gateway clock synchronised"),
        (logging.WARNING, "gateway clock not synchronised (NTP)"),
    ]


def test_a_clock_synchronised_from_the_start_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = ClockProbe(every_s=1, synced=lambda: True, mono=lambda: 0.0)
    caplog.set_level(logging.DEBUG, logger="tidegate.clock")
    clock.sample()
    assert [r.levelno for r in caplog.records] == [logging.INFO]
