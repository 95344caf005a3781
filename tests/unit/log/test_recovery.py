"""Recovery: torn tails, appended garbage, bit rot, damaged indexes, leftovers, fsck."""

from __future__ import annotations

import random

import pytest

from core.log import LogConfig, fsck
from core.log import format as fmt
from core.log._scan import FrameScanner
from tests.unit.log.conftest import T0, open_log
from tests.unit.log.memfs import MemFS

SEGMENT = "streams/s/00000001704067200000-03600000/00000000000000000000.log"


def payload(i: int) -> bytes:
    return bytes([i % 251]) * (20 + i % 60)


def written_log(records: int = 400, per_sync: int = 3, close: bool = False) -> MemFS:
    """A stream ``s`` in one window, synced every ``per_sync`` records; not closed (a crash) unless told."""
    fs = MemFS()
    log = open_log(fs)
    for i in range(records):
        log.append("s", T0 + i, payload(i), T0)
        if i % per_sync == per_sync - 1:
            log.sync()
    log.sync()
    if close:
        log.close()
    return fs


def frames_of(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, records) of each frame in a segment."""
    out = []
    for pos, _, body in FrameScanner(lambda p, n: data[p:p + n], "x", 0, len(data)):
        out.append((pos, pos + fmt.FRAME_HEADER_SIZE + len(body), fmt.decode_batch_header(body).records))
    return out


def all_records(log) -> list:
    out, offset = [], 0
    while True:
        chunk = log.read("s", offset)
        if not chunk:
            return out
        out.extend(chunk)
        offset = chunk[-1].offset + 1


def tail_cuts(data: bytes, frames: list[tuple[int, int, int]], every_byte: bool) -> list[int]:
    """Cut points in the last 4 KiB: every byte, or a sample that keeps the bytes around each frame's edges."""
    first = len(data) - 4096
    if every_byte:
        return list(range(first, len(data) + 1))
    near = {start + d for start, _, _ in frames for d in (-1, 0, 1, 4, 12, 13, 37)}
    return sorted({c for c in near if first <= c <= len(data)} | set(range(first, len(data) + 1, 61)) | {len(data)})


@pytest.mark.slow
def test_torn_tail_at_every_byte_of_the_last_4k_is_a_clean_eof(disk, long_run) -> None:
    files = written_log(records=80).snapshot()
    data = files[SEGMENT]
    assert len(data) > 4096
    frames = frames_of(data)
    for cut in tail_cuts(data, frames, every_byte=disk.kind == "memfs" or long_run):
        whole = [f for f in frames if f[1] <= cut]
        expected = sum(n for _, _, n in whole)
        good_end = whole[-1][1] if whole else 0
        damage: list = []
        disk.put(files)
        disk.truncate(SEGMENT, cut)
        log = disk.open(damage=damage)
        assert log.end_offset("s") == expected, cut
        assert log.recovery.bytes_truncated == cut - good_end
        assert all(d.tail for d in damage)
        records = all_records(log)
        assert [r.offset for r in records] == list(range(expected))
        assert all(r.payload == payload(r.offset) for r in records)
        assert disk.size(SEGMENT) == good_end
        recovered = disk.snapshot()
        again = disk.open()  # a second recovery finds nothing to do
        assert (again.recovery.bytes_truncated, again.recovery.segments_recovered) == (0, 0), cut
        assert disk.snapshot() == recovered
        assert all_records(again) == records
        assert again.append("s", T0, b"after", T0) == expected  # the log goes on at once


@pytest.mark.parametrize("garbage", [
    b"\0" * 4096,                                    # a file extended but never written
    bytes(range(256)) * 3,                           # random-looking junk
    fmt.FRAME_MAGIC + b"\xff" * 40,                  # a magic, then nonsense
])
def test_appended_garbage_is_truncated_and_every_record_kept(garbage) -> None:
    files = written_log().snapshot()
    data = files[SEGMENT]
    fs = MemFS.from_files({**files, SEGMENT: data + garbage})
    log = open_log(fs)
    assert log.recovery.bytes_truncated == len(garbage)
    assert fs.size(SEGMENT) == len(data)
    assert len(all_records(log)) == 400


