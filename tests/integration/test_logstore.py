"""The durable log on real files: the adapter, threads, kill -9 of an appending process, a full disk."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.log import UNSYNCED, Log, LogConfig, LogFailed, LogFull, LogIOError
from core.log import format as fmt
from core.log._scan import FrameScanner
from edge.logstore import DataDirLocked, OsFileSystem, SharedLog, fsck_data_dir, open_log
from tests.unit.log.realfs import FaultyFileSystem

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_704_067_200_000


@pytest.mark.slow
def test_round_trip_reopen_and_fsck_on_real_files(tmp_path) -> None:
    config = LogConfig(sync_policy="interval", segment_bytes=64 * 1024)
    with open_log(tmp_path, config) as log:
        offsets = [log.append("s", T0 + i, b"r%05d" % i, UNSYNCED) for i in range(3000)]
        assert log.wait_durable("s", offsets[-1], timeout=5)
        assert [r.payload for r in log.read("s", 2990)] == [b"r%05d" % i for i in range(2990, 3000)]
        with pytest.raises(DataDirLocked):
            open_log(tmp_path, config)
    with open_log(tmp_path, config) as log:
        assert log.end_offset("s") == 3000
        assert log.recovery.segments_recovered == 0  # sealed at close: trusted, not rescanned
        assert len(list(log.read_time_range("s", T0 + 100, T0 + 200))) == 100
    report = fsck_data_dir(tmp_path)
    assert report.clean, report.lines()
    names = sorted(p.name for p in (tmp_path / "streams" / "s").iterdir())
    assert names == ["00000001704067200000-03600000"]


@pytest.mark.slow
def test_os_file_system_forgets_cached_readers_when_files_change(tmp_path) -> None:
    fs = OsFileSystem(tmp_path)
    handle = fs.open_append("f")
    handle.write(b"old")
    handle.close()
    assert fs.read("f", 0, 10) == b"old"
    fs.unlink("f")
    handle = fs.open_append("f")
    handle.write(b"new!")
    handle.sync()
    handle.close()
    assert fs.read("f", 0, 10) == b"new!"
    fs.truncate("f", 2)
    assert fs.read("f", 0, 10) == b"ne"
    fs.mkdir("d")
    fs.mkdir("d")
    assert fs.listdir("") == ["d", "f"]
    fs.sync_dir("d")
    fs.close()


@pytest.mark.slow
def test_the_intake_thread_appends_while_the_bridge_thread_reads(tmp_path) -> None:
    with open_log(tmp_path, LogConfig(sync_policy="interval", sync_interval_ms=5)) as log:
        seen: list[int] = []
        done = threading.Event()

        def bridge() -> None:
            offset = 0
            while not done.is_set() or offset < log.durable_offset("s"):
                for record in log.read("s", offset, max_records=100):
                    seen.append(record.offset)
                    offset = record.offset + 1
                log.store_cursor("bridge", "s", offset)
                time.sleep(0.001)

        reader = threading.Thread(target=bridge)
        reader.start()
        for i in range(5000):
            offset = log.append("s", T0 + i, b"x" * 50, UNSYNCED)
        assert log.wait_durable("s", offset, timeout=5)
        done.set()
        reader.join(10)
        assert seen == list(range(5000))
        assert log.load_cursor("bridge", "s") == 5000
        stats = log.stats()
        assert stats["fsyncs"] > 0 and stats["syncs"] > 0


@pytest.mark.slow
def test_a_bit_flip_in_a_sealed_segment_is_reported_by_reading_and_by_tidegate_fsck_alike(tmp_path) -> None:
    data_dir = tmp_path / "gateway"
    with open_log(data_dir / "log", LogConfig(sync_policy="interval"), background=False) as log:
        for i in range(300):
            log.append("s", T0 + i, b"r%05d" % i * 8, UNSYNCED)
            if i % 10 == 9:
                log.sync()
    segment = sorted((data_dir / "log").rglob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    frames = [(pos, pos + fmt.FRAME_HEADER_SIZE + len(body))
              for pos, _, body in FrameScanner(lambda p, n: bytes(data[p:p + n]), "x", 0, len(data))]
    start, end = frames[len(frames) // 2]
    data[start + 30] ^= 0x08
    segment.write_bytes(bytes(data))
    damage: list = []
    with open_log(data_dir / "log", reporter=damage.append, background=False) as log:
        held = [r.offset for r in log.read("s", 0, max_records=10_000)]
    assert len(held) == 290 and held == sorted(held)  # one frame of ten records lost, reading went on
    path = segment.relative_to(data_dir / "log").as_posix()
    assert [(d.path, d.position, d.dropped_bytes, d.reason, d.tail) for d in damage] == [
        (path, start, end - start, "bad_crc", False)]
    before = segment.read_bytes()
    done = subprocess.run([sys.executable, "-m", "tidegate", "fsck", "--data-dir", str(data_dir)], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert f"skipped: {path} at {start}: {end - start} bytes, bad_crc (mid-file)" in lines, done.stdout
    assert "stream s: offsets 0..300, 290 records" in lines and lines[-1] == "needs repair"
    assert segment.read_bytes() == before  # fsck without --repair changes nothing


@pytest.mark.slow
@pytest.mark.parametrize("op", ["write", "torn_write", "sync"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_after_the_sync_thread_fails_nothing_more_is_acknowledged_and_reopening_keeps_every_ack(
        tmp_path, op, code) -> None:
    real = OsFileSystem(tmp_path)
    faulty = FaultyFileSystem(real)
    config = LogConfig(sync_policy="interval", sync_interval_ms=2)
    # One window and no trusted clock: every write and fsync is the sync thread's, of the active segment.
    log = SharedLog(Log(faulty, config), real, None, lambda: UNSYNCED)
    faulty.fail(op.removeprefix("torn_"), 6, code, torn=op.startswith("torn_"))
    acked: dict[int, bytes] = {}
    with pytest.raises(LogFailed):
        for burst in range(10_000):  # as the intake does: append what arrived, wait for the sync, then ack
            offsets = [log.append("s", T0 + burst, b"%d-%d" % (burst, i), UNSYNCED) for i in range(1 + burst % 5)]
            assert log.wait_durable("s", offsets[-1], timeout=10)
            acked.update((o, b"%d-%d" % (burst, i)) for i, o in enumerate(offsets))
    assert acked and log.stats()["sync_thread_failed"]
    with pytest.raises(LogFailed):
        log.durable_offset("s")
    log.close()
    with open_log(tmp_path, config, background=False) as again:
        got = {r.offset: r.payload for r in again.read("s", 0, max_records=10**6)}
        if op == "torn_write":
            assert again.recovery.bytes_truncated > 0
    assert {o: got.get(o) for o in acked} == acked


CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[4])
from core.log import LogConfig, UNSYNCED
from edge.logstore import open_log

data_dir, policy, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = open_log(data_dir, LogConfig(sync_policy=policy, segment_bytes=128 * 1024, window_ms=60_000,
                                   max_open_windows=3))
out = sys.stdout
out.write("ready\n")
out.flush()
n = 0
while True:
    burst = []
    for _ in range(1 + n % 50):   # the intake appends what it received, then waits for the sync
        payload = b"%d-%d-" % (os.getpid(), n) + b"p" * (n % 200)
        ts = 1_704_067_200_000 + (start + n) * 97 % (10 * 60_000)   # several windows, out of order
        burst.append((log.append("s", ts, payload, UNSYNCED), ts, payload))
        n += 1
    if policy != "always":
        log.wait_durable("s", burst[-1][0], timeout=10)
    for offset, ts, payload in burst:
        out.write("%d %d %s\n" % (offset, ts, payload.hex()))   # the acknowledgements
    out.flush()
"""


