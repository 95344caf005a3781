"""Appending, syncing, reading and partitioning, on the in-memory file system."""

from __future__ import annotations

import pytest

from core.log import (
    UNSYNCED, LogConfig, LogFailed, LogRecord, LogUsageError, OffsetOutOfRange, RecordRejected,
)
from core.log import format as fmt
from tests.unit.log.conftest import HOUR, T0, open_log

MINUTE = 60_000


def payload(i: int) -> bytes:
    return b"reading-%06d" % i


def test_offsets_start_at_zero_and_rise_by_one_per_stream(fs) -> None:
    log = open_log(fs)
    assert [log.append("a", T0 + i, payload(i), T0) for i in range(3)] == [0, 1, 2]
    assert log.append("b", T0, b"x", T0) == 0
    assert log.end_offset("a") == 3 and log.end_offset("b") == 1
    assert log.streams() == ["a", "b"]


def test_records_are_invisible_until_synced(fs) -> None:
    log = open_log(fs)
    log.append("s", T0, b"x", T0)
    assert log.durable_offset("s") == 0
    assert log.read("s", 0) == []
    assert fs.files(".log") == [] or fs.snapshot()[fs.files(".log")[0]] == b""
    log.sync()
    assert log.durable_offset("s") == 1
    assert log.read("s", 0) == [LogRecord("s", 0, T0, b"x")]


def test_always_policy_makes_each_append_durable_before_returning(fs) -> None:
    log = open_log(fs, LogConfig(sync_policy="always"))
    syncs = fs.syncs
    offset = log.append("s", T0, b"x", T0)
    assert log.durable_offset("s") == offset + 1
    assert fs.syncs > syncs


def test_interval_policy_groups_appends_into_one_sync(fs) -> None:
    log = open_log(fs, LogConfig(sync_policy="interval", sync_interval_ms=20))
    assert log.maybe_sync(1000) is False  # nothing pending
    log.append("s", T0, b"a", T0)
    assert log.maybe_sync(1000) is True   # first sync happens at once
    for i in range(100):
        log.append("s", T0 + i, payload(i), T0)
    assert log.maybe_sync(1010) is False  # 10 ms later: not yet
    assert log.durable_offset("s") == 1
    assert log.maybe_sync(1020) is True
    assert log.durable_offset("s") == 101
    assert log.stats()["syncs"] == 2


def test_interval_policy_syncs_when_the_clock_goes_backwards(fs) -> None:
    log = open_log(fs)
    log.append("s", T0, b"a", T0)
    log.maybe_sync(5000)
    log.append("s", T0, b"b", T0)
    assert log.maybe_sync(100) is True


def test_never_policy_hands_to_the_os_without_fsync(fs) -> None:
    log = open_log(fs, LogConfig(sync_policy="never"))
    log.append("s", T0, b"a", T0)
    before = fs.syncs
    assert log.maybe_sync(0) is True
    assert fs.syncs == before
    assert log.durable_offset("s") == 1
    assert log.read("s", 0)[0].payload == b"a"


def test_large_pending_buffer_is_written_but_not_durable(fs) -> None:
    log = open_log(fs)
    big = b"x" * 100_000
    for i in range(12):
        log.append("s", T0 + i, big, T0)
    assert sum(len(b) for b in fs.snapshot().values()) > 1_000_000  # written to the OS
    assert log.durable_offset("s") == 0 and log.read("s", 0) == []
    log.sync()
    assert len(log.read("s", 0, max_bytes=10**9)) == 12


def test_read_respects_max_records_and_max_bytes(fs) -> None:
    log = open_log(fs)
    for i in range(50):
        log.append("s", T0 + i, payload(i), T0)
    log.sync()
    assert [r.offset for r in log.read("s", 10, max_records=5)] == [10, 11, 12, 13, 14]
    one = log.read("s", 0, max_bytes=1)
    assert len(one) == 1  # at least one record even past max_bytes
    assert len(log.read("s", 0, max_bytes=len(payload(0)) * 3)) == 3
    assert log.read("s", 50) == []


def test_read_beyond_the_end_is_an_error_and_unknown_stream_reads_empty(fs) -> None:
    log = open_log(fs)
    log.append("s", T0, b"x", T0)
    with pytest.raises(OffsetOutOfRange):
        log.read("s", 2)
    assert log.read("s", 1) == []
    assert log.read("nobody", 0) == []
    with pytest.raises(OffsetOutOfRange):
        log.read("nobody", 1)
    with pytest.raises(LogUsageError):
        log.read("s", -1)


def test_offsets_and_records_survive_reopen(fs) -> None:
    log = open_log(fs)
    for i in range(10):
        log.append("s", T0 + i * MINUTE * 7, payload(i), T0 + HOUR * 3)
    log.close()
    log = open_log(fs)
    assert log.end_offset("s") == 10 == log.durable_offset("s")
    assert [r.payload for r in log.read("s", 0)] == [payload(i) for i in range(10)]
    assert log.append("s", T0, b"next", T0) == 10


