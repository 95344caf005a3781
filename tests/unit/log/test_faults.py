"""I/O errors and a full disk: never acknowledge what a failed write or fsync may have lost.

Most scenarios run twice (the ``faulty`` fixture): on a MemFS, and on real
files through edge.logstore's OsFileSystem behind a fault-injecting wrapper.
"""

from __future__ import annotations

import errno
import random

import pytest

from core.log import LogConfig, LogFailed, LogIOError
from tests.unit.log.conftest import T0, open_log
from tests.unit.log.memfs import MemFS

MINUTE = 60_000


def drive(log, rng: random.Random, acked: dict, records: int = 200) -> None:
    """Append and sync; record in ``acked`` every record below the durable offset."""
    for i in range(records):
        data = rng.randbytes(rng.randint(1, 200))
        ts = T0 + rng.randint(0, 3 * MINUTE)
        acked.setdefault("_all", {})[log.end_offset("s")] = (ts, data)
        log.append("s", ts, data, T0 + 3 * MINUTE)
        if rng.random() < 0.2:
            log.sync()
        high = log.durable_offset("s")
        for off in range(high):
            acked[off] = acked["_all"][off]


@pytest.mark.parametrize("policy", ["always", "interval"])
@pytest.mark.parametrize("op", ["write", "torn_write", "sync", "sync_dir", "open", "mkdir"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_failed_operation_stops_acknowledgement_and_recovery_keeps_every_acked_record(
        faulty, long_run, policy, op, code) -> None:
    torn = op.startswith("torn_")
    op = op.removeprefix("torn_")  # a torn write writes half of its bytes, then fails
    records = 400 if faulty.kind == "memfs" or long_run else 100  # real fsyncs cost milliseconds
    truncated = 0
    for nth in (1, 2, 3, 4) if op == "mkdir" else (1, 2, 3, 5, 8, 13, 21):  # the log makes four directories here
        rng = random.Random(nth)
        fs = faulty.new()
        config = LogConfig(window_ms=MINUTE, sync_policy=policy, max_open_windows=2)
        log = open_log(fs, config)
        fail_at = fs.calls.get(op, 0) + nth
        reports: list = []
        log._reporter = reports.append
        fs.fail(op, nth, code, torn=torn)
        acked: dict = {}
        durable_before = 0
        try:
            done = 0
            while done < records:
                durable_before = log.durable_offset("s")
                drive(log, rng, acked, records=1)
                done += 1
                if fs.calls.get(op, 0) >= fail_at:  # failed and tolerated (an index file): 20 more records
                    done = max(done, records - 20)
            log.sync()
        except LogIOError as exc:
            assert exc.reason == errno.errorcode[code]
        else:
            # It hit an index file: derived data, reported and tolerated.
            assert fs.calls.get(op, 0) >= fail_at, (op, nth)
            assert any(d.reason.startswith("index_not_written") for d in reports)
            log.close()
            continue
        with pytest.raises(LogFailed):
            log.durable_offset("s")
        with pytest.raises(LogFailed):
            log.sync()
        assert log.stats()["failed"]
        log.close()
        acked.pop("_all", None)
        assert all(off < durable_before for off in acked)  # nothing acknowledged after the failure
        fs.clear_faults()
        for i, survivor in enumerate(faulty.after(fs, rng)):
            again = open_log(survivor, config)
            if i == 0:  # the files as the failure left them
                truncated += again.recovery.bytes_truncated
            got = {r.offset: (r.ts_ms, r.payload) for r in again.read("s", 0, max_records=10_000, max_bytes=10**9)}
            for off, value in acked.items():
                assert got[off] == value, (op, nth, off)
    if torn:
        assert truncated > 0  # the half-written frames were found and cut off


def test_fsync_failure_is_never_followed_by_an_acknowledgement(faulty) -> None:
    fs = faulty.new()
    log = open_log(fs)
    log.append("s", T0, b"a", T0)
    log.sync()
    log.append("s", T0, b"b", T0)
    fs.fail("sync")
    with pytest.raises(LogIOError):
        log.sync()
    fs.clear_faults()  # the disk "recovers": a retry would succeed, but must not be trusted
    with pytest.raises(LogFailed):
        log.sync()
    with pytest.raises(LogFailed):
        log.maybe_sync(10**9)


def test_disk_full_mid_write_leaves_a_torn_tail_that_recovery_removes() -> None:
    rng = random.Random(5)
    fs = MemFS()
    log = open_log(fs)
    acked: dict = {}
    for i in range(300):
        acked[log.append("s", T0 + i, rng.randbytes(100), T0)] = None
        log.sync()
    fs.capacity = fs.used() + 3000
    with pytest.raises(LogIOError) as info:
        for i in range(300):
            log.append("s", T0 + i, rng.randbytes(100), T0)
            if i % 4 == 3:
                log.sync()
    assert info.value.reason == "ENOSPC"
    log.close()
    fs.capacity = None
    again = open_log(fs)
    assert again.recovery.bytes_truncated > 0
    assert [r.offset for r in again.read("s", 0, max_records=10_000)][:300] == list(range(300))


def test_a_failed_cursor_store_keeps_the_old_cursor_and_the_log_usable(faulty) -> None:
    fs = faulty.new()
    log = open_log(fs)
    log.append("s", T0, b"a", T0)
    log.append("s", T0, b"b", T0)
    log.sync()
    log.store_cursor("bridge", "s", 1)
    fs.fail("rename")
    with pytest.raises(LogIOError):
        log.store_cursor("bridge", "s", 2)
    assert log.load_cursor("bridge", "s") == 1
    log.append("s", T0, b"c", T0)  # still usable
    log.close()
    assert open_log(fs).load_cursor("bridge", "s") == 1


def test_a_failed_read_raises_and_leaves_the_log_usable(faulty) -> None:
    fs = faulty.new()
    log = open_log(fs)
    log.append("s", T0, b"a", T0)
    log.sync()
    fs.fail("read")
    with pytest.raises(LogIOError):
        log.read("s", 0)
    assert log.read("s", 0)[0].payload == b"a"
    log.append("s", T0, b"b", T0)


def test_an_index_that_cannot_be_written_is_reported_and_the_segment_scanned_next_time(faulty) -> None:
    fs = faulty.new()
    damage: list = []
    log = open_log(fs, damage=damage)
    log.append("s", T0, b"a", T0)
    log.sync()
    fs.fail("write", 2)  # the .index, after the .timeindex
    log.close()
    assert [d.reason for d in damage] == ["index_not_written:EIO"]
    window = "streams/s/00000001704067200000-03600000"
    assert fs.listdir(window) == ["00000000000000000000.log"]
    again = open_log(fs)
    assert again.recovery.segments_recovered == 1 and again.read("s", 0)[0].payload == b"a"


def test_open_on_a_failing_disk_raises_log_io_error(faulty) -> None:
    fs = faulty.new()
    log = open_log(fs)
    log.append("s", T0, b"a", T0)
    log.close()
    fs.fail("read")
    fs.fail("read", 2)
    with pytest.raises(LogIOError):
        open_log(fs)
