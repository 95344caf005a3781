"""Dead letters: the raw-bytes cap, the flood budget, the rate-limited log lines, the stream's quota policy."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import msgpack_codec
from core.deadletter import (
    DEAD_LETTER_PRIORITY, DEAD_LETTER_STREAM, FLOOD, RAW_CAP_BYTES, DeadLetter, DeadLetterBudget, DeadLetterPolicy,
    RejectionLog, decode_dead_letter, encode_dead_letter, with_dead_letter_quota,
)
from core.errors import InvalidReading, LocalError
from core.log import LogConfig


def letter(topic: str = "sensors/x", reason: str = "bad_json", raw: bytes = b"\xc1", at: int = 1000) -> DeadLetter:
    return DeadLetter("mqtt", topic, at, reason, "not JSON", raw)


# --------------------------------------------------------------------------- the cap


def test_a_big_payload_keeps_its_first_bytes_its_length_and_its_hash() -> None:
    raw = bytes(range(256)) * 40  # 10,240 bytes
    decoded = decode_dead_letter(encode_dead_letter(letter(raw=raw)))
    assert decoded.raw == raw[:RAW_CAP_BYTES]
    assert decoded.original_length == len(raw)
    assert decoded.sha256 == hashlib.sha256(raw).digest()
    assert len(encode_dead_letter(letter(raw=raw))) < RAW_CAP_BYTES + 200


def test_a_payload_under_the_cap_is_kept_whole_and_round_trips() -> None:
    original = DeadLetter("serial", "/dev/serial/by-id/x", 5, "bad_crc", "frame CRC mismatch", b"\x00\xff")
    decoded = decode_dead_letter(encode_dead_letter(original))
    assert decoded == original
    assert decoded.raw_len is None and decoded.original_length == 2


def test_the_cap_is_the_callers_to_choose() -> None:
    decoded = decode_dead_letter(encode_dead_letter(letter(raw=b"abcdef"), raw_cap=2))
    assert (decoded.raw, decoded.original_length) == (b"ab", 6)


def test_records_of_older_logs_without_length_and_hash_still_decode() -> None:
    old = msgpack_codec.packb(["mqtt", "t", 1, "bad_json", "m", b"raw bytes"])
    decoded = decode_dead_letter(old)
    assert (decoded.raw, decoded.original_length, decoded.sha256) == (b"raw bytes", 9, hashlib.sha256(b"raw bytes").digest())


@pytest.mark.parametrize("fields", [
    ["mqtt", "t", 1, "r", "m", b"raw", 2, b"\x00" * 32],       # length below the bytes kept
    ["mqtt", "t", 1, "r", "m", b"raw", 3, b"\x00" * 31],       # not a SHA-256
    ["mqtt", "t", 1, "flood", "m", b"", 0, b"\x00" * 32, {"bad_json": 0}],
    ["mqtt", "t", 1, "r", "m", b"raw", 3],
])
def test_malformed_records_are_refused(fields: list[object]) -> None:
    with pytest.raises(InvalidReading):
        decode_dead_letter(msgpack_codec.packb(fields))


# --------------------------------------------------------------------------- the budget


def test_a_topic_gets_its_burst_then_its_rate_and_the_rest_is_summarised() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_rate=2, per_topic_burst=5, total_rate=100, total_burst=100))
    stored = [budget.admit(letter(at=i), now_ms=0) for i in range(20)]
    assert stored == [True] * 5 + [False] * 15
    assert budget.admit(letter(), now_ms=499) is False
    assert budget.admit(letter(), now_ms=500) is True  # 2 a second: one token per 500 ms
    assert budget.pending_letters == 16


def test_a_flooding_topic_does_not_use_up_the_budget_of_the_others() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_rate=1, per_topic_burst=3, total_rate=10, total_burst=10))
    for _ in range(1000):
        budget.admit(letter("sensors/flood"), now_ms=0)
    assert [budget.admit(letter("sensors/other"), now_ms=0) for _ in range(3)] == [True] * 3


def test_a_flood_spread_over_many_topics_is_bounded_by_the_total() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_burst=5, total_rate=10, total_burst=50))
    stored = sum(budget.admit(letter(f"t/{i}"), now_ms=0) for i in range(10_000))
    assert stored == 50
    stored = sum(budget.admit(letter(f"u/{i}"), now_ms=1000 * s) for s in range(1, 11) for i in range(100))
    assert stored == 100  # ten seconds at 10 a second


def test_summaries_count_every_letter_by_reason_and_come_when_due() -> None:
    policy = DeadLetterPolicy(per_topic_burst=1, total_burst=100, summary_interval_ms=10_000, summary_max_letters=1000)
    budget = DeadLetterBudget(policy)
    assert budget.admit(letter(), 0)
    for i in range(30):
        budget.admit(letter(reason="bad_json" if i % 3 else "no_route", raw=b"x%d" % i, at=2000 + i), now_ms=100)
    assert budget.maybe_summaries(now_ms=10_099) == []
    (summary,) = budget.maybe_summaries(now_ms=10_100)
    assert (summary.reason, summary.topic, summary.received_ms) == (FLOOD, "sensors/x", 2029)
    assert summary.rejected() == {"bad_json": 20, "no_route": 10}
    assert summary.raw == b"x29"
    assert "30 rejected messages" in summary.message and "bad_json 20" in summary.message
    assert budget.pending_letters == 0 and budget.maybe_summaries(now_ms=99_999) == []
    assert decode_dead_letter(encode_dead_letter(summary)).rejected() == {"bad_json": 20, "no_route": 10}


def test_a_summary_is_due_early_once_it_covers_enough_letters_or_bytes() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_burst=1, summary_max_letters=10, summary_max_bytes=1000))
    budget.admit(letter(), 0)
    for _ in range(9):
        budget.admit(letter(), 0)
    assert not budget.summary_due(0)
    budget.admit(letter(), 0)
    assert budget.summary_due(0)
    budget.maybe_summaries(0)
    budget.admit(letter(raw=b"x" * 1000), 0)
    assert budget.summary_due(0)


def test_beyond_the_busiest_topics_the_rest_share_one_summary() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_burst=1, total_burst=1, max_summary_topics=2))
    budget.admit(letter("first"), 0)
    for i in range(10):
        for _ in range(10 - i):
            budget.admit(letter(f"t/{i}"), 0)
    summaries = budget.maybe_summaries(0, force=True)
    assert [s.topic for s in summaries] == ["t/0", "t/1", "*"]
    assert sum(sum(s.rejected().values()) for s in summaries) == 55
    assert "on 8 topics" in summaries[-1].message


@given(st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["a", "b", "c"]), st.sampled_from(["bad_json", "no_route"])),
                max_size=400))
def test_every_letter_is_stored_or_in_exactly_one_summary(events: list[tuple[int, str, str]]) -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(per_topic_rate=5, per_topic_burst=3, total_rate=8, total_burst=4,
                                               summary_interval_ms=1000, summary_max_letters=50))
    now = 0
    counted: dict[str, int] = {}
    for gap, topic, reason in events:
        now += gap
        if budget.admit(letter(topic, reason), now):
            counted[reason] = counted.get(reason, 0) + 1
        for summary in budget.maybe_summaries(now):
            for r, n in summary.rejected().items():
                counted[r] = counted.get(r, 0) + n
    for summary in budget.maybe_summaries(now, force=True):
        for r, n in summary.rejected().items():
            counted[r] = counted.get(r, 0) + n
    expected: dict[str, int] = {}
    for _, _, reason in events:
        expected[reason] = expected.get(reason, 0) + 1
    assert counted == expected


def test_the_bucket_table_is_bounded() -> None:
    budget = DeadLetterBudget(DeadLetterPolicy(max_topics=8))
    for i in range(100):
        budget.admit(letter(f"t/{i}"), 0)
    assert len(budget._buckets) == 8


@pytest.mark.parametrize("kwargs", [{"raw_cap_bytes": 0}, {"per_topic_rate": 0}, {"total_burst": -1}, {"max_topics": True}])
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalError):
        DeadLetterPolicy(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- log lines


def test_one_log_line_per_interval_the_first_in_full_then_a_summary() -> None:
    lines = RejectionLog(interval_ms=60_000)
    first = lines.note(letter(), 0)
    assert first is not None and "sensors/x" in first and "not JSON" in first
    assert [lines.note(letter(reason="no_route" if i % 4 == 0 else "bad_json"), 10 + i) for i in range(1000)] == [None] * 1000
    assert lines.maybe_summary(59_999) is None
    summary = lines.maybe_summary(60_000)
    assert summary is not None and "1000 more" in summary and "bad_json 750" in summary and "no_route 250" in summary
    assert lines.maybe_summary(200_000) is None  # nothing new: no line
    later = lines.note(letter(topic="sensors/late"), 200_000)
    assert later is not None and "sensors/late" in later


def test_lines_never_come_closer_than_the_interval() -> None:
    lines = RejectionLog(interval_ms=1000)
    times = []
    for t in range(0, 10_000, 7):
        if lines.note(letter(), t) is not None or lines.maybe_summary(t) is not None:
            times.append(t)
    assert all(b - a >= 1000 for a, b in zip(times, times[1:]))
    assert len(times) >= 9


# --------------------------------------------------------------------------- quota policy


def test_the_dead_letter_stream_is_dropped_first_and_never_blocks() -> None:
    config = with_dead_letter_quota(LogConfig(quota_bytes=1 << 20, quota_policy="block"))
    assert config.quota_policy_of(DEAD_LETTER_STREAM) == "drop_oldest"
    assert config.priority_of(DEAD_LETTER_STREAM) == DEAD_LETTER_PRIORITY
    assert config.quota_policy_of("sensors") == "block"
    assert with_dead_letter_quota(config) is config


def test_an_explicit_setting_for_the_dead_letter_stream_is_kept() -> None:
    config = with_dead_letter_quota(LogConfig(priorities={DEAD_LETTER_STREAM: 5}))
    assert config.priority_of(DEAD_LETTER_STREAM) == 5
    assert config.quota_policy_of(DEAD_LETTER_STREAM) == "drop_oldest"
