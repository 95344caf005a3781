"""The batching policy and the adaptive controller (core/batching.py): pure, time passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.batching import (
    BATCH_HEADER_BYTES,
    OVERHEAD_SHARE,
    PER_REQUEST_BYTES,
    BatchController,
    BatchPolicy,
    Limits,
)
from core.errors import LocalError

T0 = 1_704_067_200_000


def feed_arrivals(c: BatchController, rate_per_s: float, seconds: float = 20, stream: str = "s", start: int = T0) -> int:
    """Grow the stream's end offset at ``rate_per_s`` for ``seconds``, observed every 100 ms; return the time."""
    now = start
    for step in range(int(seconds * 10) + 1):
        now = start + step * 100
        c.observe_end(stream, int(rate_per_s * step / 10), now)
    return now


def feed_link(c: BatchController, rtt_ms: float, bytes_per_s: float, now: int, sizes: tuple[int, ...] = (200, 50_000),
              readings: int = 1000) -> None:
    for size in sizes:
        c.observe_send(size, readings, rtt_ms + size * 1000 / bytes_per_s, now)


# -- the policy -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "smart"}, "mode"),
    ({"max_readings": 0}, "1..1000000"),
    ({"linger_ms": -1}, "0..3600000"),
    ({"max_batch_bytes": 10}, "max_batch_bytes"),
    ({"target_latency_ms": 5}, "target_latency_ms"),
    ({"fresh_share": 0.95}, "fresh_share"),
    ({"fresh_share": True}, "fresh_share"),
    ({"max_bytes_per_s": -1}, "max_bytes_per_s"),
])
def test_bad_settings_are_refused_with_the_allowed_range(kwargs: dict, message: str) -> None:
    with pytest.raises(LocalError, match=message):
        BatchPolicy(**kwargs)


def test_fixed_mode_closes_exactly_at_its_own_limits() -> None:
    policy = BatchPolicy(mode="fixed", max_readings=100, linger_ms=200, max_batch_bytes=4096)
    c = BatchController(policy)
    feed_arrivals(c, 5000)
    limits = c.limits("s", backlog=10**6, now_ms=T0)
    assert limits == Limits(100, 4096, 200)
    assert policy.should_close(100, T0, False, T0) and policy.should_close(1, T0, True, T0)
    assert policy.should_close(1, T0, False, T0 + 200) and not policy.should_close(99, T0, False, T0 + 199)


def test_limits_close_on_count_bytes_window_or_age() -> None:
    limits = Limits(max_readings=10, max_bytes=1000, linger_ms=50)
    assert not limits.should_close(9, 999, T0, False, T0 + 49)
    assert limits.should_close(10, 0, T0, False, T0)
    assert limits.should_close(1, 1000, T0, False, T0)
    assert limits.should_close(1, 1, T0, True, T0)
    assert limits.should_close(1, 1, T0, False, T0 + 50)


# -- what it measures -------------------------------------------------------------


def test_the_arrival_rate_follows_the_log_end() -> None:
    c = BatchController()
    assert c.arrival_rate("s") == 0.0
    now = feed_arrivals(c, 250, seconds=10)
    assert c.arrival_rate("s") == pytest.approx(250, rel=0.05)
    # The rate drops to 10/s; the estimate follows with a time constant of seconds.
    end = int(250 * 10)
    for step in range(1, 301):
        c.observe_end("s", end + step, now + step * 100)
        if step == 100:
            assert c.arrival_rate("s") < 50
    assert c.arrival_rate("s") == pytest.approx(10, abs=2)


def test_the_first_interval_sets_the_rate_at_once() -> None:
    c = BatchController()
    c.observe_end("s", 0, T0)
    c.observe_end("s", 100, T0 + 100)
    assert c.arrival_rate("s") == pytest.approx(1000)


