"""The token bucket behind the uplink's bandwidth cap (core/ratelimit.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import LocalError
from core.ratelimit import TokenBucket, Unlimited


def test_a_full_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=500, now_ms=0)
    assert bucket.try_take(500, 0)
    assert not bucket.try_take(1, 0)
    assert bucket.wait_ms(100, 0) == pytest.approx(100)
    assert not bucket.try_take(100, 99)
    assert bucket.try_take(100, 100)


def test_a_send_bigger_than_the_burst_goes_when_full_and_leaves_a_debt() -> None:
    bucket = TokenBucket(rate=1000, burst=500, now_ms=0)
    assert bucket.try_take(2000, 0)
    assert bucket.level(0) == -1500
    assert bucket.wait_ms(2000, 0) == pytest.approx(2000)  # back to full: 1.5 s of debt + 0.5 s
    assert not bucket.try_take(2000, 1999)
    assert bucket.try_take(2000, 2000)


def test_a_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=1000, burst=1000, now_ms=10_000)
    assert bucket.try_take(1000, 10_000)
    assert bucket.level(5_000) == 0
    assert bucket.level(10_500) == 500


def test_a_refused_take_changes_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=100, now_ms=0)
    bucket.try_take(90, 0)
    assert not bucket.try_take(50, 0)
    assert bucket.level(0) == 10


@pytest.mark.parametrize("rate, burst", [(0, None), (-1, None), (10, 0)])
def test_bad_rates_are_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(LocalError):
        TokenBucket(rate, burst)


def test_unlimited_never_says_no() -> None:
    bucket = Unlimited()
    assert bucket.try_take(10**12, 0) and bucket.wait_ms(10**12, 0) == 0


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 20_000)), max_size=200))
def test_bytes_taken_never_exceed_rate_times_time_plus_burst_plus_one_send(sends: list[tuple[int, int]]) -> None:
    rate, burst = 2000.0, 1000.0
    bucket = TokenBucket(rate, burst, now_ms=0)
    now = 0
    taken = 0
    biggest = 0
    for gap, size in sends:
        now += gap
        if bucket.try_take(size, now):
            taken += size
            biggest = max(biggest, size)
    assert taken <= rate * now / 1000 + burst + biggest