def test_each_window_gets_its_own_directory_and_names_sort_in_time_order(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=MINUTE))
    times = [T0 + 5 * MINUTE, T0, T0 + 2 * MINUTE, T0 + 30 * MINUTE]
    for i, ts in enumerate(times):
        log.append("s", ts, payload(i), UNSYNCED)
    log.sync()
    windows = fs.listdir("streams/s")
    assert windows == sorted(windows)
    assert [fmt.parse_window_dir_name(w)[0] for w in windows] == sorted(times)


def test_read_by_offset_merges_windows_back_into_offset_order(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=MINUTE, max_open_windows=8))
    times = [T0 + (i * 7919 % 5) * MINUTE + i for i in range(200)]
    for i, ts in enumerate(times):
        log.append("s", ts, payload(i), UNSYNCED)
        if i % 13 == 0:
            log.sync()
    log.sync()
    records = log.read("s", 0, max_records=1000)
    assert [r.offset for r in records] == list(range(200))
    assert [r.ts_ms for r in records] == times
    assert [r.payload for r in log.read("s", 77, max_records=5)] == [payload(i) for i in range(77, 82)]


def test_read_time_range_gives_windows_in_time_order_and_offsets_within(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=MINUTE, max_open_windows=8))
    times = [T0 + (i * 7 % 4) * MINUTE + (i * 31 % 1000) for i in range(100)]
    for i, ts in enumerate(times):
        log.append("s", ts, payload(i), UNSYNCED)
    log.sync()
    t1, t2 = T0 + MINUTE + 200, T0 + 3 * MINUTE + 500
    got = list(log.read_time_range("s", t1, t2))
    expected = sorted(
        (i for i, ts in enumerate(times) if t1 <= ts < t2),
        key=lambda i: (times[i] // MINUTE, i),
    )
    assert [r.offset for r in got] == expected
    assert all(t1 <= r.ts_ms < t2 for r in got)


def test_time_index_skips_but_never_misses(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=HOUR))
    for i in range(3000):
        log.append("s", T0 + i * 1000 + (i % 7) * 3000, b"p" * 40, UNSYNCED)
        if i % 50 == 0:
            log.sync()
    log.close()
    log = open_log(fs)
    for t1 in (T0, T0 + 999_999, T0 + 1_500_000, T0 + 2_999_000):
        got = [r.offset for r in log.read_time_range("s", t1, t1 + 60_000)]
        want = [i for i in range(3000) if t1 <= T0 + i * 1000 + (i % 7) * 3000 < t1 + 60_000]
        assert got == want


def test_append_many_returns_consecutive_offsets_and_syncs_once_under_always(fs) -> None:
    log = open_log(fs, LogConfig(sync_policy="always"))
    before = fs.syncs
    offsets = log.append_many("s", [(T0 + i, payload(i)) for i in range(100)], T0)
    assert offsets == range(0, 100)
    assert log.durable_offset("s") == 100
    assert fs.syncs - before == 4  # the segment, and the three directories created for it
    before = fs.syncs
    log.append_many("s", [(T0 + i, payload(i)) for i in range(100)], T0)
    assert fs.syncs - before == 1


def test_append_many_is_all_or_nothing_on_rejection(fs) -> None:
    log = open_log(fs)
    with pytest.raises(RecordRejected):
        log.append_many("s", [(T0, b"a"), (T0 + 10 * HOUR, b"too early")], T0)
    assert log.end_offset("s") == 0


def test_early_records_are_rejected_by_default_and_counted(fs) -> None:
    log = open_log(fs)
    with pytest.raises(RecordRejected) as info:
        log.append("s", T0 + 11 * MINUTE, b"x", T0)
    assert info.value.reason == "early"
    assert log.stats()["streams"]["s"]["rejected"]["early"] == 1
    assert log.append("s", T0 + 9 * MINUTE, b"x", T0) == 0  # within the bound


def test_early_accept_policy_stores_in_the_future_window(fs) -> None:
    log = open_log(fs, LogConfig(early_policy="accept"))
    log.append("s", T0 + 5 * HOUR, b"x", T0)
    log.sync()
    assert fs.listdir("streams/s") == [fmt.window_dir_name(T0 + 5 * HOUR, HOUR)]


def test_late_records_reopen_their_window_by_default(fs) -> None:
    log = open_log(fs)
    log.append("s", T0, b"on time", T0)
    now = T0 + 2 * HOUR
    log.append("s", T0 + 2 * HOUR, b"now", now)
    log.maybe_seal(now)  # the first window closed long ago
    assert log.append("s", T0 + 5, b"late", now) == 2
    log.sync()
    window = f"streams/s/{fmt.window_dir_name(T0, HOUR)}"
    assert [n for n in fs.listdir(window) if n.endswith(".log")] == [fmt.segment_name(0), fmt.segment_name(2)]
    assert [r.payload for r in log.read_time_range("s", T0, T0 + HOUR)] == [b"on time", b"late"]


def test_late_reject_policy_raises_with_reason_late(fs) -> None:
    log = open_log(fs, LogConfig(late_policy="reject", late_grace_ms=MINUTE))
    with pytest.raises(RecordRejected) as info:
        log.append("s", T0, b"x", T0 + HOUR + MINUTE)
    assert info.value.reason == "late"
    assert log.append("s", T0, b"x", T0 + HOUR + MINUTE - 1) == 0  # still within grace