def kill_cycles(tmp_path: Path, policy: str, cycles: int) -> int:
    rng = random.Random(cycles)
    acked: dict[int, tuple[int, bytes]] = {}
    for cycle in range(cycles):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), policy, str(cycle * 100_000), str(ROOT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready == b"ready\n", child.stderr.read().decode() if child.stderr else ready
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        lines = out.split(b"\n")[:-1]  # the last line may be cut short
        for line in lines:
            offset, ts, payload = line.split(b" ")
            assert int(offset) not in acked  # an acknowledged offset is never handed out again
            acked[int(offset)] = (int(ts), bytes.fromhex(payload.decode()))
        with open_log(tmp_path, LogConfig(sync_policy=policy), background=False) as log:
            got = {}
            offset = 0
            while chunk := log.read("s", offset, max_records=10_000, max_bytes=1 << 30):
                got.update({r.offset: (r.ts_ms, r.payload) for r in chunk})
                offset = chunk[-1].offset + 1
            missing = [o for o in acked if got.get(o) != acked[o]]
            assert not missing, (cycle, missing[:10])
    return len(acked)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "interval"])
def test_kill_9_of_an_appending_process_loses_no_acknowledged_record(tmp_path, policy) -> None:
    assert kill_cycles(tmp_path, policy, cycles=int(os.environ.get("TIDEGATE_KILL_CYCLES", "3"))) > 0


