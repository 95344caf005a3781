"""The status page in a real browser: headless Chromium against a running gateway with simulated sensors.

The gateway runs as ``tidegate run`` with a fleet that stops after a fixed
number of samples, so once everything is forwarded the figures stand still;
then Chromium loads the page (its JavaScript fetches /api/status and renders),
and every figure it shows is compared with /metrics. A screenshot is saved in
the test's directory (``TIDEGATE_SCREENSHOT=path`` copies it there too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto, free_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SENSORS = 4
SAMPLES = 400
READINGS = SAMPLES * 2  # temp_c and rh_pct in every sample


def find_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed; ./dev test installs it (Debian package chromium)")
    return found


def chromium(url: str, profile: Path, *extra: str) -> str:
    done = subprocess.run(
        [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Figures(HTMLParser):
    """Collects, from the rendered DOM: elements with an id (data-value, text) and table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, tuple[str | None, str]] = {}
        self.rows: dict[str, list[dict[str, str | None]]] = {}
        self._open: list[tuple[str, str | None, dict[str, str | None]]] = []
        self._table: str | None = None
        self._row: list[dict[str, str | None]] | None = None
        self._cell: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = {"class": a.get("class"), "value": a.get("data-value"), "text": ""}
            self._row.append(self._cell)
        if a.get("id"):
            self._open.append((tag, a["id"], a))
            self.by_id[a["id"]] = (a.get("data-value"), "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self._table:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            ident = self._open[-1][1]
            value, text = self.by_id[ident]
            self.by_id[ident] = (value, text + data)
        if self._cell is not None:
            self._cell["text"] = (self._cell["text"] or "") + data

    def value(self, ident: str) -> float:
        raw = self.by_id[ident][0]
        assert raw not in (None, ""), f"#{ident} has no data-value"
        return float(raw)  # type: ignore[arg-type]

    def text(self, ident: str) -> str:
        return self.by_id[ident][1].strip()


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if match:
            out[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return out


def total(metrics: dict[tuple[str, str], float], name: str) -> float:
    return sum(v for (n, _), v in metrics.items() if n == name)


@pytest.fixture
def gateway(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[int]:
    """A running gateway with 4 simulated sensors that publish 400 samples, then stop; yields its HTTP port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "--data-dir", str(tmp_path / "gw"), "--gateway-id", "site-7",
         "--mqtt", f"127.0.0.1:{mosquitto.port}", "--http", f"127.0.0.1:{port}", "--simulate", str(SENSORS),
         "--simulate-rate", "10", "--simulate-count", str(SAMPLES), "--quiet"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(port)
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the gateway's HTTP endpoint did not come up"
                time.sleep(0.2)
        subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", "sensors/bad-node",
                        "-m", "not json{"], check=True, timeout=10)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()[-2000:]


#: The metrics the page is checked against; they stand still once every reading is forwarded.
SHOWN = (
    "tidegate_readings_in_total", "tidegate_rejected_total", "tidegate_duplicates_total", "tidegate_readings_out_total",
    "tidegate_batches_out_total", "tidegate_backlog_readings", "tidegate_uplink_bytes_total", "tidegate_log_bytes_on_disk",
    "tidegate_log_quota_bytes", "tidegate_dropped_by_quota_total", "tidegate_broker_dropped", "tidegate_batch_max_readings",
    "tidegate_batch_linger_seconds", "tidegate_log_bytes",
)


def settled(port: int) -> dict[tuple[str, str], float]:
    """/metrics once every reading is in and forwarded, and the figures the page shows stand still."""
    deadline = time.monotonic() + 90
    previous: dict[tuple[str, str], float] | None = None
    while True:
        metrics = scrape(port)
        shown = {k: v for k, v in metrics.items() if k[0] in SHOWN}
        done = (total(metrics, "tidegate_readings_in_total") == READINGS
                and total(metrics, "tidegate_readings_out_total") == READINGS
                and total(metrics, "tidegate_rejected_total") == 1
                and total(metrics, "tidegate_backlog_readings") == 0)
        if done and shown == previous:
            return metrics
        moving = {k: (previous.get(k), v) for k, v in shown.items() if previous and previous.get(k) != v}
        assert time.monotonic() < deadline, (
            f"not settled: done={done}, moving={moving}, in={total(metrics, 'tidegate_readings_in_total')},"
            f" out={total(metrics, 'tidegate_readings_out_total')}, rejected={total(metrics, 'tidegate_rejected_total')},"
            f" backlog={total(metrics, 'tidegate_backlog_readings')}, duplicates={total(metrics, 'tidegate_duplicates_total')}"
        )
        previous = shown if done else None
        time.sleep(1.5)


def test_the_status_page_shows_what_metrics_says(gateway: int, tmp_path: Path) -> None:
    metrics = settled(gateway)
    time.sleep(2.5)  # one more telemetry pass so the device table and the history have every reading
    metrics = settled(gateway)
    url = f"http://127.0.0.1:{gateway}/"
    page = Figures()
    page.feed(chromium(url, tmp_path / "profile", "--dump-dom"))

    assert page.text("gateway-id") == "site-7"
    assert page.text("health") == "healthy"
    assert page.text("upstream-state") == "up" and page.text("mqtt-state") == "connected"

    for ident, name in [
        ("readings-in", "tidegate_readings_in_total"),
        ("rejected", "tidegate_rejected_total"),
        ("duplicates", "tidegate_duplicates_total"),
        ("readings-out", "tidegate_readings_out_total"),
        ("batches-out", "tidegate_batches_out_total"),
        ("backlog", "tidegate_backlog_readings"),
        ("uplink-bytes", "tidegate_uplink_bytes_total"),
        ("log-bytes", "tidegate_log_bytes_on_disk"),
        ("quota-bytes", "tidegate_log_quota_bytes"),
        ("dropped-by-quota", "tidegate_dropped_by_quota_total"),
        ("broker-dropped", "tidegate_broker_dropped"),
        ("batch-max", "tidegate_batch_max_readings"),
        ("batch-linger", "tidegate_batch_linger_seconds"),
    ]:
        assert page.value(ident) == total(metrics, name), ident
    # What people read matches too.
    assert page.text("readings-in") == f"{READINGS:,}"
    assert page.text("readings-out") == f"{READINGS:,}"
    assert page.text("rejected") == "1" and page.text("backlog") == "0"
    assert page.text("batches-out") == f"{int(total(metrics, 'tidegate_batches_out_total')):,}"
    assert page.text("batch-linger") == f"{total(metrics, 'tidegate_batch_linger_seconds') * 1000:.0f} ms"
    uplink = total(metrics, "tidegate_uplink_bytes_total")
    assert page.text("uplink-bytes") == (f"{uplink / 1024:.1f} KiB" if uplink >= 1024 else f"{int(uplink)} B")

    (stream,) = page.rows["streams-table"]
    cells = {c["class"].split()[-1]: c for c in stream[1:] if c["class"]}  # type: ignore[union-attr]
    assert stream[0]["text"] == "sensors"
    assert float(cells["readings-in"]["value"]) == metrics[("tidegate_readings_in_total", '{stream="sensors"}')]  # type: ignore[arg-type]
    assert float(cells["backlog"]["value"]) == metrics[("tidegate_backlog_readings", '{stream="sensors"}')]  # type: ignore[arg-type]
    assert float(cells["log-bytes"]["value"]) == metrics[("tidegate_log_bytes", '{stream="sensors"}')]  # type: ignore[arg-type]

    devices = page.rows["devices-table"]
    assert len(devices) == SENSORS and page.text("device-count") == f"({SENSORS})"
    for row in devices:
        assert row[0]["text"].startswith("sim-")  # type: ignore[union-attr]
        readings = next(c for c in row if c["class"] == "num readings")
        assert readings["value"] == str(READINGS // SENSORS)
        assert "temp_c" in row[-1]["text"] and "rh_pct" in row[-1]["text"]  # type: ignore[operator]

    (letter,) = page.rows["dead-letters-table"]
    (reason,) = [labels for (name, labels), v in metrics.items() if name == "tidegate_rejected_total" and v == 1]
    assert reason == f'{{reason="{letter[1]["text"]}"}}' and letter[2]["text"] == "mqtt:sensors/bad-node"
    assert "not json{".encode().hex() in (letter[3]["text"] or "")

    for chart in ("ingest-rate", "backlog", "uplink", "compression", "batch-size"):
        assert f"chart-{chart}" in page.by_id
        assert page.by_id[f"chart-{chart}-last"][0] not in (None, "")
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{gateway}/api/status", timeout=5).read())
    assert max(status["history"]["ingest_rate"]) > 0 and status["history"]["compression_ratio"][-1] > 1
    # The page drew the history of a moment ago: its last point is one of the recent samples.
    assert page.value("chart-batch-size-last") in status["history"]["batch_size"][-15:]
    assert page.value("chart-batch-size-last") > 1

    shot = tmp_path / "status-page.png"
    chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("TIDEGATE_SCREENSHOT"):
        shutil.copy(shot, os.environ["TIDEGATE_SCREENSHOT"])


def test_the_page_needs_nothing_from_the_internet() -> None:
    page_dir = ROOT / "edge" / "status_page"
    for path in page_dir.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, path