def test_internal_streams_take_late_and_early_records(fs) -> None:
    log = open_log(fs, LogConfig(late_policy="reject"))
    log.append("_deadletter", T0, b"late", T0 + 10 * HOUR)
    log.append("_deadletter", T0 + 10 * HOUR, b"early", T0)
    assert log.end_offset("_deadletter") == 2


def test_unsynced_gateway_clock_disables_the_time_rules(fs) -> None:
    log = open_log(fs, LogConfig(late_policy="reject"))
    assert log.append("s", T0 + 1000 * HOUR, b"x", UNSYNCED) == 0
    assert log.append("s", 0, b"x", UNSYNCED) == 1


def test_negative_device_time_is_rejected_as_bad_time(fs) -> None:
    log = open_log(fs)
    with pytest.raises(RecordRejected) as info:
        log.append("s", -1, b"x", UNSYNCED)
    assert info.value.reason == "bad_time"


@pytest.mark.parametrize("stream", ["", "..", "a/b", "x" * 65])
def test_invalid_stream_names_are_usage_errors(fs, stream) -> None:
    log = open_log(fs)
    with pytest.raises(LogUsageError):
        log.append(stream, T0, b"x", T0)


def test_payload_must_be_bytes_and_not_too_large(fs) -> None:
    log = open_log(fs)
    with pytest.raises(LogUsageError):
        log.append("s", T0, "text", T0)  # type: ignore[arg-type]
    with pytest.raises(LogUsageError):
        log.append("s", T0, b"x" * (fmt.MAX_PAYLOAD_BYTES + 1), T0)
    assert log.append("s", T0, bytearray(b"ok"), T0) == 0
    log.sync()
    assert log.read("s", 0)[0].payload == b"ok"


def test_segment_rolls_at_segment_bytes_within_a_window(fs) -> None:
    log = open_log(fs, LogConfig(segment_bytes=64 * 1024))
    for i in range(100):
        log.append("s", T0 + i, b"x" * 2000, T0)
        log.sync()
    window = f"streams/s/{fmt.window_dir_name(T0, HOUR)}"
    logs = [n for n in fs.listdir(window) if n.endswith(".log")]
    assert len(logs) >= 3
    assert all(fs.size(f"{window}/{n}") <= 64 * 1024 for n in logs)
    assert [r.offset for r in log.read("s", 0, max_bytes=10**9)] == list(range(100))


def test_open_windows_are_bounded_least_recently_written_is_sealed(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=MINUTE, max_open_windows=2))
    for i in range(5):
        log.append("s", T0 + i * MINUTE, b"x", UNSYNCED)
    assert log.stats()["streams"]["s"]["open_windows"] == 2
    sealed = [f for f in fs.files(".index")]
    assert len(sealed) == 3


def test_closed_windows_are_sealed_with_their_indexes(fs) -> None:
    log = open_log(fs, LogConfig(late_grace_ms=MINUTE))
    log.append("s", T0, b"x", T0)
    assert fs.files(".index") == []
    assert log.maybe_seal(T0 + HOUR) == 0
    assert log.maybe_seal(T0 + HOUR + MINUTE) == 1
    assert len(fs.files(".index")) == 1 and len(fs.files(".timeindex")) == 1
    assert log.durable_offset("s") == 0  # sealing syncs the segment but offsets wait for sync()
    log.sync()
    assert log.read("s", 0)[0].payload == b"x"


def test_closed_log_refuses_calls(fs) -> None:
    log = open_log(fs)
    log.close()
    log.close()
    with pytest.raises(LogUsageError):
        log.append("s", T0, b"x", T0)


def test_stats_count_write_amplification(fs) -> None:
    log = open_log(fs)
    for i in range(1000):
        log.append("s", T0 + i, b"p" * 100, T0)
    log.sync()
    stats = log.stats()
    assert stats["payload_bytes"] == 100_000
    assert 1.0 < stats["log_write_amplification"] < 1.1
    assert stats["bytes_written"] == fs.bytes_written
    assert stats["streams"]["s"]["records"] == 1000


def test_cursors_default_to_zero_and_survive_reopen(fs) -> None:
    log = open_log(fs)
    for i in range(5):
        log.append("s", T0, b"x", T0)
    assert log.load_cursor("bridge", "s") == 0
    log.store_cursor("bridge", "s", 3)
    assert log.load_cursor("bridge", "s") == 3
    with pytest.raises(OffsetOutOfRange):
        log.store_cursor("bridge", "s", 6)
    log.close()
    log = open_log(fs)
    assert log.load_cursor("bridge", "s") == 3
    assert fs.files(".tmp") == []


def test_failed_log_refuses_calls_until_reopened(fs) -> None:
    log = open_log(fs)
    log.append("s", T0, b"x", T0)
    fs.fail("sync")
    with pytest.raises(Exception):
        log.sync()
    with pytest.raises(LogFailed):
        log.append("s", T0, b"y", T0)
    assert log.stats()["failed"] is True
    log.close()
