"""The pure decisions: rolling, closing windows, early data, retention and quota plans."""

from __future__ import annotations

import pytest

from core.log import InvalidLogConfig, LogConfig
from core.log import _policy as policy
from core.log import format as fmt

W = policy.WindowInfo


def test_an_empty_segment_never_rolls_even_for_a_huge_record() -> None:
    assert not policy.should_roll(0, 0, 10**9, 1024, 0, has_records=False)


def test_roll_on_size_and_on_index_overflow() -> None:
    assert policy.should_roll(900, 100, 25, 1024, 5, True)
    assert not policy.should_roll(900, 100, 24, 1024, 5, True)
    assert policy.should_roll(10, 0, 10, 2**31, fmt.MAX_RELATIVE + 1, True)


def test_window_closes_after_its_end_plus_grace_and_seals_after_quiet() -> None:
    assert not policy.window_closed(0, 60_000, 60_000 + 999, 1000)
    assert policy.window_closed(0, 60_000, 61_000, 1000)
    assert not policy.sealable(0, 60_000, last_append_ms=70_000, now_ms=70_500, grace_ms=1000)
    assert policy.sealable(0, 60_000, last_append_ms=70_000, now_ms=71_000, grace_ms=1000)


def test_early_means_strictly_beyond_the_bound() -> None:
    assert not policy.is_early(1100, 1000, 100)
    assert policy.is_early(1101, 1000, 100)


def test_retention_needs_forwarded_closed_and_old() -> None:
    windows = [W("s", 0, 60_000, 9, 100, 10, 0, "block"), W("s", 60_000, 60_000, 19, 100, 10, 0, "block"),
               W("s", 120_000, 60_000, 29, 100, 10, 0, "block", busy=True)]
    victims = policy.retention_victims(windows, {"s": 30}, now_ms=180_000 + 1000, retention_ms=60_000, grace_ms=0)
    assert [w.start_ms for w in victims] == [0, 60_000]
    assert policy.retention_victims(windows, {"s": 10}, 10**9, 0, 0) == [windows[0]]


def test_quota_plan_takes_forwarded_first_then_lowest_priority_oldest() -> None:
    windows = [
        W("hi", 0, 60_000, 5, 100, 5, 10, "drop_oldest"),
        W("lo", 60_000, 60_000, 8, 100, 3, 0, "drop_oldest"),
        W("lo", 0, 60_000, 2, 100, 3, 0, "drop_oldest"),
        W("blk", 0, 60_000, 7, 100, 8, 0, "block"),
        W("done", 0, 60_000, 4, 50, 5, 0, "block"),
    ]
    plan = policy.quota_plan(windows, {"done": 5}, need=250, priority=10, policy="block")
    assert [w.stream for w in plan.forwarded] == ["done"]
    assert [(w.stream, w.start_ms) for w in plan.dropped] == [("lo", 0), ("lo", 60_000)]
    assert policy.quota_plan(windows, {}, need=1000, priority=10, policy="block") is None
    same = policy.quota_plan(windows, {}, need=300, priority=10, policy="drop_oldest")
    assert [(w.stream, w.start_ms) for w in same.dropped] == [("lo", 0), ("lo", 60_000), ("hi", 0)]
    assert policy.quota_plan(windows, {}, need=1, priority=0, policy="block") is None  # nothing lower


@pytest.mark.parametrize("field,value", [
    ("window_ms", 59_999), ("window_ms", 86_400_001), ("segment_bytes", 100), ("sync_policy", "sometimes"),
    ("sync_interval_ms", 0), ("late_policy", "drop"), ("early_policy", "clamp"), ("early_bound_ms", -1),
    ("max_open_windows", 0), ("quota_bytes", 10), ("quota_policy", "evict"), ("forward_cursor", "a/b"),
    ("quota_policies", {"s": "nope"}), ("priorities", {"s": "high"}), ("priorities", {"bad/name": 1}),
    ("window_ms", True),
])
def test_config_names_the_field_the_value_and_what_is_allowed(field, value) -> None:
    with pytest.raises(InvalidLogConfig) as info:
        LogConfig(**{field: value})
    assert field.split("[")[0] in str(info.value)


def test_config_freezes_its_mappings() -> None:
    source = {"s": "drop_oldest"}
    config = LogConfig(quota_policies=source)
    source["s"] = "block"
    assert config.quota_policy_of("s") == "drop_oldest"
    with pytest.raises(TypeError):
        config.quota_policies["s"] = "block"  # type: ignore[index]