def test_a_copy_of_an_earlier_frame_appended_is_not_taken_as_new_data() -> None:
    files = written_log().snapshot()
    data = files[SEGMENT]
    start, end, _ = frames_of(data)[5]
    fs = MemFS.from_files({**files, SEGMENT: data + data[start:end]})
    damage: list = []
    log = open_log(fs, damage=damage)
    assert [d.reason for d in damage] == ["offset_order"]
    assert log.end_offset("s") == 400


@pytest.mark.slow
def test_random_bit_flips_in_sealed_segments_lose_only_the_damaged_frames(disk, long_run) -> None:
    files = written_log(close=True).snapshot()
    data = files[SEGMENT]
    frames = frames_of(data)
    firsts = [sum(n for _, _, n in frames[:i]) for i in range(len(frames))]
    rng = random.Random(1234)
    for _ in range(300 if disk.kind == "memfs" or long_run else 120):
        position = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        damage: list = []
        disk.put({**files, SEGMENT: bytes(flipped)})
        log = disk.open(damage=damage)
        assert log.recovery.segments_trusted == 1  # sealed: the damage is found when it is read
        records = all_records(log)
        assert all(r.payload == payload(r.offset) for r in records)  # never a damaged record
        i = next(i for i, f in enumerate(frames) if f[0] <= position < f[1])
        start, end, count = frames[i]
        lost = set(range(400)) - {r.offset for r in records}
        assert lost == set(range(firsts[i], firsts[i] + count)), position  # reading resumes at the next frame
        assert [(d.path, d.position, d.dropped_bytes, d.tail) for d in damage] == [
            (SEGMENT, start, end - start, i == len(frames) - 1)], position
        assert damage[0].reason in ("bad_magic", "bad_crc", "bad_length", "truncated")
        assert all_records(log) == records and len(damage) == 1  # reported once per place


def test_bit_flips_found_at_open_in_an_active_segment_do_not_truncate_good_data_after_them(disk) -> None:
    files = written_log().snapshot()  # not closed: recovered at open
    data = bytearray(files[SEGMENT])
    start, end, count = frames_of(bytes(data))[10]
    data[start + 20] ^= 0x10
    damage: list = []
    disk.put({**files, SEGMENT: bytes(data)})
    log = disk.open(damage=damage)
    assert [(d.position, d.dropped_bytes, d.reason, d.tail) for d in damage] == [(start, end - start, "bad_crc", False)]
    assert log.recovery.bytes_truncated == 0 and disk.size(SEGMENT) == len(data)
    assert log.end_offset("s") == 400
    assert len(all_records(log)) == 400 - count


def test_damaged_index_is_rebuilt_not_trusted() -> None:
    files = written_log(records=3000, per_sync=10, close=True).snapshot()
    index_path = SEGMENT.replace(".log", ".index")
    index = bytearray(files[index_path])
    index[fmt.INDEX_HEADER_SIZE + 8 * 3 + 4] ^= 0x01  # a position in the 4th entry
    fs = MemFS.from_files({**files, index_path: bytes(index)})
    log = open_log(fs)
    assert log.recovery.segments_recovered == 1
    assert [r.offset for r in log.read("s", 1234, max_records=3)] == [1234, 1235, 1236]
    assert fs.snapshot()[index_path] == files[index_path]  # rewritten as it was


def test_a_wrong_index_position_at_read_time_falls_back_to_a_scan(fs) -> None:
    log = open_log(fs)
    for i in range(3000):
        log.append("s", T0 + i, payload(i), T0)
        if i % 10 == 9:
            log.sync()
    log.sync()
    seg = log._streams["s"].segments[0]
    seg.idx_pos[5] += 7  # as if the index had rotted after it was trusted
    damage: list = []
    log._reporter = damage.append
    target = seg.base + seg.idx_rel[5] + 3
    assert [r.offset for r in log.read("s", target, max_records=2)] == [target, target + 1]
    assert [d.reason for d in damage] == ["stale_index"]


