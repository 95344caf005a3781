"""Footprint for a Pi Zero 2 W: the gateway's memory, CPU and disk writes per reading.

Run: python -m bench.bench_footprint [--quick] [--rate 1000] [--seconds 20] [--dir DIR] [--json FILE]

For each upstream (a spool directory, a real Kafka broker) and each sync
policy (``always``, ``interval``, ``never``), the gateway runs as ``tidegate
run`` in its own process with its default settings otherwise (status page
and /metrics on, here on loopback), on a fresh Mosquitto. After it has been
idle for a few seconds, ``tidegate simulate`` (another process) publishes a
known number of readings at ``--rate``; the run ends when the upstream has
acknowledged all of them (``tidegate_readings_out_total``). Measured on the
gateway process alone:

* resident memory (VmRSS): idle, and the peak while the readings arrive;
* CPU time (user + system) per reading, from the start of publishing until
  everything is upstream, and the idle CPU share before it;
* bytes written to disk: ``write_bytes`` of ``/proc/<pid>/io``, which Linux
  counts when a page cache page becomes dirty, so a 4 KiB page rewritten
  after each fsync counts 4 KiB each time, as the device sees it (the file
  system's journal, written by the kernel's jbd2 thread, is not in it);
* fsync and fdatasync calls, counted by ``perf stat`` on the syscall
  tracepoints when perf is there (else the log's group commits from
  /metrics);
* the growth of the data directory (apparent size).

The comparisons, in the same run: the readings' payload bytes as they came
from MQTT (``tidegate_intake_bytes_total``: topic and payload), so disk
bytes / payload bytes is the write amplification; for disk writes a raw
baseline, a process writing the same number of messages of the same size to
one file on the same disk, with one fdatasync per message (what a broker
that syncs every message does) and with none; for memory, the floor of any
Python service: the same interpreter doing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.bench_pipeline import proc_stats
from bench.common import ROOT, gateway_metrics, machine, table, wait_for_metric
from edge.mosquitto import Mosquitto, free_port

POLICIES = ("always", "interval", "never")
UPSTREAMS = ("spool", "kafka")
SENSORS = 50


def proc_io(pid: int | str) -> dict[str, int]:
    """``/proc/<pid>/io`` as a dict (write_bytes, cancelled_write_bytes, syscw, ...)."""
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def dir_bytes(path: Path) -> int:
    """Apparent size of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class SyncCounter:
    """fsync/fdatasync calls of a running process, through ``perf stat`` on the syscall tracepoints."""

    EVENTS = ("syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync")

    def __init__(self, pid: int) -> None:
        self._process: subprocess.Popen[str] | None = None
        if shutil.which("perf") is None:
            return
        self._process = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(self.EVENTS), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.3)  # attached
        if self._process.poll() is not None:  # no tracepoints (permissions, kernel): fall back
            self._process = None

    @property
    def available(self) -> bool:
        return self._process is not None

    def stop(self) -> int | None:
        if self._process is None:
            return None
        self._process.send_signal(signal.SIGINT)
        _, err = self._process.communicate(timeout=10)
        counts = [int(line.split(",")[0]) for line in err.splitlines()
                  if any(e in line for e in self.EVENTS) and line.split(",")[0].isdigit()]
        return sum(counts) if len(counts) == len(self.EVENTS) else None


def raw_writer(path: str, messages: int, size: int, sync: bool) -> None:
    """The baseline: ``messages`` appends of ``size`` bytes to one file, each followed by fdatasync if ``sync``.

    Prints this process's write_bytes and fdatasync count as JSON.
    """
    payload = b"x" * size
    before = proc_io("self")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(messages):
            os.write(fd, payload)
            if sync:
                os.fdatasync(fd)
    finally:
        os.close(fd)
    after = proc_io("self")
    print(json.dumps({"write_bytes": after["write_bytes"] - before["write_bytes"], "syncs": messages if sync else 0}))


def run_raw(work: Path, messages: int, size: int, sync: bool) -> dict[str, int]:
    path = work / f"raw-{'sync' if sync else 'nosync'}.log"
    code = f"from bench.bench_footprint import raw_writer; raw_writer({str(path)!r}, {messages}, {size}, {sync})"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path.unlink(missing_ok=True)
    return json.loads(out)  # type: ignore[no-any-return]


