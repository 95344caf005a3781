"""Crash harness: power cuts at generated points, then recovery; no acknowledged record may be lost.

Each run drives a log with random appends (several windows, late records,
rolls, seals), syncs, cursor stores, retention and quota, on a MemFS that
cuts the power at a random file operation (in the middle of a sync, a seal,
a rename...). The crash leaves every file and directory as the crash model in
memfs.py allows. Sometimes the recovery itself is cut again. Then the log is
opened once more and must hold every record that was durable before the cut,
byte for byte, and never hand out an acknowledged offset again.
"""

from __future__ import annotations

import random

import pytest

from core.log import LogConfig, LogFull
from tests.unit.log.conftest import T0, open_log
from core.log._segment import BLOCK_BYTES
from tests.unit.log.memfs import CrashNow, MemFS

MINUTE = 60_000


def config_for(policy: str, quota: bool) -> LogConfig:
    return LogConfig(
        window_ms=MINUTE, segment_bytes=64 * 1024, sync_policy=policy, sync_interval_ms=5,
        max_open_windows=2, late_grace_ms=MINUTE, retention_ms=2 * MINUTE,
        quota_bytes=1024 * 1024 if quota else None,
        quota_policies={"low": "drop_oldest"}, priorities={"low": -1},
    )


def one_run(seed: int, policy: str) -> int:
    """Run until a crash; check recovery. Returns how many acknowledged records were checked."""
    rng = random.Random(seed)
    fs = MemFS()
    config = config_for(policy, quota=rng.random() < 0.3)
    quota = config.quota_bytes
    largest = 300 if quota is None else 64_000
    log = open_log(fs, config)
    fs.crash_at = fs.mutations + rng.randint(1, 400)
    written: dict[tuple[str, int], tuple[int, bytes]] = {}
    deleted: set[tuple[str, int]] = set()  # removed on purpose by retention or quota (or about to be)
    delete = log._delete

    def spy(forwarded, dropped):
        for st, win in forwarded + dropped:
            deleted.update(
                key for key, (ts, _) in written.items()
                if key[0] == st.name and win.start <= ts < win.start + win.length
            )
        return delete(forwarded, dropped)

    log._delete = spy
    durable = {"s": 0, "low": 0}
    cursor = {"s": 0}
    inflight_cursor = None
    now = T0
    try:
        for step in range(10_000):
            op = rng.random()
            stream = "low" if rng.random() < 0.2 else "s"
            if op < 0.55:
                ts = now - rng.randint(0, 4 * MINUTE)
                data = rng.randbytes(rng.randint(0, largest))
                expected = log.end_offset(stream)
                written[(stream, expected)] = (ts, data)  # may reach the disk even if the cut comes inside append
                try:
                    assert log.append(stream, ts, data, now) == expected
                except LogFull:
                    del written[(stream, expected)]
            elif op < 0.7:
                log.sync()
            elif op < 0.8:
                log.maybe_sync(step * 3)
            elif op < 0.87:
                target = rng.randint(0, log.durable_offset("s"))
                inflight_cursor = target
                log.store_cursor("bridge", "s", target)
                cursor["s"] = target
                inflight_cursor = None
            elif op < 0.95:
                now += rng.randint(0, 2 * MINUTE)
                log.maybe_seal(now)
            else:
                log.enforce_retention(now)
            for name in durable:
                durable[name] = log.durable_offset(name)
            if quota is not None:  # what the files take on disk stays within the quota plus one segment
                assert fs.used(BLOCK_BYTES) <= quota + config.segment_bytes, (seed, step)
    except CrashNow:
        pass
    # A cursor store cut inside store_cursor may leave the old value or the new one, nothing else.
    cursor_values = {cursor["s"], inflight_cursor}
    after = fs.crash(rng)
    if rng.random() < 0.3:  # cut the power again, during recovery
        after.crash_at = rng.randint(1, 30)
        try:
            open_log(after, config).close()
        except CrashNow:
            pass
        after = after.crash(rng)
    log2 = open_log(after, config)
    checked = 0
    for name, high in durable.items():
        got = {}
        offset = 0
        while True:
            chunk = log2.read(name, offset, max_records=5000, max_bytes=10**9)
            if not chunk:
                break
            got.update({r.offset: (r.ts_ms, r.payload) for r in chunk})
            offset = chunk[-1].offset + 1
        for off in range(high):
            if (name, off) in deleted:
                continue
            assert got.get(off) == written[(name, off)], (seed, policy, name, off)
            checked += 1
        for off, value in got.items():
            assert written.get((name, off)) == value, (seed, name, off)  # nothing invented
        assert log2.end_offset(name) >= high
    for name, high in durable.items():  # after every check: an append may make room by dropping "low"
        if high:
            try:
                assert log2.append(name, T0, b"new", now) >= high  # acknowledged offsets are never reused
            except LogFull:
                pass
    assert log2.load_cursor("bridge", "s") in cursor_values
    return checked


@pytest.mark.parametrize("policy", ["always", "interval"])
def test_power_cuts_lose_no_acknowledged_record_quick(policy) -> None:
    assert sum(one_run(seed, policy) for seed in range(60)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "interval"])
def test_power_cuts_lose_no_acknowledged_record_thousand_points(policy) -> None:
    for seed in range(1000, 2000):
        one_run(seed, policy)


@pytest.mark.long
@pytest.mark.parametrize("policy", ["always", "interval"])
def test_power_cuts_lose_no_acknowledged_record_many_points(policy) -> None:
    for seed in range(10_000, 30_000):
        one_run(seed, policy)


def test_process_crash_under_never_loses_nothing_handed_to_the_os() -> None:
    rng = random.Random(7)
    fs = MemFS()
    log = open_log(fs, LogConfig(sync_policy="never"))
    records = []
    for i in range(500):
        records.append((T0 + i, rng.randbytes(50)))
        log.append("s", *records[-1], T0)
        if i % 17 == 0:
            log.maybe_sync(i * 100)
    high = log.durable_offset("s")
    log2 = open_log(fs)  # kill -9: the OS still has every written byte
    got = log2.read("s", 0, max_records=1000)
    assert [(r.ts_ms, r.payload) for r in got][:high] == records[:high]


def test_recovery_is_idempotent(fs) -> None:
    rng = random.Random(3)
    log = open_log(fs, config_for("interval", quota=False))
    for i in range(300):
        log.append("s", T0 + rng.randint(0, 3 * MINUTE), rng.randbytes(30), T0 + 3 * MINUTE)
        if i % 7 == 0:
            log.sync()
    log.sync()
    crashed = fs.crash(rng, modes=("garbage",))
    first = open_log(crashed, config_for("interval", quota=False))
    records = first.read("s", 0, max_records=1000)
    snapshot = crashed.snapshot()
    second = open_log(crashed, config_for("interval", quota=False))
    assert crashed.snapshot() == snapshot
    assert second.read("s", 0, max_records=1000) == records
    assert second.recovery.bytes_truncated == 0 and second.recovery.segments_recovered == 0
