"""Durable log benchmark: append throughput per sync policy against raw write+fsync on the same disk.

Every figure comes with its ceiling measured in the same run on the same
directory: the raw loop writes the same payload bytes to one file with
``os.write`` and ``fdatasync`` at the same cadence (every record for
``always``, every 20 ms for ``interval``, never for ``never``) and does
nothing else, no framing, no CRC, no offsets. The ratio log/raw is the
figure to compare between machines.

Also: write amplification (bytes written to disk per payload byte), time-range
and offset read throughput, and recovery time of a 1 GiB log with its indexes
(trusted at open) and without them (every frame read and checked).

Run: ``python -m bench.bench_log [--dir DIR] [--seconds S] [--recovery-gib G] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import machine, table
from core.log import UNSYNCED, Log, LogConfig
from core.reading import Reading, encode_reading
from edge.logstore import OsFileSystem, open_log

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STREAM = "sensors"
_fdatasync = getattr(os, "fdatasync", os.fsync)


def make_payloads(count: int = 100_000) -> list[tuple[int, bytes]]:
    """(ts, payload) of realistic readings of about 100 bytes, 50 devices x 2 metrics at 1 Hz."""
    out = []
    for i in range(count):
        ts = T0 + (i // 100) * 1000 + i % 100
        device = f"site-north/greenhouse-{i % 50:03d}/esp32"
        metric = "air_temperature_celsius" if i % 2 else "relative_humidity_percent"
        reading = Reading(device, metric, ts, round(20 + (i % 997) / 100, 2), ts + 35)
        out.append((ts, encode_reading(reading)))
    return out


def _fresh(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def raw(base: Path, records: list[tuple[int, bytes]], seconds: float, policy: str, interval_ms: int = 20,
        batch: int = 1) -> dict:
    """The ceiling: the payload bytes appended to one file, synced at the policy's cadence.

    With ``batch`` > 1 the records come ``batch`` at a time, already joined (the
    fair ceiling for ``append_many``): under ``always`` one fdatasync per batch.
    """
    directory = _fresh(base, f"raw-{policy}-{batch}")
    fd = os.open(directory / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    payloads = [p for _, p in records]
    if batch > 1:
        payloads = [b"".join(payloads[i:i + batch]) for i in range(0, len(payloads) - batch + 1, batch)]
    n = len(payloads)
    count = written = syncs = 0
    pending: list[bytes] = []
    started = last = time.perf_counter()
    deadline = started + seconds
    interval = interval_ms / 1000
    try:
        if policy == "always":
            while True:
                payload = payloads[count % n]
                written += os.write(fd, payload)
                _fdatasync(fd)
                syncs += 1
                count += 1
                if (count % 64 == 0 or batch > 1) and time.perf_counter() >= deadline:
                    break
        else:
            while True:
                pending.append(payloads[count % n])
                count += 1
                if count % 256 == 0 or batch > 1:
                    now = time.perf_counter()
                    if now - last >= interval:
                        written += os.write(fd, b"".join(pending))
                        pending.clear()
                        if policy == "interval":
                            _fdatasync(fd)
                            syncs += 1
                        last = now
                    if now >= deadline:
                        break
            written += os.write(fd, b"".join(pending))
            if policy == "interval":
                _fdatasync(fd)
                syncs += 1
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    return {"rate": count * batch / elapsed, "records": count * batch, "syncs": syncs, "bytes": written}


def log_append(base: Path, records: list[tuple[int, bytes]], seconds: float, policy: str,
               batch: int = 0, shared: bool = False) -> dict:
    """The log: per-record ``append`` (or ``append_many`` of ``batch`` records), group commit by ``maybe_sync``."""
    directory = _fresh(base, f"log-{policy}-{batch}-{int(shared)}")
    config = LogConfig(sync_policy=policy, sync_interval_ms=20)
    n = len(records)
    count = 0
    if shared:
        log = open_log(directory, config, background=True)
        append = log.append
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            ts, payload = records[count % n]
            append(STREAM, ts, payload, UNSYNCED)
            count += 1
            if count % 256 == 0 and time.perf_counter() >= deadline:
                break
        log.sync()
        elapsed = time.perf_counter() - started
        stats = log.stats()
        log.close()
        return {"rate": count / elapsed, "records": count, "stats": stats}
    fs = OsFileSystem(directory)
    log = Log(fs, config, timer=time.perf_counter)
    started = time.perf_counter()
    deadline = started + seconds
    clock = time.monotonic
    if batch:
        chunks = [records[i:i + batch] for i in range(0, n - batch + 1, batch)]
        i = 0
        while True:
            log.append_many(STREAM, chunks[i % len(chunks)], UNSYNCED)
            count += batch
            i += 1
            log.maybe_sync(int(clock() * 1000))
            if time.perf_counter() >= deadline:
                break
    else:
        append = log.append
        maybe_sync = log.maybe_sync
        while True:
            ts, payload = records[count % n]
            append(STREAM, ts, payload, UNSYNCED)
            count += 1
            if count % 64 == 0:
                maybe_sync(int(clock() * 1000))
                if count % 256 == 0 and time.perf_counter() >= deadline:
                    break
    log.sync()
    elapsed = time.perf_counter() - started
    stats = log.stats()
    log.close()
    fs.close()
    return {"rate": count / elapsed, "records": count, "stats": stats, "fsyncs": fs.fsyncs}


def reads(base: Path, records: list[tuple[int, bytes]], total: int) -> dict:
    """Offset reads (the bridge) and time-range reads over a log of ``total`` records."""
    directory = _fresh(base, "reads")
    fs = OsFileSystem(directory)
    log = Log(fs, LogConfig(sync_policy="never"))
    n = len(records)
    for i in range(0, total, 1000):
        chunk = [(T0 + (i + k) * 10, records[(i + k) % n][1]) for k in range(1000)]
        log.append_many(STREAM, chunk, UNSYNCED)
    log.close()
    log = Log(fs, LogConfig(sync_policy="never"))
    started = time.perf_counter()
    offset = got = 0
    while chunk := log.read(STREAM, offset, max_records=1000):
        got += len(chunk)
        offset = chunk[-1].offset + 1
    by_offset = got / (time.perf_counter() - started)
    started = time.perf_counter()
    in_range = sum(1 for _ in log.read_time_range(STREAM, T0, T0 + total * 10))
    by_time = in_range / (time.perf_counter() - started)
    t1 = T0 + total * 5
    started = time.perf_counter()
    slice_count = sum(1 for _ in log.read_time_range(STREAM, t1, t1 + 60_000))
    slice_ms = (time.perf_counter() - started) * 1000
    log.close()
    fs.close()
    return {"by_offset": by_offset, "by_time": by_time, "records": got, "slice_records": slice_count, "slice_ms": slice_ms}


def recovery(base: Path, records: list[tuple[int, bytes]], gib: float) -> dict:
    """Open time of a log of ``gib`` GiB: indexes trusted, then every index removed (full scan)."""
    directory = _fresh(base, "recovery")
    fs = OsFileSystem(directory)
    config = LogConfig(sync_policy="never", window_ms=3_600_000)
    log = Log(fs, config)
    target = int(gib * 1024**3)
    n = len(records)
    i = 0
    while log.stats()["bytes_on_disk"] < target:
        chunk = [(T0 + (i + k) * 2, records[(i + k) % n][1]) for k in range(5000)]
        log.append_many(STREAM, chunk, UNSYNCED)
        i += 5000
        if i % 100_000 == 0:
            log.maybe_sync(i)
    log.sync()
    log._close_handles()  # a crash: the active segments stay unsealed
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    os.sync()
    started = time.perf_counter()
    log = Log(fs, config)
    trusted_s = time.perf_counter() - started
    recovered = log.recovery.segments_recovered
    log.close()
    for p in directory.rglob("*index"):
        p.unlink()
    os.sync()
    started = time.perf_counter()
    log = Log(fs, config)
    scan_s = time.perf_counter() - started
    segments = log.recovery.segments_recovered
    log.close()
    fs.close()
    return {"bytes": size, "records": i, "trusted_s": trusted_s, "active_recovered": recovered,
            "scan_s": scan_s, "segments": segments}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per append measurement")
    parser.add_argument("--recovery-gib", type=float, default=1.0, help="size of the log for the recovery figure")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.recovery_gib = 1.0, 0.02
    base = Path(tempfile.mkdtemp(prefix="tidegate-bench-log-", dir=args.dir))
    try:
        records = make_payloads()
        mean = sum(len(p) for _, p in records) / len(records)
        print(f"# machine: {machine()}")
        print(f"# directory: {base}; payload mean {mean:.1f} bytes; {args.seconds:.0f} s per figure\n")
        single_rows, batch_rows = [], []
        for policy in ("always", "interval", "never"):
            ceiling = raw(base, records, args.seconds, policy)
            single = log_append(base, records, args.seconds, policy)
            shared = log_append(base, records, args.seconds, policy, shared=True)
            ceiling_batch = raw(base, records, args.seconds, policy, batch=500)
            many = log_append(base, records, args.seconds, policy, batch=500)
            single_rows.append([
                policy, f"{ceiling['rate']:,.0f}", f"{single['rate']:,.0f}", f"{single['rate'] / ceiling['rate']:.2f}",
                f"{shared['rate']:,.0f}", f"{single['stats']['syncs']:,}", f"{single['stats']['write_amplification']:.3f}",
            ])
            batch_rows.append([
                policy, f"{ceiling_batch['rate']:,.0f}", f"{many['rate']:,.0f}",
                f"{many['rate'] / ceiling_batch['rate']:.2f}", f"{many['stats']['syncs']:,}",
                f"{many['stats']['write_amplification']:.3f}",
            ])
        print("One record per call:\n")
        print(table(["sync policy", "raw write+fdatasync rec/s", "log append rec/s", "log / raw",
                     "SharedLog append rec/s", "log syncs", "write amplification"], single_rows))
        print("\nBatches of 500 records per call:\n")
        print(table(["sync policy", "raw, 500 per write rec/s", "log append_many rec/s", "log / raw",
                     "log syncs", "write amplification"], batch_rows))
        r = reads(base, records, 200_000 if args.quick else 1_000_000)
        print()
        print(table(["read", "records/s"], [
            ["by offset (read, 1000 per call)", f"{r['by_offset']:,.0f}"],
            ["by time range (whole log)", f"{r['by_time']:,.0f}"],
            [f"one minute out of the middle ({r['slice_records']:,} records)", f"{r['slice_ms']:.1f} ms"],
        ]))
        rec = recovery(base, records, args.recovery_gib)
        print()
        print(table(["recovery", "value"], [
            ["log size", f"{rec['bytes'] / 1024**3:.2f} GiB, {rec['records']:,} records"],
            ["open, indexes trusted (active segments scanned)", f"{rec['trusted_s']:.2f} s ({rec['active_recovered']} scanned)"],
            ["open, every index removed (full scan, CRC of every frame)", f"{rec['scan_s']:.2f} s ({rec['segments']} segments)"],
            ["scan rate", f"{rec['bytes'] / 1024**2 / rec['scan_s']:,.0f} MiB/s"],
        ]))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
