"""Retention by whole forwarded windows; the byte quota with block and drop_oldest."""

from __future__ import annotations

import pytest

from core.log import UNSYNCED, LogConfig, LogFull, LogIOError
from tests.unit.log.conftest import T0, open_log
from tests.unit.log.memfs import MemFS

MINUTE = 60_000
MIB = 1024 * 1024
BLOCK = 4096  # what a disk allocates per file at least: the usage the quota bounds is counted in these


def fill(log, stream: str, windows: int, per_window: int = 10, size: int = 100, now: int | None = None) -> None:
    for w in range(windows):
        for i in range(per_window):
            log.append(stream, T0 + w * MINUTE + i, bytes([w % 256]) * size, UNSYNCED if now is None else now)
    log.sync()


def windows_of(fs: MemFS, stream: str) -> list[str]:
    return fs.listdir(f"streams/{stream}") if fs.exists(f"streams/{stream}") else []


RETAIN = LogConfig(window_ms=MINUTE, retention_ms=10 * MINUTE, late_grace_ms=MINUTE, max_open_windows=8)


def test_retention_deletes_only_closed_forwarded_old_windows(fs) -> None:
    log = open_log(fs, RETAIN)
    fill(log, "s", 5)
    log.store_cursor("bridge", "s", 30)  # windows 0, 1, 2 forwarded
    now = T0 + 5 * MINUTE + 10 * MINUTE  # windows ending at or before T0 + 5 min are old enough
    result = log.enforce_retention(now)
    assert (result.windows, result.records, result.dropped_records) == (3, 30, 0)
    assert len(windows_of(fs, "s")) == 2
    assert log.start_offset("s") == 30
    assert log.read("s", 0)[0].offset == 30  # below start: reading starts at the oldest held


def test_retention_never_deletes_unforwarded_data_however_old(fs) -> None:
    log = open_log(fs, RETAIN)
    fill(log, "s", 3)
    assert log.enforce_retention(T0 + 1000 * MINUTE).windows == 0
    assert log.enforce_retention(T0 + 1000 * MINUTE, {"s": 15}).windows == 1  # explicit forwarded offsets
    assert log.enforce_retention(UNSYNCED, {"s": 30}).windows == 0  # no trusted clock, no age


def test_retention_keeps_windows_that_are_too_young(fs) -> None:
    log = open_log(fs, RETAIN)
    fill(log, "s", 3)
    log.store_cursor("bridge", "s", 30)
    assert log.enforce_retention(T0 + 3 * MINUTE + 10 * MINUTE - 1).windows == 2
    assert len(windows_of(fs, "s")) == 1


def test_offsets_continue_after_every_window_was_deleted(fs) -> None:
    log = open_log(fs, RETAIN)
    fill(log, "s", 2)
    log.store_cursor("bridge", "s", 20)
    log.enforce_retention(T0 + 100 * MINUTE)
    assert windows_of(fs, "s") == []
    assert log.start_offset("s") == 20 == log.end_offset("s")
    log.close()
    # Even with the cursor gone, the floor in meta/state keeps offsets from being reused.
    files = {p: b for p, b in fs.snapshot().items() if not p.startswith("cursors/")}
    log = open_log(MemFS.from_files(files), RETAIN)
    assert log.append("s", T0, b"x", UNSYNCED) == 20


QUOTA = dict(window_ms=MINUTE, max_open_windows=2, segment_bytes=64 * 1024, quota_bytes=MIB)


def test_block_policy_refuses_appends_at_the_quota_and_writes_nothing(fs) -> None:
    log = open_log(fs, LogConfig(**QUOTA))
    with pytest.raises(LogFull) as info:
        for w in range(100):
            for i in range(100):
                log.append("s", T0 + w * MINUTE + i, b"x" * 1000, UNSYNCED)
    assert info.value.reason == "log_full"
    end = log.end_offset("s")
    log.sync()
    assert log.durable_offset("s") == end
    assert log.stats()["log_full"] == 1 and log.stats()["streams"]["s"]["rejected"]["log_full"] == 1
    assert fs.used(BLOCK) <= MIB + 64 * 1024