def test_index_that_does_not_match_the_log_size_is_rebuilt() -> None:
    files = written_log(close=True).snapshot()
    data = files[SEGMENT]
    fs = MemFS.from_files({**files, SEGMENT: data + b"\0" * 10})
    log = open_log(fs)
    assert log.recovery.segments_trusted == 0 and log.recovery.bytes_truncated == 10
    assert len(all_records(log)) == 400


def test_missing_indexes_are_rebuilt_and_orphan_indexes_removed() -> None:
    files = written_log(close=True).snapshot()
    files = {p: b for p, b in files.items() if not p.endswith("index")}
    files["streams/s/00000001704067200000-03600000/00000000000000000999.index"] = b"orphan"
    fs = MemFS.from_files(files)
    log = open_log(fs)
    assert log.recovery.segments_recovered == 1
    assert fs.files(".index") == [SEGMENT.replace(".log", ".index")]


def test_empty_segments_and_tmp_files_are_removed_at_open() -> None:
    files = written_log(close=True).snapshot()
    window = SEGMENT.rsplit("/", 1)[0]
    files[f"{window}/00000000000000000400.log"] = b""
    files["cursors/bridge/s.cursor.tmp"] = b"half"
    files["meta/state.tmp"] = b"half"
    fs = MemFS.from_files(files)
    log = open_log(fs)
    assert log.recovery.segments_removed_empty == 1
    assert log.recovery.tmp_files_removed == 2
    assert fs.files(".tmp") == [] and f"{window}/00000000000000000400.log" not in fs.files()


def test_damaged_cursor_and_state_are_reported_not_fatal() -> None:
    files = written_log(close=True).snapshot()
    files["cursors/bridge/s.cursor"] = b"nonsense"
    files["meta/state"] = b"{broken\ncrc32c 00000000\n"
    damage: list = []
    log = open_log(MemFS.from_files(files), damage=damage)
    assert sorted(d.reason for d in damage) == ["bad_cursor", "bad_state"]
    assert log.load_cursor("bridge", "s") == 0


def test_stray_files_are_reported_and_left_alone() -> None:
    files = written_log(close=True).snapshot()
    files["streams/s/not-a-window/x"] = b"?"
    files["streams/s/00000001704067200000-03600000/README"] = b"?"
    damage: list = []
    fs = MemFS.from_files(files)
    open_log(fs, damage=damage)
    assert [d.reason for d in damage] == ["stray_file", "stray_file"]
    assert "streams/s/not-a-window/x" in fs.files()


def test_the_next_offset_never_goes_below_a_stored_cursor() -> None:
    fs = written_log(records=10)
    log = open_log(fs, LogConfig(sync_policy="never"))
    log.store_cursor("bridge", "s", 10)
    # A power cut under "never" takes every record back, but the cursor was fsynced.
    fs2 = MemFS.from_files({p: (b"" if p.endswith(".log") else b) for p, b in fs.snapshot().items()})
    log = open_log(fs2)
    assert log.end_offset("s") == 10
    assert log.append("s", T0, b"x", T0) == 10


def test_fsck_reports_without_changing_anything_then_repair_makes_it_clean() -> None:
    files = written_log(close=True).snapshot()
    data = bytearray(files[SEGMENT])
    start, end, _ = frames_of(bytes(data))[7]
    data[start + 30] ^= 0x04
    files[SEGMENT] = bytes(data) + b"\xde\xad"
    files["meta/state.tmp"] = b"half"
    fs = MemFS.from_files(files)
    before = fs.snapshot()
    report = fsck(fs)
    assert fs.snapshot() == before
    reasons = sorted((d.reason, d.action) for d in report.damage)
    assert ("bad_crc", "skipped") in reasons and any(a == "would_truncate" for _, a in reasons)
    assert any("truncate" in a for a in report.actions) and any("state.tmp" in a for a in report.actions)
    assert not report.clean and report.lines()[-1] == "needs repair"
    repaired = fsck(fs, repair=True)
    assert repaired.lines()[-1] == "repaired"
    again = fsck(fs)
    assert [d.reason for d in again.damage] == ["bad_crc"]  # mid-file damage stays reported
    assert again.actions == []