@pytest.mark.long
@pytest.mark.parametrize("policy", ["always", "interval"])
def test_kill_9_hundreds_of_times(tmp_path, policy) -> None:
    assert kill_cycles(tmp_path, policy, cycles=200) > 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs_fails_loudly_and_recovers_every_acknowledged_record(small_tmpfs) -> None:
    config = LogConfig(sync_policy="always", segment_bytes=64 * 1024, window_ms=60_000)
    acked: dict[int, bytes] = {}
    log = open_log(small_tmpfs / "data", config)
    with pytest.raises(LogIOError) as info:
        for i in range(100_000):
            payload = b"%08d" % i + b"z" * 200
            acked[log.append("s", T0 + i * 10, payload, UNSYNCED)] = payload
    assert info.value.reason == "ENOSPC"
    log.close()
    # Reopening on the still-full disk must work (no crash loop): it only truncates and reads.
    with open_log(small_tmpfs / "data", config, background=False) as log:
        got = {r.offset: r.payload for r in log.read("s", 0, max_records=10**6, max_bytes=1 << 30)}
        assert all(got[o] == p for o, p in acked.items())
    # With a quota below the disk size, the log refuses instead of failing.
    (small_tmpfs / "quota").mkdir()
    for path in sorted((small_tmpfs / "data").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    quota = LogConfig(sync_policy="always", segment_bytes=64 * 1024, window_ms=60_000, quota_bytes=1024 * 1024)
    with open_log(small_tmpfs / "quota", quota) as log:
        with pytest.raises(LogFull):
            for i in range(100_000):
                log.append("s", T0 + i * 10, b"q" * 200, UNSYNCED)
        assert log.durable_offset("s") == log.end_offset("s")


def disk_usage(root: Path) -> int:
    """What the file system allocated under ``root``, as du counts it: st_blocks of every file and directory."""
    return sum(path.lstat().st_blocks * 512 for path in [root, *root.rglob("*")])


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_real_disk_usage_stays_within_the_quota_plus_one_segment_on_a_tmpfs(small_tmpfs, policy) -> None:
    segment, quota = 64 * 1024, 1024 * 1024
    config = LogConfig(sync_policy="interval", segment_bytes=segment, window_ms=60_000, max_open_windows=2,
                       quota_bytes=quota, quota_policy=policy)
    root = small_tmpfs / "data"
    worst = 0
    with open_log(root, config, background=False) as log:
        try:
            for i in range(12_000):  # 200-byte readings, a new one-minute window every 600
                log.append("s", T0 + i * 100, b"q" * 200, UNSYNCED)
                if i % 50 == 49:
                    log.sync()
                    worst = max(worst, disk_usage(root))
        except LogFull:
            assert policy == "block"
        else:
            assert policy == "drop_oldest" and log.stats()["streams"]["s"]["dropped_by_quota"] > 0
        assert log.durable_offset("s") == log.end_offset("s")
        worst = max(worst, disk_usage(root))
    worst = max(worst, disk_usage(root))  # closing seals the active segments: their index files
    assert worst <= quota + segment, (worst, quota + segment)