def test_forwarded_windows_make_room_first_and_are_not_counted_as_dropped(fs) -> None:
    log = open_log(fs, LogConfig(**QUOTA))
    written = 0
    with pytest.raises(LogFull):
        while True:
            log.append("s", T0 + written // 50 * MINUTE, b"x" * 1000, UNSYNCED)
            written += 1
    log.sync()
    log.store_cursor("bridge", "s", 300)
    offset = log.append("s", T0 + 10**6, b"y" * 1000, UNSYNCED)
    assert offset == written
    stats = log.stats()
    assert stats["streams"]["s"]["dropped_by_quota"] == 0
    assert stats["deleted_forwarded_records"] > 0
    assert log.start_offset("s") > 0


def test_drop_oldest_drops_whole_windows_of_lower_priority_first_and_counts_them_durably(fs) -> None:
    config = LogConfig(**QUOTA, quota_policies={"debug": "drop_oldest", "sensors": "block"},
                       priorities={"sensors": 10, "debug": 0})
    log = open_log(fs, config)
    for w in range(4):
        for i in range(100):
            log.append("debug", T0 + w * MINUTE + i, b"d" * 1000, UNSYNCED)
    log.sync()
    debug_windows = windows_of(fs, "debug")
    for i in range(700):
        log.append("sensors", T0 + i, b"s" * 1000, UNSYNCED)  # would not fit without dropping
    log.sync()
    left = windows_of(fs, "debug")
    assert left == debug_windows[len(debug_windows) - len(left):]  # the oldest went first
    dropped = log.stats()["streams"]["debug"]["dropped_by_quota"]
    assert dropped == 100 * (len(debug_windows) - len(left)) > 0
    assert log.stats()["streams"]["sensors"]["dropped_by_quota"] == 0
    assert fs.used(BLOCK) <= MIB + 64 * 1024
    log.close()
    log = open_log(fs, config)
    assert log.stats()["streams"]["debug"]["dropped_by_quota"] == dropped


def test_block_streams_are_never_dropped_for_others(fs) -> None:
    config = LogConfig(**QUOTA, quota_policies={"debug": "drop_oldest"}, priorities={"sensors": 0, "debug": 5})
    log = open_log(fs, config)
    fill(log, "sensors", 4, per_window=200, size=1000)
    fill(log, "debug", 10, per_window=100, size=1000)  # makes room by dropping its own oldest windows
    assert log.stats()["streams"]["sensors"]["records"] == 800
    assert log.stats()["streams"]["debug"]["dropped_by_quota"] > 0
    with pytest.raises(LogFull):  # one window bigger than what is left: nothing else may go
        fill(log, "debug", 1, per_window=300, size=1000)


def test_drop_oldest_stream_drops_its_own_oldest_windows(fs) -> None:
    log = open_log(fs, LogConfig(**QUOTA, quota_policy="drop_oldest"))
    for w in range(30):
        for i in range(100):
            log.append("s", T0 + w * MINUTE + i, b"x" * 1000, UNSYNCED)
        log.sync()
        assert fs.used(BLOCK) <= MIB + 64 * 1024
    assert log.end_offset("s") == 3000
    assert log.stats()["streams"]["s"]["dropped_by_quota"] > 0
    assert log.read("s", 0)[0].offset == log.start_offset("s") > 0


def test_a_crash_in_the_middle_of_a_drop_finishes_it_at_open_without_counting_twice(faulty) -> None:
    fs = faulty.new()
    config = LogConfig(**QUOTA, quota_policy="drop_oldest")
    log = open_log(fs, config)
    fs.fail("unlink", 2)
    with pytest.raises(LogIOError):
        for w in range(30):
            for i in range(100):
                log.append("s", T0 + w * MINUTE + i, b"x" * 1000, UNSYNCED)
    dropped = log.stats()["streams"]["s"]["dropped_by_quota"]
    assert dropped > 0
    log.close()
    fs.clear_faults()
    again = open_log(fs, config)
    assert again.recovery.deletions_finished >= 1
    assert again.stats()["streams"]["s"]["dropped_by_quota"] == dropped
    assert again.read("s", 0)[0].offset >= 100


def test_enforce_quota_after_lowering_it(fs) -> None:
    log = open_log(fs, LogConfig(window_ms=MINUTE, max_open_windows=2, quota_policy="drop_oldest"))
    fill(log, "s", 10, per_window=200, size=1000)
    log.close()
    log = open_log(fs, LogConfig(**QUOTA, quota_policy="drop_oldest"))
    result = log.enforce_quota()
    assert result.dropped_records > 0 and fs.used(BLOCK) <= MIB
    assert log.enforce_quota().windows == 0


def segment_and_index_blocks(fs: MemFS) -> int:
    return sum(-(-len(data) // BLOCK) * BLOCK for path, data in fs.snapshot().items()
               if path.startswith("streams/") and path.endswith((".log", ".index", ".timeindex")))


def test_bytes_on_disk_counts_the_blocks_of_every_segment_and_index_file_once_recovered_or_not(fs) -> None:
    log = open_log(fs, LogConfig(**QUOTA))
    for i in range(3000):
        log.append("s", T0 + i * 100, b"r" * (i % 300), UNSYNCED)
        if i % 100 == 99:
            log.sync()
            assert log.stats()["bytes_on_disk"] == segment_and_index_blocks(fs)
    log.sync()
    recovered = open_log(fs, LogConfig(**QUOTA))  # as after a crash: the active segments are recovered
    assert recovered.recovery.segments_recovered > 0
    assert recovered.stats()["bytes_on_disk"] == segment_and_index_blocks(fs)
    recovered.close()
    trusted = open_log(fs, LogConfig(**QUOTA))
    assert trusted.recovery.segments_recovered == 0
    assert trusted.stats()["bytes_on_disk"] == segment_and_index_blocks(fs)


def test_a_dropped_window_counts_only_its_readings_at_or_above_the_forward_cursor(fs) -> None:
    log = open_log(fs, LogConfig(**QUOTA, quota_policy="drop_oldest"))
    for i in range(100):  # two windows filled in turn: their offsets interleave, batch by batch
        log.append("s", T0 + i, b"a" * 1000, UNSYNCED)
        log.append("s", T0 + MINUTE + i, b"b" * 1000, UNSYNCED)
        if i % 10 == 9:
            log.sync()
    log.store_cursor("bridge", "s", 51)  # forwarded: offsets 0..50, of both windows
    window = 2
    while not log.stats()["streams"]["s"]["dropped_by_quota"]:
        for i in range(100):
            log.append("s", T0 + window * MINUTE + i, b"x" * 1000, UNSYNCED)
        log.sync()
        window += 1
    kept: set[int] = set()
    offset = 0
    while records := log.read("s", offset):
        kept.update(r.offset for r in records)
        offset = records[-1].offset + 1
    deleted = set(range(log.end_offset("s"))) - kept
    assert min(deleted) < 51 <= max(deleted)  # the dropped window straddles the cursor
    assert log.stats()["streams"]["s"]["dropped_by_quota"] == len([o for o in deleted if o >= 51])