def floor_rss() -> float:
    """MB resident of the same Python interpreter doing nothing."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=ROOT)
    try:
        time.sleep(3.0)
        return proc_stats(process.pid)[0] / 2**20
    finally:
        process.kill()
        process.wait()


def simulate_count(port: int, rate: float, readings: int) -> subprocess.Popen[str]:
    """``tidegate simulate`` publishing ``readings`` readings (two per sample) at ``rate`` readings/s."""
    return subprocess.Popen(
        [sys.executable, "-m", "tidegate", "simulate", "--mqtt", f"127.0.0.1:{port}", "--sensors", str(SENSORS),
         "--rate", f"{rate / 2 / SENSORS:.6f}", "--count", str(readings // 2)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@contextmanager
def gateway(mq: Mosquitto, data_dir: Path, upstream: str, policy: str, http_port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "--mqtt", f"127.0.0.1:{mq.port}", "--quiet",
         "--http", f"127.0.0.1:{http_port}", "--data-dir", str(data_dir), "--sync", policy,
         "--gateway-id", "footprint", *(["--upstream", upstream] if upstream else [])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # Its log lines are read here, not written to a file: a file would count in
    # its write_bytes (under systemd they go to journald), and a pipe nobody
    # reads could fill and stall it.
    tail = bytearray()
    threading.Thread(target=_drain, args=(process, tail), daemon=True).start()
    try:
        yield process
    except Exception:
        print(f"the gateway's last log lines:\n{tail.decode(errors='replace')}", file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain(process: subprocess.Popen[bytes], tail: bytearray) -> None:
    if process.stderr is None:
        return
    for line in process.stderr:
        tail.extend(line)
        del tail[:-8192]


def run_case(upstream_kind: str, policy: str, rate: float, readings: int, idle_s: float, work: Path,
             kafka_upstream: str) -> dict[str, object]:
    name = f"{upstream_kind}-{policy}"
    data_dir = work / f"gw-{name}"
    http_port = free_port()
    with Mosquitto(work / f"mq-{name}") as mq, \
            gateway(mq, data_dir, kafka_upstream if upstream_kind == "kafka" else "", policy, http_port) as gw:
        wait_for_metric(http_port, "tidegate_mqtt_connected", 1, 60, gw)
        time.sleep(1.0)  # the status page's first samples, the forwarder's first polls
        rss_idle: list[int] = []
        cpu_idle_start = proc_stats(gw.pid)[1]
        idle_start = time.monotonic()
        while time.monotonic() - idle_start < idle_s:
            rss_idle.append(proc_stats(gw.pid)[0])
            time.sleep(0.2)
        rss, cpu_start = proc_stats(gw.pid)
        idle_cpu_share = (cpu_start - cpu_idle_start) / (time.monotonic() - idle_start)
        before = gateway_metrics(http_port)
        io_start = proc_io(gw.pid)
        dir_start = dir_bytes(data_dir)
        syncs = SyncCounter(gw.pid)
        start = time.monotonic()
        sim = simulate_count(mq.port, rate, readings)
        peak = rss
        while sim.poll() is None:
            peak = max(peak, proc_stats(gw.pid)[0])
            time.sleep(0.2)
        published = sim.stderr.read() if sim.stderr else ""
        match = re.search(r"published (\d+) of (\d+)", published)
        if not match or int(match.group(1)) != readings // 2:
            raise RuntimeError(f"the simulator did not publish {readings // 2} samples: {published.strip()}")
        after = wait_for_metric(http_port, "tidegate_readings_out_total",
                             before.get("tidegate_readings_out_total", 0) + readings, 120, gw)
        elapsed = time.monotonic() - start
        peak = max(peak, proc_stats(gw.pid)[0])
        time.sleep(0.5)  # the cursor after the last acknowledgement
        _, cpu_end = proc_stats(gw.pid)
        io_end = proc_io(gw.pid)
        fsyncs = syncs.stop()
        final = gateway_metrics(http_port)
        dir_end = dir_bytes(data_dir)
    spool = data_dir / "spool"
    return {
        "upstream": upstream_kind, "policy": policy, "readings": readings, "seconds": elapsed,
        "rss_idle_mb": sorted(rss_idle)[len(rss_idle) // 2] / 2**20, "rss_peak_mb": peak / 2**20,
        "idle_cpu_share": idle_cpu_share, "cpu_us_per_reading": (cpu_end - cpu_start) / readings * 1e6,
        "payload_bytes": after.get("tidegate_intake_bytes_total", 0) - before.get("tidegate_intake_bytes_total", 0),
        "write_bytes": io_end["write_bytes"] - io_start["write_bytes"],
        "cancelled_write_bytes": io_end["cancelled_write_bytes"] - io_start["cancelled_write_bytes"],
        "fsyncs": fsyncs, "fsyncs_counted_by": "perf" if fsyncs is not None else "tidegate_log_syncs_total",
        "log_syncs": final.get("tidegate_log_syncs_total", 0) - before.get("tidegate_log_syncs_total", 0),
        "dir_growth_bytes": dir_end - dir_start, "spool_bytes": dir_bytes(spool),
        "uplink_bytes": after.get("tidegate_uplink_bytes_total", 0) - before.get("tidegate_uplink_bytes_total", 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 s of readings per case, a short idle, no low rate")
    parser.add_argument("--rate", type=float, default=1000.0, help="readings/s published")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of readings per case")
    parser.add_argument("--low-rate", type=float, default=10.0,
                        help="also this rate (a small site), Kafka upstream only; 0: not")
    parser.add_argument("--low-seconds", type=float, default=40.0, help="seconds of readings per low-rate case")
    parser.add_argument("--upstreams", default=",".join(UPSTREAMS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the data directories go (default: a temporary directory; must be a real disk)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.quick else args.seconds
    idle_s = 3.0 if args.quick else 8.0
    upstreams = [u for u in args.upstreams.split(",") if u]
    policies = [p for p in args.policies.split(",") if p]
    cases = [(args.rate, seconds, u, p) for u in upstreams for p in policies]
    if args.low_rate and not args.quick:
        low_upstream = "kafka" if "kafka" in upstreams else upstreams[0]
        cases += [(args.low_rate, args.low_seconds, low_upstream, p) for p in policies]

    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tidegate-footprint-") as tmp, contextmanager_kafka(
            "kafka" in upstreams, Path(tmp) / "kafka") as broker:
        work = Path(tmp)
        fs = _fstype(work)
        if fs in ("tmpfs", "ramfs"):
            print(f"warning: {work} is on {fs}: nothing reaches a disk; use --dir", file=sys.stderr)
        floor = floor_rss()
        for rate, case_seconds, upstream, policy in cases:
            kafka_upstream = ""
            if upstream == "kafka":
                topic = f"bench-footprint-{time.monotonic_ns()}"
                broker.create_topic(topic, config={"retention.ms": "-1"})
                kafka_upstream = f"kafka://{broker.bootstrap}/{topic}"
            readings = int(rate * case_seconds) // 2 * 2
            result = run_case(upstream, policy, rate, readings, idle_s, work, kafka_upstream)
            result["rate"] = rate
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        # The baselines: as many messages as the gateway took at the main rate, of the same mean size.
        main_results = [r for r in results if r["rate"] == args.rate]
        readings = int(main_results[0]["readings"])  # type: ignore[call-overload]
        messages = readings // 2
        size = round(sum(float(r["payload_bytes"]) for r in main_results) / len(main_results) / messages)  # type: ignore[arg-type]
        raw_sync = run_raw(work, messages, size, sync=True)
        raw_nosync = run_raw(work, messages, size, sync=False)

    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rate": args.rate, "floor_rss_mb": floor,
                                         "message_bytes": size, "raw_sync": raw_sync, "raw_nosync": raw_nosync,
                                         "results": results}, indent=1))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"machine: {machine()}; file system {fs}; {SENSORS} sensors, 2 readings per message ({size} B a message "
          f"with its topic); load average at the end {load}\n")
    print("Memory and CPU of the gateway process:\n")
    print(table(
        ["readings/s", "upstream", "sync policy", "RSS idle MB", "RSS peak MB", "peak / 60 MB goal",
         "bare interpreter MB", "CPU µs/reading", "idle CPU % of a core", "s to take the readings"],
        [[f"{r['rate']:,.0f}", r["upstream"], r["policy"], f"{r['rss_idle_mb']:.1f}", f"{r['rss_peak_mb']:.1f}",
          f"{float(r['rss_peak_mb']) / 60:.2f}", f"{floor:.1f}",  # type: ignore[arg-type]
          f"{r['cpu_us_per_reading']:.0f}", f"{float(r['idle_cpu_share']) * 100:.1f}",  # type: ignore[arg-type]
          f"{float(r['seconds']):.0f} (of {int(r['readings']) / float(r['rate']):.0f})"]  # type: ignore[arg-type, call-overload]
         for r in results],
    ))
    print("\nDisk writes per reading (write_bytes of the gateway process; payload = MQTT topic + payload bytes):\n")
    raw_per_reading = raw_sync["write_bytes"] / readings
    rows = []
    for r in results:
        n = int(r["readings"])  # type: ignore[call-overload]
        wb = int(r["write_bytes"])  # type: ignore[call-overload]
        fsyncs = r["fsyncs"] if r["fsyncs"] is not None else r["log_syncs"]
        rows.append([
            f"{r['rate']:,.0f}", r["upstream"], r["policy"], f"{n:,}", f"{float(r['payload_bytes']) / n:.1f}",  # type: ignore[arg-type]
            f"{wb / n:.1f}", f"{wb / float(r['payload_bytes']):.2f}",  # type: ignore[arg-type]
            f"{float(fsyncs) / n:.3f}", f"{int(r['dir_growth_bytes']) / n:.1f}",  # type: ignore[arg-type, call-overload]
            f"{raw_per_reading / max(wb / n, 1e-9):.1f}x",
        ])
    rows.append(["", "raw baseline", "fdatasync per message", f"{readings:,}", f"{size / 2:.1f}",
                 f"{raw_per_reading:.1f}", f"{raw_sync['write_bytes'] / (size * messages):.2f}",
                 f"{raw_sync['syncs'] / readings:.3f}", f"{size / 2:.1f}", "1.0x"])
    rows.append(["", "raw baseline", "no sync", f"{readings:,}", f"{size / 2:.1f}",
                 f"{raw_nosync['write_bytes'] / readings:.1f}", f"{raw_nosync['write_bytes'] / (size * messages):.2f}",
                 "0", f"{size / 2:.1f}", f"{raw_per_reading / max(raw_nosync['write_bytes'] / readings, 1e-9):.1f}x"])
    print(table(["readings/s", "upstream", "sync policy", "readings", "payload B/reading", "disk B/reading",
                 "write amplification", "fsyncs/reading", "data dir growth B/reading",
                 "fdatasync-per-message baseline / this"], rows))
    interval = [r for r in main_results if r["policy"] == "interval"]
    if interval:
        worst = max(interval, key=lambda r: float(r["rss_peak_mb"]))  # type: ignore[arg-type]
        per = int(worst["write_bytes"]) / int(worst["readings"])  # type: ignore[call-overload]
        print(f"\nheadline: RSS peak at {args.rate:,.0f} readings/s {float(worst['rss_peak_mb']):.1f} MB "  # type: ignore[arg-type]
              f"({worst['upstream']}, interval; goal 60 MB); disk {per:.1f} B/reading, "
              f"{raw_per_reading / per:.1f}x less than fdatasync per message")
    return 0


def _fstype(path: Path) -> str:
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


@contextmanager
def contextmanager_kafka(wanted: bool, workdir: Path) -> Iterator:  # type: ignore[type-arg]
    """A Kafka broker of our own when the Kafka upstream is measured, else None."""
    if not wanted:
        yield None
        return
    from tests.kafka.broker import KafkaBroker, ensure_kafka_jars

    ensure_kafka_jars()
    with KafkaBroker(workdir) as broker:
        yield broker


if __name__ == "__main__":
    sys.exit(main())
