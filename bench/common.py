"""Shared pieces of the benchmarks: data sets, a byte-counting TCP proxy, reporting."""

from __future__ import annotations

import csv
import datetime as dt
import platform
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.reading import Reading

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT.parent / "shared" / "nab" / "realKnownCause"


def nab_dir() -> Path:
    """The NAB series, beside the repository (../shared/nab) or where TIDEGATE_NAB points."""
    import os

    return Path(os.environ.get("TIDEGATE_NAB", NAB))


def nab_readings(name: str, device: str) -> list[Reading]:
    """One NAB series as readings of one device (metric "temp")."""
    out = []
    with open(nab_dir() / f"{name}.csv", newline="") as f:
        for row in csv.DictReader(f):
            when = dt.datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
            ts = int(when.timestamp() * 1000)
            out.append(Reading(device, "temp", ts, float(row["value"]), ts + 40))
    return out


def fleet_readings(sensors: int = 50, seconds: int = 600, start_ms: int = 1_767_225_600_000, seed: int = 3) -> list[Reading]:
    """A live-looking fleet: each sensor sends temperature and humidity once a second."""
    rng = random.Random(seed)
    temps = [20 + rng.random() * 5 for _ in range(sensors)]
    out = []
    for second in range(seconds):
        for i in range(sensors):
            ts = start_ms + second * 1000 + i * 7
            temps[i] += rng.gauss(0, 0.03)
            out.append(Reading(f"node-{i:03d}", "temp_c", ts, round(temps[i], 2), ts + 25))
            out.append(Reading(f"node-{i:03d}", "rh_pct", ts, round(45 + rng.random() * 10, 1), ts + 25))
    return out


@dataclass
class CountingProxy:
    """A TCP proxy on loopback that counts the bytes it forwards each way."""

    target_port: int
    upstream_bytes: int = 0  # client -> target
    downstream_bytes: int = 0

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            target = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, target, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(target, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if upstream:
                        self.upstream_bytes += len(data)
                    else:
                        self.downstream_bytes += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def gateway_metrics(port: int) -> dict[str, float]:
    """A gateway's /metrics on loopback, each metric summed over its labels."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


def wait_for_metric(port: int, name: str, at_least: float, timeout: float, process: subprocess.Popen[bytes]) -> dict[str, float]:
    """Polls a gateway's /metrics until ``name`` is at least ``at_least``; returns the metrics then.

    Raises:
        RuntimeError: the gateway exited, or the metric is not there within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            values = gateway_metrics(port)
            if values.get(name, 0.0) >= at_least:
                return values
        except OSError:
            values = {}
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not reach {at_least} in {timeout:.0f} s (last: {values.get(name)})")
        time.sleep(0.25)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def table(headers: list[str], rows: Iterator[list[object]] | list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