def test_round_trip_and_throughput_are_told_apart() -> None:
    c = BatchController()
    assert c.rtt_ms == 100.0 and math.isinf(c.throughput)  # priors, until a send is seen
    c.observe_send(300, 10, 60.5, T0)  # a small batch: the round trip
    assert c.rtt_ms == pytest.approx(60.5) and math.isinf(c.throughput)  # transfer too small to tell
    c.observe_send(100_000, 20_000, 60 + 100, T0 + 200)  # 100 kB in 100 ms beyond the round trip
    assert c.throughput == pytest.approx(100_000 / (160 - 60.5), rel=0.01)  # bytes per ms


def test_the_bandwidth_cap_bounds_the_throughput_estimate() -> None:
    c = BatchController(BatchPolicy(max_bytes_per_s=5000))
    assert c.throughput == 5.0
    feed_link(c, 50, 1_000_000, T0)
    assert c.throughput == 5.0


def test_busy_share_rises_with_sending_and_decays_when_idle() -> None:
    c = BatchController()
    for i in range(600):
        c.observe_send(1000, 100, 50, T0 + i * 100)  # 50 ms of every 100, for a minute
    assert c.busy(T0 + 60_000) == pytest.approx(0.5, abs=0.05)
    assert c.busy(T0 + 120_000) < 0.01


# -- what it decides --------------------------------------------------------------


def test_at_a_trickle_on_a_good_link_it_spends_the_latency_budget_lingering() -> None:
    c = BatchController(BatchPolicy(target_latency_ms=800))
    now = feed_arrivals(c, 1)
    feed_link(c, 60, 1_000_000, now, sizes=(200,))
    limits = c.limits("s", backlog=0, now_ms=now)
    margin = 20 + 80
    assert not limits.behind
    assert limits.linger_ms == pytest.approx(800 - margin - 60, abs=15)


def test_a_lower_target_means_a_shorter_linger() -> None:
    lingers = []
    for target in (200, 400, 800, 1600):
        c = BatchController(BatchPolicy(target_latency_ms=target, linger_ms=10_000))
        now = feed_arrivals(c, 10)
        feed_link(c, 60, 1_000_000, now, sizes=(200,))
        lingers.append(c.limits("s", 0, now).linger_ms)
    assert lingers == sorted(lingers) and lingers[0] < 150 < 1200 < lingers[-1]


def test_linger_never_exceeds_its_cap() -> None:
    c = BatchController(BatchPolicy(target_latency_ms=60_000, linger_ms=250))
    now = feed_arrivals(c, 1)
    assert c.limits("s", 0, now).linger_ms == 250


def test_at_high_rates_a_batch_closes_once_the_overhead_is_small() -> None:
    c = BatchController()
    now = feed_arrivals(c, 10_000)
    for _ in range(10):
        c.observe_send(8080, 4000, 65, now)  # 2 bytes per reading
    limits = c.limits("s", backlog=0, now_ms=now)
    enough = (PER_REQUEST_BYTES + BATCH_HEADER_BYTES) / (OVERHEAD_SHARE * c.reading_bytes)
    assert limits.max_readings == int(enough)
    assert 2000 < limits.max_readings < 10_000


def test_what_is_already_waiting_goes_in_one_batch() -> None:
    c = BatchController()
    now = feed_arrivals(c, 10_000)
    c.observe_send(8080, 4000, 65, now)
    assert c.limits("s", backlog=7000, now_ms=now).max_readings == 7000


def test_on_a_slow_round_trip_a_reading_waits_half_of_it_for_company() -> None:
    c = BatchController(BatchPolicy(target_latency_ms=800))
    now = feed_arrivals(c, 1)
    for i in range(10):  # 2G: half a second per round trip, and busy
        c.observe_send(100, 1, 500, now - 5000 + i * 500)
    assert c.limits("s", 0, now).linger_ms >= 250


def test_a_backlog_is_sent_for_throughput_in_sends_of_the_budget() -> None:
    c = BatchController(BatchPolicy(send_budget_ms=2000, max_readings=1_000_000, max_batch_bytes=64 << 20))
    now = feed_arrivals(c, 100)
    feed_link(c, 500, 20_000, now, sizes=(100, 20_000, 20_000), readings=10_000)  # 2G: 20 kB/s, 2 B/reading
    limits = c.limits("s", backlog=500_000, now_ms=now)
    assert limits.behind and limits.linger_ms == 0
    # 1.5 s of transfer at 20 kB/s, 2 bytes a reading.
    assert limits.max_readings == pytest.approx(1500 * 20 / c.reading_bytes, rel=0.05)


def test_a_backlog_on_an_unmeasured_link_goes_in_batches_of_the_cap() -> None:
    c = BatchController(BatchPolicy(max_readings=7000))
    now = feed_arrivals(c, 100)
    limits = c.limits("s", backlog=100_000, now_ms=now)
    assert limits.behind and limits.max_readings == 7000


def test_behind_means_more_waiting_than_one_target_latency_brings() -> None:
    c = BatchController(BatchPolicy(target_latency_ms=1000))
    now = feed_arrivals(c, 500)
    assert not c.limits("s", backlog=400, now_ms=now).behind
    assert c.limits("s", backlog=600, now_ms=now).behind


def test_the_last_limits_are_exposed_for_metrics() -> None:
    c = BatchController(BatchPolicy(max_readings=123, linger_ms=45))
    assert (c.current_max_readings, c.current_linger_ms, c.max_readings, c.linger_ms) == (123, 45, 123, 45)
    now = feed_arrivals(c, 10)
    limits = c.limits("s", 0, now)
    assert (c.current_max_readings, c.current_linger_ms) == (limits.max_readings, limits.linger_ms)


@given(
    rate=st.floats(0, 50_000),
    rtt=st.floats(0.1, 5000),
    bandwidth=st.floats(100, 1e9),
    backlog=st.integers(0, 10**7),
    per_reading=st.floats(0.5, 500),
    busy_sends=st.integers(0, 30),
)
def test_limits_always_stay_within_the_caps(rate: float, rtt: float, bandwidth: float, backlog: int,
                                            per_reading: float, busy_sends: int) -> None:
    policy = BatchPolicy(max_readings=5000, linger_ms=700, max_batch_bytes=100_000)
    c = BatchController(policy)
    now = feed_arrivals(c, rate, seconds=2)
    for i in range(busy_sends):
        size = int(per_reading * 100) + BATCH_HEADER_BYTES
        c.observe_send(size, 100, rtt + size * 1000 / bandwidth, now - busy_sends + i)
    limits = c.limits("s", backlog, now)
    assert 1 <= limits.max_readings <= 5000
    assert 0 <= limits.linger_ms <= 700
    assert limits.max_bytes == 100_000


def test_a_clock_stepped_back_does_not_hold_a_run() -> None:
    # Readings received while the clock was three days ahead, and the clock set right since:
    # their receive times lie in the future; the run goes now instead of in three days.
    from core.batching import BatchPolicy

    policy = BatchPolicy()
    received = 1_767_225_600_000 + 3 * 86_400_000
    assert policy.should_close(1, received, False, received - 3 * 86_400_000)


def test_a_receive_time_a_little_in_the_future_still_lingers() -> None:
    # A reading that arrived while the bridge was sending, stamped after the
    # bridge read the clock: an ordinary run, not a clock step.
    limits = Limits(max_readings=100, max_bytes=10_000, linger_ms=200)
    assert not limits.should_close(1, 10, T0 + 5, False, T0)
    assert not BatchPolicy(linger_ms=200).should_close(1, T0 + 900, False, T0)
    assert limits.should_close(1, 10, T0 + 5, False, T0 + 205)
    assert limits.should_close(1, 10, T0 + 60_000, False, T0)  # a minute ahead: the clock was stepped back
